"""Writing files so that nothing is half-written: :func:`write_atomic`, the one helper every module uses.

    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "out" / "report.json"
    >>> write_atomic(path, '{"ok": true}')
    >>> path.read_text()
    '{"ok": true}'
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

__all__ = ["write_atomic"]


def write_atomic(path, data: str | bytes) -> None:
    """Writes ``data`` (text as UTF-8, or bytes) to ``path``: a temporary file in the same directory,
    flushed to disk, then renamed over ``path`` (``os.replace`` is atomic within a file system), so a
    reader, or a run killed meanwhile, sees the old file or the new one, never a part.  Parent
    directories are created; on failure the temporary file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode() if isinstance(data, str) else bytes(data)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    # os.open with mode 0o666 lets the process umask set the final permissions, as for any file the
    # user creates (tempfile.mkstemp would leave a private 0o600 file behind).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())  # contents on disk before the rename makes them visible
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
