"""The benchmark's variants: how each one is built from the trained reference GPT.

A builder takes the :class:`BenchmarkContext` and returns a :class:`Built`: an artifact
file to run in LiteRT / ONNX Runtime, or a Keras model to run in Keras. Intermediate
results several variants share (the fp32 TFLite and ONNX files, the pruned fine-tune)
are built once per run through ``context.shared``; fine-tuned models are also cached on
disk across runs (``context.finetuned_model``), so a second run only exports and measures.
"""

import copy
import json
import os
import warnings

from absl import logging

from keras_llmopt._src.benchmark import (
    keras_native_variants,
    oneshot_variants,
    structural_variants,
)
from keras_llmopt._src.benchmark.context import BenchmarkContext, Built, _tflite  # noqa: F401
from keras_llmopt._src.core import registry
from keras_llmopt._src.sparsity.technique import pruning_schedule


def _keras_size(ctx, model, name):
    path = ctx.path(f"{name}.keras")
    model.save(path)
    return os.path.getsize(path)


# --- anchors -----------------------------------------------------------------------


def keras_fp32(ctx):
    """The trained Keras model itself (the bpb reference)."""
    return Built(model=ctx.model, size_bytes=_keras_size(ctx, ctx.model, "keras_fp32"))


def _keras_native(mode):
    def build(ctx):
        model = copy.deepcopy(ctx.model)
        with warnings.catch_warnings():  # "Layer Add does not have a quantize method", ...
            warnings.simplefilter("ignore", UserWarning)
            model.quantize(mode)
        return Built(
            model=model,
            size_bytes=_keras_size(ctx, model, f"keras_{mode}"),
            notes=(f"Keras 3 model.quantize({mode!r}); run in Keras (no TFLite conversion)",),
        )

    build.__doc__ = f"Keras 3 native post-training ``model.quantize({mode!r})`` on a copy."
    return build


def _tflite_mode(mode, name):
    def build(ctx):
        if mode is None:
            return tflite_fp32_shared(ctx)
        return _tflite(ctx, ctx.model, name, quantization=mode)

    build.__doc__ = f"The TFLite converter's own {mode or 'float32'} path, verified."
    return build


def tflite_fp32_shared(ctx):
    """The fp32 TFLite file (built once; other variants start from it)."""
    return ctx.shared("tflite_fp32", lambda: _tflite(ctx, ctx.model, "tflite_fp32"))


def tflite_full_int8_ptq(ctx):
    """The converter's full-integer post-training int8 path, measured, not refused.

    Exported with ``verify=False`` (``to_tflite`` would rightly refuse a wrecked
    artifact), then verified without raising: the row's ``verified`` says whether it
    passes, and the measures say how far off it is.
    """
    built = _tflite(
        ctx,
        ctx.model,
        "tflite_full_int8_ptq",
        quantization="int8",
        representative_dataset=ctx.calibration_data(),
        verify=False,
        verification_data=None,
    )
    from keras_llmopt._src.export import verification

    # Verified afterwards, without raising, so the row shows whether it would pass.
    inputs, targets = ctx.verification_data()
    built.verification = verification.verify(built.path, ctx.model, inputs, targets, mode="int8")
    failures = "; ".join(built.verification.failures)
    built.notes = (
        *built.notes,
        "exported with verify=False so it is measured, then verified: "
        + (f"FAILS ({failures})" if failures else "passes"),
    )
    return built


def onnx_fp32_shared(ctx):
    """The fp32 ONNX file (built once)."""
    from keras_llmopt._src.export import onnx_export

    def build():
        report = onnx_export.to_onnx(
            ctx.model,
            ctx.path("onnx_fp32.onnx"),
            sequence_length=ctx.sequence_length,
            batch_size=1,
            verification_data=ctx.verification_data(),
        )
        return Built(
            path=report.path,
            size_bytes=report.size_bytes,
            verification=report.verification,
            notes=report.notes,
        )

    return ctx.shared("onnx_fp32", build)


