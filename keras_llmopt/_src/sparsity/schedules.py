"""Pruning schedules: pure, serializable ``step -> (should_prune, sparsity)`` callables.

Same names, arguments and maths as ``tfmot.sparsity.keras`` so tfmot code ports by
changing the import; written with ``keras.ops`` so they run on TensorFlow and JAX.
A tfmot schedule object is accepted anywhere a schedule is (see :func:`get`).
"""

import keras
from keras import ops


def _check_step(name, value, allow_minus_one=False):
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"`{name}` must be an integer >= 0. Received: {name}={value!r}")
    if value < 0 and not (allow_minus_one and value == -1):
        accepted = "-1 (never stop) or an integer >= 0" if allow_minus_one else "an integer >= 0"
        raise ValueError(f"`{name}` must be {accepted}. Received: {name}={value!r}")


def _check_sparsity(name, value):
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value < 1.0:
        raise ValueError(f"`{name}` must be a number in [0, 1). Received: {name}={value!r}")


def _check_range(begin_step, end_step, frequency, allow_minus_one):
    _check_step("begin_step", begin_step)
    _check_step("end_step", end_step, allow_minus_one)
    if end_step != -1 and end_step < begin_step:
        raise ValueError(
            "`end_step` must be >= `begin_step`"
            + (" (or -1 to prune until the end of training)" if allow_minus_one else "")
            + f". Received: end_step={end_step!r}, begin_step={begin_step!r}"
        )
    if isinstance(frequency, bool) or not isinstance(frequency, int) or frequency < 1:
        raise ValueError(f"`frequency` must be an integer >= 1. Received: frequency={frequency!r}")


class PruningSchedule:
    """Base class of pruning schedules.

    A schedule maps a training step (int tensor) to ``(should_prune, sparsity)``:
    a boolean scalar tensor (prune at this step?) and a float32 scalar tensor
    (fraction of weights to be zero). Subclasses implement ``__call__`` and
    ``get_config``; ``from_config(config)`` is ``cls(**config)``.

    Example:
        >>> from keras import ops
        >>> from keras_llmopt.sparsity import PruningSchedule
        >>> class Every10(PruningSchedule):
        ...     def __call__(self, step):
        ...         return self._should_prune_in_step(step, 0, -1, 10), ops.convert_to_tensor(0.5)
        ...     def get_config(self):
        ...         return {}
        >>> should, sparsity = Every10()(ops.convert_to_tensor(20))
        >>> bool(should), float(sparsity)
        (True, 0.5)
    """

    def __call__(self, step):
        """Returns ``(should_prune, sparsity)`` for ``step``."""
        raise NotImplementedError("PruningSchedule subclasses must implement __call__(step).")

    def get_config(self):
        """Returns the constructor arguments as a dict."""
        raise NotImplementedError("PruningSchedule subclasses must implement get_config().")

    @classmethod
    def from_config(cls, config):
        """Builds a schedule from :meth:`get_config`'s output."""
        return cls(**config)

    @staticmethod
    def _should_prune_in_step(step, begin_step, end_step, frequency):
        step = ops.cast(step, "int32")
        in_range = ops.logical_and(
            ops.greater_equal(step, begin_step),
            ops.logical_or(ops.less_equal(step, end_step), end_step < 0),
        )
        turn = ops.equal(ops.mod(step - begin_step, frequency), 0)
        return ops.logical_and(in_range, turn)

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self):
        return hash((type(self).__name__, tuple(sorted(self.get_config().items()))))

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


@keras.saving.register_keras_serializable(package="keras_llmopt")
class ConstantSparsity(PruningSchedule):
    """Constant sparsity from ``begin_step`` to ``end_step``, every ``frequency`` steps.

    Args:
        target_sparsity: Fraction of weights pruned, in [0, 1).
        begin_step: First step at which to prune (>= 0).
        end_step: Last step at which to prune; -1 prunes until training ends.
        frequency: Prune every ``frequency`` steps (>= 1).

    Raises:
        ValueError: On out-of-range arguments, naming the argument and value.

    Example:
        >>> from keras import ops
        >>> from keras_llmopt.sparsity import ConstantSparsity
        >>> schedule = ConstantSparsity(0.5, begin_step=0, frequency=10)
        >>> should, sparsity = schedule(ops.convert_to_tensor(10))
        >>> bool(should), float(sparsity)
        (True, 0.5)
    """

    def __init__(self, target_sparsity, begin_step, end_step=-1, frequency=100):
        _check_sparsity("target_sparsity", target_sparsity)
        _check_range(begin_step, end_step, frequency, allow_minus_one=True)
        self.target_sparsity = float(target_sparsity)
        self.begin_step = begin_step
        self.end_step = end_step
        self.frequency = frequency

    def __call__(self, step):
        should = self._should_prune_in_step(step, self.begin_step, self.end_step, self.frequency)
        return should, ops.convert_to_tensor(self.target_sparsity, dtype="float32")

    def get_config(self):
        return {
            "target_sparsity": self.target_sparsity,
            "begin_step": self.begin_step,
            "end_step": self.end_step,
            "frequency": self.frequency,
        }


