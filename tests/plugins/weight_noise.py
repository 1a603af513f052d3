"""A toy technique registered from outside keras_llmopt: fixed Gaussian weight noise.

The README's "Adding a technique" walks through this file. It is one state class, one
entry point, one restore handler and one registration; recipes (``weight_noise``
stage), ``keras-llmopt optimize --plugins=tests/plugins/weight_noise.py`` and the
benchmark (variant ``toy_weight_noise_fp32``) then offer it, and a noised model saves,
loads and strips like any other.
"""

import keras
import numpy as np
from keras import ops

from keras_llmopt import techniques

TECHNIQUE = "weight_noise"


@keras.saving.register_keras_serializable(package="weight_noise_plugin")
class NoiseState(techniques.LayerState):
    """Fixed noise added to a layer's weights (one non-trainable variable per weight)."""

    technique = TECHNIQUE
    order = 15  # after pruning masks (10), before codebooks and fake quantization

    def setup(self, weights, stddev, seed, draw=True):
        rng = np.random.default_rng(seed)
        entries = []
        for ref in weights:
            noise = self.add_weight(
                shape=ref.shape, initializer="zeros", trainable=False, name=f"{ref.name}_noise"
            )
            if draw:
                scale = stddev * float(np.std(ops.convert_to_numpy(ref.variable)))
                noise.assign(rng.normal(0.0, scale, ref.shape).astype("float32"))
            entries.append((ref.storage_attr, noise))
        object.__setattr__(self, "entries", entries)
        object.__setattr__(
            self, "settings", {"stddev": stddev, "seed": seed, "weights": [w.name for w in weights]}
        )

    def weight_attrs(self):
        return [attr for attr, _ in self.entries]

    def transform_weight(self, attr, value, training):
        noise = dict(self.entries)[attr]
        return ops.convert_to_tensor(value) + ops.convert_to_tensor(noise)

    def baked_weights(self, values):
        return {attr: self.transform_weight(attr, values[attr], False) for attr in values}

    def record(self):
        return dict(self.settings)


def add_weight_noise(model, stddev=0.01, seed=0, targets=None, ignore=None):
    """A copy of ``model`` whose targeted weights carry fixed noise (std ``stddev`` x theirs)."""
    noisy = techniques.copy_model(model, "adding weight noise")
    report, selected = techniques.select_layers(
        noisy, targets=targets, ignore=ignore, action="noised"
    )
    for _, (layer, weights) in selected.items():
        state = NoiseState(name=f"{layer.name}_noise_state")
        state.setup(weights, stddev, seed)
        techniques.install_state(layer, state)
    object.__setattr__(noisy, "noise_report", report)
    return techniques.make_saveable(noisy)


def restore(layer, record, path):
    weights = [w for w in techniques.find_weights(layer)[0] if w.name in record["weights"]]
    state = NoiseState(name=f"{layer.name}_noise_state")
    state.setup(weights, record["stddev"], record["seed"], draw=False)  # values load after
    return state


def run_stage(model, params, run):
    noisy = add_weight_noise(
        model, params["stddev"], params["seed"], params["targets"], params["ignore"]
    )
    if params["steps"]:
        run.train(noisy, params)
    return noisy


def benchmark_variant(ctx):
    noisy = add_weight_noise(ctx.model, stddev=0.05)
    return ctx.export_tflite(techniques.strip_techniques(noisy), "toy_weight_noise_fp32")


techniques.register_technique(
    techniques.Technique(
        name=TECHNIQUE,
        state_class=NoiseState,
        restore=restore,
        stage="weight_noise",
        stage_schema={
            "stddev": ("float", 0.01, (0.0, None)),
            "seed": ("int", 0, (0, None)),
            "targets": ("patterns", None, None),
            "ignore": ("patterns", None, None),
            "steps": ("int", 0, (0, None)),
            "learning_rate": ("float", 1e-4, (0.0, None, "open")),
            "batch_size": ("int", 16, (1, None)),
        },
        run_stage=run_stage,
        variants={"toy_weight_noise_fp32": benchmark_variant},
        description="toy: fixed Gaussian noise on the weights",
    ),
    replace=True,
)
