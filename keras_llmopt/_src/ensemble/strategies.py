"""The combination maths of an ensemble, in ``keras.ops`` (TensorFlow and JAX).

Every function takes the members' outputs already converted to a common form (log
probabilities or logits, shape ``(members, ..., classes)``) and the mixture weights as
log weights, so the same code serves fixed and learned weights.
"""

from keras import ops

STRATEGIES = ("weighted", "vote", "logit_mean", "prob_mean")
OUTPUTS = ("log_probs", "probabilities", "logits")
VOTE_OUTPUTS = ("counts", "one_hot")
MEMBER_OUTPUTS = ("auto", "logits", "probabilities")

# Probabilities are floored before their log so a member that assigns an exact zero
# gives a large finite penalty rather than -inf (float32 keeps 1e-30 as a normal number).
PROBABILITY_FLOOR = 1e-30


def member_log_probs(output, kind):
    """Converts one member output to log probabilities over the last axis.

    Args:
        output: The member's output tensor.
        kind: ``"logits"`` or ``"probabilities"``.

    Returns:
        float32 log probabilities of the same shape.
    """
    output = ops.cast(output, "float32")
    if kind == "probabilities":
        return ops.log(ops.maximum(output, PROBABILITY_FLOOR))
    return ops.log_softmax(output, axis=-1)


def member_logits(output, kind):
    """Converts one member output to logits (log probabilities for probability members)."""
    output = ops.cast(output, "float32")
    if kind == "probabilities":
        return ops.log(ops.maximum(output, PROBABILITY_FLOOR))
    return output


def _expand_weights(values, rank):
    """Reshapes a ``(members,)`` vector to broadcast over ``(members, ..., classes)``."""
    return ops.reshape(values, (-1,) + (1,) * (rank - 1))


def mixture_log_probs(log_probs, log_weights):
    """Log of the weighted mean of the members' probabilities.

    ``log(sum_i w_i p_i)`` is computed as ``logsumexp_i(log w_i + log p_i)``, so tokens
    that every member finds unlikely keep a finite, exact log probability.

    Args:
        log_probs: ``(members, ..., classes)`` member log probabilities.
        log_weights: ``(members,)`` log of convex weights.

    Returns:
        ``(..., classes)`` log probabilities of the mixture.
    """
    weighted = log_probs + _expand_weights(log_weights, len(log_probs.shape))
    return ops.logsumexp(weighted, axis=0)


def mean_logits(logits, weights):
    """Weighted mean of the members' logits (a normalized geometric mixture)."""
    return ops.sum(logits * _expand_weights(weights, len(logits.shape)), axis=0)


def first_max_one_hot(scores):
    """One-hot of the largest score over the last axis; ties go to the lowest index.

    Written with comparisons and a cumulative sum rather than ``argmax``: on TensorFlow
    ``keras.ops.argmax`` lowers to a ``BitwiseAnd`` that the TFLite converter rejects.

    Args:
        scores: ``(..., classes)`` float scores.

    Returns:
        float32 ``(..., classes)`` with a single 1 per position.
    """
    scores = ops.cast(scores, "float32")
    is_max = ops.cast(ops.greater_equal(scores, ops.max(scores, axis=-1, keepdims=True)), "float32")
    return is_max * ops.cast(ops.equal(ops.cumsum(is_max, axis=-1), 1.0), "float32")


def vote_counts(outputs, weights):
    """Weighted share of the members' votes for each class.

    Each member votes for the argmax of its output at every position (its own ties go to
    the lowest class index).

    Args:
        outputs: ``(members, ..., classes)`` member outputs (any monotone form).
        weights: ``(members,)`` convex vote weights.

    Returns:
        ``(..., classes)`` vote shares summing to one at each position.
    """
    votes = first_max_one_hot(outputs)
    return ops.sum(votes * _expand_weights(weights, len(votes.shape)), axis=0)


def vote_winner(counts):
    """One-hot of the class with most votes; ties go to the lowest class index."""
    return first_max_one_hot(counts)


def smooth(distribution, epsilon):
    """Mixes a distribution with the uniform one: ``(1 - eps) * d + eps / classes``."""
    num_classes = distribution.shape[-1]
    return (1.0 - epsilon) * distribution + epsilon / num_classes
