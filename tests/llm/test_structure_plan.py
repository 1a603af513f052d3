"""Structural pruning's planning and slicing (numpy), width pruning, stage keys, inspection."""

import keras
import numpy as np
import pytest

from keras_llmopt import llm, pipeline, reference
from keras_llmopt._src.llm import slicing, structure_plan


def _tokens(n=8, length=16, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, length)).astype("int32")


@pytest.mark.backend_agnostic
def test_head_counts_allow_whole_groups_or_the_same_heads_per_group():
    assert structure_plan.head_counts(4, 2) == {2: "groups", 4: "groups"}
    assert structure_plan.head_counts(6, 2) == {3: "groups", 6: "groups"} | dict.fromkeys(
        [2, 4], "per_group"
    )
    assert structure_plan.head_counts(4, 4) == dict.fromkeys([1, 2, 3, 4], "groups")
    assert structure_plan.head_counts(1, 1) == {1: "groups"}


@pytest.mark.backend_agnostic
def test_choose_head_count_takes_exact_allowed_counts_and_refuses_others():
    from types import SimpleNamespace

    layer = SimpleNamespace(path="attn", num_heads=6, num_kv_heads=2)
    assert structure_plan.choose_head_count(layer, fraction=0.5) == 3  # one whole group
    assert structure_plan.choose_head_count(layer, fraction=1 / 3) == 4  # 2 per group
    assert structure_plan.choose_head_count(layer, num_heads=2) == 2
    with pytest.raises(ValueError, match=r"'attn'.*4\.2 heads.*not a whole number.*fraction=0\.3"):
        structure_plan.choose_head_count(layer, fraction=0.3)
    with pytest.raises(ValueError, match=r"breaks the grouping.*accepted.*0\.5 \(3 heads\)"):
        structure_plan.choose_head_count(layer, fraction=1 / 6)  # 5 heads
    with pytest.raises(ValueError, match=r"'attn'.*\[2, 3, 4, 6\].*num_heads=5"):
        structure_plan.choose_head_count(layer, num_heads=5)
    with pytest.raises(ValueError, match=r"num_heads=8"):
        structure_plan.choose_head_count(layer, num_heads=8)
    single = SimpleNamespace(path="one", num_heads=1, num_kv_heads=1)
    with pytest.raises(ValueError, match=r"'one'.*none \(one head\)"):
        structure_plan.choose_head_count(single, fraction=0.5)


@pytest.mark.backend_agnostic
def test_kept_heads_by_groups_and_per_group():
    from types import SimpleNamespace

    layer = SimpleNamespace(path="a", num_heads=6, num_kv_heads=2, group_size=3)
    scores = np.array([1.0, 5.0, 2.0, 3.0, 0.0, 4.0])  # group sums 8 and 7
    assert structure_plan.kept_heads(layer, scores, 3) == ([0, 1, 2], [0])
    assert structure_plan.kept_heads(layer, scores, 4) == ([1, 2, 3, 5], [0, 1])
    assert structure_plan.kept_heads(layer, scores, 2) == ([1, 5], [0, 1])


@pytest.mark.backend_agnostic
def test_width_counts_top_scores_and_global_allocation():
    assert structure_plan.kept_top(np.array([0.5, 3.0, 1.0, 2.0, 3.0]), 3) == [1, 3, 4]
    assert structure_plan.width_count(256, fraction=0.5) == 128
    assert structure_plan.width_count(3, fraction=0.9) == 1  # at least one stays
    with pytest.raises(ValueError, match="intermediate_dim=300"):
        structure_plan.width_count(256, count=300)
    counts = structure_plan.global_allocation(
        {"a": np.array([1.0, 1.0, 1.0, 1.0]), "b": np.array([0.01, 0.01, 0.01, 4.0])}, 0.5
    )
    assert counts == {"a": 3, "b": 1}
    assert sum(counts.values()) == 4


@pytest.mark.backend_agnostic
def test_slicing_keeps_the_chosen_indices_along_shrunk_axes():
    value = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    np.testing.assert_array_equal(
        slicing.sliced(value, (2, 2, 4), {3: [0, 2]}), value[:, [0, 2], :]
    )
    flat = np.arange(12)  # 3 heads x 4 channels, flattened
    np.testing.assert_array_equal(slicing.sliced(flat, (8,), {3: [0, 2]}), np.r_[0:4, 8:12])
    assert slicing.kept_by_size((4, [0, 1]), (8, [2]), (4, [1, 2])) == {8: [2]}
    with pytest.raises(ValueError, match=r"size 5 -> 2"):
        slicing.sliced(np.zeros((5,)), (2,), {4: [0, 1]})
    with pytest.raises(ValueError, match="larger"):
        slicing.sliced(np.zeros((2,)), (3,), {})
    with pytest.raises(ValueError, match="rank"):
        slicing.sliced(np.zeros((2, 2)), (2,), {})


# --- hidden (width) pruning -----------------------------------------------------------------