def onnx_dynamic_int8(ctx):
    """ONNX Runtime's own dynamic int8 (``quantize_dynamic``) of the fp32 ONNX file."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source = onnx_fp32_shared(ctx).path
    path = ctx.path("onnx_dynamic_int8.onnx")
    quantize_dynamic(source, path, weight_type=QuantType.QInt8)
    return Built(path=path, size_bytes=os.path.getsize(path), notes=("quantize_dynamic, QInt8",))


def _aeq(recipe_name, label, mode):
    def build(ctx):
        import contextlib
        import io

        from ai_edge_quantizer import quantizer, recipe

        from keras_llmopt._src.export import files, verification

        source = tflite_fp32_shared(ctx).path  # compacted, with unique tensor names
        with contextlib.redirect_stdout(io.StringIO()):  # it prints sizes and timings
            result = quantizer.Quantizer(source, getattr(recipe, recipe_name)()).quantize()
        inputs, targets = ctx.verification_data()

        def check(temp):  # a miss is reported in the row, not raised
            return verification.verify(temp, ctx.model, inputs, targets, mode=mode)

        path = ctx.path(f"{label}.tflite")
        report = files.publish(path, files.bytes_writer(bytes(result.quantized_model)), check)
        return Built(
            path=path,
            size_bytes=os.path.getsize(path),
            verification=report,
            notes=(f"AI Edge Quantizer recipe.{recipe_name}() on the fp32 .tflite",),
        )

    build.__doc__ = f"AI Edge Quantizer's ``{recipe_name}`` recipe on the fp32 ``.tflite``."
    return build


# --- tfmot on a tf_keras twin --------------------------------------------------------


def _twin(ctx):
    from keras_llmopt._src.benchmark.twin import twin_of

    return twin_of(ctx.model, ctx.config)


def _tfmot_pruned(ctx, name, whole_model):
    path = ctx.path(f"{name}.tflite")
    data, wrapped = _tfmot_pruned_bytes(ctx, name, whole_model)
    with open(path, "wb") as handle:
        handle.write(data)
    return Built(
        path=path,
        size_bytes=os.path.getsize(path),
        notes=(f"tfmot pruned {len(wrapped)} tf_keras twin layers: {wrapped}",),
        finetuned=True,
    )


def _tfmot_pruned_bytes(ctx, name, whole_model):
    """The tfmot-pruned twin's dynamic-int8 ``.tflite`` bytes and its wrapped layers."""

    def build():
        import tensorflow_model_optimization as tfmot
        import tf_keras

        from keras_llmopt._src.benchmark.twin import tflite_bytes
        from keras_llmopt._src.reference.training import make_batches

        prune = tfmot.sparsity.keras
        ours = pruning_schedule(ctx.finetune_steps, 0.5)
        schedule = prune.PolynomialDecay(0.0, 0.5, 0, ours.end_step, frequency=ours.frequency)
        twin = _twin(ctx)
        if whole_model:
            pruned = prune.prune_low_magnitude(twin, pruning_schedule=schedule)
        else:

            def wrap(layer):
                if isinstance(layer, tf_keras.layers.Dense) and "mlp" in layer.name:
                    return prune.prune_low_magnitude(layer, pruning_schedule=schedule)
                return layer

            # The clone reuses the twin's (trained) layers, wrapped where tfmot prunes.
            pruned = tf_keras.models.clone_model(twin, clone_function=wrap)
        pruned.compile(
            optimizer=tf_keras.optimizers.Adam(5e-4, clipnorm=1.0),
            loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        x, y = make_batches(ctx.corpus.train, 16, ctx.finetune_steps, seed=ctx.seed)
        logging.info("benchmark: tfmot pruning fine-tune, %d steps", ctx.finetune_steps)
        pruned.fit(
            x,
            y,
            batch_size=16,
            epochs=1,
            shuffle=False,
            verbose=ctx.verbose,
            callbacks=[prune.UpdatePruningStep()],
        )
        stripped = prune.strip_pruning(pruned)
        wrapped = [
            layer.name for layer in pruned.layers if type(layer).__name__ == "PruneLowMagnitude"
        ]
        data = tflite_bytes(stripped, ctx.sequence_length, "dynamic_int8")
        return json.dumps(wrapped).encode() + b"\n" + data

    blob = ctx.finetuned_bytes(name, build, 5e-4)
    header, data = blob.split(b"\n", 1)
    return data, json.loads(header)


def tfmot_pruned50_dynamic_int8(ctx):
    """Tfmot pruning of the tf_keras twin's MLP Dense layers (as scripts/benchmark_pruning.py).

    Same schedule, steps and data as ``klo_pruned50_*``; stripped, then dynamic int8.
    """
    return _tfmot_pruned(ctx, "tfmot_pruned50_dynamic_int8", whole_model=False)


def tfmot_pruned50_whole_model(ctx):
    """Tfmot ``prune_low_magnitude`` on the whole twin, as a user tries first; dynamic int8."""
    return _tfmot_pruned(ctx, "tfmot_pruned50_whole_model", whole_model=True)


def tfmot_qat_int8(ctx):
    """Tfmot ``quantize_model`` on the twin (int32 token input), fine-tuned, int8 TFLite."""
    import tensorflow_model_optimization as tfmot
    import tf_keras
    from tf_keras.src.saving.serialization_lib import SafeModeScope

    from keras_llmopt._src.benchmark.twin import tflite_bytes
    from keras_llmopt._src.reference.training import make_batches

    def build():
        twin = _twin(ctx)
        # quantize_model round-trips the model through its config; the twin's only Lambda
        # (positions) is ours, so loading it is safe.
        with SafeModeScope(False):
            qat = tfmot.quantization.keras.quantize_model(twin)
        qat.compile(
            optimizer=tf_keras.optimizers.Adam(1e-4, clipnorm=1.0),
            loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        x, y = make_batches(ctx.corpus.train, 16, ctx.finetune_steps, seed=ctx.seed)
        qat.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=ctx.verbose)
        return tflite_bytes(qat, ctx.sequence_length, "dynamic_int8")

    path = ctx.path("tfmot_qat_int8.tflite")
    with open(path, "wb") as handle:
        handle.write(ctx.finetuned_bytes("tfmot_qat", build, 1e-4))
    return Built(path=path, size_bytes=os.path.getsize(path), finetuned=True)


# --- ours ----------------------------------------------------------------------------


def pruned50_shared(ctx):
    """The model pruned to 50% (attention q/k/v/o + MLP) while fine-tuning, stripped."""

    def build():
        from keras_llmopt._src.sparsity import callbacks as sparsity_callbacks
        from keras_llmopt._src.sparsity import prune, strip

        schedule = pruning_schedule(ctx.finetune_steps, 0.5)
        pruned = prune.prune_low_magnitude(ctx.model, schedule)
        logging.info("benchmark: pruning fine-tune, %d steps", ctx.finetune_steps)
        ctx.train(pruned, 5e-4, callbacks=[sparsity_callbacks.UpdatePruningStep()])
        return strip.strip_pruning(pruned)

    return ctx.finetuned_model("klo_pruned50", build, 5e-4)


def dense_finetuned_fp32(ctx):
    """The matched control of the fine-tuned rows: a dense fine-tune, same steps and data.

    A short fine-tune alone can move bits per byte (an under-trained model improves);
    compare ``klo_pruned50_*`` / ``tfmot_pruned50_*`` with this row, not only with
    ``keras_fp32``.
    """
    return _finetuned_export(ctx, dense_finetuned_shared(ctx), "dense_finetuned_fp32")


def dense_finetuned_shared(ctx):
    """The dense fine-tune of the control row (built once, cached)."""

    def build():
        from keras_llmopt._src.core.model_copy import copy_model

        dense = copy_model(ctx.model, "the dense fine-tune")
        logging.info("benchmark: dense fine-tune (control), %d steps", ctx.finetune_steps)
        ctx.train(dense, 5e-4)
        return dense

    return ctx.finetuned_model("dense_finetuned", build, 5e-4)


def _finetuned_export(ctx, model, name, **kwargs):
    built = _tflite(ctx, model, name, **kwargs)
    built.finetuned = True
    return built


def klo_pruned50_sparse_tflite(ctx):
    """50% pruned, fp32 TFLite in the sparse encoding."""
    return _finetuned_export(ctx, pruned50_shared(ctx), "klo_pruned50_sparse_tflite", sparse=True)


def klo_pruned50_dynamic_int8(ctx):
    """50% pruned, dynamic-range int8 TFLite."""
    return _finetuned_export(
        ctx, pruned50_shared(ctx), "klo_pruned50_dynamic_int8", quantization="dynamic_int8"
    )


def klo_pruned50_sparse_dynamic_int8(ctx):
    """50% pruned, dynamic-range int8 weights stored in the sparse encoding."""
    return _finetuned_export(
        ctx,
        pruned50_shared(ctx),
        "klo_pruned50_sparse_dynamic_int8",
        quantization="dynamic_int8",
        sparse=True,
    )


def qat_shared(ctx):
    """The quantization-aware fine-tune (built once, cached), for every export of it."""

    def build():
        from keras_llmopt._src.quantization import quantize

        qat = quantize.quantize_model(ctx.model)
        logging.info("benchmark: quantization-aware fine-tune, %d steps", ctx.finetune_steps)
        ctx.train(qat, 1e-4)
        return qat

    return ctx.finetuned_model("klo_qat", build, 1e-4)


def klo_qat_int8(ctx):
    """Quantization-aware fine-tune (keras_llmopt.quantization), full-integer TFLite."""
    return _finetuned_export(ctx, qat_shared(ctx), "klo_qat_int8", quantization="int8")


def klo_cluster16(ctx):
    """16-cluster k-means weights (keras_llmopt.clustering), fine-tuned, stripped."""

    def build():
        from keras_llmopt._src.clustering import cluster as clustering

        clustered = clustering.cluster_weights(ctx.model, 16)
        logging.info("benchmark: clustering fine-tune, %d steps", ctx.finetune_steps)
        ctx.train(clustered, 1e-4)
        return clustering.strip_clustering(clustered)

    clustered = ctx.finetuned_model("klo_cluster16", build, 1e-4)
    return _finetuned_export(ctx, clustered, "klo_cluster16")


# name -> builder; the order is the table's order.
BUILTIN_VARIANTS = {
    "keras_fp32": keras_fp32,
    "tflite_fp32": _tflite_mode(None, "tflite_fp32"),
    "tflite_fp16": _tflite_mode("float16", "tflite_fp16"),
    "tflite_dynamic_int8": _tflite_mode("dynamic_int8", "tflite_dynamic_int8"),
    "tflite_full_int8_ptq": tflite_full_int8_ptq,
    "keras_int8": _keras_native("int8"),
    "keras_int4": _keras_native("int4"),
    "onnx_fp32": lambda ctx: onnx_fp32_shared(ctx),
    "onnx_dynamic_int8": onnx_dynamic_int8,
    "aeq_dynamic_int8": _aeq("dynamic_wi8_afp32", "aeq_dynamic_int8", "dynamic_int8"),
    "aeq_weight_only_int4": _aeq("weight_only_wi4_afp32", "aeq_weight_only_int4", "int4"),
    "tfmot_pruned50_whole_model": tfmot_pruned50_whole_model,
    "tfmot_pruned50_dynamic_int8": tfmot_pruned50_dynamic_int8,
    "tfmot_qat_int8": tfmot_qat_int8,
    "dense_finetuned_fp32": dense_finetuned_fp32,
    "klo_pruned50_sparse_tflite": klo_pruned50_sparse_tflite,
    "klo_pruned50_dynamic_int8": klo_pruned50_dynamic_int8,
    "klo_pruned50_sparse_dynamic_int8": klo_pruned50_sparse_dynamic_int8,
    "klo_qat_int8": klo_qat_int8,
    "klo_cluster16": klo_cluster16,
    **oneshot_variants.VARIANTS,
    **keras_native_variants.VARIANTS,
}
# Rows run only when named (``--benchmark_variants``, scripts/benchmark_structural.py), not
# by default nor in the demo: each trains several models (minutes on ``small``).
OPT_IN_VARIANTS = {**structural_variants.VARIANTS}


def _all_variants():
    found = {**BUILTIN_VARIANTS, **OPT_IN_VARIANTS}
    for name, (_, build) in registry.benchmark_variants().items():
        found.setdefault(name, build)
    return found


class _Variants(registry.LiveMapping):
    """The built-in variants, then every registered technique's (read live).

    Setting or deleting a name changes the built-in table (tests, local experiments).
    """

    def __setitem__(self, name, build):
        BUILTIN_VARIANTS[name] = build

    def __delitem__(self, name):
        del BUILTIN_VARIANTS[name]


VARIANTS = _Variants(_all_variants)
