"""Real Redis and PostgreSQL servers for integration tests.

Where a service comes from, first match wins:

1. an explicit URL in the environment: ``REDIS_URL``, ``DATABASE_URL`` (PostgreSQL);
2. a container through testcontainers, when a Docker daemon answers
   (``AAMI_TEST_DOCKER=0`` turns this off);
3. a private server process on a free 127.0.0.1 port, started from the local binaries:
   ``redis-server`` (or ``AAMI_TEST_REDIS_SERVER``) and PostgreSQL 15 from
   ``/usr/lib/postgresql/15/bin`` (or ``AAMI_TEST_PG_BINDIR``).

When none of them can be had, tests skip with a message saying what to install, except
under ``CI=true``, where they fail: CI must never pass by skipping its integration tests.

Fault tests use :class:`RedisServer` and :class:`PostgresServer` directly: both can be
stopped, SIGKILLed and restarted on the same port and data directory.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import importlib
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NoReturn, Protocol, Self
from urllib.parse import urlsplit

import psycopg
import pytest
import redis
from psycopg import sql
from sqlalchemy.engine import make_url

PG_BINDIR = "/usr/lib/postgresql/15/bin"
PG_SUPERUSER = "postgres"
TEST_DATABASE = "aami_test"
REDIS_IMAGE = "redis:7"
POSTGRES_IMAGE = "postgres:15"
LOOPBACK = "127.0.0.1"


class ServiceUnavailable(Exception):
    """A service cannot be had on this machine; the message says what to install."""


class ServiceError(Exception):
    """A service was there but did not work (failed to start, did not answer)."""


class Service(Protocol):
    """What the session fixtures yield: somewhere to connect, and a way to let go of it."""

    @property
    def url(self) -> str: ...

    def stop(self) -> None: ...


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def skip_or_fail(reason: str) -> NoReturn:
    """Skip the test for a missing service, or fail it when running in CI."""
    if in_ci():
        message = f"{reason}\n(CI=true: a missing service fails the run instead of skipping)"
        pytest.fail(message, pytrace=False)
    pytest.skip(reason)


@contextlib.contextmanager
def required() -> Iterator[None]:
    """Turn :class:`ServiceUnavailable` raised inside the block into skip-or-fail."""
    try:
        yield
    except ServiceUnavailable as exc:
        skip_or_fail(str(exc))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


# --------------------------------------------------------------------------- processes

_libc = ctypes.CDLL(None, use_errno=True)  # loaded now: dlopen() after fork() can deadlock


def _prctl(option: int, arg: int) -> None:
    _libc.prctl(option, arg, 0, 0, 0)


_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid``, read from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name in field 2 may hold spaces: the ppid is the 2nd field after ')'.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def _kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL a server and all its worker processes at once, as a crash would, and reap them.

    The root is frozen first so that it cannot fork while its children are collected.
    We become a child subreaper meanwhile so that the orphaned workers are reparented to us
    and reaped here: not every init reaps zombies.
    """
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGSTOP)
    children = child_pids(proc.pid)
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    try:
        for pid in [*children, proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()
        for pid in children:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
    finally:
        _prctl(_PR_SET_CHILD_SUBREAPER, 0)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


_live: set[LocalServer] = set()


@atexit.register
def _close_all() -> None:
    for server in list(_live):
        server.close()


class LocalServer:
    """A server process on 127.0.0.1 that a test can start, stop, SIGKILL and restart.

    The port and data directory are kept across restarts. A data directory that this object
    created is removed by :meth:`close`; one passed in is left in place.
    """

    name: ClassVar[str]
    stop_signal: ClassVar[signal.Signals] = signal.SIGTERM
    ready_timeout: ClassVar[float] = 60.0

    def __init__(self, data_dir: Path | str | None = None, port: int | None = None) -> None:
        self._owns_dir = data_dir is None
        self._fixed_port = port is not None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix=f"aami-{self.name}-"))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        raise NotImplementedError

    @property
    def log_path(self) -> Path:
        return self.data_dir / f"{self.name}.log"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc else None

    def start(self) -> Self:
        """Start the server and wait until it answers. Does nothing if it is running."""
        if self.running:
            return self
        self._prepare()
        # A port picked by free_port() can be taken before the server binds it: pick again.
        attempts = 1 if self._fixed_port else 3
        for attempt in range(1, attempts + 1):
            self._proc = self._spawn()
            _live.add(self)
            if self._wait_ready():
                return self
            if attempt < attempts:
                self.port = free_port()
        self.kill()
        raise ServiceError(
            f"{self.name} did not start on {LOOPBACK}:{self.port} within {self.ready_timeout}s; "
            f"last lines of {self.log_path}:\n{_tail(self.log_path)}"
        )

    def stop(self, timeout: float = 15.0) -> None:
        """Shut the server down cleanly (SIGKILL if it takes longer than ``timeout``)."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(self.stop_signal)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _kill_tree(self._proc)
        self._proc = None

    def kill(self) -> None:
        """SIGKILL the server and all its processes, like a crash. Data files stay."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            _kill_tree(self._proc)
        self._proc = None

    def restart(self) -> Self:
        """Stop (if running) and start again on the same port and data directory."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop the server for good and remove a data directory this object created."""
        self.stop()
        _live.discard(self)
        if self._owns_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "stopped"
        return f"<{type(self).__name__} {self.url} {state} in {self.data_dir}>"

    # Subclasses fill these in.
    def _prepare(self) -> None:
        """Get the data directory ready (runs before every start)."""

    def _spawn(self) -> subprocess.Popen[bytes]:
        raise NotImplementedError

    def _answers(self) -> bool:
        raise NotImplementedError

    def _popen(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        death_signal = int(self.stop_signal)

        def die_with_parent() -> None:
            # If pytest itself is killed, take the server down with it: no leftovers.
            _prctl(_PR_SET_PDEATHSIG, death_signal)

        with self.log_path.open("ab") as log:
            return subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.data_dir, start_new_session=True, preexec_fn=die_with_parent,
                **kwargs,
            )

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if not self.running:
                return False
            if self._answers():
                return True
            time.sleep(0.05)
        return False


