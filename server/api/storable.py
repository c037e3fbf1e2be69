"""Text the database can store: no lone surrogates, no NUL characters.

JSON can carry both as ``\\u`` escapes (``"\\ud800"``, ``"\\u0000"``) although neither survives
storage: a lone surrogate cannot be encoded as UTF-8 and PostgreSQL refuses NUL in text.
Let through, they fail deep in a query or a background job instead of at the edge, so every
request is checked here and refused with the field named.
"""

from __future__ import annotations

import re
from typing import Any

# Mostly they arrive as escapes (raw bytes are screened by _UNSTORABLE_RAW below). The
# escape screen flags ``\u0000``, a high surrogate escape not followed by a low one, and
# a low one not right after a high one (whose backslash is not itself escaped). Text such
# as a literal ``\\ud800`` can make it flag a body wrongly, which only costs a walk; it
# never passes a lone surrogate.
_HEX2 = rb"[0-9a-fA-F]{2}"
# Every branch after one literal ``\u``, so that the engine skips to those at C speed.
_UNSTORABLE_ESCAPE = re.compile(
    rb"\\u(?:0000"
    rb"|[dD][89abAB]" + _HEX2 + rb"(?!\\u[dD][c-fC-F]" + _HEX2 + rb")"
    rb"|(?<!(?<!\\)\\u[dD][89abAB]" + _HEX2 + rb"\\u)[dD][c-fC-F]" + _HEX2 + rb")"
)


def unstorable_reason(text: str) -> str | None:
    """Why ``text`` cannot be stored, or None when it can."""
    # C-speed tests first: this runs on every string of a flagged body, results included.
    if "\x00" in text:
        return f"contains a NUL character (\\u0000) at position {text.index(chr(0))}"
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        # A valid pair was joined into one character by the JSON parser: what is left is lone.
        code = ord(text[exc.start])
        return (
            f"contains a lone surrogate (\\u{code:04x}) at position {exc.start}: "
            "not valid Unicode"
        )
    return None


# Unescaped, they reach a string two ways the escape screen cannot see: a surrogate written
# in UTF-8 bytes (ED A0-BF xx), which Python's JSON decoder lets through (surrogatepass), and
# a body in UTF-16 or UTF-32, which JSON allows and whose every ASCII character holds a NUL
# byte (valid UTF-8 JSON holds none).
_UNSTORABLE_RAW = re.compile(rb"\x00|\xed[\xa0-\xbf]")


def may_hold_unstorable(raw: bytes) -> bool:
    """Cheap screen of a raw JSON body: False means no string in it needs checking."""
    return (
        _UNSTORABLE_ESCAPE.search(raw) is not None or _UNSTORABLE_RAW.search(raw) is not None
    )


def unstorable_strings(data: Any) -> list[tuple[tuple[str, ...], str]]:
    """Each (field path, reason) for a string in ``data`` (keys included) that cannot be stored."""
    found: list[tuple[tuple[str, ...], str]] = []
    # Iterative, and strings checked where they sit: a flagged results body has hundreds.
    pending: list[tuple[tuple[str, ...], Any]] = [((), data)]
    while pending:
        path, node = pending.pop()
        if isinstance(node, dict):
            items: Any = node.items()
        elif isinstance(node, list):
            items = enumerate(node)
        else:
            reason = unstorable_reason(node) if isinstance(node, str) else None
            if reason is not None:
                found.append((path, reason))
            continue
        for key, value in items:
            if isinstance(key, str):
                reason = unstorable_reason(key)
                if reason is not None:
                    # The key itself cannot be printed safely: name its object and say so.
                    found.append((path, f"a key {reason}"))
                    continue
            if isinstance(value, str):
                reason = unstorable_reason(value)
                if reason is not None:
                    found.append(((*path, str(key)), reason))
            elif isinstance(value, dict | list):
                pending.append(((*path, str(key)), value))
    return sorted(found)
