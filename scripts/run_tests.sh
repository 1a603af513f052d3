#!/usr/bin/env bash
# The project's test command (README and .ci/run call exactly this):
# lint, the whole suite on TensorFlow, then the backend-agnostic tests on JAX.
set -euo pipefail
cd "$(dirname "$0")/.."
export TF_CPP_MIN_LOG_LEVEL=3
ruff check keras_llmopt tests examples scripts
ruff format --check keras_llmopt tests examples scripts
KERAS_BACKEND=tensorflow python -m pytest -q --durations=15 "$@"
KERAS_BACKEND=jax python -m pytest -q -m backend_agnostic "$@"
