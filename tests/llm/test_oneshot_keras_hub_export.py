"""GPTQ / AWQ grids of KerasHub CausalLMs kept in their int4 and int8 ``.tflite`` files.

The converter would multiply the RMSNorm scale (Llama, Gemma's ``1 + scale``) into
the next FULLY_CONNECTED weights and attention's ``1/sqrt(head_dim)`` into GPT-2's
query kernel; the exporter keeps each grid anyway, checked on the file's bytes.
"""

import keras
import numpy as np
import pytest

from keras_llmopt import export, llm
from keras_llmopt._src.export import weight_grids

keras_hub = pytest.importorskip("keras_hub")

_SIZES = dict(vocabulary_size=256, num_layers=2, hidden_dim=64, intermediate_dim=128)


def _build(family):
    keras.utils.set_random_seed(0)  # KerasHub's own initialisation: q and o start equal
    if family == "llama":
        backbone = keras_hub.models.LlamaBackbone(
            num_query_heads=2, num_key_value_heads=1, **_SIZES
        )
        return keras_hub.models.LlamaCausalLM(backbone=backbone, preprocessor=None)
    if family == "gemma":
        backbone = keras_hub.models.GemmaBackbone(
            num_query_heads=2, num_key_value_heads=1, head_dim=32, **_SIZES
        )
        return keras_hub.models.GemmaCausalLM(backbone=backbone, preprocessor=None)
    backbone = keras_hub.models.GPT2Backbone(num_heads=2, max_sequence_length=32, **_SIZES)
    return keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)


def _grids(model):
    return [
        weight_grids.WeightGrid(path, s.codes(), np.asarray(s.scales), s.bits, s.group_size)
        for path, s in llm.grid_states(model)
    ]


@pytest.mark.parametrize(
    "family, config, mode",
    [
        ("llama", llm.GPTQ(bits=4, group_size=32), "int4"),
        ("llama", llm.AWQ(bits=4, group_size=32), "int4"),
        ("llama", llm.GPTQ(bits=8, group_size=-1), "dynamic_int8"),
        ("gemma", llm.AWQ(bits=4, group_size=32), "int4"),
        ("gpt2", llm.GPTQ(bits=4, group_size=32), "int4"),
    ],
)
def test_keras_hub_grids_are_kept_in_the_file(family, config, mode, tmp_path):
    out = llm.oneshot(_build(family), _calibration(), config, num_samples=16)
    grids = _grids(out)
    mlp_kernels = 2 if family == "gpt2" else 3  # GPT-2's MLP is not gated
    assert len(grids) == 2 * (4 + mlp_kernels)  # q, k, v, o and the MLP of both blocks
    # An untrained model's activations are near ties, which dynamic int8 activation
    # quantization flips; the weights themselves are checked exactly below.
    result = export.to_tflite(
        out, tmp_path / "m.tflite", quantization=mode, sequence_length=16, tolerance={"top1": 0.5}
    )
    assert result.verification.passed
    assert f"{len(grids)} weight grid(s) kept exactly as given" in result.notes
    content = (tmp_path / "m.tflite").read_bytes()
    weight_grids.check_grids_kept(content, grids)
    assert set(result.summary["matmul_inputs"]["FULLY_CONNECTED"]) == {"float32,int8"}


def test_gpt2_query_keeps_its_codes_with_the_folded_attention_scale(tmp_path):
    out = llm.gptq(_build("gpt2"), _calibration(), bits=4, group_size=32, num_samples=16)
    export.to_tflite(
        out, tmp_path / "m.tflite", quantization="int4", sequence_length=16, tolerance={"top1": 0.5}
    )
    stored = weight_grids.stored_weights((tmp_path / "m.tflite").read_bytes())
    query = next(g for g in _grids(out) if g.name.endswith("layer_0/self_attention/query"))
    codes, scales = next(
        (c, s)
        for c, s, _ in stored.values()
        if c.shape == query.codes.shape and (c == query.codes).all()
    )
    ratio = scales / query.scales
    np.testing.assert_allclose(ratio, 1 / np.sqrt(32), rtol=1e-3)  # head_dim 32


def test_a_grid_off_the_file_is_refused_naming_it(tmp_path):
    out = llm.gptq(_build("llama"), _calibration(), bits=4, group_size=32, num_samples=16)
    export.to_tflite(
        out, tmp_path / "m.tflite", quantization="int4", sequence_length=16, tolerance={"top1": 0.5}
    )
    content = (tmp_path / "m.tflite").read_bytes()
    grid = _grids(out)[0]
    moved = weight_grids.WeightGrid(
        grid.name, np.clip(grid.codes + 1, -7, 7), grid.scales, 4, grid.group_size
    )
    with pytest.raises(ValueError, match="matches no int4/int8 matmul weight|is not kept"):
        weight_grids.check_grids_kept(content, [moved])


def _calibration():
    ids = np.random.default_rng(0).integers(1, 256, (16, 16)).astype("int32")
    return {"token_ids": ids, "padding_mask": np.ones_like(ids, bool)}
