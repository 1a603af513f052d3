"""Signatures to one ``.tflite`` flatbuffer: trace, freeze, name, convert.

Each :class:`~keras_llmopt._src.export.signature_def.Signature` is traced at its fixed
input shapes and frozen (weights become constants: a Keras 3 model's variables would
otherwise reach the file uninitialised). The frozen graphs are wrapped again in
functions whose inputs and outputs carry the signature's names, saved together as one
SavedModel (in a temporary folder) and converted with
``TFLiteConverter.from_saved_model(signature_keys=...)``: the ``.tflite`` then has one
SignatureDef per signature, keyed and named exactly as given, whatever the mode
(converting the frozen function directly loses the output names, and a quantization-
aware graph loses the SignatureDef altogether). Identical weights of several
signatures are stored once.
"""

import dataclasses
import tempfile

from keras_llmopt._src.export import graph_rewrite, signature, tflite_modes


@dataclasses.dataclass(frozen=True)
class TracedSignatures:
    """Frozen graphs of some signatures, ready to convert.

    Attributes:
        signatures: The ``Signature`` s, in order.
        frozen: One frozen concrete function per signature (outputs in the signature's
            order).
        is_qat: Whether any graph carries fake-quant ranges.
        rewritten: How many graph nodes ``graph_rewrite`` changed.
        num_parameters: Elements of the distinct variables the signatures read (each
            shared weight counted once).
        keep_matmul_weights: Stop the converter multiplying a neighbouring constant
            (an RMSNorm scale) into FULLY_CONNECTED weights, so each weight is the
            model's kernel as it is (needed to keep one-shot weight grids).
    """

    signatures: tuple
    frozen: tuple
    is_qat: bool
    rewritten: int = 0
    num_parameters: int = 0
    keep_matmul_weights: bool = False


def trace(signatures, integer_rewrite=False):
    """Traces and freezes every signature; rewrites the graphs for integer modes.

    Args:
        signatures: ``Signature`` s with distinct names.
        integer_rewrite: Apply ``graph_rewrite.rewrite_for_integer`` to each graph.

    Returns:
        A ``TracedSignatures``.

    Example:
        >>> import tensorflow as tf
        >>> from keras_llmopt._src.export.signature_def import Signature
        >>> s = Signature("twice", lambda x: {"y": 2.0 * x}, [("x", (2,), "float32")],
        ...               ["y"], lambda x: {"y": 2.0 * x})
        >>> trace([s]).frozen[0](tf.ones((2,)))[0].numpy().tolist()
        [2.0, 2.0]
    """
    import tensorflow as tf

    names = [s.name for s in signatures]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if not signatures or duplicates:
        raise ValueError(
            f"Export needs one or more signatures with distinct names. Received: {names}"
        )
    frozen_functions = []
    is_qat = False
    rewritten = 0
    variables = {}
    for sig in signatures:
        function = tf.function(
            _flat_outputs(sig), input_signature=signature.tensor_specs(sig.inputs), autograph=False
        )
        concrete = function.get_concrete_function()
        for variable in concrete.variables:
            variables[variable.ref()] = int(variable.shape.num_elements() or 0)
        frozen = signature.frozen_function(function)
        is_qat = is_qat or signature.has_fake_quant(frozen)
        if integer_rewrite:
            frozen, count = graph_rewrite.rewrite_for_integer(frozen)
            rewritten += count
        frozen_functions.append(frozen)
    return TracedSignatures(
        tuple(signatures),
        tuple(frozen_functions),
        is_qat,
        rewritten,
        sum(variables.values()),
    )


