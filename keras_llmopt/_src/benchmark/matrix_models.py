"""The model matrix's rows: tiny models of every decoder family users bring.

Each row is a builder returning a built, untrained Keras model from a tiny config
(vocabulary 256, 2 layers, hidden 32-64, ``preprocessor=None``): every KerasHub
``CausalLM`` that is a text decoder, the reference GPT, a functional GPT with a ReLU MLP,
a Sequential model and an unregistered subclassed model. KerasHub CausalLMs that are not
text decoders are listed in :data:`SKIPPED` with the reason, so that a family keras-hub
adds later is either a row or a listed skip (``tests/benchmark/test_model_matrix.py``
checks it).
"""

import dataclasses

import keras
import numpy as np

VOCAB = 256
HIDDEN = 32
INTERMEDIATE = 64
LAYERS = 2
MAX_LENGTH = 64


@dataclasses.dataclass(frozen=True)
class MatrixModel:
    """One row of the model matrix.

    Attributes:
        name: Row name (``"llama"``, ``"reference_gpt"``, ...).
        build: Zero-argument callable returning a built ``keras.Model``.
        kind: ``"keras_hub"`` (a KerasHub CausalLM) or ``"keras"`` (plain Keras).
        causal_lm: The KerasHub ``CausalLM`` class name it covers, or ``None``.
        description: A few words on what the row is.

    Example:
        >>> row = MODELS["sequential"]
        >>> row.kind, row.build().name
        ('keras', 'sequential_lm')
    """

    name: str
    build: object
    kind: str
    causal_lm: str | None = None
    description: str = ""


def _hub():
    import keras_hub

    return keras_hub


def _causal_lm(task, backbone_cls, **config):
    """A tiny KerasHub CausalLM (``preprocessor=None``) built on one batch."""
    keras_hub = _hub()
    keras.utils.set_random_seed(0)
    backbone = getattr(keras_hub.models, backbone_cls)(**config)
    model = getattr(keras_hub.models, task)(backbone=backbone, preprocessor=None)
    tokens = np.zeros((1, 8), "int32")
    batch = {"token_ids": tokens, "padding_mask": np.ones_like(tokens)}
    if "position_ids" in model.input:  # Gemma 4
        batch["position_ids"] = np.arange(8, dtype="int32")[None]
    model(batch)
    return model


def _hub_row(name, task, backbone_cls, description, **config):
    def build():
        return _causal_lm(task, backbone_cls, **config)

    build.__doc__ = f"A tiny {task} ({description})."
    return MatrixModel(name, build, "keras_hub", task, description)


_GQA = dict(vocabulary_size=VOCAB, num_layers=LAYERS, hidden_dim=HIDDEN)
_GQA.update(intermediate_dim=INTERMEDIATE, num_query_heads=4, num_key_value_heads=2)
_MHA = dict(vocabulary_size=VOCAB, num_layers=LAYERS, hidden_dim=HIDDEN)
_MHA.update(intermediate_dim=INTERMEDIATE, num_heads=2)
_GEMMA = dict(_GQA, head_dim=8)
_GEMMA2 = dict(
    _GEMMA,
    query_head_dim_normalize=False,
    use_post_ffw_norm=True,
    use_post_attention_norm=True,
    final_logit_soft_cap=30.0,
    attention_logit_soft_cap=50.0,
    use_sliding_window_attention=True,
    sliding_window_size=8,
)
_MOE = dict(_GQA, num_experts=4, top_k=2)
_QWEN_MOE = dict(_GQA, moe_intermediate_dim=32, num_experts=4, top_k=2)
_LINEAR = dict(
    layer_types=["linear_attention", "full_attention"],
    linear_num_key_heads=2,
    linear_num_value_heads=2,
    linear_key_head_dim=8,
    linear_value_head_dim=8,
)
_SMOL = dict(
    vocabulary_size=VOCAB,
    hidden_dim=HIDDEN,
    intermediate_dim=INTERMEDIATE,
    num_layers=LAYERS,
    num_attention_heads=4,
    num_key_value_heads=2,
    attention_bias=False,
    attention_dropout=0.0,
    rope_layer_enabled_list=[True, False],
    layer_types=["full_attention", "full_attention"],
    mlp_bias=False,
    layer_norm_epsilon=1e-6,
    max_position_embeddings=MAX_LENGTH,
    rope_theta=10000.0,
    partial_rotary_factor=1.0,
)

