"""Folding a per-channel scale into a normalization and the layers that read it.

SmoothQuant and AWQ rescale input channel ``j`` of a group of layers by ``1 / s_j``
and their weights' column ``j`` by ``s_j``: the float function is unchanged when the
``1 / s`` goes into the normalization that produced the input. A normalization
computes ``n(x) * (c + g) + b`` with a scale vector ``g`` (``c`` is 0, or 1 for
Gemma-style ``1 + scale`` norms, found by probing the layer) and an optional offset
``b``; folding sets ``g' = (c + g) / s - c`` and ``b' = b / s``.
"""

import dataclasses

import keras
import numpy as np

from keras_llmopt._src.core import layer_tree

_OFFSET_WORDS = ("beta", "bias", "offset", "center")


@dataclasses.dataclass
class NormFold:
    """A normalization whose output feeds one step's layers, and how to fold into it.

    Attributes:
        path: The normalization's path.
        layer: The normalization layer.
        scale: Its scale vector variable ``g``.
        offset: Its offset variable ``b``, or ``None``.
        constant: ``c`` in ``n(x) * (c + g)`` (0.0 or 1.0).
    """

    path: str
    layer: object
    scale: object
    offset: object
    constant: float

    def apply(self, step, scales):
        """Folds ``scales`` (``(cols,)``) into the norm and ``step``'s kernels; returns an undo.

        Example:
            >>> import keras, numpy as np
            >>> from keras_llmopt._src.llm import linear_targets, sequential
            >>> x = keras.Input((3, 4))
            >>> n = keras.layers.LayerNormalization(name="n")
            >>> d = keras.layers.Dense(2, name="d")
            >>> model = keras.Model(x, d(n(x)))
            >>> sample = np.random.default_rng(0).normal(size=(1, 3, 4)).astype("float32")
            >>> before = model(sample)
            >>> step = sequential.Step(0, [linear_targets.as_linear_target("d", d)], norm_path="n")
            >>> undo = norm_fold(model, step).apply(step, np.array([1, 2, 4, 8], "float32"))
            >>> bool(np.allclose(model(sample), before, atol=1e-5))
            True
        """
        scales = np.asarray(scales, np.float64)
        saved = [(v, keras.ops.convert_to_numpy(v)) for v in self._variables(step)]
        g = keras.ops.convert_to_numpy(self.scale).astype(np.float64)
        self.scale.assign(((self.constant + g) / scales - self.constant).astype(np.float32))
        if self.offset is not None:
            b = keras.ops.convert_to_numpy(self.offset).astype(np.float64)
            self.offset.assign((b / scales).astype(np.float32))
        for target in step.targets:
            target.write_view(target.read_view() * scales[None, :].astype(np.float32))

        def undo():
            for variable, value in saved:
                variable.assign(value)

        return undo

    def _variables(self, step):
        found = [self.scale] + ([self.offset] if self.offset is not None else [])
        return found + [t.variable for t in step.targets]


def _probe_constant(layer, scale, offset):
    """``c`` of ``n(x) * (c + g)``: the output with ``g = b = 0`` is 0 only when c is 0."""
    saved = [(v, keras.ops.convert_to_numpy(v)) for v in (scale, offset) if v is not None]
    try:
        for variable, value in saved:
            variable.assign(np.zeros_like(value))
        width = int(scale.shape[0])
        x = np.random.default_rng(0).normal(size=(1, 2, width)).astype(np.float32)
        out = keras.ops.convert_to_numpy(layer(x))
    finally:
        for variable, value in saved:
            variable.assign(value)
    return 0.0 if float(np.abs(out).max()) < 1e-6 else 1.0


def norm_fold(model, step):
    """The :class:`NormFold` of ``step``'s normalization, or ``None`` when it has no scale.

    Example:
        >>> from keras_llmopt import reference
        >>> from keras_llmopt._src.llm import linear_targets, sequential
        >>> import numpy as np
        >>> model = reference.build_gpt("tiny")
        >>> _, found = linear_targets.select_targets(model)
        >>> steps, _ = sequential.plan_steps(model, found, np.zeros((1, 8), "int32"))
        >>> norm_fold(model, steps[0]).constant
        0.0
    """
    if step.norm_path is None:
        return None
    for target in step.targets:
        letters = target.input_letters
        if letters is not None and (len(letters) != 1 or target.input_subscripts[-1] != letters[0]):
            return None  # its inputs are not the norm's last axis
    layer = layer_tree.get_layer_by_path(model, step.norm_path)
    width = step.targets[0].cols
    vectors = [w for w in layer.weights if tuple(w.shape) == (width,)]
    offsets = [w for w in vectors if any(word in w.path.lower() for word in _OFFSET_WORDS)]
    scales = [w for w in vectors if all(w is not o for o in offsets)]
    if len(scales) != 1 or len(offsets) > 1 or len(vectors) != len(layer.weights):
        return None
    offset = offsets[0] if offsets else None
    constant = _probe_constant(layer, scales[0], offset)
    return NormFold(step.norm_path, layer, scales[0], offset, constant)
