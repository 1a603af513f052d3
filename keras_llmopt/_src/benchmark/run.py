"""``run_benchmark``: every variant measured on the same validation windows in one run."""

import dataclasses
import os
import time

import keras
from absl import logging

from keras_llmopt._src.benchmark import environment, measure
from keras_llmopt._src.benchmark import variants as variants_lib
from keras_llmopt._src.benchmark.report import ROW_FIELDS, error_summary, write_json

DEFAULT_VARIANTS = tuple(n for n in variants_lib.VARIANTS if n not in variants_lib.OPT_IN_VARIANTS)
# The references of the ratio columns: always measured.
REFERENCE_VARIANTS = ("keras_fp32", "tflite_fp32")
# The matched control of fine-tuned rows (``delta_bpb_vs_control``): added to a run that
# has a fine-tuned variant.
CONTROL_VARIANT = "dense_finetuned_fp32"


@dataclasses.dataclass
class BenchmarkResult:
    """The rows of one benchmark run, with the machine and the package versions.

    Attributes:
        rows: One dict per variant (``ROW_FIELDS``; a failed variant keeps its row with
            ``error`` set and the measures ``None``).
        machine: CPU count, platform, Python.
        packages: Versions of the packages involved.
        settings: The run's settings (preset, windows, steps, repeats).

    Example:
        >>> result = run_benchmark(model, corpus, "bench", variants=["tflite_fp32"])
        >>> result.row("tflite_fp32")["size_ratio"]
        1.0
    """

    rows: list
    machine: dict
    packages: dict
    settings: dict

    def row(self, variant):
        """The row of ``variant`` (KeyError if it was not run)."""
        for row in self.rows:
            if row["variant"] == variant:
                return row
        raise KeyError(variant)

    def to_dict(self):
        """The JSON document written as ``benchmark.json``."""
        return {
            "machine": self.machine,
            "packages": self.packages,
            "settings": self.settings,
            "rows": self.rows,
        }


def _check_variants(names):
    if names is None:
        return list(DEFAULT_VARIANTS)
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    names = list(names)
    unknown = [n for n in names if n not in variants_lib.VARIANTS]
    if unknown:
        raise ValueError(
            f"run_benchmark: unknown variants. Received: variants={unknown}; accepted: "
            f"{list(variants_lib.VARIANTS)}"
        )
    missing = [n for n in REFERENCE_VARIANTS if n not in names]
    return missing + [n for n in dict.fromkeys(names)]


def _check_int(name, value, low):
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"run_benchmark: `{name}` must be an int >= {low}. Received: {value!r}")


def _ratios(rows):
    by_name = {r["variant"]: r for r in rows}
    keras_ref = by_name.get("keras_fp32", {})
    tflite_ref = by_name.get("tflite_fp32", {})

    def ratio(value, reference):
        return value / reference if value is not None and reference else None

    for row in rows:
        row["size_ratio"] = ratio(row.get("size_bytes"), tflite_ref.get("size_bytes"))
        bpb, ref_bpb = row.get("bpb"), keras_ref.get("bpb")
        row["delta_bpb"] = bpb - ref_bpb if bpb is not None and ref_bpb is not None else None
        control_bpb = by_name.get(CONTROL_VARIANT, {}).get("bpb")
        row["delta_bpb_vs_control"] = (
            bpb - control_bpb
            if row.get("finetuned") and bpb is not None and control_bpb is not None
            else None
        )
        for n in ("1t", "2t"):
            row[f"latency_ratio_{n}"] = ratio(
                row.get(f"latency_ms_{n}"), tflite_ref.get(f"latency_ms_{n}")
            )
        row["latency_ratio_keras"] = ratio(
            row.get("latency_ms_keras"), keras_ref.get("latency_ms_keras")
        )


