"""The agent's version, from the installed ``aami`` distribution."""

from __future__ import annotations

import functools

FALLBACK_VERSION = "0.0.0+unknown"


@functools.cache
def agent_version() -> str:
    """The installed version of ``aami``; a fallback when running from a bare source tree."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("aami")
    except PackageNotFoundError:
        return FALLBACK_VERSION
