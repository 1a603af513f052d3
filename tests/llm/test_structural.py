"""Structural pruning of functional and Sequential models: exact sizes, planted structures, errors.

Every expected parameter count is computed from the layers' own shapes; every
"planted" test gives some structures exactly zero importance (so which ones go is
known) and checks that removing them leaves the model's function unchanged.
"""

import re

import keras
import numpy as np
import pytest

from keras_llmopt import llm, reference

ATOL = 1e-5


def _gpt(seed=0):
    keras.utils.set_random_seed(seed)
    return reference.build_gpt("tiny")


def _tokens(n=8, length=16, seed=0, vocab=256):
    return np.random.default_rng(seed).integers(0, vocab, (n, length)).astype("int32")


def _out(model, tokens):
    return np.asarray(model(tokens, training=False))


def _zero(weight, index=Ellipsis, scale=0.0):
    value = np.array(weight)
    value[index] *= scale
    weight.assign(value)


def _snapshot(model):
    return [layer.name for layer in model.layers], [np.array(w) for w in model.get_weights()]


def _assert_unchanged(model, snapshot):
    assert [layer.name for layer in model.layers] == snapshot[0]
    for old, new in zip(snapshot[1], model.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)


def _removed(model, kind):
    return {c["path"]: c["removed"] for c in model.structural_report.changes if c["kind"] == kind}


# --- exact parameter counts --------------------------------------------------------------


def _mha_head_params(mha):
    d, _, key_dim = mha._query_dense.kernel.shape
    value_dim = mha._value_dense.kernel.shape[2]
    qk = 2 * (d * key_dim + key_dim)  # query and key kernels + biases, one head
    v = d * value_dim + value_dim
    return qk + v + value_dim * mha._output_dense.kernel.shape[-1]


@pytest.mark.parametrize("settings", [dict(fraction=0.5), dict(num_heads=1)], ids=str)
def test_head_pruning_removes_exactly_the_heads_parameters(settings):
    model, tokens = _gpt(), _tokens()
    small = llm.prune_heads(model, tokens, num_samples=8, **settings)
    expected = 0
    for i in range(2):
        old, new = model.get_layer(f"block_{i}_attention"), small.get_layer(f"block_{i}_attention")
        assert (old.num_heads, new.num_heads) == (2, 1)
        assert new._query_dense.kernel.shape == (64, 1, 32)
        expected += (old.num_heads - new.num_heads) * _mha_head_params(old)
    assert expected == 2 * (3 * (64 * 32 + 32) + 32 * 64)  # the formula, spelled out once
    assert model.count_params() - small.count_params() == expected
    report = small.structural_report
    assert report.parameters_before - report.parameters_after == expected
    assert sorted(_removed(small, "heads")) == ["block_0_attention", "block_1_attention"]
    assert all(len(r) == 1 for r in _removed(small, "heads").values())
    assert _out(small, tokens).shape == (8, 16, 256)


def test_ffn_pruning_removes_exactly_the_channels_parameters():
    model, tokens = _gpt(), _tokens()
    small = llm.prune_ffn(model, tokens, intermediate_dim=100, num_samples=8)
    expected = 0
    for i in range(2):
        up, down = model.get_layer(f"block_{i}_mlp_up"), model.get_layer(f"block_{i}_mlp_down")
        d = up.kernel.shape[0]
        assert down.kernel.shape[1] == d
        per_channel = d + 1 + d  # up kernel column + up bias + down kernel row
        removed = up.units - small.get_layer(f"block_{i}_mlp_up").units
        assert removed == 156
        assert small.get_layer(f"block_{i}_mlp_down").kernel.shape == (100, d)
        expected += removed * per_channel
    assert model.count_params() - small.count_params() == expected
    assert {p: len(r) for p, r in _removed(small, "mlp").items()} == dict.fromkeys(
        ["block_0_mlp_down", "block_1_mlp_down"], 156
    )


