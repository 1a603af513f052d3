"""Helpers shared by the CLI subcommands."""

import os

import keras

from keras_llmopt._src.cli import flags as cli_flags
from keras_llmopt._src.core.model_inputs import describe_inputs
from keras_llmopt._src.reference.corpus import load_corpus


def corpus_for(sequence_length, validation_only=False):
    """Loads the corpus with the ``--corpus_dir`` flag applied."""
    return load_corpus(
        sequence_length, corpus_dir=cli_flags.CORPUS_DIR.value, validation_only=validation_only
    )


def sequence_length_of(model_or_path):
    """Reads the sequence length a model or artifact expects, or the flag's value."""
    if cli_flags.SEQUENCE_LENGTH.value:
        return cli_flags.SEQUENCE_LENGTH.value
    if isinstance(model_or_path, keras.Model):
        length = describe_inputs(model_or_path).sequence_length
        if length is not None:
            return length
    else:
        from keras_llmopt._src.export.runtime import load_runner

        runner = load_runner(os.fspath(model_or_path))
        if getattr(runner, "sequence_length", None):
            return int(runner.sequence_length)
    raise ValueError(
        f"Cannot tell the sequence length of {model_or_path!r}: pass --sequence_length."
    )


def print_table(rows, columns):
    """Prints dict rows as an aligned text table."""
    cells = [[_fmt(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)))


def _fmt(value):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)
