"""The demo's last step: text generated from its best compressed artifact.

The best compressed artifact is the smallest verified ``.tflite`` of keras_llmopt's own
variants (``klo_*`` and registered techniques; the anchors only when none qualifies)
that is smaller than the fp32 file and within ``MAX_DELTA_BPB`` bits per byte of it
(the lowest-bpb compressed file when none is that close). The sample is a seeded top-k
draw (``SAMPLING``: a small byte model loops under greedy decoding), from a validation
prompt, through ``export.WindowGenerator``: the demo's files are
fixed-window exports, so the window is recomputed per token (``keras-llmopt export
--generator`` writes the KV-cache file that decodes faster).
"""

import codecs

import numpy as np

from keras_llmopt._src.benchmark.report import is_ours

# How far above the fp32 file's bits per byte a compressed file may be to count as best.
MAX_DELTA_BPB = 0.05
PROMPT_BYTES = 48
NEW_TOKENS = 64
SAMPLING = {"sampler": "top_k", "top_k": 5, "seed": 0}


def best_compressed_row(rows, max_delta_bpb=MAX_DELTA_BPB):
    """The row of the best compressed ``.tflite`` (see the module doc), or ``None``.

    Args:
        rows: Benchmark rows (``variant``, ``artifact``, ``size_bytes``, ``bpb``,
            ``verified``); the ``tflite_fp32`` row is the reference when present.
        max_delta_bpb: Bits per byte above the fp32 file a candidate may be.

    Example:
        >>> rows = [
        ...     {"variant": "tflite_fp32", "artifact": "a.tflite", "size_bytes": 100,
        ...      "bpb": 2.00, "verified": True},
        ...     {"variant": "klo_int8", "artifact": "b.tflite", "size_bytes": 30,
        ...      "bpb": 2.02, "verified": True},
        ...     {"variant": "klo_int4", "artifact": "c.tflite", "size_bytes": 20,
        ...      "bpb": 2.30, "verified": True},
        ... ]
        >>> best_compressed_row(rows)["variant"]
        'klo_int8'
    """
    files = [
        r
        for r in rows
        if str(r.get("artifact") or "").endswith(".tflite")
        and r.get("verified") is True
        and r.get("bpb") is not None
        and r.get("size_bytes")
    ]
    reference = next((r for r in files if r["variant"] == "tflite_fp32"), None)
    candidates = [
        r
        for r in files
        if r is not reference and (reference is None or r["size_bytes"] < reference["size_bytes"])
    ]
    if not candidates:
        return None
    ours = [r for r in candidates if is_ours(r["variant"])]
    candidates = ours or candidates
    if reference is not None:
        close = [r for r in candidates if r["bpb"] <= reference["bpb"] + max_delta_bpb]
        if close:
            return min(close, key=lambda r: (r["size_bytes"], r["bpb"]))
    return min(candidates, key=lambda r: (r["bpb"], r["size_bytes"]))


def sample_text(path, prompt, new_tokens=NEW_TOKENS, **sampling):
    """``(prompt text, continuation text, decode tokens/s)`` from a byte model file.

    ``sampling``: as ``generation.generate`` (default greedy).

    Example:
        >>> prompt, text, rate = sample_text("gpt.tflite", b"def main(", 16)
        >>> prompt
        'def main('
    """
    from keras_llmopt._src.export.window_generator import WindowGenerator

    generator = WindowGenerator(path)
    ids = np.frombuffer(bytes(prompt), np.uint8).astype("int32")[None]
    out = generator.generate(ids, new_tokens, **sampling)
    return (
        _text(out[0, : ids.shape[1]]),
        _text(out[0, ids.shape[1] :]),
        generator.last_stats["decode_tokens_per_second"],
    )


def print_sample(rows, artifact_paths, corpus):
    """Prints a sample from the best compressed artifact; returns its variant (or ``None``).

    Args:
        rows: The benchmark's rows.
        artifact_paths: ``{variant: path}`` of the run's files (still on disk).
        corpus: The reference corpus; the prompt is the start of a validation window.

    Example:
        >>> print_sample(result.rows, paths["artifacts"], corpus)
        'klo_qat_int8'
    """
    rows = [{**r, "artifact": artifact_paths.get(r["variant"])} for r in rows]
    row = best_compressed_row(rows)
    if row is None:
        print("\nno verified compressed .tflite in this run to sample from")
        return None
    prompt = bytes(np.asarray(corpus.validation[0][:PROMPT_BYTES], np.uint8))
    prompt_text, text, rate = sample_text(row["artifact"], prompt, **SAMPLING)
    print(
        f"\nsample from the best compressed artifact, {row['variant']} "
        f"({row['size_bytes'] / 1024:,.1f} KiB, {row['bpb']:.3f} bpb; top-{SAMPLING['top_k']}, "
        f"seed {SAMPLING['seed']}, {NEW_TOKENS} new tokens at {rate:.0f} tokens/s "
        "recomputing its window):"
    )
    print(prompt_text + "\u2502" + text)  # the bar marks where the prompt ends
    return row["variant"]


def _text(ids):
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    return decoder.decode(bytes(int(i) for i in ids), final=True)
