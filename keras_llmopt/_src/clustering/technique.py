"""k-means weight clustering as a registered technique: the ``cluster`` recipe stage."""

from absl import logging

from keras_llmopt._src.clustering import cluster, kmeans
from keras_llmopt._src.core import registry, targeting

CLUSTER_SCHEMA = {
    "number_of_clusters": ("int", 16, (2, 65536)),
    "init": ("choice", None, tuple(kmeans.CentroidInitialization.values())),
    **registry.FINETUNE_SCHEMA,
    "learning_rate": ("float", 1e-4, (0.0, None, "open")),
}


def run_cluster_stage(model, params, run):
    """k-means weight clustering (``cluster_weights``), fine-tuned."""
    kwargs = {"cluster_centroids_init": params["init"]} if params["init"] else {}
    clustered = cluster.cluster_weights(model, params["number_of_clusters"], **kwargs)
    if params["steps"]:
        logging.info(
            "%s: fine-tuning %d steps with %d clusters",
            run.label,
            params["steps"],
            params["number_of_clusters"],
        )
        run.train(clustered, params)
    return clustered


CLUSTERING = registry.register_technique(
    registry.Technique(
        name=cluster.TECHNIQUE,
        state_class=cluster.ClusteringState,
        restore=cluster.restore,
        stage="cluster",
        stage_schema=CLUSTER_SCHEMA,
        run_stage=run_cluster_stage,
        must_precede=("quantize",),
        **registry.report_handlers("clustering_report", targeting.TargetReport),
        description="k-means weight clustering (a trainable codebook per kernel)",
    ),
    replace=True,
)