def convert(traced, mode, sparse=False, representative_dataset=None, what="to_tflite"):
    """Converts traced signatures into one ``.tflite`` flatbuffer in ``mode``.

    Args:
        traced: A ``TracedSignatures``.
        mode: A ``tflite_modes.TFLiteMode`` (an int4 mode converts to float32 here).
        sparse: Store mostly-zero weights sparsely.
        representative_dataset: A callable returning an iterable of calibration samples:
            a dict of arrays keyed by input name, a list of arrays in input order (one
            signature only), or a ``(signature_name, dict)`` tuple.
        what: The caller's name, for error messages.

    Returns:
        The flatbuffer's bytes.

    Example:
        >>> from keras_llmopt._src.export.signature_def import Signature
        >>> s = Signature("twice", lambda x: {"y": 2.0 * x}, [("x", (2,), "float32")],
        ...               ["y"], lambda x: {"y": 2.0 * x})
        >>> content = convert(trace([s]), tflite_modes.MODES[None])
        >>> content[4:8]
        b'TFL3'
    """
    import tensorflow as tf

    module = tf.Module()
    signatures = {}
    for sig, frozen in zip(traced.signatures, traced.frozen):
        function = tf.function(
            _named_outputs(sig, frozen),
            input_signature=signature.tensor_specs(sig.inputs),
            autograph=False,
        )
        setattr(module, f"signature_{len(signatures)}", function)
        signatures[sig.name] = function.get_concrete_function()
    with tempfile.TemporaryDirectory(prefix="keras_llmopt_signatures_") as folder:
        # Only the forward graphs are converted: custom gradients (Keras' silu in
        # KerasHub Llama captures a tensor they cannot save) are left out.
        options = tf.saved_model.SaveOptions(experimental_custom_gradients=False)
        tf.saved_model.save(module, folder, signatures=signatures, options=options)
        converter = tf.lite.TFLiteConverter.from_saved_model(
            folder, signature_keys=list(signatures)
        )
        data = _named_samples(representative_dataset, traced.signatures)
        conversion_mode = tflite_modes.MODES[None] if mode.int4_weights else mode
        tflite_modes.configure(
            converter,
            conversion_mode,
            is_qat=traced.is_qat,
            sparse=sparse,
            representative_dataset=data,
        )
        # The converter otherwise folds `x * scale` (RMSNorm's last op) into the next
        # FULLY_CONNECTED's weight, moving it off a one-shot grid.
        converter._experimental_disable_fuse_mul_and_fc = traced.keep_matmul_weights
        try:
            return converter.convert()
        except Exception as error:  # the converter raises many types; keep its message
            raise RuntimeError(
                f"{what}: the TFLite converter failed for quantization={mode.name!r}, "
                f"sparse={sparse}: {_known_limit(error, mode, traced.is_qat)}{error}"
            ) from error


def _known_limit(error, mode, is_qat):
    """A hint for converter failures whose cause and way around are known."""
    text = str(error)
    if is_qat and mode.name == "int16x8" and "'tfl.tile' op operand" in text and "i16" in text:
        return (
            "the converter has no int16 TILE for quantization-aware graphs (KerasHub's "
            "grouped-query attention repeats keys and values with `ops.repeat`). Export "
            "the float model with quantization='int16x8' and representative_dataset= "
            "(calibrated 16x8, whose kernels do take int16 TILE), or QAT with the int8 "
            "scheme and quantization='int8'. The converter said: "
        )
    return ""


def _flat_outputs(sig):
    # Positional inputs in the signature's order; outputs as a tuple in its order (a
    # frozen graph keeps that order, not a dict's names).
    def flat(*values):
        result = sig.function(**dict(zip(sig.input_names, values)))
        return sig.ordered_outputs(result, "function")

    return flat


def _named_outputs(sig, frozen):
    import tensorflow as tf

    def named(*values):
        return dict(zip(sig.outputs, tf.nest.flatten(frozen(*values))))

    return named


def _named_samples(data, signatures):
    # The calibrator matches a list to tensor indices, whose order a SavedModel does not
    # fix; dicts keyed by input name (with the signature key when there are several)
    # are matched by name.
    if data is None:
        return None

    def generator():
        for sample in data():
            if isinstance(sample, tuple) and len(sample) == 2 and isinstance(sample[0], str):
                yield sample
            elif isinstance(sample, dict):
                yield sample if len(signatures) == 1 else (signatures[0].name, sample)
            elif len(signatures) == 1:
                values = sample if isinstance(sample, (list, tuple)) else [sample]
                yield dict(zip(signatures[0].input_names, values))
            else:
                raise ValueError(
                    "representative_dataset: with several signatures each sample must be "
                    "a (signature_name, dict of arrays) tuple. Received: a sample of type "
                    f"{type(sample).__name__}"
                )

    return generator
