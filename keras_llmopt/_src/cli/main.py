"""``keras-llmopt``: the command-line entry point (absl flags and logging).

Usage: keras-llmopt COMMAND [--flags]; ``keras-llmopt COMMAND --help`` lists a
command's flags.
"""

import importlib
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags, logging  # noqa: E402

# name -> (module, one-line help). A module defines `run(argv)`, `HELP`, `FLAG_NAMES` (the
# flags it reads, shown by `COMMAND --help`) and any flags of its own. Modules are imported
# only when their command runs, so `keras-llmopt --help` does not import TensorFlow.
COMMANDS = {
    "train": ("keras_llmopt._src.cli.train_cmd", "Train the reference GPT and save it."),
    "evaluate": (
        "keras_llmopt._src.cli.evaluate_cmd",
        "Measure validation bits per byte of a .keras, .tflite or .onnx model.",
    ),
    "export": (
        "keras_llmopt._src.cli.export_cmd",
        "Export a .keras model to a verified .tflite (any quantization), .onnx or SavedModel.",
    ),
    "generate": (
        "keras_llmopt._src.cli.generate_cmd",
        "Stream text from a .keras model or a .tflite generator (KV cache) file.",
    ),
    "demo": (
        "keras_llmopt._src.cli.demo_cmd",
        "The main job on the reference GPT: train or load, optimize, evaluate, report.",
    ),
    "benchmark": (
        "keras_llmopt._src.cli.benchmark_cmd",
        "Every variant side by side (size, bpb, latency) -> benchmark.json and a report.",
    ),
    "optimize": (
        "keras_llmopt._src.cli.optimize_cmd",
        "Run a recipe (YAML/JSON stages: prune, quantize, cluster, strip, export).",
    ),
    "techniques": (
        "keras_llmopt._src.cli.techniques_cmd",
        "List the registered techniques (built-in and --plugins) and their recipe stages.",
    ),
    "inspect": (
        "keras_llmopt._src.cli.inspect_cmd",
        "Parameters, bytes by dtype, sparsity and the layers each transformation touches.",
    ),
}

_OVERVIEW = """keras-llmopt: the tfmot workflow (prune, quantize, strip, export) for Keras 3 LLMs.

usage: keras-llmopt COMMAND [--flag=value ...]
       keras-llmopt COMMAND --help     (the command's flags)

commands:
{commands}

examples:
  keras-llmopt demo                              # the whole workflow on the small GPT
  keras-llmopt demo --preset=tiny                # a quick run
  keras-llmopt train --preset=small --out=gpt.keras
  keras-llmopt evaluate --model=gpt.keras
  keras-llmopt export --model=gpt.keras --out=gen.tflite --generator
  keras-llmopt generate --model=gen.tflite --prompt="def main(" --max_new_tokens=64
"""


def _load(command):
    return importlib.import_module(COMMANDS[command][0])


def overview():
    """Returns the top-level help text."""
    lines = []
    for name, (_, summary) in COMMANDS.items():
        lines.append(f"  {name:<10} {summary}")
    return _OVERVIEW.format(commands="\n".join(lines))


def command_help(command):
    """Returns the help text of one command: its purpose and its flags."""
    module = _load(command)
    lines = [f"keras-llmopt {command}: {module.HELP}", "", "flags:"]
    for name in module.FLAG_NAMES:
        flag = flags.FLAGS[name]
        lines.append(f"  --{name}: {flag.help}")
        lines.append(f"    (default: {flag.default!r})")
    return "\n".join(lines)


def _load_plugins():
    from keras_llmopt._src.cli import flags as cli_flags
    from keras_llmopt._src.core import registry

    registry.load_plugins(cli_flags.PLUGINS.value or [])


def main(argv=None):
    """Runs ``keras-llmopt`` with ``argv`` (default: ``sys.argv``).

    Example:
        >>> main(["keras-llmopt", "demo", "--preset=tiny"])
    """
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help", "--helpfull"):
        print(overview())
        return 0
    command = argv[1]
    if command not in COMMANDS:
        print(
            f"keras-llmopt: unknown command {command!r}; accepted: {', '.join(COMMANDS)}",
            file=sys.stderr,
        )
        return 2
    module = _load(command)
    rest = argv[2:]
    if any(a in ("-h", "--help", "--helpshort", "--helpfull") for a in rest):
        print(command_help(command))
        return 0

    def _run(args):
        logging.set_verbosity(logging.INFO)
        try:
            _load_plugins()
            module.run(args)
        except (ValueError, FileNotFoundError) as error:
            logging.error("%s", error)
            print(f"keras-llmopt {command}: error: {error}", file=sys.stderr)
            sys.exit(1)

    app.run(_run, argv=[f"keras-llmopt {command}", *rest])
    return 0
