"""agent/logs.py: one JSON object per line, or readable text, at the configured level."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from agent.logs import setup_logging


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_carry_ts_level_logger_msg_and_extras() -> None:
    stream = io.StringIO()
    setup_logging("info", "json", stream=stream)

    logging.getLogger("agent.test").info("ran %s", "disk", extra={"check_id": "disk"})
    logging.getLogger("agent.test").debug("not shown")

    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["level"] == "info" and entry["logger"] == "agent.test"
    assert entry["msg"] == "ran disk" and entry["check_id"] == "disk"
    assert entry["ts"].endswith("Z") and "T" in entry["ts"]


def test_json_exception_is_one_line() -> None:
    stream = io.StringIO()
    setup_logging("debug", "json", stream=stream)
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("agent.test").exception("failed")
    (line,) = stream.getvalue().splitlines()
    assert "ValueError: boom" in json.loads(line)["exc"]


def test_text_format_and_reconfiguring_replaces_the_handler() -> None:
    stream = io.StringIO()
    setup_logging("debug", "json", stream=io.StringIO())
    setup_logging("warning", "text", stream=stream)

    logging.getLogger("agent.test").info("hidden")
    logging.getLogger("agent.test").warning("spool full", extra={"dropped": 3})

    assert stream.getvalue().count("\n") == 1
    assert "WARNING agent.test: spool full dropped=3" in stream.getvalue()
    ours = [h for h in logging.getLogger().handlers if h.get_name() == "aami-agent"]
    assert len(ours) == 1
