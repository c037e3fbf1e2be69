"""agent/enrollment.py and its use by the agent: a key made on the host, a certificate
from the server's CA that verifies against it, renewal at two thirds of its lifetime."""

from __future__ import annotations

import datetime as dt
import logging
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.config import load_config
from agent.enrollment import CertificateManager, EnrollmentError, default_ca_bundle
from agent.errors import RegistrationRejected, RequestRejected, RetryLater, TransportError
from agent.runner import Agent
from agent.transport.base import IssuedCertificate
from server.security.ca import CertificateAuthority, init_ca  # noqa: E402
from tests.agent.fakes import FakeServer, FakeTransport, wait_for
from tests.agent.test_runner import fast_backoff, write_config

AGENT_ID = "6f1c2e9a-3b7d-4c1e-9f00-1234567890ab"
DAY = 86400.0


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return init_ca(tmp_path_factory.mktemp("ca"))


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def manager(tmp_path: Path, clock: Clock) -> CertificateManager:
    state = tmp_path / "state"
    return CertificateManager(state / "agent.crt", state / "agent.key",
                              ca_path=state / "ca.crt", bundle_path=state / "ca-bundle.crt",
                              clock=clock)


def enroll(manager: CertificateManager, ca: CertificateAuthority, days: int = 30) -> str:
    csr = manager.make_csr(AGENT_ID)
    certificate = ca.sign_agent_csr(AGENT_ID, csr, days)
    manager.store(IssuedCertificate(certificate=certificate,
                                    ca_certificate=ca.certificate_pem))
    return certificate


def verifies_against(certificate: Any, ca: CertificateAuthority) -> bool:
    from cryptography.exceptions import InvalidSignature

    try:
        ca.certificate.public_key().verify(certificate.signature,
                                           certificate.tbs_certificate_bytes,
                                           ec.ECDSA(certificate.signature_hash_algorithm))
    except InvalidSignature:
        return False
    return certificate.issuer == ca.certificate.subject


