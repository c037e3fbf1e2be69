"""A small filesystem of the test's own that it can fill up: a tmpfs mount.

Mounting needs root (CI runs the suite as root: scripts/test installs system packages
with apt) or password-less ``sudo``. Without either, the test cannot make a disk full
honestly, so it skips, or fails under ``CI=true`` (tests/support/services.py).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tests.support.services import ServiceUnavailable


def _privileged(argv: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return argv
    if shutil.which("sudo") and subprocess.run(
        ["sudo", "-n", "true"], capture_output=True, check=False
    ).returncode == 0:
        return ["sudo", "-n", *argv]
    raise ServiceUnavailable(
        "a full-disk test mounts a small tmpfs: run as root or with password-less sudo"
    )


class SmallDisk:
    """A tmpfs of ``size_bytes`` mounted on ``path``, owned by the current user."""

    def __init__(self, path: Path, size_bytes: int) -> None:
        self.path = path
        self.size_bytes = size_bytes
        self.filler = path / "filler.bin"
        self._mounted = False

    def mount(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        options = f"size={self.size_bytes},mode=0700,uid={os.getuid()},gid={os.getgid()}"
        done = subprocess.run(
            _privileged(["mount", "-t", "tmpfs", "-o", options, "aami-fault-tmpfs",
                         str(self.path)]),
            capture_output=True, text=True, check=False,
        )
        if done.returncode != 0:
            raise ServiceUnavailable(f"cannot mount a tmpfs on {self.path}: {done.stderr.strip()}")
        self._mounted = True

    def unmount(self) -> None:
        if not self._mounted:
            return
        # Lazy: a process of a failed test may still hold a file open there.
        subprocess.run(_privileged(["umount", "-l", str(self.path)]), capture_output=True,
                       check=False)
        self._mounted = False

    def free_bytes(self) -> int:
        stats = os.statvfs(self.path)
        return stats.f_bavail * stats.f_frsize

    def fill(self, leave: int = 0) -> int:
        """Grow a filler file until only ``leave`` bytes are free (with ``leave=0``: until
        the filesystem refuses more); returns how much it wrote."""
        written = 0
        block = b"\0" * 65536
        # tmpfs hands out whole pages: below a page, only "until refused" makes sense.
        sizes = (65536, 4096) if leave else (65536, 4096, 512, 1)
        with open(self.filler, "ab", buffering=0) as out:
            for size in sizes:
                while not leave or self.free_bytes() - size >= leave:
                    try:
                        written += out.write(block[:size])
                    except OSError as exc:
                        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                            raise
                        break
        return written

    def free(self) -> None:
        """Delete the filler: the space is there again."""
        self.filler.unlink(missing_ok=True)


@contextlib.contextmanager
def small_disk(path: Path, size_bytes: int) -> Iterator[SmallDisk]:
    disk = SmallDisk(path, size_bytes)
    disk.mount()
    try:
        yield disk
    finally:
        disk.unmount()
