"""The machine and package versions a benchmark ran with (recorded beside its rows)."""

import importlib.metadata
import os
import platform
import sys

PACKAGES = (
    "keras_llmopt",
    "keras",
    "tensorflow",
    "tf_keras",
    "tensorflow-model-optimization",
    "jax",
    "ai-edge-litert",
    "ai-edge-quantizer",
    "onnx",
    "onnxruntime",
    "tf2onnx",
    "numpy",
)


def machine_info():
    """CPU count, platform, processor and Python version.

    Example:
        >>> machine_info()["cpu_count"] >= 1
        True
    """
    affinity = getattr(os, "sched_getaffinity", None)
    return {
        "cpu_count": os.cpu_count(),
        "usable_cpus": len(affinity(0)) if affinity else os.cpu_count(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "python": sys.version.split()[0],
    }


def package_versions(names=PACKAGES):
    """Installed versions of the packages that matter for the figures (None if absent).

    Example:
        >>> "keras" in package_versions()
        True
    """
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions
