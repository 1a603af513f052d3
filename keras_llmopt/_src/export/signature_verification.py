"""Each signature of an artifact against its Keras reference, output by output."""

import dataclasses

import numpy as np

from keras_llmopt._src.export import runtime
from keras_llmopt._src.export.verification import (
    DEFAULT_TOLERANCES,
    compare,
    resolve_tolerance,
)


@dataclasses.dataclass(frozen=True)
class SignaturesVerification:
    """How closely every signature of an artifact reproduces its reference.

    Attributes:
        reports: ``{signature: {output: VerificationReport}}``.
        shape_failures: ``{signature: {output: message}}`` for outputs whose shape differs
            from the reference's (no figures to report).

    Example:
        >>> import keras, numpy as np
        >>> from keras_llmopt import export
        >>> dense = keras.layers.Dense(3)
        >>> s = export.Signature("y", lambda x: {"y": dense(x)}, [("x", (1, 2), "float32")],
        ...                      ["y"], lambda x: {"y": keras.ops.convert_to_numpy(dense(x))})
        >>> _ = export.to_tflite_signatures([s], "dense.tflite", verify=False)
        >>> result = export.verify_signatures("dense.tflite", [s])
        >>> result.passed, result["y"]["y"].max_abs_error < 1e-5
        (True, True)
    """

    reports: dict
    shape_failures: dict = dataclasses.field(default_factory=dict)

    def __getitem__(self, signature):
        return self.reports[signature]

    @property
    def passed(self):
        """Whether every output of every signature is within tolerance."""
        return not self.failures

    @property
    def failures(self):
        """``"signature 's', output 'o': reason"`` for everything out of tolerance."""
        found = []
        for signature, outputs in self.shape_failures.items():
            for output, message in outputs.items():
                found.append(f"signature {signature!r}, output {output!r}: {message}")
        for signature, outputs in self.reports.items():
            for output, report in outputs.items():
                for failure in report.failures:
                    found.append(f"signature {signature!r}, output {output!r}: {failure}")
        return tuple(found)

    def to_dict(self):
        """The figures as plain data.

        Example:
            >>> SignaturesVerification({}).to_dict()
            {'passed': True, 'failures': [], 'signatures': {}}
        """
        return {
            "passed": self.passed,
            "failures": list(self.failures),
            "signatures": {
                name: {output: report.to_dict() for output, report in outputs.items()}
                for name, outputs in self.reports.items()
            },
        }


def verify_signatures(artifact_path, signatures, mode="float32", tolerance=None, num_threads=None):
    """Runs each signature of an artifact and compares every output with its reference.

    Each signature runs on its ``verification_inputs`` (or random samples, see
    ``Signature``) through ``runner.run_signature``; its reference runs on the same
    arrays. Every output is held to the mode's tolerance (``atol``/``rtol`` on the max
    abs error, ``top1`` on the last axis), merged with ``tolerance`` and then with the
    signature's own per-output ``tolerance``.

    Args:
        artifact_path: The artifact (see ``load_runner``).
        signatures: The ``Signature`` s to check.
        mode: Which defaults apply: one of ``DEFAULT_TOLERANCES``.
        tolerance: Optional dict overriding keys of the mode's defaults.
        num_threads: CPU threads for the runtime.

    Returns:
        A ``SignaturesVerification``; it does not raise on a mismatch (the exporters do).

    Example:
        See ``SignaturesVerification``.
    """
    if mode not in DEFAULT_TOLERANCES:
        raise ValueError(
            f"Unknown verification mode. Received: mode={mode!r}; accepted: "
            f"{sorted(DEFAULT_TOLERANCES)}"
        )
    base = resolve_tolerance(mode, tolerance)
    runner = runtime.load_runner(artifact_path, num_threads=num_threads)
    reports = {}
    shape_failures = {}
    for sig in signatures:
        produced = {name: [] for name in sig.outputs}
        expected = {name: [] for name in sig.outputs}
        for sample in sig.samples():
            result = runner.run_signature(sig.name, sample)
            missing = sorted(set(sig.outputs) - set(result))
            if missing:
                raise ValueError(
                    f"Signature {sig.name!r} of {artifact_path!r} lacks outputs {missing}. "
                    f"Received: outputs {sorted(result)}"
                )
            reference = sig.ordered_outputs(sig.reference(**sample), "reference")
            for name, value in zip(sig.outputs, reference):
                produced[name].append(np.asarray(result[name], np.float32))
                expected[name].append(np.asarray(value, np.float32))
        reports[sig.name] = {}
        for name in sig.outputs:
            got, want = np.stack(produced[name]), np.stack(expected[name])
            if got.shape != want.shape:
                shape_failures.setdefault(sig.name, {})[name] = (
                    f"the artifact's shape {got.shape[1:]} differs from the reference's "
                    f"{want.shape[1:]}"
                )
                continue
            limits = dict(base)
            limits.update((sig.tolerance or {}).get(name, {}))
            reports[sig.name][name] = compare(
                _rows(want), _rows(got), tolerance=resolve_tolerance(mode, limits)
            )
    return SignaturesVerification(reports, shape_failures)


def _rows(array):
    # compare() reads the last axis as classes (top-1); scalars become one class each.
    return array.reshape(-1, array.shape[-1] if array.ndim > 1 else 1)
