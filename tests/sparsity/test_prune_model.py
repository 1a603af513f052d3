import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from keras import ops

from keras_llmopt import sparsity
from keras_llmopt._src.sparsity import masks as masks_lib
from keras_llmopt._src.sparsity.units import pruning_units

PRUNED = [
    f"block_{i}_{name}"
    for i in range(2)
    for name in (
        "attention/query",
        "attention/key",
        "attention/value",
        "attention/attention_output",
        "mlp_up",
        "mlp_down",
    )
]


def _schedule():
    return sparsity.PolynomialDecay(0.0, 0.5, begin_step=0, end_step=4, frequency=2)


def _data(n=32, length=16, seed=0):
    rows = np.random.RandomState(seed).randint(0, 256, (n, length + 1)).astype("int32")
    return rows[:, :-1], rows[:, 1:]


def _compile(model):
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def _masks(model):
    return {
        unit.weight_path(pw): ops.convert_to_numpy(pw.mask)
        for unit in pruning_units(model)
        for pw in unit.pruned
    }


@pytest.mark.backend_agnostic
def test_prune_gpt_targets_attention_and_mlp_not_head_and_leaves_model_alone(fresh_tiny):
    before = [ops.convert_to_numpy(w).copy() for w in fresh_tiny.weights]
    pruned = sparsity.prune_low_magnitude(fresh_tiny, _schedule())
    report = sparsity.pruning_report(pruned)
    assert report.selected_paths == PRUNED
    assert "token embedding" in report.reason("token_embedding").reason
    assert "output head" in report.reason("lm_head").reason
    assert {type(layer).__name__ for layer in fresh_tiny.layers}.isdisjoint({"PruneLowMagnitude"})
    for a, b in zip(before, fresh_tiny.weights):
        np.testing.assert_array_equal(a, ops.convert_to_numpy(b))
    x, _ = _data(2)
    np.testing.assert_allclose(
        pruned.predict(x, verbose=0), fresh_tiny.predict(x, verbose=0), atol=1e-6
    )


@pytest.mark.backend_agnostic
def test_fit_reaches_target_sparsity_and_strip_gives_plain_model(fresh_tiny, tmp_path):
    pruned = _compile(sparsity.prune_low_magnitude(fresh_tiny, _schedule()))
    x, y = _data(48)
    pruned.fit(x, y, batch_size=8, verbose=0, callbacks=[sparsity.UpdatePruningStep()])
    report = sparsity.sparsity_report(pruned)
    rows = [w for w in report.weights if w.pruned]
    assert len(rows) == len(PRUNED) and all(w.sparsity == 0.5 for w in rows)
    assert report.sparse_bytes < report.dense_bytes
    stripped = sparsity.strip_pruning(pruned)
    names = {type(layer).__name__ for layer in stripped.layers}
    assert "PruneLowMagnitude" not in names and "MultiHeadAttention" in names
    assert not any("mask" in v.path for v in stripped.weights)
    np.testing.assert_allclose(
        stripped.predict(x[:4], verbose=0), pruned.predict(x[:4], verbose=0), atol=1e-5
    )
    stripped_report = sparsity.sparsity_report(stripped)
    by_path = {w.path: w for w in stripped_report.weights}
    assert by_path["block_0_mlp_up/kernel"].sparsity == 0.5
    assert stripped_report.global_sparsity == pytest.approx(report.global_sparsity)


