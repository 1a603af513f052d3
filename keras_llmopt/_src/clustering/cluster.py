"""``cluster_weights`` / ``strip_clustering``: k-means codebook weights (tfmot names).

Each clustered kernel becomes ``centroids[indices]``: a small trainable codebook
(the "quantization table") and fixed integer indices, both Keras variables held by
a :class:`ClusteringState` sublayer of the layer. The layer's ``call`` is
intercepted on the instance (as for in-place pruning and quantization), so any
Keras 3 model works; gradients reach the centroids through the gather. The
original kernel variable is kept (frozen) and overwritten by ``strip_clustering``.
"""

import keras
import numpy as np
from absl import logging
from keras import ops

from keras_llmopt._src.clustering import kmeans
from keras_llmopt._src.core import layer_state, layer_tree, model_copy, saving, targeting
from keras_llmopt._src.core import strip as core_strip

TECHNIQUE = "clustering"
STATE_ATTR = layer_state.state_attr(TECHNIQUE)


@keras.saving.register_keras_serializable(package="keras_llmopt")
class ClusteringState(layer_state.LayerState):
    """Codebooks and indices of one clustered layer (never called itself).

    Example:
        >>> dense = keras.layers.Dense(4)
        >>> dense.build((None, 8))
        >>> weights, _ = layer_tree.find_weights(dense)
        >>> state = attach(dense, weights, 3)
        >>> int(len(np.unique(ops.convert_to_numpy(state.clustered_value(0)))))
        3
    """

    technique = TECHNIQUE
    order = 20

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        object.__setattr__(self, "entries", [])
        object.__setattr__(self, "settings", {})

    def setup(self, weights, number_of_clusters, init, preserve_sparsity, seed, fit=True):
        """Creates the codebook/index variables; with ``fit``, runs k-means on each weight."""
        entries = []
        for ref in weights:
            values = ops.convert_to_numpy(ref.variable)
            if fit:
                centroids, indices = kmeans.kmeans_1d(
                    values,
                    number_of_clusters,
                    init=init,
                    seed=seed,
                    preserve_sparsity=preserve_sparsity,
                )
            else:  # a saved model being rebuilt: the values are loaded afterwards
                centroids = np.zeros((number_of_clusters,), "float32")
                indices = np.zeros(values.shape, "int32")
            c_var = self.add_weight(
                shape=centroids.shape,
                initializer="zeros",
                trainable=True,
                name=f"{ref.name}_centroids",
            )
            c_var.assign(centroids)
            i_var = self.add_weight(
                shape=indices.shape,
                initializer="zeros",
                dtype="int32",
                trainable=False,
                name=f"{ref.name}_indices",
            )
            i_var.assign(indices)
            entries.append((ref, c_var, i_var))
        object.__setattr__(self, "entries", entries)
        object.__setattr__(
            self,
            "settings",
            {
                "number_of_clusters": number_of_clusters,
                "init": init,
                "preserve_sparsity": preserve_sparsity,
                "seed": seed,
                "weights": [ref.name for ref in weights],
            },
        )

    def clustered_value(self, i):
        """The clustered value of the ``i``-th weight: ``centroids[indices]``."""
        _, centroids, indices = self.entries[i]
        c = ops.convert_to_tensor(centroids)
        if self.settings["preserve_sparsity"]:
            # The zero centroid stays exactly 0 while the others train.
            c = ops.where(ops.stop_gradient(c) == 0.0, ops.zeros_like(c), c)
        return ops.take(c, ops.convert_to_tensor(indices), axis=0)

    # -- layer-state hooks --------------------------------------------------------

    def weight_attrs(self):
        return [ref.storage_attr for ref, _, _ in self.entries]

    def transform_weight(self, attr, value, training):
        for i, (ref, _, _) in enumerate(self.entries):
            if ref.storage_attr == attr:
                return self.clustered_value(i)
        return value

    def on_install(self, layer):
        for ref, _, _ in self.entries:
            ref.variable.trainable = False  # the codebook trains instead

    def on_remove(self, layer):
        for ref, _, _ in self.entries:
            ref.variable.trainable = True

    def baked_weights(self, values):
        return {
            ref.storage_attr: self.clustered_value(i) for i, (ref, _, _) in enumerate(self.entries)
        }

    def record(self):
        return dict(self.settings)


def attach(
    layer,
    weights,
    number_of_clusters,
    init=kmeans.CentroidInitialization.KMEANS_PLUS_PLUS,
    preserve_sparsity=False,
    seed=0,
):
    """Clusters ``weights`` (``WeightRef`` list) of ``layer`` in place; returns the state."""
    state = ClusteringState(name=f"{layer.name}_clustering_state")
    state.setup(weights, number_of_clusters, init, preserve_sparsity, seed)
    layer_state.install(layer, state)
    return state


def restore(layer, record, path):
    """Re-creates a saved layer's :class:`ClusteringState` (values are loaded after).

    Example:
        >>> dense = keras.layers.Dense(4)
        >>> dense.build((None, 8))
        >>> record = attach(dense, layer_tree.find_weights(dense)[0], 3).record()
        >>> twin = keras.layers.Dense(4)
        >>> twin.build((None, 8))
        >>> len(restore(twin, record, "twin").entries)
        1
    """
    weights, reason = layer_tree.find_weights(layer)
    if reason:
        raise ValueError(f"Loading a clustered model: layer '{path}': {reason}.")
    weights = [w for w in weights if w.name in set(record["weights"])]
    state = ClusteringState(name=f"{layer.name}_clustering_state")
    state.setup(
        weights,
        record["number_of_clusters"],
        record["init"],
        record["preserve_sparsity"],
        record["seed"],
        fit=False,
    )
    return state


