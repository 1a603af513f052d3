"""The model matrix's outcomes: a cell's status and text, and how an error is judged.

Four outcomes: ``ok`` (measured), ``refused`` (a ``ValueError`` / ``TypeError`` raised by
keras_llmopt on purpose, before any artifact was staged), ``fail`` (any other exception,
a failed verification or artifact check included) and ``silent`` (a
:class:`SilentFailure`: the call returned a result that is not what it claims).
"""

import collections
import contextlib
import dataclasses
import os
import signal
import threading
import traceback

OK, REFUSED, FAIL, SILENT = "ok", "refused", "fail", "silent"
STATUSES = (OK, REFUSED, FAIL, SILENT)
# Ops whose inputs say which kernels a file runs.
MATMULS = ("FULLY_CONNECTED", "BATCH_MATMUL")


class SilentFailure(Exception):
    """A call that returned, but whose result is not what it claims.

    Args:
        short: A few words for the table.
        detail: The full reason (defaults to ``short``).

    Example:
        >>> classify(SilentFailure("2/15 matmuls float", "the int8 file has ..."))
        ('silent', 'SILENT FAIL: 2/15 matmuls float')
    """

    def __init__(self, short, detail=None):
        super().__init__(detail or short)
        self.short = short


@dataclasses.dataclass
class Cell:
    """The outcome of one cell.

    Attributes:
        status: One of ``STATUSES``.
        text: A short table text (``"ok 0.27x int8"``, ``"refused: ..."``, ``"FAIL: ..."``).
        figures: Measured values (``size_bytes``, ``size_ratio``, ``matmuls``, ...).
        seconds: Wall time of the cell (shared intermediates it built included).
        message: The full error message or silent-failure reason (``""`` when ok).

    Example:
        >>> Cell(OK, "ok 0.27x int8").to_dict()["status"]
        'ok'
    """

    status: str
    text: str
    figures: dict = dataclasses.field(default_factory=dict)
    seconds: float = 0.0
    message: str = ""

    def to_dict(self):
        """The cell as plain data."""
        return dataclasses.asdict(self)


# --- matmul dtypes ----------------------------------------------------------------------


def matmul_inputs(summary):
    """``{"int8,int8": n, ...}``: input dtypes of every FULLY_CONNECTED / BATCH_MATMUL.

    Example:
        >>> matmul_inputs({"matmul_inputs": {"FULLY_CONNECTED": {"int8,int8": 3}}})
        {'int8,int8': 3}
    """
    counts = collections.Counter()
    for op, by_dtype in (summary.get("matmul_inputs") or {}).items():
        if op in MATMULS:
            counts.update(by_dtype)
    return dict(counts)


def matmul_label(counts):
    """A short word for a file's matmul input dtypes: ``int8``, ``16x8``, ``fp32``, ...

    ``int8`` only when every matmul input is int8; otherwise the count of float ones.

    Example:
        >>> matmul_label({"int8,int8": 4}), matmul_label({"float32,float32": 4})
        ('int8', 'fp32')
        >>> matmul_label({"int8,int8": 3, "float32,float32": 1})
        '1/4 float'
    """
    total = sum(counts.values())
    if not total:
        return "no matmul"
    kinds = {tuple(key.split(",")) for key in counts}
    if all(set(kind) == {"int8"} for kind in kinds):
        return "int8"
    if all(kind[0] == "int16" for kind in kinds):
        return "16x8"
    if all(set(kind) == {"float32"} for kind in kinds):
        return "fp32"
    if all(kind[0] == "float32" and kind[-1] in ("int8", "int4") for kind in kinds):
        return "w-int"
    floating = sum(n for key, n in counts.items() if "float32" in key.split(",")[:1])
    return f"{floating}/{total} float"


def float_matmuls(counts, activations):
    """Matmuls whose inputs are not ``activations`` (``"int8"`` or ``"int16"``).

    Example:
        >>> float_matmuls({"int8,int8": 13, "float32,float32": 2}, "int8")
        2
    """
    return sum(n for key, n in counts.items() if key.split(",")[0] != activations)


# --- errors ----------------------------------------------------------------------------


def _frames(error):
    return [f.filename.replace(os.sep, "/") for f in traceback.extract_tb(error.__traceback__)]


def _raised_by_us(error):
    """Raised by keras_llmopt on purpose, before any artifact was staged."""
    frames = _frames(error)
    if not frames or "allow_float_ops" in str(error):
        return bool(frames)
    if any(f.endswith("keras_llmopt/_src/export/files.py") for f in frames):
        return False  # the staged artifact failed its own checks: a failure
    where = frames[-1]
    return "keras_llmopt/_src/" in where and "/benchmark/matrix_" not in where


def _short(message, limit=48):
    text = " ".join(str(message).split())
    if "converter failed" in text and ": " in text:  # keep the converter's own words
        text = "converter: " + text.split(": ", 2)[-1]
    for stop in (". ", "; ", " Received:", " (", ": Failed"):
        if stop in text[12:]:
            text = text[: text.index(stop, 12)]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _verification_text(error):
    report = getattr(error, "report", None)
    failures = list(getattr(report, "failures", None) or [])
    if not failures:
        return _short(error)
    first = failures[0].replace("top-1 agreement", "top-1").replace(" required", "")
    return _short(first)


def classify(error):
    """``(status, text)`` of a cell that raised ``error``.

    A ``ValueError``/``TypeError`` raised by keras_llmopt before it staged a file is a
    refusal; a failed verification or artifact check, or anything raised elsewhere, is
    a failure; a :class:`SilentFailure` is a silent failure.

    Example:
        >>> classify(RuntimeError("boom"))
        ('fail', 'FAIL: RuntimeError: boom')
    """
    from keras_llmopt._src.export.verification import VerificationError

    if isinstance(error, SilentFailure):
        return SILENT, f"SILENT FAIL: {error.short}"
    if isinstance(error, VerificationError):
        return FAIL, f"FAIL: verify {_verification_text(error)}"
    if isinstance(error, (ValueError, TypeError)) and _raised_by_us(error):
        return REFUSED, f"refused: {_short(error)}"
    if "converter failed" in str(error):
        return FAIL, f"FAIL: {_short(error, 56)}"
    return FAIL, f"FAIL: {type(error).__name__}: {_short(error)}"


class CellTimeout(RuntimeError):
    """A cell ran past the matrix's per-cell time limit."""


@contextlib.contextmanager
def time_limit(seconds):
    """Raises :class:`CellTimeout` in the block after ``seconds`` (main thread, POSIX).

    Example:
        >>> with time_limit(5):
        ...     pass
    """
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expired(signum, frame):
        raise CellTimeout(f"ran past the {seconds:.0f} s per-cell limit; stopped")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
