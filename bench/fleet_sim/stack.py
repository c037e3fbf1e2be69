"""The system the fleet talks to: started here, or an existing server.

Started here, it is the production layout on one machine: PostgreSQL (fsync on) and Redis
(``appendonly yes``, ``appendfsync everysec``) from tests/support/services.py, the schema
migrated with ``aami-server db upgrade``, ``aami-server serve`` under gunicorn, and
``aami-server worker`` processes. The ceiling is a minimal Flask app
(bench/fleet_sim/ceiling.py) served by gunicorn with the same options.
"""

from __future__ import annotations

import contextlib
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from tests.integration.live_server import AAMI_SERVER, LiveServer, aami_env, last_line
from tests.integration.processes import LiveWorker
from tests.support.services import (
    LOOPBACK,
    LocalServer,
    PostgresServer,
    RedisServer,
    child_pids,
    free_port,
)

# Slow statements, lock waits, autovacuum and checkpoints go to the log (workdir/aami/
# postgres/postgres.log): where to look when a window's tail is long.
POSTGRES_OPTIONS = {
    "max_connections": "300",
    "log_min_duration_statement": "250",
    "log_lock_waits": "on",
    "log_autovacuum_min_duration": "0",
    "log_checkpoints": "on",
}
CHECK_COMMAND = ["/usr/lib/nagios/plugins/check_dummy", "0", "simulated"]
DATABASE = "aami_fleet"


@dataclass(frozen=True)
class Serving:
    """How gunicorn runs: the same for the AAMI server and the ceiling app."""

    worker_class: str = "gevent"
    workers: int = 2
    threads: int = 32
    worker_connections: int = 10000

    def serve_args(self) -> list[str]:
        return ["--workers", str(self.workers), "--threads", str(self.threads),
                "--worker-class", self.worker_class,
                "--worker-connections", str(self.worker_connections)]

    def describe(self) -> str:
        if self.worker_class == "gevent":
            return f"gevent, {self.workers} processes x {self.worker_connections} connections"
        return f"gthread, {self.workers} processes x {self.threads} threads"


