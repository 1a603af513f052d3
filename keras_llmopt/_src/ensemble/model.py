"""``EnsembleModel``: several models with the same inputs and outputs, fused into one."""

import math

import keras
import numpy as np
from keras import ops

from keras_llmopt._src.ensemble import members as members_lib
from keras_llmopt._src.ensemble import strategies
from keras_llmopt._src.ensemble.freeze import TrainsOnlyOwnVariables

# Logit given to a member whose weight is exactly zero: softmax maps it to an exact 0,
# and unlike -inf it keeps every gradient and logsumexp finite.
_ZERO_WEIGHT_LOGIT = -1e9


@keras.saving.register_keras_serializable(package="keras_llmopt")
class EnsembleModel(TrainsOnlyOwnVariables, keras.Model):
    """A Keras model that fuses the outputs of several member models.

    The members must share input and output structure (for a language model: tokens in,
    per-position class scores out; for a classifier: features in, class scores out). The
    ensemble calls each member on the same inputs and combines their outputs over the last
    axis, per position:

    - ``"weighted"``: weighted mean of the members' probabilities, ``sum_i w_i p_i``
      (weights normalized to sum to one; uniform by default).
    - ``"prob_mean"``: the same with uniform weights (``weights`` must be ``None``).
    - ``"logit_mean"``: weighted mean of the members' logits, i.e. a normalized
      geometric mixture of their distributions. Members that output probabilities
      contribute their log probabilities.
    - ``"vote"``: each member votes for its argmax class at every position (a member's
      own ties go to its lowest class index); ``weights`` weight the votes. The result is
      the share of votes per class (``vote_output="counts"``) or a one-hot of the winning
      class (``vote_output="one_hot"``); a tie between classes is broken in favour of
      the **lowest class index** among the tied classes.

    What the ensemble returns (``output``):

    - ``"log_probs"`` (default): log probabilities of the fused distribution. They are
      valid logits for a softmax cross-entropy, so the ensemble trains, evaluates and
      exports like any language model that outputs logits (``softmax`` of them is the
      fused distribution itself).
    - ``"probabilities"``: the fused distribution (for ``"vote"``: the vote shares or
      one-hot, unsmoothed).
    - ``"logits"``: for ``"logit_mean"`` the raw (unnormalized) mean logits; for the
      other strategies the same as ``"log_probs"``.

    A vote distribution has exact zeros, which would make the cross-entropy (and bits per
    byte) infinite. With ``output="log_probs"`` or ``"logits"`` the vote distribution is
    therefore smoothed first, ``(1 - vote_epsilon) * votes + vote_epsilon / classes``
    (``vote_epsilon=0.01`` by default), so its loss is finite but dominated by that floor
    whenever the vote is wrong; compare vote ensembles by accuracy rather than loss.

    Whether a member outputs logits or probabilities is declared with ``member_outputs``
    (one value, or one per member) or detected (``"auto"``, the default): a member whose
    last layer is a ``Softmax`` layer or has a softmax activation, or whose outputs on a
    probe batch are non-negative and sum to one, outputs probabilities. The result of the
    detection is stored in the config.

    The ensemble never trains its members: they are always called with
    ``training=False`` and their variables are reported as non-trainable (their own
    ``trainable`` flags are left untouched). With ``trainable_weights=True`` (strategies
    ``"weighted"`` and ``"logit_mean"``) the mixture weights are a trainable variable
    (``mixture_logits``, softmax-normalized), so ``compile`` + ``fit`` on held-out data
    learns them while the members stay frozen. A weight of exactly zero stays zero.

    The ensemble saves to and loads from ``.keras`` with its members, and exports like any
    model.

    Args:
        models: The member models (a non-empty list of Keras models or layers).
        strategy: ``"weighted"``, ``"vote"``, ``"logit_mean"`` or ``"prob_mean"``.
        weights: Optional non-negative weight per member (normalized to sum to one).
        trainable_weights: Whether ``fit`` learns the mixture weights.
        member_outputs: ``"auto"``, ``"logits"`` or ``"probabilities"``, or a list with
            one of these per member.
        output: ``"log_probs"``, ``"probabilities"`` or ``"logits"`` (see above).
        vote_output: ``"counts"`` (vote shares) or ``"one_hot"`` (the winner).
        vote_epsilon: Uniform smoothing of a vote distribution before its log,
            ``0 <= vote_epsilon < 1``.
        **kwargs: Passed to ``keras.Model`` (``name``, ...).

    Raises:
        ValueError: No members, members with different input or output shapes (the
            message names the member and the shapes), weights of the wrong length or
            sign, or an unknown strategy or option.
        TypeError: A member that is not a Keras model or layer.

    Example:
        >>> from keras_llmopt import ensemble, reference
        >>> members = [reference.build_gpt("tiny", seed=s) for s in (0, 1, 2)]
        >>> fused = ensemble.EnsembleModel(members, strategy="weighted", weights=[2, 1, 1])
        >>> log_probs = fused(np.zeros((1, 8), "int32"))  # (1, 8, 256) log probabilities
        >>> voter = ensemble.EnsembleModel(members, strategy="vote", output="probabilities")
    """

    def __init__(
        self,
        models,
        strategy="weighted",
        weights=None,
        trainable_weights=False,
        member_outputs="auto",
        output="log_probs",
        vote_output="counts",
        vote_epsilon=1e-2,
        **kwargs,
    ):
        kwargs.setdefault("name", "ensemble")
        super().__init__(**kwargs)
        models = members_lib.check_models(models)
        _check_choice("strategy", strategy, strategies.STRATEGIES)
        _check_choice("output", output, strategies.OUTPUTS)
        _check_choice("vote_output", vote_output, strategies.VOTE_OUTPUTS)
        if not isinstance(trainable_weights, bool):
            raise TypeError(
                "EnsembleModel: `trainable_weights` must be True or False. "
                f"Received: trainable_weights={trainable_weights!r}"
            )
        if strategy == "prob_mean" and weights is not None:
            raise ValueError(
                "EnsembleModel: strategy='prob_mean' is the uniform mean of probabilities "
                "and takes no weights; use strategy='weighted' for weights. "
                f"Received: weights={weights!r}"
            )
        if trainable_weights and strategy not in ("weighted", "logit_mean"):
            raise ValueError(
                "EnsembleModel: trainable_weights=True needs a differentiable mixture: "
                "strategy='weighted' or 'logit_mean'. "
                f"Received: strategy={strategy!r}, trainable_weights=True"
            )
        if (
            isinstance(vote_epsilon, bool)
            or not isinstance(vote_epsilon, int | float)
            or not (0 <= vote_epsilon < 1)
        ):
            raise ValueError(
                "EnsembleModel: `vote_epsilon` must be a number with 0 <= vote_epsilon < 1. "
                f"Received: vote_epsilon={vote_epsilon!r}"
            )
        members_lib.check_shapes(models)
        normalized = members_lib.check_weights(weights, len(models))

        self.members = models
        self.strategy = strategy
        self.output_kind = output
        self.vote_output = vote_output
        self.vote_epsilon = float(vote_epsilon)
        self.member_outputs = members_lib.resolve_member_outputs(member_outputs, models)
        self._weights_given = weights is not None
        self._learn_mixture = trainable_weights
        initial = [math.log(w) if w > 0 else _ZERO_WEIGHT_LOGIT for w in normalized]
        self.mixture_logits = self.add_weight(
            name="mixture_logits",
            shape=(len(models),),
            initializer=keras.initializers.Constant(np.asarray(initial, "float32")),
            trainable=trainable_weights,
            dtype="float32",
        )
        if all(getattr(m, "built", False) for m in models):
            self.built = True

    def _variables_to_train(self):
        return [self.mixture_logits] if self._learn_mixture else []

    @property
    def declared_output_kind(self):
        """What a model using this ensemble as a member receives from it.

        ``"probabilities"`` with ``output="probabilities"``, else ``"logits"`` (log
        probabilities are logits), so ensembles nest without a probe batch.

        Example:
            >>> from keras_llmopt import ensemble, reference
            >>> inner = ensemble.EnsembleModel([reference.build_gpt("tiny")])
            >>> inner.declared_output_kind
            'logits'
        """
        return "probabilities" if self.output_kind == "probabilities" else "logits"

    @property
    def mixture_weights(self):
        """The current normalized mixture (or vote) weights as a numpy array."""
        return ops.convert_to_numpy(ops.softmax(self.mixture_logits))

    def call(self, inputs, training=None):
        outputs = [member(inputs, training=False) for member in self.members]
        members_lib.check_call_outputs(outputs, self.members)
        weights = ops.softmax(self.mixture_logits)
        kinds = self.member_outputs

        if self.strategy == "vote":
            scores = ops.stack([ops.cast(o, "float32") for o in outputs])
            votes = strategies.vote_counts(scores, weights)
            if self.vote_output == "one_hot":
                votes = strategies.vote_winner(votes)
            if self.output_kind == "probabilities":
                return votes
            smoothed = strategies.smooth(votes, self.vote_epsilon)
            return ops.log(ops.maximum(smoothed, strategies.PROBABILITY_FLOOR))

        if self.strategy == "logit_mean":
            logits = ops.stack([strategies.member_logits(o, k) for o, k in zip(outputs, kinds)])
            mean = strategies.mean_logits(logits, weights)
            if self.output_kind == "logits":
                return mean
            if self.output_kind == "probabilities":
                return ops.softmax(mean, axis=-1)
            return ops.log_softmax(mean, axis=-1)

        log_probs = ops.stack([strategies.member_log_probs(o, k) for o, k in zip(outputs, kinds)])
        mixed = strategies.mixture_log_probs(log_probs, ops.log_softmax(self.mixture_logits))
        if self.output_kind == "probabilities":
            return ops.exp(mixed)
        return mixed

    def get_config(self):
        weights = None
        if self.strategy != "prob_mean" and (self._weights_given or self._learn_mixture):
            weights = [float(w) for w in self.mixture_weights]
        return {
            "name": self.name,
            "trainable": self.trainable,
            "models": [keras.saving.serialize_keras_object(m) for m in self.members],
            "strategy": self.strategy,
            "weights": weights,
            "trainable_weights": self._learn_mixture,
            "member_outputs": list(self.member_outputs),
            "output": self.output_kind,
            "vote_output": self.vote_output,
            "vote_epsilon": self.vote_epsilon,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        models = [keras.saving.deserialize_keras_object(m) for m in config.pop("models")]
        return cls(models=models, **config)


def _check_choice(argument, value, accepted):
    if value not in accepted:
        raise ValueError(
            f"EnsembleModel: `{argument}` must be one of {accepted}. Received: {argument}={value!r}"
        )
