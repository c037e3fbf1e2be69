"""The processes of the end-to-end deployment tests: an embedded config-server from this
checkout's venv, the agent the role deployed into a prefix, and the API the server role
deployed, started from its unit file.

All are :class:`~tests.support.services.LocalServer` objects: started in a session of
their own, killed with their parent if pytest dies. :func:`session_members` tells whether
anything of such a session outlived a stop.
"""

from __future__ import annotations

import json
import os
import shlex
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


def read_environment_file(path: Path) -> dict[str, str]:
    """The variables of an ``EnvironmentFile=`` as a shell reads it (the role writes it to
    read the same in systemd and sh)."""
    script = f"set -a; . {shlex.quote(str(path))}; env -0"
    done = subprocess.run(["/bin/sh", "-c", script], env={}, capture_output=True, text=True,
                          check=True, timeout=30)
    pairs = (item.split("=", 1) for item in done.stdout.split("\0") if "=" in item)
    return {name: value for name, value in pairs if name.startswith("AAMI_")}


class UnitService(LocalServer):
    """The service of a unit file the role wrote, run the way systemd would run it as far
    as a test can: its ``ExecStart=`` word for word, in its ``WorkingDirectory=``, with its
    ``EnvironmentFile=`` and ``Environment=``, its ``RuntimeDirectory=`` made (``%t``, the
    runtime directory, is ``runtime_dir``). Not its ``User=`` or sandbox: it runs as the
    test's user.

    Ready once ``ready_url`` answers 200 (``requests`` arguments in ``ready_kwargs``).
    The log (stdout and stderr) is ``<WorkingDirectory>/unit-service.log``.
    """

    name = "unit-service"
    ready_timeout: ClassVar[float] = 90.0

    def __init__(self, unit: Path, runtime_dir: Path, port: int) -> None:
        self.unit = unit
        self.directives: dict[str, list[str]] = {}
        for line in unit.read_text().splitlines():
            if "=" in line and not line.startswith(("#", ";")):
                key, value = line.split("=", 1)
                self.directives.setdefault(key.strip(), []).append(value.strip())
        (working_directory,) = self.directives["WorkingDirectory"]
        super().__init__(Path(working_directory), port=port)
        # RuntimeDirectory=: made by systemd before the service starts.
        for names in self.directives.get("RuntimeDirectory", []):
            for name in names.split():
                (runtime_dir / name).mkdir(mode=0o700, parents=True, exist_ok=True)
        self.environment = {}
        for env_file in self.directives.get("EnvironmentFile", []):
            self.environment.update(read_environment_file(Path(env_file)))
        for assignment in self.directives.get("Environment", []):
            for word in shlex.split(assignment):
                name, value = word.split("=", 1)
                self.environment[name] = value.replace("%t", str(runtime_dir))
        (exec_start,) = self.directives["ExecStart"]
        self.argv = shlex.split(exec_start)
        self.ready_url = ""
        self.ready_kwargs: dict[str, Any] = {}
        self.session_id: int | None = None

    @property
    def url(self) -> str:
        return self.ready_url or f"unit:{self.unit}"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"

    def _spawn(self) -> subprocess.Popen[bytes]:
        proc = self._popen(self.argv, env=clean_env(self.environment))
        self.session_id = proc.pid
        return proc

    def _answers(self) -> bool:
        try:
            reply = requests.get(self.ready_url, timeout=2, **self.ready_kwargs)
        except requests.RequestException:
            return False
        return reply.status_code == 200
