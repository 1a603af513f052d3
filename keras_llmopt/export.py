"""Verified export: SavedModel, TFLite (every converter mode) and ONNX.

Every ``to_*`` runs the artifact back (LiteRT, ONNX Runtime or TensorFlow), compares it
with the Keras model, and only then moves it into place; a mismatch raises
``VerificationError`` saying by how much, and leaves nothing half-written. Every
``.tflite`` carries named signatures: ``serving_default`` with the model's input names
and an ``output`` for ``to_tflite``; the keys and names you give for
``to_tflite_signatures``.

Example:
    >>> import numpy as np
    >>> from keras_llmopt import export, reference
    >>> model = reference.build_gpt("tiny")
    >>> report = export.to_tflite(model, "gpt.tflite", quantization="dynamic_int8")
    >>> report.verification.passed, report.size_bytes < 4 * model.count_params()
    (True, True)
    >>> runner = export.load_runner("gpt.tflite")
    >>> runner(np.zeros((2, 64), "int32")).shape
    (2, 64, 256)
    >>> report.summary["signatures"]
    {'serving_default': {'inputs': ['tokens'], 'outputs': ['output']}}
"""

from keras_llmopt._src.core.model_inputs import InputSpec
from keras_llmopt._src.export.generator import GENERATOR_MODES, to_tflite_generator
from keras_llmopt._src.export.generator_runner import GeneratorRunner, load_generator
from keras_llmopt._src.export.litertlm import to_litertlm
from keras_llmopt._src.export.onnx_export import DEFAULT_OPSET, replace_erfc, to_onnx
from keras_llmopt._src.export.report import ExportReport
from keras_llmopt._src.export.runtime import Runner, load_runner, measure_latency
from keras_llmopt._src.export.saved_model import to_saved_model
from keras_llmopt._src.export.signature_def import Signature
from keras_llmopt._src.export.signature_verification import (
    SignaturesVerification,
    verify_signatures,
)
from keras_llmopt._src.export.tflite import QUANTIZATION_MODES, to_tflite
from keras_llmopt._src.export.tflite_signatures import to_tflite_signatures
from keras_llmopt._src.export.verification import (
    DEFAULT_TOLERANCES,
    VerificationError,
    VerificationReport,
    verify,
)
from keras_llmopt._src.export.window_generator import WindowGenerator

__all__ = [
    "DEFAULT_OPSET",
    "DEFAULT_TOLERANCES",
    "ExportReport",
    "GENERATOR_MODES",
    "GeneratorRunner",
    "InputSpec",
    "QUANTIZATION_MODES",
    "Runner",
    "Signature",
    "SignaturesVerification",
    "VerificationError",
    "VerificationReport",
    "WindowGenerator",
    "load_generator",
    "load_runner",
    "measure_latency",
    "replace_erfc",
    "to_litertlm",
    "to_onnx",
    "to_saved_model",
    "to_tflite",
    "to_tflite_generator",
    "to_tflite_signatures",
    "verify",
    "verify_signatures",
]