@pytest.mark.backend_agnostic
def test_save_load_mid_schedule_reaches_same_masks(fresh_tiny, tmp_path):
    x, y = _data(64)
    schedule = sparsity.PolynomialDecay(0.0, 0.5, begin_step=1, end_step=7, frequency=2)
    callbacks = [sparsity.UpdatePruningStep()]

    straight = _compile(sparsity.prune_low_magnitude(fresh_tiny, schedule))
    straight.fit(x, y, batch_size=8, shuffle=False, verbose=0, callbacks=callbacks)

    first = _compile(sparsity.prune_low_magnitude(fresh_tiny, schedule))
    first.fit(x[:32], y[:32], batch_size=8, shuffle=False, verbose=0, callbacks=callbacks)
    path = str(tmp_path / "mid.keras")
    first.save(path)
    weights_path = str(tmp_path / "mid.weights.h5")
    first.save_weights(weights_path)
    mid_masks = _masks(first)
    assert 0 < np.mean([1 - m.mean() for m in mid_masks.values()]) < 0.5

    resumed = keras.saving.load_model(path)
    assert int(ops.convert_to_numpy(resumed.optimizer.iterations)) == 4
    resumed.fit(x[32:], y[32:], batch_size=8, shuffle=False, verbose=0, callbacks=callbacks)

    restored = _compile(sparsity.prune_low_magnitude(fresh_tiny, schedule))
    restored.optimizer.build(restored.trainable_variables)
    restored.load_weights(weights_path)  # checkpoint: weights + optimizer + masks + step
    for key, value in _masks(restored).items():
        np.testing.assert_array_equal(value, mid_masks[key])
    restored.fit(x[32:], y[32:], batch_size=8, shuffle=False, verbose=0, callbacks=callbacks)

    expected = _masks(straight)
    for other in (resumed, restored):
        got = _masks(other)
        assert got.keys() == expected.keys()
        for key in expected:
            np.testing.assert_array_equal(got[key], expected[key], err_msg=key)


@pytest.mark.backend_agnostic
def test_without_callback_the_step_follows_training_steps(fresh_tiny):
    pruned = _compile(sparsity.prune_low_magnitude(fresh_tiny, _schedule()))
    x, y = _data(40)
    pruned.fit(x, y, batch_size=8, verbose=0)
    steps = {int(ops.convert_to_numpy(u.pruning_step)) for u in pruning_units(pruned)}
    assert steps == {int(ops.convert_to_numpy(pruned.optimizer.iterations)) - 1}
    assert all(m.mean() == 0.5 for m in _masks(pruned).values())


@pytest.mark.backend_agnostic
def test_two_four_sparsity_on_the_gpt(fresh_tiny):
    pruned = _compile(
        sparsity.prune_low_magnitude(
            fresh_tiny, sparsity.ConstantSparsity(0.5, 0, frequency=1), sparsity_m_by_n=(2, 4)
        )
    )
    x, y = _data(8)
    pruned.fit(x, y, batch_size=8, verbose=0, callbacks=[sparsity.UpdatePruningStep()])
    for unit in pruning_units(pruned):
        for pw in unit.pruned:
            spec = masks_lib.view_spec(pw.variable.shape, pw.input_axes)
            view = ops.convert_to_numpy(masks_lib.to_view(ops.convert_to_tensor(pw.mask), spec))
            groups = view.reshape(spec.rows, spec.cols // 4, 4).sum(-1)
            assert np.all(groups == 2), unit.weight_path(pw)


def test_custom_training_loop_with_callback_called_by_hand(fresh_tiny):
    import tensorflow as tf

    pruned = sparsity.prune_low_magnitude(fresh_tiny, _schedule())
    optimizer = keras.optimizers.Adam(1e-3)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    pruned.optimizer = optimizer
    callback = sparsity.UpdatePruningStep()
    callback.set_model(pruned)
    callback.on_train_begin()

    @tf.function
    def train_step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, pruned(x, training=True))
        grads = tape.gradient(loss, pruned.trainable_variables)
        optimizer.apply_gradients(zip(grads, pruned.trainable_variables))
        return loss

    x, y = _data(40)
    for i in range(5):
        callback.on_train_batch_begin(batch=-1)
        train_step(x[i * 8 : (i + 1) * 8], y[i * 8 : (i + 1) * 8])
    callback.on_epoch_end(batch=-1)
    assert all(m.mean() == 0.5 for m in _masks(pruned).values())


