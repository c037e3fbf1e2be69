"""Atomic file replacement: readers see the old content or the new one, never half."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from pathlib import Path
from typing import Any


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` via a temporary file in the same directory.

    The temporary file is created with ``mode`` from the start, so a secret is never
    readable by others even for a moment. ``durable`` fsyncs the file before the rename
    (worth it for credentials; not for a status file rewritten every few seconds).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)  # O_CREAT's mode is filtered by the umask
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_json(path: Path, value: Any, *, mode: int = 0o644, durable: bool = True) -> None:
    """``atomic_write`` of ``value`` as indented JSON."""
    data = json.dumps(value, indent=2, sort_keys=True).encode() + b"\n"
    atomic_write(path, data, mode=mode, durable=durable)
