"""Magnitude pruning for any Keras 3 model (tfmot's ``tfmot.sparsity.keras`` API).

tfmot code ports by changing the import::

    from keras_llmopt import sparsity
    pruned = sparsity.prune_low_magnitude(model, sparsity.PolynomialDecay(0.0, 0.5, 0, 1000))
    pruned.compile(...)
    pruned.fit(x, y, callbacks=[sparsity.UpdatePruningStep()])
    final = sparsity.strip_pruning(pruned)

Example:
    >>> import keras
    >>> from keras_llmopt import sparsity
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, name="a")])
    >>> pruned = sparsity.prune_low_magnitude(model, sparsity.ConstantSparsity(0.5, 0))
    >>> type(sparsity.strip_pruning(pruned).layers[0]).__name__
    'Dense'
"""

from keras_llmopt._src.sparsity.callbacks import PruningSummaries, UpdatePruningStep
from keras_llmopt._src.sparsity.inplace import PruningState
from keras_llmopt._src.sparsity.policy import PruningPolicy
from keras_llmopt._src.sparsity.prune import prune_low_magnitude, pruning_report
from keras_llmopt._src.sparsity.report import SparsityReport, sparsity_report
from keras_llmopt._src.sparsity.schedules import ConstantSparsity, PolynomialDecay, PruningSchedule
from keras_llmopt._src.sparsity.strip import strip_pruning
from keras_llmopt._src.sparsity.wrapper import PruneLowMagnitude

__all__ = [
    "ConstantSparsity",
    "PolynomialDecay",
    "PruneLowMagnitude",
    "PruningPolicy",
    "PruningSchedule",
    "PruningState",
    "PruningSummaries",
    "SparsityReport",
    "UpdatePruningStep",
    "prune_low_magnitude",
    "pruning_report",
    "sparsity_report",
    "strip_pruning",
]
