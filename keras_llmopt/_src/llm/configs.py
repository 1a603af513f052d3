"""One-shot compression configs: small, validated, serializable settings of each method.

A config says *what* to do to the layers it targets (``targets`` / ``ignore`` path
patterns, the token embedding and the output head left alone by default); the maths
lives in ``llm.solvers`` / ``llm.grid_solvers`` and the layer-by-layer driver in
``llm.sequential``. Every config validates in ``__init__`` and round-trips through
``get_config`` / :func:`config_from_dict`, so recipes and the CLI build them from
plain dicts.
"""

import math

SPARSE = "sparse"
GRID = "grid"
SMOOTH = "smooth"


def _check_fraction(name, value, where):
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or not 0.0 <= value < 1.0:
        raise ValueError(
            f"{where}: `{name}` must be a number in [0, 1). Received: {name}={value!r}"
        )
    return float(value)


def _check_int(name, value, where, low, accepted=None):
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
    if ok and accepted is not None:
        ok = value in accepted
    if not ok:
        what = f"one of {list(accepted)}" if accepted is not None else f"an integer >= {low}"
        raise ValueError(f"{where}: `{name}` must be {what}. Received: {name}={value!r}")
    return value


def _check_m_by_n(m_by_n, where):
    if m_by_n is None:
        return None
    try:
        m, n = m_by_n
        ok = all(isinstance(v, int) and not isinstance(v, bool) for v in (m, n)) and 0 < m < n
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(
            f"{where}: `m_by_n` must be a pair (m, n) of integers with 0 < m < n (m weights "
            f"kept in every n consecutive inputs, e.g. (2, 4)). Received: m_by_n={m_by_n!r}"
        )
    return (m, n)


def _check_patterns(name, value, where):
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not all(isinstance(p, str) for p in value):
        raise TypeError(
            f"{where}: `{name}` must be a layer path pattern or a list of them. "
            f"Received: {name}={value!r}"
        )
    return tuple(value)


class OneShotConfig:
    """Base of the one-shot configs (a method, its settings, ``targets`` and ``ignore``).

    Subclasses set ``method`` (the recipe name), ``kind`` (``"sparse"``, ``"grid"`` or
    ``"smooth"``) and ``statistics`` (what the driver collects from each target's
    inputs: ``"hessian"``, ``"sq_norm"``, ``"abs_mean"``, ``"abs_max"``, ``"sample"``).

    Example:
        >>> Wanda(0.5).get_config()["sparsity"]
        0.5
    """

    method = None
    kind = None
    statistics = ()
    _fields = ()

    def __init__(self, targets=None, ignore=None):
        where = type(self).__name__
        self.targets = _check_patterns("targets", targets, where)
        self.ignore = _check_patterns("ignore", ignore, where)

    def get_config(self):
        """The settings as a plain dict (``config_from_dict`` rebuilds the config)."""
        config = {"method": self.method}
        for name in self._fields:
            value = getattr(self, name)
            config[name] = list(value) if isinstance(value, tuple) else value
        config["targets"] = list(self.targets) if self.targets else None
        config["ignore"] = list(self.ignore) if self.ignore else None
        return config

    @classmethod
    def from_config(cls, config):
        """Rebuilds a config from ``get_config()`` (the ``method`` key is optional)."""
        config = {k: v for k, v in dict(config).items() if k != "method"}
        return cls(**config)

    def describe(self):
        """A short description for reports, e.g. ``"wanda 50%"``."""
        return self.method

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self):
        return hash(repr(self))

    def __repr__(self):
        settings = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "method")
        return f"{type(self).__name__}({settings})"


class _SparseConfig(OneShotConfig):
    kind = SPARSE
    _fields = ("sparsity", "m_by_n")

    def __init__(self, sparsity=0.5, m_by_n=None, targets=None, ignore=None):
        super().__init__(targets, ignore)
        where = type(self).__name__
        self.m_by_n = _check_m_by_n(m_by_n, where)
        if self.m_by_n is not None:
            sparsity = 1.0 - self.m_by_n[0] / self.m_by_n[1]
        self.sparsity = _check_fraction("sparsity", sparsity, where)

    def describe(self):
        if self.m_by_n is not None:
            return f"{self.method} {self.m_by_n[0]}:{self.m_by_n[1]}"
        return f"{self.method} {self.sparsity:.0%}"


class Magnitude(_SparseConfig):
    """One-shot magnitude pruning (the baseline): the smallest ``|w|`` of each output row.

    Args:
        sparsity: Fraction of each layer's weights set to zero, in [0, 1).
        m_by_n: ``(m, n)``: keep ``m`` of every ``n`` consecutive inputs instead (N:M;
            ``sparsity`` is then ``1 - m / n``).
        targets: Layer path patterns to compress (default: every Dense / EinsumDense).
        ignore: Patterns left alone (wins over ``targets``).

    Example:
        >>> Magnitude(m_by_n=(2, 4)).sparsity
        0.5
    """

    method = "magnitude"

    def __init__(self, sparsity=0.5, m_by_n=None, targets=None, ignore=None):
        super().__init__(sparsity, m_by_n, targets, ignore)