class RedisServer(LocalServer):
    """``redis-server`` on 127.0.0.1; no persistence unless ``appendonly=True``.

    With ``appendonly=True`` it writes an AOF (``appendfsync everysec``) into ``data_dir``,
    so data written before a :meth:`kill` is there again after :meth:`restart`.
    """

    name = "redis"

    def __init__(
        self,
        data_dir: Path | str | None = None,
        port: int | None = None,
        *,
        appendonly: bool = False,
        binary: str | None = None,
        options: Mapping[str, str] | None = None,
    ) -> None:
        wanted = binary or os.environ.get("AAMI_TEST_REDIS_SERVER", "redis-server")
        found = shutil.which(wanted)
        if found is None:
            raise ServiceUnavailable(
                f"Redis is not available: no {wanted!r} executable. Install it "
                "(Debian: `apt-get install redis-server`; scripts/test does it), "
                "or set REDIS_URL=redis://HOST:PORT/0 to use a running server."
            )
        self.binary = found
        self.appendonly = appendonly
        self.options = dict(options or {})
        super().__init__(data_dir, port)

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis(host=LOOPBACK, port=self.port, db=db, socket_timeout=5)

    def _spawn(self) -> subprocess.Popen[bytes]:
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "everysec"]
            if self.appendonly else ["--appendonly", "no"]
        )
        argv = [
            self.binary, "--bind", LOOPBACK, "--port", str(self.port), "--dir", str(self.data_dir),
            "--save", "", *persistence, "--daemonize", "no", "--logfile", "",
        ]
        for key, value in self.options.items():
            argv += [f"--{key}", value]
        return self._popen(argv)

    def _answers(self) -> bool:
        try:
            with redis.Redis(host=LOOPBACK, port=self.port, socket_timeout=1,
                             socket_connect_timeout=1) as client:
                return bool(client.ping())
        except redis.RedisError:  # includes BusyLoadingError while the AOF loads
            return False


