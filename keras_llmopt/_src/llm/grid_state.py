"""Weight-only quantized layers left by GPTQ and AWQ: a kernel held on a chosen grid.

The one-shot quantizers pick, per output row and group of inputs, a scale (a
float16-representable value, as LiteRT stores them) and integer codes. The layer
keeps computing in float: its kernel holds ``codes * scale`` exactly, and a
:class:`WeightGridState` (variables: the scales) keeps every call on that grid,
saves and loads with the model, and tells the exporter which grid to store, so an
``int4`` / ``dynamic_int8`` ``.tflite`` holds what the solver chose.
"""

import keras
import numpy as np

from keras_llmopt._src.core import layer_state

TECHNIQUE = "weight_grid"


class WeightGridState(layer_state.LayerState):
    """The grid of one weight-only quantized kernel (symmetric; the scales are variables).

    Args:
        bits: Code width (4 or 8).
        group_size: Inputs per scale, or -1 for one scale per output.
        perm: Kernel transpose to the ``(outputs, inputs)`` view.
        rows: Output features.
        cols: Input features.
        method: The method that chose the grid (``"gptq"``, ``"awq"``).
        **kwargs: Base layer arguments.

    Example:
        >>> import keras, numpy as np
        >>> dense = keras.layers.Dense(2, use_bias=False)
        >>> dense.build((None, 4))
        >>> state = attach(dense, np.full((2, 1), 0.5, "float32"), 4, -1, (1, 0), "rtn")
        >>> _ = dense.kernel.assign(np.full((4, 2), 0.74, "float32"))
        >>> float(dense(np.ones((1, 4), "float32"))[0, 0])  # 0.74 -> 0.5 on the grid
        2.0
    """

    technique = TECHNIQUE
    order = 40

    def __init__(self, bits, group_size, perm, rows, cols, method="gptq", **kwargs):
        super().__init__(**kwargs)
        self.bits = int(bits)
        self.group_size = int(group_size)
        self.perm = tuple(int(p) for p in perm)
        self.rows = int(rows)
        self.cols = int(cols)
        self.method = method
        self.kernel_attr = None
        self.scales = None

    @property
    def num_groups(self):
        """Scales per output row."""
        return 1 if self.group_size == -1 else self.cols // self.group_size

    def setup(self, owner, kernel_attr):
        """Creates the scales variable for ``owner``'s kernel (stored at ``kernel_attr``)."""
        self.kernel_attr = kernel_attr
        self.scales = self.add_weight(
            name="grid_scales",
            shape=(self.rows, self.num_groups),
            dtype="float32",
            initializer="ones",
            trainable=False,
            aggregation="only_first_replica",
        )

    def _project(self, value):
        ops = keras.ops
        shape = tuple(value.shape)
        view = ops.reshape(ops.transpose(value, self.perm), (self.rows, self.cols))
        width = self.cols // self.num_groups
        scales = ops.repeat(ops.convert_to_tensor(self.scales), width, axis=1)
        high = 2 ** (self.bits - 1) - 1
        low = -high  # a narrow symmetric range, as LiteRT stores it
        view = ops.clip(ops.round(view / scales), low, high) * scales
        transposed = tuple(shape[a] for a in self.perm)
        return ops.transpose(ops.reshape(view, transposed), tuple(np.argsort(self.perm)))

    def weight_attrs(self):
        return [self.kernel_attr]

    def transform_weight(self, attr, value, training):
        return self._project(value)

    def baked_weights(self, values):
        return {self.kernel_attr: self._project(values[self.kernel_attr])}

    def codes(self):
        """The kernel's integer codes in the ``(outputs, inputs)`` view (int8)."""
        kernel = keras.ops.convert_to_numpy(getattr(self.get_owner(), self.kernel_attr))
        view = np.transpose(kernel, self.perm).reshape(self.rows, self.cols)
        scales = np.repeat(keras.ops.convert_to_numpy(self.scales), self.cols // self.num_groups, 1)
        high = 2 ** (self.bits - 1) - 1
        low = -high  # a narrow symmetric range, as LiteRT stores it
        return np.clip(np.round(view / scales), low, high).astype(np.int8)

    def record(self):
        return {
            "bits": self.bits,
            "group_size": self.group_size,
            "perm": list(self.perm),
            "rows": self.rows,
            "cols": self.cols,
            "method": self.method,
            "kernel_attr": self.kernel_attr,
        }


def attach(layer, scales, bits, group_size, perm, method):
    """Installs a :class:`WeightGridState` with ``scales`` on ``layer``'s kernel; returns it.

    Example:
        >>> import keras, numpy as np
        >>> dense = keras.layers.Dense(2)
        >>> dense.build((None, 4))
        >>> attach(dense, np.ones((2, 2), "float32"), 4, 2, (1, 0), "gptq").num_groups
        2
    """
    from keras_llmopt._src.core import layer_tree

    kernel = layer.kernel
    attr = layer_tree.storage_attr_of(layer, kernel)
    rows, groups = np.shape(scales)
    cols = int(np.prod(kernel.shape)) // rows
    state = WeightGridState(bits, group_size, perm, rows, cols, method, name=f"{layer.name}_grid")
    state.setup(layer, attr)
    state.scales.assign(np.asarray(scales, np.float32))
    layer_state.install(layer, state)
    return state


def restore(layer, record, path):
    """Re-creates a saved layer's grid state (the scales are loaded after).

    Example:
        >>> import keras, numpy as np
        >>> dense = keras.layers.Dense(2)
        >>> dense.build((None, 4))
        >>> record = attach(dense, np.ones((2, 1), "float32"), 8, -1, (1, 0), "gptq").record()
        >>> twin = keras.layers.Dense(2)
        >>> twin.build((None, 4))
        >>> restore(twin, record, "twin").bits
        8
    """
    del path
    settings = {k: record[k] for k in ("bits", "group_size", "perm", "rows", "cols", "method")}
    state = WeightGridState(**settings, name=f"{layer.name}_grid")
    state.setup(layer, record["kernel_attr"])
    return state


def grid_states(model):
    """``[(path, WeightGridState)]`` of every weight-only quantized layer of ``model``.

    Example:
        >>> from keras_llmopt import reference
        >>> grid_states(reference.build_gpt("tiny"))
        []
    """
    return layer_state.find_states(model, TECHNIQUE)
