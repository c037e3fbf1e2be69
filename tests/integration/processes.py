"""The config-server's other processes, and a real agent, for integration tests.

Each is a :class:`~tests.support.services.LocalServer`, so a test can start, stop, SIGKILL
and restart it like the databases. They have no port of their own: "ready" means the
process is up and has said so in its log (worker, cron) or written its status file (agent).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from tests.integration.live_server import AAMI_SERVER, LiveServer, aami_env, session_members
from tests.support.services import LocalServer

T = TypeVar("T")

AAMI_AGENT = Path(sys.executable).with_name("aami-agent")


def wait_until(
    probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05
) -> T:
    """Call ``probe`` until it returns something truthy; return that, or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def processes_with_arg(marker: str) -> list[int]:
    """Live (non-zombie) processes that have ``marker`` inside one of their arguments."""
    wanted = marker.encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and any(wanted in arg for arg in argv):
            found.append(int(entry.name))
    return found


class _SessionReaper:
    """Records what a stopped process left running in its session, and kills it.

    Every process here is started in its own session, so a member still alive after the
    leader exited is a leftover (a worker's work horse, a plugin the agent did not reap).
    """

    exit_code: int | None
    leftovers: list[int]
    _proc: subprocess.Popen[bytes] | None

    def _stop_and_reap(self, stop: Callable[[], None]) -> None:
        proc = self._proc
        stop()
        if proc is None:
            return
        self.exit_code = proc.returncode
        found = session_members(proc.pid)
        for pid in found:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.leftovers.extend(found)


class _LogReadyProcess(_SessionReaper, LocalServer):
    """Ready once ``ready_marker`` appears in the process's log."""

    def __init__(self, data_dir: Path | str | None = None, port: int | None = None) -> None:
        super().__init__(data_dir, port)
        self.exit_code = None
        self.leftovers = []

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (SIGKILL after ``timeout``); ``exit_code`` and ``leftovers`` say how."""
        self._stop_and_reap(lambda: LocalServer.stop(self, timeout))

    ready_marker: ClassVar[str]

    @property
    def url(self) -> str:
        return f"process:{self.name}"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def _prepare(self) -> None:
        # A restart must wait for a fresh marker, not find the previous run's.
        if self.log_path.exists():
            self.log_path.rename(
                self.log_path.with_suffix(f".{self.log_path.stat().st_mtime_ns}.log")
            )

    def _answers(self) -> bool:
        return self.ready_marker in self.log_text()


class LiveWorker(_LogReadyProcess):
    """``aami-server worker`` with the settings of ``server``."""

    name = "aami-worker"
    ready_marker = "worker starting"

    def __init__(
        self, server: LiveServer, *, index: int = 0, extra_args: tuple[str, ...] = ()
    ) -> None:
        self.name = f"aami-worker-{index}"  # type: ignore[misc]  # one log file per worker
        super().__init__(server.data_dir)
        self.server = server
        self.extra_args = extra_args

    def _spawn(self) -> subprocess.Popen[bytes]:
        argv = [str(AAMI_SERVER), "worker", "--maintenance-interval", "5", *self.extra_args]
        return self._popen(argv, env=aami_env(self.server.settings))


class LiveCron(_LogReadyProcess):
    """``aami-server cron`` with the settings of ``server`` (plus ``extra_settings``)."""

    name = "aami-cron"
    ready_marker = "Registered"

    def __init__(
        self, server: LiveServer, *, index: int = 0, extra_settings: Mapping[str, str] | None = None
    ) -> None:
        self.name = f"aami-cron-{index}"  # type: ignore[misc]
        super().__init__(server.data_dir)
        self.server = server
        self.extra_settings = dict(extra_settings or {})

    def _spawn(self) -> subprocess.Popen[bytes]:
        env = aami_env({**self.server.settings, **self.extra_settings})
        return self._popen([str(AAMI_SERVER), "cron"], env=env)


def write_agent_config(
    directory: Path,
    *,
    server_url: str,
    bootstrap_token: str,
    allowed_paths: list[str],
    labels: Mapping[str, str] | None = None,
    extra: str = "",
    max_concurrent: int = 10,
    result_buffer_size: int = 1000,
    log_level: str = "debug",
    allowed_executables: Sequence[str] = (),
    exec_containment: str = "auto",
    policy_keys: Sequence[str | None] = (),
    insecure_accept_unsigned_policies: bool = False,
    tls_ca_cert: str | None = None,
    tls_enroll: bool = False,
) -> Path:
    """An agent.yaml whose every path lives in ``directory``.

    ``policy_keys``: the server's policy keys (LiveServer.policy_public_key); without them
    the agent refuses every policy over plain HTTP, like an agent installed that way.

    ``allowed_executables``: what checks may execute past the exec containment besides
    ``allowed_paths`` (``checks.allowed_executables``); none, as by default.
    ``exec_containment``: ``checks.exec_containment``.

    ``tls_ca_cert``: for an https ``server_url``, the CA that signed the server's
    certificate; ``tls_enroll``: get a client certificate at registration.
    ``extra`` is appended as more top-level YAML (sections not written here: ``spool``).
    """
    tls = {"enabled": server_url.startswith("https://"), "ca_cert": tls_ca_cert or "",
           "enroll": tls_enroll}
    keys = [key for key in policy_keys if key]
    trust = f"  policy_keys: {json.dumps(keys)}\n" if keys else ""
    if insecure_accept_unsigned_policies:
        trust += "  insecure_accept_unsigned_policies: true\n"
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "agent.yaml"
    config.write_text(
        f"""server:
  address: "{server_url}"
  bootstrap_token: "{bootstrap_token}"
  tls: {json.dumps(tls)}
{trust}agent:
  id_file: "{directory}/agent-id"
  hostname: "{directory.name}"
  labels: {json.dumps(dict(labels or {}))}
  state_dir: "{directory}/state"
