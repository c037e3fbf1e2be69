"""Mutual TLS end to end: ``aami-server serve`` with gunicorn's TLS verifying client
certificates, PostgreSQL and Redis, and real HTTPS clients.

The CA is made with ``aami-server ca init`` and the server certificate with
``aami-server ca issue-server --host 127.0.0.1``, as an operator would. The server runs
with ``--client-certs optional`` (an agent without a certificate can still register and
enroll) and ``AAMI_REQUIRE_CLIENT_CERT=true`` (every other agent call needs a certificate
naming the agent of the path); one test runs ``--client-certs required`` instead.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import certifi
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from server.security.ca import init_ca, new_agent_key_pair, write_key_pair
from tests.integration.live_server import AAMI_SERVER, LiveServer, aami_env, last_line
from tests.integration.processes import LiveAgent, write_agent_config
from tests.support import services
from tests.support.services import LOOPBACK

pytestmark = pytest.mark.integration

CHECK = {"id": "true", "command": ["/bin/true"], "interval": "60s", "timeout": "5s"}


class TlsLiveServer(LiveServer):
    """:class:`LiveServer` serving HTTPS with client-certificate verification.

    Before the first start it makes the CA and the server certificate with the CLI.
    """

    def __init__(self, data_dir: Path, *, client_certs: str = "optional", **kwargs: Any) -> None:
        super().__init__(data_dir, **kwargs)
        self.client_certs = client_certs
        self.tls_dir = self.data_dir / "tls"
        # Lets the readiness probe through a server that requires certificates.
        self.probe_cert: tuple[str, str] | None = None

    @property
    def url(self) -> str:
        return f"https://{LOOPBACK}:{self.port}"

    @property
    def ca_cert(self) -> str:
        return str(self.data_dir / "ca" / "ca.crt")

    def _prepare(self) -> None:
        super()._prepare()
        if not (self.data_dir / "ca" / "ca.key").exists():
            self.cli("ca", "init")
            self.cli("ca", "issue-server", "--host", LOOPBACK, "--out-dir", str(self.tls_dir))
            key, cert = new_agent_key_pair(_load_ca(self), str(uuid.uuid4()), 1)
            paths = write_key_pair(self.tls_dir, "probe", key, cert)
            self.probe_cert = (str(paths[1]), str(paths[0]))

    def _spawn(self) -> subprocess.Popen[bytes]:
        argv = [
            str(AAMI_SERVER), "serve", "--host", LOOPBACK, "--port", str(self.port),
            "--workers", str(self.workers),
            "--certfile", str(self.tls_dir / "server.crt"),
            "--keyfile", str(self.tls_dir / "server.key"),
            "--client-certs", self.client_certs,
        ]
        return self._popen(argv, env=aami_env(self.settings))

    def _answers(self) -> bool:
        try:
            reply = requests.get(
                f"{self.url}/readyz", verify=self.ca_cert, cert=self.probe_cert, timeout=2
            )
        except requests.RequestException:
            return False
        return reply.status_code == 200

    def _wait_for_workers(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while len(self.worker_pids()) < self.workers or not self._answers():
            if time.monotonic() > deadline or not self.running:
                raise AssertionError(f"server not ready; log:\n{self.log_tail()}")
            time.sleep(0.05)


def _load_ca(server: TlsLiveServer) -> Any:
    from server.security.ca import load_ca

    return load_ca(server.data_dir / "ca")


@contextlib.contextmanager
def _running(data_dir: Path, pg_url: str, redis_url: str, **kwargs: Any) -> Iterator[TlsLiveServer]:
    """A TLS server on a database and Redis db of its own, stopped (and checked) after."""
    with (
        services.temporary_database(pg_url) as database_url,
        services.isolated_redis_db(redis_url) as redis_db_url,
    ):
        server = TlsLiveServer(
            data_dir, database_url=database_url, redis_url=redis_db_url, **kwargs
        )
        try:
            server.start()
            yield server
        finally:
            server.close()
        assert not server.leftovers, f"server processes left running: {server.leftovers}"


@pytest.fixture(scope="module")
def live_server(
    pg_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """One server for the module (every test uses agents of its own), named like the
    shared fixture so that a failing test shows this server's log."""
    with _running(
        tmp_path_factory.mktemp("mtls") / "tls-server",
        pg_url,
        redis_url,
        extra_settings={"AAMI_REQUIRE_CLIENT_CERT": "true"},
    ) as server:
        yield server


