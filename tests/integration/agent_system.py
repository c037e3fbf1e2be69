"""The whole system for the agent's acceptance tests: server, worker, agent, operator.

:func:`running_system` starts an ``aami-server worker`` next to a :class:`LiveServer`,
makes a bootstrap token and an admin token with the CLI (as an operator would), writes an
agent configuration whose allowed paths are the Debian plugins and a directory of the
test's own plugin scripts, starts ``aami-agent run`` and waits until the agent has
registered. Everything the agent does is then observed from outside: through the admin
API, PostgreSQL, the agent's status file and /proc.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import requests

from tests.integration.live_server import LiveServer, last_line
from tests.integration.processes import LiveAgent, LiveWorker, wait_until, write_agent_config

PLUGINS = Path("/usr/lib/nagios/plugins")
#: What the tests' shell-script plugins (:meth:`AgentSystem.write_plugin`) run: their
#: interpreter and the usual tools. Listed in ``checks.allowed_executables`` unless a test
#: asks for other ``agent_options``, since the exec containment (Landlock) lets checks
#: execute nothing else outside the allowed paths.
SCRIPT_EXECUTABLES = ("/bin/sh", "/usr/bin")


def plugin(name: str) -> str:
    """Absolute path of a Debian monitoring-plugins program."""
    return str(PLUGINS / name)


def parse_time(stamp: str) -> float:
    """A timestamp of the API (ISO 8601, ``Z`` or an offset) as a ``time.time()`` value."""
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


class AdminApi:
    """The operator's side of the REST API, with an admin token."""

    def __init__(self, server: LiveServer, token: str) -> None:
        self.server = server
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"

    def _call(self, method: str, path: str, expect: int, **kwargs: Any) -> Any:
        reply = self.session.request(method, self.server.api(path), timeout=30, **kwargs)
        assert reply.status_code == expect, f"{method} {path}: {reply.status_code} {reply.text}"
        return reply.json() if reply.content else None

    def create_check(
        self, check_id: str, command: list[str], *, target_id: str, interval: str = "5s",
        timeout: str = "2s", **fields: Any,
    ) -> dict[str, Any]:
        body = {"id": check_id, "command": command, "interval": interval, "timeout": timeout,
                "assign": {"target_ids": [target_id]}, **fields}
        created: dict[str, Any] = self._call("POST", "checks", 201, json=body)
        return created

    def update_check(self, check_id: str, **fields: Any) -> dict[str, Any]:
        updated: dict[str, Any] = self._call("PATCH", f"checks/{check_id}", 200, json=fields)
        return updated

    def delete_check(self, check_id: str) -> None:
        self._call("DELETE", f"checks/{check_id}", 204)

    def force_check(self, target_id: str, check_id: str) -> Any:
        return self._call("POST", f"targets/{target_id}/checks/{check_id}/run", 202)

    def target(self, target_id: str) -> dict[str, Any]:
        found: dict[str, Any] = self._call("GET", f"targets/{target_id}", 200)
        return found

    def check_states(self, target_id: str) -> dict[str, dict[str, Any]]:
        """``GET /targets/{id}/checks`` keyed by check id."""
        states = self._call("GET", f"targets/{target_id}/checks", 200)
        return {state["check_id"]: state for state in states}

    def results(
        self, target_id: str, check_id: str | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """``GET /targets/{id}/results``, newest first."""
        params: dict[str, Any] = {"limit": limit}
        if check_id:
            params["check_id"] = check_id
        found: list[dict[str, Any]] = self._call(
            "GET", f"targets/{target_id}/results", 200, params=params)
        return found

    def close(self) -> None:
        self.session.close()


@dataclass
class AgentSystem:
    server: LiveServer
    worker: LiveWorker
    agent: LiveAgent
    admin: AdminApi
    plugin_dir: Path
    """Inside the agent's allowed paths: where a test writes its own plugin scripts.

    Outside pytest's private (0700) temporary directories: an agent running as root runs
    its checks as ``nobody``, who must be able to reach and execute the scripts.
    """
    agent_id: str

    def write_plugin(self, name: str, body: str) -> str:
        """An executable ``/bin/sh`` script in :attr:`plugin_dir`; returns its path."""
        path = self.plugin_dir / name
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(0o755)
        return str(path)

    def shared_file(self, name: str) -> Path:
        """An empty file in :attr:`plugin_dir` that the checks may append to."""
        path = self.plugin_dir / name
        path.touch()
        path.chmod(0o666)
        return path

    def add_check(self, check_id: str, command: list[str], **fields: Any) -> dict[str, Any]:
        return self.admin.create_check(check_id, command, target_id=self.agent_id, **fields)

    def wait_for_results(
        self, check_id: str, count: int = 1, timeout: float = 30.0, **match: Any
    ) -> list[dict[str, Any]]:
        """At least ``count`` stored results of ``check_id`` whose fields equal ``match``."""

        def probe() -> list[dict[str, Any]] | None:
            found = [
                r for r in self.admin.results(self.agent_id, check_id)
                if all(r.get(k) == v for k, v in match.items())
            ]
            return found if len(found) >= count else None

        return wait_until(probe, timeout, f"{count} result(s) of {check_id} with {match}",
                          interval=0.05)

    def wait_for_states(self, check_ids: set[str], timeout: float = 30.0) -> dict[str, Any]:
        """The current states once every check of ``check_ids`` has one."""

        def probe() -> dict[str, Any] | None:
            states = self.admin.check_states(self.agent_id)
            return states if check_ids <= set(states) else None

        return wait_until(probe, timeout, f"states of {sorted(check_ids)}", interval=0.1)

    def logs(self) -> str:
        """The agent's and the worker's logs, for assertion messages."""
        return (f"--- agent log (tail)\n{_tail(self.agent.log_text())}\n"
                f"--- worker log (tail)\n{_tail(self.worker.log_text())}")


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


@contextlib.contextmanager
def running_system(
    server: LiveServer, directory: Path, *, agent_options: Mapping[str, Any] | None = None
) -> Iterator[AgentSystem]:
    """Worker and agent for ``server``; ``agent_options`` go to :func:`write_agent_config`.

    On exit the agent and the worker are stopped, and each must have exited 0 and left
    no process of its session behind.
    """
    admin = AdminApi(server, last_line(server.cli("admin-token", "create", "--name", "ops")))
    bootstrap = last_line(server.cli("token", "create", "--name", "agents"))
    plugin_dir = Path(tempfile.mkdtemp(prefix="aami-checks-"))
    plugin_dir.chmod(0o755)
    worker = LiveWorker(server)
    config = write_agent_config(
        directory / "agent", server_url=server.url, bootstrap_token=bootstrap,
        allowed_paths=[str(PLUGINS), str(plugin_dir)],
        **{"allowed_executables": SCRIPT_EXECUTABLES,
           "policy_keys": [server.policy_public_key], **dict(agent_options or {})},
    )
    agent = LiveAgent(config)
    try:
        worker.start()
        agent.start()
        # Registered: the agent holds credentials and the server lists it online.
        agent.wait_for_status(lambda s: s.get("connected") and s.get("last_heartbeat_at"),
                              30, "a first heartbeat")
        agent_id = agent.agent_id()
        wait_until(lambda: admin.target(agent_id)["status"] == "online", 10,
                   "the target to be online")
        yield AgentSystem(server=server, worker=worker, agent=agent, admin=admin,
                          plugin_dir=plugin_dir, agent_id=agent_id)
    finally:
        agent.stop()
        worker.stop()
        agent.close()
        worker.close()
        admin.close()
        shutil.rmtree(plugin_dir, ignore_errors=True)
    assert agent.exit_code == 0, f"the agent exited {agent.exit_code}:\n{_tail(agent.log_text())}"
    assert not agent.leftovers, f"the agent left processes behind: {agent.leftovers}"
    assert not worker.leftovers, f"the worker left processes behind: {worker.leftovers}"
    assert worker.exit_code == 0, f"the worker exited {worker.exit_code}"
