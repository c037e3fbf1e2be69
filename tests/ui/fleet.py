"""A small fleet for the UI tests, built through the public HTTP API only.

Agents are played by :class:`FakeAgent`: it registers with a bootstrap token, heartbeats
and posts results exactly as ``aami-agent`` does, with its own access JWT. The same code
drives Flask's test client (unit tests) and a real ``aami-server serve`` (browser tests).
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import requests
from flask.testing import FlaskClient

EXIT_CODES = {"ok": 0, "warning": 1, "critical": 2, "unknown": 3}


class Api(Protocol):
    def call(
        self, method: str, path: str, body: Any = None, token: str | None = None
    ) -> tuple[int, Any]: ...


class HttpApi:
    """``/api/v1`` of a running server."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = requests.Session()

    def call(
        self, method: str, path: str, body: Any = None, token: str | None = None
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        reply = self.session.request(
            method, f"{self.base_url}/api/v1{path}", json=body, headers=headers, timeout=30
        )
        return reply.status_code, reply.json() if reply.content else None


class ClientApi:
    """``/api/v1`` of an app, through Flask's test client."""

    def __init__(self, client: FlaskClient) -> None:
        self.client = client

    def call(
        self, method: str, path: str, body: Any = None, token: str | None = None
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        reply = self.client.open(f"/api/v1{path}", method=method, json=body, headers=headers)
        return reply.status_code, reply.get_json(silent=True)


def expect(api: Api, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
    status, reply = api.call(method, path, body, token)
    assert 200 <= status < 300, (method, path, status, reply)
    return reply


def stamp(when: datetime) -> str:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def result(
    check_id: str,
    status: str = "ok",
    output: str | None = None,
    perfdata: list[dict[str, Any]] | None = None,
    at: datetime | None = None,
) -> dict[str, Any]:
    """One result as an agent sends it."""
    return {
        "result_id": str(uuid.uuid4()),
        "check_id": check_id,
        "status": status,
        "exit_code": EXIT_CODES[status],
        "output": output if output is not None else f"{check_id.upper()} {status.upper()}",
        "perfdata": perfdata or [],
        "duration_ms": 15,
        "executed_at": stamp(at or datetime.now(UTC)),
    }


@dataclass
class FakeAgent:
    api: Api
    hostname: str
    agent_id: str
    access_token: str

    @classmethod
    def register(
        cls,
        api: Api,
        bootstrap_token: str,
        hostname: str,
        *,
        group_id: str | None = None,
        labels: dict[str, str] | None = None,
        ip_address: str | None = None,
    ) -> FakeAgent:
        body: dict[str, Any] = {
            "token": bootstrap_token,
            "agent_id": str(uuid.uuid4()),
            "hostname": hostname,
            "labels": labels or {},
            "agent_version": "0.1.0",
        }
        if group_id:
            body["group_id"] = group_id
        if ip_address:
            body["ip_address"] = ip_address
        reply = expect(api, "POST", "/bootstrap-tokens/register", body)
        return cls(api, hostname, reply["agent_id"], reply["access_token"])

    def heartbeat(self) -> dict[str, Any]:
        body = {"version": "0.1.0", "uptime_s": 86400.0, "spool_depth": 0}
        path = f"/agents/{self.agent_id}/heartbeat"
        return expect(self.api, "POST", path, body, self.access_token)  # type: ignore[no-any-return]

    def send(self, *results: dict[str, Any]) -> dict[str, Any]:
        path = f"/agents/{self.agent_id}/check-results"
        reply = expect(self.api, "POST", path, {"results": list(results)}, self.access_token)
        assert reply["accepted"] == len(results), reply
        return reply  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- the fleet

GROUPS = {"web": "Web servers", "db": "Databases"}
CHECKS: dict[str, dict[str, Any]] = {
    "load": {"name": "CPU load", "plugin": "check_load",
             "assign": {"labels": {"env": "production"}}},
    "disk": {"name": "Root disk", "plugin": "check_disk", "assign": {"labels": {"os": "linux"}}},
    "http": {"name": "HTTP", "plugin": "check_http", "assign": {"group_ids": ["web"]}},
    "postgres": {"name": "PostgreSQL", "plugin": "check_pgsql", "assign": {"group_ids": ["db"]}},
}
AGENTS: dict[str, dict[str, Any]] = {
    "web-1": {"group_id": "web", "ip_address": "10.0.1.11",
              "labels": {"env": "production", "dc": "dc1", "os": "linux"}},
    "web-2": {"group_id": "web", "ip_address": "10.0.2.12",
              "labels": {"env": "production", "dc": "dc2", "os": "linux"}},
    "db-1": {"group_id": "db", "ip_address": "10.0.1.21",
             "labels": {"env": "production", "dc": "dc1", "os": "linux"}},
    # Registered but never heard from again: stays "pending", with no results.
    "staging-1": {"ip_address": "10.0.9.31", "labels": {"env": "staging", "os": "linux"}},
}
# The current state of each check after seeding (the newest result of each).
CURRENT: dict[str, dict[str, str]] = {
    "web-1": {"load": "ok", "disk": "ok", "http": "ok"},
    "web-2": {"load": "ok", "disk": "warning", "http": "ok"},
    "db-1": {"load": "ok", "disk": "ok", "postgres": "critical"},
    "staging-1": {},
}
HISTORY_MINUTES = 40


def load_perf(value: float) -> list[dict[str, Any]]:
    return [
        {"label": "load1", "value": round(value, 2), "uom": "", "warn": 4.0, "crit": 8.0,
         "min": 0.0},
        {"label": "load5", "value": round(value * 0.8, 2), "uom": "", "warn": 3.0, "crit": 6.0,
         "min": 0.0},
    ]


def disk_perf(used: float) -> list[dict[str, Any]]:
    return [{"label": "used", "value": round(used, 1), "uom": "%", "warn": 85.0, "crit": 95.0,
             "min": 0.0, "max": 100.0}]


def history(hostname: str, now: datetime, minutes: int) -> list[dict[str, Any]]:
    """A result a minute for the last ``minutes`` minutes, ending in CURRENT."""
    results = []
    seed = sum(map(ord, hostname))
    for i in range(minutes, -1, -1):  # i: minutes ago
        at = now - timedelta(minutes=i, seconds=5)
        load = 0.45 + 0.3 * math.sin((seed - i) / 5) + 0.12 * math.sin(seed - i * 1.7)
        results.append(
            result("load", "ok", f"LOAD OK - load average: {load:.2f}", load_perf(load), at)
        )
        used = 41.8 - i * 0.02 if hostname != "web-2" else 86.8 - i * 0.42
        disk = "warning" if used >= 85 else "ok"
        output = f"DISK {disk.upper()} - / is {used:.1f}% full"
        results.append(result("disk", disk, output, disk_perf(used), at))
        if hostname.startswith("web"):
            down = hostname == "web-2" and 24 <= i <= 26  # a short outage, for the timeline
            status = "critical" if down else "ok"
            output = "HTTP CRITICAL - connection refused" if down else "HTTP OK - 200 in 0.031s"
            perf = [] if down else [{"label": "time", "value": 0.031, "uom": "s"}]
            results.append(result("http", status, output, perf, at))
        if hostname == "db-1":
            lag = 3.0 if i > 6 else 60.0 * (7 - i)
            status = "critical" if lag > 300 else ("warning" if lag > 60 else "ok")
            results.append(
                result(
                    "postgres",
                    status,
                    f"POSTGRES {status.upper()} - replication lag {lag:.0f}s",
                    [{"label": "lag", "value": lag, "uom": "s", "warn": 60.0, "crit": 300.0}],
                    at,
                )
            )
    return results


@dataclass
class Fleet:
    api: Api
    admin_token: str
    bootstrap_token: str = ""
    agents: dict[str, FakeAgent] = field(default_factory=dict)

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        return expect(self.api, method, path, body, self.admin_token)

    def seed(self, minutes: int = HISTORY_MINUTES) -> Fleet:
        """Groups, checks, agents and ``minutes`` of result history (a result a minute)."""
        for group_id, name in GROUPS.items():
            self.admin("POST", "/groups", {"id": group_id, "name": name})
        for check_id, spec in CHECKS.items():
            self.admin(
                "POST",
                "/checks",
                {
                    "id": check_id,
                    "name": spec["name"],
                    "command": [f"/usr/lib/nagios/plugins/{spec['plugin']}"],
                    "interval": "60s",
                    "timeout": "10s",
                    "assign": spec["assign"],
                },
            )
        self.bootstrap_token = self.admin("POST", "/bootstrap-tokens", {"name": "fleet"})["token"]
        now = datetime.now(UTC)
        for hostname, spec in AGENTS.items():
            agent = FakeAgent.register(self.api, self.bootstrap_token, hostname, **spec)
            self.agents[hostname] = agent
            if CURRENT[hostname]:
                agent.heartbeat()
                agent.send(*history(hostname, now, minutes))
        return self

    def heartbeat(self) -> None:
        """Keep every agent online (the stale sweep counts heartbeats) but the one that
        never reports."""
        for hostname, agent in self.agents.items():
            if CURRENT.get(hostname) != {}:
                agent.heartbeat()

    def add_agent(self, hostname: str, **spec: Any) -> FakeAgent:
        agent = FakeAgent.register(self.api, self.bootstrap_token, hostname, **spec)
        self.agents[hostname] = agent
        return agent

    def target_ids(self) -> dict[str, str]:
        return {hostname: agent.agent_id for hostname, agent in self.agents.items()}
