"""Choosing the next token from logits: greedy, temperature, top-k and top-p sampling.

One sampler, in NumPy, serves every decoder (Keras models and LiteRT generator files
alike), so the same arguments and seed give the same tokens whichever runs the model.
Sampling follows the usual order: logits / temperature, then the top-k and top-p
filters, then one draw from the softmax of what is left.
"""

import dataclasses

import numpy as np

SAMPLERS = ("greedy", "top_k", "top_p", "temperature")


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """Validated sampling arguments (see :func:`sampling_config`).

    Attributes:
        sampler: One of ``SAMPLERS``.
        temperature: Logits are divided by it before a draw (> 0).
        top_k: Keep the ``top_k`` most likely tokens (``"top_k"``; optional for
            ``"top_p"`` and ``"temperature"``).
        top_p: Keep the smallest set of most likely tokens whose probability reaches
            ``top_p`` (``"top_p"``).
        seed: Seed of the draws (``None``: fresh entropy).
        stop_token_ids: Token ids that end a row's generation.

    Example:
        >>> sampling_config("top_k", top_k=5, seed=0).top_k
        5
    """

    sampler: str = "greedy"
    temperature: float = 1.0
    top_k: int = None
    top_p: float = None
    seed: int = None
    stop_token_ids: tuple = ()


