"""Configuration of the reference GPT and its named presets."""

import dataclasses

VOCAB_SIZE = 256  # byte-level tokens


@dataclasses.dataclass(frozen=True)
class GPTConfig:
    """Hyper-parameters of the reference byte-level GPT.

    Attributes:
        sequence_length: Longest input the model accepts (learned positions).
        d_model: Width of the residual stream.
        num_layers: Number of transformer blocks.
        num_heads: Attention heads per block; must divide ``d_model``.
        mlp_dim: Hidden width of each block's MLP.
        vocab_size: Number of token ids (256 for bytes).
        dropout: Dropout rate inside the blocks.
        gelu_approximate: Use the tanh approximation of GELU instead of exact GELU.
        layer_norm_epsilon: Epsilon of every LayerNormalization.
        name: Name given to the Keras model.

    Example:
        >>> config = GPTConfig.preset("tiny")
        >>> config.d_model
        64
        >>> GPTConfig(sequence_length=32, d_model=32, num_layers=1, num_heads=2, mlp_dim=64)
        GPTConfig(sequence_length=32, d_model=32, num_layers=1, num_heads=2, mlp_dim=64, ...)
    """

    sequence_length: int
    d_model: int
    num_layers: int
    num_heads: int
    mlp_dim: int
    vocab_size: int = VOCAB_SIZE
    dropout: float = 0.0
    gelu_approximate: bool = False
    layer_norm_epsilon: float = 1e-5
    name: str = "reference_gpt"

    def __post_init__(self):
        for field in ("sequence_length", "d_model", "num_layers", "num_heads", "mlp_dim"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(
                    f"GPTConfig: `{field}` must be a positive integer. Received: {field}={value!r}"
                )
        if self.d_model % self.num_heads:
            raise ValueError(
                "GPTConfig: `num_heads` must divide `d_model`. "
                f"Received: d_model={self.d_model}, num_heads={self.num_heads}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(
                f"GPTConfig: `dropout` must be in [0, 1). Received: dropout={self.dropout!r}"
            )

    @property
    def head_dim(self):
        """Width of one attention head."""
        return self.d_model // self.num_heads

    @classmethod
    def preset(cls, name):
        """Returns the named preset.

        Args:
            name: One of ``PRESETS`` (``"tiny"`` for tests, ``"small"`` for benchmarks).

        Returns:
            The preset's ``GPTConfig``.

        Raises:
            ValueError: If ``name`` is not a known preset.

        Example:
            >>> GPTConfig.preset("small").num_layers
            4
        """
        if isinstance(name, cls):
            return name
        try:
            return PRESETS[name]
        except (KeyError, TypeError):
            raise ValueError(
                f"Unknown reference GPT preset. Received: preset={name!r}; "
                f"accepted: {sorted(PRESETS)}"
            ) from None

    def to_dict(self):
        """Returns the config as a plain JSON-serializable dict.

        Example:
            >>> GPTConfig.preset("tiny").to_dict()["num_heads"]
            2
        """
        return dataclasses.asdict(self)


PRESETS = {
    # Trains in well under a minute on 2 CPU cores: the test-suite model.
    "tiny": GPTConfig(
        sequence_length=64, d_model=64, num_layers=2, num_heads=2, mlp_dim=256, name="gpt_tiny"
    ),
    # About 3.3M parameters: the benchmark model.
    "small": GPTConfig(
        sequence_length=128, d_model=256, num_layers=4, num_heads=4, mlp_dim=1024, name="gpt_small"
    ),
}

# Default training budgets (steps of batch 16) used by `trained_model` and the CLI.
DEFAULT_TRAIN_STEPS = {"tiny": 300, "small": 1000}
DEFAULT_LEARNING_RATE = {"tiny": 3e-3, "small": 2e-3}
