"""Model soups: averaging the weights of same-architecture models into one model."""

import copy
import dataclasses
import math

import numpy as np
from absl import logging

from keras_llmopt._src.ensemble import members as members_lib


def _check_same_architecture(models, owner):
    """Raises ``ValueError`` naming the member and weight where the models differ."""
    first = models[0]
    first_weights = first.weights
    for i, model in enumerate(models[1:], start=1):
        weights = model.weights
        if len(weights) != len(first_weights):
            raise ValueError(
                f"{owner}: {members_lib.describe(i, model)} has {len(weights)} weights but "
                f"{members_lib.describe(0, first)} has {len(first_weights)}; a soup needs "
                "models of the same architecture."
            )
        for w, ref in zip(weights, first_weights):
            if tuple(w.shape) != tuple(ref.shape):
                raise ValueError(
                    f"{owner}: {members_lib.describe(i, model)} differs from "
                    f"{members_lib.describe(0, first)} at weight {w.path!r}: shape "
                    f"{tuple(w.shape)} against {tuple(ref.shape)} (of {ref.path!r}); a soup "
                    "needs models of the same architecture."
                )


def _average(weight_lists, coefficients):
    """Weighted average of aligned lists of numpy weights (float weights only).

    Non-float weights (counters, integer tables) are taken from the first model.
    """
    averaged = []
    for values in zip(*weight_lists):
        first = np.asarray(values[0])
        if not np.issubdtype(first.dtype, np.floating):
            averaged.append(first.copy())
            continue
        total = np.zeros(first.shape, "float64")
        for c, v in zip(coefficients, values):
            total += c * np.asarray(v, "float64")
        averaged.append(total.astype(first.dtype))
    return averaged


def average_weights(models, weights=None):
    """Averages the weights of same-architecture models into a new model (a "model soup").

    The result is a copy of the first model (``copy.deepcopy``) holding the uniform or
    weighted mean of every floating-point weight (non-float state such as counters is
    taken from the first model). The input models are not modified. A soup is one model:
    it costs what a member costs at inference, unlike an ensemble, and works when the
    members are close in weight space (fine-tuned from one base).

    Args:
        models: Keras models with the same architecture (same number and shapes of
            weights, in the same order).
        weights: Optional non-negative weight per model (normalized to sum to one);
            uniform by default.

    Returns:
        A new Keras model with the averaged weights.

    Raises:
        ValueError: No models, weights of the wrong length or sign, or models whose
            weights differ in number or shape (the message names the member and the first
            mismatching weight).
        TypeError: An entry that is not a Keras model.

    Example:
        >>> from keras_llmopt import ensemble, reference
        >>> members = [reference.build_gpt("tiny", seed=s) for s in (0, 1)]
        >>> soup = ensemble.average_weights(members, weights=[3, 1])
        >>> soup.count_params() == members[0].count_params()
        True
    """
    models = members_lib.check_models(models, owner="average_weights")
    coefficients = members_lib.check_weights(weights, len(models), owner="average_weights")
    _check_same_architecture(models, "average_weights")
    averaged = _average([m.get_weights() for m in models], coefficients)
    soup = copy.deepcopy(models[0])
    soup.set_weights(averaged)
    return soup


@dataclasses.dataclass
class GreedySoupDetails:
    """What ``greedy_soup`` tried.

    Attributes:
        ingredients: Indices (into the given list) of the models in the soup, in the
            order they were added.
        member_scores: ``eval_fn`` of each model alone, in the given order.
        soup_score: ``eval_fn`` of the returned soup.
        trials: ``(index, score_with_it, accepted)`` for each model tried after the first.

    Example:
        What ``greedy_soup(..., return_details=True)`` returns for the three models of its
        own example (errors 0.09, 0.04 and 16.0 alone):

        >>> details = GreedySoupDetails(
        ...     ingredients=[1, 0], member_scores=[0.09, 0.04, 16.0], soup_score=0.0025,
        ...     trials=[(0, 0.0025, True), (2, 1.87, False)])
        >>> details.ingredients  # the best model first, then those that help
        [1, 0]
        >>> [index for index, _, accepted in details.trials if not accepted]  # left out
        [2]
    """

    ingredients: list
    member_scores: list
    soup_score: float
    trials: list


