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
    from keras_llmopt import quantization
    from keras_llmopt._src.quantization import state as state_lib

    def build():
        keras.utils.set_random_seed(0)
        inputs = keras.Input((6, 8))
        h = keras.layers.MultiHeadAttention(2, 4, name="attn")(inputs, inputs,
                                                               use_causal_mask=True)
        h = keras.layers.Dense(16, activation="relu", name="up")(h)
        outputs = keras.layers.Dense(8, name="down")(h)
        return keras.Model(inputs, outputs)

    def run(strategy):
        base = build()
        with strategy.scope():
            q = quantization.quantize_model(base)
            q.compile(keras.optimizers.SGD(0.05), "mse")
        rng = np.random.RandomState(0)
        x = rng.randn(32, 6, 8).astype("float32")
        y = rng.randn(32, 6, 8).astype("float32")
        q.fit(x, y, batch_size=8, shuffle=False, verbose=0)
        return {f"{p}:{n}": [float(qq.observer.min.numpy()), float(qq.observer.max.numpy())]
                for p, s in state_lib.states(q) for n, qq in s.activation_quantizers()}

    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert mirrored.num_replicas_in_sync == 2
    ranges = run(mirrored)
    assert "attn:attention:scores" in ranges, sorted(ranges)
    assert "up:activation:activation" in ranges, sorted(ranges)
    for key, (lo, hi) in ranges.items():
        assert np.isfinite(lo) and np.isfinite(hi) and (lo, hi) != (-6.0, 6.0), (key, lo, hi)
    print("RANGES LEARNED")
    """
)


def test_qat_fit_under_mirrored_strategy_with_two_cpus():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0 and "RANGES LEARNED" in result.stdout, result.stderr[-3000:]
