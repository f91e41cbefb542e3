"""Safe file writes and digests shared by the cache, the MNIST download, the sweep and the report.

Every file other processes may read (cache entries, downloads, run results, reports) is written
to a unique temporary name beside its target and moved into place with ``os.replace``, which
is atomic on POSIX: a reader sees the old file or the complete new one, never a partial file.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yields a fresh temporary path beside ``target`` to write to.

    On normal exit the file is moved onto ``target``; on an exception it is deleted and the
    exception propagates, so ``target`` is never half-written; an ``OSError`` on the temporary
    file (disk full, permission denied) names ``target``. A process killed mid-write leaves
    only a ``.<name>.<hex>.tmp`` file, which writers may clean up.
    """
    target = Path(target)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        yield tmp
        os.replace(tmp, target)
    except OSError as e:
        # A failed write (disk full) names no file, a failed open the temporary one.
        if e.filename is None or Path(e.filename) == tmp:
            raise OSError(e.errno, e.strerror, str(target)) from e
        raise
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(target: str | os.PathLike, text: str) -> None:
    """Writes ``text`` to ``target`` atomically, flushed to disk before the rename."""
    with atomic_path(target) as tmp, open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes, read in blocks (``algorithm``: any ``hashlib`` name)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()
