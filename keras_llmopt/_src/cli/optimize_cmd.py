"""``keras-llmopt optimize``: run a recipe (YAML/JSON stages) on a model."""

import os
import sys

import keras
from absl import flags, logging

from keras_llmopt._src.cli import common
from keras_llmopt._src.cli import flags as cli_flags

HELP = (
    "Run --recipe (YAML or JSON: prune / quantize / cluster / strip / evaluate / export "
    "stages) on --model (.keras: any model with a token input, KerasHub CausalLMs included; "
    "default: the cached trained --preset GPT), writing verified artifacts and pipeline.json "
    "into --out. --sequence_length (or the recipe's `sequence_length:`) sets the length for "
    "models that do not fix one."
)
FLAG_NAMES = (
    "recipe",
    "model",
    "preset",
    "steps",
    "sequence_length",
    "out",
    "seed",
    "corpus_dir",
    "plugins",
)

RECIPE = flags.DEFINE_string(
    "recipe", None, "Recipe file (.yaml/.yml/.json), e.g. examples/recipes/prune50_int8.yaml."
)


def run(argv):
    del argv
    from keras_llmopt._src.pipeline import recipe as recipe_lib
    from keras_llmopt._src.pipeline import runner
    from keras_llmopt._src.pipeline.stages import StageError

    if not RECIPE.value:
        raise ValueError("optimize: pass the recipe with --recipe=FILE (.yaml or .json)")
    if not cli_flags.OUT.value:
        raise ValueError("optimize: pass the output folder with --out=DIR")
    recipe = recipe_lib.load_recipe(RECIPE.value)  # validated before any model is loaded
    runner.preflight(recipe)
    path = cli_flags.MODEL.value
    if path:
        if not path.endswith(".keras"):
            raise ValueError(f"optimize: --model must be a .keras file. Received: --model={path}")
        if not os.path.exists(path):
            raise FileNotFoundError(f"optimize: no such model file. Received: --model={path}")
        from keras_llmopt._src.core import registry

        registry.techniques()  # every technique registered, so patched models load

        model = keras.saving.load_model(path, compile=False)
    else:
        from keras_llmopt._src.reference.config import GPTConfig
        from keras_llmopt._src.reference.zoo import trained_model

        corpus = common.corpus_for(GPTConfig.preset(cli_flags.PRESET.value).sequence_length)
        model = trained_model(
            cli_flags.PRESET.value,
            steps=cli_flags.STEPS.value,
            seed=cli_flags.SEED.value,
            corpus=corpus,
        )
    length = runner.resolve_inputs(
        model, recipe, cli_flags.SEQUENCE_LENGTH.value, what="optimize"
    ).sequence_length
    if path:
        corpus = common.corpus_for(length)
    logging.info(
        "optimize: recipe %r, %d stages, length %d", recipe.name, len(recipe.stages), length
    )
    try:
        result = runner.run_recipe(
            recipe,
            model,
            cli_flags.OUT.value,
            corpus=corpus,
            seed=cli_flags.SEED.value,
            sequence_length=length,
        )
    except StageError as error:
        logging.error("%s", error)
        print(f"keras-llmopt optimize: error: {error}", file=sys.stderr)
        sys.exit(1)
    rows = []
    for item in result.evaluations:
        rows.append({"stage": item["stage"], "output": "evaluate", "bpb": item["bpb"]})
    for a in result.artifacts:
        v = a["verification"] or {}
        rows.append(
            {
                "stage": a["stage"],
                "output": a["path"],
                "size_bytes": a["size_bytes"],
                "bpb": v.get("bpb_artifact"),
                "top1": v.get("top1_agreement"),
                "verified": a["verified"],
            }
        )
    rows.sort(key=lambda r: r["stage"])
    print()
    common.print_table(rows, ["stage", "output", "size_bytes", "bpb", "top1", "verified"])
    print(f"\nwrote {result.summary_path}")
    return result
