"""Selects the layers an optimisation applies to, with a report of what was skipped.

Patterns match layer paths from :func:`~keras_llmopt._src.core.layer_tree.walk_layers`:

* a glob (``fnmatch``) matched against the full path *or* any ``/``-suffix of
  it, so ``"lm_head"`` matches ``"lm_head"`` and ``"backbone/lm_head"``, and
  ``"*attention*"`` matches every attention projection below an attention layer;
* ``"re:<regex>"``: a regular expression searched in the full path.

By default the token embedding and the output head (``lm_head``, a projection
to the vocabulary, or weights tied to the token embedding) are left alone;
naming them in ``targets`` opts them in. Embeddings in general are optimised
only when requested (``include_embeddings=True`` or named in ``targets``).
"""

import dataclasses
import fnmatch
import re
from collections.abc import Iterable, Sequence

import keras

from keras_llmopt._src.core import layer_tree

HEAD_NAMES = ("lm_head", "head", "output_head", "output_projection", "logits", "classifier")


def as_patterns(patterns, argument):
    """Validates ``targets`` / ``ignore`` patterns; returns them as a tuple.

    Example:
        >>> as_patterns("lm_head", "ignore")
        ('lm_head',)
    """
    if patterns is None:
        return ()
    if isinstance(patterns, str):
        return (patterns,)
    if not isinstance(patterns, Iterable):
        raise TypeError(
            f"`{argument}` must be a string or a list of strings (glob or 're:<regex>'). "
            f"Received: {argument}={patterns!r}"
        )
    patterns = tuple(patterns)
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise TypeError(
                f"`{argument}` must contain strings (glob or 're:<regex>'). "
                f"Received: {argument}={patterns!r}"
            )
        if pattern.startswith("re:"):
            try:
                re.compile(pattern[3:])
            except re.error as error:
                raise ValueError(
                    f"Invalid regular expression in `{argument}`: {error}. "
                    f"Received: {argument}={patterns!r}"
                ) from None
    return patterns


def path_matches(path: str, pattern: str) -> bool:
    """Whether a layer path matches a glob or ``re:`` pattern.

    Example:
        >>> path_matches("block_0_attention/query", "*attention*")
        True
        >>> path_matches("decoder/lm_head", "lm_head")
        True
        >>> path_matches("block_1_mlp_up", "re:block_[01]_mlp")
        True
    """
    if pattern.startswith("re:"):
        return re.search(pattern[3:], path) is not None
    parts = path.split("/")
    return any(fnmatch.fnmatchcase("/".join(parts[i:]), pattern) for i in range(len(parts)))


def first_match(path, patterns):
    """The first of ``patterns`` that matches ``path``, or ``None``.

    Example:
        >>> first_match("block_0_mlp_up", ["*attention*", "*mlp*"])
        '*mlp*'
    """
    for pattern in patterns:
        if path_matches(path, pattern):
            return pattern
    return None


@dataclasses.dataclass
class LayerDecision:
    """What happens to one layer.

    Attributes:
        path: The layer's path.
        class_name: The layer's class name.
        selected: True when the layer's weights are optimised.
        weights: ``[(weight name, shape)]`` for selected layers.
        reason: Why a layer is skipped ("" when selected).
    """

    path: str
    class_name: str
    selected: bool
    weights: list
    reason: str = ""


class TargetReport:
    """The list of layer decisions, printable, with helpers.

    Example:
        >>> report = TargetReport([LayerDecision("d", "Dense", True, [("kernel", (4, 2))])])
        >>> report.selected_paths
        ['d']
    """

    def __init__(self, decisions, action="pruned"):
        self.decisions = list(decisions)
        self.action = action

    @property
    def selected(self):
        """Decisions for selected layers."""
        return [d for d in self.decisions if d.selected]

    @property
    def skipped(self):
        """Decisions for skipped layers."""
        return [d for d in self.decisions if not d.selected]

    @property
    def selected_paths(self):
        """Paths of the selected layers."""
        return [d.path for d in self.selected]

    def reason(self, path):
        """The decision for ``path`` (raises KeyError if unknown)."""
        for d in self.decisions:
            if d.path == path:
                return d
        raise KeyError(path)

    def as_dict(self):
        """The report as plain data (for JSON)."""
        return [dataclasses.asdict(d) for d in self.decisions]

    def to_record(self):
        """Plain data from which :meth:`from_record` rebuilds the report (saved models)."""
        return {"decisions": self.as_dict(), "action": self.action}

    @classmethod
    def from_record(cls, record):
        """The report saved by :meth:`to_record`."""
        return cls([LayerDecision(**d) for d in record["decisions"]], record["action"])

    def __str__(self):
        lines = [f"{len(self.selected)} layers {self.action}, {len(self.skipped)} skipped"]
        for d in self.decisions:
            if d.selected:
                shapes = ", ".join(f"{n}{tuple(s)}" for n, s in d.weights)
                lines.append(f"  {self.action:>8}  {d.path} ({d.class_name}): {shapes}")
            else:
                lines.append(f"  {'skipped':>8}  {d.path} ({d.class_name}): {d.reason}")
        return "\n".join(lines)

    __repr__ = __str__


def _vocab_size(nodes):
    sizes = [n.layer.input_dim for n in nodes if isinstance(n.layer, keras.layers.Embedding)]
    return max(sizes) if sizes else None