_HUB_ROWS = [
    _hub_row(
        "gpt2", "GPT2CausalLM", "GPT2Backbone", "GPT-2", max_sequence_length=MAX_LENGTH, **_MHA
    ),
    _hub_row("opt", "OPTCausalLM", "OPTBackbone", "OPT", max_sequence_length=MAX_LENGTH, **_MHA),
    _hub_row(
        "gpt_neox",
        "GPTNeoXCausalLM",
        "GPTNeoXBackbone",
        "GPT-NeoX, partial rotary",
        max_sequence_length=MAX_LENGTH,
        **_MHA,
    ),
    _hub_row(
        "falcon",
        "FalconCausalLM",
        "FalconBackbone",
        "Falcon, ALiBi",
        vocabulary_size=VOCAB,
        num_layers=LAYERS,
        num_attention_heads=2,
        hidden_dim=HIDDEN,
        intermediate_dim=INTERMEDIATE,
    ),
    _hub_row("bloom", "BloomCausalLM", "BloomBackbone", "Bloom, ALiBi", **_MHA),
    _hub_row("llama", "LlamaCausalLM", "LlamaBackbone", "Llama, RMSNorm + SwiGLU + RoPE", **_GQA),
    _hub_row("llama3", "Llama3CausalLM", "Llama3Backbone", "Llama 3", **_GQA),
    _hub_row("mistral", "MistralCausalLM", "MistralBackbone", "Mistral, sliding window", **_GQA),
    _hub_row("mixtral", "MixtralCausalLM", "MixtralBackbone", "Mixtral, sparse MoE", **_MOE),
    _hub_row("gemma", "GemmaCausalLM", "GemmaBackbone", "Gemma", **_GEMMA),
    _hub_row(
        "gemma2",
        "GemmaCausalLM",
        "GemmaBackbone",
        "Gemma 2 flags: soft caps, post norms",
        **_GEMMA2,
    ),
    _hub_row(
        "gemma3",
        "Gemma3CausalLM",
        "Gemma3Backbone",
        "Gemma 3, text only",
        image_size=None,
        **_GEMMA,
    ),
    _hub_row("qwen", "QwenCausalLM", "QwenBackbone", "Qwen", **_GQA),
    _hub_row("qwen2", "Qwen2CausalLM", "QwenBackbone", "Qwen 2", **_GQA),
    _hub_row("qwen3", "Qwen3CausalLM", "Qwen3Backbone", "Qwen 3, q/k norms", head_dim=8, **_GQA),
    _hub_row(
        "qwen_moe",
        "QwenMoeCausalLM",
        "QwenMoeBackbone",
        "Qwen MoE, shared expert",
        shared_expert_intermediate_dim=32,
        **_QWEN_MOE,
    ),
    _hub_row(
        "qwen3_moe", "Qwen3MoeCausalLM", "Qwen3MoeBackbone", "Qwen 3 MoE", head_dim=8, **_QWEN_MOE
    ),
    _hub_row(
        "phi3", "Phi3CausalLM", "Phi3Backbone", "Phi-3", max_sequence_length=MAX_LENGTH, **_GQA
    ),
    _hub_row("smollm", "SmolLMCausalLM", "SmolLM3Backbone", "SmolLM", **_SMOL),
    _hub_row("smollm3", "SmolLM3CausalLM", "SmolLM3Backbone", "SmolLM 3", **_SMOL),
    _hub_row(
        "gpt_oss",
        "GptOssCausalLM",
        "GptOssBackbone",
        "gpt-oss, MoE + sinks",
        num_experts=4,
        top_k=2,
        head_dim=8,
        sliding_window=8,
        **_GQA,
    ),
    _hub_row(
        "gemma4",
        "Gemma4CausalLM",
        "Gemma4Backbone",
        "Gemma 4, text only, position_ids input",
        image_size=None,
        sliding_window_size=8,
        sliding_window_pattern=2,
        **_GEMMA,
    ),
    _hub_row(
        "qwen3_5",
        "Qwen3_5CausalLM",
        "Qwen3_5Backbone",
        "Qwen 3.5, linear + full attention",
        head_dim=8,
        **_GQA,
        **_LINEAR,
    ),
    _hub_row(
        "qwen3_5_moe",
        "Qwen3_5MoeCausalLM",
        "Qwen3_5MoeBackbone",
        "Qwen 3.5 MoE, linear attention",
        vocabulary_size=VOCAB,
        num_layers=LAYERS,
        hidden_dim=HIDDEN,
        num_query_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        moe_intermediate_dim=32,
        shared_expert_intermediate_size=32,
        num_experts=4,
        top_k=2,
        **_LINEAR,
    ),
    _hub_row(
        "rwkv7",
        "RWKV7CausalLM",
        "RWKV7Backbone",
        "RWKV-7, recurrent (no attention)",
        hidden_size=HIDDEN,
        head_size=16,
        num_layers=LAYERS,
        vocabulary_size=VOCAB,
        intermediate_dim=INTERMEDIATE,
        gate_lora=8,
        mv_lora=8,
        aaa_lora=8,
        decay_lora=8,
    ),
]

