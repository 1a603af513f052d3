"""The int4/int8 matmul weights of a ``.tflite``, as writable views into its bytes.

Dense symmetric weights of FULLY_CONNECTED / BATCH_MATMUL ops in every subgraph, with
their per-channel float32 scales or blockwise float16 scales tensor, read with the
quantized (output) dimension as rows; :mod:`weight_grids` reads and rewrites them.
"""

import collections
import dataclasses

import numpy as np

from keras_llmopt._src.export.report import MATMUL_OPS

_INT_TYPES = {"INT4": 4, "INT8": 8}


def _rows(array, axis):
    """``array`` as rows along ``axis``: ``(array.shape[axis], everything else)``."""
    return np.moveaxis(array, axis, 0).reshape(array.shape[axis], -1)


def _unrows(rows, shape, axis):
    """The inverse of :func:`_rows`: rows back to an array of ``shape``."""
    moved = (shape[axis],) + tuple(np.delete(shape, axis))
    return np.moveaxis(rows.reshape(moved), 0, axis)


def steps(scales, columns):
    """Per-group scales repeated to one per weight of ``columns`` input columns.

    Example:
        >>> steps(np.array([[1.0, 2.0]]), 4)
        array([[1., 1., 2., 2.]])
    """
    return np.repeat(scales, columns // scales.shape[1], axis=1)


@dataclasses.dataclass
class StoredWeight:
    """One int4/int8 matmul weight of a file, with writable views where it lives.

    Example:
        >>> weights, _ = read_weights(content)  # doctest: +SKIP
        >>> weights[0].codes().shape  # (out, in)  # doctest: +SKIP
        (64, 32)
    """

    key: str
    bits: int
    shape: tuple  # the tensor's shape
    out_axis: int  # its output (quantized) dimension
    data: np.ndarray  # uint8 view of the codes
    scale: np.ndarray  # view of the float32 quantization scales or the float16 scales tensor
    scale_shape: tuple
    scale_axis: int
    block_size: int = -1  # -1 per channel, 0 per tensor, else blockwise
    tensors: set = dataclasses.field(default_factory=set)  # (subgraph, tensor) pairs

    @property
    def out_in(self):
        return self.shape[self.out_axis], int(np.prod(self.shape)) // self.shape[self.out_axis]

    def codes(self):
        if self.bits == 4:
            nibbles = np.stack([self.data & 15, self.data >> 4], axis=-1).reshape(-1)
            flat = (nibbles.astype(np.int8) - 16 * (nibbles > 7)).astype(np.int8)
        else:
            flat = self.data.view(np.int8)
        return _rows(flat[: int(np.prod(self.shape))].reshape(self.shape), self.out_axis)

    def scales(self):
        values = self.scale.reshape(self.scale_shape).astype(np.float32)
        rows = _rows(values, self.scale_axis)
        return np.repeat(rows, self.out_in[0], axis=0) if self.block_size == 0 else rows

    def dequantized(self):
        return self.codes().astype(np.float32) * steps(self.scales(), self.out_in[1])

    def write(self, codes, scales):
        flat = _unrows(codes, self.shape, self.out_axis).reshape(-1).view(np.uint8)
        if self.bits == 4:
            nibbles = np.zeros(2 * self.data.size, np.uint8)
            nibbles[: flat.size] = flat & 15
            flat = nibbles[0::2] | (nibbles[1::2] << 4)  # the first value in the low nibble
        self.data[:] = flat
        values = _unrows(scales, self.scale_shape, self.scale_axis)
        self.scale[:] = values.astype(self.scale.dtype).reshape(-1)


def _buffer_view(model, data, index):
    buffer = model.Buffers(index)
    if buffer.Offset() > 1:  # stored after the flatbuffer (the AI Edge Quantizer may do so)
        return np.frombuffer(data, np.uint8, count=buffer.Size(), offset=buffer.Offset())
    view = buffer.DataAsNumpy()
    return view if isinstance(view, np.ndarray) and view.size else None


def read_weights(data):
    """``(weights, owners)``: every int4/int8 dense matmul weight, and who uses each vector.

    ``owners`` maps the address of every buffer and scale vector to the
    ``(subgraph, tensor)`` pairs that read it, to refuse patching shared data.

    Example:
        >>> import tensorflow as tf
        >>> w = np.arange(-1024, 1024, dtype=np.float32).reshape(32, 64)
        >>> f = tf.function(lambda x: x @ w, [tf.TensorSpec((1, 32))])
        >>> c = tf.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function()], f)
        >>> c.optimizations = [tf.lite.Optimize.DEFAULT]  # dynamic-range int8
        >>> weights, owners = read_weights(bytearray(c.convert()))
        >>> [(w.bits, w.out_in, w.block_size) for w in weights]
        [(8, (64, 32), -1)]
    """
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.Model.GetRootAs(data, 0)
    op_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    types = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    blockwise = schema.QuantizationDetails.BlockwiseQuantization
    weights, owners, keys = [], collections.defaultdict(set), set()
    for g in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(g)
        weight_inputs = set()
        for i in range(subgraph.OperatorsLength()):
            op = subgraph.Operators(i)
            code = model.OperatorCodes(op.OpcodeIndex())
            if op_names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode())) in MATMUL_OPS:
                weight_inputs.update([int(op.Inputs(1))] if op.InputsLength() > 1 else [])
        for t in range(subgraph.TensorsLength()):
            tensor = subgraph.Tensors(t)
            view, q = _buffer_view(model, data, tensor.Buffer()), tensor.Quantization()
            scale = q.ScaleAsNumpy() if q is not None else 0
            for vector in (view, scale):
                if isinstance(vector, np.ndarray) and vector.size:
                    owners[vector.ctypes.data].add((g, t))
            bits = _INT_TYPES.get(types.get(tensor.Type()))
            if t not in weight_inputs or bits is None or view is None or q is None:
                continue
            if tensor.Sparsity() is not None or np.any(q.ZeroPointAsNumpy()):
                continue  # sparse or asymmetric: not a dense symmetric grid
            shape, out_axis = tuple(int(s) for s in tensor.ShapeAsNumpy()), q.QuantizedDimension()
            found = dict(scale=scale, scale_shape=np.shape(scale), scale_axis=0, tensors={(g, t)})
            if q.DetailsType() == blockwise:
                details = schema.BlockwiseQuantization()
                details.Init(q.Details().Bytes, q.Details().Pos)
                scales_tensor = subgraph.Tensors(details.Scales())
                scale_shape = tuple(int(s) for s in scales_tensor.ShapeAsNumpy())
                expected = list(shape)
                expected[len(shape) - 1 if out_axis == 0 else 0] //= details.BlockSize()
                if len(shape) != 2 or tuple(expected) != scale_shape:
                    continue
                view16 = _buffer_view(model, data, scales_tensor.Buffer()).view("<f2")
                found.update(block_size=details.BlockSize(), scale=view16, scale_axis=out_axis)
                found.update(scale_shape=scale_shape, tensors={(g, t), (g, details.Scales())})
            elif not isinstance(scale, np.ndarray) or scale.size not in (1, shape[out_axis]):
                continue
            elif scale.size == 1 and shape[out_axis] != 1:
                found["block_size"] = 0
            key = (tensor.Name() or b"").decode()
            key = key if key not in keys else f"{key} (subgraph {g})"
            keys.add(key)
            weights.append(StoredWeight(key, bits, shape, out_axis, data=view, **found))
    return weights, owners
