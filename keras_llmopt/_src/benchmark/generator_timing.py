"""Int8 generator files of benchmark rows, and their prefill / decode tokens/s side by side."""

import os

import numpy as np
from absl import logging


def time_generators(paths, prompt, new_tokens, repeats=9, threads=(1, 2), seed=0):
    """Prefill and decode tokens/s of generator files, timed in interleaved rounds.

    As ``scripts/benchmark_generation.py``: every round generates ``new_tokens`` after
    ``prompt`` once with every (file, threads) runner, in an order shuffled with
    ``seed`` (round 0 warms up); each figure is the median over ``repeats`` rounds of
    the runner's ``last_stats``.

    Args:
        paths: ``{variant: generator .tflite path}``.
        prompt: Token ids ``(1, P)``.
        new_tokens: Tokens generated per round (prompt + new must fit the cache).
        repeats: Timed rounds.
        threads: LiteRT thread counts.
        seed: Seed of the per-round orders.

    Returns:
        One dict per variant: ``variant``, ``size_bytes``, ``prefill_tok_s_<n>t`` and
        ``decode_tok_s_<n>t`` per thread count, and ``decode_vs_first_<n>t`` (decode
        speed over the first variant's).

    Example:
        >>> rows = time_generators({"dense": "d.tflite", "struct30": "s.tflite"},
        ...                        prompt, 96)  # doctest: +SKIP
        >>> rows[1]["decode_tok_s_1t"] / rows[0]["decode_tok_s_1t"]  # doctest: +SKIP
    """
    from keras_llmopt._src.export.generator_runner import load_generator

    runners = {
        (variant, n): load_generator(path, num_threads=n)
        for variant, path in paths.items()
        for n in threads
    }
    found = {key: [] for key in runners}
    order = list(runners)
    rng = np.random.default_rng(seed)
    prompt = np.asarray(prompt, dtype=np.int32)
    for round_index in range(repeats + 1):
        rng.shuffle(order)
        for key in order:
            runners[key].generate(prompt, new_tokens)
            if round_index:
                found[key].append(dict(runners[key].last_stats))
    rows = []
    for variant, path in paths.items():
        row = {"variant": variant, "size_bytes": os.path.getsize(path)}
        for n in threads:
            for phase in ("prefill", "decode"):
                rates = [s[f"{phase}_tokens_per_second"] for s in found[(variant, n)]]
                rates = [r for r in rates if r is not None]
                row[f"{phase}_tok_s_{n}t"] = float(np.median(rates)) if rates else None
        rows.append(row)
    for row in rows:
        for n in threads:
            first, this = rows[0][f"decode_tok_s_{n}t"], row[f"decode_tok_s_{n}t"]
            row[f"decode_vs_first_{n}t"] = this / first if first and this else None
    return rows


def generation_markdown(rows, threads=(1, 2)):
    """The generator rows as a Markdown table (tokens/s; decode speed over the first row).

    Example:
        >>> print(generation_markdown([{"variant": "a", "size_bytes": 2048,
        ...     "prefill_tok_s_1t": 900.0, "decode_tok_s_1t": 300.0, "decode_vs_first_1t": 1.0}],
        ...     threads=(1,)))
        | generator | size_KiB | prefill tok/s 1t | decode tok/s 1t | decode vs first 1t |
        |---|---|---|---|---|
        | a | 2.0 | 900 | 300 | 1.00x |
    """
    headers = ["generator", "size_KiB"]
    for n in threads:
        headers += [f"prefill tok/s {n}t", f"decode tok/s {n}t", f"decode vs first {n}t"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]

    def rate(value, suffix=""):
        if value is None:
            return "-"
        return f"{value:.2f}x" if suffix else f"{value:.0f}"

    for row in rows:
        cells = [row["variant"], f"{row['size_bytes'] / 1024:,.1f}"]
        for n in threads:
            cells += [
                rate(row.get(f"prefill_tok_s_{n}t")),
                rate(row.get(f"decode_tok_s_{n}t")),
                rate(row.get(f"decode_vs_first_{n}t"), "x"),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def generator_path(folder, variant):
    """Where a row's int8 generator file is written, beside the row's artifact.

    Example:
        >>> generator_path("bench/artifacts", "struct30_distill300_qat_int8")
        'bench/artifacts/struct30_distill300_qat_int8_generator.tflite'
    """
    return os.path.join(folder, f"{variant}_generator.tflite")


def export_int8_generator(ctx, model, name):
    """Writes the int8 generator of ``model``; the note says what it is (or why it failed).

    A file that misses the int8 tolerance is kept (exported again with ``verify=False``,
    as ``tflite_full_int8_ptq`` is) so its speed is still measured; the note says so.

    Example:
        >>> note = export_int8_generator(ctx, qat_model, "dense_qat_int8")  # doctest: +SKIP
    """
    from keras_llmopt._src.export import generator, verification

    path = generator_path(ctx.work_dir, name)
    inputs, targets = ctx.verification_data()
    rows = np.concatenate([inputs[:2], targets[:2, -1:]], axis=1)  # full windows
    settings = {"cache_length": ctx.sequence_length, "quantization": "int8"}
    checked = "verified"
    try:
        try:
            report = generator.to_tflite_generator(model, path, verification_data=rows, **settings)
        except verification.VerificationError as error:
            checked = f"exported with verify=False: FAILS ({_error_summary(error, 200)})"
            report = generator.to_tflite_generator(model, path, verify=False, **settings)
    except Exception as error:  # the fixed-window row stays; its note says why
        logging.warning("benchmark: %s generator export failed: %s", name, error)
        return f"int8 generator export failed: {_error_summary(f'{type(error).__name__}: {error}')}"
    agreement = report.summary.get("generator", {}).get("greedy_agreement")
    greedy = f", greedy agreement {agreement:.3f}" if agreement is not None else ""
    return (
        f"int8 generator (prefill/decode signatures) {os.path.basename(path)}: "
        f"{report.size_bytes:,} bytes, {checked}{greedy}; its decode tokens/s: "
        "scripts/benchmark_structural.py's generator table"
    )


def _error_summary(message, limit=300):
    """The first non-empty line of an error message, cut to ``limit`` characters."""
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    return (lines[0] if lines else "")[:limit]