def test_depth_pruning_removes_exactly_one_blocks_layers():
    model, tokens = _gpt(), _tokens()
    small = llm.prune_layers(model, tokens, num_layers=1, num_samples=8)
    (change,) = small.structural_report.changes
    (index,) = change["removed"]
    names = [f"block_{index}_{n}" for n in ("ln1", "attention", "ln2", "mlp_up", "mlp_down")]
    expected = sum(model.get_layer(n).count_params() for n in names)
    assert change["before"] == expected
    assert model.count_params() - small.count_params() == expected
    kept = {layer.name for layer in small.layers}
    assert not kept & set(names)
    assert {f"block_{1 - index}_attention", "lm_head", "final_ln"} <= kept
    assert _out(small, tokens).shape == (8, 16, 256)


# --- planted zero-importance structures --------------------------------------------------


@pytest.mark.backend_agnostic
@pytest.mark.parametrize("importance", ["activation", "taylor"])
def test_importance_removes_the_planted_heads_and_keeps_the_function(importance):
    model, tokens = _gpt(), _tokens(seed=1)
    planted = {"block_0_attention": 1, "block_1_attention": 0}
    for name, head in planted.items():  # the head's output-projection slice is zero
        _zero(model.get_layer(name)._output_dense.kernel, head)
    before = _out(model, tokens)
    small = llm.prune_heads(model, _tokens(seed=2), fraction=0.5, importance=importance)
    assert _removed(small, "heads") == {name: [head] for name, head in planted.items()}
    np.testing.assert_allclose(_out(small, tokens), before, atol=ATOL)
    only = llm.prune_heads(model, _tokens(seed=2), num_heads=1, targets="block_1*")
    assert _removed(only, "heads") == {"block_1_attention": [0]}
    assert only.get_layer("block_0_attention").num_heads == 2  # not targeted


def _plant_mlp(model, channels, full):
    for i, chosen in channels.items():
        _zero(model.get_layer(f"block_{i}_mlp_down").kernel, chosen)
        if full:  # also the up column and bias: the channel's weights are all zero
            up = model.get_layer(f"block_{i}_mlp_up")
            _zero(up.kernel, (slice(None), chosen))
            _zero(up.bias, chosen)


@pytest.mark.backend_agnostic
@pytest.mark.parametrize(
    "importance, full", [("activation", False), ("magnitude", True), ("taylor", True)]
)
def test_mlp_importance_removes_the_planted_channels_and_keeps_the_function(importance, full):
    model, tokens = _gpt(), _tokens(seed=1)
    rng = np.random.default_rng(3)
    channels = {i: sorted(rng.choice(256, 64, replace=False).tolist()) for i in range(2)}
    _plant_mlp(model, channels, full)
    before = _out(model, tokens)
    data = None if importance == "magnitude" else _tokens(seed=2)
    small = llm.prune_ffn(model, data, fraction=0.25, importance=importance, num_samples=8)
    assert _removed(small, "mlp") == {f"block_{i}_mlp_down": c for i, c in channels.items()}
    assert small.get_layer("block_0_mlp_up").units == 192
    np.testing.assert_allclose(_out(small, tokens), before, atol=ATOL)


def _deep_gpt(num_layers):
    import dataclasses

    keras.utils.set_random_seed(0)
    config = reference.GPTConfig.preset("tiny")
    return reference.build_gpt(dataclasses.replace(config, num_layers=num_layers))


@pytest.mark.backend_agnostic
@pytest.mark.parametrize("num_layers, planted", [(2, 0), (3, 1)])
def test_block_influence_removes_the_planted_identity_block(num_layers, planted):
    model, tokens = _deep_gpt(num_layers), _tokens(seed=1)
    out_dense = model.get_layer(f"block_{planted}_attention")._output_dense
    down = model.get_layer(f"block_{planted}_mlp_down")
    for weight in (out_dense.kernel, out_dense.bias, down.kernel, down.bias):
        _zero(weight)
    before = _out(model, tokens)
    small = llm.prune_layers(model, _tokens(seed=2), num_layers=1, importance="block_influence")
    assert [c["removed"] for c in small.structural_report.changes] == [[planted]]
    names = {layer.name for layer in small.layers}
    assert f"block_{planted}_attention" not in names
    assert len([n for n in names if n.endswith("_attention")]) == num_layers - 1
    np.testing.assert_allclose(_out(small, tokens), before, atol=ATOL)


