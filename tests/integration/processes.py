"""The config-server's other processes, and a real agent, for integration tests.

Each is a :class:`~tests.support.services.LocalServer`, so a test can start, stop, SIGKILL
and restart it like the databases. They have no port of their own: "ready" means the
process is up and has said so in its log (worker, cron) or written its status file (agent).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from tests.integration.live_server import AAMI_SERVER, LiveServer, aami_env
from tests.support.services import LocalServer

AAMI_AGENT = Path(sys.executable).with_name("aami-agent")


class _LogReadyProcess(LocalServer):
    """Ready once ``ready_marker`` appears in the process's log."""

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
) -> Path:
    """An agent.yaml whose every path lives in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "agent.yaml"
    config.write_text(
        f"""server:
  address: "{server_url}"
  bootstrap_token: "{bootstrap_token}"
  tls: {{enabled: false}}
agent:
  id_file: "{directory}/agent-id"
  hostname: "{directory.name}"
  labels: {json.dumps(dict(labels or {}))}
  state_dir: "{directory}/state"
heartbeat: {{interval: 2s, timeout: 5s}}
checks:
  default_timeout: 10s
  max_concurrent: 10
  allowed_paths: {json.dumps(allowed_paths)}
results: {{batch_size: 100, flush_interval: 500ms}}
logging: {{level: debug, format: json}}
{extra}"""
    )
    return config


class LiveAgent(LocalServer):
    """``aami-agent run -c CONFIG``: ready once it has written its status file."""

    name = "aami-agent"
    ready_timeout: ClassVar[float] = 30.0

    def __init__(self, config: Path) -> None:
        super().__init__(config.parent)
        self.config = config

    @property
    def url(self) -> str:
        return f"agent:{self.config}"

    @property
    def status_path(self) -> Path:
        return self.data_dir / "state" / "status.json"

    def status(self) -> dict[str, Any]:
        try:
            return json.loads(self.status_path.read_text())  # type: ignore[no-any-return]
        except (OSError, ValueError):
            return {}

    def agent_id(self) -> str:
        return (self.data_dir / "agent-id").read_text().strip()

    def _prepare(self) -> None:
        self.status_path.unlink(missing_ok=True)

    def _spawn(self) -> subprocess.Popen[bytes]:
        return self._popen([str(AAMI_AGENT), "run", "-c", str(self.config)], env=aami_env({}))

    def _answers(self) -> bool:
        return self.status_path.exists()
