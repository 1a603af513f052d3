"""Structural pruning of KerasHub CausalLMs: the same class from a smaller config, still generating.

The tiny Llama (GQA) and Gemma models carry a real preprocessor (a SentencePiece
tokenizer trained here on a few sentences, offline), so they calibrate on strings,
generate text, and save to ``.keras`` files that KerasHub loads alone.
"""

import io
import json
import os
import subprocess
import sys
import textwrap

import keras
import keras_hub
import numpy as np
import pytest
import sentencepiece

from keras_llmopt import llm
from keras_llmopt._src.benchmark import matrix_models

TEXT = [
    "the quick brown fox jumps over the lazy dog",
    "a small model says hello to the world",
    "pruning removes whole heads and channels",
    "the dog sleeps while the fox runs",
] * 4
PROMPT = "the quick"
SPECIAL = {
    "llama": dict(bos_piece="<s>", eos_piece="</s>"),
    "gemma": dict(bos_piece="<bos>", eos_piece="<eos>"),
}
SIZES = dict(num_layers=2, num_query_heads=4, num_key_value_heads=2, hidden_dim=32)


def _proto(family):
    out = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(TEXT),
        model_writer=out,
        vocab_size=40,
        hard_vocab_limit=False,
        model_type="WORD",
        pad_id=0,
        bos_id=1,
        eos_id=2,
        unk_id=3,
        pad_piece="<pad>",
        unk_piece="<unk>",
        minloglevel=2,
        **SPECIAL[family],
    )
    return out.getvalue()


def _build(family):
    """A tiny Llama or Gemma CausalLM with a preprocessor (4 query heads, 2 kv heads)."""
    keras.utils.set_random_seed(0)
    if family == "llama":
        tokenizer = keras_hub.models.LlamaTokenizer(proto=_proto(family))
        preprocessor = keras_hub.models.LlamaCausalLMPreprocessor(tokenizer, sequence_length=16)
        backbone = keras_hub.models.LlamaBackbone(
            vocabulary_size=tokenizer.vocabulary_size(), intermediate_dim=64, **SIZES
        )
        return keras_hub.models.LlamaCausalLM(backbone=backbone, preprocessor=preprocessor)
    tokenizer = keras_hub.models.GemmaTokenizer(proto=_proto(family))
    preprocessor = keras_hub.models.GemmaCausalLMPreprocessor(tokenizer, sequence_length=16)
    backbone = keras_hub.models.GemmaBackbone(
        vocabulary_size=tokenizer.vocabulary_size(), intermediate_dim=64, head_dim=8, **SIZES
    )
    return keras_hub.models.GemmaCausalLM(backbone=backbone, preprocessor=preprocessor)


def _batch(vocab, seed=0):
    ids = np.random.default_rng(seed).integers(4, vocab, (2, 12)).astype("int32")
    return {"token_ids": ids, "padding_mask": np.ones_like(ids, bool)}


def _logits(model, batch):
    return np.asarray(model(batch, training=False))


def _config(model):
    return model.backbone.get_config()