def test_magnitude_depth_pruning_removes_the_weakest_blocks():
    model, tokens = _deep_gpt(3), _tokens()
    for name in ("block_0_attention", "block_0_mlp_up", "block_0_mlp_down", "block_2_mlp_up"):
        for weight in model.get_layer(name).weights:
            _zero(weight, scale=1e-2)
    small = llm.prune_layers(model, None, num_layers=2, importance="magnitude")
    assert sorted(c["removed"][0] for c in small.structural_report.changes) == [0, 2]
    assert [n for n in (layer.name for layer in small.layers) if n.endswith("_attention")] == [
        "block_1_attention"
    ]
    assert _out(small, tokens).shape == (8, 16, 256)
    record = small.structural_report.to_record()
    assert llm.StructuralReport.from_record(record) == small.structural_report
    assert "depth_pruning 2 block(s) by magnitude" in str(small.structural_report)


# --- grouped-query attention and a gated MLP --------------------------------------------


def _gqa_model(num_query_heads=4, num_kv_heads=2, head_dim=16, width=96, seed=0):
    keras.utils.set_random_seed(seed)
    layers = keras.layers
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    x = layers.Embedding(256, 64, name="embed")(tokens)
    for i in range(2):
        h = layers.LayerNormalization(name=f"b{i}_ln1")(x)
        h = layers.GroupQueryAttention(
            head_dim, num_query_heads, num_kv_heads, name=f"b{i}_attention"
        )(h, h, use_causal_mask=True)
        x = layers.Add(name=f"b{i}_add1")([x, h])
        h = layers.LayerNormalization(name=f"b{i}_ln2")(x)
        gate = layers.Dense(width, activation="silu", name=f"b{i}_gate")(h)
        up = layers.Dense(width, name=f"b{i}_up")(h)
        h = layers.Multiply(name=f"b{i}_mul")([gate, up])
        x = layers.Add(name=f"b{i}_add2")([x, layers.Dense(64, name=f"b{i}_down")(h)])
    logits = layers.Dense(256, name="head")(layers.LayerNormalization(name="ln")(x))
    return keras.Model(tokens, logits, name="gqa_lm")


@pytest.mark.backend_agnostic
@pytest.mark.parametrize("settings", [dict(fraction=0.5), dict(num_heads=2)], ids=str)
def test_gqa_heads_go_in_whole_groups_with_their_key_value_head(settings):
    model, tokens = _gqa_model(), _tokens(seed=1)
    # Heads 2 and 3 (group 1) write nothing in block 0; group 0 nothing in block 1.
    planted = {"b0_attention": [2, 3], "b1_attention": [0, 1]}
    for name, heads in planted.items():
        _zero(model.get_layer(name)._output_dense.kernel, heads)
    before = _out(model, tokens)
    small = llm.prune_heads(model, _tokens(seed=2), num_samples=8, **settings)
    assert _removed(small, "heads") == planted
    per_group = 0
    for name in planted:
        old, new = model.get_layer(name), small.get_layer(name)
        assert (new.num_query_heads, new.num_key_value_heads) == (2, 1)
        d, _, head_dim = old._query_dense.kernel.shape
        per_group = 2 * (d * head_dim + head_dim)  # two query heads
        per_group += 2 * (d * head_dim + head_dim)  # one key and one value head
        per_group += 2 * head_dim * d  # two heads' output-projection rows
    assert model.count_params() - small.count_params() == 2 * per_group
    np.testing.assert_allclose(_out(small, tokens), before, atol=ATOL)


