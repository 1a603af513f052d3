"""``Distiller``: trains one student model to match a (frozen) teacher, e.g. an ensemble."""

import math

import keras
from keras import ops

from keras_llmopt._src.ensemble import members as members_lib
from keras_llmopt._src.ensemble import strategies
from keras_llmopt._src.ensemble.freeze import TrainsOnlyOwnVariables

TEACHER_OUTPUTS = ("auto", "logits", "probabilities")


def distillation_loss(teacher_logits, student_logits, temperature):
    """Per-position soft-target loss ``T^2 * KL(softmax(t / T) || softmax(s / T))``.

    The ``T^2`` factor keeps the gradient scale independent of the temperature (Hinton
    et al., 2015), so ``alpha`` means the same thing at every temperature.

    Args:
        teacher_logits: ``(..., classes)`` teacher logits (or log probabilities).
        student_logits: ``(..., classes)`` student logits.
        temperature: Softening temperature ``T > 0``.

    Returns:
        ``(...)`` per-position losses.

    Example:
        >>> import numpy as np
        >>> loss = distillation_loss(np.zeros((2, 5)), np.ones((2, 5)), 2.0)
        >>> np.allclose(np.asarray(loss), 0.0)  # same distribution after softmax
        True
    """
    teacher_log_probs = ops.log_softmax(ops.cast(teacher_logits, "float32") / temperature, -1)
    student_log_probs = ops.log_softmax(ops.cast(student_logits, "float32") / temperature, -1)
    kl = ops.sum(ops.exp(teacher_log_probs) * (teacher_log_probs - student_log_probs), axis=-1)
    return (temperature**2) * kl


