"""The benchmark's build context: what every variant builder shares in one run.

A :class:`BenchmarkContext` holds the reference model, the corpus and the settings, and
builds what several variants share once per run (``shared``); fine-tunes are also cached
on disk across runs (``finetuned_model``). A builder returns a :class:`Built`.
"""

import dataclasses
import hashlib
import json
import os

import numpy as np
from absl import logging


@dataclasses.dataclass
class Built:
    """One built variant, ready to measure.

    Attributes:
        path: Artifact file (``.tflite``/``.onnx``), or ``None`` for a Keras model.
        model: The Keras model for Keras-run variants.
        size_bytes: Bytes on disk (for a Keras model: its saved ``.keras`` file).
        verification: The export's ``VerificationReport`` (``None`` if not verified).
        notes: What was done or worked around, in words.
        finetuned: Whether the variant was fine-tuned (its bits per byte is also compared
            with the dense model fine-tuned with the same steps and data).
        calibration_seconds: Wall time of a post-training calibration (one-shot pass,
            range calibration), when the variant has one.
    """

    path: str | None = None
    model: object = None
    size_bytes: int | None = None
    verification: object = None
    notes: tuple = ()
    finetuned: bool = False
    calibration_seconds: float | None = None


@dataclasses.dataclass
class BenchmarkContext:
    """Everything the builders share for one benchmark run.

    Attributes:
        model: The trained Keras fp32 reference model (never modified).
        config: Its ``GPTConfig``.
        corpus: The corpus (validation windows for verification, train for tuning).
        work_dir: Folder the artifacts are written to.
        finetune_steps: Fine-tuning steps of the pruning / QAT / clustering variants.
        calibration_windows: Training windows used for post-training calibration.
        verify_windows: Validation windows every export is verified on.
        seed: Seed of the fine-tuning data order.
        verbose: Keras ``fit`` verbosity while fine-tuning.
        cache: Keep fine-tuned models on disk (``$KERAS_LLMOPT_CACHE/finetunes``) and
            reuse them in later runs with the same model, steps, seed and corpus.
    """

    model: object
    config: object
    corpus: object
    work_dir: str
    finetune_steps: int = 300
    calibration_windows: int = 64
    verify_windows: int = 16
    seed: int = 0
    verbose: object = "auto"
    cache: bool = True
    _memo: dict = dataclasses.field(default_factory=dict)
    # Set when the variant being built used a fine-tune (see ``finetuned_model``).
    used_finetune: bool = False

    @property
    def sequence_length(self):
        """Fixed sequence length of every artifact."""
        return self.config.sequence_length

    def path(self, name):
        """Path of a file inside the work folder."""
        return os.path.join(self.work_dir, name)

    def shared(self, key, build):
        """``build()`` once per run (its error too, re-raised for every later caller)."""
        if key not in self._memo:
            try:
                self._memo[key] = (build(), None)
            except Exception as error:  # recorded so each dependent row reports it
                self._memo[key] = (None, error)
        value, error = self._memo[key]
        if error is not None:
            raise RuntimeError(f"{key} failed: {type(error).__name__}: {error}") from error
        return value

    def model_fingerprint(self):
        """A short hash of the reference model's weights (the fine-tune cache key)."""

        def build():
            digest = hashlib.sha256(self.model.name.encode())
            for weight in self.model.weights:
                digest.update(weight.path.encode())
                digest.update(np.ascontiguousarray(np.asarray(weight.numpy())).tobytes())
            return digest.hexdigest()[:16]

        return self.shared("model_fingerprint", build)

    def finetuned_model(self, name, build, learning_rate):
        """``build()`` (a fine-tune returning a Keras model) once per run, cached on disk.

        Every variant that starts from the same fine-tune (every pruned export, every
        export of the QAT model, the dense control) shares it, and with ``cache`` a later
        run with the same model, steps, learning rate, seed and corpus loads it instead
        of training. The variant is marked as fine-tuned.
        """
        import keras

        def load(path):
            return keras.saving.load_model(path, compile=False)

        return self._finetune(name, build, learning_rate, ".keras", lambda m, p: m.save(p), load)

    def finetuned_bytes(self, name, build, learning_rate):
        """As :meth:`finetuned_model` for a fine-tune whose result is file bytes (tfmot)."""

        def save(data, path):
            with open(path, "wb") as handle:
                handle.write(data)

        def load(path):
            with open(path, "rb") as handle:
                return handle.read()

        return self._finetune(name, build, learning_rate, ".bin", save, load)

    def _finetune(self, name, build, learning_rate, suffix, save, load):
        self.used_finetune = True
        return self.shared(
            f"finetune:{name}",
            lambda: self._load_or_build(name, build, learning_rate, suffix, save, load),
        )

    def _load_or_build(self, name, build, learning_rate, suffix, save, load):
        from keras_llmopt._src.reference.cache import atomic_path, cache_dir

        if not self.cache:
            return build()
        path = cache_dir("finetunes") / f"{name}-{self._finetune_key(name, learning_rate)}{suffix}"
        if path.exists():
            try:
                logging.info("benchmark: loading the cached %s fine-tune %s", name, path)
                return load(path)
            except Exception as error:  # a stale or unreadable entry is rebuilt
                logging.warning("benchmark: cached %s unreadable (%s); tuning again", path, error)
        value = build()
        with atomic_path(path) as tmp:
            save(value, tmp)
        return value

    def _finetune_key(self, name, learning_rate):
        import keras

        recipe = {
            "name": name,
            "model": self.model_fingerprint(),
            "steps": self.finetune_steps,
            "learning_rate": learning_rate,
            "seed": self.seed,
            "corpus": [
                getattr(self.corpus, "source", None),
                list(getattr(self.corpus, "num_files", ()) or ()),
            ],
            "sequence_length": self.sequence_length,
            "keras": keras.__version__,
            "code": FINETUNE_CODE_VERSION,
        }
        text = json.dumps(recipe, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def export_tflite(self, model, name, **kwargs):
        """A verified ``<name>.tflite`` of ``model`` in the work folder, as a :class:`Built`.

        Keyword arguments go to ``keras_llmopt.export.to_tflite`` (``quantization=``, ...).
        """
        return _tflite(self, model, name, **kwargs)

    def verification_data(self):
        """``(inputs, targets)`` validation windows every export is verified on."""
        windows = _spread(self.corpus.validation, self.verify_windows)
        return windows[:, :-1], windows[:, 1:]

    def calibration_data(self):
        """Training token windows for post-training calibration."""
        return _spread(self.corpus.train, self.calibration_windows)[:, :-1]

    def train(self, model, learning_rate, callbacks=None, compile=True):
        """Fine-tunes ``model`` for ``finetune_steps`` on the corpus."""
        from keras_llmopt._src.reference.training import train

        return train(
            model,
            self.corpus,
            self.finetune_steps,
            learning_rate=learning_rate,
            seed=self.seed,
            callbacks=callbacks,
            verbose=self.verbose,
            compile=compile,
        )


# Bump when a fine-tune below changes what it produces, so cached fine-tunes are redone.
FINETUNE_CODE_VERSION = 1


def _spread(windows, count):
    index = np.linspace(0, len(windows) - 1, min(count, len(windows))).round().astype(int)
    return np.asarray(windows[index]).astype(np.int32)


def _tflite(ctx, model, name, **kwargs):
    from keras_llmopt._src.export import tflite

    kwargs.setdefault("verification_data", ctx.verification_data())
    report = tflite.to_tflite(
        model, ctx.path(f"{name}.tflite"), sequence_length=ctx.sequence_length, **kwargs
    )
    return Built(
        path=report.path,
        size_bytes=report.size_bytes,
        verification=report.verification,
        notes=report.notes,
    )