class Wanda(_SparseConfig):
    """Wanda (Sun et al., 2024): prune by ``|W| * ||X||_2`` within each output row.

    No weight update; the inputs' norms come from calibration data.

    Args:
        sparsity: Fraction of each layer's weights set to zero, in [0, 1).
        m_by_n: ``(m, n)`` N:M pattern (within each run of ``n`` inputs).
        targets: Layer path patterns to compress.
        ignore: Patterns left alone.

    Example:
        >>> Wanda(0.5).describe()
        'wanda 50%'
    """

    method = "wanda"
    statistics = ("sq_norm",)

    def __init__(self, sparsity=0.5, m_by_n=None, targets=None, ignore=None):
        super().__init__(sparsity, m_by_n, targets, ignore)


class SparseGPT(_SparseConfig):
    """SparseGPT (Frantar & Alistarh, 2023): OBS pruning with a Cholesky-inverted Hessian.

    Args:
        sparsity: Fraction of each layer's weights set to zero, in [0, 1).
        m_by_n: ``(m, n)`` N:M pattern.
        block_size: Columns per lazy-update block (mask chosen per block).
        dampening: Added to the Hessian's diagonal, as a fraction of its mean.
        targets: Layer path patterns to compress.
        ignore: Patterns left alone.

    Example:
        >>> SparseGPT(m_by_n=(2, 4)).describe()
        'sparsegpt 2:4'
    """

    method = "sparsegpt"
    statistics = ("hessian",)
    _fields = ("sparsity", "m_by_n", "block_size", "dampening")

    def __init__(
        self,
        sparsity=0.5,
        m_by_n=None,
        block_size=128,
        dampening=0.01,
        targets=None,
        ignore=None,
    ):
        super().__init__(sparsity, m_by_n, targets, ignore)
        self.block_size = _check_int("block_size", block_size, "SparseGPT", 1)
        self.dampening = _check_dampening(dampening, "SparseGPT")


def _check_dampening(value, where):
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or not 0.0 < value < 1.0:
        raise ValueError(
            f"{where}: `dampening` must be a number in (0, 1). Received: dampening={value!r}"
        )
    return float(value)


def _check_group_size(value, where):
    if value == -1:
        return -1
    return _check_int("group_size", value, where, 1)


class GPTQ(OneShotConfig):
    """GPTQ (Frantar et al., 2023): weights rounded to a grid column by column, with OBS updates.

    The result is a weight-only quantized layer whose weights lie on the grid GPTQ
    chose; ``export.to_tflite(quantization="int4")`` (4 bits) or ``"dynamic_int8"``
    (8 bits) stores exactly that grid.

    Args:
        bits: 4 or 8.
        group_size: Inputs sharing one scale (e.g. 128), or -1 for one scale per output.
        act_order: Quantize columns in decreasing Hessian-diagonal order.
        symmetric: Symmetric grid (zero point 0); the only kind LiteRT stores.
        block_size: Columns per lazy-update block.
        dampening: Added to the Hessian's diagonal, as a fraction of its mean.
        targets: Layer path patterns to compress.
        ignore: Patterns left alone.

    Example:
        >>> GPTQ(bits=4, group_size=128).describe()
        'gptq int4 g128'
    """

    method = "gptq"
    kind = GRID
    statistics = ("hessian",)
    _fields = ("bits", "group_size", "act_order", "symmetric", "block_size", "dampening")

    def __init__(
        self,
        bits=4,
        group_size=128,
        act_order=False,
        symmetric=True,
        block_size=128,
        dampening=0.01,
        targets=None,
        ignore=None,
    ):
        super().__init__(targets, ignore)
        self.bits = _check_int("bits", bits, "GPTQ", 1, accepted=(4, 8))
        self.group_size = _check_group_size(group_size, "GPTQ")
        self.act_order = _check_bool("act_order", act_order, "GPTQ")
        self.symmetric = _check_bool("symmetric", symmetric, "GPTQ")
        if not self.symmetric:
            raise ValueError(
                "GPTQ: `symmetric=False` grids cannot be stored by LiteRT's int4/int8 weight "
                "kernels (zero points are not supported). Received: symmetric=False"
            )
        self.block_size = _check_int("block_size", block_size, "GPTQ", 1)
        self.dampening = _check_dampening(dampening, "GPTQ")

    def describe(self):
        group = "per channel" if self.group_size == -1 else f"g{self.group_size}"
        return f"gptq int{self.bits} {group}"


def _check_bool(name, value, where):
    if not isinstance(value, bool):
        raise ValueError(f"{where}: `{name}` must be True or False. Received: {name}={value!r}")
    return value


