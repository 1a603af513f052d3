"""Where the package keeps what it builds once (tokenized corpus, trained models)."""

import contextlib
import os
import tempfile
from pathlib import Path

CACHE_ENV = "KERAS_LLMOPT_CACHE"


def cache_dir(*parts):
    """Returns (and creates) a folder under the package cache.

    The root is ``$KERAS_LLMOPT_CACHE`` if set, else ``$XDG_CACHE_HOME/keras_llmopt``,
    else ``~/.cache/keras_llmopt``.

    Example:
        >>> cache_dir("corpus").name
        'corpus'
    """
    root = os.environ.get(CACHE_ENV)
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
        root = os.path.join(base, "keras_llmopt")
    path = Path(root, *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path beside ``path``, moved onto ``path`` only on success.

    An interrupted or failed write leaves neither a partial file at ``path`` nor the
    temporary behind, and an existing file at ``path`` is kept until the new one is
    complete.

    Example:
        >>> with atomic_path("/tmp/out.npy") as tmp:
        ...     np.save(tmp, np.zeros(3))
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent
    )
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