class PostgresServer(LocalServer):
    """A private PostgreSQL 15 cluster on 127.0.0.1 with trust authentication.

    By default ``fsync`` and ``full_page_writes`` are off for speed: committed data still
    survives :meth:`kill` (the kernel has it), only an OS crash would lose it.
    ``durable=True`` turns them back on for tests that care about the real settings.
    Running as root, every PostgreSQL program runs as the ``postgres`` user, since
    ``initdb`` refuses to run as root.
    """

    name = "postgres"
    stop_signal = signal.SIGINT  # "fast" shutdown: disconnect clients, checkpoint, exit
    superuser = PG_SUPERUSER

    def __init__(
        self,
        data_dir: Path | str | None = None,
        port: int | None = None,
        *,
        durable: bool = False,
        bindir: str | None = None,
        database: str = TEST_DATABASE,
        options: Mapping[str, str] | None = None,
    ) -> None:
        self.bindir = Path(bindir or os.environ.get("AAMI_TEST_PG_BINDIR", PG_BINDIR))
        missing = [p for p in ("initdb", "postgres") if not os.access(self.bindir / p, os.X_OK)]
        if missing:
            raise ServiceUnavailable(
                f"PostgreSQL 15 is not available: no {', '.join(missing)} in {self.bindir}. "
                "Install it (Debian: `apt-get install postgresql`; scripts/test does it), "
                "or set DATABASE_URL=postgresql://USER@HOST:PORT/DB to use a running server."
            )
        self._run_as = self._service_user()
        self.durable = durable
        self.database = database
        self.options = dict(options or {})
        super().__init__(data_dir, port)
        if self._run_as:
            os.chown(self.data_dir, self._run_as.pw_uid, self._run_as.pw_gid)
            self.data_dir.chmod(0o700)
        self._database_created = False

    @staticmethod
    def _service_user() -> pwd.struct_passwd | None:
        if os.geteuid() != 0:
            return None
        try:
            return pwd.getpwnam("postgres")
        except KeyError:
            raise ServiceUnavailable(
                "PostgreSQL cannot run as root and there is no 'postgres' user to run it as: "
                "install the postgresql package (it creates the user) or run as a normal user."
            ) from None

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    @property
    def url(self) -> str:
        return self.url_for(self.database)

    def url_for(self, database: str) -> str:
        """SQLAlchemy URL (psycopg 3 driver) of one database on this server."""
        return f"postgresql+psycopg://{self.superuser}@{LOOPBACK}:{self.port}/{database}"

    def connect(self, database: str = "postgres") -> psycopg.Connection[Any]:
        return psycopg.connect(host=LOOPBACK, port=self.port, user=self.superuser,
                               dbname=database, autocommit=True, connect_timeout=5)

    def start(self) -> Self:
        super().start()
        if not self._database_created:
            with self.connect() as conn:
                exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                      (self.database,)).fetchone()
                if not exists:
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(
                        sql.Identifier(self.database)))
            self._database_created = True
        return self

    def _as_service_user(self) -> dict[str, Any]:
        if self._run_as is None:
            return {}
        return {"user": self._run_as.pw_uid, "group": self._run_as.pw_gid, "extra_groups": []}

    def _prepare(self) -> None:
        if (self.pgdata / "PG_VERSION").exists():
            return
        argv = [str(self.bindir / "initdb"), "--pgdata", str(self.pgdata),
                "--username", self.superuser, "--auth", "trust",
                "--encoding", "UTF8", "--locale", "C.UTF-8"]
        if not self.durable:
            argv.append("--no-sync")
        # Not "runuser": it forks a watching parent, so the pid we hold would not be the
        # server's and a SIGKILL would miss it. Popen's user/group switch to postgres directly.
        with self.log_path.open("ab") as log:
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=log,
                                  stderr=subprocess.STDOUT, cwd=self.data_dir,
                                  check=False, **self._as_service_user())
        if done.returncode != 0:
            raise ServiceError(f"initdb failed ({done.returncode}); last lines of "
                               f"{self.log_path}:\n{_tail(self.log_path)}")

    def _spawn(self) -> subprocess.Popen[bytes]:
        settings = {
            "listen_addresses": LOOPBACK,
            "port": str(self.port),
            "unix_socket_directories": str(self.data_dir),
            "fsync": "on" if self.durable else "off",
            "full_page_writes": "on" if self.durable else "off",
            **self.options,
        }
        argv = [str(self.bindir / "postgres"), "-D", str(self.pgdata)]
        for key, value in settings.items():
            argv += ["-c", f"{key}={value}"]
        return self._popen(argv, **self._as_service_user())

    def _answers(self) -> bool:
        try:
            with psycopg.connect(host=LOOPBACK, port=self.port, user=self.superuser,
                                 dbname="postgres", connect_timeout=1):
                return True
        except psycopg.OperationalError:  # refused, or "the database system is starting up"
            return False


# --------------------------------------------------------------------------- choosing

