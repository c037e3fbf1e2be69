"""The result intake's fast path loads exactly what ``schemas.ResultBatch`` loads.

``server.api.results.fast_load`` replaces marshmallow for well-formed batches (it cost
most of the API's CPU). It may decline any batch, leaving it to the schema, but whatever
it accepts must be accepted by the schema too, with an identical result. Each case below
changes one field of a valid result to a tricky value and holds the two side by side.
"""

from __future__ import annotations

import math
import uuid
from datetime import datetime
from typing import Any

import pytest
from marshmallow import ValidationError

from server.api import schemas
from server.api.results import fast_load

RESULT_ID = "0b6f6a4e-2d7e-4d8b-9a49-0d6b9f7f0c11"
MISSING = object()


def valid_result(**changes: Any) -> dict[str, Any]:
    result: dict[str, Any] = {
        "result_id": RESULT_ID,
        "check_id": "disk",
        "status": "warning",
        "exit_code": 1,
        "output": "DISK WARNING - free space: / 3326 MB (56%)",
        "perfdata": [
            {"label": "/", "value": 2643.0, "uom": "MB", "warn": 5948.0, "crit": 6946,
             "min": 0, "max": 7434.0}
        ],
        "duration_ms": 12,
        "executed_at": "2026-11-22T10:30:00.123Z",
    }
    for key, value in changes.items():
        if value is MISSING:
            result.pop(key)
        else:
            result[key] = value
    return result


def perf(**changes: Any) -> list[dict[str, Any]]:
    entry: dict[str, Any] = {"label": "load1", "value": 0.5}
    for key, value in changes.items():
        if value is MISSING:
            entry.pop(key)
        else:
            entry[key] = value
    return [entry]


TRICKY: dict[str, list[Any]] = {
    "result_id": [
        RESULT_ID.upper(), RESULT_ID.replace("-", ""), "{" + RESULT_ID + "}",
        "urn:uuid:" + RESULT_ID, " " + RESULT_ID, "", "nope", 123, None, [RESULT_ID], MISSING,
    ],
    "check_id": [
        "load", "Load", "load\n", "-load", "a" * 64, "a" * 65, "", "lo ad", 5, None, MISSING,
    ],
    "status": ["ok", "critical", "unknown", "OK", "", None, 0, MISSING],
    "exit_code": [
        0, 255, 256, -255, -256, True, False, 2.0, 2.5, "2", None, 10**30, MISSING,
    ],
    "output": ["", "x" * schemas.MAX_OUTPUT_LENGTH, "x" * (schemas.MAX_OUTPUT_LENGTH + 1),
               "nul\x00byte", "\u00e9t\u00e9", None, 5, ["x"], MISSING],
    "duration_ms": [0, -1, schemas.MAX_INT, schemas.MAX_INT + 1, 1.0, True, None, "5", MISSING],
    "executed_at": [
        "2026-11-22T10:30:00Z", "2026-11-22T10:30:00+02:00", "2026-11-22T10:30:00",
        "2026-11-22T10:30:00.123456-05:30", "2026-11-22 10:30:00Z", "2026-11-22",
        "2026-13-22T10:30:00Z", "", "yesterday", 1763807400, None, MISSING,
    ],
    "perfdata": [
        [], None, "x", {}, [{}], [[]], ["load=1"], perf(), perf(value=MISSING),
        perf(label=MISSING), perf(label=""), perf(label="x" * 256), perf(label="x" * 257),
        perf(label=None), perf(value=1), perf(value=True), perf(value="1"), perf(value=None),
        perf(value=math.nan), perf(value=math.inf), perf(value=-math.inf),
        perf(value=10**400), perf(min=0, max=100), perf(min="0"), perf(max=None),
        perf(uom="x" * 16), perf(uom="x" * 17), perf(uom=None), perf(uom=5),
        perf(warn="5:10", crit={"at": 20}), perf(warn=None), perf(warn=[1, 2]),
        perf(extra=1), perf() * 100, perf() * 101, MISSING,
    ],
    "unknown_key": ["anything"],
}
CASES = [
    pytest.param(field, value, id=f"{field}={value!r:.40}")
    for field, values in TRICKY.items()
    for value in values
]


def schema_load(data: Any) -> Any:
    try:
        return schemas.ResultBatch().load(data)
    except ValidationError:
        return None


def assert_identical(fast: Any, slow: Any) -> None:
    """Equal, with the same types all the way down (a float is not an int here, and a
    datetime keeps its UTC offset)."""
    assert type(fast) is type(slow), (fast, slow)
    if isinstance(fast, dict):
        assert fast.keys() == slow.keys()
        for key in fast:
            assert_identical(fast[key], slow[key])
    elif isinstance(fast, list):
        assert len(fast) == len(slow)
        for a, b in zip(fast, slow, strict=True):
            assert_identical(a, b)
    elif isinstance(fast, datetime):
        assert (fast, fast.utcoffset()) == (slow, slow.utcoffset())
    else:
        assert fast == slow


@pytest.mark.parametrize(("field", "value"), CASES)
def test_fast_path_accepts_only_what_the_schema_accepts_and_loads_it_alike(field, value):
    batch = {"results": [valid_result(), valid_result(**{field: value})]}
    fast = fast_load(batch)
    slow = schema_load(batch)
    if fast is not None:
        assert slow is not None, "the fast path accepted a batch the schema refuses"
        assert_identical(fast, slow)


def test_fast_path_takes_the_batches_agents_send():
    """Without this, the fast path could decline everything and only be slow code."""
    agent_like = [
        valid_result(),
        valid_result(result_id=str(uuid.uuid4()), status="ok", exit_code=0, perfdata=[]),
        valid_result(output=MISSING, perfdata=MISSING, duration_ms=MISSING),
        valid_result(executed_at="2026-11-22T10:30:00+00:00"),
    ]
    batch = {"results": agent_like}
    fast = fast_load(batch)
    assert fast is not None
    assert_identical(fast, schemas.ResultBatch().load(batch))


@pytest.mark.parametrize(
    "body",
    [{}, {"results": []}, {"results": "x"}, {"results": [valid_result()], "extra": 1},
     {"results": [valid_result(), "x"]}, {"results": None}, []],
    ids=repr,
)
def test_fast_path_declines_malformed_batches(body):
    assert fast_load(body) is None