def run_benchmark(
    model,
    corpus,
    out_dir,
    variants=None,
    config=None,
    eval_windows=256,
    finetune_steps=300,
    latency_warmup=5,
    latency_repeats=30,
    calibration_windows=64,
    verify_windows=16,
    seed=0,
    verbose="auto",
    extra_settings=None,
    progress=True,
    artifacts_dir=None,
    write=True,
    cache=True,
):
    """Builds and measures every variant of a trained reference GPT; writes benchmark.json.

    Every variant is evaluated on the same validation windows (checked: each row records
    its ``eval_set``). Ratios: ``size_ratio`` and ``latency_ratio_*`` against
    ``tflite_fp32``; ``delta_bpb`` against the Keras fp32 model (``keras_fp32``); both
    references are always measured. Fine-tuned rows also get ``delta_bpb_vs_control``,
    against ``dense_finetuned_fp32`` (the dense model fine-tuned with the same steps and
    data, added when a fine-tuned variant runs). Latencies are timed after every variant
    is built, all together in ``latency_repeats`` interleaved rounds (each round runs
    every artifact once, in an order shuffled with ``seed``) after ``latency_warmup``
    passes: LiteRT with XNNPACK or ONNX Runtime at 1 and 2 threads, Keras-native
    variants in Keras. Each latency is the median of its rounds, with its interquartile
    range in % (``latency_iqr_pct_*``). A variant that fails keeps its row, with
    ``error`` set.

    Args:
        model: The trained Keras fp32 reference GPT (not modified).
        corpus: Its ``Corpus``.
        out_dir: Folder for ``benchmark.json`` (and the artifacts, see ``artifacts_dir``).
        variants: Names (list or comma-separated) from ``VARIANTS`` (default: all but
            ``OPT_IN_VARIANTS``, the structural rows).
        config: The model's ``GPTConfig`` (default: read from the model).
        eval_windows: Validation windows for bits per byte.
        finetune_steps: Fine-tune steps of the pruning, QAT and clustering variants.
        latency_warmup: Untimed passes before timing.
        latency_repeats: Timed rounds (median and interquartile range reported).
        calibration_windows: Training windows for post-training int8 calibration.
        verify_windows: Validation windows each export is verified on.
        seed: Seed of the fine-tuning data order.
        verbose: Keras ``fit`` verbosity while fine-tuning.
        extra_settings: Dict merged into the recorded settings.
        progress: Show a progress bar over the variants.
        artifacts_dir: Folder for the artifacts (default ``out_dir/artifacts``).
        write: Write ``out_dir/benchmark.json`` (the CLI writes a fuller report itself).
        cache: Reuse fine-tuned models cached by an earlier run with the same model,
            steps, seed and corpus (``$KERAS_LLMOPT_CACHE/finetunes``), and cache new ones.

    Returns:
        A :class:`BenchmarkResult`; ``out_dir/benchmark.json`` holds the same data.

    Example:
        >>> from keras_llmopt import benchmark, reference
        >>> corpus = reference.load_corpus(64)
        >>> model = reference.trained_model("tiny", corpus=corpus)
        >>> result = benchmark.run_benchmark(model, corpus, "bench",
        ...     variants=["tflite_dynamic_int8"], eval_windows=32)
        >>> result.row("tflite_dynamic_int8")["size_ratio"]
        0.35...
    """
    names = _check_variants(variants)
    for name, value, low in (
        ("eval_windows", eval_windows, 1),
        ("finetune_steps", finetune_steps, 1),
        ("latency_warmup", latency_warmup, 0),
        ("latency_repeats", latency_repeats, 1),
        ("calibration_windows", calibration_windows, 1),
        ("verify_windows", verify_windows, 1),
    ):
        _check_int(name, value, low)
    if not isinstance(model, keras.Model):
        raise TypeError(f"run_benchmark: `model` must be a keras.Model. Received: {model!r}")
    if config is None:
        config = _config_of(model)
    out_dir = os.fspath(out_dir)
    artifacts_dir = os.fspath(artifacts_dir or os.path.join(out_dir, "artifacts"))
    os.makedirs(artifacts_dir, exist_ok=True)
    ctx = variants_lib.BenchmarkContext(
        model=model,
        config=config,
        corpus=corpus,
        work_dir=artifacts_dir,
        finetune_steps=finetune_steps,
        calibration_windows=calibration_windows,
        verify_windows=verify_windows,
        seed=seed,
        verbose=verbose,
        cache=cache,
    )
    settings = {
        "sequence_length": config.sequence_length,
        "eval_windows": eval_windows,
        "finetune_steps": finetune_steps,
        "latency_warmup": latency_warmup,
        "latency_repeats": latency_repeats,
        "calibration_windows": calibration_windows,
        "verify_windows": verify_windows,
        "variants": names,
        **(extra_settings or {}),
    }
    bar = keras.utils.Progbar(len(names), unit_name="variant") if progress else None
    rows, builts = [], {}
    for i, name in enumerate(names):
        logging.info("benchmark [%d/%d]: %s", i + 1, len(names), name)
        row, built = _run_one(name, ctx, eval_windows)
        rows.append(row)
        builts[name] = built
        if bar is not None:
            bar.update(i + 1)
        if row.get("finetuned") and CONTROL_VARIANT not in names and name != CONTROL_VARIANT:
            if CONTROL_VARIANT in variants_lib.VARIANTS:
                names.append(CONTROL_VARIANT)  # the matched control of the fine-tuned rows
                settings["variants"] = list(names)
                if bar is not None:
                    bar.target = len(names)
    settings["eval_set"] = _check_eval_set(rows)
    start, cpu = time.time(), time.process_time()
    _time_latencies(rows, builts, ctx, latency_warmup, latency_repeats, seed)
    settings["latency_seconds"] = time.time() - start
    settings["latency_cpu_seconds"] = time.process_time() - cpu
    _ratios(rows)
    rows = [{k: row.get(k) for k in ROW_FIELDS} for row in rows]
    result = BenchmarkResult(
        rows=rows,
        machine=environment.machine_info(),
        packages=environment.package_versions(),
        settings=settings,
    )
    if write:
        write_json(result.to_dict(), os.path.join(out_dir, "benchmark.json"))
    return result