def _score(eval_fn, model, what):
    value = eval_fn(model)
    try:
        value = float(value)
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"greedy_soup: `eval_fn` must return a number; for {what} it returned "
            f"{value!r} of type {type(value).__name__}."
        ) from error
    return value


def greedy_soup(models, eval_fn, higher_is_better=False, return_details=False):
    """Builds a greedy model soup: adds a model only if the held-out score improves.

    Following the model-soups recipe, the models are first ranked by their own score.
    The soup starts as the best model; each next model in rank order is added (the soup
    is the uniform average of its ingredients) only if ``eval_fn`` of the resulting soup
    is strictly better than the current soup's. The input models are not modified.

    Args:
        models: Same-architecture Keras models.
        eval_fn: Callable ``eval_fn(model) -> float`` on held-out data, e.g. the loss or
            bits per byte from ``reference.evaluate``. It is called on each model and on
            a working copy whose weights change between calls.
        higher_is_better: ``False`` (default) for losses, bits per byte or perplexity;
            ``True`` for accuracy-like scores.
        return_details: Also return a ``GreedySoupDetails``.

    Returns:
        The soup model, or ``(soup, details)`` when ``return_details=True``.

    Raises:
        ValueError: No models or models of different architectures.
        TypeError: ``eval_fn`` not callable or not returning a number.

    Example:
        Fine-tuned copies of one model, scored by mean squared error on held-out data:

        >>> import keras, numpy as np
        >>> from keras_llmopt import ensemble
        >>> def finetuned(scale):
        ...     model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
        ...     model.set_weights([np.full((1, 1), scale, "float32"), np.zeros(1, "float32")])
        ...     return model
        >>> x = np.ones((4, 1), "float32")
        >>> def error(model):  # the target is y = 1.0 * x
        ...     return float(np.mean((model.predict(x, verbose=0) - x) ** 2))
        >>> members = [finetuned(1.3), finetuned(0.8), finetuned(5.0)]
        >>> soup, details = ensemble.greedy_soup(members, error, return_details=True)
        >>> details.ingredients, round(details.soup_score, 6)
        ([1, 0], 0.0025)

        For a language model, ``eval_fn`` can be
        ``lambda m: reference.evaluate(m, corpus).bpb``.
    """
    models = members_lib.check_models(models, owner="greedy_soup")
    if not callable(eval_fn):
        raise TypeError(
            f"greedy_soup: `eval_fn` must be callable as eval_fn(model) -> float. "
            f"Received: eval_fn={eval_fn!r}"
        )
    _check_same_architecture(models, "greedy_soup")

    def better(a, b):
        if math.isnan(a):
            return False
        if math.isnan(b):
            return True
        return a > b if higher_is_better else a < b

    scores = [_score(eval_fn, m, members_lib.describe(i, m)) for i, m in enumerate(models)]
    worst = -math.inf if higher_is_better else math.inf
    order = sorted(
        range(len(models)),
        key=lambda i: worst if math.isnan(scores[i]) else scores[i],
        reverse=higher_is_better,
    )
    values = [m.get_weights() for m in models]
    ingredients = [order[0]]
    soup_score = scores[order[0]]
    logging.info("greedy_soup: starting from member %d (score %.6g)", order[0], soup_score)
    soup = copy.deepcopy(models[order[0]])
    trials = []
    for i in order[1:]:
        candidate = ingredients + [i]
        soup.set_weights(
            _average([values[j] for j in candidate], [1.0 / len(candidate)] * len(candidate))
        )
        score = _score(eval_fn, soup, f"the soup of members {candidate}")
        accepted = better(score, soup_score)
        trials.append((i, score, accepted))
        logging.info(
            "greedy_soup: member %d -> score %.6g (%s)",
            i,
            score,
            "added" if accepted else "left out",
        )
        if accepted:
            ingredients, soup_score = candidate, score
    soup.set_weights(
        _average([values[j] for j in ingredients], [1.0 / len(ingredients)] * len(ingredients))
    )
    if return_details:
        return soup, GreedySoupDetails(ingredients, scores, soup_score, trials)
    return soup
