"""Matmuls written inline in a layer's ``call``: seen while probing, rewritten while running.

KerasHub's attention layers (and MoE experts, and users' custom layers) compute their
activation-by-activation products with ``keras.ops.einsum`` / ``keras.ops.matmul``
inside ``call``: there is no layer to put a quantizer on. This module wraps those two
public functions once, with a wrapper that does nothing unless a context is active
on the calling thread:

* :func:`probing` records every contracting product a layer makes (innermost layer on
  the call stack, equation, operand kinds), so a technique can plan per-op state;
* :func:`rewriting` hands each product, in call order, to a handler (a layer state
  that fake-quantizes its operands and output).

Keras's own layers call ``keras.src.ops``, not the public module, so they are never
seen here. Products that do not contract an axis (outer products such as rotary
position tables) are not matmuls and are left alone. Contexts are thread-local
(``tf.distribute`` replica threads each have their own).
"""

import contextlib
import dataclasses
import threading

import keras

OPS = ("einsum", "matmul")
_local = threading.local()
_originals = {}


@dataclasses.dataclass(frozen=True)
class InlineOp:
    """One product a layer computes inline.

    Attributes:
        op: ``"einsum"`` or ``"matmul"``.
        equation: The einsum equation (``""`` for matmul).
        operands: ``("activation" | "weight", ...)``, one per operand: ``"weight"`` when
            the operand is one of the model's variables.

    Example:
        >>> InlineOp("einsum", "btnh,bsnh->bnts", ("activation", "activation")).to_config()
        {'op': 'einsum', 'equation': 'btnh,bsnh->bnts', 'operands': ['activation', 'activation']}
    """

    op: str
    equation: str
    operands: tuple

    def to_config(self):
        """Plain data (saved with a layer's quantization config)."""
        return {"op": self.op, "equation": self.equation, "operands": list(self.operands)}

    @classmethod
    def from_config(cls, config):
        """The op saved by :meth:`to_config`."""
        return cls(config["op"], config["equation"], tuple(config["operands"]))


def _contracts(op, equation, operands):
    if len(operands) != 2 or any(len(getattr(x, "shape", ())) < 2 for x in operands):
        return False
    if op == "matmul":
        return True
    inputs, _, output = equation.replace(" ", "").partition("->")
    terms = inputs.split(",")
    if len(terms) != 2 or "." in equation:
        return False
    return any(letter in terms[1] and letter not in output for letter in terms[0])


def _is_variable(x):
    return isinstance(x, keras.Variable)


def _wrapper(op, original):
    def wrapped(*args, **kwargs):
        handler = getattr(_local, "stack", None)
        handler = handler[-1] if handler else None
        if handler is None:
            return original(*args, **kwargs)
        equation, operands = ("", list(args[:2])) if op == "matmul" else (args[0], list(args[1:]))
        if kwargs or not _contracts(op, equation, operands):
            return original(*args, **kwargs)
        described = InlineOp(
            op, equation, tuple("weight" if _is_variable(x) else "activation" for x in operands)
        )
        return handler(described, operands, lambda *xs: original(*args[: len(args) - 2], *xs))

    wrapped._llmopt_inline_original = original
    return wrapped


def _install():
    if _originals:
        return
    for op in OPS:
        original = getattr(keras.ops, op)
        _originals[op] = original
        setattr(keras.ops, op, _wrapper(op, original))


def original(op):
    """The unwrapped ``keras.ops`` function (for code that must not be rewritten).

    Example:
        >>> original("matmul") is not None
        True
    """
    _install()
    return _originals[op]


@contextlib.contextmanager
def _pushed(handler):
    _install()
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    stack.append(handler)
    try:
        yield
    finally:
        stack.pop()


def rewriting(handler):
    """Within the block, inline products on this thread go to ``handler``.

    ``handler(op, operands, compute)``: ``op`` an :class:`InlineOp`, ``operands`` the
    two tensors, ``compute(a, b)`` the original product; returns the result. A
    ``None`` handler shields the block from an outer one.

    Example:
        >>> import keras
        >>> def doubled(op, operands, compute):
        ...     return 2 * compute(*operands)
        >>> with rewriting(doubled):
        ...     float(keras.ops.matmul(keras.ops.ones((1, 2)), keras.ops.ones((2, 1)))[0, 0])
        4.0
    """
    return _pushed(handler)


@contextlib.contextmanager
def probing(current_owner):
    """Records the inline products of a forward pass, attributed by ``current_owner()``.

    Args:
        current_owner: ``fn() -> key or None``: who computes right now (e.g. the
            innermost layer's path); products made while it returns ``None`` are not
            recorded.

    Yields:
        ``{key: [(InlineOp, (operand, operand), result), ...]}``, filled as the block
        runs (the tensors are kept so their identities stay valid).

    Example:
        >>> import keras
        >>> with probing(lambda: "me") as seen:
        ...     _ = keras.ops.matmul(keras.ops.ones((1, 2)), keras.ops.ones((2, 3)))
        >>> [op.op for op, _, _ in seen["me"]]
        ['matmul']
    """
    seen = {}

    def record(op, operands, compute):
        result = compute(*operands)
        owner = current_owner()
        if owner is not None:
            seen.setdefault(owner, []).append((op, tuple(operands), result))
        return result

    with _pushed(record):
        yield seen
