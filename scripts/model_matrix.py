"""The model matrix: every decoder family times every technique and artifact, measured.

    python scripts/model_matrix.py                          # all rows, all cells
    python scripts/model_matrix.py --families=llama,gemma --cells=qat_int8,dynamic_int8
    python scripts/model_matrix.py --output=matrix.md --output=matrix.json --update_readme

Prints the table and its totals (cells working / refused / failing, silent failures
apart); ``--update_readme`` rewrites README.md between its model-matrix markers.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags, logging  # noqa: E402

FAMILIES = flags.DEFINE_list("families", None, "Rows to run (default: all).")
CELLS = flags.DEFINE_list("cells", None, "Cells to run (default: all).")
OUTPUT = flags.DEFINE_multi_string(
    "output", [], "Write the table to this .md path, or the full results to this .json path."
)
UPDATE_README = flags.DEFINE_bool(
    "update_readme", False, "Rewrite README.md's model matrix section with the table."
)
README = flags.DEFINE_string(
    "readme",
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md"),
    "README file for --update_readme.",
)
WARMUP_STEPS = flags.DEFINE_integer(
    "warmup_steps", 60, "Training steps per model first, so top-1 agreement is meaningful."
)
CELL_TIME_LIMIT = flags.DEFINE_float(
    "cell_time_limit",
    600,
    "Seconds after which a cell is stopped and counted as failing (at its next Python "
    "step: a converter busy in native code is stopped only when it returns).",
)
WORK_DIR = flags.DEFINE_string("work_dir", None, "Keep the artifacts in this folder.")


def main(argv):
    del argv
    from keras_llmopt._src.benchmark import model_matrix

    result = model_matrix.run_matrix(
        FAMILIES.value,
        CELLS.value,
        work_dir=WORK_DIR.value,
        warmup_steps=WARMUP_STEPS.value,
        cell_time_limit=CELL_TIME_LIMIT.value or None,
    )
    print(result.to_markdown())
    for path in OUTPUT.value:
        logging.info("model matrix: wrote %s", result.write(path))
    if UPDATE_README.value:
        logging.info("model matrix: updated %s", model_matrix.update_readme(result, README.value))
    return 0


if __name__ == "__main__":
    sys.exit(app.run(main))