def public_der(key: Any) -> bytes:
    return key.public_bytes(serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def load_pair(cert_path: Path, key_path: Path) -> tuple[Any, Any]:
    return (x509.load_pem_x509_certificate(cert_path.read_bytes()),
            serialization.load_pem_private_key(key_path.read_bytes(), password=None))


# -- the certificate manager --------------------------------------------------------------


def test_the_csr_names_the_agent_and_carries_no_private_key(
    manager: CertificateManager
) -> None:
    csr_pem = manager.make_csr(AGENT_ID)
    csr = x509.load_pem_x509_csr(csr_pem.encode())
    assert "PRIVATE" not in csr_pem and csr.is_signature_valid
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == AGENT_ID
    assert isinstance(csr.public_key(), ec.EllipticCurvePublicKey)
    assert csr.public_key().curve.name == "secp256r1"
    assert not manager.key_path.exists()  # nothing on disk until the certificate comes


def test_stored_certificate_verifies_against_the_ca_and_matches_the_private_key(
    manager: CertificateManager, ca: CertificateAuthority
) -> None:
    assert manager.due() and not manager.has_certificate()

    enroll(manager, ca)

    certificate, key = load_pair(manager.cert_path, manager.key_path)
    assert verifies_against(certificate, ca)
    assert certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == AGENT_ID
    assert public_der(certificate.public_key()) == public_der(key.public_key())
    assert stat.S_IMODE(manager.key_path.stat().st_mode) == 0o600
    assert manager.has_certificate() and not manager.due()
    # No tls.ca_cert configured: the CA is kept, and trusted next to the default CAs.
    assert manager.ca_path is not None and manager.bundle_path is not None
    assert manager.ca_path.read_text() == ca.certificate_pem
    bundle = manager.bundle_path.read_text()
    assert bundle.endswith(ca.certificate_pem)
    default = default_ca_bundle()
    if default:
        assert Path(default).read_text().strip() in bundle
    assert manager.files() == (str(manager.cert_path), str(manager.key_path),
                               str(manager.bundle_path))


def test_a_configured_ca_is_used_and_the_servers_is_not_stored(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    configured = tmp_path / "my-ca.crt"
    configured.write_text(ca.certificate_pem)
    manager = CertificateManager(tmp_path / "agent.crt", tmp_path / "agent.key",
                                 configured_ca=configured)
    enroll(manager, ca)
    assert manager.files()[2] == str(configured)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agent.crt", "agent.key",
                                                          "my-ca.crt"]


def test_renewal_is_due_after_two_thirds_of_the_lifetime(
    manager: CertificateManager, ca: CertificateAuthority, clock: Clock
) -> None:
    enroll(manager, ca, days=3)
    start = x509.load_pem_x509_certificate(manager.cert_path.read_bytes()) \
        .not_valid_before_utc.timestamp()
    lifetime = 3 * DAY + 300  # the CA back-dates certificates by five minutes
    assert manager.renew_at == pytest.approx(start + lifetime * 2 / 3)

    clock.now = start + lifetime * 0.6
    assert not manager.due()
    clock.now = start + lifetime * 2 / 3 - 60
    assert not manager.due()
    clock.now = start + lifetime * 2 / 3 + 1
    assert manager.due()


def test_renewal_replaces_the_pair_and_a_restart_loads_it(
    manager: CertificateManager, ca: CertificateAuthority
) -> None:
    enroll(manager, ca)
    old_cert, old_key = manager.cert_path.read_bytes(), manager.key_path.read_bytes()
    changes: list[int] = []
    manager.on_change = lambda: changes.append(1)

    enroll(manager, ca)

    assert manager.cert_path.read_bytes() != old_cert
    assert manager.key_path.read_bytes() != old_key
    assert changes == [1]
    again = CertificateManager(manager.cert_path, manager.key_path)
    assert again.has_certificate() and again.expires_at == manager.expires_at
    assert not list(manager.cert_path.parent.glob("*.new"))


def test_a_certificate_for_someone_elses_key_is_refused_and_the_old_pair_kept(
    manager: CertificateManager, ca: CertificateAuthority
) -> None:
    enroll(manager, ca)
    before = manager.cert_path.read_bytes(), manager.key_path.read_bytes()
    foreign = ca.issue_agent_certificate(
        AGENT_ID, ec.generate_private_key(ec.SECP256R1()).public_key(), 30)
    manager.make_csr(AGENT_ID)  # a request is pending, but not for that key

    with pytest.raises(EnrollmentError, match="not for the key"):
        manager.store(IssuedCertificate(certificate=foreign))
    with pytest.raises(EnrollmentError, match="unreadable certificate"):
        manager.store(IssuedCertificate(certificate="-----BEGIN CERTIFICATE-----\nxx\n"))
    assert (manager.cert_path.read_bytes(), manager.key_path.read_bytes()) == before
    assert manager.has_certificate()


def test_a_key_that_does_not_match_the_certificate_is_no_certificate(
    manager: CertificateManager, ca: CertificateAuthority
) -> None:
    enroll(manager, ca)
    other = ec.generate_private_key(ec.SECP256R1())
    manager.key_path.write_bytes(other.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    reloaded = CertificateManager(manager.cert_path, manager.key_path)
    assert not reloaded.has_certificate() and reloaded.due()
    assert reloaded.files()[:2] == (None, None)  # never presented to the server


def test_a_replacement_interrupted_between_the_renames_is_completed_at_load(
    manager: CertificateManager, ca: CertificateAuthority
) -> None:
    enroll(manager, ca)
    csr = manager.make_csr(AGENT_ID)
    new_cert = ca.sign_agent_csr(AGENT_ID, csr, 30)
    key = next(iter(manager._pending.values()))
    # The crash: the new key is in place, the new certificate still under .new.
    manager.key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    pending = manager.cert_path.with_name("agent.crt.new")
    pending.write_text(new_cert)

    reloaded = CertificateManager(manager.cert_path, manager.key_path)

    assert reloaded.has_certificate()
    assert manager.cert_path.read_text() == new_cert and not pending.exists()


def test_a_server_without_a_ca_is_asked_again_only_an_hour_later(
    manager: CertificateManager, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="agent.enrollment"):
        delay = manager.failed(RequestRejected("HTTP 409 ca_not_configured",
                                               code="ca_not_configured"))
    assert delay == 3600
    assert "no CA to sign client certificates" in caplog.text
    assert "aami-server ca init" in caplog.text
    assert not manager.due()
    clock.now += 3601
    assert manager.due()


def test_other_failures_back_off_and_honour_retry_after(
    manager: CertificateManager, clock: Clock
) -> None:
    first = manager.failed(TransportError("connection refused"))
    second = manager.failed(TransportError("connection refused"))
    assert 0 < first < second
    assert manager.failed(RetryLater("429", retry_after=7200)) >= 7200
    clock.now += 7199
    assert not manager.due()


# -- the agent -----------------------------------------------------------------------------


def enroll_config(tmp_path: Path, extra_tls: str = "") -> Path:
    path = write_config(tmp_path, address="https://aami.invalid:8443")
    path.write_text(path.read_text().replace(
        "server:\n", "server:\n  tls: {enroll: true" + extra_tls + "}\n", 1))
    return path


class Agents:
    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self.running: list[tuple[Agent, FakeTransport]] = []

    def start(self, config: Path) -> tuple[Agent, FakeTransport]:
        transport = self.server.transport()
        agent = Agent(load_config(config), transport=transport, backoff=fast_backoff)
        self.running.append((agent, transport))
        agent.start()
        return agent, transport

    def stop(self, agent: Agent) -> None:
        self.running = [(a, t) for a, t in self.running if a is not agent]
        agent.shutdown(0.5)


@pytest.fixture
def server(ca: CertificateAuthority) -> FakeServer:
    fake = FakeServer()
    fake.ca = ca
    return fake


@pytest.fixture
def agents(server: FakeServer) -> Iterator[Agents]:
    pool = Agents(server)
    yield pool
    for agent, _ in list(pool.running):
        agent.shutdown(0.5)


def test_the_first_registration_carries_a_csr_and_the_certificate_is_used_at_once(
    tmp_path: Path, server: FakeServer, agents: Agents, ca: CertificateAuthority
) -> None:
    agent, transport = agents.start(enroll_config(tmp_path))
    wait_for(lambda: server.heartbeats, what="a heartbeat")

    state = tmp_path / "state"
    assert server.registrations[0].csr and len(server.registrations) == 1
    certificate, key = load_pair(state / "agent.crt", state / "agent.key")
    assert verifies_against(certificate, ca)
    assert certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value \
        == agent.agent_id
    assert public_der(certificate.public_key()) == public_der(key.public_key())
    assert stat.S_IMODE((state / "agent.key").stat().st_mode) == 0o600
    # Before: no pair, nothing presented; after: the new pair and the CA bundle.
    assert transport.tls_files[0] == (None, None, None)
    assert transport.tls_files[-1] == (str(state / "agent.crt"), str(state / "agent.key"),
                                       str(state / "ca-bundle.crt"))
    assert server.renewals == 0


def test_without_a_ca_on_the_server_the_agent_carries_on_without_a_certificate(
    tmp_path: Path, server: FakeServer, agents: Agents, caplog: pytest.LogCaptureFixture
) -> None:
    server.ca = None
    with caplog.at_level(logging.ERROR, logger="agent.enrollment"):
        agent, transport = agents.start(enroll_config(tmp_path))
        wait_for(lambda: len(server.heartbeats) >= 3, what="heartbeats without a cert")
    assert "the server has no CA to sign client certificates" in caplog.text
    assert [bool(r.csr) for r in server.registrations] == [True, False]
    assert server.renewals == 0  # asked again only an hour later
    assert not (tmp_path / "state" / "agent.crt").exists()
    assert agent.certificates is not None and not agent.certificates.has_certificate()
    assert transport.tls_files == [(None, None, None)]


def aged_pair(ca: CertificateAuthority, agent_id: str, state: Path) -> bytes:
    """A pair 20 days into a 30-day life: past two thirds, still valid."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, agent_id)]))
        .issuer_name(ca.certificate.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=20))
        .not_valid_after(now + dt.timedelta(days=10))
        .sign(ca.key, hashes.SHA256()))
    (state / "agent.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    pem: bytes = certificate.public_bytes(serialization.Encoding.PEM)
    (state / "agent.crt").write_bytes(pem)
    return pem


def test_a_certificate_past_two_thirds_of_its_life_is_renewed_from_the_heartbeat_loop(
    tmp_path: Path, server: FakeServer, agents: Agents, ca: CertificateAuthority
) -> None:
    config = enroll_config(tmp_path)
    agent, _ = agents.start(config)
    wait_for(lambda: server.heartbeats, what="the first registration")
    agents.stop(agent)
    state = tmp_path / "state"

    aged = aged_pair(ca, agent.agent_id, state)
    agent, transport = agents.start(config)  # registered already: renewal endpoint
    assert transport.tls_files[0][0] == str(state / "agent.crt")  # the aged pair, in use

    wait_for(lambda: server.renewals == 1 and (state / "agent.crt").read_bytes() != aged,
             what="the renewal")
    assert len(server.registrations) == 1
    certificate, key = load_pair(state / "agent.crt", state / "agent.key")
    assert verifies_against(certificate, ca)
    assert public_der(certificate.public_key()) == public_der(key.public_key())
    assert certificate.not_valid_after_utc - dt.datetime.now(dt.UTC) > dt.timedelta(days=29)
    wait_for(lambda: len(transport.tls_files) == 2, what="the transport switched over")
    time.sleep(1.5)  # more heartbeats: no second renewal
    assert server.renewals == 1


def test_a_failed_renewal_keeps_the_old_certificate_in_place_and_in_use(
    tmp_path: Path, server: FakeServer, agents: Agents, ca: CertificateAuthority
) -> None:
    config = enroll_config(tmp_path)
    agent, _ = agents.start(config)
    wait_for(lambda: server.heartbeats, what="the first registration")
    agents.stop(agent)
    state = tmp_path / "state"
    aged = aged_pair(ca, agent.agent_id, state)
    aged_key = (state / "agent.key").read_bytes()

    server.ca = None
    beats = len(server.heartbeats)
    agent, transport = agents.start(config)
    wait_for(lambda: server.renewals == 1 and len(server.heartbeats) > beats + 1,
             what="a refused renewal and heartbeats after it")
    assert (state / "agent.crt").read_bytes() == aged
    assert (state / "agent.key").read_bytes() == aged_key
    assert transport.tls_files == [(str(state / "agent.crt"), str(state / "agent.key"),
                                    str(state / "ca-bundle.crt"))]


def test_an_agent_registered_before_enrollment_was_on_enrolls_through_renewal(
    tmp_path: Path, server: FakeServer, agents: Agents, ca: CertificateAuthority
) -> None:
    plain = write_config(tmp_path)
    agent, _ = agents.start(plain)
    wait_for(lambda: server.heartbeats, what="registration without enrollment")
    agents.stop(agent)
    assert server.registrations[0].csr is None

    agent, transport = agents.start(enroll_config(tmp_path))
    wait_for(lambda: server.renewals == 1 and len(transport.tls_files) == 2,
             what="enrollment through the certificate endpoint")
    assert len(server.registrations) == 1
    certificate, _ = load_pair(tmp_path / "state" / "agent.crt", tmp_path / "state" / "agent.key")
    assert verifies_against(certificate, ca)


def test_configured_certificate_paths_are_where_enrollment_writes(
    tmp_path: Path, server: FakeServer, agents: Agents, ca: CertificateAuthority
) -> None:
    ca_file = tmp_path / "ca.crt"
    ca_file.write_text(ca.certificate_pem)
    config = enroll_config(tmp_path, f", ca_cert: {ca_file}, client_cert: {tmp_path}/tls/me.crt"
                                     f", client_key: {tmp_path}/tls/me.key")
    _, transport = agents.start(config)
    wait_for(lambda: len(transport.tls_files) == 2, what="enrollment")
    assert transport.tls_files[-1] == (f"{tmp_path}/tls/me.crt", f"{tmp_path}/tls/me.key",
                                       str(ca_file))
    assert not (tmp_path / "state" / "ca.crt").exists()  # the configured CA wins
    assert oct(os.stat(f"{tmp_path}/tls/me.key").st_mode & 0o777) == "0o600"


def test_a_registration_refused_for_another_reason_is_not_retried_without_the_csr(
    tmp_path: Path, server: FakeServer
) -> None:
    from agent.auth import Authenticator
    from agent.credentials import CredentialStore
    from agent.transport.base import Registration

    class Refusing(FakeTransport):
        def register(self, registration: Registration) -> Any:
            self.server.registrations.append(registration)
            raise RegistrationRejected("HTTP 409 agent_id_in_use", code="agent_id_in_use")

    manager = CertificateManager(tmp_path / "a.crt", tmp_path / "a.key")
    auth = Authenticator(Refusing(server), CredentialStore(tmp_path / "c.json"),
                         lambda: Registration(token="t", agent_id=AGENT_ID, hostname="h"),
                         enrollment=manager)
    with pytest.raises(RegistrationRejected, match="agent_id_in_use"):
        auth.current()
    assert len(server.registrations) == 1
