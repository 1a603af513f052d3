"""absl flags shared by several ``keras-llmopt`` subcommands."""

from absl import flags

from keras_llmopt._src.reference.config import PRESETS

PRESET = flags.DEFINE_enum("preset", "small", sorted(PRESETS), "Reference GPT preset.")
STEPS = flags.DEFINE_integer(
    "steps",
    None,
    "Training steps (default: the preset's budget: tiny 300, small 1000).",
    lower_bound=1,
)
SEED = flags.DEFINE_integer("seed", 0, "Seed of weights and data order.")
MODEL = flags.DEFINE_string("model", None, "Path of a model: .keras, .tflite or .onnx.")
OUT = flags.DEFINE_string("out", None, "Output path (file or folder, per subcommand).")
CORPUS_DIR = flags.DEFINE_string(
    "corpus_dir", None, "Folder of text files to use instead of the Python standard library."
)
EVAL_WINDOWS = flags.DEFINE_integer(
    "eval_windows", 256, "Validation windows used to measure bits per byte.", lower_bound=1
)
SEQUENCE_LENGTH = flags.DEFINE_integer(
    "sequence_length", None, "Sequence length (default: read from the model).", lower_bound=1
)
PLUGINS = flags.DEFINE_list(
    "plugins",
    None,
    "Modules (dotted names or .py paths) to import first; they register techniques "
    "(recipe stages, benchmark variants) with keras_llmopt.techniques.register_technique.",
)
STRUCTURAL_FRACTION = flags.DEFINE_float(
    "structural_fraction",
    0.25,
    "inspect: the share of heads and MLP channels the structure report asks about.",
    lower_bound=0.0,
    upper_bound=1.0,
)
INSPECT_WINDOWS = flags.DEFINE_integer(
    "inspect_windows",
    0,
    "inspect: training windows of the corpus to score heads, channels and blocks by their "
    "activations (0: by weight magnitude).",
    lower_bound=0,
)