@keras.saving.register_keras_serializable(package="keras_llmopt")
class PolynomialDecay(PruningSchedule):
    """Sparsity rising from ``initial_sparsity`` to ``final_sparsity`` polynomially.

    ``s(step) = final + (initial - final) * (1 - p) ** power`` with
    ``p = clip((step - begin_step) / (end_step - begin_step), 0, 1)``; pruning
    happens every ``frequency`` steps in ``[begin_step, end_step]`` (tfmot maths).

    Args:
        initial_sparsity: Sparsity at ``begin_step``, in [0, 1).
        final_sparsity: Sparsity from ``end_step`` on, in [0, 1).
        begin_step: First pruning step (>= 0).
        end_step: Last pruning step (>= begin_step).
        power: Exponent of the decay.
        frequency: Prune every ``frequency`` steps (>= 1).

    Raises:
        ValueError: On out-of-range arguments, naming the argument and value.

    Example:
        >>> from keras import ops
        >>> from keras_llmopt.sparsity import PolynomialDecay
        >>> schedule = PolynomialDecay(0.0, 0.5, begin_step=0, end_step=100, frequency=10)
        >>> should, sparsity = schedule(ops.convert_to_tensor(100))
        >>> bool(should), round(float(sparsity), 3)
        (True, 0.5)
    """

    def __init__(
        self, initial_sparsity, final_sparsity, begin_step, end_step, power=3, frequency=100
    ):
        _check_sparsity("initial_sparsity", initial_sparsity)
        _check_sparsity("final_sparsity", final_sparsity)
        _check_range(begin_step, end_step, frequency, allow_minus_one=False)
        if isinstance(power, bool) or not isinstance(power, int | float):
            raise ValueError(f"`power` must be a number. Received: power={power!r}")
        self.initial_sparsity = float(initial_sparsity)
        self.final_sparsity = float(final_sparsity)
        self.begin_step = begin_step
        self.end_step = end_step
        self.power = power
        self.frequency = frequency

    def __call__(self, step):
        step_f = ops.cast(step, "float32")
        span = max(self.end_step - self.begin_step, 1)
        p = ops.clip((step_f - float(self.begin_step)) / float(span), 0.0, 1.0)
        if self.end_step == self.begin_step:
            p = ops.cast(ops.greater_equal(step_f, float(self.begin_step)), "float32")
        sparsity = (self.initial_sparsity - self.final_sparsity) * ops.power(
            1.0 - p, float(self.power)
        ) + self.final_sparsity
        should = self._should_prune_in_step(step, self.begin_step, self.end_step, self.frequency)
        return should, ops.cast(sparsity, "float32")

    def get_config(self):
        return {
            "initial_sparsity": self.initial_sparsity,
            "final_sparsity": self.final_sparsity,
            "begin_step": self.begin_step,
            "end_step": self.end_step,
            "power": self.power,
            "frequency": self.frequency,
        }


_BY_NAME = {"ConstantSparsity": ConstantSparsity, "PolynomialDecay": PolynomialDecay}


def get(schedule) -> PruningSchedule:
    """Returns a keras_llmopt schedule for ours, a tfmot schedule, or a config dict.

    A tfmot ``PolynomialDecay``/``ConstantSparsity`` is read through its
    ``get_config()`` (same fields), so it works without tfmot at run time and
    on the JAX backend.

    Args:
        schedule: A :class:`PruningSchedule`, a tfmot schedule, or a dict
            ``{"class_name": ..., "config": {...}}``.

    Returns:
        A :class:`PruningSchedule`.

    Raises:
        TypeError: If ``schedule`` is none of these.

    Example:
        >>> get({"class_name": "ConstantSparsity",
        ...      "config": {"target_sparsity": 0.5, "begin_step": 0}})
        ConstantSparsity(target_sparsity=0.5, begin_step=0, end_step=-1, frequency=100)
    """
    if isinstance(schedule, PruningSchedule):
        return schedule
    config = schedule
    if not isinstance(schedule, dict) and callable(getattr(schedule, "get_config", None)):
        module = type(schedule).__module__ or ""
        if module.startswith("tensorflow_model_optimization"):
            config = schedule.get_config()
    if isinstance(config, dict) and config.get("class_name") in _BY_NAME:
        inner = config.get("config", {})
        if "module" in config or "registered_name" in config:  # Keras serialization
            return keras.saving.deserialize_keras_object(config)
        return _BY_NAME[config["class_name"]](**inner)
    raise TypeError(
        "`pruning_schedule` must be a keras_llmopt.sparsity.PruningSchedule (PolynomialDecay, "
        "ConstantSparsity or a subclass) or a tfmot PolynomialDecay/ConstantSparsity. "
        f"Received: pruning_schedule={schedule!r}"
    )