def _run_one(name, ctx, eval_windows):
    start, cpu = time.time(), time.process_time()
    row, built = {"variant": name}, None
    ctx.used_finetune = False
    try:
        built = variants_lib.VARIANTS[name](ctx)
        built.finetuned = bool(built.finetuned or ctx.used_finetune)
        row.update(measure.measure(built, ctx.corpus, eval_windows))
    except Exception as error:  # the row stays, with the reason, instead of disappearing
        message = f"{type(error).__name__}: {error}".strip()
        logging.warning("benchmark: %s failed: %s", name, error_summary(message))
        row["error"] = message[:2000]
        built = None
    row["seconds"] = time.time() - start
    row["cpu_seconds"] = time.process_time() - cpu  # steadier than wall time when shared
    return row, built


def _check_eval_set(rows):
    """The one evaluation set of every measured row (an error if rows disagree)."""
    sets = {row["eval_set"] for row in rows if row.get("eval_set")}
    if len(sets) > 1:
        by_set = {s: [r["variant"] for r in rows if r.get("eval_set") == s] for s in sets}
        raise RuntimeError(
            f"run_benchmark: the rows were evaluated on different validation windows: {by_set}"
        )
    return next(iter(sets), None)


def _time_latencies(rows, builts, ctx, warmup, repeats, seed):
    """Every built variant's latencies, timed together in interleaved rounds."""
    functions = {}
    for row in rows:
        built = builts.get(row["variant"])
        if built is None:
            continue
        try:
            for field, fn in measure.latency_functions(built, ctx.sequence_length).items():
                functions[(row["variant"], field)] = fn
        except Exception as error:  # measured rows keep their other figures
            row["notes"] = [*row.get("notes", []), f"latency not measured: {error}"]
    logging.info(
        "benchmark: timing %d runtime settings in %d interleaved rounds", len(functions), repeats
    )
    stats = measure.interleaved_latencies(functions, repeats, warmup=warmup, seed=seed)
    by_name = {row["variant"]: row for row in rows}
    for (variant, field), stat in stats.items():
        by_name[variant][field] = stat["median"]
        by_name[variant][field.replace("latency_ms_", "latency_iqr_pct_")] = stat["iqr_pct"]


def _config_of(model):
    """The ``GPTConfig`` of a reference GPT, read from its layers."""
    from keras_llmopt._src.reference.config import GPTConfig

    try:
        attention = [layer for layer in model.layers if layer.name.endswith("_attention")]
        up = model.get_layer("block_0_mlp_up")
        return GPTConfig(
            sequence_length=int(model.get_layer("position_embedding").input_dim),
            d_model=int(model.get_layer("token_embedding").output_dim),
            num_layers=len(attention),
            num_heads=int(attention[0].num_heads),
            mlp_dim=int(up.units),
            vocab_size=int(model.get_layer("token_embedding").input_dim),
            gelu_approximate=up.activation is keras.activations.linear,
            layer_norm_epsilon=float(model.get_layer("block_0_ln1").epsilon),
            name=model.name,
        )
    except (ValueError, IndexError, AttributeError) as error:
        raise ValueError(
            f"run_benchmark: model '{model.name}' is not a reference GPT ({error}); the "
            "benchmark measures keras_llmopt.reference models. Pass config=GPTConfig(...) "
            "for a reference GPT with renamed layers."
        ) from None
