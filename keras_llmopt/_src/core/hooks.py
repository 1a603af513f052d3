"""Temporary call hooks: see what a layer (or any object's method) is called with.

Calibration, one-shot compression and structural importance need a layer's inputs
as the model runs. A hook replaces a callable attribute on the instance for the
duration of a ``with`` block and always restores what was there in ``finally``,
whatever the block raises; layers stay untouched otherwise (a layer state's
interceptor, if any, is wrapped, not replaced).
"""

import contextlib
import dataclasses

_MISSING = object()


@contextlib.contextmanager
def intercept(obj, attr, make_wrapper):
    """Within the block, ``obj.<attr>`` is ``make_wrapper(original)``; restored after.

    Args:
        obj: Any object (a layer, a quantizer).
        attr: The name of a callable attribute of ``obj``.
        make_wrapper: ``fn(original_callable) -> callable``.

    Raises:
        AttributeError: ``obj`` has no callable ``attr``.

    Example:
        >>> class Greeter:
        ...     def hello(self, name):
        ...         return "hello " + name
        >>> g = Greeter()
        >>> with intercept(g, "hello", lambda f: lambda name: f(name).upper()):
        ...     g.hello("you")
        'HELLO YOU'
        >>> g.hello("you")
        'hello you'
    """
    original = getattr(obj, attr, None)
    if not callable(original):
        raise AttributeError(
            f"{type(obj).__name__} has no callable attribute {attr!r} to hook. Received: "
            f"attr={attr!r}"
        )
    own = vars(obj).get(attr, _MISSING)
    object.__setattr__(obj, attr, make_wrapper(original))
    try:
        yield obj
    finally:
        if own is _MISSING:
            object.__delattr__(obj, attr)
        else:
            object.__setattr__(obj, attr, own)


@dataclasses.dataclass
class Captured:
    """What a hooked layer was called with, call after call.

    Attributes:
        path: The layer's path (or name).
        calls: One ``(args, kwargs)`` pair per call, in order.
    """

    path: str
    calls: list = dataclasses.field(default_factory=list)

    @property
    def first_inputs(self):
        """The first positional argument of every call."""
        return [args[0] for args, _ in self.calls if args]


@contextlib.contextmanager
def capture_inputs(layers, on_call=None):
    """Records the arguments of every call of ``layers`` within the block.

    Args:
        layers: ``{path: layer}`` or a list of layers.
        on_call: Optional ``fn(path, args, kwargs)`` called for each call instead of
            storing it (streaming statistics: Hessians, norms, histograms).

    Yields:
        ``{path: Captured}``.

    Example:
        >>> import keras
        >>> dense = keras.layers.Dense(2)
        >>> with capture_inputs([dense]) as seen:
        ...     _ = dense(keras.ops.ones((1, 3)))
        >>> len(seen[dense.name].calls)
        1
        >>> "call" in vars(dense)
        False
    """
    if not isinstance(layers, dict):
        layers = {layer.name: layer for layer in layers}
    captured = {path: Captured(path) for path in layers}

    def recorder(path):
        def make(original):
            def hooked(*args, **kwargs):
                if on_call is None:
                    captured[path].calls.append((args, kwargs))
                else:
                    on_call(path, args, kwargs)
                return original(*args, **kwargs)

            return hooked

        return make

    with contextlib.ExitStack() as stack:
        for path, layer in layers.items():
            stack.enter_context(intercept(layer, "call", recorder(path)))
        yield captured
