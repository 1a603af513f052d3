"""Model fusion on the reference GPT: ensembles, model soups and a distilled student.

Three reference GPTs are trained (from different seeds, or fine-tuned from one base with
different data orders), fused into weighted, probability-mean, logit-mean and voting
ensembles, averaged into a uniform and a greedy model soup, and distilled into a single
student. Each variant is measured the same way: bits per byte (bpb) and next-byte top-1
accuracy on the fixed validation windows, then exported to TFLite (verified against Keras)
for its size and single-thread LiteRT latency.

The distilled student starts from the best member and trains ``--distill_steps`` more
steps against the ensemble; the "continued" row trains the same copy for the same steps on
the labels alone, so the table separates what distillation adds from extra training.

Notes on the rows:
  * weighted: mixture weights learned with ``fit`` on held-out validation windows (not
    the evaluation windows), members frozen.
  * vote: the smoothed vote distribution (1% uniform, ``vote_epsilon=0.01``), so its bpb
    is finite but dominated by that floor; compare votes by accuracy.
  * soups average weights: they only work for members that share a base
    (``--members_from=base``); from independent seeds the uniform soup is poor and the
    greedy soup keeps the best member alone.

Run:
    python examples/ensemble_fusion.py --preset tiny
    python examples/ensemble_fusion.py --preset tiny --members_from base
"""

import copy
import math
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from keras_llmopt import ensemble, export, reference  # noqa: E402

flags.DEFINE_string("preset", "tiny", "Reference GPT preset: tiny or small.")
flags.DEFINE_integer("members", 3, "Number of ensemble members.")
flags.DEFINE_enum(
    "members_from",
    "seeds",
    ["seeds", "base"],
    "Train members from different seeds, or "
    "fine-tune them from one trained base with different data orders.",
)
flags.DEFINE_integer(
    "member_steps", 300, "Training steps per member (fine-tune steps when --members_from=base)."
)
flags.DEFINE_integer("base_steps", 300, "Steps of the shared base (--members_from=base).")
flags.DEFINE_integer("distill_steps", 300, "Steps of distillation (and of the control).")
flags.DEFINE_float("temperature", 2.0, "Distillation temperature.")
flags.DEFINE_float("alpha", 0.1, "Weight of the hard-label loss in distillation.")
flags.DEFINE_integer("eval_windows", 256, "Validation windows for bpb and accuracy.")
flags.DEFINE_integer(
    "heldout_windows",
    128,
    "Validation windows (disjoint from the "
    "evaluation ones) for learning mixture weights and the greedy soup.",
)
flags.DEFINE_integer("latency_repeats", 30, "Timed LiteRT passes per artifact.")
flags.DEFINE_string("workdir", None, "Where to write the .tflite files (default: temp).")
FLAGS = flags.FLAGS


def heldout_and_eval_windows(corpus):
    """Evaluation windows (as ``reference.evaluate`` picks them) and disjoint held-out ones."""
    validation = np.asarray(corpus.validation)
    eval_index = set(
        np.linspace(0, len(validation) - 1, FLAGS.eval_windows).round().astype(int).tolist()
    )
    rest = np.asarray([i for i in range(len(validation)) if i not in eval_index])
    pick = np.random.default_rng(0).permutation(rest)[: FLAGS.heldout_windows]
    return validation[pick].astype("int32")


def measure(model, corpus):
    """(bpb, top-1 accuracy) on the evaluation windows."""
    bpb = reference.evaluate(model, corpus, num_windows=FLAGS.eval_windows).bpb
    windows = reference.evaluation_windows(corpus, FLAGS.eval_windows).astype("int32")
    logits = reference.logits_function(model)(windows[:, :-1])
    accuracy = float((logits.argmax(-1) == windows[:, 1:]).mean())
    return bpb, accuracy


def heldout_bpb(model, heldout):
    logits = keras.ops.convert_to_numpy(model.predict(heldout[:, :-1], batch_size=32, verbose=0))
    logits = logits - logits.max(-1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_probs, heldout[:, 1:, None], -1).mean()
    return nll / math.log(2)


def train_members(config, corpus):
    members = []
    if FLAGS.members_from == "base":
        logging.info("Training the shared base for %d steps", FLAGS.base_steps)
        base = reference.build_gpt(config, seed=0)
        reference.train(base, corpus, steps=FLAGS.base_steps, seed=0)
    for i in range(FLAGS.members):
        logging.info("Training member %d/%d", i + 1, FLAGS.members)
        if FLAGS.members_from == "base":
            member = copy.deepcopy(base)
            reference.train(
                member, corpus, steps=FLAGS.member_steps, seed=100 + i, learning_rate=1e-3
            )
        else:
            member = reference.build_gpt(config, seed=i)
            reference.train(member, corpus, steps=FLAGS.member_steps, seed=i)
        members.append(member)
    return members


def learned_weighted_ensemble(members, heldout):
    fused = ensemble.EnsembleModel(members, strategy="weighted", trainable_weights=True)
    fused.compile(optimizer=keras.optimizers.Adam(0.05), loss=reference.lm_loss())
    fused.fit(heldout[:, :-1], heldout[:, 1:], batch_size=16, epochs=3, verbose=0)
    return fused


