"""The shared core: call hooks, one model copy, one save/load rule for any mix of states."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_llmopt import clustering, quantization, sparsity, techniques
from keras_llmopt._src.core import hooks, layer_state, model_copy, saving


def _tokens(rows=8, length=16, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (rows, length)).astype("int32")


def _loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _variables(model):
    return {v.path: ops.convert_to_numpy(v) for v in model.weights}


# --- hooks ---------------------------------------------------------------------------


@pytest.mark.backend_agnostic
def test_hook_restores_the_call_when_the_block_or_the_layer_raises():
    dense = keras.layers.Dense(2)
    dense.build((None, 3))
    with pytest.raises(RuntimeError, match="boom"):
        with hooks.capture_inputs([dense]) as seen:
            dense(ops.ones((1, 3)))
            raise RuntimeError("boom")
    assert "call" not in vars(dense) and len(seen[dense.name].calls) == 1

    def failing(original):
        def call(*args, **kwargs):
            raise ValueError("layer failed")

        return call

    with pytest.raises(ValueError, match="layer failed"):
        with hooks.intercept(dense, "call", failing):
            dense(ops.ones((1, 3)))
    assert "call" not in vars(dense)
    np.testing.assert_allclose(ops.convert_to_numpy(dense(ops.ones((1, 3)))).shape, (1, 2))
    with pytest.raises(AttributeError, match="no callable attribute 'nothing'"):
        with hooks.intercept(dense, "nothing", failing):
            pass


@pytest.mark.backend_agnostic
def test_hook_on_a_patched_layer_wraps_its_interceptor_and_gives_it_back(fresh_tiny):
    pruned = sparsity.prune_low_magnitude(fresh_tiny, sparsity.ConstantSparsity(0.5, 0))
    up = pruned.get_layer("block_0_mlp_up")
    interceptor = vars(up)["call"]
    shapes = []
    with hooks.capture_inputs({"up": up}, on_call=lambda p, a, k: shapes.append(a[0].shape)):
        pruned(_tokens(2))
    assert shapes and tuple(shapes[0])[-1] == up.kernel.shape[0]
    assert vars(up)["call"] is interceptor


# --- copy ------------------------------------------------------------------------------


def _unregistered_lm():
    # Classes defined here are never registered with register_keras_serializable.
    class Gate(keras.layers.Layer):
        def __init__(self, dim, **kwargs):
            super().__init__(**kwargs)
            self.dim = dim
            self.up = keras.layers.Dense(dim * 2, name="up")
            self.gate = keras.layers.Dense(dim * 2, activation="silu", name="gate")
            self.down = keras.layers.Dense(dim, name="down")

        def call(self, x):
            return x + self.down(self.up(x) * self.gate(x))

    class Block(keras.layers.Layer):
        def __init__(self, dim, **kwargs):
            super().__init__(**kwargs)
            self.norm = keras.layers.LayerNormalization(name="norm")
            self.mlp = Gate(dim, name="mlp")

        def call(self, x):
            return self.mlp(self.norm(x))

    class UnregisteredLM(keras.Model):
        def __init__(self, vocab=256, dim=16, **kwargs):
            super().__init__(**kwargs)
            self.embed = keras.layers.Embedding(vocab, dim, name="token_embedding")
            self.blocks = [Block(dim, name=f"block_{i}") for i in range(2)]
            self.head = keras.layers.Dense(vocab, name="lm_head")

        def call(self, tokens, training=None):
            x = self.embed(tokens)
            for block in self.blocks:
                x = block(x)
            return self.head(x)

    keras.utils.set_random_seed(0)
    model = UnregisteredLM()
    model(_tokens(2))
    return model, Gate


@pytest.mark.backend_agnostic
def test_copy_of_an_unregistered_subclassed_model_with_nested_custom_layers():
    model, gate_class = _unregistered_lm()
    before = _variables(model)
    twin = model_copy.copy_model(model)
    assert twin is not model and type(twin) is type(model)
    assert type(twin.blocks[1].mlp) is gate_class
    x = _tokens(4)
    np.testing.assert_allclose(ops.convert_to_numpy(twin(x)), ops.convert_to_numpy(model(x)))
    kernel = twin.blocks[0].mlp.up.kernel
    kernel.assign(np.zeros(tuple(kernel.shape), "float32"))
    for path, value in _variables(model).items():
        np.testing.assert_array_equal(value, before[path])  # independent of the copy

    pruned = sparsity.prune_low_magnitude(model, sparsity.ConstantSparsity(0.5, 0))
    assert "block_1/mlp/gate" in pruned.pruning_report.selected_paths
    assert not layer_state.find_states(model)  # the user's model stays plain


def test_copy_error_names_what_to_add():
    class Opaque(keras.layers.Layer):
        def __init__(self, table, **kwargs):  # an object Keras cannot serialize
            super().__init__(**kwargs)
            self.table = table

        def call(self, x):
            return x

    inputs = keras.Input((2,))
    model = keras.Model(inputs, Opaque(object())(inputs))
    with pytest.raises(ValueError, match="get_config"):
        model_copy.copy_model(model, "pruning")


def test_copy_of_a_compiled_kerashub_task_keeps_its_compile_and_optimizer_state():
    # KerasHub tasks override compile(), which Keras's loading (and so a plain deepcopy)
    # skips: the copy would get the task's default compile (Adam 2e-5, top-k sampler).
    keras_hub = pytest.importorskip("keras_hub")
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=256,
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        intermediate_dim=64,
        max_sequence_length=16,
    )
    lm = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    lm.compile(optimizer=keras.optimizers.SGD(0.125, momentum=0.9), loss=_loss(), sampler="greedy")
    lm.optimizer.build(lm.trainable_variables)  # as after training: moments and a step
    rng = np.random.default_rng(0)
    for variable in lm.optimizer.variables:
        variable.assign(rng.integers(1, 5, tuple(variable.shape)).astype(variable.dtype))
    lm.optimizer.iterations.assign(2)
    twin = model_copy.copy_model(lm)
    assert isinstance(twin.sampler, keras_hub.samplers.GreedySampler)
    assert type(twin.optimizer).__name__ == "SGD"
    assert twin.optimizer.get_config()["momentum"] == pytest.approx(0.9)
    assert int(ops.convert_to_numpy(twin.optimizer.iterations)) == 2
    for old, new in zip(lm.optimizer.variables, twin.optimizer.variables):
        np.testing.assert_array_equal(ops.convert_to_numpy(old), ops.convert_to_numpy(new))
    uncompiled_copy = model_copy.copy_model(lm, compiled=False)
    assert isinstance(uncompiled_copy.sampler, keras_hub.samplers.GreedySampler)


# --- one save/load rule ------------------------------------------------------------------


def _compile(model, lr=1e-3):
    model.compile(optimizer=keras.optimizers.Adam(lr), loss=_loss())
    return model


@pytest.mark.backend_agnostic
def test_pruned_and_quantized_in_place_saves_loads_and_resumes_identically(fresh_tiny, tmp_path):
    x = _tokens(32)
    y = np.roll(x, -1, axis=1)
    schedule = sparsity.PolynomialDecay(0.0, 0.5, begin_step=0, end_step=6, frequency=2)
    qat = quantization.quantize_model(fresh_tiny)
    both = _compile(sparsity.prune_low_magnitude(qat, schedule))
    up = both.get_layer("block_0_mlp_up")
    assert [s.technique for s in layer_state.states_of(up)] == ["pruning", "quantization"]
    callbacks = [sparsity.UpdatePruningStep()]
    both.fit(x[:16], y[:16], batch_size=4, shuffle=False, verbose=0, callbacks=callbacks)

    path = tmp_path / "pruned_qat.keras"
    both.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded).__name__ == type(fresh_tiny).__name__
    assert [s.technique for s in layer_state.states_of(loaded.get_layer("block_0_mlp_up"))] == [
        "pruning",
        "quantization",
    ]
    saved = _variables(both)
    for name, value in _variables(loaded).items():
        np.testing.assert_array_equal(value, saved[name], err_msg=name)
    np.testing.assert_allclose(
        ops.convert_to_numpy(loaded(x[:4])), ops.convert_to_numpy(both(x[:4])), atol=1e-6
    )

    # Resuming: both continue the schedule and the learned ranges the same way.
    both.fit(x[16:], y[16:], batch_size=4, shuffle=False, verbose=0, callbacks=callbacks)
    loaded.fit(x[16:], y[16:], batch_size=4, shuffle=False, verbose=0, callbacks=callbacks)
    resumed, straight = _variables(loaded), _variables(both)
    for name, value in straight.items():
        np.testing.assert_allclose(resumed[name], value, atol=1e-6, err_msg=name)
    report = sparsity.sparsity_report(loaded)
    assert all(w.sparsity == 0.5 for w in report.weights if w.pruned)

    # Stripping any mix gives plain Keras layers.
    only_qat = sparsity.strip_pruning(loaded)
    assert {s.technique for _, s in layer_state.find_states(only_qat)} == {"quantization"}
    plain = quantization.strip_quantization(only_qat)
    assert not layer_state.find_states(plain) and not saving.is_patched(plain)
    kernel = ops.convert_to_numpy(plain.get_layer("block_0_mlp_up").kernel)
    assert np.mean(kernel == 0) >= 0.5
    np.testing.assert_allclose(
        ops.convert_to_numpy(plain(x[:4])),
        ops.convert_to_numpy(techniques.strip_techniques(loaded)(x[:4])),
        atol=1e-5,
    )


@pytest.mark.backend_agnostic
def test_clustered_model_saves_loads_and_keeps_training(fresh_tiny, tmp_path):
    x = _tokens(16)
    y = np.roll(x, -1, axis=1)
    clustered = _compile(clustering.cluster_weights(fresh_tiny, 8))
    clustered.fit(x, y, batch_size=8, verbose=0)
    clustered.save(tmp_path / "clustered.keras")
    loaded = keras.saving.load_model(tmp_path / "clustered.keras")
    np.testing.assert_allclose(
        ops.convert_to_numpy(loaded(x[:2])), ops.convert_to_numpy(clustered(x[:2])), atol=1e-6
    )
    assert loaded.clustering_report.selected_paths == clustered.clustering_report.selected_paths
    clustered.fit(x, y, batch_size=8, shuffle=False, verbose=0)
    loaded.fit(x, y, batch_size=8, shuffle=False, verbose=0)
    straight = _variables(clustered)
    for name, value in _variables(loaded).items():
        np.testing.assert_allclose(value, straight[name], atol=1e-6, err_msg=name)
    plain = clustering.strip_clustering(loaded)
    kernel = ops.convert_to_numpy(plain.get_layer("block_0_mlp_up").kernel)
    assert len(np.unique(kernel)) <= 8 and not layer_state.find_states(plain)


@pytest.mark.backend_agnostic
def test_a_second_state_of_one_technique_is_refused_with_the_layer_named(fresh_tiny):
    pruned = sparsity.prune_low_magnitude(fresh_tiny, sparsity.ConstantSparsity(0.5, 0))
    with pytest.raises(ValueError, match="already carries 'pruning'; strip it first"):
        sparsity.prune_low_magnitude(pruned, sparsity.ConstantSparsity(0.5, 0))


@pytest.mark.backend_agnostic
def test_one_weight_registration_serves_pruning_and_quantization():
    from keras_llmopt._src.core import layer_tree

    class Projection(keras.layers.Layer):  # a custom layer, registered once in the core
        def build(self, shape):
            self.w = self.add_weight(shape=(shape[-1], 8), name="w")

        def call(self, x):
            return x @ self.w

    layer_tree.register_weights(Projection, ["w"])
    inputs = keras.Input((16,))
    outputs = keras.layers.Dense(4, name="lm_head")(Projection(name="proj")(inputs))
    model = keras.Model(inputs, outputs)
    pruned = sparsity.prune_low_magnitude(model, sparsity.ConstantSparsity(0.5, 0))
    assert pruned.pruning_report.selected_paths == ["proj"]
    qat = quantization.quantize_model(model, targets=["proj"])
    assert qat.quantize_report.selected_paths == ["proj"]
    assert qat.quantize_report.reason("lm_head") == "not matched by `targets`"
    with pytest.raises(ValueError, match=r"`targets` patterns \['nope'\] match no layer"):
        quantization.quantize_model(model, targets=["proj", "nope"])
