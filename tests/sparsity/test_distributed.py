import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import os
    os.environ["KERAS_BACKEND"] = "tensorflow"
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras, numpy as np
    from keras_llmopt import sparsity
    from keras_llmopt._src.sparsity.units import pruning_units

    def build():
        keras.utils.set_random_seed(0)
        inputs = keras.Input((6, 8))
        h = keras.layers.MultiHeadAttention(2, 4, name="attn")(inputs, inputs)
        h = keras.layers.Dense(16, activation="relu", name="up")(h)
        outputs = keras.layers.Dense(8, name="down")(h)
        return keras.Model(inputs, outputs)

    def run(strategy):
        base = build()
        with strategy.scope():
            pruned = sparsity.prune_low_magnitude(
                base, sparsity.PolynomialDecay(0.0, 0.5, 0, 4, frequency=2),
                targets=["attn/*", "up", "down"])
            pruned.compile(keras.optimizers.SGD(0.05), "mse")
        rng = np.random.RandomState(0)
        x = rng.randn(48, 6, 8).astype("float32")
        y = rng.randn(48, 6, 8).astype("float32")
        pruned.fit(x, y, batch_size=8, shuffle=False, verbose=0,
                   callbacks=[sparsity.UpdatePruningStep()])
        return {u.weight_path(pw): pw.mask.numpy() for u in pruning_units(pruned)
                for pw in u.pruned}

    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert mirrored.num_replicas_in_sync == 2
    a = run(mirrored)
    b = run(tf.distribute.get_strategy())
    assert a.keys() == b.keys() and len(a) == 6, sorted(a)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        assert a[key].mean() == 0.5, (key, a[key].mean())
    print("SAME MASKS")
    """
)


def test_mirrored_strategy_two_cpus_same_masks_as_single_device():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0 and "SAME MASKS" in result.stdout, result.stderr[-3000:]
