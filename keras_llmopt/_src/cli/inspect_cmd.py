"""``keras-llmopt inspect MODEL``: parameters, bytes by dtype, sparsity, what would change."""

import json

from keras_llmopt._src.cli import flags as cli_flags

HELP = (
    "Inspect a .keras model (positional MODEL or --model; pruned models too): parameters, "
    "bytes by dtype, per-layer sparsity, and which layers pruning, quantization and "
    "clustering would touch, and per-layer head / MLP channel / block importance with what "
    "structural pruning at --structural_fraction would remove (--inspect_windows=N scores "
    "them on N corpus windows). --out=FILE.json also writes it as JSON."
)
FLAG_NAMES = (
    "model",
    "out",
    "structural_fraction",
    "inspect_windows",
    "corpus_dir",
    "sequence_length",
)


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

    data, model = None, path
    if cli_flags.INSPECT_WINDOWS.value:
        import keras

        from keras_llmopt._src.cli import common

        model = keras.saving.load_model(path, compile=False)
        corpus = common.corpus_for(common.sequence_length_of(model))
        data = corpus.train[: cli_flags.INSPECT_WINDOWS.value, :-1].astype("int32")
    inspection = inspect_model(model, data, cli_flags.STRUCTURAL_FRACTION.value)
    print(inspection)
    if cli_flags.OUT.value:
        with atomic_path(cli_flags.OUT.value) as tmp:
            with open(tmp, "w") as handle:
                json.dump(inspection.to_dict(), handle, indent=2, default=str)
        print(f"\nwrote {cli_flags.OUT.value}")
    return inspection
