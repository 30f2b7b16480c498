"""Atomic file output: a file is either complete or absent, never half-written.

Write to a temporary file in the target's folder, fsync it, then rename over the target (rename is
atomic within a file system, POSIX rename(2)); on any error the temporary file is removed.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path` atomically."""
    path = Path(path)
    tmp = _temporary(path)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; give what open() would have
        os.replace(tmp, path)
    except OSError as err:  # name the file asked for, not the temporary one
        tmp.unlink(missing_ok=True)
        raise OSError(err.errno, err.strerror or str(err), str(path)) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _temporary(path: Path) -> Path:
    """An empty temporary file beside `path` (its folder made if need be)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    except OSError as err:
        raise OSError(err.errno, err.strerror or str(err), str(path)) from None
    os.close(fd)
    return Path(tmp)


def check_writable(path: str | os.PathLike) -> None:
    """Raise OSError (naming `path`) now if `path` could not be written, rather than after the work."""
    _temporary(Path(path)).unlink()


def current_umask() -> int:
    """The process's umask (read by setting and restoring it: there is no getter)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call write(tmp_path) and move the result to `path` atomically; returns `path`."""
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write text (UTF-8) to `path` atomically; returns `path`."""
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
