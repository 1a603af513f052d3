"""Structural pruning configs: which whole structures go (heads, MLP channels, blocks, width).

Unlike the one-shot sparse configs, these change layer shapes: the model comes back
rebuilt with fewer heads, fewer units or fewer blocks (``llm.structural``). Each
config validates in ``__init__`` and round-trips through ``get_config``, so recipes
(the ``oneshot`` stage) and the CLI build them from plain dicts.
"""

import math

from keras_llmopt._src.llm import configs as configs_lib

STRUCTURAL = "structural"

HEAD_IMPORTANCE = ("activation", "taylor", "magnitude")
DEPTH_IMPORTANCE = ("block_influence", "magnitude")
ALLOCATIONS = ("uniform", "global")


def _check_choice(name, value, accepted, where):
    if value not in accepted:
        raise ValueError(
            f"{where}: `{name}` must be one of {list(accepted)}. Received: {name}={value!r}"
        )
    return value


def _check_fraction(value, where):
    if value is None:
        return None
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or not 0.0 < value < 1.0:
        raise ValueError(
            f"{where}: `fraction` must be a number in (0, 1) (the share of the structures "
            f"removed). Received: fraction={value!r}"
        )
    return float(value)


def _check_count(name, value, where):
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{where}: `{name}` must be an integer >= 1. Received: {name}={value!r}")
    return value


def _one_of(fraction, count, count_name, where):
    if (fraction is None) == (count is None):
        raise ValueError(
            f"{where}: give exactly one of `fraction` and `{count_name}`. Received: "
            f"fraction={fraction!r}, {count_name}={count!r}"
        )


class StructuralConfig(configs_lib.OneShotConfig):
    """Base of the structural configs; ``kind`` is ``"structural"``.

    Example:
        >>> FFNPruning(fraction=0.25).kind
        'structural'
    """

    kind = STRUCTURAL
    statistics = ()


class _WidthConfig(StructuralConfig):
    count_name = None

    def __init__(self, fraction, count, importance, allocation, targets, ignore):
        super().__init__(targets=targets, ignore=ignore)
        where = type(self).__name__
        self.fraction = _check_fraction(fraction, where)
        setattr(self, self.count_name, _check_count(self.count_name, count, where))
        _one_of(self.fraction, count, self.count_name, where)
        self.importance = _check_choice("importance", importance, HEAD_IMPORTANCE, where)
        self.allocation = _check_choice("allocation", allocation, ALLOCATIONS, where)
        if self.allocation == "global" and count is not None:
            raise ValueError(
                f"{where}: allocation='global' takes `fraction` (the share removed over all "
                f"layers), not a per-layer `{self.count_name}`. Received: "
                f"{self.count_name}={count!r}"
            )

    @property
    def count(self):
        return getattr(self, self.count_name)

    def describe(self):
        amount = f"{self.fraction:.0%}" if self.fraction is not None else f"to {self.count}"
        return f"{self.method} {amount} by {self.importance}"


class HeadPruning(_WidthConfig):
    """Removes whole attention heads in every attention layer.

    GQA-aware: query heads go with their key/value group (whole groups removed, which
    also shrinks the KV cache) when the kept count allows it, or else the same number
    of query heads is removed from every group; any other count is refused.

    Args:
        fraction: Share of the heads removed, in (0, 1); it must leave a whole
            number of heads the grouping allows (else a ``ValueError`` lists the
            fractions that do).
        num_heads: Query heads kept per layer (instead of ``fraction``).
        importance: ``"activation"`` (each head's output norm on calibration data
            times its output-projection weights), ``"taylor"`` (first-order change
            of the loss when the head goes) or ``"magnitude"`` (weight norms).
        allocation: ``"uniform"`` (the same count in every layer) or ``"global"``
            (the least important heads over all layers; functional models only).
        targets: Path patterns of the attention layers pruned (default: all).
        ignore: Path patterns left alone.

    Example:
        >>> HeadPruning(fraction=0.5).describe()
        'head_pruning 50% by activation'
    """

    method = "head_pruning"
    count_name = "num_heads"
    _fields = ("fraction", "num_heads", "importance", "allocation")

    def __init__(
        self,
        fraction=None,
        num_heads=None,
        importance="activation",
        allocation="uniform",
        targets=None,
        ignore=None,
    ):
        super().__init__(fraction, num_heads, importance, allocation, targets, ignore)