# --------------------------------------------------------------------------- helpers


class Agent:
    """An HTTPS client holding one agent's credentials (and maybe its certificate)."""

    def __init__(self, server: TlsLiveServer, cert: tuple[str, str] | None = None) -> None:
        self.server = server
        self.session = requests.Session()
        self.cert = cert
        self.agent_id = ""
        self.access_token = ""
        self.refresh_token = ""

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = kwargs.pop("headers", None)
        if headers is None and self.access_token:
            headers = {"Authorization": f"Bearer {self.access_token}"}
        # verify per request: a session's own would lose to REQUESTS_CA_BUNDLE.
        return self.session.request(
            method,
            self.server.api(path),
            headers=headers,
            verify=self.server.ca_cert,
            cert=self.cert,
            timeout=30,
            **kwargs,
        )

    def register(self, token: str, agent_id: str, **fields: Any) -> requests.Response:
        reply = self.call(
            "POST",
            "bootstrap-tokens/register",
            json={"token": token, "hostname": "web-1", "agent_id": agent_id, **fields},
            headers={},
        )
        if reply.status_code in (200, 201):
            body = reply.json()
            self.agent_id = body["agent_id"]
            self.access_token, self.refresh_token = body["access_token"], body["refresh_token"]
        return reply

    def heartbeat(self, agent_id: str | None = None) -> requests.Response:
        return self.call("POST", f"agents/{agent_id or self.agent_id}/heartbeat",
                         json={"version": "1"})


def _key_and_csr(directory: Path) -> tuple[Path, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    key_path = directory / "agent.key"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "agent")]))
        .sign(key, hashes.SHA256())
    )
    return key_path, csr.public_bytes(serialization.Encoding.PEM).decode()


def _error_code(reply: requests.Response) -> str:
    code: str = reply.json()["error"]["code"]
    return code


@pytest.fixture(scope="module")
def bootstrap_token(live_server: LiveServer) -> str:
    return last_line(live_server.cli("token", "create", "--name", "fleet"))


@pytest.fixture(scope="module")
def admin(live_server: LiveServer) -> dict[str, str]:
    token = last_line(live_server.cli("admin-token", "create", "--name", "ops"))
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def enrolled(live_server: TlsLiveServer, bootstrap_token: str, tmp_path: Path) -> Agent:
    """An agent that registered without a certificate, enrolled with a CSR, and now
    connects with the certificate it got."""
    directory = tmp_path / "agent-a"
    directory.mkdir()
    key_path, csr = _key_and_csr(directory)
    bootstrap = Agent(live_server)
    agent_id = str(uuid.uuid4())
    reply = bootstrap.register(bootstrap_token, agent_id, csr=csr)
    assert reply.status_code == 201, reply.text
    cert_path = directory / "agent.crt"
    cert_path.write_text(reply.json()["certificate"])
    assert reply.json()["ca_certificate"] == Path(live_server.ca_cert).read_text()
    agent = Agent(live_server, cert=(str(cert_path), str(key_path)))
    agent.agent_id, agent.access_token = agent_id, bootstrap.access_token
    agent.refresh_token = bootstrap.refresh_token
    return agent


# --------------------------------------------------------------------------- tests


def test_enrolled_agent_works_over_mtls(live_server, enrolled, admin, tmp_path):
    created = requests.post(
        live_server.api("checks"),
        json={**CHECK, "assign": {"target_ids": [enrolled.agent_id]}},
        headers=admin,
        verify=live_server.ca_cert,
        timeout=30,
    )
    assert created.status_code == 201, created.text
    assert enrolled.heartbeat().status_code == 200
    checks = enrolled.call("GET", f"checks/target/{enrolled.agent_id}")
    assert checks.status_code == 200, checks.text
    assert [c["id"] for c in checks.json()["checks"]] == ["true"]
    results = enrolled.call(
        "POST",
        f"agents/{enrolled.agent_id}/check-results",
        json={"results": [{"result_id": str(uuid.uuid4()), "check_id": "true", "status": "ok",
                           "exit_code": 0, "executed_at": "2026-01-01T00:00:00Z"}]},
    )
    assert results.status_code == 202, results.text
    refreshed = enrolled.call(
        "POST", f"agents/{enrolled.agent_id}/token",
        json={"refresh_token": enrolled.refresh_token}, headers={},
    )
    assert refreshed.status_code == 200, refreshed.text
    # Renewal over the connection the current certificate authenticates.
    _key, csr = _key_and_csr(tmp_path)
    renewed = enrolled.call("POST", f"agents/{enrolled.agent_id}/certificate", json={"csr": csr})
    assert renewed.status_code == 200, renewed.text
    assert x509.load_pem_x509_certificate(renewed.json()["certificate"].encode())