def sampling_config(
    sampler="greedy", temperature=1.0, top_k=None, top_p=None, seed=None, stop_token_ids=None
):
    """Checks sampling arguments and returns them as a ``SamplingConfig``.

    Raises:
        ValueError / TypeError: naming the argument, what it received and what is
            accepted (an unknown sampler, a non-positive temperature, ``top_k`` < 1,
            ``top_p`` outside (0, 1], a filter the sampler does not use, a negative
            stop token).

    Example:
        >>> sampling_config("top_p", top_p=0.9, temperature=0.7).sampler
        'top_p'
        >>> sampling_config("top_k")
        Traceback (most recent call last):
        ...
        ValueError: sampler='top_k' needs top_k= (an int >= 1). Received: top_k=None
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"`sampler` must be one of {SAMPLERS}. Received: sampler={sampler!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"`temperature` must be a number > 0. Received: {temperature!r}")
    if not temperature > 0 or not np.isfinite(temperature):
        raise ValueError(f"`temperature` must be a finite number > 0. Received: {temperature!r}")
    if top_k is not None and (
        isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1
    ):
        raise ValueError(f"`top_k` must be an int >= 1 or None. Received: top_k={top_k!r}")
    if top_p is not None and (
        isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1
    ):
        raise ValueError(f"`top_p` must be a number in (0, 1] or None. Received: top_p={top_p!r}")
    if sampler == "top_k" and top_k is None:
        raise ValueError(f"sampler='top_k' needs top_k= (an int >= 1). Received: top_k={top_k}")
    if sampler == "top_p" and top_p is None:
        raise ValueError(
            f"sampler='top_p' needs top_p= (a number in (0, 1]). Received: top_p={top_p}"
        )
    if sampler == "greedy" and (top_k is not None or top_p is not None):
        raise ValueError(
            "sampler='greedy' takes the most likely token; top_k= and top_p= are for the "
            f"sampling samplers. Received: top_k={top_k!r}, top_p={top_p!r}"
        )
    if sampler == "top_k" and top_p is not None:
        raise ValueError(f"sampler='top_k' does not use top_p=. Received: top_p={top_p!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise TypeError(f"`seed` must be an int or None. Received: seed={seed!r}")
    stops = () if stop_token_ids is None else stop_token_ids
    if isinstance(stops, (int, np.integer)):
        stops = (stops,)
    stops = tuple(stops)
    if any(isinstance(t, bool) or not isinstance(t, (int, np.integer)) or t < 0 for t in stops):
        raise ValueError(
            "`stop_token_ids` must be non-negative ints. "
            f"Received: stop_token_ids={stop_token_ids!r}"
        )
    return SamplingConfig(
        sampler,
        float(temperature),
        None if top_k is None else int(top_k),
        None if top_p is None else float(top_p),
        None if seed is None else int(seed),
        tuple(int(t) for t in stops),
    )


class Sampler:
    """Picks the next token of each row from ``(batch, vocab)`` logits.

    Draws come from one ``numpy.random.Generator`` seeded once, so a run with the same
    seed and logits gives the same tokens.

    Args:
        config: A ``SamplingConfig``.

    Example:
        >>> sampler = Sampler(sampling_config("top_k", top_k=2, seed=0))
        >>> int(sampler(np.array([[0.0, 5.0, 4.0, -1.0]]))[0]) in (1, 2)
        True
    """

    def __init__(self, config):
        self.config = config
        self._rng = np.random.default_rng(config.seed)

    def allowed(self, logits):
        """A boolean mask of the tokens each row may draw from (top-k, then top-p).

        Example:
            >>> Sampler(sampling_config("top_k", top_k=1)).allowed(np.array([[1., 3., 2.]]))
            array([[False,  True, False]])
        """
        return self._allowed(np.asarray(logits, dtype=np.float64) / self.config.temperature)

    def _allowed(self, logits):
        """:meth:`allowed` on logits already divided by the temperature."""
        keep = logits > -np.inf  # NaN and -inf are never drawn
        vocab = logits.shape[-1]
        if self.config.sampler == "greedy":
            best = np.argmax(logits, axis=-1)
            return np.arange(vocab)[None, :] == best[:, None]
        if self.config.top_k is not None and self.config.top_k < vocab:
            # Ties at the k-th place go to the lower token id (a stable sort).
            order = np.argsort(-logits, axis=-1, kind="stable")
            ranks = np.empty_like(order)
            np.put_along_axis(ranks, order, np.arange(vocab)[None, :], axis=-1)
            keep &= ranks < self.config.top_k
        if self.config.top_p is not None:
            probs = _softmax(np.where(keep, logits, -np.inf))
            order = np.argsort(-probs, axis=-1, kind="stable")
            sorted_probs = np.take_along_axis(probs, order, axis=-1)
            # A token stays if the mass of the tokens ranked above it is below top_p.
            before = np.cumsum(sorted_probs, axis=-1) - sorted_probs
            nucleus = np.zeros_like(keep)
            np.put_along_axis(nucleus, order, before < self.config.top_p, axis=-1)
            keep &= nucleus
        return keep

    def __call__(self, logits):
        """The next token id of each row, an int32 array ``(batch,)``."""
        logits = np.asarray(logits, dtype=np.float64)
        if logits.ndim != 2:
            raise ValueError(f"Sampler needs (batch, vocab) logits. Received: shape={logits.shape}")
        if self.config.sampler == "greedy":
            return np.argmax(logits, axis=-1).astype(np.int32)
        tempered = logits / self.config.temperature
        keep = self._allowed(tempered)
        empty = np.flatnonzero(~keep.any(axis=-1))
        if empty.size:
            raise ValueError(
                f"Sampler: row {int(empty[0])} has no token to draw (every logit is -inf or NaN)."
            )
        probs = _softmax(np.where(keep, tempered, -np.inf))
        # In (0, 1]: the first token whose cumulative mass reaches it has mass > 0.
        draws = 1.0 - self._rng.random((logits.shape[0], 1))
        picked = (np.cumsum(probs, axis=-1) < draws).sum(axis=-1)
        # Rounding can leave the cumulative mass a hair under the draw: take the last
        # allowed token then, never one outside the allowed set.
        last_allowed = logits.shape[-1] - 1 - np.argmax(keep[:, ::-1], axis=-1)
        return np.minimum(picked, last_allowed).astype(np.int32)


def _softmax(logits):
    shifted = logits - np.max(logits, axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)
