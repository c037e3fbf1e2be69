"""agent/assignment.py: server check entries validated one by one; the on-disk cache."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest

from agent.assignment import AssignmentCache, InvalidCheck, parse_check, parse_checks
from agent.model import ResourceLimits
from agent.transport.base import Assignment

DISK = {"id": "disk", "name": "Disk space",
        "command": ["/usr/lib/nagios/plugins/check_disk", "-w", "20%"],
        "interval": "60s", "timeout": "10s",
        "limits": {"cpu_seconds": 10, "memory_mb": 256, "open_files": None},
        "env": {"LC_ALL": "C"}}


def test_documented_entry_becomes_a_check_spec() -> None:
    spec = parse_check(DISK, default_timeout=30.0)
    assert spec.id == "disk" and spec.name == "Disk space"
    assert spec.command == ("/usr/lib/nagios/plugins/check_disk", "-w", "20%")
    assert (spec.interval, spec.timeout) == (60.0, 10.0)
    assert spec.limits == ResourceLimits(cpu_seconds=10, memory_mb=256)
    assert dict(spec.env) == {"LC_ALL": "C"}


def test_optional_fields_take_defaults_and_unknown_fields_are_ignored() -> None:
    spec = parse_check({"id": "ping", "command": ["/bin/ping"], "interval": 30,
                        "added_by_a_newer_server": True}, default_timeout=7.0)
    assert spec.name == "ping" and spec.timeout == 7.0
    assert spec.limits == ResourceLimits() and dict(spec.env) == {}


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"id": ""}, "id is missing"),
        ({"command": []}, "command must be a non-empty list"),
        ({"command": "/bin/true"}, "command must be a non-empty list"),
        ({"command": ["/bin/x", 3]}, "command must be a non-empty list"),
        ({"interval": None}, "interval is missing"),
        ({"interval": "often"}, "interval: invalid duration"),
        ({"interval": "0s"}, "interval: must be greater than zero"),
        ({"timeout": "-1s"}, "timeout:"),
        ({"limits": {"memory_mb": 0}}, "limits.memory_mb must be a positive integer"),
        ({"limits": {"processes": True}}, "limits.processes must be a positive integer"),
        ({"limits": [1]}, "limits must be an object"),
        ({"env": {"A": 1}}, "env must map variable names to strings"),
    ],
)
def test_invalid_entry_names_the_field(change: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InvalidCheck, match=fragment):
        parse_check({**DISK, **change}, default_timeout=30.0)


def test_bad_entries_are_skipped_and_reported_the_rest_kept() -> None:
    specs, problems = parse_checks(
        [DISK, {"id": "x"}, "junk", {**DISK, "name": "again"}, {**DISK, "id": "load"}],
        default_timeout=30.0)
    assert [s.id for s in specs] == ["disk", "load"]
    assert problems[0].startswith("checks[1]: check 'x'")
    assert problems[1].startswith("checks[2]: expected an object")
    assert problems[2] == "checks[3]: duplicate check id 'disk'"


def test_cache_round_trip_is_private(tmp_path: Path) -> None:
    cache = AssignmentCache(tmp_path / "state" / "assignment.json")
    assignment = Assignment(etag='"3f2a"', config_version="3f2a", checks=[DISK])
    cache.save(assignment)
    assert cache.load() == assignment
    assert stat.S_IMODE(cache.path.stat().st_mode) == 0o600


@pytest.mark.parametrize("content", ["{", "[]", '{"checks": "x"}'])
def test_damaged_cache_is_ignored(tmp_path: Path, content: str) -> None:
    path = tmp_path / "assignment.json"
    path.write_text(content)
    assert AssignmentCache(path).load() is None


def test_missing_cache_is_none(tmp_path: Path) -> None:
    assert AssignmentCache(tmp_path / "assignment.json").load() is None
