"""One-shot LLM compression from calibration text, and structural pruning with recovery.

Wanda, SparseGPT, GPTQ, AWQ and SmoothQuant leave zeros, grids or smoothed weights in
the model's own layers; structural pruning (``prune_heads``, ``prune_ffn``,
``prune_layers``) removes whole heads, MLP channels or blocks and returns a smaller
model, which ``recover`` distills from the original.

A language model is compressed once, layer group by layer group, from a few hundred
calibration sequences (no training): each group sees its inputs as the groups before
it were already compressed. Sparse methods leave zeros in plain layers; GPTQ and AWQ
leave weight-only quantized layers whose grid ``export.to_tflite(quantization="int4")``
stores as chosen; SmoothQuant leaves an equivalent float model ready for
``quantization.calibrate`` and a full-integer ``to_tflite(quantization="int8")``.

Example:
    >>> import numpy as np
    >>> from keras_llmopt import llm, reference
    >>> model = reference.build_gpt("tiny")
    >>> data = np.random.default_rng(0).integers(0, 256, (8, 16)).astype("int32")
    >>> pruned = llm.oneshot(model, data, llm.SparseGPT(sparsity=0.5), num_samples=8)
    >>> pruned.oneshot_report.layer("block_0_mlp_up").sparsity
    0.5
    >>> smaller = llm.prune_ffn(model, data, fraction=0.5)  # a new model, fewer units
    >>> smaller.get_layer("block_0_mlp_up").units
    128
"""

from keras_llmopt._src.ensemble.recovery import recover
from keras_llmopt._src.llm.configs import (
    AWQ,
    GPTQ,
    Magnitude,
    OneShotConfig,
    SmoothQuant,
    SparseGPT,
    Wanda,
    config_from_dict,
)
from keras_llmopt._src.llm.grid_state import WeightGridState, grid_states
from keras_llmopt._src.llm.methods import LayerResult, register_method
from keras_llmopt._src.llm.oneshot import (
    OneShotReport,
    awq,
    gptq,
    oneshot,
    smoothquant,
    sparsegpt,
    wanda,
)
from keras_llmopt._src.llm.structural import (
    StructuralReport,
    find_structures,
    prune_ffn,
    prune_heads,
    prune_hidden,
    prune_layers,
    prune_structures,
)
from keras_llmopt._src.llm.structural_configs import (
    DepthPruning,
    FFNPruning,
    HeadPruning,
    HiddenPruning,
    StructuralConfig,
)

__all__ = [
    "AWQ",
    "DepthPruning",
    "FFNPruning",
    "GPTQ",
    "HeadPruning",
    "HiddenPruning",
    "LayerResult",
    "Magnitude",
    "OneShotConfig",
    "OneShotReport",
    "SmoothQuant",
    "SparseGPT",
    "StructuralConfig",
    "StructuralReport",
    "Wanda",
    "WeightGridState",
    "awq",
    "config_from_dict",
    "find_structures",
    "gptq",
    "grid_states",
    "oneshot",
    "prune_ffn",
    "prune_heads",
    "prune_hidden",
    "prune_layers",
    "prune_structures",
    "recover",
    "register_method",
    "smoothquant",
    "sparsegpt",
    "wanda",
]
