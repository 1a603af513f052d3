#!/usr/bin/env bash
# The project's test command (README and .ci/run call exactly this):
# lint, the default suite on TensorFlow, its backend-agnostic tests on JAX, then the
# `slow` tests (the demo, the full model matrix) on TensorFlow.
set -euo pipefail
cd "$(dirname "$0")/.."
export TF_CPP_MIN_LOG_LEVEL=3
ruff check keras_llmopt tests examples scripts
ruff format --check keras_llmopt tests examples scripts
KERAS_BACKEND=tensorflow python -m pytest -q --durations=15 "$@"  # the default suite
KERAS_BACKEND=jax python -m pytest -q -m "backend_agnostic and not slow" "$@"
KERAS_BACKEND=tensorflow python -m pytest -q --durations=10 -m slow "$@"
