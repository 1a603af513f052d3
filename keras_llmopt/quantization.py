"""Quantization-aware training and calibrated post-training quantization (tfmot's API).

tfmot code ports by changing the import::

    from keras_llmopt import quantization
    q = quantization.quantize_model(model)          # any Keras 3 model, token ids stay int
    q.compile(...); q.fit(...)                      # ranges learned while fine-tuning
    keras_llmopt.export.to_tflite(q, "model.tflite", quantization="int8")

or, without training, ``quantization.calibrate(q, data, method="entropy")``.

Example:
    >>> from keras_llmopt import quantization, reference
    >>> q = quantization.quantize_model(reference.build_gpt("tiny"))
    >>> q.quantize_report.scheme
    'default_8bit'
"""

from keras_llmopt._src.quantization.calibrate import calibrate
from keras_llmopt._src.quantization.configs import (
    ATTENTION_MASK_MARGIN,
    QuantizeConfig,
    register_default_config,
)
from keras_llmopt._src.quantization.layer_quantizers import (
    ActivationQuantizer,
    FixedRangeQuantizer,
    Quantizer,
    WeightQuantizer,
)
from keras_llmopt._src.quantization.quantize import (
    QuantizeReport,
    quantize_annotate_layer,
    quantize_annotate_model,
    quantize_apply,
    quantize_model,
    quantize_scope,
    strip_quantization,
)
from keras_llmopt._src.quantization.schemes import SCHEMES, QuantizeScheme
from keras_llmopt._src.quantization.state import QuantizeState

__all__ = [
    "ATTENTION_MASK_MARGIN",
    "ActivationQuantizer",
    "FixedRangeQuantizer",
    "QuantizeConfig",
    "QuantizeReport",
    "QuantizeScheme",
    "QuantizeState",
    "Quantizer",
    "SCHEMES",
    "WeightQuantizer",
    "calibrate",
    "quantize_annotate_layer",
    "quantize_annotate_model",
    "quantize_apply",
    "quantize_model",
    "quantize_scope",
    "register_default_config",
    "strip_quantization",
]
