"""Logging setup: one JSON object per line (for log shippers) or plain text (for people).

Extra fields passed as ``log.info("...", extra={"check_id": "disk"})`` become keys of
the JSON object and ``key=value`` pairs in text.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import IO, Any

from agent.executor import iso_utc

# Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None))
) | {"message", "asctime", "taskName"}

_HANDLER_NAME = "aami-agent"


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS}


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", ...extra, "exc"?}`` on a single line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": iso_utc(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(_extras(record))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """``ts LEVEL logger: msg key=value ...`` with the traceback, if any, below."""

    def format(self, record: logging.LogRecord) -> str:
        line = (f"{iso_utc(record.created)} {record.levelname:<7} "
                f"{record.name}: {record.getMessage()}")
        extras = _extras(record)
        if extras:
            line += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup_logging(level: str = "info", fmt: str = "json", stream: IO[str] | None = None) -> None:
    """Configure the root logger; calling it again (on SIGHUP) replaces the earlier setup."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler.get_name() == _HANDLER_NAME:
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    # urllib3 logs every new connection at debug; that is noise even at our debug level.
    logging.getLogger("urllib3").setLevel(max(logging.INFO, root.level))
