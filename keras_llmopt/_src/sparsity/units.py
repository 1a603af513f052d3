"""Finds the pruning units (wrappers and in-place states) of a model."""

import dataclasses

from keras_llmopt._src.core import layer_tree
from keras_llmopt._src.sparsity.inplace import PruningState
from keras_llmopt._src.sparsity.wrapper import PruneLowMagnitude


@dataclasses.dataclass
class Unit:
    """A wrapper or in-place state with the path of the layer it prunes.

    Attributes:
        path: Path of the pruned layer in the original model's naming.
        holder: The ``PruneLowMagnitude`` wrapper or the ``PruningState``.
        node_path: Path of ``holder`` in the pruned model.
    """

    path: str
    holder: object
    node_path: str

    @property
    def pruned(self):
        """The unit's :class:`~keras_llmopt._src.sparsity.state.PrunedWeight` list."""
        return self.holder.pruned

    @property
    def pruning_step(self):
        """The unit's step variable."""
        return self.holder.pruning_step

    def weight_path(self, pw):
        """Full path (original naming) of a pruned weight."""
        return f"{self.path}/{pw.path}"


def pruning_units(model):
    """Lists the pruning units under ``model`` (a model, a layer or a wrapper)."""
    found = []
    if isinstance(model, PruneLowMagnitude):
        return [Unit(model.layer.name, model, "")]
    for node in layer_tree.walk_layers(model):
        if isinstance(node.layer, PruneLowMagnitude) and node.layer.built:
            prefix = node.path.rsplit("/", 1)[0] + "/" if "/" in node.path else ""
            found.append(Unit(prefix + node.layer.layer.name, node.layer, node.path))
        elif isinstance(node.layer, PruningState) and node.layer.built:
            found.append(Unit(node.path.rsplit("/", 1)[0], node.layer, node.path))
    return found
