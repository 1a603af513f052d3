"""Pruning policies: which layers a model-level prune may touch."""


class PruningPolicy:
    """Base class: decides per layer whether it may be pruned, and checks the model.

    Subclass and override :meth:`allow_pruning` (return ``False`` to skip a
    layer; the report says "skipped by pruning_policy") and/or
    :meth:`ensure_model_supports_pruning` (raise a ``ValueError`` that says
    why a model is not supported). The base class allows everything.

    Example:
        >>> class OnlyMlp(PruningPolicy):
        ...     def allow_pruning(self, layer, path=""):
        ...         return "mlp" in path
        >>> OnlyMlp().allow_pruning(None, "block_0_mlp_up")
        True
    """

    def allow_pruning(self, layer, path=""):
        """Whether ``layer`` (at ``path``) may be pruned."""
        return True

    def ensure_model_supports_pruning(self, model):
        """Raises ``ValueError`` if ``model`` cannot be pruned under this policy."""
        return None


def layer_filter(policy):
    """Turns a policy into a ``fn(path, layer) -> skip reason | None`` for targeting."""
    if policy is None:
        return None
    if not isinstance(policy, PruningPolicy):
        raise TypeError(
            "`pruning_policy` must be a keras_llmopt.sparsity.PruningPolicy. "
            f"Received: pruning_policy={policy!r}"
        )

    def check(path, layer):
        if not policy.allow_pruning(layer, path):
            return f"skipped by pruning_policy {type(policy).__name__}"
        return None

    return check