def test_gqa_same_heads_per_group_keeps_every_key_value_head():
    model = _gqa_model(num_query_heads=6, num_kv_heads=2)
    small = llm.prune_heads(model, _tokens(), num_heads=4, num_samples=8)
    for name in ("b0_attention", "b1_attention"):
        layer = small.get_layer(name)
        assert (layer.num_query_heads, layer.num_key_value_heads) == (4, 2)
        removed = _removed(small, "heads")[name]
        assert len(removed) == 2 and {h // 3 for h in removed} == {0, 1}  # one per group
    assert _out(small, _tokens()).shape == (8, 16, 256)


@pytest.mark.parametrize(
    "settings, fragment",
    [
        (dict(num_heads=3), r"keep \[2, 4\].*num_heads=3"),
        (dict(num_heads=5), r"keep \[2, 4\].*num_heads=5"),
        (dict(fraction=0.25), r"leaves 3 heads.*breaks the grouping.*fraction=0.25"),
    ],
)
def test_a_head_count_that_breaks_the_grouping_is_refused_naming_the_layer(settings, fragment):
    model = _gqa_model()
    snapshot = _snapshot(model)
    with pytest.raises(ValueError, match=rf"'b0_attention' has 4 query heads.*{fragment}"):
        llm.prune_heads(model, _tokens(), num_samples=8, **settings)
    _assert_unchanged(model, snapshot)


def test_gated_mlp_channels_go_from_gate_up_and_down():
    model, tokens = _gqa_model(), _tokens(seed=1)
    found = llm.find_structures(model)
    ups = [sorted(u.name for u in m.ups) for m in found.mlps]
    assert ups == [["b0_gate", "b0_up"], ["b1_gate", "b1_up"]]
    rng = np.random.default_rng(0)
    chosen = {i: sorted(rng.choice(96, 48, replace=False).tolist()) for i in range(2)}
    for i, rows in chosen.items():
        _zero(model.get_layer(f"b{i}_down").kernel, rows)
    before = _out(model, tokens)
    small = llm.prune_ffn(model, _tokens(seed=2), fraction=0.5, num_samples=8)
    assert _removed(small, "mlp") == {f"b{i}_down": rows for i, rows in chosen.items()}
    for i in range(2):
        assert small.get_layer(f"b{i}_gate").units == small.get_layer(f"b{i}_up").units == 48
        assert small.get_layer(f"b{i}_down").kernel.shape == (48, 64)
    per_channel = 64 + 1 + 64 + 1 + 64  # gate and up columns + biases, down row
    assert model.count_params() - small.count_params() == 2 * 48 * per_channel
    np.testing.assert_allclose(_out(small, tokens), before, atol=ATOL)


# --- global allocation --------------------------------------------------------------------


def test_global_allocation_follows_importance_across_layers():
    model, tokens = _gpt(), _tokens(seed=1)
    weak = sorted(np.random.default_rng(5).choice(256, 192, replace=False).tolist())
    # Three quarters of block 0's channels barely matter.
    _zero(model.get_layer("block_0_mlp_down").kernel, weak, scale=1e-3)
    small = llm.prune_ffn(model, tokens, fraction=0.5, allocation="global", num_samples=8)
    removed = _removed(small, "mlp")
    assert len(removed["block_0_mlp_down"]) + len(removed["block_1_mlp_down"]) == 256
    assert set(weak) <= set(removed["block_0_mlp_down"])
    units = [small.get_layer(f"block_{i}_mlp_up").units for i in range(2)]
    assert units[0] < units[1] and sum(units) == 256, units
    uniform = llm.prune_ffn(model, tokens, fraction=0.5, num_samples=8)
    assert [uniform.get_layer(f"block_{i}_mlp_up").units for i in range(2)] == [128, 128]


def test_global_head_allocation_takes_the_weakest_heads_of_any_layer():
    import dataclasses

    keras.utils.set_random_seed(0)
    config = dataclasses.replace(reference.GPTConfig.preset("tiny"), num_heads=4)
    model, tokens = reference.build_gpt(config), _tokens(seed=1)
    # Three of block 0's four heads barely write anything.
    _zero(model.get_layer("block_0_attention")._output_dense.kernel, [0, 1, 3], scale=1e-3)
    small = llm.prune_heads(model, tokens, fraction=0.5, allocation="global", num_samples=8)
    removed = _removed(small, "heads")
    assert removed["block_0_attention"] == [0, 1, 3]
    assert len(removed["block_1_attention"]) == 1  # 4 of the 8 heads go in all
    assert small.get_layer("block_0_attention").num_heads == 1
    assert small.get_layer("block_1_attention").num_heads == 3
    per_head = _mha_head_params(model.get_layer("block_0_attention"))
    assert model.count_params() - small.count_params() == 4 * per_head


# --- Sequential and subclassed models ------------------------------------------------------


def _sequential():
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((None,), dtype="int32"),
            keras.layers.Embedding(256, 32, name="embed"),
            keras.layers.Dense(96, activation="relu", name="up"),
            keras.layers.Dense(32, name="down"),
            keras.layers.Dense(256, name="head"),
        ],
        name="seq_lm",
    )


