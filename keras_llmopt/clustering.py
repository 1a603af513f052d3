"""Weight clustering: k-means codebook weights (tfmot's ``tfmot.clustering.keras`` API).

Example:
    >>> import keras
    >>> from keras_llmopt import clustering
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, name="a")])
    >>> clustered = clustering.cluster_weights(model, 8, targets=["a"])
    >>> plain = clustering.strip_clustering(clustered)
"""

from keras_llmopt._src.clustering.cluster import (
    ClusteringState,
    cluster_weights,
    strip_clustering,
)
from keras_llmopt._src.clustering.kmeans import CentroidInitialization

__all__ = ["CentroidInitialization", "ClusteringState", "cluster_weights", "strip_clustering"]
