"""Measuring a built variant: bits per byte, size and latency, the same way for all."""

import gzip
import hashlib
import os
import time

import numpy as np

RUNTIMES = {".tflite": "litert", ".onnx": "onnxruntime"}
# The thread counts artifacts are timed at (Keras models: one ``latency_ms_keras``).
THREADS = (1, 2)


def gzip_size(path):
    """Bytes of the file after gzip (level 6): how well pruned / clustered weights compress.

    Example:
        >>> gzip_size("gpt.tflite") < os.path.getsize("gpt.tflite")
        True
    """
    with open(path, "rb") as handle:
        return len(gzip.compress(handle.read(), compresslevel=6))


def eval_set_id(corpus, num_windows):
    """A fingerprint of the validation windows bits per byte is measured on.

    Every row of one benchmark must carry the same one (``run_benchmark`` checks it).

    Example:
        >>> eval_set_id(corpus, 8) == eval_set_id(corpus, 8)
        True
    """
    from keras_llmopt._src.reference.evaluation import evaluation_windows

    windows = np.ascontiguousarray(evaluation_windows(corpus, num_windows), dtype=np.int32)
    digest = hashlib.sha256(str(windows.shape).encode() + windows.tobytes()).hexdigest()
    return f"{windows.shape[0]}x{windows.shape[1] - 1}:{digest[:12]}"


def measure(built, corpus, num_windows):
    """Size, bits per byte and verification of one built variant (latency: see below).

    Artifacts are evaluated in their runtime (LiteRT with XNNPACK, or ONNX Runtime),
    Keras models in Keras; latencies are timed afterwards for all variants together,
    in interleaved rounds (:func:`interleaved_latencies`).

    Returns:
        A dict of the measured fields.

    Example:
        >>> measure(built, corpus, 64)["bpb"]
    """
    from keras_llmopt._src.export.runtime import load_runner
    from keras_llmopt._src.reference.evaluation import evaluate

    row = {
        "size_bytes": built.size_bytes,
        "finetuned": bool(built.finetuned),
        "calibration_seconds": built.calibration_seconds,
    }
    if built.path is not None:
        row["runtime"] = RUNTIMES.get(os.path.splitext(built.path)[1], "?")
        row["artifact"] = built.path
        row["size_gzip_bytes"] = gzip_size(built.path)
        result = evaluate(built.path, corpus, num_windows=num_windows)
        if built.path.endswith(".tflite"):
            runner = load_runner(built.path)
            row["xnnpack"] = getattr(runner, "xnnpack_error", None) is None
    else:
        row["runtime"] = "keras"
        result = evaluate(built.model, corpus, num_windows=num_windows)
    row["bpb"] = result.bpb
    row["eval_set"] = eval_set_id(corpus, num_windows)
    v = built.verification
    row["verified"] = None if v is None else bool(v.passed)
    row["top1_agreement"] = None if v is None else v.top1_agreement
    row["notes"] = list(built.notes)
    return row


def latency_functions(built, sequence_length, threads=THREADS):
    """``{row field: fn()}``: one forward pass of a built variant, per runtime setting.

    Artifacts give ``latency_ms_<n>t`` for each thread count ``n`` (LiteRT / ONNX
    Runtime with that many threads); Keras models give ``latency_ms_keras`` (one
    ``predict_on_batch`` of one ``(1, T)`` row; TensorFlow's thread pools cannot be
    resized inside a process).

    Example:
        >>> sorted(latency_functions(built, 128))
        ['latency_ms_1t', 'latency_ms_2t']
    """
    from keras_llmopt._src.export.runtime import load_runner

    if built.path is None:
        tokens = np.random.default_rng(0).integers(0, 256, (1, sequence_length)).astype(np.int32)
        model = built.model
        return {"latency_ms_keras": lambda: model.predict_on_batch(tokens)}
    functions = {}
    for n in threads:
        runner = load_runner(built.path, num_threads=n)
        feeds = runner.example_inputs()
        functions[f"latency_ms_{n}t"] = lambda runner=runner, feeds=feeds: runner._run_batch(feeds)
    return functions


