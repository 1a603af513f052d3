"""``keras-llmopt export``: a saved ``.keras`` model to a verified TFLite/ONNX/SavedModel."""

import os

import keras
import numpy as np
from absl import flags, logging

from keras_llmopt._src.cli import common
from keras_llmopt._src.cli import flags as cli_flags
from keras_llmopt._src.core.model_inputs import describe_inputs

HELP = (
    "Export --model (.keras) to --out as .tflite (any quantization), .onnx or a SavedModel "
    "folder, verified against the model on validation windows."
)
FLAG_NAMES = (
    "model",
    "out",
    "export_format",
    "export_quantization",
    "sequence_length",
    "export_batch_size",
    "export_sparse",
    "export_opset",
    "export_verify",
    "export_calibration_windows",
    "export_verify_windows",
    "generator",
    "cache_length",
    "prefill_lengths",
    "corpus_dir",
)

FORMAT = flags.DEFINE_enum(
    "export_format",
    None,
    ["tflite", "onnx", "saved_model"],
    "Artifact format (default: from --out: .tflite, .onnx, else a SavedModel folder).",
)
QUANTIZATION = flags.DEFINE_enum(
    "export_quantization",
    "none",
    ["none", "float16", "dynamic_int8", "int8", "int16x8", "int4"],
    "TFLite quantization mode (int8/int16x8 calibrate on training windows of the corpus).",
)
BATCH_SIZE = flags.DEFINE_integer(
    "export_batch_size", 1, "Fixed batch size of a .tflite artifact.", lower_bound=1
)
SPARSE = flags.DEFINE_bool(
    "export_sparse", False, "Store pruned weights in TFLite's sparse encoding."
)
OPSET = flags.DEFINE_integer("export_opset", 17, "ONNX opset.")
VERIFY = flags.DEFINE_bool(
    "export_verify", True, "Verify the artifact against the model (fail on mismatch)."
)
CALIBRATION_WINDOWS = flags.DEFINE_integer(
    "export_calibration_windows",
    64,
    "Training windows used to calibrate int8/int16x8.",
    lower_bound=1,
)
VERIFY_WINDOWS = flags.DEFINE_integer(
    "export_verify_windows",
    32,
    "Validation windows used to verify (bits per byte too).",
    lower_bound=1,
)
GENERATOR = flags.DEFINE_bool(
    "generator",
    False,
    "Write a generator file (LiteRT-LM prefill/decode signatures with a KV cache): a "
    ".tflite, or a .litertlm for Google's LiteRT-LM engine (byte tokenizer).",
)
CACHE_LENGTH = flags.DEFINE_integer(
    "cache_length",
    None,
    "--generator: cache positions (default: the model's length).",
    lower_bound=2,
)
PREFILL_LENGTHS = flags.DEFINE_list(
    "prefill_lengths", None, "--generator: prefill bucket lengths (default 16,4)."
)


def run(argv):
    del argv
    from keras_llmopt._src.export import onnx_export, saved_model, tflite

    path, out = cli_flags.MODEL.value, cli_flags.OUT.value
    if not path:
        raise ValueError("export: pass the .keras model to export with --model=PATH")
    if not out:
        raise ValueError("export: pass where to write the artifact with --out=PATH")
    if not os.path.exists(path):
        raise FileNotFoundError(f"export: no such model file. Received: --model={path}")
    if not path.endswith(".keras"):
        raise ValueError(f"export: --model must be a .keras file. Received: --model={path}")
    fmt = FORMAT.value or _format_of(out)
    quantization = None if QUANTIZATION.value == "none" else QUANTIZATION.value
    if fmt != "tflite" and (quantization or SPARSE.value):
        raise ValueError(
            f"export: --export_quantization/--export_sparse apply to TFLite only. Received: "
            f"--export_format={fmt}, --export_quantization={QUANTIZATION.value}, "
            f"--export_sparse={SPARSE.value}"
        )
    model = keras.saving.load_model(path, compile=False)
    length = common.sequence_length_of(model)
    data = calibration = None
    if _takes_tokens(model):
        corpus = common.corpus_for(length)
        windows = _spread(corpus.validation, VERIFY_WINDOWS.value)
        data = (windows[:, :-1], windows[:, 1:])
        calibration = _spread(corpus.train, CALIBRATION_WINDOWS.value)[:, :-1]
    verify = VERIFY.value
    if GENERATOR.value or out.endswith(".litertlm"):
        return _export_generator(model, out, quantization, length, data, calibration, verify)
    if fmt == "tflite":
        report = tflite.to_tflite(
            model,
            out,
            quantization=quantization,
            sequence_length=length,
            batch_size=BATCH_SIZE.value,
            sparse=SPARSE.value,
            verify=verify,
            representative_dataset=calibration if quantization in ("int8", "int16x8") else None,
            verification_data=data,
        )
    elif fmt == "onnx":
        report = onnx_export.to_onnx(
            model,
            out,
            opset=OPSET.value,
            sequence_length=length,
            verify=verify,
            verification_data=data,
        )
    else:
        report = saved_model.to_saved_model(model, out, verify=verify, verification_data=data)
    logging.info("export: %s", report.notes)
    row = {
        "artifact": report.path,
        "format": report.format,
        "quantization": report.quantization or "-",
        "size_bytes": report.size_bytes,
    }
    v = report.verification
    if v is not None:
        row.update(
            max_abs_error=v.max_abs_error,
            top1=v.top1_agreement,
            bpb_model=v.bpb_model,
            bpb_artifact=v.bpb_artifact,
        )
    common.print_table([row], list(row))
    return report


def _export_generator(model, out, quantization, length, data, calibration, verify):
    from keras_llmopt._src.export.generator import to_tflite_generator
    from keras_llmopt._src.export.litertlm import to_litertlm

    cache_length = CACHE_LENGTH.value or length
    lengths = [int(n) for n in PREFILL_LENGTHS.value] if PREFILL_LENGTHS.value else None
    kwargs = dict(
        cache_length=cache_length,
        prefill_lengths=lengths,
        quantization=quantization,
        verify=verify,
        verification_data=None if data is None else data[0][:2],
        representative_dataset=calibration if quantization == "int8" else None,
    )
    write = to_litertlm if out.endswith(".litertlm") else to_tflite_generator
    report = write(model, out, **kwargs)
    generator = report.summary.get("generator", {})
    row = {
        "artifact": report.path,
        "format": report.format,
        "quantization": report.quantization or "-",
        "size_bytes": report.size_bytes,
        "cache_length": cache_length,
        "prefill_lengths": ",".join(str(n) for n in generator.get("prefill_lengths", [])),
        "greedy_agreement": generator.get("greedy_agreement"),
    }
    common.print_table([row], list(row))
    return report


def _format_of(out):
    if out.endswith(".tflite"):
        return "tflite"
    if out.endswith(".onnx"):
        return "onnx"
    return "saved_model"


def _takes_tokens(model):
    specs = describe_inputs(model).specs
    return len(specs) == 1 and specs[0].is_tokens


def _spread(windows, count):
    index = np.linspace(0, len(windows) - 1, min(count, len(windows))).round().astype(int)
    return np.asarray(windows[index]).astype(np.int32)
