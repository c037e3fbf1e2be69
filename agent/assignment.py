"""The checks assigned by the server: validated into CheckSpecs, and cached on disk.

Server data is checked entry by entry: one bad check is logged and skipped, the others
still run. Unknown keys in an entry are ignored so that a newer server can add fields.
The last good assignment is kept in ``state_dir/assignment.json`` so an agent that
starts while the server is unreachable still runs its checks. It keeps the policy's
serial and signature too: the serial is the replay floor (agent/policy.py), so a restart
does not accept an older policy again, and the signature lets the cache be verified.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from agent.durations import parse_duration
from agent.fileio import write_json
from agent.model import CheckSpec, ResourceLimits
from agent.transport.base import Assignment, PolicySignature

log = logging.getLogger(__name__)

_LIMIT_KEYS = tuple(f.name for f in fields(ResourceLimits))


class InvalidCheck(ValueError):
    """One entry of the assignment cannot be run; the message says which and why."""


def parse_checks(
    entries: Sequence[object], default_timeout: float
) -> tuple[list[CheckSpec], list[str]]:
    """The valid checks of ``entries`` and a message for each one that was skipped."""
    specs: list[CheckSpec] = []
    problems: list[str] = []
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        try:
            spec = parse_check(entry, default_timeout)
        except InvalidCheck as exc:
            problems.append(f"checks[{index}]: {exc}")
            continue
        if spec.id in seen:
            problems.append(f"checks[{index}]: duplicate check id {spec.id!r}")
            continue
        seen.add(spec.id)
        specs.append(spec)
    return specs, problems


def parse_check(entry: object, default_timeout: float) -> CheckSpec:
    """One CheckSpec from the server's JSON; raises InvalidCheck naming the bad field."""
    if not isinstance(entry, dict):
        raise InvalidCheck(f"expected an object, got {type(entry).__name__}")
    check_id = entry.get("id")
    if not isinstance(check_id, str) or not check_id.strip():
        raise InvalidCheck("id is missing")
    where = f"check {check_id!r}"
    name = entry.get("name")
    command = entry.get("command")
    if (not isinstance(command, list) or not command
            or not all(isinstance(arg, str) for arg in command) or not command[0]):
        raise InvalidCheck(f"{where}: command must be a non-empty list of strings")
    shell = entry.get("shell")
    if shell is not None and not isinstance(shell, bool):
        raise InvalidCheck(f"{where}: shell must be true or false")
    if shell and len(command) != 1:
        raise InvalidCheck(f"{where}: a shell check's command must be one string: "
                           "the command line for /bin/sh -c")
    interval = _duration(entry.get("interval"), f"{where}: interval", None)
    timeout = _duration(entry.get("timeout"), f"{where}: timeout", default_timeout)
    return CheckSpec(
        id=check_id,
        name=name if isinstance(name, str) and name else check_id,
        command=tuple(command),
        interval=interval,
        timeout=timeout,
        limits=_limits(entry.get("limits"), where),
        env=_env(entry.get("env"), where),
        shell=bool(shell),
    )


def _duration(value: object, what: str, default: float | None) -> float:
    if value is None and default is not None:
        return default
    if not isinstance(value, str | int | float):
        raise InvalidCheck(f"{what} is missing" if value is None else f"{what}: {value!r}")
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise InvalidCheck(f"{what}: {exc}") from None
    if seconds <= 0:
        raise InvalidCheck(f"{what}: must be greater than zero")
    return seconds


def _limits(raw: object, where: str) -> ResourceLimits:
    if raw is None:
        return ResourceLimits()
    if not isinstance(raw, dict):
        raise InvalidCheck(f"{where}: limits must be an object")
    values: dict[str, int | None] = {}
    for key in _LIMIT_KEYS:
        value = raw.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 1):
            raise InvalidCheck(f"{where}: limits.{key} must be a positive integer or null")
        values[key] = value
    return ResourceLimits(**values)


def _env(raw: object, where: str) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(
        isinstance(k, str) and k and "=" not in k and isinstance(v, str)
        for k, v in raw.items()
    ):
        raise InvalidCheck(f"{where}: env must map variable names to strings")
    return dict(raw)


class AssignmentCache:
    """The last assignment the server sent, kept as JSON so a restart can run it offline."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> Assignment | None:
        """The cached assignment, or None when there is none or it is unreadable."""
        try:
            data: Any = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable cached assignment %s: %s", self.path, exc)
            return None
        if not isinstance(data, dict) or not isinstance(data.get("checks"), list):
            log.warning("ignoring malformed cached assignment %s", self.path)
            return None
        etag, version = data.get("etag"), data.get("config_version")
        target_id, serial = data.get("target_id"), data.get("serial")
        issued_at, signature = data.get("issued_at"), data.get("signature")
        return Assignment(
            etag=etag if isinstance(etag, str) else None,
            config_version=version if isinstance(version, str) else None,
            checks=data["checks"],
            target_id=target_id if isinstance(target_id, str) else None,
            serial=serial if isinstance(serial, int) and not isinstance(serial, bool) else None,
            issued_at=issued_at if isinstance(issued_at, str) else None,
            signature=_signature(signature),
        )

    def save(self, assignment: Assignment) -> None:
        """Replace the cache atomically (with the serial: see the module docstring)."""
        signature = assignment.signature
        write_json(
            self.path,
            {"etag": assignment.etag, "config_version": assignment.config_version,
             "checks": assignment.checks, "target_id": assignment.target_id,
             "serial": assignment.serial, "issued_at": assignment.issued_at,
             "signature": None if signature is None else {
                 "algorithm": signature.algorithm, "key_id": signature.key_id,
                 "value": signature.value}},
            mode=0o600,  # check environments may carry secrets
        )


def _signature(raw: object) -> PolicySignature | None:
    if not isinstance(raw, dict):
        return None
    return PolicySignature(algorithm=str(raw.get("algorithm") or ""),
                           key_id=str(raw.get("key_id") or ""),
                           value=str(raw.get("value") or ""))
