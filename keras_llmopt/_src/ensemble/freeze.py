"""Freezing part of a composite model without touching the sub-models' own flags.

Setting ``member.trainable = False`` would change the caller's model. Instead the
composite reports only the variables it trains as trainable; every other variable is
reported as non-trainable, so optimizers, the TensorFlow tape and JAX's stateless
training step all leave it alone, and the sub-models keep their own flags.
"""


class TrainsOnlyOwnVariables:
    """Mixin for a ``keras.Model`` that trains only ``_variables_to_train()``."""

    def _variables_to_train(self):
        raise NotImplementedError

    @property
    def trainable_variables(self):
        if not self.trainable:
            return []
        return list(self._variables_to_train())

    @property
    def trainable_weights(self):
        return self.trainable_variables

    @property
    def non_trainable_variables(self):
        trained = {id(v) for v in self.trainable_variables}
        return [v for v in self.variables if id(v) not in trained]

    @property
    def non_trainable_weights(self):
        trained = {id(v) for v in self.trainable_variables}
        return [v for v in self.weights if id(v) not in trained]