def raise_open_files_limit(wanted: int = 65536) -> int:
    """Sockets: the fleet holds one per parked long-poll, and so does the server (its
    processes inherit this limit from us)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if os.geteuid() == 0 and (hard != resource.RLIM_INFINITY and hard < wanted):
        hard = target = wanted  # root may raise the hard limit too
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, target), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class FleetServer(LiveServer):
    """``aami-server serve`` with the worker class and sizes of :class:`Serving`."""

    # Restarted under a fleet past capacity, /readyz waits in the same listen queue as
    # thousands of reconnecting agents: slow to answer is a figure of the run, not a
    # reason to abort it.
    ready_timeout = 180.0

    def __init__(self, data_dir: Path, *, serving: Serving, **kwargs: Any) -> None:
        super().__init__(data_dir, workers=serving.workers, **kwargs)
        self.serving = serving
        self._migrated = False

    def _spawn(self) -> subprocess.Popen[bytes]:
        argv = [str(AAMI_SERVER), "serve", "--host", LOOPBACK, "--port", str(self.port),
                *self.serving.serve_args()]
        return self._popen(argv, env=aami_env(self.settings))

    def start(self) -> FleetServer:
        """Ready once ``/readyz`` answers. LiveServer also makes each worker answer in turn
        (pausing the others with SIGSTOP): harmless in a test, but under a reconnecting
        fleet it would stall the restart being measured."""
        began = time.monotonic()
        LocalServer.start(self)
        self.started_in = time.monotonic() - began
        return self

    def _prepare(self) -> None:
        # Migrations run once, before the first start (a restart is not a deployment).
        if not self._migrated:
            super()._prepare()
            self._migrated = True

    def restart_on_same_port(self, *, kill: bool) -> None:
        """Stop (SIGTERM, or SIGKILL when ``kill``) and start again on the same port."""
        self._fixed_port = True  # agents know this port: never pick another
        if kill:
            self.kill()
        else:
            self.stop(timeout=40)
        self.start()


class FleetWorker(LiveWorker):
    """``aami-server worker`` at log level info whatever the API's: its readiness is an
    info line ("worker starting"). ``nice``: its scheduling niceness (ingestion can wait
    a little; API answers should not)."""

    nice = 0

    def _spawn(self) -> subprocess.Popen[bytes]:
        argv = [str(AAMI_SERVER), "worker", "--maintenance-interval", "5", *self.extra_args]
        if self.nice:
            argv = ["nice", "-n", str(self.nice), *argv]
        return self._popen(argv, env=aami_env({**self.server.settings,
                                               "AAMI_LOG_LEVEL": "info"}))


class CeilingServer(LocalServer):
    """bench/fleet_sim/ceiling.py under gunicorn with the same :class:`Serving`."""

    name = "ceiling"
    ready_timeout = 30.0

    def __init__(self, data_dir: Path, serving: Serving, heartbeat_interval: float) -> None:
        super().__init__(data_dir)
        self.serving = serving
        self.heartbeat_interval = heartbeat_interval

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def _spawn(self) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "bench.fleet_sim.ceiling", "--bind",
                f"{LOOPBACK}:{self.port}", *self.serving.serve_args(),
                "--heartbeat-interval", f"{self.heartbeat_interval:g}"]
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        return self._popen(argv, env=env)

    def _answers(self) -> bool:
        try:
            return requests.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except requests.RequestException:
            return False


class Stack:
    """PostgreSQL, Redis, the API and its workers, all local; :meth:`close` stops them."""

    def __init__(self, workdir: Path, serving: Serving, *, workers: int, durable: bool,
                 log_level: str, heartbeat_interval: float = 30, worker_nice: int = 0,
                 server_env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.serving = serving
        self.redis = RedisServer(workdir / "redis", appendonly=True)
        self.postgres = PostgresServer(workdir / "postgres", durable=durable, database=DATABASE,
                                       options=POSTGRES_OPTIONS)
        self.server: FleetServer | None = None
        self.workers: list[FleetWorker] = []
        self.worker_count = workers
        self.log_level = log_level
        self.heartbeat_interval = heartbeat_interval
        self.worker_nice = worker_nice
        self.server_env = dict(server_env or {})

    @property
    def database_url(self) -> str:
        return self.postgres.url

    @property
    def redis_url(self) -> str:
        return self.redis.url

    def start(self) -> FleetServer:
        self.redis.start()
        self.postgres.start()
        settings = {
            # The fleet's agents come from addresses of their own, through "our proxy".
            "AAMI_TRUSTED_PROXIES": LOOPBACK,
            "AAMI_LOG_LEVEL": self.log_level,
            "AAMI_HEARTBEAT_INTERVAL": str(max(1, round(self.heartbeat_interval))),
            **self.server_env,
        }
        server = FleetServer(self.workdir / "server", serving=self.serving,
                             database_url=self.database_url, redis_url=self.redis_url,
                             extra_settings=settings)
        # LiveServer gave it a policy key: it signs every policy, as in production.
        self.server = server
        server.start()
        self.workers = [FleetWorker(server, index=n) for n in range(self.worker_count)]
        for worker in self.workers:
            worker.nice = self.worker_nice
            worker.start()
        return server

    def processes(self) -> dict[str, list[int]]:
        """Pids by role, for CPU accounting."""
        found: dict[str, list[int]] = {}
        if self.server is not None and self.server.pid:
            found["api"] = [self.server.pid, *child_pids(self.server.pid)]
        found["workers"] = [w.pid for w in self.workers if w.pid]
        if self.postgres.pid:
            found["postgres"] = [self.postgres.pid, *child_pids(self.postgres.pid)]
        if self.redis.pid:
            found["redis"] = [self.redis.pid]
        return found

    def close(self) -> None:
        for worker in self.workers:
            worker.close()
        if self.server is not None:
            self.server.close()
        self.postgres.close()
        self.redis.close()


def operator_setup(server: LiveServer, check_count: int, labels: dict[str, str],
                   tokens: int = 1) -> tuple[list[str], str]:
    """``tokens`` bootstrap tokens without a use limit and ``check_count`` checks
    assigned by label; returns (bootstrap tokens, admin token)."""
    admin = last_line(server.cli("admin-token", "create", "--name", "fleet-sim"))
    secrets = [last_line(server.cli("token", "create", "--name", "fleet-sim"))]
    headers = {"Authorization": f"Bearer {admin}"}
    for n in range(1, tokens):
        reply = requests.post(server.api("bootstrap-tokens"), headers=headers, timeout=30,
                              json={"name": f"fleet-sim-{n}"})
        if reply.status_code != 201:
            raise RuntimeError(f"creating a bootstrap token: {reply.status_code} {reply.text}")
        secrets.append(reply.json()["token"])
    existing_setup(server.url, admin, check_count, labels)
    return secrets, admin


def existing_setup(base_url: str, admin_token: str, check_count: int,
                   labels: dict[str, str]) -> None:
    """Against a server we did not start: make the checks with the operator's token."""
    headers = {"Authorization": f"Bearer {admin_token}"}
    for n in range(check_count):
        reply = requests.post(f"{base_url}/api/v1/checks", headers=headers, timeout=30, json={
            "id": f"sim-{n}", "name": f"simulated check {n}", "command": CHECK_COMMAND,
            "interval": "60s", "timeout": "10s", "assign": {"labels": labels},
        })
        if reply.status_code not in (201, 409):
            raise RuntimeError(f"creating check sim-{n}: {reply.status_code} {reply.text}")


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of ``pids`` (and the children they reaped), in seconds."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(v) for v in fields[11:15])
    return total / ticks


__all__ = ["CeilingServer", "FleetServer", "Serving", "Stack", "free_port"]