def cluster_weights(
    to_cluster,
    number_of_clusters,
    cluster_centroids_init=kmeans.CentroidInitialization.KMEANS_PLUS_PLUS,
    preserve_sparsity=False,
    targets=None,
    ignore=None,
    include_embeddings=False,
    seed=0,
):
    """Clusters the weights of a model into ``number_of_clusters`` shared values (tfmot name).

    Every targeted kernel (Dense, EinsumDense, Conv; embeddings on request; the
    token embedding and output head only when named in ``targets``) becomes
    ``centroids[indices]`` with trainable centroids initialised by 1-D k-means.
    Fine-tune with ``fit``, then :func:`strip_clustering`.

    Args:
        to_cluster: A built ``keras.Model`` (not modified).
        number_of_clusters: Integer >= 2 (16 for 4-bit indices, 256 for 8-bit).
        cluster_centroids_init: A ``CentroidInitialization`` name.
        preserve_sparsity: Zero weights stay exactly zero (one centroid is fixed at 0).
        targets: Layer path patterns to cluster (default: every supported layer).
        ignore: Layer path patterns to leave alone.
        include_embeddings: Also cluster embeddings other than the token embedding.
        seed: Seed of the random initialisations.

    Returns:
        A new model with a ``clustering_report`` attribute.

    Raises:
        ValueError: Bad ``number_of_clusters`` / init, an unbuilt model, or nothing
            to cluster.

    Example:
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, name="a"),
        ...                           keras.layers.Dense(4, name="b")])
        >>> clustered = cluster_weights(model, 4, targets=["a", "b"])
        >>> plain = strip_clustering(clustered)
        >>> len(np.unique(plain.get_layer("a").kernel.numpy()))
        4
    """
    if (
        isinstance(number_of_clusters, bool)
        or not isinstance(number_of_clusters, int)
        or (number_of_clusters < 2)
    ):
        raise ValueError(
            "`number_of_clusters` must be an integer >= 2. "
            f"Received: number_of_clusters={number_of_clusters!r}"
        )
    if cluster_centroids_init not in kmeans.CentroidInitialization.values():
        raise ValueError(
            "Unknown `cluster_centroids_init`. Accepted: "
            f"{', '.join(kmeans.CentroidInitialization.values())}. "
            f"Received: cluster_centroids_init={cluster_centroids_init!r}"
        )
    if not isinstance(preserve_sparsity, bool):
        raise ValueError(
            f"`preserve_sparsity` must be a bool. Received: preserve_sparsity={preserve_sparsity!r}"
        )
    if not isinstance(to_cluster, keras.Model):
        raise TypeError(
            f"`to_cluster` must be a keras.Model. Received: to_cluster={to_cluster!r} of type "
            f"{type(to_cluster).__name__}"
        )
    if not to_cluster.built:
        raise ValueError(f"Model '{to_cluster.name}' is not built. Call it on a batch first.")
    model = _working_copy(to_cluster)
    report, selected = targeting.select_layers(
        model,
        targets=targets,
        ignore=ignore,
        include_embeddings=include_embeddings,
        action="clustered",
    )
    for path, (_, weights) in selected.items():
        for ref in weights:
            if int(np.prod(ref.shape)) < number_of_clusters:
                raise ValueError(
                    f"Layer '{path}' weight '{ref.name}' has {int(np.prod(ref.shape))} values, "
                    f"fewer than number_of_clusters={number_of_clusters}."
                )
    if not selected:
        raise ValueError(f"Nothing to cluster in model '{model.name}'.\n{report}")
    progress = keras.utils.Progbar(len(selected), unit_name="layer", verbose=0)
    for i, (path, (layer, weights)) in enumerate(selected.items()):
        attach(layer, weights, number_of_clusters, cluster_centroids_init, preserve_sparsity, seed)
        progress.update(i + 1)
        logging.info("cluster_weights: clustered %s", path)
    object.__setattr__(model, "clustering_report", report)
    return saving.make_saveable(model)


def strip_clustering(model):
    """A plain model whose clustered kernels hold ``centroids[indices]`` (tfmot name).

    Each clustered kernel then has at most ``number_of_clusters`` unique values
    (exactly that many unless k-means left clusters empty). The clustered model is
    not modified; other techniques' states (if any) stay on the copy.

    Args:
        model: A model from :func:`cluster_weights`.

    Returns:
        A new ``keras.Model`` that saves to ``.keras`` without keras_llmopt.

    Example:
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, name="a")])
        >>> plain = strip_clustering(cluster_weights(model, 8, targets=["a"]))
        >>> [type(layer).__name__ for layer in plain.layers]
        ['Dense']
    """
    found = layer_state.find_states(model, TECHNIQUE) if isinstance(model, keras.Model) else []
    if not found:
        raise ValueError(
            "`model` has no clustered layers (use cluster_weights first). Received: "
            f"model={getattr(model, 'name', model)!r}"
        )
    return core_strip.strip_techniques(model, TECHNIQUE, "stripping clustering")


def _working_copy(model):
    """A copy to cluster: pruning (zeros kept by ``preserve_sparsity``) stripped first."""
    techniques = {state.technique for _, state in layer_state.find_states(model)}
    others = sorted(techniques - {"pruning"})
    if others:
        raise ValueError(
            f"Model '{model.name}' carries {others}; cluster the float (or pruned) model "
            f"before quantizing. Received: a model with {others} layer states"
        )
    if techniques:
        return core_strip.strip_techniques(model, "pruning", "clustering")
    return model_copy.copy_model(model, "clustering", compiled=False)
