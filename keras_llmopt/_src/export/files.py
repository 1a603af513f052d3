"""Atomic writes: an artifact appears at its path only once it is complete and verified.

Every exporter writes through :func:`publish`: the artifact is written under a
temporary name next to its path, checked there, and moved into place only if the check
passes; on any failure nothing is left behind and a file already at the path is kept.
"""

import contextlib
import os
import shutil
import tempfile


def check_path(path, argument="path"):
    """Returns ``path`` as a str after checking its type and that its folder exists."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(
            f"`{argument}` must be a str or os.PathLike. Received: {argument}={path!r} "
            f"of type {type(path).__name__}"
        )
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(
            f"The folder of `{argument}` does not exist. Received: {argument}={path!r}"
        )
    return path


@contextlib.contextmanager
def staged_file(path):
    """Yields a temporary path next to ``path``; the caller moves it with :func:`commit`.

    Whatever happens inside the block, the temporary file is removed on exit unless it
    was committed; an existing file at ``path`` is never touched before the commit.
    """
    folder = os.path.dirname(os.path.abspath(path))
    name = os.path.basename(path)
    # Keep the extension: runtimes pick the format from it.
    suffix = os.path.splitext(name)[1]
    fd, temp = tempfile.mkstemp(prefix=f".{name}.partial-", suffix=suffix, dir=folder)
    os.close(fd)
    try:
        yield temp
    finally:
        if os.path.exists(temp):
            os.remove(temp)


@contextlib.contextmanager
def staged_folder(path):
    """Like :func:`staged_file` for a folder artifact (a SavedModel)."""
    folder = os.path.dirname(os.path.abspath(path))
    name = os.path.basename(os.path.normpath(path))
    temp = tempfile.mkdtemp(prefix=f".{name}.", suffix=".partial", dir=folder)
    try:
        yield temp
    finally:
        if os.path.exists(temp):
            shutil.rmtree(temp, ignore_errors=True)


def _default_permissions(folder):
    """What ``open``/``mkdir`` would give a new file or folder under the current umask."""
    umask = os.umask(0o022)
    os.umask(umask)
    return (0o777 if folder else 0o666) & ~umask


def commit(temp, path):
    """Moves a finished artifact from ``temp`` to ``path``, replacing what was there.

    The artifact gets the permissions a file written in place would have (the staged
    temporary is created private, ``0600``/``0700``).
    """
    os.chmod(temp, _default_permissions(os.path.isdir(temp)))
    if os.path.isdir(temp):
        if os.path.isdir(path):
            old = tempfile.mkdtemp(
                prefix=f".{os.path.basename(os.path.normpath(path))}.",
                suffix=".old",
                dir=os.path.dirname(os.path.abspath(path)),
            )
            os.rmdir(old)
            os.replace(path, old)
            os.replace(temp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            if os.path.exists(path):
                raise ValueError(
                    f"Cannot write a SavedModel folder over a file. Received: path={path!r}"
                )
            os.replace(temp, path)
    else:
        if os.path.isdir(path):
            raise ValueError(f"Cannot write a file over a folder. Received: path={path!r}")
        os.replace(temp, path)


def publish(path, write, check=None, folder=False):
    """Writes an artifact next to ``path``, checks it, and only then moves it to ``path``.

    Args:
        path: Where the artifact goes.
        write: ``write(temp_path)`` writes the artifact (a file, or into the empty
            folder ``temp_path`` when ``folder``).
        check: Optional ``check(temp_path)`` run on the staged artifact (verification);
            whatever it raises aborts the export and leaves ``path`` as it was.
        folder: The artifact is a folder (a SavedModel).

    Returns:
        What ``check`` returned (``None`` without a check).

    Example:
        >>> def write(temp):
        ...     with open(temp, "w") as handle:
        ...         handle.write("artifact")
        >>> def check(temp):
        ...     if open(temp).read() != "artifact":
        ...         raise ValueError("corrupt")
        ...     return "verified"
        >>> publish("out.txt", write, check), open("out.txt").read()
        ('verified', 'artifact')
    """
    staged = staged_folder if folder else staged_file
    with staged(path) as temp:
        write(temp)
        result = check(temp) if check is not None else None
        commit(temp, path)
    return result


def bytes_writer(content):
    """A ``write`` for :func:`publish` that stores ``content`` (bytes) in the file.

    Example:
        >>> publish("out.bin", bytes_writer(b"TFL3"))
        >>> open("out.bin", "rb").read()
        b'TFL3'
    """

    def write(temp):
        with open(temp, "wb") as handle:
            handle.write(content)

    return write
