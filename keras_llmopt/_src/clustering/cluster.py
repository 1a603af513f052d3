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
from keras_llmopt._src.core import layer_state, layer_tree, targeting
from keras_llmopt._src.quantization import state as qstate

STATE_ATTR = "_llmopt_clustering_state"


@keras.saving.register_keras_serializable(package="keras_llmopt")
class ClusteringState(keras.layers.Layer):
    """Codebooks and indices of one clustered layer (never called itself).

    Example:
        >>> dense = keras.layers.Dense(4)
        >>> dense.build((None, 8))
        >>> weights, _ = layer_tree.find_weights(dense)
        >>> state = attach(dense, weights, 3)
        >>> int(len(np.unique(ops.convert_to_numpy(state.clustered_value(0)))))
        3
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        object.__setattr__(self, "entries", [])
        object.__setattr__(self, "_owner", lambda: None)

    def setup(self, owner, weights, number_of_clusters, init, preserve_sparsity, seed):
        """Runs k-means on each weight and creates the codebook/index variables."""
        entries = []
        for ref in weights:
            values = ops.convert_to_numpy(ref.variable)
            centroids, indices = kmeans.kmeans_1d(
                values,
                number_of_clusters,
                init=init,
                seed=seed,
                preserve_sparsity=preserve_sparsity,
            )
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
            zero = None
            if preserve_sparsity:
                # The zero centroid stays exactly 0 while the others train.
                zero = np.asarray(centroids == 0.0, "float32")
            ref.variable.trainable = False
            entries.append((ref, c_var, i_var, zero))
        object.__setattr__(self, "entries", entries)
        object.__setattr__(self, "_owner", lambda: owner)
        self.built = True

    def get_owner(self):
        """The clustered layer."""
        return self._owner()

    def clustered_value(self, i):
        """The clustered value of the ``i``-th weight: ``centroids[indices]``."""
        _, centroids, indices, zero = self.entries[i]
        c = ops.convert_to_tensor(centroids)
        if zero is not None:
            c = c * (1.0 - ops.convert_to_tensor(zero))
        return ops.take(c, ops.convert_to_tensor(indices), axis=0)

    def call(self, *args, **kwargs):
        raise RuntimeError("ClusteringState holds variables only; it is not meant to be called.")


def attach(
    layer,
    weights,
    number_of_clusters,
    init=kmeans.CentroidInitialization.KMEANS_PLUS_PLUS,
    preserve_sparsity=False,
    seed=0,
):
    """Clusters ``weights`` (``WeightRef`` list) of ``layer`` in place; returns the state."""
    state = ClusteringState(name=f"{layer.name}_clustering_state", dtype="float32")
    state.setup(layer, weights, number_of_clusters, init, preserve_sparsity, seed)
    layer_state.set_tracked(layer, STATE_ATTR, state)
    original = layer.call

    def clustered_call(*args, **kwargs):
        saved = []
        try:
            for i, (ref, _, _, _) in enumerate(state.entries):
                saved.append((ref.storage_attr, getattr(layer, ref.storage_attr)))
                object.__setattr__(layer, ref.storage_attr, state.clustered_value(i))
            return original(*args, **kwargs)
        finally:
            for attr, value in reversed(saved):
                object.__setattr__(layer, attr, value)

    object.__setattr__(layer, "call", clustered_call)
    return state


def _states(model):
    return [
        (node.path, vars(node.layer)[STATE_ATTR])
        for node in layer_tree.walk_layers(model)
        if isinstance(vars(node.layer).get(STATE_ATTR), ClusteringState)
    ]


def _refuse_config(model):
    def get_config():
        raise ValueError(
            f"Model '{model.name}' is clustered in place, so its config cannot describe the "
            "codebooks. Call `keras_llmopt.clustering.strip_clustering(model)` before "
            "`model.save(...)`, or use `save_weights`."
        )

    object.__setattr__(model, "get_config", get_config)


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
    from keras_llmopt._src.quantization.quantize import _working_copy

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
    _refuse_config(model)
    object.__setattr__(model, "clustering_report", report)
    return model


def strip_clustering(model):
    """A plain model whose clustered kernels hold ``centroids[indices]`` (tfmot name).

    Each clustered kernel then has at most ``number_of_clusters`` unique values
    (exactly that many unless k-means left clusters empty). The clustered model is
    not modified.

    Args:
        model: A model from :func:`cluster_weights`.

    Returns:
        A new plain ``keras.Model`` that saves to ``.keras`` without keras_llmopt.

    Example:
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, name="a")])
        >>> plain = strip_clustering(cluster_weights(model, 8, targets=["a"]))
        >>> [type(layer).__name__ for layer in plain.layers]
        ['Dense']
    """
    found = _states(model) if isinstance(model, keras.Model) else []
    if not found:
        raise ValueError(
            "`model` has no clustered layers (use cluster_weights first). Received: "
            f"model={getattr(model, 'name', model)!r}"
        )
    values = {}
    for path, state in found:
        for i, (ref, _, _, _) in enumerate(state.entries):
            values[(path, ref.storage_attr)] = ops.convert_to_numpy(state.clustered_value(i))
    layers = []
    try:
        for _, state in found:
            layer = state.get_owner()
            layers.append((layer, state, vars(layer)["call"]))
            layer_state.set_tracked(layer, STATE_ATTR, None)
            object.__delattr__(layer, "call")
            for ref, _, _, _ in state.entries:
                ref.variable.trainable = True
        config_patch = vars(model).get("get_config")
        if config_patch is not None:
            object.__delattr__(model, "get_config")
        try:
            plain = qstate.uncompiled_copy(model)
        finally:
            if config_patch is not None:
                object.__setattr__(model, "get_config", config_patch)
    finally:
        for layer, state, call in layers:
            layer_state.set_tracked(layer, STATE_ATTR, state)
            object.__setattr__(layer, "call", call)
            for ref, _, _, _ in state.entries:
                ref.variable.trainable = False
    for node in layer_tree.walk_layers(plain):
        for (path, attr), value in values.items():
            if node.path == path:
                getattr(node.layer, attr).assign(value)
                getattr(node.layer, attr).trainable = True
    return plain