class FFNPruning(_WidthConfig):
    """Removes MLP channels: rows of the up (and gate) projections, columns of the down one.

    Args:
        fraction: Share of each MLP's channels removed, in (0, 1).
        intermediate_dim: Channels kept per MLP (instead of ``fraction``).
        importance: ``"activation"`` (the channel's input norm to the down
            projection times its weights), ``"taylor"`` or ``"magnitude"``.
        allocation: ``"uniform"`` or ``"global"`` (functional models only).
        targets: Path patterns of the down projections pruned (default: all).
        ignore: Path patterns left alone.

    Example:
        >>> FFNPruning(intermediate_dim=512).describe()
        'ffn_pruning to 512 by activation'
    """

    method = "ffn_pruning"
    count_name = "intermediate_dim"
    _fields = ("fraction", "intermediate_dim", "importance", "allocation")

    def __init__(
        self,
        fraction=None,
        intermediate_dim=None,
        importance="activation",
        allocation="uniform",
        targets=None,
        ignore=None,
    ):
        super().__init__(fraction, intermediate_dim, importance, allocation, targets, ignore)


class DepthPruning(StructuralConfig):
    """Removes whole transformer blocks.

    Args:
        num_layers: Blocks removed (at least one block must stay).
        importance: ``"block_influence"`` (ShortGPT: a block that changes its input
            least on calibration data, 1 - cosine similarity, goes first) or
            ``"magnitude"`` (the block's weight norm relative to its parameter count).

    Example:
        >>> DepthPruning(num_layers=1).describe()
        'depth_pruning 1 block(s) by block_influence'
    """

    method = "depth_pruning"
    _fields = ("num_layers", "importance")

    def __init__(self, num_layers=1, importance="block_influence", targets=None, ignore=None):
        super().__init__(targets=targets, ignore=ignore)
        where = type(self).__name__
        self.num_layers = _check_count("num_layers", num_layers, where)
        self.importance = _check_choice("importance", importance, DEPTH_IMPORTANCE, where)

    def describe(self):
        return f"{self.method} {self.num_layers} block(s) by {self.importance}"


class HiddenPruning(StructuralConfig):
    """Narrows the residual stream (embedding width) of the whole model.

    Every layer reading or writing the stream is sliced: embeddings, norms, the
    attention and MLP projections, the output head. Normalization statistics then run
    over fewer channels, so recovery (``llm.recover``) matters most here.

    Args:
        fraction: Share of the hidden channels removed, in (0, 1).
        importance: ``"activation"`` (the channel's norm over the stream on
            calibration data) or ``"magnitude"``.

    Example:
        >>> HiddenPruning(fraction=0.25).describe()
        'hidden_pruning 25% by activation'
    """

    method = "hidden_pruning"
    _fields = ("fraction", "importance")

    def __init__(self, fraction=0.25, importance="activation", targets=None, ignore=None):
        super().__init__(targets=targets, ignore=ignore)
        where = type(self).__name__
        self.fraction = _check_fraction(fraction, where)
        if self.fraction is None:
            raise ValueError(f"{where}: `fraction` is required. Received: fraction=None")
        self.importance = _check_choice(
            "importance", importance, ("activation", "magnitude"), where
        )

    def describe(self):
        return f"{self.method} {self.fraction:.0%} by {self.importance}"


STRUCTURAL_CLASSES = {
    cls.method: cls for cls in (HeadPruning, FFNPruning, DepthPruning, HiddenPruning)
}
configs_lib.CONFIG_CLASSES.update(STRUCTURAL_CLASSES)