_LOADER = textwrap.dedent(
    """
    import json, sys
    import keras, keras_hub, numpy as np
    folder, prompt = sys.argv[1], sys.argv[2]
    out = {"imported_keras_llmopt": any(m.startswith("keras_llmopt") for m in sys.modules)}
    for family in ("llama", "gemma"):
        model = keras.saving.load_model(f"{folder}/{family}.keras")
        batch = dict(np.load(f"{folder}/{family}_batch.npz"))
        np.save(f"{folder}/{family}_loaded.npy", np.asarray(model(batch)))
        out[family] = {
            "class": type(model).__name__,
            "config": model.backbone.get_config(),
            "text": model.generate(prompt, max_length=10),
        }
    out["imported_keras_llmopt"] |= any(m.startswith("keras_llmopt") for m in sys.modules)
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """Both families pruned, saved, and reloaded in a process importing only keras/keras_hub."""
    folder = tmp_path_factory.mktemp("hub_structural")
    results = {}
    for family in ("llama", "gemma"):
        model = _build(family)
        weights = [np.array(w) for w in model.get_weights()]
        if family == "llama":  # one call per config
            small = llm.prune_ffn(model, TEXT, fraction=0.5, num_samples=8)
            small = llm.prune_layers(small, TEXT, num_layers=1, num_samples=8)
        else:  # one recipe
            recipe = [llm.HeadPruning(0.5), llm.FFNPruning(0.5), llm.DepthPruning(1)]
            small = llm.oneshot(model, TEXT, recipe, num_samples=8)
        batch = _batch(_config(model)["vocabulary_size"])
        np.savez(folder / f"{family}_batch.npz", **batch)
        small.save(folder / f"{family}.keras")
        results[family] = dict(
            model=model,
            weights=weights,
            small=small,
            logits=_logits(small, batch),
            text=small.generate(PROMPT, max_length=10),
        )
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run(
        [sys.executable, "-c", _LOADER, str(folder), PROMPT],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    for family in results:
        results[family]["loaded"] = loaded[family]
        results[family]["loaded_logits"] = np.load(folder / f"{family}_loaded.npy")
    results["imported_keras_llmopt"] = loaded["imported_keras_llmopt"]
    return results


def test_llama_ffn_and_depth_pruning_shrink_its_config(pruned):
    model, small = pruned["llama"]["model"], pruned["llama"]["small"]
    assert type(small) is keras_hub.models.LlamaCausalLM
    before, after = _config(model), _config(small)
    assert (before["intermediate_dim"], after["intermediate_dim"]) == (64, 32)
    assert (before["num_layers"], after["num_layers"]) == (2, 1)
    assert (after["num_query_heads"], after["num_key_value_heads"]) == (4, 2)
    assert after["hidden_dim"] == before["hidden_dim"]
    assert len(small.backbone.transformer_layers) == 1
    assert small.preprocessor is not None
    assert small.structural_report.parameters_after == small.count_params()
    assert small.count_params() < model.count_params()


def test_gemma_head_ffn_and_depth_pruning_shrink_its_config(pruned):
    model, small = pruned["gemma"]["model"], pruned["gemma"]["small"]
    assert type(small) is keras_hub.models.GemmaCausalLM
    assert small.count_params() < model.count_params()
    after = _config(small)
    assert (after["num_query_heads"], after["num_key_value_heads"]) == (2, 1)  # a whole group
    assert after["head_dim"] == 8
    assert after["intermediate_dim"] == 32  # Gemma's config holds twice the MLP width
    assert after["num_layers"] == 1
    reports = small.structural_reports
    assert [r.method.split()[0] for r in reports] == [
        "head_pruning",
        "ffn_pruning",
        "depth_pruning",
    ]
    heads = [c for c in reports[0].changes if c["kind"] == "heads"]
    assert len(heads) == 2 and all(c["removed"] in ([0, 1], [2, 3]) for c in heads)
    layer = small.backbone.transformer_layers[0]
    shapes = {w.path.split("/", 1)[1]: tuple(w.shape) for w in layer.weights}
    assert shapes["attention/query/kernel"] == (2, 32, 8)
    assert shapes["attention/key/kernel"] == (1, 32, 8)
    assert shapes["ffw_linear/kernel"] == (16, 32)


@pytest.mark.parametrize("family", ["llama", "gemma"])
def test_the_files_reload_with_keras_hub_alone_and_generate(pruned, family):
    result = pruned[family]
    assert pruned["imported_keras_llmopt"] is False
    assert result["loaded"]["class"] == type(result["small"]).__name__
    assert result["loaded"]["config"] == json.loads(json.dumps(_config(result["small"])))
    np.testing.assert_allclose(result["loaded_logits"], result["logits"], atol=1e-5)
    for text in (result["text"], result["loaded"]["text"]):
        assert isinstance(text, str) and text.startswith(PROMPT) and len(text) > len(PROMPT)


@pytest.mark.parametrize("family", ["llama", "gemma"])
def test_the_users_model_is_unchanged(pruned, family):
    model, weights = pruned[family]["model"], pruned[family]["weights"]
    assert _config(model)["num_layers"] == 2 and _config(model)["intermediate_dim"] == 64
    for old, new in zip(weights, model.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)


# --- planted structures: what goes is known, the function is kept ---------------------------


def _zero(weight, index=None):
    value = np.array(weight)
    if index is None:
        value[...] = 0.0
    else:
        value[index] = 0.0
    weight.assign(value)


def test_gemma_planted_head_groups_go_and_the_logits_are_kept():
    model = _build("gemma")
    found = llm.find_structures(model)
    planted = {0: [0, 1], 1: [2, 3]}  # group 0 in block 0, group 1 in block 1
    for record in found.attention:
        assert tuple(record.output.kernel.shape) == (4, 8, 32)
        _zero(record.output.kernel, planted[record.block])
    batch = _batch(_config(model)["vocabulary_size"], seed=1)
    before = _logits(model, batch)
    small = llm.prune_heads(model, TEXT, fraction=0.5, num_samples=8)
    removed = [c["removed"] for c in small.structural_report.changes]
    assert removed == [planted[0], planted[1]]
    np.testing.assert_allclose(_logits(small, batch), before, atol=1e-5)


def test_llama_planted_channels_and_identity_block_go_and_the_logits_are_kept():
    model = _build("llama")
    found = llm.find_structures(model)
    rng = np.random.default_rng(0)
    channels = {m.block: sorted(rng.choice(64, 16, replace=False).tolist()) for m in found.mlps}
    for record in found.mlps:
        assert len(record.ups) == 2  # the gate and the up projections
        _zero(record.down.kernel, channels[record.block])
    block = model.backbone.transformer_layers[1]  # block 1 leaves the stream as it is
    _zero(found.attention[1].output.kernel)
    _zero(found.mlps[1].down.kernel)
    batch = _batch(_config(model)["vocabulary_size"], seed=1)
    before = _logits(model, batch)
    small = llm.prune_ffn(model, TEXT, intermediate_dim=48, num_samples=8)
    mlp = {c["path"]: c["removed"] for c in small.structural_report.changes}
    assert mlp[found.mlps[0].path] == channels[0]
    assert _config(small)["intermediate_dim"] == 48
    np.testing.assert_allclose(_logits(small, batch), before, atol=1e-5)
    shallow = llm.prune_layers(small, TEXT, num_layers=1, num_samples=8)
    assert [c["removed"] for c in shallow.structural_report.changes] == [[1]]
    assert shallow.structural_report.changes[0]["path"].endswith(block.name)
    np.testing.assert_allclose(_logits(shallow, batch), before, atol=1e-5)


def test_a_backbone_alone_is_pruned_into_a_backbone():
    model = _build("gemma").backbone
    small = llm.prune_ffn(model, _batch(model.vocabulary_size), fraction=0.5)
    assert type(small) is keras_hub.models.GemmaBackbone
    assert small.get_config()["intermediate_dim"] == 32
    assert _logits(small, _batch(model.vocabulary_size)).shape == (2, 12, 32)


@pytest.mark.parametrize("teacher", ["distill", "fine_tune"])
def test_recovery_trains_a_pruned_causal_lm_that_has_a_preprocessor(teacher):
    model = _build("gemma")
    student = llm.prune_ffn(model, TEXT, fraction=0.5, num_samples=8)
    vocab = _config(model)["vocabulary_size"]
    windows = np.random.default_rng(0).integers(4, vocab, (8, 13)).astype("int32")
    before = [np.array(w) for w in student.get_weights()]
    llm.recover(
        student, model if teacher == "distill" else None, windows, steps=2, batch_size=4, verbose=0
    )
    assert np.isfinite(student.recovery_history.history["loss"][0])
    assert any(not np.array_equal(a, b) for a, b in zip(before, student.get_weights()))
    text = student.generate(PROMPT, max_length=8)
    assert isinstance(text, str) and text.startswith(PROMPT)


# --- refusals ----------------------------------------------------------------------------


def test_llama_head_pruning_is_refused_for_lack_of_head_dim():
    model = _build("llama")
    weights = [np.array(w) for w in model.get_weights()]
    with pytest.raises(ValueError, match=r"LlamaBackbone.*head_dim"):
        llm.prune_heads(model, TEXT, fraction=0.5, num_samples=8)
    for old, new in zip(weights, model.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)


@pytest.mark.parametrize("family", ["gpt2", "opt", "qwen2", "phi3", "mixtral"])
def test_families_without_a_head_dim_argument_refuse_head_pruning(family):
    model = matrix_models.MODELS[family].build()
    with pytest.raises(ValueError, match=r"cannot remove attention heads.*head_dim"):
        llm.prune_heads(model, None, fraction=0.5, importance="magnitude")


@pytest.mark.parametrize("family", ["falcon", "bloom", "gpt_neox"])
def test_fused_or_flattened_attention_has_no_heads_to_prune(family):
    model = matrix_models.MODELS[family].build()
    with pytest.raises(ValueError, match=r"no attention heads.*no per-head projections"):
        llm.prune_heads(model, None, fraction=0.5, importance="magnitude")


def test_mixtral_ffn_pruning_is_refused_naming_the_experts():
    model = matrix_models.MODELS["mixtral"].build()
    with pytest.raises(ValueError, match=r"FFNPruning: no MLP.*no dense MLP \(experts\?\)"):
        llm.prune_ffn(model, None, fraction=0.5, importance="magnitude")


@pytest.mark.parametrize(
    "settings, fragment",
    [
        (dict(allocation="global"), r"allocation='global'"),
        (dict(targets="*decoder_block_0*"), r"`targets` / `ignore`"),
    ],
)
def test_per_layer_sizes_are_refused_on_keras_hub(settings, fragment):
    model = _build("gemma")
    for prune in (llm.prune_heads, llm.prune_ffn):
        with pytest.raises(ValueError, match=fragment):
            prune(model, TEXT, fraction=0.5, num_samples=8, **settings)