def test_operator_issued_certificate_works(live_server, bootstrap_token, tmp_path):
    agent_id = str(uuid.uuid4())
    out = tmp_path / "issued"
    live_server.cli("ca", "issue-agent", "--agent-id", agent_id, "--out-dir", str(out))
    agent = Agent(live_server, cert=(str(out / "agent.crt"), str(out / "agent.key")))
    assert agent.register(bootstrap_token, agent_id).status_code == 201
    assert agent.heartbeat().status_code == 200
    assert agent.call("GET", f"checks/target/{agent_id}").status_code == 200


def test_missing_certificate_is_refused_on_agent_calls(live_server, enrolled):
    bare = Agent(live_server)
    bare.agent_id, bare.access_token = enrolled.agent_id, enrolled.access_token
    reply = bare.heartbeat()
    assert reply.status_code == 401
    assert _error_code(reply) == "client_certificate_required"
    checks = bare.call("GET", f"checks/target/{enrolled.agent_id}")
    assert (checks.status_code, _error_code(checks)) == (401, "client_certificate_required")


def test_forged_certificate_from_another_ca_is_refused(live_server, enrolled, tmp_path):
    """Same CN and SAN as the real agent, signed by a CA the server does not trust."""
    rogue_ca = init_ca(tmp_path / "rogue-ca", name="AAMI CA")
    key, cert = new_agent_key_pair(rogue_ca, enrolled.agent_id, 1)
    key_path, cert_path = write_key_pair(tmp_path / "forged", "agent", key, cert)
    forger = Agent(live_server, cert=(str(cert_path), str(key_path)))
    forger.agent_id, forger.access_token = enrolled.agent_id, enrolled.access_token
    # Refused in the TLS handshake: the app never sees the request.
    with pytest.raises(requests.exceptions.ConnectionError):
        forger.heartbeat()
    deadline = time.monotonic() + 5
    while "certificate verify failed" not in live_server.log_tail(200):
        assert time.monotonic() < deadline, live_server.log_tail()
        time.sleep(0.05)


def test_certificate_of_agent_a_cannot_act_for_b_even_with_bs_token(
    live_server, enrolled, bootstrap_token
):
    b = Agent(live_server)  # registers without a certificate: the bootstrap path
    assert b.register(bootstrap_token, str(uuid.uuid4())).status_code == 201
    a_with_bs_token = Agent(live_server, cert=enrolled.cert)
    a_with_bs_token.agent_id, a_with_bs_token.access_token = b.agent_id, b.access_token
    reply = a_with_bs_token.heartbeat()
    assert (reply.status_code, _error_code(reply)) == (403, "certificate_mismatch")
    assert enrolled.agent_id in reply.json()["error"]["message"]
    checks = a_with_bs_token.call("GET", f"checks/target/{b.agent_id}")
    assert checks.status_code == 403
    refresh = a_with_bs_token.call(
        "POST", f"agents/{b.agent_id}/token", json={"refresh_token": b.refresh_token}, headers={}
    )
    assert refresh.status_code == 403
    # And with its own token on B's path, the token refuses it before the certificate.
    own = enrolled.heartbeat(b.agent_id)
    assert own.status_code == 403


def test_tls_port_speaks_only_verified_https(live_server):
    # Plain HTTP to the TLS port: the handshake fails, no HTTP reply comes back.
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"http://{LOOPBACK}:{live_server.port}/healthz", timeout=10)
    # A client that does not trust the AAMI CA cannot verify the server.
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{live_server.url}/healthz", verify=certifi.where(), timeout=10)
    # The same client trusting the CA gets through (no client certificate needed here).
    ok = requests.get(f"{live_server.url}/healthz", verify=live_server.ca_cert, timeout=10)
    assert ok.status_code == 200


