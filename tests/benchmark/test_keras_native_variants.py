"""Keras 3's own GPTQ / AWQ rows on the tiny GPT: what Keras 3.15.1 does, and the rows."""

import contextlib
import math
import os

import keras
import numpy as np
import pytest

from keras_llmopt import reference
from keras_llmopt._src.benchmark import keras_native_variants as native
from keras_llmopt._src.benchmark import measure, oneshot_variants
from keras_llmopt._src.benchmark.context import BenchmarkContext, Built

MODES = {"keras_gptq_int4": "gptq", "keras_awq_int4": "awq"}


@pytest.fixture
def ctx(trained_tiny, tiny_corpus, tmp_path):
    return BenchmarkContext(
        model=trained_tiny,
        config=reference.GPTConfig.preset("tiny"),
        corpus=tiny_corpus,
        work_dir=str(tmp_path),
        cache=False,
    )


def _hooks_reaching_quantized_layers(original):
    """Keras's capture context, also routing ``quantized_call`` through its hooks.

    A stand-in for the fix of keras-team/keras#23512: inside the context every hooked
    layer's quantized call is its (hooked) float call, so the hooks see the inputs.
    """

    @contextlib.contextmanager
    def stream(layers_map, collectors):
        saved = {name: layer.quantized_call for name, layer in layers_map.items()}
        with original(layers_map, collectors):
            for layer in layers_map.values():
                layer.quantized_call = layer.call
            try:
                yield
            finally:
                for name, layer in layers_map.items():
                    layer.quantized_call = saved[name]

    return stream


@pytest.fixture
def calibrating_keras(monkeypatch):
    from keras.src.quantizers import awq_core, gptq_core

    for module, name in ((gptq_core, "stream_hessians"), (awq_core, "stream_activations")):
        monkeypatch.setattr(module, name, _hooks_reaching_quantized_layers(getattr(module, name)))


def test_kerass_sampler_cuts_the_arranged_stream_into_the_calibration_windows(ctx):
    from keras.src.quantizers.gptq_core import get_dataloader

    windows = oneshot_variants.calibration_windows(ctx)
    dataset, exact = native.keras_dataset(windows)
    count, length = windows.shape
    assert exact and count == oneshot_variants.CALIBRATION_WINDOWS
    cut = get_dataloader(native._identity, length, dataset, num_samples=count)[:, 0, :]
    np.testing.assert_array_equal(cut, windows)
    # The plain concatenation is cut elsewhere (Keras's own stride and offset).
    plain = get_dataloader(native._identity, length, [windows.reshape(-1)], num_samples=count)
    assert not np.array_equal(plain[:, 0, :], windows)


def test_keras_3_15_1_does_not_calibrate_and_the_rows_say_so(ctx, monkeypatch):
    from keras_llmopt._src.benchmark import report

    assert keras.__version__ == "3.15.1", "re-check keras-team/keras#23512 on this Keras"
    for name, mode in MODES.items():
        assert not report.is_ours(name)
        assert native.keras_calibrates(mode) is False, mode
        with pytest.raises(native.KerasCalibrationBug, match=r"keras-team/keras#23512") as info:
            native.build_keras_native(ctx, mode, require_calibration=True)
        assert f"model.quantize({mode!r}) does not calibrate" in str(info.value)
    monkeypatch.setattr(oneshot_variants, "CALIBRATION_WINDOWS", 32)  # the test's budget
    built = native.VARIANTS["keras_awq_int4"](ctx)  # what a user of this release gets
    assert any(n.startswith("UNCALIBRATED: ") and "#23512" in n for n in built.notes)
    assert native.quantized_layers(built.model, "awq")


@pytest.mark.usefixtures("calibrating_keras")
def test_the_probe_sees_calibration_when_the_hooks_reach_the_layer():
    assert native.keras_calibrates("gptq") is True
    assert native.keras_calibrates("awq") is True


@pytest.mark.usefixtures("calibrating_keras")
def test_with_a_calibrating_keras_each_row_is_a_keras_int4_model_close_to_dense(ctx, monkeypatch):
    monkeypatch.setattr(oneshot_variants, "CALIBRATION_WINDOWS", 32)  # the test's budget
    dense = measure.measure(Built(model=ctx.model, size_bytes=0), ctx.corpus, 16)["bpb"]
    ctx.model.save(ctx.path("fp32.keras"))
    fp32_size = os.path.getsize(ctx.path("fp32.keras"))
    layers = [
        layer.path
        for layer in ctx.model._flatten_layers()
        if isinstance(layer, (keras.layers.Dense, keras.layers.EinsumDense))
    ]
    assert "lm_head" in layers and len(layers) == 6 * ctx.config.num_layers + 1
    for name, mode in MODES.items():
        built = native.VARIANTS[name](ctx)
        assert built.model is not ctx.model and built.path is None
        assert sorted(native.quantized_layers(built.model, mode)) == sorted(layers)
        for path in layers:
            layer = next(x for x in built.model._flatten_layers() if x.path == path)
            assert layer.quantization_mode == mode and not hasattr(layer, "_kernel"), path
            assert layer.quantized_kernel.dtype == "uint8", path
        assert ctx.model.get_layer("lm_head").quantization_mode is None  # copy, not the model
        row = measure.measure(built, ctx.corpus, 16)
        assert row["runtime"] == "keras"
        assert math.isfinite(row["bpb"]) and row["bpb"] < dense + 0.5, (name, row["bpb"], dense)
        assert row["calibration_seconds"] > 0
        assert 0 < row["size_bytes"] < fp32_size
        assert "exactly the 32 calibration windows" in built.notes[0], built.notes
