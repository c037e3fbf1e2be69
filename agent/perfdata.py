"""Nagios plugin output: split the human text from the performance data.

Layout, from the Nagios plugin development guidelines::

    TEXT OUTPUT | OPTIONAL PERFDATA
    LONG TEXT LINE 1
    LONG TEXT LINE 2 | PERFDATA LINE 2
    PERFDATA LINE 3

Everything after the first ``|`` on line 1 is perfdata; in the long output, everything
after the first ``|`` (the rest of that line and every line below it) is perfdata too.

A perfdata item is ``'label'=value[UOM];[warn];[crit];[min];[max]``. Plugins get this
wrong often enough that a bad item must never cost the check its result: malformed items
are skipped and named in a note appended to the text, so the operator sees why a graph
has a gap.
"""

from __future__ import annotations

import re
from typing import Any

# How much of the malformed items to quote back in the note; plugins can emit megabytes.
MAX_REPORTED_PROBLEMS = 5
MAX_REPORTED_PROBLEM_CHARS = 40

_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_NUMBER_RE = re.compile(_NUMBER)
# Value, then the unit of measurement. The guidelines list s, ms, us, %, B, KB, MB, TB, c,
# but real plugins also use GB, KiB, req/s, degC...: accept any unit that cannot be mistaken
# for more of the number.
_VALUE_RE = re.compile(rf"({_NUMBER})([^\d.+\-;\s][^;\s]*)?")
# Threshold ranges: "10", "10:", "~:10", "10:20", "@10:20".
_RANGE_RE = re.compile(rf"@?(?:(?:~|{_NUMBER})?:)?(?:{_NUMBER})?")


class MalformedItem(ValueError):
    """One perfdata item that does not follow the guidelines."""


def parse_plugin_output(text: str) -> tuple[str, list[dict[str, Any]]]:
    """Split plugin output into its human text and a list of perfdata dicts.

    Each dict has the keys ``label``, ``value``, ``uom``, ``warn``, ``crit``, ``min`` and
    ``max``. ``value`` is a float, or None for the guidelines' ``U`` (undetermined).
    ``warn``/``crit`` are floats when they are plain numbers and the range string
    (``"@10:20"``, ``"~:5"``) otherwise; missing fields are None. Malformed items are
    left out and named on a last line of the text: ``(ignored malformed perfdata: ...)``.
    """
    text_lines: list[str] = []
    perf_chunks: list[str] = []

    lines = text.splitlines()
    if lines:
        first, _, perf = lines[0].partition("|")
        text_lines.append(first.rstrip())
        perf_chunks.append(perf)

    in_perfdata = False
    for line in lines[1:]:
        if in_perfdata:
            perf_chunks.append(line)
            continue
        if "|" in line:
            long_text, _, perf = line.partition("|")
            if long_text.strip():
                text_lines.append(long_text.rstrip())
            perf_chunks.append(perf)
            in_perfdata = True
        else:
            text_lines.append(line)

    items, problems = parse_perfdata(" ".join(perf_chunks))
    human = "\n".join(text_lines).rstrip()
    if problems:
        human = f"{human}\n{_problem_note(problems)}" if human else _problem_note(problems)
    return human, items


def parse_perfdata(perfdata: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Parse a space-separated perfdata string into (items, malformed raw items)."""
    items: list[dict[str, Any]] = []
    problems: list[str] = []
    for raw, label, data in _tokens(perfdata):
        if label is None:
            problems.append(raw)
            continue
        try:
            items.append(_parse_item(label, data, raw))
        except MalformedItem:
            problems.append(raw)
    return items, problems


def _tokens(perfdata: str) -> list[tuple[str, str | None, str]]:
    """Split into (raw item, label, text after "="); label is None when there is no label."""
    tokens: list[tuple[str, str | None, str]] = []
    i, n = 0, len(perfdata)
    while i < n:
        if perfdata[i].isspace():
            i += 1
            continue
        start = i
        if perfdata[i] != "'":
            i = _end_of_token(perfdata, i)
            raw = perfdata[start:i]
            label, sep, data = raw.partition("=")
            tokens.append((raw, label if sep and label else None, data))
            continue

        # Quoted label: may hold spaces (and "="); '' is a literal quote.
        label_chars: list[str] = []
        i += 1
        closed = False
        while i < n:
            if perfdata[i] == "'":
                if i + 1 < n and perfdata[i + 1] == "'":
                    label_chars.append("'")
                    i += 2
                    continue
                closed = True
                i += 1
                break
            label_chars.append(perfdata[i])
            i += 1
        if not closed:
            # An unterminated quote swallows the rest: report it all as one item.
            tokens.append((perfdata[start:].strip(), None, ""))
            break
        label_end = i
        i = _end_of_token(perfdata, i)
        raw = perfdata[start:i]
        if label_end < n and perfdata[label_end] == "=" and label_chars:
            tokens.append((raw, "".join(label_chars), perfdata[label_end + 1 : i]))
        else:
            tokens.append((raw, None, ""))
    return tokens


def _end_of_token(text: str, i: int) -> int:
    while i < len(text) and not text[i].isspace():
        i += 1
    return i


def _parse_item(label: str, data: str, raw: str) -> dict[str, Any]:
    fields = data.split(";")
    # Some plugins end every item with ";": tolerate empty extras, not extra values.
    if len(fields) > 5 and any(f.strip() for f in fields[5:]):
        raise MalformedItem(raw)
    fields += [""] * (5 - len(fields))
    value_text, warn, crit, min_text, max_text = (f.strip() for f in fields[:5])

    value: float | None
    uom = ""
    if value_text == "U":
        value = None
    else:
        match = _VALUE_RE.fullmatch(value_text)
        if not match:
            raise MalformedItem(raw)
        value = float(match.group(1))
        uom = match.group(2) or ""
    return {
        "label": label,
        "value": value,
        "uom": uom,
        "warn": _threshold(warn, raw),
        "crit": _threshold(crit, raw),
        "min": _number_or_none(min_text, raw),
        "max": _number_or_none(max_text, raw),
    }


def _threshold(text: str, raw: str) -> float | str | None:
    if not text:
        return None
    if _NUMBER_RE.fullmatch(text):
        return float(text)
    if text not in ("@", ":", "~:", "@~:") and _RANGE_RE.fullmatch(text):
        return text
    raise MalformedItem(raw)


def _number_or_none(text: str, raw: str) -> float | None:
    if not text:
        return None
    if _NUMBER_RE.fullmatch(text):
        return float(text)
    raise MalformedItem(raw)


def _problem_note(problems: list[str]) -> str:
    shown = [
        repr(p if len(p) <= MAX_REPORTED_PROBLEM_CHARS else p[:MAX_REPORTED_PROBLEM_CHARS] + "...")
        for p in problems[:MAX_REPORTED_PROBLEMS]
    ]
    more = len(problems) - len(shown)
    suffix = f" and {more} more" if more else ""
    return f"(ignored malformed perfdata: {', '.join(shown)}{suffix})"
