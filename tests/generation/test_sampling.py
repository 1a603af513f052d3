"""The shared next-token sampler: reproducible, never outside its allowed set, checked args."""

import numpy as np
import pytest

from keras_llmopt._src.generation.sampling import Sampler, sampling_config

pytestmark = pytest.mark.backend_agnostic


def _logits(rows=4, vocab=50, seed=0):
    return np.random.default_rng(seed).normal(0.0, 3.0, (rows, vocab))


def _nucleus(row, top_p):
    """The smallest set of most likely tokens whose probability reaches top_p (a loop)."""
    probs = np.exp(row - row.max())
    probs /= probs.sum()
    chosen, mass = set(), 0.0
    for token in np.argsort(-probs, kind="stable"):
        if mass >= top_p:
            break
        chosen.add(int(token))
        mass += probs[token]
    return chosen


def test_greedy_is_argmax():
    logits = _logits()
    np.testing.assert_array_equal(Sampler(sampling_config())(logits), logits.argmax(-1))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sampler": "temperature", "temperature": 0.8},
        {"sampler": "top_k", "top_k": 5},
        {"sampler": "top_p", "top_p": 0.9},
    ],
)
def test_a_seed_reproduces_the_draws_and_another_seed_changes_them(kwargs):
    logits = _logits()

    def draws(seed):
        sampler = Sampler(sampling_config(seed=seed, **kwargs))
        return np.stack([sampler(logits) for _ in range(40)])

    np.testing.assert_array_equal(draws(7), draws(7))
    assert not np.array_equal(draws(7), draws(8))


def test_top_k_never_draws_outside_the_k_most_likely():
    logits = _logits(rows=8)
    sampler = Sampler(sampling_config("top_k", top_k=3, seed=0))
    top3 = np.argsort(-logits, axis=-1)[:, :3]
    for _ in range(200):
        picked = sampler(logits)
        assert all(picked[r] in top3[r] for r in range(len(picked)))


@pytest.mark.parametrize("top_p", [0.05, 0.5, 0.9, 1.0])
def test_top_p_draws_only_from_the_nucleus_and_allows_all_of_it(top_p):
    logits = _logits(rows=3, vocab=12)
    sampler = Sampler(sampling_config("top_p", top_p=top_p, seed=0))
    allowed = sampler.allowed(logits)
    for r in range(len(logits)):
        assert set(np.flatnonzero(allowed[r]).tolist()) == _nucleus(logits[r], top_p)
    for _ in range(200):
        picked = sampler(logits)
        assert all(allowed[r, picked[r]] for r in range(len(picked)))


def test_draw_frequencies_follow_the_tempered_softmax():
    logits = np.array([[0.0, np.log(3.0)]])
    sampler = Sampler(sampling_config("temperature", seed=0))
    ones = np.mean([sampler(logits)[0] for _ in range(4000)])
    assert abs(ones - 0.75) < 0.03
    hot = Sampler(sampling_config("temperature", temperature=1e6, seed=0))
    assert abs(np.mean([hot(logits)[0] for _ in range(4000)]) - 0.5) < 0.03


def test_masked_tokens_are_never_drawn():
    logits = np.array([[-np.inf, 1.0, np.nan, 0.5]])
    sampler = Sampler(sampling_config("temperature", seed=0))
    assert {int(sampler(logits)[0]) for _ in range(200)} <= {1, 3}
    with pytest.raises(ValueError, match="row 0 has no token to draw"):
        sampler(np.full((1, 4), -np.inf))


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"sampler": "beam"}, ValueError, r"`sampler` must be one of .*'beam'"),
        ({"temperature": 0.0}, ValueError, "`temperature` must be a finite number > 0"),
        ({"temperature": "hot"}, TypeError, "`temperature` must be a number"),
        ({"sampler": "top_k"}, ValueError, "sampler='top_k' needs top_k="),
        ({"sampler": "top_k", "top_k": 0}, ValueError, "`top_k` must be an int >= 1"),
        ({"sampler": "top_p"}, ValueError, "sampler='top_p' needs top_p="),
        ({"sampler": "top_p", "top_p": 1.5}, ValueError, r"`top_p` must be a number in \(0, 1\]"),
        ({"top_k": 3}, ValueError, "sampler='greedy' takes the most likely token"),
        ({"sampler": "top_k", "top_k": 2, "top_p": 0.5}, ValueError, "does not use top_p"),
        ({"seed": 1.5}, TypeError, "`seed` must be an int"),
        ({"stop_token_ids": [1, -2]}, ValueError, "`stop_token_ids` must be non-negative"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, error, message):
    with pytest.raises(error, match=message):
        sampling_config(**kwargs)


def test_stop_tokens_accept_one_id_or_many():
    assert sampling_config(stop_token_ids=3).stop_token_ids == (3,)
    assert sampling_config(stop_token_ids=np.array([1, 2])).stop_token_ids == (1, 2)
