"""``keras-llmopt inspect MODEL``: parameters, bytes by dtype, sparsity, what would change."""

import json

from keras_llmopt._src.cli import flags as cli_flags

HELP = (
    "Inspect a .keras model (positional MODEL or --model; pruned models too): parameters, "
    "bytes by dtype, per-layer sparsity, and which layers pruning, quantization and "
    "clustering would touch. --out=FILE.json also writes it as JSON."
)
FLAG_NAMES = ("model", "out")


def run(argv):
    from keras_llmopt._src.pipeline.inspection import inspect_model
    from keras_llmopt._src.reference.cache import atomic_path

    positional = list(argv[1:])
    if len(positional) > 1:
        raise ValueError(f"inspect: expected one MODEL path. Received: {positional}")
    path = positional[0] if positional else cli_flags.MODEL.value
    if not path:
        raise ValueError("inspect: pass the model: keras-llmopt inspect MODEL.keras")
    from keras_llmopt._src.core import registry

    registry.techniques()  # every technique registered, so patched models load

    inspection = inspect_model(path)
    print(inspection)
    if cli_flags.OUT.value:
        with atomic_path(cli_flags.OUT.value) as tmp:
            with open(tmp, "w") as handle:
                json.dump(inspection.to_dict(), handle, indent=2, default=str)
        print(f"\nwrote {cli_flags.OUT.value}")
    return inspection
