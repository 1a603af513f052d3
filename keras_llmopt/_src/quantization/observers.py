"""Activation range observers for quantization-aware training (Keras-variable state).

An observer owns non-trainable Keras variables (``min``, ``max`` and an update
counter) created with ``aggregation="only_first_replica"``, so they are saved with
the model, restored from checkpoints and assignable inside replicas. ``update(x)``
assigns them unconditionally (no ``cond``), which works inside a compiled train
step on TensorFlow and inside Keras' stateless JAX step alike.

As in tfmot, observed ranges always include 0 and start at ``[-6, 6]`` before
the first update; the first update replaces them with the batch's range.
"""

import keras
from keras import ops

INITIAL_MIN = -6.0
INITIAL_MAX = 6.0


class RangeObserver:
    """Base class: tracks a ``[min, max]`` range of the tensors it sees.

    Args:
        axis: ``None`` for one range, or the axis keeping one range per index.
        name: Prefix of the variable names.

    Example:
        >>> obs = MinMax()
        >>> obs.build()
        >>> lo, hi = obs.update(ops.convert_to_tensor([[-1.0, 2.0]]))
        >>> float(lo), float(hi)
        (-1.0, 2.0)
    """

    def __init__(self, axis=None, name="observer"):
        if axis is not None and (isinstance(axis, bool) or not isinstance(axis, int)):
            raise ValueError(
                f"`axis` must be None (per tensor) or an integer. Received: axis={axis!r}"
            )
        if not isinstance(name, str) or not name:
            raise ValueError(f"`name` must be a non-empty string. Received: name={name!r}")
        self.axis = axis
        self.name = name
        self.min = None
        self.max = None
        self.count = None

    @property
    def built(self):
        """Whether :meth:`build` created the variables."""
        return self.min is not None

    def build(self, layer=None, input_shape=None):
        """Creates the state variables.

        Args:
            layer: A Keras layer to own (track) the variables through
                ``add_weight``, or ``None`` for free ``keras.Variable``s.
            input_shape: Shape of the observed tensor; required when ``axis`` is set.

        Raises:
            ValueError: ``axis`` is set and ``input_shape`` does not give its size.

        Example:
            >>> layer = keras.layers.Layer()  # typically called from the owner's build()
            >>> obs = MovingMinMax(axis=-1, name="act")
            >>> obs.build(layer, input_shape=(None, 4))
            >>> [v.name for v in layer.non_trainable_weights]
            ['act_min', 'act_max', 'act_count']
        """
        if self.built:
            return
        shape = ()
        if self.axis is not None:
            size = None
            if input_shape is not None and -len(input_shape) <= self.axis < len(input_shape):
                size = input_shape[self.axis]
            if size is None:
                raise ValueError(
                    f"Observer {self.name!r} with axis={self.axis} needs an `input_shape` whose "
                    f"axis {self.axis} has a known size. Received: input_shape={input_shape!r}"
                )
            shape = (int(size),)

        def make(suffix, initial, dtype="float32"):
            kwargs = dict(
                shape=shape if suffix != "count" else (),
                dtype=dtype,
                trainable=False,
                aggregation="only_first_replica",
                name=f"{self.name}_{suffix}",
            )
            if layer is not None:
                return layer.add_weight(initializer=keras.initializers.Constant(initial), **kwargs)
            init = keras.initializers.Constant(initial)
            return keras.Variable(init, **kwargs)

        self.min = make("min", INITIAL_MIN)
        self.max = make("max", INITIAL_MAX)
        self.count = make("count", 0, dtype="int32")

    def _batch_range(self, x):
        x = ops.cast(ops.convert_to_tensor(x), "float32")
        rank = len(x.shape)
        if self.axis is None:
            axes = None
        else:
            keep = self.axis % rank
            axes = tuple(a for a in range(rank) if a != keep)
        lo = ops.minimum(ops.min(x, axis=axes), 0.0)
        hi = ops.maximum(ops.max(x, axis=axes), 0.0)
        return lo, hi

    def _combine(self, first, lo, hi):
        raise NotImplementedError

    def update(self, x):
        """Folds a batch into the range; returns the new ``(min, max)`` tensors.

        Args:
            x: The observed tensor.

        Returns:
            The updated ``(min, max)`` (also assigned to the variables).

        Example:
            >>> obs = MovingMinMax(momentum=0.5)
            >>> obs.build()
            >>> _ = obs.update(ops.convert_to_tensor([-2.0, 2.0]))
            >>> lo, hi = obs.update(ops.convert_to_tensor([0.0, 4.0]))
            >>> float(lo), float(hi)
            (-1.0, 3.0)
        """
        if not self.built:
            raise ValueError(
                f"Observer {self.name!r} is not built: call `build(layer, input_shape)` first."
            )
        lo, hi = self._batch_range(x)
        first = ops.equal(self.count, 0)
        new_lo, new_hi = self._combine(first, lo, hi)
        self.min.assign(new_lo)
        self.max.assign(new_hi)
        self.count.assign(self.count + 1)
        return new_lo, new_hi

    def range(self):
        """The current ``(min, max)`` variables' values."""
        return ops.convert_to_tensor(self.min), ops.convert_to_tensor(self.max)

    def get_config(self):
        """Constructor arguments as a dict."""
        return {"axis": self.axis, "name": self.name}

    @classmethod
    def from_config(cls, config):
        """Builds an (unbuilt) observer from :meth:`get_config`'s dict."""
        return cls(**config)


class MinMax(RangeObserver):
    """Running minimum and maximum over every batch seen.

    Example:
        >>> obs = MinMax(name="x")
        >>> obs.build()
        >>> _ = obs.update(ops.convert_to_tensor([1.0, 3.0]))
        >>> lo, hi = obs.update(ops.convert_to_tensor([-0.5, 2.0]))
        >>> float(lo), float(hi)
        (-0.5, 3.0)
    """

    def _combine(self, first, lo, hi):
        new_lo = ops.where(first, lo, ops.minimum(self.min, lo))
        new_hi = ops.where(first, hi, ops.maximum(self.max, hi))
        return new_lo, new_hi


class MovingMinMax(RangeObserver):
    """Exponential moving average of the batch min and max (tfmot's QAT default).

    ``range = momentum * range + (1 - momentum) * batch_range``; the first batch
    sets the range directly.

    Args:
        momentum: Decay in ``[0, 1)``; tfmot uses 0.999.
        axis: ``None`` or the per-channel axis.
        name: Prefix of the variable names.

    Example:
        >>> obs = MovingMinMax()
        >>> obs.build()
        >>> lo, hi = obs.update(ops.convert_to_tensor([-3.0, 1.0]))
        >>> float(lo), float(hi)
        (-3.0, 1.0)
    """

    def __init__(self, momentum=0.999, axis=None, name="observer"):
        super().__init__(axis=axis, name=name)
        if isinstance(momentum, bool) or not isinstance(momentum, int | float):
            raise ValueError(
                f"`momentum` must be a number in [0, 1). Received: momentum={momentum!r}"
            )
        if not 0.0 <= momentum < 1.0:
            raise ValueError(
                f"`momentum` must be a number in [0, 1). Received: momentum={momentum!r}"
            )
        self.momentum = float(momentum)

    def _combine(self, first, lo, hi):
        m = self.momentum
        new_lo = ops.where(first, lo, m * self.min + (1.0 - m) * lo)
        new_hi = ops.where(first, hi, m * self.max + (1.0 - m) * hi)
        return new_lo, new_hi

    def get_config(self):
        """Constructor arguments as a dict."""
        return {**super().get_config(), "momentum": self.momentum}