# KerasHub CausalLMs that are not rows, and why.
SKIPPED = {
    "CausalLM": "the base class, not a model",
    "BLIP2CausalLM": "not a text decoder (vision-language, needs an image encoder)",
    "PaliGemmaCausalLM": "not a text decoder (vision-language, needs images)",
    "PARSeqCausalLM": "not a text decoder (scene-text recognition on images)",
    "Gemma3nCausalLM": (
        "not built: its text decoder needs the multimodal config (AltUp, per-layer "
        "inputs, audio tower)"
    ),
    "Gemma4AssistantCausalLM": "not a standalone decoder: a draft model for a Gemma 4 target",
}


# --- plain Keras rows -----------------------------------------------------------------


def reference_gpt():
    """The package's reference GPT (``reference.build_gpt("tiny")``).

    Example:
        >>> reference_gpt().name
        'gpt_tiny'
    """
    from keras_llmopt._src.reference.model import build_gpt

    return build_gpt("tiny", seed=0)


def relu_gpt():
    """A functional GPT whose MLP uses ``Activation("relu")`` between its two Dense.

    Example:
        >>> relu_gpt().name
        'relu_gpt'
    """
    keras.utils.set_random_seed(0)
    layers = keras.layers
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    positions = keras.ops.cumsum(keras.ops.ones_like(tokens), axis=1) - 1
    x = layers.Embedding(VOCAB, HIDDEN, name="token_embedding")(tokens)
    p = layers.Embedding(MAX_LENGTH, HIDDEN, name="position_embedding")(positions)
    x = layers.Add(name="embedding_sum")([x, p])
    for i in range(LAYERS):
        h = layers.LayerNormalization(name=f"block_{i}_ln1")(x)
        h = layers.MultiHeadAttention(2, HIDDEN // 2, name=f"block_{i}_attention")(
            h, h, use_causal_mask=True
        )
        x = layers.Add(name=f"block_{i}_add1")([x, h])
        h = layers.LayerNormalization(name=f"block_{i}_ln2")(x)
        h = layers.Dense(INTERMEDIATE, name=f"block_{i}_mlp_up")(h)
        h = layers.Activation("relu", name=f"block_{i}_relu")(h)
        h = layers.Dense(HIDDEN, name=f"block_{i}_mlp_down")(h)
        x = layers.Add(name=f"block_{i}_add2")([x, h])
    x = layers.LayerNormalization(name="final_ln")(x)
    return keras.Model(tokens, layers.Dense(VOCAB, name="lm_head")(x), name="relu_gpt")


