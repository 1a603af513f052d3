"""``keras-llmopt demo``: the main job, run end to end on the reference GPT.

Train (or load the cached) reference GPT, then the whole workflow as benchmark
variants: converter exports (fp32, float16, dynamic int8, full-integer int8), Keras-native
int8/int4, ONNX, pruning fine-tune + strip + sparse / int8 exports, QAT + full-integer
int8, clustering, and the tfmot anchors; every export verified against Keras. Prints the
side-by-side table, writes a report folder and ends with a sample of text generated from
the best compressed artifact (``demo_sample``).

The demo is a first impression, so it runs on a shorter budget than ``keras-llmopt
benchmark`` (``DEMO_BUDGET``: fewer training and fine-tune steps, fewer evaluation
windows; each flag still overrides it). The fine-tunes are shared between the variants
built from them and cached, so a second run only exports and measures.
"""

import os
import shutil
import tempfile
import time

from absl import logging

from keras_llmopt._src.cli import benchmark_cmd, demo_sample
from keras_llmopt._src.cli import flags as cli_flags
from keras_llmopt._src.reference.config import DEFAULT_TRAIN_STEPS, GPTConfig

HELP = (
    "The whole workflow on the reference GPT (train or load, prune, QAT, strip, export, "
    "verify) with the side-by-side table, on a short budget (small: 300 training and 50 "
    "fine-tune steps, 64 eval windows; --steps, --finetune_steps, --eval_windows override "
    "it; fine-tunes are cached); writes --out (default ./keras_llmopt_report): "
    "report.md, benchmark.json, size_vs_bpb.png. --out=FILE.json writes the JSON there and "
    "the Markdown and plot beside it."
)
# The benchmark command's flags, less --model: the demo always uses the reference GPT.
FLAG_NAMES = tuple(name for name in benchmark_cmd.FLAG_NAMES if name != "model")
DEFAULT_OUT = "keras_llmopt_report"
# The demo's budget per preset, used where --steps / --finetune_steps / --eval_windows
# are not given: about 8 minutes on 2 cores from an empty cache, under 4 cached, for
# `small`. `keras-llmopt benchmark` keeps the full budget (1000 / 300 / 256 for small).
DEMO_BUDGET = {
    "small": {"steps": 250, "finetune_steps": 40, "eval_windows": 64},
    "tiny": {"steps": None, "finetune_steps": None, "eval_windows": None},
}


def report_paths(out):
    """``(report folder, JSON path)`` for --out (a folder, or a ``.json`` file)."""
    out = out or DEFAULT_OUT
    if out.endswith(".json"):
        return os.path.dirname(os.path.abspath(out)), out
    return out, os.path.join(out, "benchmark.json")


def run(argv):
    del argv
    start = time.time()
    config = GPTConfig.preset(cli_flags.PRESET.value)
    out_dir, json_path = report_paths(cli_flags.OUT.value)
    budget = DEMO_BUDGET.get(cli_flags.PRESET.value, {})
    logging.info("demo (%s): step 1/2, the reference model", config.name)
    model, corpus, how = benchmark_cmd.reference_model(steps=budget.get("steps"))
    train_steps = (
        cli_flags.STEPS.value
        or budget.get("steps")
        or DEFAULT_TRAIN_STEPS.get(cli_flags.PRESET.value, 1000)
    )
    keep = bool(benchmark_cmd.KEEP_ARTIFACTS.value)
    artifacts = os.path.join(out_dir, "artifacts") if keep else tempfile.mkdtemp("_klo_demo")
    logging.info("demo (%s): step 2/2, optimize, export, verify and measure", config.name)
    try:
        result, paths = benchmark_cmd.run_and_report(
            model,
            corpus,
            out_dir,
            artifacts,
            title=f"keras_llmopt demo ({config.name})",
            preamble=(
                f"Reference GPT `{config.name}` ({model.count_params():,} parameters, "
                f"{train_steps} training steps, trained: {how}), "
                f"{benchmark_cmd.finetune_steps(budget.get('finetune_steps'))} "
                "fine-tune steps per fine-tuned variant (each fine-tune is shared by the "
                "exports built from it). The demo's short budget: `keras-llmopt benchmark` "
                "trains and fine-tunes for longer."
            ),
            json_path=json_path,
            trained=how,
            extra={"preset": config.name},
            keep_paths=keep,
            finetune_steps_default=budget.get("finetune_steps"),
            eval_windows=budget.get("eval_windows"),
        )
        demo_sample.print_sample(result.rows, paths["artifacts"], corpus)
    finally:
        if not keep:
            shutil.rmtree(artifacts, ignore_errors=True)
    elapsed = time.time() - start
    cpu = time.process_time()  # user + system time of this process, all its threads
    _add_wall_time(json_path, elapsed, cpu)
    print(f"\ndemo ({config.name}) finished in {elapsed:.0f} s (CPU time {cpu:.0f} s)")
    print(f"report: {paths['markdown']}, {paths['json']}, {paths['plot']}")
    return result


def _add_wall_time(json_path, elapsed, cpu):
    import json

    from keras_llmopt._src.benchmark.report import write_json

    with open(json_path) as handle:
        data = json.load(handle)
    data["wall_time_s"] = elapsed
    data["cpu_time_s"] = cpu
    write_json(data, json_path)