def test_sequential_ffn_pruning_gives_a_smaller_sequential():
    model, tokens = _sequential(), _tokens(seed=1)
    _zero(model.get_layer("down").kernel, slice(0, 32))
    before = _out(model, tokens)
    small = llm.prune_ffn(model, _tokens(seed=2), intermediate_dim=64, num_samples=8)
    assert isinstance(small, keras.Sequential)
    assert [layer.name for layer in small.layers] == ["embed", "up", "down", "head"]
    assert small.get_layer("up").units == 64
    assert _removed(small, "mlp") == {"down": list(range(32))}
    assert model.count_params() - small.count_params() == 32 * (32 + 1 + 32)
    np.testing.assert_allclose(_out(small, tokens), before, atol=ATOL)


def test_depth_pruning_of_a_model_without_residual_blocks_is_refused():
    model = _sequential()
    with pytest.raises(ValueError, match=r"DepthPruning.*no residual block.*'seq_lm'"):
        llm.prune_layers(model, _tokens(), num_layers=1, num_samples=8)


def test_an_unregistered_subclassed_model_is_refused():
    from keras_llmopt._src.benchmark import matrix_models

    model = matrix_models.MODELS["subclassed"].build()
    with pytest.raises(ValueError, match="subclassed"):
        llm.prune_ffn(model, _tokens(), fraction=0.5, num_samples=8)
    with pytest.raises(ValueError, match="subclassed"):
        llm.find_structures(model)


# --- errors, and the user's model is never changed ------------------------------------------

_CONFIG_ERRORS = [
    (lambda: llm.HeadPruning(fraction=0), "fraction=0"),
    (lambda: llm.HeadPruning(fraction=1), "fraction=1"),
    (lambda: llm.FFNPruning(fraction=1.5), "fraction=1.5"),
    (lambda: llm.FFNPruning(fraction="x"), "fraction='x'"),
    (lambda: llm.FFNPruning(fraction=float("nan")), "fraction=nan"),
    (lambda: llm.HeadPruning(fraction=0.5, num_heads=1), "num_heads=1"),
    (lambda: llm.HeadPruning(), "exactly one of `fraction` and `num_heads`"),
    (lambda: llm.FFNPruning(0.5, intermediate_dim=8), "intermediate_dim=8"),
    (lambda: llm.HeadPruning(num_heads=0), "num_heads=0"),
    (lambda: llm.HeadPruning(num_heads=1.5), "num_heads=1.5"),
    (lambda: llm.HeadPruning(0.5, importance="bogus"), "importance='bogus'"),
    (lambda: llm.FFNPruning(0.5, allocation="random"), "allocation='random'"),
    (lambda: llm.HeadPruning(num_heads=1, allocation="global"), "num_heads=1"),
    (lambda: llm.DepthPruning(num_layers=0), "num_layers=0"),
    (lambda: llm.DepthPruning(1, importance="activation"), "importance='activation'"),
]


@pytest.mark.backend_agnostic
@pytest.mark.parametrize("make, fragment", _CONFIG_ERRORS, ids=[f for _, f in _CONFIG_ERRORS])
def test_bad_config_settings_name_the_argument(make, fragment):
    with pytest.raises(ValueError, match=re.escape(fragment)):
        make()