def interleaved_rounds(functions, rounds, warmup=1, seed=0):
    """Times every function once per round, in a new order each round (round-robin).

    Each function first runs ``warmup`` times untimed; then each of the ``rounds``
    rounds runs every function once, in an order shuffled with a fixed ``seed``, so
    load from other processes, caches and clock changes fall evenly on all of them and
    their ratios stay fair. This is how the benchmark times latencies and the step-time
    scripts time training steps.

    Args:
        functions: ``{name: fn()}``.
        rounds: Timed rounds (each runs every function once).
        warmup: Untimed runs of each function first (compilation, caches).
        seed: Seed of the per-round orders.

    Returns:
        ``{name: [(wall_seconds, cpu_seconds), ...]}``, one pair per round. CPU time
        (``time.process_time``) is steadier than wall time on a shared machine.

    Example:
        >>> times = interleaved_rounds({"a": lambda: None, "b": lambda: None}, rounds=3)
        >>> len(times["a"]), len(times["b"])
        (3, 3)
    """
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"interleaved_rounds: `rounds` must be an int >= 1. Received: {rounds!r}")
    names = list(functions)
    for name in names:
        for _ in range(warmup):
            functions[name]()
    rng = np.random.default_rng(seed)
    times = {name: [] for name in names}
    for _ in range(rounds):
        for index in rng.permutation(len(names)):
            name = names[index]
            wall, cpu = time.perf_counter(), time.process_time()
            functions[name]()
            times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    return times


def spread(values):
    """Median and spread of repeated measures: interquartile range and min-max, in %.

    Example:
        >>> spread([1.0, 2.0, 3.0, 4.0, 5.0])["iqr_pct"]
        66.66...
    """
    values = np.asarray(values, dtype=np.float64)
    median = float(np.median(values))
    q25, q75 = np.percentile(values, [25, 75])
    scale = 100.0 / median if median else float("nan")
    return {
        "median": median,
        "iqr_pct": float((q75 - q25) * scale),
        "range_pct": float((values.max() - values.min()) * scale),
        "n": int(values.size),
    }


def interleaved_latencies(functions, rounds, warmup=1, seed=0):
    """Latency medians and spreads (ms) of many variants, timed in interleaved rounds.

    Args:
        functions: ``{key: fn()}``, e.g. ``(variant, "latency_ms_1t")`` keys.
        rounds: Timed rounds; every round runs each function once, order shuffled.
        warmup: Untimed passes of each function first.
        seed: Seed of the per-round orders.

    Returns:
        ``{key: {"median", "iqr_pct", "range_pct", "n"}}``, the median in milliseconds.

    Example:
        >>> stats = interleaved_latencies({"fp32": run_fp32, "int8": run_int8}, rounds=30)
        >>> stats["int8"]["median"] / stats["fp32"]["median"]
    """
    times = interleaved_rounds(functions, rounds, warmup=warmup, seed=seed)
    return {key: spread([wall * 1000.0 for wall, _ in t]) for key, t in times.items()}


def interleaved_step_times(fit_segments, segments, steps, seed=0):
    """Median seconds per training step (wall and CPU) of each ``fit_segment(steps)``.

    Each function is run once untimed (compilation), then the functions take turns
    (:func:`interleaved_rounds`: ``segments`` rounds, order shuffled per round), so load
    from other processes falls evenly on all of them and their ratios stay fair. CPU
    time (``time.process_time``) is steadier than wall time on a shared or throttled
    machine.

    Args:
        fit_segments: ``{name: fn(steps)}``, e.g. a dense and a pruned model's ``fit``.
        segments: Timed turns per function.
        steps: Training steps per turn.
        seed: Seed of the per-round orders.

    Returns:
        ``{name: {"wall": s, "cpu": s, "segments": [(wall, cpu), ...]}}``.

    Example:
        >>> times = interleaved_step_times({"noop": lambda n: None}, segments=2, steps=1)
        >>> sorted(times["noop"])
        ['cpu', 'segments', 'wall']
    """
    functions = {
        name: (lambda fit_segment=fit_segment: fit_segment(steps))
        for name, fit_segment in fit_segments.items()
    }
    times = interleaved_rounds(functions, segments, warmup=1, seed=seed)
    out = {}
    for name, t in times.items():
        per_step = [(wall / steps, cpu / steps) for wall, cpu in t]
        out[name] = {
            "wall": float(np.median([w for w, _ in per_step])),
            "cpu": float(np.median([c for _, c in per_step])),
            "segments": per_step,
        }
    return out
