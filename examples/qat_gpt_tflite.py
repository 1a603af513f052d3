"""Quantization-aware fine-tuning of the reference GPT to a full-integer int8 TFLite model.

The trained ``small`` GPT is quantized with ``keras_llmopt.quantization.quantize_model``
(int8 per-channel weights, int8 activations with learned ranges, attention included),
its ranges are initialised by calibration, it is fine-tuned for ``--steps`` steps and
exported with ``to_tflite(..., quantization="int8")``: every FULLY_CONNECTED and
BATCH_MATMUL runs on int8 in LiteRT. The table compares it with the fp32 TFLite model
(size, bits per byte on validation windows, 1- and 2-thread latency, as ratios).
Optional rows: calibrated PTQ per method (``--ptq``), 16x8 QAT (``--int16``), 4-bit
weight-only QAT exported with int4 weights (``--int4``) and
weight clustering (``--clusters=16,256``).

    python examples/qat_gpt_tflite.py --steps=300 --out_dir=/tmp/gpt_qat
"""

import gzip
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from keras_llmopt import clustering, export, quantization, reference  # noqa: E402

_PRESET = flags.DEFINE_enum("preset", "small", ["tiny", "small"], "Reference GPT preset.")
_STEPS = flags.DEFINE_integer("steps", 300, "QAT fine-tuning steps.")
_LR = flags.DEFINE_float("learning_rate", 1e-4, "Peak QAT learning rate.")
_OUT_DIR = flags.DEFINE_string("out_dir", "/tmp/keras_llmopt_qat", "Where artifacts go.")
_WINDOWS = flags.DEFINE_integer("windows", 64, "Validation windows for bits per byte.")
_REPEATS = flags.DEFINE_integer("repeats", 50, "Timed forward passes per latency figure.")
_PTQ = flags.DEFINE_bool("ptq", False, "Add calibrated post-training int8 rows per method.")
_INT16 = flags.DEFINE_bool("int16", False, "Add a 16x8 (int16 activations) QAT row.")
_INT4 = flags.DEFINE_bool(
    "int4", False, "Add a 4-bit weight-only QAT row exported with int4 weights."
)
_CLUSTERS = flags.DEFINE_list("clusters", [], "Cluster counts for weight-clustering rows.")


def _latency(paths, repeats, rounds=5):
    samples = {}
    for _ in range(rounds):  # alternate artifacts so load changes hit all alike
        for name, path in paths.items():
            for threads in (1, 2):
                ms = export.measure_latency(path, threads, warmup=2, repeats=repeats // rounds)
                samples.setdefault((name, threads), []).append(ms)
    return {key: float(np.median(v)) for key, v in samples.items()}


def _calibration_windows(corpus, count=64):
    return corpus.train[:: max(1, len(corpus.train) // count)][:count]


def main(argv):
    del argv
    out = _OUT_DIR.value
    os.makedirs(out, exist_ok=True)
    config = reference.GPTConfig.preset(_PRESET.value)
    corpus = reference.load_corpus(config.sequence_length)
    model = reference.trained_model(_PRESET.value, corpus=corpus)
    windows = reference.evaluation_windows(corpus, _WINDOWS.value).astype(np.int32)
    data = (windows[:, :-1], windows[:, 1:])
    calib = _calibration_windows(corpus)

    def tflite(name, m, mode=None):
        path = os.path.join(out, f"gpt_{_PRESET.value}_{name}.tflite")
        loose = {"atol": None, "top1": 0.0, "bpb": None}  # measured and shown, not gated
        tol = None if name in ("fp32", "qat_int8") else loose
        return export.to_tflite(m, path, quantization=mode, verification_data=data, tolerance=tol)

    reports = {"fp32": tflite("fp32", model)}
    # The matched control: the same steps, rate and data without quantization, so the
    # QAT row's gain from fine-tuning is not mistaken for quantization quality.
    matched = keras.models.clone_model(model)
    matched.set_weights(model.get_weights())
    reference.train(matched, corpus, _STEPS.value, learning_rate=_LR.value, seed=1)
    reports["fp32_finetuned"] = tflite("fp32_finetuned", matched)

    qat = quantization.quantize_model(model)
    quantization.calibrate(qat, calib, method="minmax", num_batches=8)
    reference.train(qat, corpus, _STEPS.value, learning_rate=_LR.value, seed=1)
    reports["qat_int8"] = tflite("qat_int8", qat, "int8")

    if _INT16.value:
        q16 = quantization.quantize_model(model, scheme="8bit_weights_16bit_activations")
        quantization.calibrate(q16, calib, method="minmax", num_batches=8)
        reference.train(q16, corpus, _STEPS.value, learning_rate=_LR.value, seed=1)
        reports["qat_16x8"] = tflite("qat_16x8", q16, "int16x8")
    if _INT4.value:
        q4 = quantization.quantize_model(model, scheme="4bit_weights")
        reference.train(q4, corpus, _STEPS.value, learning_rate=_LR.value, seed=1)
        reports["qat_w4_int4"] = tflite("qat_w4_int4", q4, "int4")
    if _PTQ.value:
        for method in ("minmax", "percentile", "mse", "entropy"):
            ptq = quantization.quantize_model(model)
            quantization.calibrate(ptq, calib, method=method)
            reports[f"ptq_{method}"] = tflite(f"ptq_{method}", ptq, "int8")
    for count in _CLUSTERS.value:
        clustered = clustering.cluster_weights(model, int(count))
        reference.train(clustered, corpus, _STEPS.value, learning_rate=_LR.value, seed=1)
        reports[f"cluster_{count}"] = tflite(
            f"cluster_{count}", clustering.strip_clustering(clustered)
        )

    latency = _latency({n: r.path for n, r in reports.items()}, _REPEATS.value)
    base = reports["fp32"]
    base_bpb = base.verification.bpb_artifact
    print(f"\n{_PRESET.value} GPT, {_STEPS.value} QAT steps; ratios vs fp32 TFLite")
    header = (
        f"{'artifact':<16}{'size_kb':>9}{'size_x':>8}{'gzip_x':>8}{'bpb':>8}{'d_bpb':>9}"
        f"{'ms_1t':>8}{'x_1t':>7}{'ms_2t':>8}{'x_2t':>7}"
    )
    print(header)
    base_gzip = len(gzip.compress(open(base.path, "rb").read()))
    for name, report in reports.items():
        bpb = report.verification.bpb_artifact
        gz = len(gzip.compress(open(report.path, "rb").read())) / base_gzip
        print(
            f"{name:<16}{report.size_bytes / 1024:>9.1f}{report.size_bytes / base.size_bytes:>8.3f}"
            f"{gz:>8.3f}{bpb:>8.4f}{bpb - base_bpb:>+9.4f}"
            f"{latency[name, 1]:>8.2f}{latency[name, 1] / latency['fp32', 1]:>7.2f}"
            f"{latency[name, 2]:>8.2f}{latency[name, 2] / latency['fp32', 2]:>7.2f}"
        )
    qat_bpb = reports["qat_int8"].verification.bpb_artifact
    matched_bpb = reports["fp32_finetuned"].verification.bpb_artifact
    print(f"QAT int8 vs the matched fp32 fine-tune: {qat_bpb - matched_bpb:+.4f} bpb")


if __name__ == "__main__":
    app.run(main)
