"""The Dockerfile, exercised as far as a machine without a Docker engine allows.

Its stages are replayed (tests/integration/dockerfile.py): the builder's RUN builds the
wheel from the filtered build context, the runtime's RUN installs it with the server extra
into a fresh venv of the same Python the base image carries. Then the image's ENTRYPOINT +
CMD serve from that venv and its HEALTHCHECK command must turn healthy.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import sqlalchemy

from agent.durations import parse_duration
from server.models import Base
from tests.integration.dockerfile import Replay, Stage
from tests.integration.live_server import run_cli, session_members
from tests.support.services import LOOPBACK, free_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
RUNTIME_BASE = "python:3.11-slim-bookworm"
HEALTHY_WITHIN = 30.0


@dataclass
class BuiltImage:
    replay: Replay
    runtime: Stage

    @property
    def wheel(self) -> Path:
        wheels = list(self.replay.stages["builder"].root.glob("**/aami-*.whl"))
        assert len(wheels) == 1, wheels
        return wheels[0]

    @property
    def venv(self) -> Path:
        return self.runtime.host(self.runtime.env["VIRTUAL_ENV"])

    def env(self) -> dict[str, str]:
        return self.runtime.host_env()


def stand_in_python() -> str:
    """The Python 3.11 that stands in for the base image's (python:3.11 -> 3.11)."""
    wanted = re.match(r"python:(\d+\.\d+)", RUNTIME_BASE)
    assert wanted is not None
    for candidate in (f"python{wanted.group(1)}", sys.executable):
        found = shutil.which(candidate)
        if found is None:
            continue
        version = subprocess.run(
            [found, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        if version == wanted.group(1):
            return found
    pytest.fail(f"no python{wanted.group(1)} on this machine to stand in for {RUNTIME_BASE}")


@pytest.fixture
def dockerfile(tmp_path: Path) -> Replay:
    """The Dockerfile read through, nothing built: its stages' settings."""
    replay = Replay(DOCKERFILE, REPO, tmp_path / "stages", tmp_path / "python", execute=False)
    replay.build()
    return replay


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    """Both stages replayed: the wheel built, installed into the runtime's venv."""
    workspace = tmp_path_factory.mktemp("docker")
    base = workspace / "base-python"
    subprocess.run([stand_in_python(), "-m", "venv", str(base)], check=True, timeout=120)
    # The image wants no pip cache layer; here pip's cache keeps the test quick.
    replay = Replay(DOCKERFILE, REPO, workspace / "stages", base, drop_env=["PIP_NO_CACHE_DIR"])
    runtime = replay.build()
    return BuiltImage(replay, runtime)


def with_port(argv: list[str], old: str, new: str) -> list[str]:
    return [a.replace(f":{old}/", f":{new}/") if "://" in a else (new if a == old else a)
            for a in argv]


@contextlib.contextmanager
def running(argv: list[str], env: dict[str, str], cwd: Path, log: Path) -> Iterator[
    subprocess.Popen[bytes]
]:
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# --------------------------------------------------------------------------- metadata


def test_dockerfile_builds_a_wheel_then_a_slim_runtime_stage(dockerfile: Replay) -> None:
    assert list(dockerfile.stages) == ["builder", "runtime"]
    assert dockerfile.stages["runtime"].base == RUNTIME_BASE
    runs = [line for line in dockerfile.log if line.startswith("RUN")]
    assert "pip wheel" in runs[0]
    assert any(line.startswith("COPY /src/dist/") for line in dockerfile.log)


def test_image_runs_as_a_non_root_user_it_creates(dockerfile: Replay) -> None:
    runtime = dockerfile.final
    user, _, group = runtime.user.partition(":")

    assert user not in ("", "root", "0") and group not in ("root", "0")
    accounts = " ".join(runtime.skipped)
    assert re.search(rf"useradd\b.*--uid {user}\b", accounts) or re.search(
        rf"useradd\b.*\b{user}$", accounts
    ), f"USER {runtime.user} is not created by the image: {runtime.skipped}"


def test_image_serves_on_its_exposed_port_and_checks_its_health_there(
    dockerfile: Replay,
) -> None:
    runtime = dockerfile.final
    argv = runtime.entrypoint + runtime.cmd

    assert runtime.entrypoint == ["aami-server"]
    assert runtime.cmd[0] == "serve"
    assert runtime.healthcheck is not None, "HEALTHCHECK is missing"
    assert runtime.healthcheck[0] == "python", "slim images have no curl: use python"
    port = argv[argv.index("--port") + 1]
    assert runtime.exposed == [port]
    assert f"127.0.0.1:{port}/healthz" in " ".join(runtime.healthcheck)
    assert argv[argv.index("--host") + 1] == "0.0.0.0"
    assert runtime.workdir == runtime.env["AAMI_DATA_DIR"] == "/var/lib/aami"


# --------------------------------------------------------------------------- built


@pytest.mark.slow
def test_wheel_ships_every_module_and_the_migrations(image: BuiltImage) -> None:
    names = set(zipfile.ZipFile(image.wheel).namelist())
    checkout = {
        p.relative_to(REPO).as_posix()
        for package in ("agent", "server")
        for p in (REPO / package).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    migrations = {
        "server/" + p.relative_to(REPO).as_posix()
        for p in (REPO / "migrations").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }

    assert sorted(checkout - names) == [], "modules missing: add the package to pyproject.toml"
    assert sorted(migrations - names) == []
    assert {"server/migrations/env.py", "server/migrations/script.py.mako"} <= names
    assert not [n for n in names if n.startswith(("tests/", "migrations/"))]


@pytest.mark.slow
def test_installed_wheel_migrates_postgresql_and_sqlite(
    image: BuiltImage, pg_database_url: str, tmp_path: Path
) -> None:
    aami_server = image.venv / "bin" / "aami-server"
    cwd = image.runtime.host(image.runtime.workdir)
    found = subprocess.run(
        [str(image.venv / "bin" / "python"), "-c",
         "from server import migrate; print(migrate.migrations_dir())"],
        env=image.env(), cwd=cwd, capture_output=True, text=True, check=True,
    ).stdout.strip()
    assert Path(found).is_relative_to(image.venv), f"migrations found outside the wheel: {found}"

    for url in (pg_database_url, f"sqlite:///{tmp_path / 'wheel.db'}"):
        settings = {"AAMI_DATABASE_URL": url, "AAMI_DATA_DIR": str(tmp_path / "var")}
        out = run_cli("db", "upgrade", settings=settings, cwd=cwd, executable=aami_server)
        assert out.stdout.startswith("database at revision "), out.stdout
        engine = sqlalchemy.create_engine(url)
        try:
            assert set(Base.metadata.tables) <= set(sqlalchemy.inspect(engine).get_table_names())
        finally:
            engine.dispose()


@pytest.mark.slow
def test_image_entrypoint_serves_and_its_healthcheck_turns_healthy(
    image: BuiltImage, tmp_path: Path
) -> None:
    runtime, env = image.runtime, image.env()
    image_port, port = runtime.exposed[0], str(free_port())
    # Loopback only on a shared machine; the image itself listens on 0.0.0.0.
    command = with_port(runtime.entrypoint + runtime.cmd, image_port, port)
    command[command.index("--host") + 1] = LOOPBACK
    assert runtime.healthcheck is not None
    healthcheck = runtime.resolve(with_port(runtime.healthcheck, image_port, port), env)
    probe_timeout = parse_duration(runtime.healthcheck_options.get("timeout", "30s"))
    cwd = runtime.host(runtime.workdir)

    def healthy() -> bool:
        done = subprocess.run(healthcheck, env=env, cwd=cwd, capture_output=True,
                              timeout=probe_timeout + 5, check=False)
        return done.returncode == 0

    assert not healthy(), "the healthcheck passes with no server: it checks nothing"
    server = runtime.resolve(command, env)
    assert Path(server[0]).is_relative_to(image.venv)

    log = tmp_path / "server.log"
    with running(server, env, cwd, log) as proc:
        deadline = time.monotonic() + HEALTHY_WITHIN
        while not healthy():
            assert proc.poll() is None, f"the server exited:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"not healthy in time:\n{log.read_text()}"
            time.sleep(0.2)
        ready = requests.get(f"http://{LOOPBACK}:{port}/readyz", timeout=5)
        assert ready.status_code == 200, ready.text
        # Embedded default: its SQLite file, migrated from the wheel, in the data dir.
        assert (runtime.host(runtime.env["AAMI_DATA_DIR"]) / "aami.db").is_file()

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()
        assert session_members(proc.pid) == []
