"""Recipes: ordered optimisation stages (prune, quantize, cluster, strip, export) run on a model.

A recipe is YAML or JSON (parsed safely), validated in full before anything trains::

    stages:
      - prune: {final_sparsity: 0.5, steps: 300}
      - strip: {}
      - export: {format: tflite, quantization: dynamic_int8}

Example:
    >>> from keras_llmopt import pipeline, reference
    >>> recipe = pipeline.load_recipe("examples/recipes/prune50_int8.yaml")
    >>> result = pipeline.run_recipe(recipe, reference.trained_model("tiny"), out_dir="out")
    >>> [a["path"] for a in result.artifacts]
    >>> print(pipeline.inspect_model("out/model.keras"))
"""

# The benchmark's report, also reachable here (its home is keras_llmopt.benchmark).
from keras_llmopt._src.benchmark.report import pareto_front, write_report
from keras_llmopt._src.pipeline.inspection import Inspection, inspect_model
from keras_llmopt._src.pipeline.recipe import (
    STAGE_SCHEMAS,
    Recipe,
    Stage,
    load_recipe,
    parse_recipe,
)
from keras_llmopt._src.pipeline.runner import PipelineResult, run_recipe
from keras_llmopt._src.pipeline.stages import StageError

__all__ = [
    "STAGE_SCHEMAS",
    "Inspection",
    "PipelineResult",
    "Recipe",
    "Stage",
    "StageError",
    "inspect_model",
    "load_recipe",
    "pareto_front",
    "parse_recipe",
    "run_recipe",
    "write_report",
]