def sequential_lm():
    """A Sequential model: Embedding, two Dense, a Dense to the vocabulary.

    Example:
        >>> sequential_lm().name
        'sequential_lm'
    """
    keras.utils.set_random_seed(0)
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input((None,), dtype="int32", name="tokens"),
            layers.Embedding(VOCAB, HIDDEN, name="token_embedding"),
            layers.Dense(INTERMEDIATE, activation="gelu", name="hidden_1"),
            layers.Dense(HIDDEN, activation="gelu", name="hidden_2"),
            layers.Dense(VOCAB, name="lm_head"),
        ],
        name="sequential_lm",
    )


class UnregisteredDecoder(keras.Model):
    """A subclassed decoder, deliberately not registered as Keras-serializable.

    Token embedding, one causal self-attention block with a SiLU MLP and a head; it
    declares no inputs, so it is taken to have one int32 ``tokens`` input. Its ``call``
    takes ``training`` (without it Keras runs the layers in inference mode in ``fit``
    and pruning warns that nothing will be pruned).

    Example:
        >>> model = UnregisteredDecoder()
        >>> model(np.zeros((1, 8), "int32")).shape
        TensorShape([1, 8, 256])
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        layers = keras.layers
        self.embed = layers.Embedding(VOCAB, HIDDEN, name="token_embedding")
        self.norm = layers.LayerNormalization(name="ln")
        self.attention = layers.MultiHeadAttention(2, HIDDEN // 2, name="attention")
        self.up = layers.Dense(INTERMEDIATE, activation="silu", name="mlp_up")
        self.down = layers.Dense(HIDDEN, name="mlp_down")
        self.head = layers.Dense(VOCAB, name="lm_head")

    def call(self, tokens, training=None):
        x = self.embed(tokens)
        h = self.norm(x)
        x = x + self.attention(h, h, use_causal_mask=True, training=training)
        x = x + self.down(self.up(x))
        return self.head(x)


def unregistered_subclass():
    """An :class:`UnregisteredDecoder`, built on a batch of 16 tokens.

    Example:
        >>> unregistered_subclass().name
        'unregistered_decoder'
    """
    keras.utils.set_random_seed(0)
    model = UnregisteredDecoder(name="unregistered_decoder")
    model(np.zeros((1, 16), "int32"))
    return model


_KERAS_ROWS = [
    MatrixModel("reference_gpt", reference_gpt, "keras", None, "reference GPT (functional)"),
    MatrixModel("relu_gpt", relu_gpt, "keras", None, "functional GPT, ReLU MLP"),
    MatrixModel("sequential", sequential_lm, "keras", None, "Sequential Embedding/Dense"),
    MatrixModel(
        "subclassed", unregistered_subclass, "keras", None, "unregistered subclassed keras.Model"
    ),
]

# Row name -> MatrixModel, in table order.
MODELS = {row.name: row for row in _KERAS_ROWS + _HUB_ROWS}


def keras_hub_causal_lms():
    """Every ``*CausalLM`` class name that ``keras_hub.models`` exports, sorted.

    Example:
        >>> "LlamaCausalLM" in keras_hub_causal_lms()
        True
    """
    return sorted(name for name in dir(_hub().models) if name.endswith("CausalLM"))


def uncovered_causal_lms():
    """KerasHub CausalLMs neither built by a row nor listed in :data:`SKIPPED`.

    Example:
        >>> uncovered_causal_lms()
        []
    """
    covered = {row.causal_lm for row in MODELS.values()} | set(SKIPPED)
    return [name for name in keras_hub_causal_lms() if name not in covered]


def select_models(names=None):
    """The rows named (all by default), in table order, or a ``ValueError``.

    Example:
        >>> [row.name for row in select_models(["llama", "sequential"])]
        ['sequential', 'llama']
    """
    if names is None:
        return list(MODELS.values())
    unknown = [name for name in names if name not in MODELS]
    if unknown:
        raise ValueError(
            f"Unknown model matrix families {unknown}. Accepted: {', '.join(MODELS)}. "
            f"Received: families={list(names)!r}"
        )
    return [row for row in MODELS.values() if row.name in set(names)]
