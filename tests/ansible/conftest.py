"""Fixtures for the Ansible tests: a wheel of this checkout, and the roles applied to
prefixes on this machine (twice each, so that tests can look at both runs)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.ansible.playbooks import PlaybookRun, apply_role, build_wheel
from tests.support.services import LOOPBACK, free_port

SECRET_KEY = "ansible-role-test-key-0123456789abcdef0123"


@dataclass(frozen=True)
class Applied:
    """A role applied twice to ``root`` with the same variables."""

    root: Path
    variables: dict[str, object]
    first: PlaybookRun
    second: PlaybookRun
    agent_id_after_first: str = ""
    agent_id_after_second: str = ""


def _succeeded(run: PlaybookRun, what: str) -> PlaybookRun:
    assert run.returncode == 0, f"{what} failed (exit {run.returncode}):\n{run.output_tail()}"
    return run


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel of this checkout, built like the Dockerfile's builder stage builds it."""
    return build_wheel(tmp_path_factory.mktemp("wheel"))


def agent_variables(root: Path, wheel: Path, **overrides: object) -> dict[str, object]:
    """The agent role's variables for an install into ``root`` that touches nothing else."""
    return {
        "aami_root": str(root),
        "aami_manage_service": False,
        "aami_agent_package": str(wheel),
        # The Python running the tests (3.11+, with venv) builds the agent's venv.
        "aami_agent_python": sys.executable,
        "aami_server_url": "http://127.0.0.1:9",
        "aami_bootstrap_token": "not-a-real-token",
        "aami_agent_labels": {"environment": "test", "rack": 12},
        **overrides,
    }


@pytest.fixture(scope="session")
def agent_install(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Applied:
    """The agent role applied twice to a fresh prefix."""
    workdir = tmp_path_factory.mktemp("agent-role")
    root = workdir / "root"
    variables = agent_variables(root, wheel)
    id_file = root / "etc/aami/agent-id"
    first = _succeeded(apply_role("aami_agent", workdir, variables), "first agent role run")
    id_after_first = id_file.read_text()
    second = _succeeded(apply_role("aami_agent", workdir, variables), "second agent role run")
    return Applied(root, variables, first, second, id_after_first, id_file.read_text())


def server_variables(root: Path, wheel: Path, **overrides: object) -> dict[str, object]:
    """The server role's variables for an install into ``root`` that touches nothing else."""
    return {
        "aami_root": str(root),
        "aami_manage_service": False,
        "aami_server_package": str(wheel),
        # The Python running the tests (3.11+, with venv) builds the server's venv.
        "aami_server_python": sys.executable,
        **overrides,
    }


@pytest.fixture(scope="session")
def server_install(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Applied:
    """The server role applied twice to a fresh prefix: every unit (Redis is configured,
    never contacted), HTTPS on a privileged port with client certificates required,
    gthread workers, the embedded SQLite schema migrated."""
    workdir = tmp_path_factory.mktemp("server-role")
    root = workdir / "root"
    tls = workdir / "tls"
    tls.mkdir()
    (tls / "server.crt").write_text("not a real certificate\n")
    (tls / "server.key").write_text("not a real key\n")
    (tls / "client-ca.crt").write_text("not a real CA certificate\n")
    variables = server_variables(
        root, wheel,
        aami_server_redis_url="redis://127.0.0.1:1/0",
        aami_server_secret_key=SECRET_KEY,
        aami_server_port=443,
        aami_server_worker_class="gthread",
        aami_server_threads=16,
        aami_server_tls_cert=str(tls / "server.crt"),
        aami_server_tls_key=str(tls / "server.key"),
        aami_server_tls_client_ca=str(tls / "client-ca.crt"),
        aami_server_client_certs="required",
        aami_server_worker_instances=3,
        aami_server_settings={"AAMI_HEARTBEAT_INTERVAL": 15},
    )
    first = _succeeded(apply_role("aami_server", workdir, variables), "first server role run")
    second = _succeeded(apply_role("aami_server", workdir, variables), "second server role run")
    return Applied(root, variables, first, second)


@dataclass(frozen=True)
class MtlsInstall(Applied):
    """:class:`Applied`, plus the CA (``ca.crt``, ``ca.key``) and server certificate
    (``server.crt``, ``server.key``, for 127.0.0.1) made for it, in ``tls``."""

    tls: Path = Path()


@pytest.fixture(scope="session")
def server_mtls_install(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> MtlsInstall:
    """The server role applied twice to a fresh prefix with the production defaults
    (gevent workers, mutual TLS with optional client certificates and
    AAMI_REQUIRE_CLIENT_CERT) and real certificates: a CA made like
    ``aami-server ca init`` does, whose key the role installs so that the server signs
    agents' CSRs. Embedded (no Redis), on a free loopback port, so that the API can be
    started from its unit's ExecStart=."""
    from server.security.ca import init_ca, write_key_pair

    workdir = tmp_path_factory.mktemp("server-mtls-role")
    root = workdir / "root"
    tls = workdir / "tls"
    authority = init_ca(tls)
    write_key_pair(tls, "server", *authority.issue_server_certificate([LOOPBACK], days=2))
    variables = server_variables(
        root, wheel,
        aami_server_host=LOOPBACK,
        aami_server_port=free_port(),
        aami_server_tls_cert=str(tls / "server.crt"),
        aami_server_tls_key=str(tls / "server.key"),
        aami_server_tls_client_ca=str(tls / "ca.crt"),
        aami_server_tls_client_ca_key=str(tls / "ca.key"),
        aami_server_settings={"AAMI_LOG_FORMAT": "text"},
    )
    first = _succeeded(apply_role("aami_server", workdir, variables), "first mTLS role run")
    second = _succeeded(apply_role("aami_server", workdir, variables), "second mTLS role run")
    return MtlsInstall(root, variables, first, second, tls=tls)
