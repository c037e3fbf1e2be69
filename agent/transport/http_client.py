"""``requests``, imported without a character-set detector.

requests loads one (charset_normalizer, about 4 MB resident: a ninth of the agent) only
to guess the encoding of a body that declares none, and it supports running without one:
it then decodes such a body as UTF-8. Everything the agent reads is JSON, which is UTF-8
by definition. The detector is kept out of requests' import only; anything else in the
process can still import it.
"""

from __future__ import annotations

import sys
import warnings

_DETECTORS = ("charset_normalizer", "chardet")

if "requests" not in sys.modules:
    blocked = [name for name in _DETECTORS if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # type: ignore[assignment]  # makes its import fail
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Unable to find acceptable character")
            import requests
    finally:
        for name in blocked:
            del sys.modules[name]

import requests  # noqa: E402  (the same module, for the names below)
from requests.adapters import HTTPAdapter  # noqa: E402

__all__ = ["HTTPAdapter", "requests"]
