"""Model fusion: ensembles (weighted, voting), model soups and distillation.

Several models combined by weighted or voting fusion (``EnsembleModel``), averaged in
weight space into one model (``average_weights``, ``greedy_soup``), or distilled into
one student (``Distiller``) so that the deployed model costs one member's inference.
"""

from keras_llmopt._src.ensemble.distill import Distiller, distillation_loss
from keras_llmopt._src.ensemble.model import EnsembleModel
from keras_llmopt._src.ensemble.soup import GreedySoupDetails, average_weights, greedy_soup

__all__ = [
    "Distiller",
    "EnsembleModel",
    "GreedySoupDetails",
    "average_weights",
    "distillation_loss",
    "greedy_soup",
]
