"""Plain data the agent's parts pass to each other: what to run and what came of it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

STATUS_BY_EXIT_CODE = {0: "ok", 1: "warning", 2: "critical", 3: "unknown"}
STATUS_SEVERITY = {"ok": 0, "warning": 1, "critical": 2, "unknown": 3}


def status_for_exit_code(exit_code: int) -> str:
    """Nagios plugin semantics: 0 ok, 1 warning, 2 critical, anything else unknown."""
    return STATUS_BY_EXIT_CODE.get(exit_code, "unknown")


@dataclass(frozen=True)
class ResourceLimits:
    """Per-check process limits; None means "use the agent default" (or unlimited)."""

    cpu_seconds: int | None = None
    memory_mb: int | None = None
    open_files: int | None = None
    file_size_mb: int | None = None
    processes: int | None = None

    def merged_over(self, defaults: ResourceLimits) -> ResourceLimits:
        """These limits, with every unset field taken from ``defaults``."""
        own = asdict(self)
        return ResourceLimits(
            **{k: own[k] if own[k] is not None else v for k, v in asdict(defaults).items()}
        )


@dataclass(frozen=True)
class CheckSpec:
    """One assigned check, as the server describes it (durations already in seconds)."""

    id: str
    name: str
    command: tuple[str, ...]
    interval: float
    timeout: float
    limits: ResourceLimits = field(default_factory=ResourceLimits)
    env: Mapping[str, str] = field(default_factory=dict)
    shell: bool = False
    """``command`` is one shell command line for ``/bin/sh -c`` (only where allowed)."""


@dataclass
class CheckResult:
    """The outcome of one execution; ``result_id`` is a UUID made by the agent."""

    result_id: str
    check_id: str
    status: str
    exit_code: int
    output: str
    perfdata: list[dict[str, Any]]
    duration_ms: int
    executed_at: str  # ISO 8601, UTC, e.g. 2026-11-22T10:30:00.123Z

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
