"""Shared building blocks: layer-tree walk, weight table and layer targeting."""

from keras_llmopt._src.core.layer_tree import (  # noqa: F401
    LayerNode,
    WeightRef,
    find_weights,
    get_layer_by_path,
    is_registered,
    register_weights,
    walk_layers,
)
from keras_llmopt._src.core.targeting import (  # noqa: F401
    LayerDecision,
    TargetReport,
    path_matches,
    select_layers,
)
