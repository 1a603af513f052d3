"""The TFLite export modes: one table row per ``quantization=`` value.

Each row says how the converter is set up, whether the mode needs calibration (a
representative dataset, or the ranges a quantization-aware model learned), whether the
graph is rewritten for the integer quantizers first, what happens after conversion,
and which tolerance verifies the result.
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class TFLiteMode:
    """How one TFLite quantization mode converts and verifies.

    Attributes:
        name: The ``quantization=`` value (``None`` for float32).
        tolerance: Key of ``verification.DEFAULT_TOLERANCES`` the artifact is held to.
        optimize: Whether the converter's ``Optimize.DEFAULT`` is on (a QAT model turns
            it on in every mode: its fake-quant ranges are read then).
        float16_weights: Store float weights as float16.
        calibrated: Needs a representative dataset unless the model is
            quantization-aware (its learned ranges are used).
        integer_rewrite: Rewrite the frozen graph first (``graph_rewrite``).
        ops_with_data: ``tf.lite.OpsSet`` names when calibrating on data.
        ops_from_ranges: ``tf.lite.OpsSet`` names when reading QAT ranges.
        int4_weights: Convert to float32, then store the weights as int4 with the AI
            Edge Quantizer (``int4.py``).

    Example:
        >>> MODES["int8"].calibrated, MODES["int8"].tolerance
        (True, 'int8')
    """

    name: str | None
    tolerance: str
    optimize: bool = False
    float16_weights: bool = False
    calibrated: bool = False
    integer_rewrite: bool = False
    ops_with_data: tuple = ()
    ops_from_ranges: tuple = ()
    int4_weights: bool = False


_INT16X8_OPS = ("EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8", "TFLITE_BUILTINS")

MODES = {
    mode.name: mode
    for mode in (
        TFLiteMode(None, "float32"),
        TFLiteMode("float16", "float16", optimize=True, float16_weights=True),
        TFLiteMode("dynamic_int8", "dynamic_int8", optimize=True),
        # A QAT model without data: the builtin op set, every op between fake-quant
        # ranges quantized to int8 from them (TFLITE_BUILTINS_INT8 would demand a
        # dataset; the 16x8 op set would misread 8-bit ranges).
        TFLiteMode(
            "int8",
            "int8",
            optimize=True,
            calibrated=True,
            integer_rewrite=True,
            ops_with_data=("TFLITE_BUILTINS_INT8",),
            ops_from_ranges=("TFLITE_BUILTINS",),
        ),
        TFLiteMode(
            "int16x8",
            "int16x8",
            optimize=True,
            calibrated=True,
            integer_rewrite=True,
            ops_with_data=_INT16X8_OPS,
            ops_from_ranges=_INT16X8_OPS,
        ),
        TFLiteMode("int4", "int4", int4_weights=True),
    )
}
QUANTIZATION_MODES = tuple(MODES)


def get_mode(quantization):
    """The ``TFLiteMode`` of a ``quantization=`` value; raises ``ValueError`` if unknown.

    Example:
        >>> get_mode("int16x8").integer_rewrite
        True
    """
    if not isinstance(quantization, (str, type(None))) or quantization not in MODES:
        raise ValueError(
            f"Unknown TFLite quantization mode. Received: quantization={quantization!r}; "
            f"accepted: {list(QUANTIZATION_MODES)}"
        )
    return MODES[quantization]


def configure(converter, mode, is_qat=False, sparse=False, representative_dataset=None):
    """Sets a ``tf.lite.TFLiteConverter`` up for ``mode``.

    Args:
        converter: The converter.
        mode: A ``TFLiteMode``.
        is_qat: Whether the graph carries fake-quant ranges.
        sparse: Store mostly-zero weights in TFLite's sparse encoding.
        representative_dataset: The converter's zero-argument generator, or ``None``.

    Example:
        >>> import tensorflow as tf
        >>> f = tf.function(lambda x: x + 1.0, input_signature=[tf.TensorSpec((1,))])
        >>> converter = tf.lite.TFLiteConverter.from_concrete_functions(
        ...     [f.get_concrete_function()], f)
        >>> configure(converter, MODES["float16"])
        >>> converter.target_spec.supported_types
        [tf.float16]
    """
    import tensorflow as tf

    optimizations = []
    if mode.optimize or is_qat:
        optimizations.append(tf.lite.Optimize.DEFAULT)
    if sparse:
        optimizations.append(tf.lite.Optimize.EXPERIMENTAL_SPARSITY)
    converter.optimizations = optimizations
    if mode.float16_weights:
        converter.target_spec.supported_types = [tf.float16]
    if mode.calibrated:
        if representative_dataset is not None:
            converter.representative_dataset = representative_dataset
        ops = mode.ops_with_data if representative_dataset is not None else mode.ops_from_ranges
        if ops:
            converter.target_spec.supported_ops = [getattr(tf.lite.OpsSet, op) for op in ops]
