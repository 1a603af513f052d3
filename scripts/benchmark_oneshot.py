"""One-shot compression of the reference GPT (keras_llmopt.llm) beside its anchors, in one run.

    python scripts/benchmark_oneshot.py --preset=small --out=bench_oneshot

Thin wrapper of ``keras-llmopt benchmark`` with the one-shot rows: magnitude / Wanda /
SparseGPT at 50 % and 2:4 (fp32 files), GPTQ and AWQ int4 files on their own grids,
SparseGPT 50 % + GPTQ int4, SmoothQuant + calibrated full-integer int8; and the anchors:
the fp32 and dynamic-int8 files, the converter's own int8 PTQ, round-to-nearest int4
from the AI Edge Quantizer (blocks of 128, and its weight-only recipe), Keras 3's own
GPTQ and AWQ measured in Keras (3.15.1 does not calibrate: keras-team/keras#23512,
named in those rows' notes), the same range
calibration without SmoothQuant, and the QAT full-integer file (a cached fine-tune). Every row has
size, bits per byte, 1/2-thread latency and, for calibrated rows, ``calib_s``. A later
``--benchmark_variants`` replaces the list; other flags are the benchmark's.
"""

import sys

from keras_llmopt._src.cli.main import main

ROWS = (
    "tflite_dynamic_int8",
    "tflite_full_int8_ptq",
    "aeq_weight_only_int4",
    "aeq_rtn_int4",
    "klo_magnitude50",
    "klo_wanda50",
    "klo_sparsegpt50",
    "klo_magnitude_2of4",
    "klo_wanda_2of4",
    "klo_sparsegpt_2of4",
    "keras_gptq_int4",
    "keras_awq_int4",
    "klo_gptq_int4",
    "klo_awq_int4",
    "klo_sparsegpt50_gptq_int4",
    "klo_ptq_int8",
    "klo_smoothquant_int8_ptq",
    "klo_qat_int8",
)

if __name__ == "__main__":
    flags = [f"--benchmark_variants={','.join(ROWS)}", *sys.argv[1:]]
    sys.exit(main(["keras-llmopt", "benchmark", *flags]))