def distilled_and_control(teacher, best, corpus):
    """The best member distilled from the ensemble, and the same copy trained on labels."""
    x, y = reference.make_batches(corpus.train, 16, FLAGS.distill_steps, seed=999)
    student = copy.deepcopy(best)
    distiller = ensemble.Distiller(
        teacher, student, temperature=FLAGS.temperature, alpha=FLAGS.alpha
    )
    distiller.compile(optimizer=reference.make_optimizer(FLAGS.distill_steps, 1e-3))
    logging.info("Distilling for %d steps", FLAGS.distill_steps)
    distiller.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=2)
    control = copy.deepcopy(best)
    control.compile(
        optimizer=reference.make_optimizer(FLAGS.distill_steps, 1e-3), loss=reference.lm_loss()
    )
    logging.info("Control: the same steps on labels only")
    control.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=2)
    return distiller.student, control


def tflite_figures(model, path, sequence_length):
    export.to_tflite(model, path, sequence_length=sequence_length)
    latency = export.measure_latency(path, num_threads=1, warmup=5, repeats=FLAGS.latency_repeats)
    return os.path.getsize(path), latency


def main(argv):
    del argv
    config = reference.GPTConfig.preset(FLAGS.preset)
    corpus = reference.load_corpus(config.sequence_length)
    heldout = heldout_and_eval_windows(corpus)
    workdir = FLAGS.workdir or tempfile.mkdtemp(prefix="ensemble_fusion_")
    os.makedirs(workdir, exist_ok=True)
    started = time.time()

    members = train_members(config, corpus)
    rows = [(f"member_{i}", m) for i, m in enumerate(members)]
    member_bpb = [heldout_bpb(m, heldout) for m in members]
    best = members[int(np.argmin(member_bpb))]

    weighted = learned_weighted_ensemble(members, heldout)
    logging.info("Learned mixture weights: %s", np.round(weighted.mixture_weights, 3))
    rows += [
        ("ensemble_weighted", weighted),
        ("ensemble_prob_mean", ensemble.EnsembleModel(members, strategy="prob_mean")),
        ("ensemble_logit_mean", ensemble.EnsembleModel(members, strategy="logit_mean")),
        ("ensemble_vote", ensemble.EnsembleModel(members, strategy="vote")),
        ("soup_uniform", ensemble.average_weights(members)),
    ]
    greedy, details = ensemble.greedy_soup(
        members, lambda m: heldout_bpb(m, heldout), return_details=True
    )
    rows.append((f"soup_greedy{details.ingredients}", greedy))
    student, control = distilled_and_control(weighted, best, corpus)
    rows += [("distilled_student", student), ("continued_no_teacher", control)]

    results = []
    for name, model in rows:
        bpb, accuracy = measure(model, corpus)
        path = os.path.join(workdir, name.split("[")[0] + ".tflite")
        size, latency = tflite_figures(model, path, config.sequence_length)
        results.append((name, bpb, accuracy, size, latency))
        logging.info("%s: bpb %.4f", name, bpb)

    header = f"{'variant':<28}{'bpb':>8}{'top1':>8}{'tflite MB':>11}{'1t ms':>9}"
    print(
        f"\n{config.name}, {FLAGS.members} members from {FLAGS.members_from}, "
        f"learned weights {np.round(weighted.mixture_weights, 3).tolist()}"
    )
    print(header)
    print("-" * len(header))
    for name, bpb, accuracy, size, latency in results:
        print(f"{name:<28}{bpb:>8.4f}{accuracy:>8.4f}{size / 1e6:>11.3f}{latency:>9.3f}")

    by_name = {r[0]: r for r in results}
    best_member = min((r for r in results if r[0].startswith("member_")), key=lambda r: r[1])
    fused = [r for r in results if r[0].startswith("ensemble_") and r[0] != "ensemble_vote"]
    best_fused = min(fused, key=lambda r: r[1])
    gain = best_member[1] - best_fused[1]
    student_row, control_row = by_name["distilled_student"], by_name["continued_no_teacher"]
    print(
        f"\nbest member {best_member[0]}: {best_member[1]:.4f} bpb; best ensemble "
        f"{best_fused[0]}: {best_fused[1]:.4f} bpb (gain {gain:.4f})"
    )
    if gain > 0:
        print(
            f"distilled student keeps {(best_member[1] - student_row[1]) / gain:.0%} of "
            f"that gain; continued training without a teacher: "
            f"{(best_member[1] - control_row[1]) / gain:.0%}"
        )
    print(
        f"latency: ensemble {best_fused[4]:.3f} ms vs student {student_row[4]:.3f} ms "
        f"({best_fused[4] / student_row[4]:.2f}x); sizes {best_fused[3] / 1e6:.2f} MB vs "
        f"{student_row[3] / 1e6:.2f} MB"
    )
    print(f"total time {time.time() - started:.0f} s; artifacts in {workdir}")


if __name__ == "__main__":
    app.run(main)
