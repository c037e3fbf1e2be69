"""The agent's own UUID, kept in a small file so it survives reinstalls and restarts.

The id is created once, atomically: the new UUID is written to a temporary file in the
same directory and hard-linked into place, which fails if the file already exists. Two
processes starting at the same moment therefore both end up reading the same id.
An existing file is never replaced: if it cannot be read or does not hold a UUID, the
operator has to look at it (a silently new id would be a new target on the server).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import time
import uuid
from pathlib import Path

from agent.errors import ConfigError

# How long to wait for a concurrent writer that created the file but has not written it
# yet (only possible on file systems without hard links, where O_EXCL is the fallback).
_EMPTY_FILE_GRACE = 1.0


def load_or_create_agent_id(path: Path) -> str:
    """The UUID stored at ``path``; a new one is created there if the file is missing."""
    existing = read_agent_id(path)
    if existing is not None:
        return existing
    try:
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    except OSError as exc:
        raise _error(path, f"cannot create its directory ({exc.strerror or exc})") from exc
    new_id = str(uuid.uuid4())
    try:
        _create_exclusively(path, f"{new_id}\n".encode())
    except FileExistsError:
        # Another process won the race: its id is the id.
        winner = read_agent_id(path)
        if winner is None:
            raise _error(path, "vanished while being created") from None
        return winner
    except OSError as exc:
        raise _error(path, f"cannot be created ({exc.strerror or exc})") from exc
    return new_id


def load_or_create_registration_key(path: Path) -> str:
    """The secret (mode 0600) that proves this host owns its id when it registers again,
    made once like the id; a missing or empty one is made anew."""
    return _load_or_create_token(path)


def load_or_create_instance_id(path: Path, machine_id_paths: tuple[Path, ...] = (
        Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id"))) -> str:
    """This installation's id, sent in heartbeats so the server notices two hosts running
    under one agent id (clones, docs/security.md).

    A random id kept at ``path`` (state dir) is combined with the host's machine id, so a
    state directory copied to another machine (a cloned VM image, a restored backup) gives
    another instance id there, while restarts and upgrades keep it.
    """
    install_id = _load_or_create_token(path)
    machine_id = ""
    for candidate in machine_id_paths:
        with contextlib.suppress(OSError, UnicodeDecodeError):
            machine_id = candidate.read_text(encoding="ascii").strip()
            if machine_id:
                break
    return hashlib.sha256(f"{install_id}:{machine_id}".encode()).hexdigest()[:32]


def _load_or_create_token(path: Path) -> str:
    """A random token (mode 0600) kept at ``path``; a missing or empty one is made anew."""
    with contextlib.suppress(FileNotFoundError):
        key = path.read_text(encoding="ascii").strip()
        if key:
            return key
        path.unlink()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = secrets.token_urlsafe(32)
    try:
        _create_exclusively(path, f"{key}\n".encode(), mode=0o600)
    except FileExistsError:
        return path.read_text(encoding="ascii").strip()
    return key


def read_agent_id(path: Path) -> str | None:
    """The UUID stored at ``path`` in canonical form, or None if there is no such file."""
    deadline = time.monotonic() + _EMPTY_FILE_GRACE
    while True:
        try:
            text = path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise _error(path, f"cannot be read ({reason})") from exc
        if text or time.monotonic() >= deadline:
            break
        time.sleep(0.02)
    try:
        return str(uuid.UUID(text))
    except ValueError:
        shown = text if len(text) <= 60 else text[:57] + "..."
        raise _error(
            path, f"does not hold a valid UUID ({shown!r}); fix it, or remove it to let the "
            "agent create a new id (the server will then see a new target)"
        ) from None


def _create_exclusively(path: Path, content: bytes, mode: int = 0o644) -> None:
    """Write ``content`` to a new file at ``path``; FileExistsError if it is already there."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(content)
            fh.flush()
            os.fchmod(fh.fileno(), mode)  # whatever the umask says
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise
            _create_with_o_excl(path, content, mode)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    _fsync_dir(path.parent)


def _create_with_o_excl(path: Path, content: bytes, mode: int) -> None:
    """Fallback for file systems without hard links (readers wait out the empty moment)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(content)
        os.fchmod(fh.fileno(), 0o644)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dir(directory: Path) -> None:
    # Makes the new directory entry durable; not possible everywhere, and not fatal.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _error(path: Path, problem: str) -> ConfigError:
    return ConfigError(f"agent.id_file: {path} {problem}")
