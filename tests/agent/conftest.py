"""Fixtures shared by the agent's tests."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def plugin_dir() -> Iterator[Path]:
    """A directory an unprivileged user can traverse (pytest's own tmp is 0700), for
    plugins that run as ``nobody``. A module may define its own ``plugin_dir``."""
    directory = Path(tempfile.mkdtemp(prefix="aami-plugins-"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory)
