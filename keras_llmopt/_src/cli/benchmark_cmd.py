"""``keras-llmopt benchmark``: every variant of the reference GPT, measured side by side."""

import os
import time

import keras
from absl import flags, logging

from keras_llmopt._src.cli import common
from keras_llmopt._src.cli import flags as cli_flags

HELP = (
    "Measure every variant of the trained reference GPT (size, bits per byte, 1/2-thread "
    "latency; Keras, TFLite, ONNX, AI Edge Quantizer, tfmot and keras_llmopt rows) on the "
    "same validation windows; write --out/benchmark.json, report.md and size_vs_bpb.png."
)
FLAG_NAMES = (
    "preset",
    "model",
    "steps",
    "seed",
    "corpus_dir",
    "eval_windows",
    "out",
    "benchmark_variants",
    "finetune_steps",
    "latency_repeats",
    "latency_warmup",
    "keep_artifacts",
    "plugins",
)

# Fine-tune steps of the pruning / QAT / clustering variants when --finetune_steps is unset.
DEFAULT_FINETUNE_STEPS = {"tiny": 60, "small": 300}

VARIANTS = flags.DEFINE_list(
    "benchmark_variants",
    None,
    "Comma-separated variants to run (default: all but the opt-in structural rows, see "
    "scripts/benchmark_structural.py; keras_fp32 and tflite_fp32 are always added as the "
    "ratios' references).",
)
FINETUNE_STEPS = flags.DEFINE_integer(
    "finetune_steps",
    None,
    "Fine-tune steps of the pruning, QAT and clustering variants (default: tiny 60, small 300).",
    lower_bound=1,
)
LATENCY_REPEATS = flags.DEFINE_integer(
    "latency_repeats", 30, "Timed passes per latency (median reported).", lower_bound=1
)
LATENCY_WARMUP = flags.DEFINE_integer(
    "latency_warmup", 5, "Untimed passes before timing.", lower_bound=0
)
KEEP_ARTIFACTS = flags.DEFINE_bool(
    "keep_artifacts",
    None,
    "Keep every variant's artifact under <out>/artifacts (benchmark: yes by default; demo: "
    "no, they go to a temporary folder).",
)


def reference_model(preset=None, model_path=None, steps=None):
    """The model to benchmark (--model, or the cached trained --preset) and its corpus.

    ``steps`` (training steps) is used when --steps is unset (default: the preset's
    budget).

    Returns:
        ``(model, corpus, how)`` where ``how`` is "loaded", "cached" or "now".
    """
    from keras_llmopt._src.reference.config import GPTConfig
    from keras_llmopt._src.reference.zoo import trained_model, trained_model_path

    if model_path:
        if not os.path.exists(model_path):
            raise FileNotFoundError(f"no such model file. Received: --model={model_path}")
        if not model_path.endswith(".keras"):
            raise ValueError(f"--model must be a .keras file. Received: --model={model_path}")
        model = keras.saving.load_model(model_path, compile=False)
        corpus = common.corpus_for(common.sequence_length_of(model))
        return model, corpus, "loaded"
    preset = preset or cli_flags.PRESET.value
    config = GPTConfig.preset(preset)
    corpus = common.corpus_for(config.sequence_length)
    steps, seed = cli_flags.STEPS.value or steps, cli_flags.SEED.value
    cached = trained_model_path(preset, steps, seed, corpus).exists()
    logging.info("%s the reference %s GPT", "Loading" if cached else "Training", preset)
    model = trained_model(preset, steps=steps, seed=seed, corpus=corpus)
    return model, corpus, "cached" if cached else "now"


def finetune_steps(default=None):
    """--finetune_steps, else ``default``, else the preset's default."""
    return (
        FINETUNE_STEPS.value or default or DEFAULT_FINETUNE_STEPS.get(cli_flags.PRESET.value, 300)
    )


def run_and_report(
    model,
    corpus,
    out_dir,
    artifacts_dir,
    title,
    preamble,
    json_path=None,
    trained=None,
    extra=None,
    keep_paths=True,
    finetune_steps_default=None,
    eval_windows=None,
):
    """Runs the benchmark, prints the table, writes the report.

    Returns ``(result, paths)``: the report's paths, with ``paths["artifacts"]`` the
    ``{variant: file}`` the run wrote (before rows of temporary files lose their path).

    ``finetune_steps_default`` and ``eval_windows`` replace the benchmark's defaults
    when --finetune_steps / --eval_windows are not given (the demo's shorter budget).
    """
    from keras_llmopt._src.benchmark import report
    from keras_llmopt._src.benchmark.run import run_benchmark

    start = time.time()
    result = run_benchmark(
        model,
        corpus,
        out_dir,
        variants=VARIANTS.value,
        eval_windows=(
            eval_windows
            if eval_windows is not None and not flags.FLAGS["eval_windows"].present
            else cli_flags.EVAL_WINDOWS.value
        ),
        finetune_steps=finetune_steps(finetune_steps_default),
        latency_warmup=LATENCY_WARMUP.value,
        latency_repeats=LATENCY_REPEATS.value,
        seed=cli_flags.SEED.value,
        extra_settings={"preset": cli_flags.PRESET.value},
        artifacts_dir=artifacts_dir,
        write=False,
    )
    if trained is not None:
        result.row("keras_fp32")["trained"] = trained
    artifact_paths = {row["variant"]: row.get("artifact") for row in result.rows}
    if not keep_paths:  # the artifacts were temporary
        for row in result.rows:
            row["artifact"] = None
    print()
    report.print_table(result.rows)
    paths = report.write_report(
        result,
        out_dir,
        title=title,
        preamble=preamble,
        json_path=json_path,
        extra={"benchmark_seconds": time.time() - start, **(extra or {})},
    )
    return result, {**paths, "artifacts": artifact_paths}


def run(argv):
    del argv
    out = cli_flags.OUT.value or "keras_llmopt_benchmark"
    model, corpus, how = reference_model(model_path=cli_flags.MODEL.value)
    keep = True if KEEP_ARTIFACTS.value is None else KEEP_ARTIFACTS.value
    artifacts = os.path.join(out, "artifacts")
    _, paths = run_and_report(
        model,
        corpus,
        out,
        artifacts,
        title=f"keras_llmopt benchmark ({model.name})",
        preamble=f"Model: `{cli_flags.MODEL.value or model.name}` ({how}), "
        f"{model.count_params():,} parameters.",
        trained=how,
    )
    if not keep:
        import shutil

        shutil.rmtree(artifacts, ignore_errors=True)
    print(f"\nwrote {paths['json']}, {paths['markdown']}, {paths['plot']}")
