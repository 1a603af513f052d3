"""Export the trained reference GPT to TFLite (fp32, float16, dynamic int8) and ONNX.

Every artifact is verified against the Keras model on validation windows; the table
shows size, bits per byte and 1-/2-thread latency, with ratios to fp32 TFLite.
``--all_modes`` adds full-integer int8 and int16x8; an artifact that fails verification
is reported as refused, then measured anyway and marked unverified.

    python examples/export_tflite.py --preset=small --out_dir=/tmp/gpt_export
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from keras_llmopt import export, reference  # noqa: E402

_PRESET = flags.DEFINE_enum("preset", "small", ["tiny", "small"], "Reference GPT preset.")
_OUT_DIR = flags.DEFINE_string("out_dir", "/tmp/keras_llmopt_export", "Where artifacts go.")
_WINDOWS = flags.DEFINE_integer("windows", 64, "Validation windows for bits per byte.")
_REPEATS = flags.DEFINE_integer("repeats", 50, "Timed forward passes per latency figure.")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Rounds the timed passes are split over.")
_ALL_MODES = flags.DEFINE_bool(
    "all_modes",
    False,
    "Also export full-integer int8 and int16x8 (calibrated on training windows).",
)


def interleaved_latency(paths, repeats, rounds):
    """Median ms per pass for each artifact and thread count, timed in alternation.

    Every round times each artifact once per thread count, so a change in the machine's
    load during the run falls on all artifacts alike and the ratios stay fair.
    """
    samples = {}
    per_round = max(1, repeats // rounds)
    for _ in range(rounds):
        for name, path in paths.items():
            for threads in (1, 2):
                ms = export.measure_latency(path, threads, warmup=2, repeats=per_round)
                samples.setdefault((name, threads), []).append(ms)
    return {key: float(np.median(values)) for key, values in samples.items()}


def main(argv):
    del argv
    os.makedirs(_OUT_DIR.value, exist_ok=True)
    config = reference.GPTConfig.preset(_PRESET.value)
    corpus = reference.load_corpus(config.sequence_length)
    model = reference.trained_model(_PRESET.value, corpus=corpus)
    windows = reference.evaluation_windows(corpus, _WINDOWS.value).astype(np.int32)
    data = (windows[:, :-1], windows[:, 1:])

    reports = {}
    for name, quantization in (
        ("fp32", None),
        ("float16", "float16"),
        ("dynamic_int8", "dynamic_int8"),
    ):
        path = os.path.join(_OUT_DIR.value, f"gpt_{_PRESET.value}_{name}.tflite")
        reports[name] = export.to_tflite(
            model, path, quantization=quantization, verification_data=data
        )
    if _ALL_MODES.value:
        calibration = corpus.train[:: max(1, len(corpus.train) // 64)][:64]
        for mode in ("int8", "int16x8"):
            path = os.path.join(_OUT_DIR.value, f"gpt_{_PRESET.value}_{mode}.tflite")
            kwargs = dict(
                quantization=mode, representative_dataset=calibration, verification_data=data
            )
            try:
                reports[mode] = export.to_tflite(model, path, **kwargs)
            except export.VerificationError as error:
                # Shown, then exported anyway (knowingly) so its figures are in the table.
                print(f"\n{mode}: refused by verification: {error}")
                loose = {"atol": None, "top1": 0.0, "bpb": None}
                reports[mode + " (unverified)"] = export.to_tflite(
                    model, path, tolerance=loose, **kwargs
                )
    path = os.path.join(_OUT_DIR.value, f"gpt_{_PRESET.value}.onnx")
    reports["onnx"] = export.to_onnx(model, path, batch_size=1, verification_data=data)

    latency = interleaved_latency(
        {name: report.path for name, report in reports.items()}, _REPEATS.value, _ROUNDS.value
    )
    rows = []
    for name, report in reports.items():
        v = report.verification
        rows.append(
            {
                "artifact": name,
                "size_kb": report.size_bytes / 1024,
                "bpb": v.bpb_artifact,
                "bpb_delta": v.bpb_delta,
                "max_abs_err": v.max_abs_error,
                "top1": v.top1_agreement,
                "ms_1t": latency[name, 1],
                "ms_2t": latency[name, 2],
            }
        )
    base = rows[0]
    for row in rows:
        row["size_x"] = row["size_kb"] / base["size_kb"]
        row["lat1_x"] = row["ms_1t"] / base["ms_1t"]
        row["lat2_x"] = row["ms_2t"] / base["ms_2t"]
    print(
        f"\nreference GPT {_PRESET.value}: {model.count_params():,} parameters, Keras bpb "
        f"{base['bpb'] - base['bpb_delta']:.4f} on {len(windows)} validation windows"
    )
    columns = list(rows[0])
    print("  ".join(f"{c:>12}" for c in columns))
    for row in rows:
        print(
            "  ".join(
                f"{row[c]:>12.4f}" if isinstance(row[c], float) else f"{row[c]:>12}"
                for c in columns
            )
        )


if __name__ == "__main__":
    app.run(main)
