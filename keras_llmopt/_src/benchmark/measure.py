"""Measuring a built variant: bits per byte, size and latency, the same way for all."""

import gzip
import os
import statistics
import timeit

import numpy as np

RUNTIMES = {".tflite": "litert", ".onnx": "onnxruntime"}


def gzip_size(path):
    """Bytes of the file after gzip (level 6): how well pruned / clustered weights compress.

    Example:
        >>> gzip_size("gpt.tflite") < os.path.getsize("gpt.tflite")
        True
    """
    with open(path, "rb") as handle:
        return len(gzip.compress(handle.read(), compresslevel=6))


def keras_latency(model, sequence_length, warmup=5, repeats=30):
    """Median milliseconds of one ``predict_on_batch`` of one ``(1, T)`` row in Keras.

    Example:
        >>> keras_latency(model, 128, repeats=10)
    """
    tokens = np.random.default_rng(0).integers(0, 256, (1, sequence_length)).astype(np.int32)
    for _ in range(max(1, warmup)):
        model.predict_on_batch(tokens)
    seconds = timeit.repeat(lambda: model.predict_on_batch(tokens), number=1, repeat=repeats)
    return statistics.median(seconds) * 1000.0


def measure(built, corpus, num_windows, sequence_length, warmup, repeats, threads=(1, 2)):
    """Size, bits per byte and latency of one built variant.

    Artifacts run in their runtime (LiteRT with XNNPACK, or ONNX Runtime) at each
    thread count; Keras models run in Keras (``latency_ms_keras``; TensorFlow's
    thread pools cannot be resized inside a process).

    Returns:
        A dict of the measured fields.

    Example:
        >>> measure(built, corpus, 64, 128, warmup=5, repeats=30)["bpb"]
    """
    from keras_llmopt._src.export.runtime import load_runner, measure_latency
    from keras_llmopt._src.reference.evaluation import evaluate

    row = {"size_bytes": built.size_bytes}
    if built.path is not None:
        row["runtime"] = RUNTIMES.get(os.path.splitext(built.path)[1], "?")
        row["artifact"] = built.path
        row["size_gzip_bytes"] = gzip_size(built.path)
        row["bpb"] = evaluate(built.path, corpus, num_windows=num_windows).bpb
        for n in threads:
            row[f"latency_ms_{n}t"] = measure_latency(
                built.path, num_threads=n, warmup=warmup, repeats=repeats
            )
        if built.path.endswith(".tflite"):
            runner = load_runner(built.path)
            row["xnnpack"] = getattr(runner, "xnnpack_error", None) is None
    else:
        row["runtime"] = "keras"
        row["bpb"] = evaluate(built.model, corpus, num_windows=num_windows).bpb
        row["latency_ms_keras"] = keras_latency(built.model, sequence_length, warmup, repeats)
    v = built.verification
    row["verified"] = None if v is None else bool(v.passed)
    row["top1_agreement"] = None if v is None else v.top1_agreement
    row["notes"] = list(built.notes)
    return row


def interleaved_step_times(fit_segments, segments, steps):
    """Median seconds per training step (wall and CPU) of each ``fit_segment(steps)``.

    Each function is run once untimed (compilation), then the functions take turns,
    ``segments`` times, so load from other processes falls evenly on all of them and
    their ratios stay fair. CPU time (``time.process_time``) is steadier than wall time
    on a shared or throttled machine.

    Args:
        fit_segments: ``{name: fn(steps)}``, e.g. a dense and a pruned model's ``fit``.
        segments: Timed turns per function.
        steps: Training steps per turn.

    Returns:
        ``{name: {"wall": s, "cpu": s, "segments": [(wall, cpu), ...]}}``.

    Example:
        >>> times = interleaved_step_times({"noop": lambda n: None}, segments=2, steps=1)
        >>> sorted(times["noop"])
        ['cpu', 'segments', 'wall']
    """
    import time

    for fit_segment in fit_segments.values():
        fit_segment(steps)  # warm-up (compile)
    times = {name: [] for name in fit_segments}
    for _ in range(segments):
        for name, fit_segment in fit_segments.items():
            wall, cpu = time.perf_counter(), time.process_time()
            fit_segment(steps)
            times[name].append(
                ((time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps)
            )
    return {
        name: {
            "wall": float(np.median([w for w, _ in t])),
            "cpu": float(np.median([c for _, c in t])),
            "segments": t,
        }
        for name, t in times.items()
    }