@pytest.mark.parametrize("importance", ["activation", "magnitude"])
def test_hidden_pruning_narrows_every_stream_layer(importance, tmp_path):
    model = reference.build_gpt("tiny", seed=0)
    small = llm.prune_hidden(model, _tokens(), fraction=0.25, importance=importance)
    width = 48  # 64 * (1 - 0.25)
    assert small.get_layer("token_embedding").output_dim == width
    assert small.get_layer("position_embedding").output_dim == width
    assert tuple(small.get_layer("block_0_ln1").gamma.shape) == (width,)
    assert tuple(small.get_layer("block_1_mlp_down").kernel.shape) == (256, width)
    assert tuple(small.get_layer("lm_head").kernel.shape) == (width, 256)
    assert small.get_layer("block_0_attention")._query_dense.kernel.shape[0] == width
    kept = sorted(set(range(64)) - set(small.structural_report.changes[0]["removed"]))
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(small.get_layer("token_embedding").embeddings),
        keras.ops.convert_to_numpy(model.get_layer("token_embedding").embeddings)[:, kept],
    )
    assert small(_tokens(2)).shape == (2, 16, 256)
    path = tmp_path / "narrow.keras"
    small.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded(_tokens(2)), small(_tokens(2)), atol=1e-6)


def test_hidden_pruning_on_keras_hub_needs_head_dim_in_the_config(tiny_llama_lm):
    with pytest.raises(ValueError, match=r"LlamaBackbone.*hidden channels.*head_dim"):
        llm.prune_hidden(tiny_llama_lm(), _tokens(4, 8, seed=1), fraction=0.25)


def test_hidden_pruning_needs_a_residual_stream():
    model = keras.Sequential(
        [keras.Input((8,), dtype="int32"), keras.layers.Embedding(256, 16), keras.layers.Dense(256)]
    )
    with pytest.raises(ValueError, match=r"HiddenPruning: no residual stream"):
        llm.prune_hidden(model, _tokens(4, 8), fraction=0.25)


# --- stage keys and inspection ----------------------------------------------------------------


@pytest.mark.parametrize(
    "stage, params, fragment",
    [
        ("structural", {"method": "ffn_pruning", "fraction": 0.5, "num_heads": 1}, "num_heads"),
        ("structural", {"method": "depth_pruning", "fraction": 0.5}, "fraction"),
        ("oneshot", {"method": "wanda", "num_layers": 1}, "num_layers"),
        ("oneshot", {"method": "head_pruning", "fraction": 0.5, "intermediate_dim": 3}, "inter"),
    ],
)
def test_a_key_of_another_method_is_refused_before_any_work(stage, params, fragment, tmp_path):
    recipe = {"stages": [{stage: params}]}
    with pytest.raises(ValueError, match=rf"stage 0 \({stage}\).*{fragment}"):
        pipeline.run_recipe(recipe, reference.build_gpt("tiny"), tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_oneshot_stage_runs_a_structural_method(tiny_corpus, tmp_path):
    recipe = {"stages": [{"oneshot": {"method": "head_pruning", "fraction": 0.5}}]}
    model = reference.build_gpt("tiny")
    result = pipeline.run_recipe(recipe, model, tmp_path / "o", corpus=tiny_corpus)
    assert result.model.get_layer("block_0_attention").num_heads == 1
    assert model.get_layer("block_0_attention").num_heads == 2


def test_inspect_reports_importance_and_what_a_fraction_removes():
    model = reference.build_gpt("tiny", seed=0)
    output = model.get_layer("block_1_attention")._output_dense
    kernel = keras.ops.convert_to_numpy(output.kernel).copy()
    kernel[0] = 0.0  # head 0 of block 1 contributes nothing
    output.kernel.assign(kernel)
    inspection = pipeline.inspect_model(model, _tokens(), fraction=0.5)
    summary = inspection.structures
    assert summary.importance == "activation"
    row = next(a for a in summary.attention if a["path"] == "block_1_attention")
    assert row["scores"][0] == 0.0 and row["removed"] == [0]
    assert [m["kept"] for m in summary.mlps] == [128, 128]
    assert summary.removed_block in (0, 1)
    text = str(inspection)
    assert "block_1_attention" in text and "removes heads [0]" in text
    assert inspection.to_dict()["structures"]["fraction"] == 0.5
    weights_only = pipeline.inspect_model(model).structures
    assert weights_only.importance == "magnitude"


def test_a_model_carrying_layer_states_is_refused_until_stripped():
    from keras_llmopt import sparsity

    patched = sparsity.prune_low_magnitude(reference.build_gpt("tiny"))
    with pytest.raises(ValueError, match=r"carries \['pruning'\] layer states; strip them"):
        llm.prune_ffn(patched, _tokens(), fraction=0.5)
    stripped = sparsity.strip_pruning(patched)
    assert llm.prune_ffn(stripped, _tokens(), fraction=0.5).count_params() < (
        stripped.count_params()
    )
