import keras
import numpy as np
import pytest
from keras import ops

from keras_llmopt import sparsity
from keras_llmopt._src.sparsity.units import pruning_units

SCHEDULE = sparsity.ConstantSparsity(0.5, 0, frequency=1)


@keras.saving.register_keras_serializable(package="test_sparsity")
class Mlp(keras.layers.Layer):
    def __init__(self, dim, **kwargs):
        super().__init__(**kwargs)
        self.dim = dim
        self.up = keras.layers.Dense(dim * 2, activation="relu", name="up")
        self.down = keras.layers.Dense(dim, name="down")

    def call(self, x):
        return x + self.down(self.up(x))

    def get_config(self):
        return {**super().get_config(), "dim": self.dim}


@keras.saving.register_keras_serializable(package="test_sparsity")
class Block(keras.layers.Layer):
    def __init__(self, dim, **kwargs):
        super().__init__(**kwargs)
        self.dim = dim
        self.attention = keras.layers.MultiHeadAttention(2, dim // 2, name="attention")
        self.mlp = Mlp(dim, name="mlp")

    def call(self, x, training=None):
        return self.mlp(x + self.attention(x, x, use_causal_mask=True, training=training))

    def get_config(self):
        return {**super().get_config(), "dim": self.dim}


@keras.saving.register_keras_serializable(package="test_sparsity")
class TinyLM(keras.Model):
    def __init__(self, vocab=64, dim=16, **kwargs):
        super().__init__(**kwargs)
        self.vocab, self.dim = vocab, dim
        self.embed = keras.layers.Embedding(vocab, dim, name="token_embedding")
        self.blocks = [Block(dim, name=f"block_{i}") for i in range(2)]
        self.head = keras.layers.Dense(vocab, name="lm_head")

    def call(self, tokens, training=None):
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x, training=training)
        return self.head(x)

    def get_config(self):
        return {"vocab": self.vocab, "dim": self.dim, "name": self.name}


def _fit(model, x, y, steps=2):
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x, y, batch_size=len(y) // steps, verbose=0, callbacks=[sparsity.UpdatePruningStep()])


def _check_half_sparse(model, expected_count):
    report = sparsity.sparsity_report(model)
    pruned = [w for w in report.weights if w.pruned]
    assert len(pruned) == expected_count
    assert all(w.sparsity == 0.5 for w in pruned), [(w.path, w.sparsity) for w in pruned]


@pytest.mark.backend_agnostic
def test_subclassed_model_with_nested_custom_layers(tmp_path):
    keras.utils.set_random_seed(0)
    model = TinyLM()
    tokens = np.random.RandomState(0).randint(0, 64, (8, 10)).astype("int32")
    model(tokens)
    pruned = sparsity.prune_low_magnitude(model, SCHEDULE)
    report = sparsity.pruning_report(pruned)
    assert "block_0/attention/query" in report.selected_paths
    assert "block_1/mlp/down" in report.selected_paths
    assert "output head" in report.reason("lm_head").reason
    assert isinstance(pruned, TinyLM) and type(pruned).__name__ == "TinyLM"
    assert "call" not in vars(model.blocks[0].mlp.up)
    _fit(pruned, tokens, np.roll(tokens, -1, axis=1))
    _check_half_sparse(pruned, 12)
    assert sparsity.sparsity_report(model).global_sparsity == 0.0  # the user's model

    pruned.save(tmp_path / "p.keras")  # masks and step saved with the model
    loaded = keras.saving.load_model(tmp_path / "p.keras")
    np.testing.assert_allclose(
        loaded.predict(tokens, verbose=0), pruned.predict(tokens, verbose=0), atol=1e-5
    )
    _check_half_sparse(loaded, 12)
    pruned.save_weights(tmp_path / "p.weights.h5")
    again = sparsity.prune_low_magnitude(model, SCHEDULE)
    again.load_weights(tmp_path / "p.weights.h5")
    np.testing.assert_allclose(
        again.predict(tokens, verbose=0), pruned.predict(tokens, verbose=0), atol=1e-5
    )

    stripped = sparsity.strip_pruning(pruned)
    assert not pruning_units(stripped) and "call" not in vars(stripped.blocks[0].mlp.up)
    np.testing.assert_allclose(
        stripped.predict(tokens, verbose=0), pruned.predict(tokens, verbose=0), atol=1e-5
    )
    assert pruning_units(pruned)  # strip left the pruned model as it was
    stripped.save(tmp_path / "s.keras")
    loaded = keras.saving.load_model(tmp_path / "s.keras")
    np.testing.assert_allclose(
        loaded.predict(tokens, verbose=0), stripped.predict(tokens, verbose=0), atol=1e-5
    )


def _hub_models():
    import keras_hub

    common = dict(vocabulary_size=96, num_layers=2, hidden_dim=32, intermediate_dim=64)
    return {
        "gpt2": lambda: keras_hub.models.GPT2CausalLM(
            keras_hub.models.GPT2Backbone(num_heads=2, max_sequence_length=16, **common),
            preprocessor=None,
        ),
        "llama": lambda: keras_hub.models.LlamaCausalLM(
            keras_hub.models.LlamaBackbone(num_query_heads=2, num_key_value_heads=1, **common),
            preprocessor=None,
        ),
        "gemma": lambda: keras_hub.models.GemmaCausalLM(
            keras_hub.models.GemmaBackbone(
                num_query_heads=2, num_key_value_heads=1, head_dim=16, **common
            ),
            preprocessor=None,
        ),
    }


@pytest.mark.backend_agnostic
@pytest.mark.parametrize("name, expected", [("gpt2", 12), ("llama", 14), ("gemma", 14)])
def test_keras_hub_causal_lms_from_config(name, expected):
    keras.utils.set_random_seed(0)
    lm = _hub_models()[name]()
    pruned = sparsity.prune_low_magnitude(lm, SCHEDULE)
    report = sparsity.pruning_report(pruned)
    assert any(p.endswith("query") or "query" in p for p in report.selected_paths)
    assert "token embedding" in report.skipped[0].reason
    rng = np.random.RandomState(0)
    x = {
        "token_ids": rng.randint(0, 96, (4, 8)).astype("int32"),
        "padding_mask": np.ones((4, 8), "int32"),
    }
    y = rng.randint(0, 96, (4, 8)).astype("int32")
    _fit(pruned, x, y)
    _check_half_sparse(pruned, expected)
    stripped = sparsity.strip_pruning(pruned)
    np.testing.assert_allclose(
        ops.convert_to_numpy(stripped(x)), ops.convert_to_numpy(pruned(x)), atol=1e-4
    )
    assert not pruning_units(stripped)