@pytest.mark.backend_agnostic
@pytest.mark.parametrize(
    "config",
    [
        llm.HeadPruning(num_heads=2, importance="taylor"),
        llm.FFNPruning(fraction=0.3, allocation="global", ignore=["block_0*"]),
        llm.DepthPruning(num_layers=2, importance="magnitude"),
    ],
    ids=lambda c: c.method,
)
def test_configs_round_trip_through_their_dicts(config):
    again = llm.config_from_dict(config.get_config())
    assert type(again) is type(config) and again.get_config() == config.get_config()
    assert again.kind == "structural"


_CALL_ERRORS = [
    (lambda m, d: llm.prune_heads(m, d, num_heads=3), r"'block_0_attention'.*num_heads=3"),
    (lambda m, d: llm.prune_layers(m, d, num_layers=2), r"2 blocks.*num_layers=2"),
    (lambda m, d: llm.prune_ffn(m, d, intermediate_dim=300), r"256 channels.*intermediate_dim=300"),
    (lambda m, d: llm.prune_ffn(m, None, fraction=0.5), r"calibration_data=None"),
    (lambda m, d: llm.prune_layers(m, None, num_layers=1), r"calibration_data=None"),
    (lambda m, d: llm.prune_ffn(m, d, fraction=0.5, targets="nothing*"), r"targets"),
    (lambda m, d: llm.prune_structures(m, d, "ffn"), r"config='ffn'"),
    (lambda m, d: llm.prune_structures(m, d, {"method": "wanda"}), r"method='wanda'"),
    (lambda m, d: llm.prune_heads(m, d, fraction=0.5, importance="bogus"), "importance='bogus'"),
]


@pytest.mark.parametrize("call, fragment", _CALL_ERRORS, ids=[f for _, f in _CALL_ERRORS])
def test_bad_requests_are_refused_and_leave_the_model_unchanged(call, fragment):
    model = _gpt()
    snapshot = _snapshot(model)
    with pytest.raises(ValueError, match=fragment):
        call(model, _tokens())
    _assert_unchanged(model, snapshot)


def test_a_successful_pruning_leaves_the_users_model_unchanged():
    model, tokens = _gpt(), _tokens()
    snapshot, before = _snapshot(model), _out(model, tokens)
    for prune in (
        lambda: llm.prune_heads(model, tokens, fraction=0.5, num_samples=8),
        lambda: llm.prune_ffn(model, tokens, fraction=0.5, importance="taylor", num_samples=8),
        lambda: llm.prune_layers(model, tokens, num_layers=1, num_samples=8),
    ):
        small = prune()
        assert small is not model and small.count_params() < model.count_params()
    _assert_unchanged(model, snapshot)
    assert model.get_layer("block_0_attention").num_heads == 2
    assert model.get_layer("block_0_mlp_up").units == 256
    assert not hasattr(model, "structural_report")
    np.testing.assert_array_equal(_out(model, tokens), before)


# --- saving, recovery, recipes --------------------------------------------------------------


def test_the_pruned_model_saves_and_reloads_with_plain_keras(tmp_path):
    model, tokens = _gpt(), _tokens()
    small = llm.prune_ffn(llm.prune_heads(model, tokens, num_heads=1), tokens, fraction=0.5)
    small = llm.prune_layers(small, tokens, num_layers=1)
    path = tmp_path / "small.keras"
    small.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.count_params() == small.count_params()
    assert {type(layer).__module__.split(".")[0] for layer in loaded.layers} == {"keras"}
    np.testing.assert_allclose(_out(loaded, tokens), _out(small, tokens), atol=1e-6)


def _mean_kl(teacher, student, tokens):
    from keras_llmopt._src.ensemble import distill

    loss = distill.distillation_loss(teacher(tokens), student(tokens), 2.0)
    return float(np.mean(np.asarray(loss)))