class AWQ(OneShotConfig):
    """AWQ (Lin et al., 2024): activation-aware per-input scales searched, then int4 weights.

    The scale search uses the mean activation magnitude of each input channel; the
    inverse scales are folded into the preceding normalization (or kept as a separate
    per-channel scale where there is none), so the float model is unchanged before
    rounding. Per-group weight clipping is searched too.

    Args:
        bits: 4 (AWQ's published setting; the only one accepted).
        group_size: Inputs sharing one scale, or -1 for one scale per output.
        grid_points: Candidate exponents tried in the scale search.
        targets: Layer path patterns to compress.
        ignore: Patterns left alone.

    Example:
        >>> AWQ(group_size=64).describe()
        'awq int4 g64'
    """

    method = "awq"
    kind = GRID
    statistics = ("abs_mean", "sample", "hessian")
    _fields = ("bits", "group_size", "grid_points")

    def __init__(self, bits=4, group_size=128, grid_points=20, targets=None, ignore=None):
        super().__init__(targets, ignore)
        self.bits = _check_int("bits", bits, "AWQ", 1, accepted=(4,))
        self.group_size = _check_group_size(group_size, "AWQ")
        self.grid_points = _check_int("grid_points", grid_points, "AWQ", 2)

    def describe(self):
        group = "per channel" if self.group_size == -1 else f"g{self.group_size}"
        return f"awq int{self.bits} {group}"


class SmoothQuant(OneShotConfig):
    """SmoothQuant (Xiao et al., 2023): activation outliers migrated into the weights.

    ``s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)`` per input channel; ``X / s`` is
    folded into the preceding normalization, ``W * s`` into the weights, so the float
    model computes the same. Then ``quantization.calibrate`` and
    ``export.to_tflite(quantization="int8")`` give a full-integer file without training.

    Args:
        alpha: Migration strength in [0, 1]. Layers whose input comes from no
            normalization are left alone (as in the paper) and reported.
        targets: Layer path patterns to smooth.
        ignore: Patterns left alone.

    Example:
        >>> SmoothQuant(alpha=0.8).alpha
        0.8
    """

    method = "smoothquant"
    kind = SMOOTH
    statistics = ("abs_max",)
    _fields = ("alpha",)

    def __init__(self, alpha=0.5, targets=None, ignore=None):
        super().__init__(targets, ignore)
        ok = isinstance(alpha, int | float) and not isinstance(alpha, bool)
        if not ok or not math.isfinite(alpha) or not 0.0 <= alpha <= 1.0:
            raise ValueError(
                f"SmoothQuant: `alpha` must be a number in [0, 1]. Received: alpha={alpha!r}"
            )
        self.alpha = float(alpha)

    def describe(self):
        return f"smoothquant alpha={self.alpha:g}"


CONFIG_CLASSES = {cls.method: cls for cls in (Magnitude, Wanda, SparseGPT, GPTQ, AWQ, SmoothQuant)}


def config_from_dict(config):
    """Builds a config from a dict with a ``method`` key (recipes, the CLI, saved reports).

    Raises:
        ValueError: Unknown method (the message lists the accepted ones).

    Example:
        >>> config_from_dict({"method": "gptq", "bits": 8, "group_size": -1}).describe()
        'gptq int8 per channel'
    """
    if isinstance(config, OneShotConfig):
        return config
    if not isinstance(config, dict) or config.get("method") not in CONFIG_CLASSES:
        method = config.get("method") if isinstance(config, dict) else config
        raise ValueError(
            f"A one-shot stage needs `method` in {sorted(CONFIG_CLASSES)}. Received: "
            f"method={method!r}"
        )
    return CONFIG_CLASSES[config["method"]].from_config(config)


def as_recipe(recipe):
    """``recipe`` (one config, a dict, or a list of them) as a tuple of configs.

    Raises:
        ValueError: An empty recipe or an entry that is not a config.

    Example:
        >>> [c.method for c in as_recipe([SparseGPT(0.5), {"method": "gptq"}])]
        ['sparsegpt', 'gptq']
    """
    if isinstance(recipe, OneShotConfig | dict):
        recipe = [recipe]
    if not isinstance(recipe, list | tuple) or not recipe:
        raise ValueError(
            "`recipe` must be a one-shot config (Wanda(0.5), GPTQ(bits=4), ...) or a "
            f"non-empty list of them. Received: recipe={recipe!r}"
        )
    configs = tuple(config_from_dict(entry) for entry in recipe)
    grids = [c for c in configs if c.kind == GRID]
    if len(grids) > 1:
        raise ValueError(
            "`recipe` may hold one weight quantizer (GPTQ or AWQ): a second would re-round "
            f"the first's grid. Received: {[c.describe() for c in grids]}"
        )
    if grids:
        position = configs.index(grids[0])
        after = [c.describe() for c in configs[position + 1 :]]
        if after:
            raise ValueError(
                f"`recipe`: {grids[0].describe()} must be the last stage (a later stage would "
                f"move weights off its grid). Received: stages after it: {after}"
            )
    return configs
