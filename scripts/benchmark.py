"""The side-by-side benchmark of the reference GPT (thin wrapper of `keras-llmopt benchmark`).

    python scripts/benchmark.py --preset=small --out=bench_small
    python scripts/benchmark.py --preset=tiny --out=/tmp/b --benchmark_variants=tflite_fp16

Writes OUT/benchmark.json (machine, packages, one row per variant), report.md and
size_vs_bpb.png; `--help` lists the flags.
"""

import sys

from keras_llmopt._src.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["keras-llmopt", "benchmark", *sys.argv[1:]]))