@pytest.fixture
def required_server(pg_url: str, redis_url: str, tmp_path: Path) -> Iterator[TlsLiveServer]:
    with _running(tmp_path / "tls-server", pg_url, redis_url, client_certs="required") as server:
        yield server


def test_required_client_certs_refuse_the_handshake_without_one(required_server, tmp_path):
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"{required_server.url}/healthz", verify=required_server.ca_cert, timeout=10)
    agent_id = str(uuid.uuid4())
    out = tmp_path / "issued"
    required_server.cli("ca", "issue-agent", "--agent-id", agent_id, "--out-dir", str(out))
    reply = requests.get(
        f"{required_server.url}/healthz",
        verify=required_server.ca_cert,
        cert=(str(out / "agent.crt"), str(out / "agent.key")),
        timeout=10,
    )
    assert reply.status_code == 200


# --------------------------------------------------------------------------- signed policies


DUMMY = "/usr/lib/nagios/plugins/check_dummy"


def _tls_agent(server: TlsLiveServer, token: str, directory: Path, **options: Any) -> LiveAgent:
    """A real ``aami-agent`` with the default policy settings (no keys, not insecure),
    trusting the server's CA."""
    config = write_agent_config(
        directory, server_url=server.url, bootstrap_token=token,
        allowed_paths=[str(Path(DUMMY).parent)], tls_ca_cert=server.ca_cert, **options,
    )
    return LiveAgent(config)


def _assign_dummy(server: TlsLiveServer, admin: dict[str, str], agent: LiveAgent) -> None:
    agent_id = agent.agent_id()
    created = requests.post(
        server.api("checks"),
        json={"id": f"dummy-{agent_id[:8]}", "command": [DUMMY, "0", "signed and sealed"],
              "interval": "2s", "timeout": "2s", "assign": {"target_ids": [agent_id]}},
        headers=admin, verify=server.ca_cert, timeout=30,
    )
    assert created.status_code == 201, created.text


def test_a_default_agent_pins_the_key_over_verified_tls_and_runs_the_signed_policy(
    live_server, bootstrap_token, admin, tmp_path
):
    agent = _tls_agent(live_server, bootstrap_token, tmp_path / "agent", tls_enroll=True)
    try:
        agent.start()
        agent.wait_for_status(lambda s: s.get("last_heartbeat_at"), 30, "a first heartbeat")
        _assign_dummy(live_server, admin, agent)
        status = agent.wait_for_status(
            lambda s: any(c.get("status") == "ok" for c in s.get("checks", {}).values()),
            30, "the signed policy's check to run")
    finally:
        agent.close()
    assert status["policy_error"] is None
    pin = tmp_path / "agent" / "state" / "policy-keys.json"
    assert json.loads(pin.read_text())["keys"] == [live_server.policy_public_key]
    assert pin.stat().st_mode & 0o777 == 0o600
    assert "pinned at registration" in status["policy_trust"]


@pytest.fixture
def unsigning_server(pg_url: str, redis_url: str, tmp_path: Path) -> Iterator[TlsLiveServer]:
    """A TLS server with no policy key: it sends every policy unsigned."""
    with _running(tmp_path / "unsigning-server", pg_url, redis_url,
                  sign_policies=False) as server:
        yield server


def test_a_default_agent_refuses_the_policy_of_a_server_that_does_not_sign(
    unsigning_server, tmp_path
):
    token = last_line(unsigning_server.cli("token", "create", "--name", "fleet"))
    admin = {"Authorization": "Bearer "
             + last_line(unsigning_server.cli("admin-token", "create", "--name", "ops"))}
    agent = _tls_agent(unsigning_server, token, tmp_path / "agent")
    try:
        agent.start()
        agent.wait_for_status(lambda s: s.get("last_heartbeat_at"), 30, "a first heartbeat")
        _assign_dummy(unsigning_server, admin, agent)
        status = agent.wait_for_status(
            lambda s: "announced no policy key" in (s.get("policy_error") or ""),
            30, "the unsigned policy refused")
    finally:
        agent.close()
    assert status["checks"] == {}  # nothing of the unsigned policy ran
    assert not (tmp_path / "agent" / "state" / "policy-keys.json").exists()
