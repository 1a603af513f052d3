"""Benchmark pruning on the reference GPT: step-time ratio and bpb, ours vs tfmot.

In one run:
* training step time pruned / dense for keras_llmopt (attention q/k/v/o + MLP pruned),
* the same ratio for tfmot on a tf_keras twin of the model (Dense MLP layers only:
  tfmot cannot wrap attention layers), measured as medians of timed segments after
  warm-up,
* validation bpb after a pruned fine-tune (PolynomialDecay 0 -> 50%) vs a dense
  fine-tune of the same steps.

    python scripts/benchmark_pruning.py --preset=small --steps=300
"""

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

PRESET = flags.DEFINE_string("preset", "small", "Reference GPT preset.")
STEPS = flags.DEFINE_integer("steps", 300, "Fine-tuning steps for the bpb comparison.")
TIME_STEPS = flags.DEFINE_integer("time_steps", 60, "Timed training steps per segment.")
SEGMENTS = flags.DEFINE_integer("segments", 5, "Timed segments (median is reported).")
BATCH = flags.DEFINE_integer("batch_size", 16, "Batch size.")


def _median_step_time(fit_segment, segments, steps):
    fit_segment(steps)  # warm-up (compile)
    times = []
    for _ in range(segments):
        start = time.perf_counter()
        fit_segment(steps)
        times.append((time.perf_counter() - start) / steps)
    return float(np.median(times))


def _ours(config, base, x, y, segments, steps):
    import keras

    from keras_llmopt import reference, sparsity
    from keras_llmopt._src.sparsity.prune import copy_model

    def timer(model, callbacks):
        model.compile(optimizer=keras.optimizers.AdamW(1e-4), loss=reference.lm_loss())
        batch = BATCH.value

        def fit_segment(n):
            model.fit(
                x[: n * batch],
                y[: n * batch],
                batch_size=batch,
                epochs=1,
                shuffle=False,
                verbose=0,
                callbacks=callbacks,
            )

        return _median_step_time(fit_segment, segments, steps)

    schedule = sparsity.PolynomialDecay(0.0, 0.5, 0, 10 * steps, frequency=100)
    dense_t = timer(copy_model(base), [])
    pruned_t = timer(sparsity.prune_low_magnitude(base, schedule), [sparsity.UpdatePruningStep()])
    return dense_t, pruned_t


def _tf_keras_twin(config):
    import tensorflow as tf
    import tf_keras

    layers = tf_keras.layers
    tokens = tf_keras.Input((None,), dtype="int32", name="tokens")
    x = layers.Embedding(config.vocab_size, config.d_model, name="token_embedding")(tokens)
    positions = layers.Lambda(lambda t: tf.cumsum(tf.ones_like(t), axis=1) - 1)(tokens)
    x = x + layers.Embedding(config.sequence_length, config.d_model)(positions)
    for i in range(config.num_layers):
        h = layers.LayerNormalization(name=f"block_{i}_ln1")(x)
        h = layers.MultiHeadAttention(
            config.num_heads, config.head_dim, name=f"block_{i}_attention"
        )(h, h, use_causal_mask=True)
        x = x + h
        h = layers.LayerNormalization(name=f"block_{i}_ln2")(x)
        h = layers.Dense(config.mlp_dim, activation="gelu", name=f"block_{i}_mlp_up")(h)
        x = x + layers.Dense(config.d_model, name=f"block_{i}_mlp_down")(h)
    x = layers.LayerNormalization(name="final_ln")(x)
    return tf_keras.Model(tokens, layers.Dense(config.vocab_size, name="lm_head")(x))


def _tfmot(config, x, y, segments, steps):
    import tensorflow_model_optimization as tfmot
    import tf_keras

    prune = tfmot.sparsity.keras

    def timer(model, callbacks):
        model.compile(
            optimizer=tf_keras.optimizers.Adam(1e-4),
            loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        batch = BATCH.value

        def fit_segment(n):
            model.fit(
                x[: n * batch],
                y[: n * batch],
                batch_size=batch,
                epochs=1,
                shuffle=False,
                verbose=0,
                callbacks=callbacks,
            )

        return _median_step_time(fit_segment, segments, steps)

    dense_t = timer(_tf_keras_twin(config), [])
    schedule = prune.PolynomialDecay(0.0, 0.5, 0, 10 * steps, frequency=100)

    def wrap(layer):
        if isinstance(layer, tf_keras.layers.Dense) and "mlp" in layer.name:
            return prune.prune_low_magnitude(layer, pruning_schedule=schedule)
        return layer

    twin = _tf_keras_twin(config)
    pruned = tf_keras.models.clone_model(twin, clone_function=wrap)
    pruned_t = timer(pruned, [prune.UpdatePruningStep()])
    return dense_t, pruned_t


def _bpb(preset, corpus, base, steps):
    from keras_llmopt import reference, sparsity
    from keras_llmopt._src.sparsity.prune import copy_model

    before = reference.evaluate(base, corpus).bpb
    end_step = max(1, int(steps * 0.7))
    schedule = sparsity.PolynomialDecay(0.0, 0.5, 0, end_step, frequency=max(1, end_step // 10))
    pruned = sparsity.prune_low_magnitude(base, schedule)
    reference.train(
        pruned,
        corpus,
        steps,
        learning_rate=5e-4,
        callbacks=[sparsity.UpdatePruningStep()],
        verbose=2,
    )
    after = reference.evaluate(sparsity.strip_pruning(pruned), corpus).bpb
    dense = copy_model(base)
    reference.train(dense, corpus, steps, learning_rate=5e-4, verbose=2)
    return {"before": before, "pruned": after, "dense": reference.evaluate(dense, corpus).bpb}


def main(argv):
    del argv
    from keras_llmopt import reference

    config = reference.GPTConfig.preset(PRESET.value)
    corpus = reference.load_corpus(config.sequence_length)
    base = reference.trained_model(PRESET.value, corpus=corpus)
    n = TIME_STEPS.value * BATCH.value
    x, y = reference.make_batches(corpus.train, BATCH.value, TIME_STEPS.value, seed=1)
    x, y = x[:n], y[:n]

    dense_t, pruned_t = _ours(config, base, x, y, SEGMENTS.value, TIME_STEPS.value)
    print(
        f"keras_llmopt step time: dense {dense_t * 1e3:.2f} ms, pruned {pruned_t * 1e3:.2f} ms,"
        f" ratio {pruned_t / dense_t:.3f} (attention q/k/v/o + MLP pruned)"
    )
    try:
        t_dense, t_pruned = _tfmot(config, x, y, SEGMENTS.value, TIME_STEPS.value)
        print(
            f"tfmot (tf_keras twin, MLP Dense only) step time: dense {t_dense * 1e3:.2f} ms, "
            f"pruned {t_pruned * 1e3:.2f} ms, ratio {t_pruned / t_dense:.3f}"
        )
    except Exception as error:  # report what tfmot cannot do instead of stopping
        print(f"tfmot twin failed: {type(error).__name__}: {error}")

    result = _bpb(PRESET.value, corpus, base, STEPS.value)
    print(
        f"bpb: before {result['before']:.4f}, pruned 50% {result['pruned']:.4f}, "
        f"matched dense {result['dense']:.4f}, delta {result['pruned'] - result['dense']:+.4f}"
    )


if __name__ == "__main__":
    app.run(main)
