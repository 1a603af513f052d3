"""Quantization schemes: how weights and activations of a whole model are quantized."""

import dataclasses


@dataclasses.dataclass(frozen=True)
class QuantizeScheme:
    """Bit widths and granularity for :func:`quantize_apply` (a small serializable config).

    Attributes:
        name: A label (the preset's name).
        weight_bits: Bits of the weights (symmetric, narrow range).
        weight_per_channel: One range per output channel (else one per tensor).
        weight_group_size: ``None``, or group-wise ranges of this many input rows
            (weight-only int4, for instance).
        activation_bits: Bits of the activations, or ``None`` for weight-only
            quantization (activations stay float).
        activation_symmetric: Symmetric activation ranges (16-bit: TFLite's 16x8
            mode needs a zero point of 0); 8-bit activations are asymmetric.
        momentum: Decay of the moving min/max activation observers.

    Example:
        >>> get_scheme("default_8bit").activation_bits
        8
        >>> get_scheme(QuantizeScheme(name="w4g32", weight_bits=4, weight_group_size=32,
        ...                           activation_bits=None)).weight_group_size
        32
    """

    name: str = "custom"
    weight_bits: int = 8
    weight_per_channel: bool = True
    weight_group_size: int | None = None
    activation_bits: int | None = 8
    activation_symmetric: bool = False
    momentum: float = 0.999

    def __post_init__(self):
        def bad(name, accepted):
            raise ValueError(
                f"QuantizeScheme: `{name}` must be {accepted}. "
                f"Received: {name}={getattr(self, name)!r}"
            )

        if isinstance(self.weight_bits, bool) or self.weight_bits not in range(2, 9):
            bad("weight_bits", "an integer in [2, 8]")
        if self.activation_bits is not None and (
            isinstance(self.activation_bits, bool) or self.activation_bits not in (8, 16)
        ):
            bad("activation_bits", "None, 8 or 16")
        if self.weight_group_size is not None and (
            isinstance(self.weight_group_size, bool)
            or not isinstance(self.weight_group_size, int)
            or self.weight_group_size < 1
        ):
            bad("weight_group_size", "None or a positive integer")
        if not isinstance(self.momentum, int | float) or not 0.0 <= self.momentum < 1.0:
            bad("momentum", "a number in [0, 1)")

    def get_config(self):
        """The scheme as a dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_config(cls, config):
        """Rebuilds a scheme from :meth:`get_config`."""
        return cls(**config)


SCHEMES = {
    "default_8bit": QuantizeScheme(name="default_8bit"),
    "8bit_weights_16bit_activations": QuantizeScheme(
        name="8bit_weights_16bit_activations", activation_bits=16, activation_symmetric=True
    ),
    "4bit_weights": QuantizeScheme(name="4bit_weights", weight_bits=4, activation_bits=None),
    "4bit_weights_group32": QuantizeScheme(
        name="4bit_weights_group32", weight_bits=4, weight_group_size=32, activation_bits=None
    ),
    "4bit_weights_group128": QuantizeScheme(
        name="4bit_weights_group128", weight_bits=4, weight_group_size=128, activation_bits=None
    ),
}


def get_scheme(scheme):
    """Resolves a scheme name or :class:`QuantizeScheme` to a :class:`QuantizeScheme`.

    Raises:
        ValueError: Unknown name (the accepted ones are listed).

    Example:
        >>> get_scheme("4bit_weights").weight_bits
        4
    """
    if isinstance(scheme, QuantizeScheme):
        return scheme
    if isinstance(scheme, str) and scheme in SCHEMES:
        return SCHEMES[scheme]
    raise ValueError(
        f"Unknown quantization scheme. Accepted: {', '.join(SCHEMES)} or a QuantizeScheme. "
        f"Received: scheme={scheme!r}"
    )
