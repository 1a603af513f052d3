"""The layers a one-shot method compresses, each seen as a matrix ``(outputs, inputs)``.

A Dense or EinsumDense kernel is viewed as ``W`` with one row per output feature and
one column per input feature (the kernel's input axes moved last and flattened, as
pruning's grouping view does), and the layer's input activations are flattened the
same way into rows ``X`` of ``(calls x positions, inputs)``, so that ``X @ W.T`` is the
layer's matmul. Every algorithm works on that pair; the kernel is written back in its
own layout.
"""

import dataclasses
import math

import keras
import numpy as np

from keras_llmopt._src.core import layer_tree, targeting


@dataclasses.dataclass
class LinearTarget:
    """One compressible matmul layer.

    Attributes:
        path: The layer's path in the model.
        layer: The layer.
        variable: Its kernel variable.
        perm: Kernel transpose putting output axes first, input axes last.
        rows: Output features.
        cols: Input features.
        input_letters: For EinsumDense, the contracted letters in kernel order
            (``None`` for Dense: the last input axis).
        input_subscripts: For EinsumDense, the subscripts of its input.

    Example:
        >>> import keras
        >>> dense = keras.layers.Dense(3)
        >>> dense.build((None, 4))
        >>> target = as_linear_target("d", dense)
        >>> target.rows, target.cols, target.read_view().shape
        (3, 4, (3, 4))
    """

    path: str
    layer: object
    variable: object
    perm: tuple
    rows: int
    cols: int
    input_letters: tuple | None = None
    input_subscripts: str | None = None

    @property
    def shape(self):
        """The kernel's own shape."""
        return tuple(int(s) for s in self.variable.shape)

    def read_view(self):
        """The kernel as a float32 ``(rows, cols)`` numpy array."""
        kernel = keras.ops.convert_to_numpy(self.variable).astype(np.float32)
        return np.transpose(kernel, self.perm).reshape(self.rows, self.cols)

    def write_view(self, view):
        """Writes a ``(rows, cols)`` array back into the kernel variable."""
        transposed = tuple(self.shape[a] for a in self.perm)
        inverse = np.argsort(self.perm)
        kernel = np.transpose(np.asarray(view, np.float32).reshape(transposed), inverse)
        self.variable.assign(kernel.astype(self.variable.dtype))

    def input_rows(self, x):
        """The layer's input ``x`` (numpy) as float32 rows ``(n, cols)``."""
        x = np.asarray(x, dtype=np.float32)
        if self.input_letters is None:
            return x.reshape(-1, self.cols)
        subscripts = self.input_subscripts
        if "..." in subscripts:
            extra = x.ndim - (len(subscripts) - 3)
            subscripts = subscripts.replace("...", "".join(chr(0x100 + i) for i in range(extra)))
        contracted = [subscripts.index(letter) for letter in self.input_letters]
        kept = [i for i in range(len(subscripts)) if i not in contracted]
        return np.transpose(x, kept + contracted).reshape(-1, self.cols)


def as_linear_target(path, layer):
    """A :class:`LinearTarget` for a built Dense / EinsumDense ``layer``, or ``None``.

    Returns ``None`` for other layers (convolutions, embeddings), which the one-shot
    methods do not compress.

    Example:
        >>> import keras
        >>> layer = keras.layers.EinsumDense("btd,dnh->btnh", (None, 2, 4))
        >>> layer.build((None, 5, 6))
        >>> as_linear_target("q", layer).rows
        8
    """
    weights, _ = layer_tree.find_weights(layer)
    kernel = next((w for w in weights if w.name == "kernel"), None)
    if kernel is None:
        return None
    shape = kernel.shape
    if isinstance(layer, keras.layers.EinsumDense):
        parts = layer_tree.einsum_parts(layer)
        if parts is None:
            return None
        inputs, kernel_letters, _ = parts
        letters = tuple(kernel_letters[a] for a in sorted(kernel.input_axes))
        if any(letter not in inputs for letter in letters):
            return None
        extra = {"input_letters": letters, "input_subscripts": inputs}
    elif isinstance(layer, keras.layers.Dense) and len(shape) == 2:
        extra = {}
    else:
        return None
    input_axes = tuple(sorted(kernel.input_axes))
    output_axes = tuple(a for a in range(len(shape)) if a not in input_axes)
    return LinearTarget(
        path=path,
        layer=layer,
        variable=kernel.variable,
        perm=output_axes + input_axes,
        rows=math.prod(shape[a] for a in output_axes),
        cols=math.prod(shape[a] for a in input_axes),
        **extra,
    )


def select_targets(model, targets=None, ignore=None, method="compressed"):
    """The model's Dense / EinsumDense layers a one-shot method applies to.

    ``targets`` / ``ignore`` are the core's path patterns; the token embedding and the
    output head are left alone unless named.

    Returns:
        ``(report, [LinearTarget])``: the targeting report (every skip and why) and
        the selected layers, in tree order.

    Example:
        >>> from keras_llmopt import reference
        >>> report, found = select_targets(reference.build_gpt("tiny"))
        >>> found[0].path, "lm_head" in [t.path for t in found]
        ('block_0_attention/query', False)
    """

    def matmul_only(path, layer):
        if as_linear_target(path, layer) is None:
            return "not a Dense / EinsumDense matmul"
        return None

    report, selected = targeting.select_layers(
        model, targets=targets, ignore=ignore, layer_filter=matmul_only, action=method
    )
    found = [as_linear_target(path, layer) for path, (layer, _) in selected.items()]
    return report, found
