"""The processes of the end-to-end deployment test: an embedded config-server from this
checkout's venv, and the agent the role deployed into a prefix.

Both are :class:`~tests.support.services.LocalServer` objects: started in a session of
their own, killed with their parent if pytest dies. :func:`session_members` tells whether
anything of such a session outlived a stop.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import requests

from tests.support.services import LOOPBACK, LocalServer

AAMI_SERVER = Path(sys.executable).with_name("aami-server")


def clean_env(settings: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without any AAMI_* of the developer's, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AAMI_")}
    env.update(settings or {})
    return env


def session_members(session_id: int) -> list[int]:
    """Live (non-zombie) processes of the session ``session_id``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[3]) == session_id and fields[0] != "Z":
            found.append(int(entry.name))
    return found


class EmbeddedServer(LocalServer):
    """``aami-server serve`` with everything embedded (SQLite, in-process jobs)."""

    name = "aami-server"
    ready_timeout: ClassVar[float] = 60.0

    def __init__(self, data_dir: Path, heartbeat_interval: int = 2) -> None:
        super().__init__(data_dir)
        self.settings = {
            "AAMI_DATA_DIR": str(data_dir),
            "AAMI_HEARTBEAT_INTERVAL": str(heartbeat_interval),
            "AAMI_LOG_FORMAT": "text",
        }
        self.session_id: int | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def api(self, path: str) -> str:
        return f"{self.url}/api/v1/{path.lstrip('/')}"

    def cli(self, *args: str) -> str:
        """``aami-server ARGS`` on this server's settings; the last line of its stdout."""
        done = subprocess.run(
            [str(AAMI_SERVER), *args], env=clean_env(self.settings), cwd=self.data_dir,
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120, check=False,
        )
        assert done.returncode == 0, f"aami-server {args} failed:\n{done.stdout}\n{done.stderr}"
        return done.stdout.strip().splitlines()[-1].strip()

    def _spawn(self) -> subprocess.Popen[bytes]:
        proc = self._popen(
            [str(AAMI_SERVER), "serve", "--host", LOOPBACK, "--port", str(self.port)],
            env=clean_env(self.settings),
        )
        self.session_id = proc.pid
        return proc

    def _answers(self) -> bool:
        try:
            return requests.get(f"{self.url}/readyz", timeout=2).status_code == 200
        except requests.RequestException:
            return False


class DeployedAgent(LocalServer):
    """The agent the role installed: ``<prefix>/opt/aami/bin/aami-agent run -c <config>``.

    Ready once it has written its status file into its state directory.
    """

    name = "aami-agent"
    ready_timeout: ClassVar[float] = 60.0

    def __init__(self, root: Path, log_dir: Path) -> None:
        super().__init__(log_dir)
        self.root = root
        self.session_id: int | None = None

    @property
    def url(self) -> str:
        return f"agent:{self.root}"

    @property
    def status_path(self) -> Path:
        return self.root / "var/lib/aami/status.json"

    def status(self) -> dict[str, Any]:
        try:
            return json.loads(self.status_path.read_text())  # type: ignore[no-any-return]
        except (OSError, ValueError):
            return {}

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"

    def _spawn(self) -> subprocess.Popen[bytes]:
        argv = [str(self.root / "opt/aami/bin/aami-agent"), "run",
                "-c", str(self.root / "etc/aami/agent.yaml")]
        proc = self._popen(argv, env=clean_env())
        self.session_id = proc.pid
        return proc

    def _answers(self) -> bool:
        return self.status_path.exists()