heartbeat: {{interval: 2s, timeout: 5s}}
checks:
  default_timeout: 10s
  max_concurrent: {max_concurrent}
  result_buffer_size: {result_buffer_size}
  allowed_paths: {json.dumps(allowed_paths)}
  allowed_executables: {json.dumps(list(allowed_executables))}
  exec_containment: {exec_containment}
results: {{batch_size: 100, flush_interval: 500ms}}
logging: {{level: {log_level}, format: json}}
{extra}"""
    )
    return config


class LiveAgent(_SessionReaper, LocalServer):
    """``aami-agent run -c CONFIG``: ready once it has written its status file.

    The log (``aami-agent.log``) and the state live next to the configuration file; a
    restart appends to the same log.
    """

    name = "aami-agent"
    ready_timeout: ClassVar[float] = 30.0

    def __init__(self, config: Path) -> None:
        super().__init__(config.parent)
        self.config = config
        self.exit_code: int | None = None
        self.leftovers: list[int] = []

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM and wait for the clean shutdown (checks finish, results are flushed)."""
        self._stop_and_reap(lambda: LocalServer.stop(self, timeout))

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_for_status(
        self, predicate: Callable[[dict[str, Any]], object], timeout: float, what: str
    ) -> dict[str, Any]:
        """Poll status.json until ``predicate(status)`` holds; returns that status."""

        def probe() -> dict[str, Any] | None:
            status = self.status()
            return status if status and predicate(status) else None

        return wait_until(probe, timeout, f"the agent's status to show {what}", interval=0.02)

    @property
    def url(self) -> str:
        return f"agent:{self.config}"

    @property
    def status_path(self) -> Path:
        return self.data_dir / "state" / "status.json"

    def status(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.status_path.read_text())
        except (OSError, ValueError):
            return {}
        return data

    def agent_id(self) -> str:
        return (self.data_dir / "agent-id").read_text().strip()

    def _prepare(self) -> None:
        self.status_path.unlink(missing_ok=True)

    def _spawn(self) -> subprocess.Popen[bytes]:
        return self._popen([str(AAMI_AGENT), "run", "-c", str(self.config)], env=aami_env({}))

    def _answers(self) -> bool:
        return self.status_path.exists()
