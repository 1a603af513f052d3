"""The byte-level reference corpus: the CPython standard library's own sources.

Reading the running interpreter's stdlib means no download and the same text on every
machine with the same Python. Files are split into train and validation by a hash of
their relative path (not their position), so adding a file never moves another one.
"""

import dataclasses
import hashlib
import json
import os
import sysconfig
import zlib
from pathlib import Path

import numpy as np
from absl import logging

from keras_llmopt._src.reference.cache import atomic_path, cache_dir

VALIDATION_PERCENT = 5
_EXCLUDED_DIRS = {"test", "tests", "site-packages", "dist-packages", "__pycache__"}
_FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Corpus:
    """Train and validation windows of byte tokens.

    Attributes:
        train: uint8 array ``(num_windows, sequence_length + 1)``.
        validation: uint8 array ``(num_windows, sequence_length + 1)``.
        sequence_length: Model input length; each window holds one extra target byte.
        source: Folder the text was read from.
        num_files: ``(train_files, validation_files)``.

    Example:
        >>> corpus = load_corpus(64)
        >>> x, y = corpus.validation[:, :-1], corpus.validation[:, 1:]
    """

    train: np.ndarray
    validation: np.ndarray
    sequence_length: int
    source: str
    num_files: tuple


def spread_windows(windows, count):
    """``count`` windows spread evenly over ``windows`` (all of them if fewer), as int32.

    The first and last windows are always included, so a few windows still sample the
    whole split (verification and calibration data of the exports).

    Args:
        windows: An array of windows, e.g. ``corpus.validation``.
        count: How many to take.

    Example:
        >>> spread_windows(np.arange(10).reshape(10, 1), 4)[:, 0].tolist()
        [0, 3, 6, 9]
    """
    index = np.linspace(0, len(windows) - 1, min(count, len(windows))).round().astype(int)
    return np.asarray(windows[index]).astype(np.int32)


def default_corpus_dir():
    """The running interpreter's standard-library folder.

    Example:
        >>> default_corpus_dir().name.startswith("python3")
        True
    """
    return Path(sysconfig.get_paths()["stdlib"])


def is_validation_file(relative_path):
    """Whether a file belongs to the validation split (about 5% of files).

    Decided by a CRC32 of the relative POSIX path, so it is the same on every run and
    machine (Python's ``hash`` is salted per process and would not be).

    Example:
        >>> is_validation_file("json/decoder.py") in (True, False)
        True
    """
    return zlib.crc32(relative_path.encode("utf-8")) % 100 < VALIDATION_PERCENT


def list_source_files(corpus_dir):
    """Sorted relative paths of the ``*.py`` files, skipping tests and site-packages.

    Example:
        >>> files = list_source_files(default_corpus_dir())
    """
    root = Path(corpus_dir)
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _EXCLUDED_DIRS)
        for name in filenames:
            if name.endswith(".py"):
                found.append(Path(dirpath, name).relative_to(root).as_posix())
    return sorted(found)


def load_corpus(sequence_length, corpus_dir=None, validation_only=False):
    """Loads (building and caching on first use) the windowed byte corpus.

    The text is every ``*.py`` file under ``corpus_dir`` (default: the running
    interpreter's standard library, without ``test``/``tests`` folders or site-packages),
    sorted by path and concatenated per split. It is cut into non-overlapping windows
    of ``sequence_length + 1`` bytes. Token arrays are cached under the package cache,
    keyed by the file list, sizes and modification times.

    Args:
        sequence_length: Model input length ``T``; windows hold ``T + 1`` bytes.
        corpus_dir: Folder of text files to use instead of the standard library.
        validation_only: Skip loading the training windows (faster evaluation).

    Returns:
        A ``Corpus``.

    Raises:
        FileNotFoundError: If the folder has no ``*.py`` sources (e.g. a minimal Python
            image stripped of its standard-library sources), saying how to pass another
            folder.
        ValueError: If ``sequence_length`` is not a positive integer or a split is too
            small to hold one window.

    Example:
        >>> corpus = load_corpus(128)
        >>> corpus.train.shape[1]
        129
    """
    if not isinstance(sequence_length, (int, np.integer)) or sequence_length < 1:
        raise ValueError(
            f"load_corpus: `sequence_length` must be a positive integer. "
            f"Received: sequence_length={sequence_length!r}"
        )
    sequence_length = int(sequence_length)
    root = Path(corpus_dir) if corpus_dir is not None else default_corpus_dir()
    files = list_source_files(root) if root.is_dir() else []
    if not files:
        where = "the Python standard library" if corpus_dir is None else "corpus_dir"
        raise FileNotFoundError(
            f"No *.py source files found in {where} ({root}). Minimal Python images often "
            "strip the standard-library sources. Pass another folder of text files with "
            "`corpus_dir=` (CLI: --corpus_dir=PATH), or install the full Python (e.g. the "
            "python3.11 package with its stdlib sources)."
        )
    key = _cache_key(root, files)
    folder = cache_dir("corpus", key)
    splits = {}
    for split in ("validation",) if validation_only else ("train", "validation"):
        path = folder / f"{split}.npy"
        if not path.exists():
            _build_token_files(root, files, folder)
        splits[split] = np.load(path, mmap_mode="r")
    num_files = tuple(json.loads((folder / "files.json").read_text())["counts"])
    windows = {name: _windows(tokens, sequence_length, name) for name, tokens in splits.items()}
    return Corpus(
        train=windows.get("train", np.zeros((0, sequence_length + 1), np.uint8)),
        validation=windows["validation"],
        sequence_length=sequence_length,
        source=str(root),
        num_files=num_files,
    )


def _cache_key(root, files):
    digest = hashlib.sha256(f"v{_FORMAT_VERSION}:{root}".encode())
    for rel in files:
        stat = Path(root, rel).stat()
        digest.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _build_token_files(root, files, folder):
    logging.info("Tokenizing %d source files from %s (cached afterwards)", len(files), root)
    parts = {"train": [], "validation": []}
    for rel in files:
        parts["validation" if is_validation_file(rel) else "train"].append(
            Path(root, rel).read_bytes()
        )
    counts = [len(parts["train"]), len(parts["validation"])]
    for split, chunks in parts.items():
        tokens = np.frombuffer(b"\n".join(chunks), dtype=np.uint8)
        with atomic_path(folder / f"{split}.npy") as tmp:
            with open(tmp, "wb") as f:
                np.save(f, tokens)
    with atomic_path(folder / "files.json") as tmp:
        Path(tmp).write_text(json.dumps({"root": str(root), "counts": counts}))


def _windows(tokens, sequence_length, split):
    width = sequence_length + 1
    count = len(tokens) // width
    if count == 0:
        raise ValueError(
            f"The {split} split has {len(tokens)} bytes, fewer than one window of "
            f"sequence_length + 1 = {width}. Use a larger corpus_dir or a shorter "
            "sequence_length."
        )
    return np.asarray(tokens[: count * width]).reshape(count, width)