@dataclass
class ExternalService:
    """A server someone else runs (``REDIS_URL`` / ``DATABASE_URL``): never stopped here."""

    url: str

    def stop(self) -> None:
        pass


@dataclass
class ContainerService:
    """A server in a testcontainers container, removed by :meth:`stop`."""

    url: str
    container: Any

    def stop(self) -> None:
        self.container.stop()


def docker_available() -> bool:
    """True when a Docker daemon answers within two seconds (and AAMI_TEST_DOCKER != 0)."""
    if os.environ.get("AAMI_TEST_DOCKER", "").strip() == "0":
        return False
    try:
        docker = importlib.import_module("docker")  # untyped; only needed when present
        client = docker.from_env(timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def _from_container(what: str, start: Callable[[], ContainerService]) -> Service | None:
    if not docker_available():
        return None
    try:
        return start()
    except Exception as exc:  # no image, no network: fall back to the local binaries
        warnings.warn(f"testcontainers could not start {what} ({exc}); trying local binaries",
                      stacklevel=2)
        return None


def _redis_container() -> ContainerService:
    from testcontainers.redis import RedisContainer

    container = RedisContainer(REDIS_IMAGE).start()
    host, port = container.get_container_host_ip(), container.get_exposed_port(6379)
    return ContainerService(f"redis://{host}:{port}/0", container)


def _postgres_container() -> ContainerService:
    from testcontainers.postgres import PostgresContainer

    container = PostgresContainer(POSTGRES_IMAGE, username=PG_SUPERUSER, password="aami",
                                  dbname=TEST_DATABASE, driver="psycopg").start()
    return ContainerService(container.get_connection_url(), container)


def redis_service() -> Service:
    """A Redis for the test session: ``REDIS_URL``, else a container, else redis-server."""
    if url := os.environ.get("REDIS_URL"):
        try:
            with redis.Redis.from_url(url, socket_connect_timeout=5) as client:
                client.ping()
        except redis.RedisError as exc:
            raise ServiceError(f"REDIS_URL={url} does not answer PING: {exc}") from exc
        return ExternalService(url)
    return _from_container("Redis", _redis_container) or RedisServer().start()


def postgres_service() -> Service:
    """A PostgreSQL for the test session: ``DATABASE_URL``, else a container, else local."""
    if url := os.environ.get("DATABASE_URL"):
        url = sqlalchemy_url(url)
        try:
            psycopg.connect(libpq_url(url), connect_timeout=5).close()
        except psycopg.Error as exc:
            raise ServiceError(f"DATABASE_URL={url} does not answer: {exc}") from exc
        return ExternalService(url)
    return _from_container("PostgreSQL", _postgres_container) or PostgresServer().start()


# --------------------------------------------------------------------------- per-test state

def sqlalchemy_url(url: str) -> str:
    """``postgres://`` or ``postgresql://`` URL -> ``postgresql+psycopg://`` (SQLAlchemy)."""
    parsed = make_url(url.replace("postgres://", "postgresql://", 1))
    return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


def libpq_url(url: str) -> str:
    """A SQLAlchemy PostgreSQL URL as psycopg/libpq wants it (no ``+driver``)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def with_database(url: str, database: str) -> str:
    return make_url(url).set(database=database).render_as_string(hide_password=False)


@contextlib.contextmanager
def temporary_database(server_url: str, prefix: str = "aami_t") -> Iterator[str]:
    """Create an empty database on the server of ``server_url``; drop it on exit.

    Yields its SQLAlchemy URL. The drop forces out connections a test left open.
    """
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(libpq_url(server_url), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield with_database(server_url, name)
    finally:
        with psycopg.connect(libpq_url(server_url), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))


# Logical databases 1..15 in turn, so that a straggler from one test (a worker thread still
# writing) lands in a db the next test does not use; db 0 stays for redis_url.
_redis_dbs = itertools.cycle(range(1, 16))


@contextlib.contextmanager
def isolated_redis_db(server_url: str) -> Iterator[str]:
    """A logical database of the server at ``server_url``, flushed before and after."""
    url = make_redis_db_url(server_url, next(_redis_dbs))
    with redis.Redis.from_url(url) as client:
        client.flushdb()
        try:
            yield url
        finally:
            client.flushdb()


def make_redis_db_url(server_url: str, db: int) -> str:
    """The same Redis URL pointing at logical database ``db``."""
    return urlsplit(server_url)._replace(path=f"/{db}").geturl()