def _is_token_embedding(node, vocab):
    layer = node.layer
    if not isinstance(layer, keras.layers.Embedding):
        return False
    return "token" in layer.name.lower() or layer.input_dim == vocab


def _default_ignore_reason(node, weights, vocab, embedding_vars, last_path):
    layer = node.layer
    if isinstance(layer, keras.layers.Embedding):
        if _is_token_embedding(node, vocab):
            return "ignored by default: token embedding (name it in `targets` to include it)"
        return "ignored by default: embedding (name it in `targets` to include it)"
    if any(id(w.variable) in embedding_vars for w in weights):
        return "ignored by default: output head (tied to the token embedding)"
    if layer.name.lower() in HEAD_NAMES:
        return "ignored by default: output head (name it in `targets` to include it)"
    if vocab and vocab > 1 and weights and node.path == last_path:
        shape = weights[0].shape
        out_axes = [a for a in range(len(shape)) if a not in weights[0].input_axes]
        out_size = 1
        for a in out_axes:
            out_size *= shape[a]
        if out_size == vocab and not isinstance(layer, keras.layers.Embedding):
            return "ignored by default: output head (last projection, to the vocabulary)"
    return None


def select_layers(
    model,
    targets: Sequence[str] | str | None = None,
    ignore: Sequence[str] | str | None = None,
    include_embeddings: bool = False,
    layer_filter=None,
    action: str = "pruned",
):
    """Decides, for every layer of ``model``, whether its weights are optimised.

    Only layers whose type is in the weight table
    (:func:`~keras_llmopt._src.core.layer_tree.register_weights`) can be
    selected and are listed; containers (attention, blocks) are walked into.

    Args:
        model: A Keras model or layer.
        targets: Patterns of layers to include. ``None`` means every layer
            with registered weights, minus the default ignores.
        ignore: Patterns of layers to leave alone (wins over ``targets``).
        include_embeddings: Also select embeddings (the token embedding and
            the output head still need to be named in ``targets``).
        layer_filter: Optional ``fn(path, layer) -> str | None`` returning a
            skip reason (used for policies).
        action: Verb used in the printed report.

    Returns:
        A :class:`TargetReport` (decisions in tree order, one per layer that
        has registered weights or was named by a pattern) and a dict
        ``path -> (layer, [WeightRef])`` of the selected layers.

    Raises:
        TypeError: If ``targets``/``ignore`` are not strings or lists of strings.
        ValueError: If a ``targets`` pattern matches no layer.

    Example:
        >>> import keras
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, name="up"),
        ...                           keras.layers.Dense(2, name="lm_head")])
        >>> report, selected = select_layers(model)
        >>> report.selected_paths
        ['up']
    """
    targets = as_patterns(targets, "targets")
    ignore = as_patterns(ignore, "ignore")
    nodes = list(layer_tree.walk_layers(model))
    vocab = _vocab_size(nodes)
    embedding_vars = {
        id(v)
        for n in nodes
        if isinstance(n.layer, keras.layers.Embedding) and _is_token_embedding(n, vocab)
        for v in n.layer.weights
    }
    projections = [
        n.path
        for n in nodes
        if layer_tree.is_registered(n.layer) and not isinstance(n.layer, keras.layers.Embedding)
    ]
    last_path = projections[-1] if projections else None
    decisions, selected = [], {}
    used_targets = set()
    selected_ancestors = []
    for node in nodes:
        if not layer_tree.is_registered(node.layer):
            continue
        cls = type(node.layer).__name__
        weights, reason = layer_tree.find_weights(node.layer)

        def skip(why, node=node, cls=cls):
            decisions.append(LayerDecision(node.path, cls, False, [], why))

        if any(node.path.startswith(p + "/") for p in selected_ancestors):
            continue
        if reason:
            skip(reason)
            continue
        matched_target = first_match(node.path, targets)
        if matched_target:
            used_targets.add(matched_target)
        if targets and not matched_target:
            skip("not matched by `targets`")
            continue
        matched_ignore = first_match(node.path, ignore)
        if matched_ignore:
            skip(f"ignored by pattern {matched_ignore!r}")
            continue
        if not matched_target:
            default_reason = _default_ignore_reason(node, weights, vocab, embedding_vars, last_path)
            is_embedding = isinstance(node.layer, keras.layers.Embedding)
            if default_reason and not (
                include_embeddings and is_embedding and not _is_token_embedding(node, vocab)
            ):
                skip(default_reason)
                continue
        if layer_filter is not None:
            why = layer_filter(node.path, node.layer)
            if why:
                skip(why)
                continue
        decisions.append(LayerDecision(node.path, cls, True, [(w.name, w.shape) for w in weights]))
        selected[node.path] = (node.layer, weights)
        selected_ancestors.append(node.path)
    paths = [n.path for n in nodes if layer_tree.is_registered(n.layer)]
    check_targets_used(targets, used_targets, model.name, paths, "with prunable weights")
    return TargetReport(decisions, action), selected


def check_targets_used(targets, used, model_name, paths, what=""):
    """Raises when a ``targets`` pattern matched no layer, showing what paths look like.

    Example:
        >>> check_targets_used(("*mlp*",), {"*mlp*"}, "gpt", ["block_0_mlp_up"])
    """
    unused = [t for t in targets if t not in used]
    if unused:
        what = f" {what}" if what else ""
        raise ValueError(
            f"`targets` patterns {unused} match no layer{what} in {model_name!r}. Layer paths "
            f"look like: {list(paths)[:8]}. Received: targets={list(targets)!r}"
        )