def test_stripped_gpt_loads_without_keras_llmopt(fresh_tiny, tmp_path):
    pruned = _compile(sparsity.prune_low_magnitude(fresh_tiny, _schedule()))
    x, y = _data(40)
    pruned.fit(x, y, batch_size=8, verbose=0, callbacks=[sparsity.UpdatePruningStep()])
    stripped = sparsity.strip_pruning(pruned)
    stripped.save(tmp_path / "stripped.keras")
    np.save(tmp_path / "x.npy", x[:2])
    np.save(tmp_path / "y.npy", stripped.predict(x[:2], verbose=0))
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["keras_llmopt"] = None  # any import of the package now fails
        import keras, numpy as np
        model = keras.saving.load_model(r"{tmp_path / "stripped.keras"}")
        out = model.predict(np.load(r"{tmp_path / "x.npy"}"), verbose=0)
        np.testing.assert_allclose(out, np.load(r"{tmp_path / "y.npy"}"), atol=1e-5)
        kernel = model.get_layer("block_0_mlp_up").kernel.numpy()
        assert (kernel == 0).mean() == 0.5, (kernel == 0).mean()
        print("OK")
        """
    )
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-2000:]


def test_pruning_summaries_write_events(fresh_tiny, tmp_path):
    pruned = _compile(sparsity.prune_low_magnitude(fresh_tiny, _schedule()))
    x, y = _data(16)
    log_dir = tmp_path / "logs"
    pruned.fit(
        x,
        y,
        batch_size=8,
        verbose=0,
        callbacks=[sparsity.UpdatePruningStep(), sparsity.PruningSummaries(str(log_dir))],
    )
    import tensorflow as tf

    tags = set()
    for event_file in log_dir.iterdir():
        for event in tf.compat.v1.train.summary_iterator(str(event_file)):
            tags.update(v.tag for v in event.summary.value)
    assert "block_0_attention/query/kernel/sparsity" in tags
    assert "block_1_mlp_down/kernel/threshold" in tags


@pytest.mark.backend_agnostic
def test_model_level_bad_inputs(fresh_tiny):
    with pytest.raises(TypeError, match="Received: to_prune='model'"):
        sparsity.prune_low_magnitude("model")
    with pytest.raises(ValueError, match="Received: block_size=\\(0, 1\\)"):
        sparsity.prune_low_magnitude(fresh_tiny, block_size=(0, 1))
    odd = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, name="odd")])
    with pytest.raises(ValueError, match="input dimension 6 of layer 'odd'"):
        sparsity.prune_low_magnitude(odd, sparsity_m_by_n=(2, 4))
    with pytest.raises(ValueError, match="is not built"):
        sparsity.prune_low_magnitude(keras.Sequential([keras.layers.Dense(2)]))
    with pytest.raises(ValueError, match="Nothing to prune"):
        sparsity.prune_low_magnitude(fresh_tiny, ignore=["*"])
    with pytest.raises(TypeError, match="Received: include_embeddings='yes'"):
        sparsity.prune_low_magnitude(fresh_tiny, include_embeddings="yes")
    with pytest.raises(TypeError, match="Received: pruning_schedule='x'"):
        sparsity.prune_low_magnitude(fresh_tiny, pruning_schedule="x")
    with pytest.raises(ValueError, match=r"match no layer.*Received: targets=\[.nomatch\*.\]"):
        sparsity.prune_low_magnitude(fresh_tiny, targets=["nomatch*"])
    with pytest.raises(TypeError, match="Received: model='m'"):
        sparsity.sparsity_report("m")
    with pytest.raises(TypeError, match="Received: model='m'"):
        sparsity.strip_pruning("m")

    class NoMlp(sparsity.PruningPolicy):
        def allow_pruning(self, layer, path=""):
            return "mlp" not in path

    pruned = sparsity.prune_low_magnitude(fresh_tiny, pruning_policy=NoMlp())
    assert "pruning_policy" in sparsity.pruning_report(pruned).reason("block_0_mlp_up").reason


def test_tfmot_schedule_object_prunes_the_gpt(fresh_tiny):
    import tensorflow_model_optimization as tfmot

    schedule = tfmot.sparsity.keras.ConstantSparsity(0.25, 0, frequency=1)
    pruned = _compile(sparsity.prune_low_magnitude(fresh_tiny, schedule))
    x, y = _data(8)
    pruned.fit(x, y, batch_size=8, verbose=0, callbacks=[sparsity.UpdatePruningStep()])
    assert all(m.mean() == 0.75 for m in _masks(pruned).values())