@keras.saving.register_keras_serializable(package="keras_llmopt")
class Distiller(TrainsOnlyOwnVariables, keras.Model):
    """A Keras model that trains a student to imitate a teacher (knowledge distillation).

    The usual soft-target objective, per position (token) or per example::

        loss = alpha * CE(labels, student_logits)
             + (1 - alpha) * T^2 * KL(softmax(teacher / T) || softmax(student / T))

    The teacher is any Keras model with the same outputs as the student, typically an
    ``EnsembleModel`` (whose default log-probability output is used as logits). It is
    called with ``training=False``, never receives gradients and is never trained; its
    own ``trainable`` flags are left untouched. Only the student's trainable variables
    are trained, **in place**: after ``fit``, ``distiller.student`` (the model that was
    passed in) is the distilled model to prune, quantize or export like any model.

    ``compile`` takes an optimizer and optional metrics (computed on the student's
    outputs); the loss is built in. ``fit(x, y)`` takes the student's inputs and integer
    labels (sparse, one rank below the outputs) or one-hot labels; with ``alpha=0`` the
    labels may be omitted (pure distillation on unlabeled inputs). Calling the distiller
    returns the student's logits.

    Args:
        teacher: The frozen teacher model.
        student: The model to train; it must output logits (no final softmax).
        temperature: Softening temperature ``T > 0`` (default 2.0).
        alpha: Weight of the hard-label loss, ``0 <= alpha <= 1`` (default 0.1).
        teacher_outputs: ``"auto"`` (default), ``"logits"`` or ``"probabilities"``; auto
            treats an ``EnsembleModel`` by its ``output`` option and probes other models
            as ``EnsembleModel`` does with its members.
        **kwargs: Passed to ``keras.Model`` (``name``, ...).

    Raises:
        ValueError: Bad temperature or alpha, a student that ends in a softmax, or
            teacher and student with different output shapes.
        TypeError: A teacher or student that is not a Keras model.

    Example:
        >>> import numpy as np
        >>> from keras_llmopt import ensemble, reference
        >>> members = [reference.build_gpt("tiny", seed=s) for s in (0, 1)]
        >>> teacher = ensemble.EnsembleModel(members, strategy="weighted")
        >>> distiller = ensemble.Distiller(teacher, reference.build_gpt("tiny", seed=9))
        >>> distiller.compile(optimizer="adamw")
        >>> windows = np.random.default_rng(0).integers(0, 256, (16, 33)).astype("int32")
        >>> history = distiller.fit(windows[:, :-1], windows[:, 1:], batch_size=16, verbose=0)
        >>> student = distiller.student  # trained in place; export or prune it

        With the reference corpus:
        ``x, y = reference.make_batches(corpus.train, 16, steps, seed=0)``.
    """

    def __init__(
        self,
        teacher,
        student,
        temperature=2.0,
        alpha=0.1,
        teacher_outputs="auto",
        **kwargs,
    ):
        kwargs.setdefault("name", "distiller")
        super().__init__(**kwargs)
        members_lib.check_models([teacher], owner="Distiller", argument="teacher")
        members_lib.check_models([student], owner="Distiller", argument="student")
        if (
            isinstance(temperature, bool)
            or not isinstance(temperature, int | float)
            or not math.isfinite(temperature)
            or temperature <= 0
        ):
            raise ValueError(
                "Distiller: `temperature` must be a finite number > 0. "
                f"Received: temperature={temperature!r}"
            )
        if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 <= alpha <= 1:
            raise ValueError(
                f"Distiller: `alpha` must be a number in [0, 1]. Received: alpha={alpha!r}"
            )
        if teacher_outputs not in TEACHER_OUTPUTS:
            raise ValueError(
                f"Distiller: `teacher_outputs` must be one of {TEACHER_OUTPUTS}. "
                f"Received: teacher_outputs={teacher_outputs!r}"
            )
        student_layers = getattr(student, "layers", None) or [student]
        last = student_layers[-1]
        if isinstance(last, keras.layers.Softmax) or (
            getattr(getattr(last, "activation", None), "__name__", None) == "softmax"
        ):
            raise ValueError(
                f"Distiller: the student must output logits, but its last layer "
                f"{last.name!r} applies a softmax. Remove the softmax (apply it at "
                "inference if needed)."
            )
        members_lib.check_shapes([teacher, student], owner="Distiller")
        self.teacher = teacher
        self.student = student
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.teacher_outputs = _resolve_teacher_outputs(teacher, teacher_outputs)
        if getattr(teacher, "built", False) and getattr(student, "built", False):
            self.built = True

    def _variables_to_train(self):
        return self.student.trainable_variables

    def call(self, inputs, training=None):
        return self.student(inputs, training=training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        extra = [ops.sum(ops.cast(loss, "float32")) for loss in self.losses]
        teacher = ops.stop_gradient(self.teacher(x, training=False))
        teacher_logits = strategies.member_logits(teacher, self.teacher_outputs)
        student_logits = ops.cast(y_pred, "float32")
        per_position = (1.0 - self.alpha) * distillation_loss(
            teacher_logits, student_logits, self.temperature
        )
        if self.alpha > 0:
            if y is None:
                raise ValueError(
                    "Distiller: labels `y` are needed when alpha > 0 (the hard-label "
                    f"loss); pass y to fit or use alpha=0. Received: alpha={self.alpha}, y=None"
                )
            if len(y.shape) == len(student_logits.shape) - 1:
                hard = keras.losses.sparse_categorical_crossentropy(
                    y, student_logits, from_logits=True
                )
            else:
                hard = keras.losses.categorical_crossentropy(
                    ops.cast(y, "float32"), student_logits, from_logits=True
                )
            per_position = per_position + self.alpha * hard
        if sample_weight is not None:
            weight = ops.cast(sample_weight, "float32")
            while len(weight.shape) < len(per_position.shape):
                weight = ops.expand_dims(weight, -1)
            per_position = per_position * weight
        loss = ops.mean(per_position)
        for value in extra:
            loss = loss + value
        return loss

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "teacher": keras.saving.serialize_keras_object(self.teacher),
            "student": keras.saving.serialize_keras_object(self.student),
            "temperature": self.temperature,
            "alpha": self.alpha,
            "teacher_outputs": self.teacher_outputs,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        teacher = keras.saving.deserialize_keras_object(config.pop("teacher"))
        student = keras.saving.deserialize_keras_object(config.pop("student"))
        return cls(teacher, student, **config)


def _resolve_teacher_outputs(teacher, teacher_outputs):
    if teacher_outputs != "auto":
        return teacher_outputs
    try:
        return members_lib.detect_output_kind(teacher, owner="Distiller")
    except ValueError as error:
        raise ValueError(
            "Distiller: cannot tell whether the teacher outputs logits or probabilities "
            "(it has no known inputs to probe). Pass teacher_outputs='logits' or "
            "'probabilities'. Received: teacher_outputs='auto'"
        ) from error