def test_recovery_by_distillation_lowers_the_distillation_loss(trained_tiny, tiny_corpus):
    windows = tiny_corpus.train[:32].astype("int32")
    tokens = windows[:, :-1]
    student = llm.prune_ffn(trained_tiny, tokens, fraction=0.75, num_samples=16)
    teacher_weights = [np.array(w) for w in trained_tiny.get_weights()]
    before = _mean_kl(trained_tiny, student, tokens)
    out = llm.recover(
        student, trained_tiny, windows, steps=8, batch_size=4, learning_rate=1e-3, verbose=0
    )
    assert out is student
    after = _mean_kl(trained_tiny, student, tokens)
    assert after < before, (before, after)
    assert len(student.recovery_history.history["loss"]) == 1
    for old, new in zip(teacher_weights, trained_tiny.get_weights()):
        np.testing.assert_array_equal(old, new)  # the teacher is frozen


def test_recovery_without_a_teacher_fine_tunes():
    model, windows = _gpt(), _tokens(n=8, length=17)
    student = llm.prune_ffn(model, windows[:, :-1], fraction=0.5, num_samples=8)
    before = [np.array(w) for w in student.get_weights()]
    llm.recover(student, None, windows, steps=3, batch_size=4, verbose=0)
    assert np.isfinite(student.recovery_history.history["loss"][0])
    changed = [not np.array_equal(a, b) for a, b in zip(before, student.get_weights())]
    assert all(changed), "every weight trains in a fine-tune"
    with pytest.raises(ValueError, match=r"steps=0"):
        llm.recover(student, None, windows, steps=0)
    with pytest.raises(ValueError, match=r"\(N, T \+ 1\)"):
        llm.recover(student, None, windows[:, :1], steps=1)


def test_oneshot_runs_structural_and_sparse_configs_in_order():
    model, tokens = _gpt(), _tokens(n=16)
    snapshot = _snapshot(model)
    out = llm.oneshot(model, tokens, [llm.HeadPruning(0.5), llm.Wanda(0.5)], num_samples=8)
    assert out.get_layer("block_0_attention").num_heads == 1
    assert [r.method for r in out.structural_reports] == ["head_pruning 50% by activation"]
    kernel = np.asarray(out.get_layer("block_0_mlp_up").kernel)
    assert (kernel == 0).mean() == pytest.approx(0.5, abs=0.01)
    _assert_unchanged(model, snapshot)
    with pytest.raises(ValueError, match="inplace"):
        llm.oneshot(model, tokens, [llm.FFNPruning(0.5)], inplace=True)


def test_structural_recipe_stage_prunes_and_recovers(tiny_corpus, tmp_path):
    from keras_llmopt import pipeline

    model = _gpt()
    stage = dict(method="ffn_pruning", fraction=0.5, num_samples=8, recover_steps=2)
    stage["recover_batch_size"] = 4
    recipe = {"stages": [{"structural": stage}, {"evaluate": {"windows": 2}}]}
    result = pipeline.run_recipe(
        recipe, model, tmp_path / "o", corpus=tiny_corpus, verbose=0, save_model=False
    )
    assert result.model.get_layer("block_0_mlp_up").units == 128
    assert result.model.count_params() < model.count_params()
    assert len(result.model.recovery_history.history["loss"]) == 1
    assert np.isfinite(result.evaluations[0]["bpb"])
    assert model.get_layer("block_0_mlp_up").units == 256


@pytest.mark.parametrize(
    "params, fragment",
    [
        ({"method": "ffn_pruning", "sparsity": 0.5}, r"key `sparsity`.*unknown key"),
        ({"method": "ffn_pruning", "fraction": 1.5}, r"key `fraction`"),
        ({"method": "shrink"}, r"key `method`"),
        ({"method": "head_pruning", "fraction": 0.5, "num_heads": 1}, r"exactly one of"),
        ({"method": "head_pruning", "num_heads": 1, "importance": "block_influence"}, "importance"),
        ({"method": "depth_pruning", "num_layers": 0}, r"key `num_layers`"),
    ],
)
def test_a_bad_structural_stage_fails_before_any_work(params, fragment, tmp_path):
    from keras_llmopt import pipeline

    with pytest.raises(ValueError, match=rf"stage 0 \(structural\).*{fragment}"):
        pipeline.run_recipe({"stages": [{"structural": params}]}, _gpt(), tmp_path / "o")
    assert not (tmp_path / "o").exists()
