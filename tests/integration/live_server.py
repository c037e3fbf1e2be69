"""A real config-server for integration tests: ``aami-server serve`` under gunicorn.

:class:`LiveServer` runs the installed ``aami-server`` console script as a subprocess, the
way an operator would: the database is migrated first with ``aami-server db upgrade``, then
``serve --workers N`` (gunicorn, gthread workers) listens on a free loopback port. Its
output goes to a log file that failing tests show (see ``conftest.py``). Stopping sends
SIGTERM (SIGKILL after a grace period) and then looks for anything left in the server's
session, so a leaked worker fails the test that leaked it.

Gunicorn's workers share one listening socket, so which worker serves a connection is the
kernel's choice. :meth:`LiveServer.session_on_worker` leaves it no choice (the other
workers are paused while it connects), checks in ``/proc`` which worker holds the
connection, and hands back a ``requests`` session whose keep-alive connection is served by
the worker asked for: a test can put two requests on two different processes on purpose.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import requests
from requests.adapters import HTTPAdapter

from tests.support.services import LOOPBACK, LocalServer, child_pids, free_port

# The console script of the environment running the tests (the project's venv).
AAMI_SERVER = Path(sys.executable).with_name("aami-server")
SECRET_KEY = "integration-test-signing-key-0123456789abcdef"
CLI_TIMEOUT = 120.0


def aami_env(settings: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without any ``AAMI_*`` of the developer's, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AAMI_")}
    env.update(settings)
    return env


def run_cli(
    *args: str,
    settings: Mapping[str, str],
    cwd: Path,
    check: bool = True,
    executable: Path = AAMI_SERVER,
) -> subprocess.CompletedProcess[str]:
    """Run ``aami-server ARGS`` with exactly ``settings`` as its AAMI_* environment.

    ``cwd`` matters: with no ``AAMI_DATA_DIR`` the embedded default writes ``./var``.
    """
    done = subprocess.run(
        [str(executable), *args],
        env=aami_env(settings),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )
    if check and done.returncode != 0:
        raise AssertionError(
            f"aami-server {' '.join(args)} exited {done.returncode}\n"
            f"--- stdout\n{done.stdout}--- stderr\n{done.stderr}"
        )
    return done


def last_line(output: str) -> str:
    """The secret that ``token create`` / ``admin-token create`` print alone on the last line."""
    lines = output.strip().splitlines()
    assert lines, "the command printed nothing on stdout"
    return lines[-1].strip()


# --------------------------------------------------------------------------- /proc


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name: state, ppid, pgrp, session, ..."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()


def session_members(session_id: int) -> list[int]:
    """Live (non-zombie) processes of the session ``session_id``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None and int(fields[3]) == session_id and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def _established_socket_inode(server_port: int, client_port: int) -> str | None:
    """Inode of the server side of the loopback TCP connection client_port -> server_port."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].rsplit(":", 1)[1], 16)
        remote_port = int(fields[2].rsplit(":", 1)[1], 16)
        if local_port == server_port and remote_port == client_port and fields[3] == "01":
            return fields[9]
    return None


def _holder_of_socket(inode: str, pids: list[int]) -> int | None:
    wanted = f"socket:[{inode}]"
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) == wanted:
                        return pid
    return None


class _SourcePortAdapter(HTTPAdapter):
    """One connection at most, always from the same local port, so /proc can find it."""

    def __init__(self, source_port: int) -> None:
        self.source_port = source_port
        super().__init__(pool_connections=1, pool_maxsize=1, max_retries=0)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["source_address"] = (LOOPBACK, self.source_port)
        super().init_poolmanager(*args, **kwargs)


class PinnedSession(requests.Session):
    """A ``requests`` session whose one connection leaves from ``client_port``."""

    def __init__(self) -> None:
        super().__init__()
        self.client_port = free_port()
        self.mount("http://", _SourcePortAdapter(self.client_port))


# --------------------------------------------------------------------------- the server


def _policy_key(path: Path) -> str:
    """The public key of the policy key at ``path``, made first if there is none."""
    from server.security.policy import create_policy_key, load_policy_key, public_key_text

    key = load_policy_key(path) if path.exists() else create_policy_key(path)
    return public_key_text(key)


class LiveServer(LocalServer):
    """``aami-server serve`` on PostgreSQL and Redis, under gunicorn with ``workers`` processes.

    ``data_dir`` is the server's AAMI_DATA_DIR and holds its log; it is left in place
    (pytest's tmp_path) so the log can be read after a failure. ``threads`` defaults to
    the CLI's own default, the production setting.
    """

    name = "aami-server"
    ready_timeout: ClassVar[float] = 30.0

    def __init__(
        self,
        data_dir: Path,
        *,
        database_url: str,
        redis_url: str,
        workers: int = 2,
        threads: int | None = None,
        extra_settings: Mapping[str, str] | None = None,
        sign_policies: bool = True,
    ) -> None:
        """``sign_policies``: give the server a policy key (``policy_public_key`` is its
        public half, for agent configs); without one it sends policies unsigned."""
        super().__init__(data_dir)
        self.database_url = database_url
        self.redis_url = redis_url
        self.workers = workers
        self.threads = threads
        self.settings = {
            "AAMI_DATABASE_URL": database_url,
            "AAMI_REDIS_URL": redis_url,
            "AAMI_SECRET_KEY": SECRET_KEY,
            "AAMI_DATA_DIR": str(self.data_dir),
            # Temporary files (prometheus-client's per-process metrics among them) stay
            # with the test instead of piling up in /tmp.
            "TMPDIR": str(self.data_dir / "tmp"),
            **(extra_settings or {}),
        }
        self.policy_public_key: str | None = None
        if sign_policies:
            self.policy_public_key = _policy_key(self.data_dir / "policy.key")
            self.settings.setdefault("AAMI_POLICY_KEY_FILE", str(self.data_dir / "policy.key"))
        self.started_in: float | None = None
        self.exit_code: int | None = None
        self.leftovers: list[int] = []

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def api(self, path: str) -> str:
        """Absolute URL of an ``/api/v1`` path."""
        return f"{self.url}/api/v1/{path.lstrip('/')}"

    def cli(self, *args: str) -> str:
        """Run ``aami-server ARGS`` against this server's settings; returns its stdout."""
        return run_cli(*args, settings=self.settings, cwd=self.data_dir).stdout

    def log_tail(self, lines: int = 80) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def worker_pids(self) -> list[int]:
        """The gunicorn worker processes (children of the master)."""
        return sorted(child_pids(self.pid)) if self.pid else []

    def start(self) -> LiveServer:
        began = time.monotonic()
        super().start()
        self.started_in = time.monotonic() - began
        self._wait_for_workers()
        return self

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the master (SIGKILL after ``timeout``); kill and record any leftover."""
        proc = self._proc
        super().stop(timeout)
        if proc is None:
            return
        self.exit_code = proc.returncode
        found = session_members(proc.pid)
        for pid in found:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.leftovers.extend(found)

    def worker_serving(self, client_port: int) -> int | None:
        """The worker holding the connection that leaves the client from ``client_port``."""
        inode = _established_socket_inode(self.port, client_port)
        return None if inode is None else _holder_of_socket(inode, self.worker_pids())

    def session_on_worker(self, worker_pid: int, timeout: float = 10.0) -> PinnedSession:
        """A fresh session whose open keep-alive connection is served by ``worker_pid``.

        The other workers are paused (SIGSTOP) while the connection is made and its first
        request answered, so the kernel has only ``worker_pid`` to hand it to; they resume
        at once. Gunicorn closes an idle keep-alive connection after a couple of seconds:
        use the session straight away.
        """
        workers = self.worker_pids()
        if worker_pid not in workers:
            raise AssertionError(f"{worker_pid} is not a worker of the server ({workers})")
        others = [pid for pid in workers if pid != worker_pid]
        session = PinnedSession()
        try:
            for pid in others:
                os.kill(pid, signal.SIGSTOP)
            try:
                session.get(f"{self.url}/healthz", timeout=timeout).raise_for_status()
            finally:
                for pid in others:
                    os.kill(pid, signal.SIGCONT)
            owner = self.worker_serving(session.client_port)
            if owner != worker_pid:
                raise AssertionError(f"connection went to {owner}, not to worker {worker_pid}")
        except BaseException:
            session.close()
            raise
        return session

    # LocalServer's hooks -------------------------------------------------------------

    def _prepare(self) -> None:
        (self.data_dir / "tmp").mkdir(exist_ok=True)
        run_cli("db", "upgrade", settings=self.settings, cwd=self.data_dir)

    def _spawn(self) -> subprocess.Popen[bytes]:
        argv = [
            str(AAMI_SERVER), "serve", "--host", LOOPBACK, "--port", str(self.port),
            "--workers", str(self.workers),
        ]
        if self.threads is not None:
            argv += ["--threads", str(self.threads)]
        return self._popen(argv, env=aami_env(self.settings))

    def _answers(self) -> bool:
        try:
            reply = requests.get(f"{self.url}/readyz", timeout=2)
        except requests.RequestException:
            return False
        return reply.status_code == 200

    def _wait_for_workers(self) -> None:
        """Wait until every worker has answered a request: /readyz came from only one."""
        deadline = time.monotonic() + self.ready_timeout
        while len(self.worker_pids()) < self.workers:
            if time.monotonic() > deadline or not self.running:
                raise AssertionError(
                    f"gunicorn has {len(self.worker_pids())} of {self.workers} workers; "
                    f"log:\n{self.log_tail()}"
                )
            time.sleep(0.05)
        for pid in self.worker_pids():
            try:
                self.session_on_worker(pid, timeout=max(1.0, deadline - time.monotonic())).close()
            except (AssertionError, requests.RequestException) as exc:
                raise AssertionError(
                    f"worker {pid} did not answer: {exc}; log:\n{self.log_tail()}"
                ) from None
