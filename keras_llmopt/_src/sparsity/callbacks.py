"""Training callbacks: ``UpdatePruningStep`` and ``PruningSummaries`` (tfmot names)."""

import os

import keras
import numpy as np
from keras import ops

from keras_llmopt._src.sparsity.units import pruning_units


def _iterations(model):
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        return None
    return int(ops.convert_to_numpy(optimizer.iterations))


class UpdatePruningStep(keras.callbacks.Callback):
    """Keeps every pruned layer's step in line with the optimizer (tfmot name).

    When training begins, each pruning step is set to
    ``optimizer.iterations - 1``; during training the step advances by one in
    every training call inside the compiled step (no per-batch Python work,
    and it works on JAX, whose compiled step holds the model state between
    batches). So the schedule follows ``optimizer.iterations`` exactly as in
    tfmot, also after ``keras.saving.load_model`` mid-schedule. Without this
    callback the step simply continues from where it is.

    In a custom training loop, call it by hand as in tfmot's guide:
    ``set_model(model)`` and ``on_train_begin()`` before the loop
    (``on_train_batch_begin``/``on_epoch_end`` are accepted and do nothing).

    Example:
        >>> import keras, numpy as np
        >>> from keras_llmopt import sparsity
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, name="a")])
        >>> pruned = sparsity.prune_low_magnitude(
        ...     model, sparsity.ConstantSparsity(0.5, begin_step=0, frequency=1))
        >>> pruned.compile(optimizer="sgd", loss="mse")
        >>> x, y = np.ones((8, 8), "float32"), np.zeros((8, 4), "float32")
        >>> _ = pruned.fit(x, y, batch_size=4, verbose=0,
        ...                callbacks=[sparsity.UpdatePruningStep()])
        >>> from keras_llmopt import techniques
        >>> state = techniques.get_state(pruned.layers[0], "pruning")
        >>> int(state.pruning_step), float(sparsity.sparsity_report(pruned).pruned_sparsity)
        (1, 0.5)
    """

    def on_train_begin(self, logs=None):
        units = pruning_units(self.model)
        iterations = _iterations(self.model)
        if iterations is None:
            return
        for unit in units:
            unit.pruning_step.assign(iterations - 1)

    def on_epoch_end(self, batch=-1, logs=None):
        # tfmot's custom-loop guide calls on_epoch_end(batch=-1); nothing to do.
        return None


class PruningSummaries(keras.callbacks.Callback):
    """Writes per-layer sparsity and threshold to TensorBoard (tfmot name).

    Uses ``tf.summary`` with values read back as numpy, so it also works when
    training on JAX as long as TensorFlow is installed. Scalars are named
    ``<layer path>/<weight>/sparsity`` and ``.../threshold`` and written at
    the end of each epoch, and every ``update_freq`` batches if it is an int.

    Args:
        log_dir: Folder for the event files.
        update_freq: "epoch" or a number of batches.

    Example:
        >>> callback = PruningSummaries(log_dir="/tmp/prune_logs")
        >>> callback.update_freq
        'epoch'
    """

    def __init__(self, log_dir, update_freq="epoch"):
        super().__init__()
        if not isinstance(log_dir, str | os.PathLike) or not str(log_dir):
            raise ValueError(f"`log_dir` must be a folder path. Received: log_dir={log_dir!r}")
        if update_freq != "epoch" and (
            isinstance(update_freq, bool) or not isinstance(update_freq, int) or update_freq < 1
        ):
            raise ValueError(
                "`update_freq` must be 'epoch' or an integer >= 1. "
                f"Received: update_freq={update_freq!r}"
            )
        self.log_dir = str(log_dir)
        self.update_freq = update_freq
        self._writer = None

    def _write(self):
        try:
            import tensorflow as tf
        except ImportError as error:  # pragma: no cover - TF is a dependency
            raise ImportError("PruningSummaries needs TensorFlow for tf.summary.") from error
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        step = _iterations(self.model) or 0
        # tf.summary.write with the "scalars" plugin metadata is what
        # tf.summary.scalar writes, without needing the tensorboard package.
        from tensorflow.core.framework import summary_pb2

        metadata = summary_pb2.SummaryMetadata()
        metadata.plugin_data.plugin_name = "scalars"
        metadata = metadata.SerializeToString()

        def scalar(tag, value):
            tf.summary.write(tag, tf.constant(value, tf.float32), step=step, metadata=metadata)

        with self._writer.as_default():
            for unit in pruning_units(self.model):
                for pw in unit.pruned:
                    name = unit.weight_path(pw)
                    mask = ops.convert_to_numpy(pw.mask)
                    scalar(f"{name}/sparsity", float(1.0 - np.mean(mask)))
                    scalar(f"{name}/threshold", float(ops.convert_to_numpy(pw.threshold)))
        self._writer.flush()

    def on_train_batch_end(self, batch, logs=None):
        if self.update_freq != "epoch" and (batch + 1) % self.update_freq == 0:
            self._write()

    def on_epoch_end(self, epoch, logs=None):
        self._write()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None
