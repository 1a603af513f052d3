"""Benchmark pruning on the reference GPT: step-time ratio and bpb, ours vs tfmot.

In one run:
* training step time pruned / dense for keras_llmopt (attention q/k/v/o + MLP pruned,
  and MLP only for a like-for-like row),
* the same ratio for tfmot on a tf_keras twin of the model (Dense MLP layers only:
  tfmot cannot wrap attention layers),
  each the median of timed segments after warm-up, the variants timed in alternation so
  that load from other processes falls on all of them alike; printed for wall time and
  for the process's CPU time (all threads), which load from other processes inflates
  far less (on a shared machine, read the CPU ratio),
* validation bpb after a pruned fine-tune (PolynomialDecay 0 -> 50%) vs a dense
  fine-tune of the same steps.

    python scripts/benchmark_pruning.py --preset=small --steps=600
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags  # noqa: E402

from keras_llmopt import benchmark  # noqa: E402

PRESET = flags.DEFINE_string("preset", "small", "Reference GPT preset.")
STEPS = flags.DEFINE_integer("steps", 600, "Fine-tuning steps for the bpb comparison.")
LR = flags.DEFINE_float("learning_rate", 1e-3, "Fine-tuning peak learning rate (both runs).")
TIME_STEPS = flags.DEFINE_integer("time_steps", 60, "Timed training steps per segment.")
SEGMENTS = flags.DEFINE_integer("segments", 5, "Timed segments (median is reported).")
BATCH = flags.DEFINE_integer("batch_size", 16, "Batch size.")
BPB = flags.DEFINE_bool("bpb", True, "Also fine-tune pruned vs dense and report bpb.")
TFMOT = flags.DEFINE_bool("tfmot", True, "Also time tfmot on the tf_keras twin.")


def _ratio_line(times, name, base="dense"):
    """One variant's wall and CPU step times and ratios, with the per-segment CPU spread."""
    t, b = times[name], times[base]
    spread = [c / bc for (_, c), (_, bc) in zip(t["segments"], b["segments"], strict=True)]
    return (
        f"{t['wall'] * 1e3:.1f} ms, ratio {t['wall'] / b['wall']:.3f} "
        f"(CPU {t['cpu'] * 1e3:.1f} ms, ratio {t['cpu'] / b['cpu']:.3f}, "
        f"per segment {min(spread):.3f}-{max(spread):.3f})"
    )


def _segment_fn(model, x, y, callbacks):
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

    return fit_segment


def _ours(config, base, x, y, segments, steps):
    import keras

    from keras_llmopt import reference, sparsity
    from keras_llmopt.techniques import copy_model

    def compiled(model):
        model.compile(optimizer=keras.optimizers.AdamW(1e-4), loss=reference.lm_loss())
        return model

    schedule = sparsity.PolynomialDecay(0.0, 0.5, 0, 10 * steps, frequency=100)
    callbacks = [sparsity.UpdatePruningStep()]
    mlp_only = ["re:block_\\d+_mlp_(up|down)"]
    variants = {
        "dense": _segment_fn(compiled(copy_model(base)), x, y, []),
        "pruned": _segment_fn(
            compiled(sparsity.prune_low_magnitude(base, schedule)), x, y, callbacks
        ),
        "pruned_mlp_only": _segment_fn(
            compiled(sparsity.prune_low_magnitude(base, schedule, targets=mlp_only)),
            x,
            y,
            callbacks,
        ),
    }
    return benchmark.interleaved_step_times(variants, segments, steps)


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

    def compiled(model):
        model.compile(
            optimizer=tf_keras.optimizers.Adam(1e-4),
            loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        return model

    schedule = prune.PolynomialDecay(0.0, 0.5, 0, 10 * steps, frequency=100)

    def wrap(layer):
        if isinstance(layer, tf_keras.layers.Dense) and "mlp" in layer.name:
            return prune.prune_low_magnitude(layer, pruning_schedule=schedule)
        return layer

    twin = _tf_keras_twin(config)
    pruned = tf_keras.models.clone_model(twin, clone_function=wrap)
    variants = {
        "dense": _segment_fn(compiled(_tf_keras_twin(config)), x, y, []),
        "pruned": _segment_fn(compiled(pruned), x, y, [prune.UpdatePruningStep()]),
    }
    return benchmark.interleaved_step_times(variants, segments, steps)


def _bpb(preset, corpus, base, steps):
    from keras_llmopt import reference, sparsity
    from keras_llmopt.techniques import copy_model

    before = reference.evaluate(base, corpus).bpb
    end_step = max(1, int(steps * 0.7))
    schedule = sparsity.PolynomialDecay(0.0, 0.5, 0, end_step, frequency=max(1, end_step // 10))
    pruned = sparsity.prune_low_magnitude(base, schedule)
    reference.train(
        pruned,
        corpus,
        steps,
        learning_rate=LR.value,
        callbacks=[sparsity.UpdatePruningStep()],
        verbose=2,
    )
    after = reference.evaluate(sparsity.strip_pruning(pruned), corpus).bpb
    dense = copy_model(base)
    reference.train(dense, corpus, steps, learning_rate=LR.value, verbose=2)
    return {"before": before, "pruned": after, "dense": reference.evaluate(dense, corpus).bpb}


def _print_tfmot(config, x, y):
    try:
        theirs = _tfmot(config, x, y, SEGMENTS.value, TIME_STEPS.value)
        print(
            f"tfmot (tf_keras twin, MLP Dense only) step time: dense "
            f"{_ratio_line(theirs, 'dense')}; pruned {_ratio_line(theirs, 'pruned')}"
        )
    except Exception as error:  # report what tfmot cannot do instead of stopping
        print(f"tfmot twin failed: {type(error).__name__}: {error}")


def main(argv):
    del argv
    from keras_llmopt import reference

    config = reference.GPTConfig.preset(PRESET.value)
    corpus = reference.load_corpus(config.sequence_length)
    base = reference.trained_model(PRESET.value, corpus=corpus)
    n = TIME_STEPS.value * BATCH.value
    x, y = reference.make_batches(corpus.train, BATCH.value, TIME_STEPS.value, seed=1)
    x, y = x[:n], y[:n]

    ours = _ours(config, base, x, y, SEGMENTS.value, TIME_STEPS.value)
    print(
        f"keras_llmopt step time: dense {_ratio_line(ours, 'dense')}; pruned "
        f"{_ratio_line(ours, 'pruned')} (attention q/k/v/o + MLP pruned); MLP only "
        f"{_ratio_line(ours, 'pruned_mlp_only')}"
    )
    if TFMOT.value:
        _print_tfmot(config, x, y)
    if not BPB.value:
        return

    result = _bpb(PRESET.value, corpus, base, STEPS.value)
    print(
        f"bpb: before {result['before']:.4f}, pruned 50% {result['pruned']:.4f}, "
        f"matched dense {result['dense']:.4f}, delta {result['pruned'] - result['dense']:+.4f}"
    )


if __name__ == "__main__":
    app.run(main)
