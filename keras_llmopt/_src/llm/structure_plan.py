"""Which heads, channels and blocks a structural config keeps, from importance scores.

Grouped-query attention (``H`` query heads over ``G`` key/value groups of ``r``
heads) keeps either whole groups (``H' = g * r``, the KV cache shrinks too) or the
same number of query heads in every group (``H' = G * q``); any other count would
break the grouping and is refused.
"""

import numpy as np


def head_counts(num_heads, num_kv_heads):
    """The query-head counts a layer can keep: ``{count: "groups" | "per_group"}``.

    Whole-group removal is preferred where both allow a count.

    Example:
        >>> head_counts(8, 2)
        {4: 'groups', 8: 'groups', 2: 'per_group', 6: 'per_group'}
    """
    ratio = num_heads // num_kv_heads
    counts = {g * ratio: "groups" for g in range(1, num_kv_heads + 1)}
    for q in range(1, ratio + 1):
        counts.setdefault(num_kv_heads * q, "per_group")
    return counts


def choose_head_count(attention, fraction=None, num_heads=None):
    """The query heads ``attention`` keeps for ``fraction`` removed or ``num_heads`` kept.

    Raises:
        ValueError: ``num_heads`` more than the layer has, or a ``num_heads`` /
            ``fraction`` the grouping forbids (the message lists what it allows).

    Example:
        >>> from types import SimpleNamespace
        >>> layer = SimpleNamespace(path="attn", num_heads=8, num_kv_heads=2)
        >>> choose_head_count(layer, fraction=0.5), choose_head_count(layer, num_heads=6)
        (4, 6)
    """
    counts = head_counts(attention.num_heads, attention.num_kv_heads)
    allowed = sorted(c for c in counts if c < attention.num_heads)
    where = (
        f"HeadPruning: layer {attention.path!r} has {attention.num_heads} query heads in "
        f"{attention.num_kv_heads} key/value groups"
    )
    if num_heads is not None:
        if num_heads > attention.num_heads or num_heads not in counts:
            raise ValueError(
                f"{where}; it can keep {sorted(counts)} of them (whole groups, or as many "
                f"heads in every group). Received: num_heads={num_heads}"
            )
        return num_heads
    target = attention.num_heads * (1.0 - fraction)
    count = int(round(target))
    if abs(target - count) > 1e-6 or count not in allowed:
        fractions = [f"{1 - c / attention.num_heads:g} ({c} heads)" for c in reversed(allowed)]
        raise ValueError(
            f"{where}; removing {fraction:g} of them leaves {target:g} heads, which "
            f"{'is not a whole number' if abs(target - count) > 1e-6 else 'breaks the grouping'}"
            f". Received: fraction={fraction}; accepted: {fractions or 'none (one head)'}"
        )
    return count


def kept_heads(attention, scores, count):
    """``(kept query heads, kept key/value heads)`` for ``count`` query heads kept.

    Example:
        >>> from types import SimpleNamespace
        >>> layer = SimpleNamespace(path="attn", num_heads=4, num_kv_heads=2, group_size=2)
        >>> kept_heads(layer, np.array([1.0, 2.0, 9.0, 8.0]), 2)  # whole groups
        ([2, 3], [1])
        >>> six = SimpleNamespace(path="a", num_heads=6, num_kv_heads=2, group_size=3)
        >>> kept_heads(six, np.array([1.0, 5.0, 2.0, 3.0, 0.0, 4.0]), 4)  # 2 per group
        ([1, 2, 3, 5], [0, 1])
    """
    ratio, groups = attention.group_size, attention.num_kv_heads
    scores = np.asarray(scores, dtype="float64")
    mode = head_counts(attention.num_heads, groups)[count]
    if mode == "groups":
        group_scores = scores.reshape(groups, ratio).sum(axis=1)
        kept_groups = sorted(np.argsort(-group_scores, kind="stable")[: count // ratio].tolist())
        return [g * ratio + h for g in kept_groups for h in range(ratio)], kept_groups
    per_group = count // groups
    kept = []
    for g in range(groups):
        local = scores[g * ratio : (g + 1) * ratio]
        kept += sorted((g * ratio + np.argsort(-local, kind="stable")[:per_group]).tolist())
    return kept, list(range(groups))


def kept_top(scores, count):
    """Indices of the ``count`` highest scores, in ascending order (ties keep the first).

    Example:
        >>> kept_top(np.array([0.5, 3.0, 1.0, 2.0]), 2)
        [1, 3]
    """
    order = np.argsort(-np.asarray(scores, dtype="float64"), kind="stable")
    return sorted(order[:count].tolist())


def width_count(width, fraction=None, count=None, what="MLP", path=""):
    """Channels kept for ``fraction`` removed or ``count`` kept.

    Example:
        >>> width_count(1024, fraction=0.25), width_count(1024, count=100)
        (768, 100)
    """
    if count is not None:
        if count > width:
            raise ValueError(
                f"FFNPruning: {what} {path!r} has {width} channels; it cannot keep more. "
                f"Received: intermediate_dim={count}"
            )
        return count
    return max(1, int(round(width * (1.0 - fraction))))


def global_allocation(scores_by_path, fraction, minimum=1):
    """Counts kept per layer when the lowest ``fraction`` of all scores goes.

    Each layer keeps at least ``minimum``.

    Scores are compared across layers after dividing each layer's by its mean.

    Example:
        >>> global_allocation({"a": np.array([1.0, 1.0]), "b": np.array([0.1, 1.9])}, 0.25)
        {'a': 2, 'b': 1}
    """
    entries = []
    for path, scores in scores_by_path.items():
        scores = np.asarray(scores, dtype="float64")
        normal = scores / max(float(scores.mean()), 1e-30)
        entries += [(value, path) for value in normal]
    total = len(entries)
    remove = int(round(total * fraction))
    counts = {path: len(scores) for path, scores in scores_by_path.items()}
    for _, path in sorted(entries, key=lambda e: e[0]):
        if remove == 0:
            break
        if counts[path] > minimum:
            counts[path] -= 1
            remove -= 1
    return counts
