"""agent/transport/rest.py against a real HTTP server in a thread (docs/agent-api.md)."""

from __future__ import annotations

import datetime as dt
import json
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from agent.errors import (
    AuthError,
    Forbidden,
    InvalidRefreshToken,
    NotRegistered,
    RegistrationRejected,
    RequestRejected,
    RetryLater,
    TransportError,
)
from agent.transport.base import (
    NOT_MODIFIED,
    Assignment,
    Command,
    IssuedCertificate,
    PolicySignature,
    Registration,
)
from agent.transport.rest import LONG_POLL_MARGIN, RestTransport, parse_retry_after

AGENT_ID = "6f1c2e9a-3b7d-4c1e-9f00-1234567890ab"


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    raw: bytes | None = None


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any
    at: float = field(default_factory=time.monotonic)
    peer_cn: str | None = None  # CN of the client certificate, over mutual TLS


class FakeServer:
    """Answers each request with the next scripted reply for its path; records requests."""

    def __init__(self) -> None:
        self.replies: dict[str, list[Reply]] = {}
        self.requests: list[Seen] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                getpeercert = getattr(self.connection, "getpeercert", None)
                peer = getpeercert() if getpeercert else None
                server.requests.append(Seen(
                    method=self.command, path=parts.path, query=parse_qs(parts.query),
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=json.loads(raw) if raw else None,
                    peer_cn=dict(rdn[0] for rdn in peer["subject"])["commonName"]
                    if peer else None,
                ))
                queue = server.replies.get(parts.path) or [Reply(404, {"error": {
                    "code": "not_found", "message": "no reply scripted"}})]
                reply = queue.pop(0) if len(queue) > 1 else queue[0]
                time.sleep(reply.delay)
                data = reply.raw if reply.raw is not None else (
                    b"" if reply.body is None else json.dumps(reply.body).encode())
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                if reply.status != 304:
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if reply.status != 304:
                    self.wfile.write(data)

            do_GET = do_POST = _handle  # noqa: N815

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        # A client that timed out on purpose leaves a broken pipe; not worth a traceback.
        self.httpd.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def script(self, path: str, *replies: Reply) -> None:
        self.replies["/api/v1" + path] = list(replies)

    def start(self) -> FakeServer:
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[FakeServer]:
    fake = FakeServer().start()
    yield fake
    fake.stop()


@pytest.fixture
def transport(server: FakeServer) -> Iterator[RestTransport]:
    rest = RestTransport(server.url, timeout=1.0, user_agent="aami-agent/9.9")
    yield rest
    rest.close()


def error(code: str, message: str = "", **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message or code, **extra}}


GRANT = {"agent_id": AGENT_ID, "access_token": "at", "refresh_token": "aami_rt_1",
         "token_type": "Bearer", "expires_in": 900, "heartbeat_interval": 30}


# -- register / refresh ------------------------------------------------------------------


def test_register_sends_the_documented_body_without_authorization(
    server: FakeServer, transport: RestTransport
) -> None:
    server.script("/bootstrap-tokens/register", Reply(201, GRANT))

    grant = transport.register(Registration(
        token="aami_bt_x", agent_id=AGENT_ID, hostname="web-1", ip_address="10.0.0.5",
        group_id="web", labels={"env": "prod"}, metadata={"os": "linux"},
        agent_version="0.1.0"))

    seen = server.requests[0]
    assert (seen.method, seen.path) == ("POST", "/api/v1/bootstrap-tokens/register")
    assert seen.body == {"token": "aami_bt_x", "agent_id": AGENT_ID, "hostname": "web-1",
                         "ip_address": "10.0.0.5", "group_id": "web", "labels": {"env": "prod"},
                         "metadata": {"os": "linux"}, "agent_version": "0.1.0"}
    assert "authorization" not in seen.headers
    assert seen.headers["user-agent"] == "aami-agent/9.9"
    assert (grant.agent_id, grant.access_token, grant.refresh_token) == (AGENT_ID, "at",
                                                                        "aami_rt_1")
    assert (grant.expires_in, grant.heartbeat_interval) == (900, 30)


def test_register_existing_target_200_and_proof_of_ownership(
    server: FakeServer, transport: RestTransport
) -> None:
    server.script("/bootstrap-tokens/register", Reply(200, GRANT))
    transport.register(Registration(token="t", agent_id=AGENT_ID, hostname="h",
                                    refresh_token="aami_rt_0"))
    assert server.requests[0].body["refresh_token"] == "aami_rt_0"


def test_register_reads_the_announced_policy_keys_and_plain_http_is_not_verified_tls(
    server: FakeServer, transport: RestTransport
) -> None:
    key = "6G3g0mHc8pPOLJq5CmXbgqdrvSlD9J0vCMKxGrtOCkg="
    server.script("/bootstrap-tokens/register",
                  Reply(201, {**GRANT, "policy_keys": [key, 42, None]}))
    grant = transport.register(Registration(token="t", agent_id=AGENT_ID, hostname="h"))
    assert grant.policy_keys == (key,)  # what is not even a string is dropped
    assert grant.verified_tls is False  # what a man in the middle sent would look the same


@pytest.mark.parametrize(("status", "code"), [(401, "invalid_bootstrap_token"),
                                              (409, "agent_id_in_use"), (422, "invalid")])
def test_register_refusals_are_registration_rejected(
    server: FakeServer, transport: RestTransport, status: int, code: str
) -> None:
    server.script("/bootstrap-tokens/register",
                  Reply(status, error(code, "ask an operator to revoke the old credentials")))
    with pytest.raises(RegistrationRejected) as info:
        transport.register(Registration(token="t", agent_id=AGENT_ID, hostname="h"))
    assert info.value.code == code
    assert "ask an operator" in str(info.value)


def test_register_404_means_a_wrong_address_not_an_unknown_agent(
    server: FakeServer, transport: RestTransport
) -> None:
    server.script("/bootstrap-tokens/register", Reply(404, raw=b"<html>Not Found</html>"))
    with pytest.raises(TransportError) as info:
        transport.register(Registration(token="t", agent_id=AGENT_ID, hostname="h"))
    assert type(info.value) is TransportError
    assert "Not Found" in str(info.value)


CSR = "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n"
CERT = "-----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----\n"
CA_CERT = "-----BEGIN CERTIFICATE-----\nMIIA\n-----END CERTIFICATE-----\n"
ISSUED = {"certificate": CERT, "ca_certificate": CA_CERT,
          "certificate_expires_at": "2027-01-01T00:00:00Z"}


def test_register_with_a_csr_returns_the_certificate(
    server: FakeServer, transport: RestTransport
) -> None:
    server.script("/bootstrap-tokens/register", Reply(201, {**GRANT, **ISSUED}))
    grant = transport.register(Registration(token="t", agent_id=AGENT_ID, hostname="h",
                                            csr=CSR))
    assert server.requests[0].body["csr"] == CSR
    assert grant.certificate == IssuedCertificate(CERT, CA_CERT, "2027-01-01T00:00:00Z")


def test_register_without_a_csr_sends_none_and_gets_no_certificate(
    server: FakeServer, transport: RestTransport
) -> None:
    server.script("/bootstrap-tokens/register", Reply(201, GRANT))
    grant = transport.register(Registration(token="t", agent_id=AGENT_ID, hostname="h"))
    assert "csr" not in server.requests[0].body and grant.certificate is None


def test_renew_certificate_posts_the_csr_with_the_access_token(
    server: FakeServer, transport: RestTransport
) -> None:
    server.script(f"/agents/{AGENT_ID}/certificate", Reply(200, ISSUED))
    issued = transport.renew_certificate(AGENT_ID, "jwt", CSR)
    seen = server.requests[0]
    assert (seen.method, seen.path, seen.body) == (
        "POST", f"/api/v1/agents/{AGENT_ID}/certificate", {"csr": CSR})
    assert seen.headers["authorization"] == "Bearer jwt"
    assert issued == IssuedCertificate(CERT, CA_CERT, "2027-01-01T00:00:00Z")


@pytest.mark.parametrize(
    ("reply", "error_type", "code"),
    [(Reply(409, error("ca_not_configured")), RequestRejected, "ca_not_configured"),
     # An older server without the endpoint: not "unknown agent", which re-registers.
     (Reply(404, error("not_found")), RequestRejected, "not_found"),
     (Reply(401, error("token_expired")), AuthError, "token_expired"),
     (Reply(200, {"certificate": None}), TransportError, None)],
    ids=["no-ca", "no-endpoint", "token-expired", "no-certificate"],
)
def test_renew_certificate_errors(
    server: FakeServer, transport: RestTransport, reply: Reply,
    error_type: type[Exception], code: str | None,
) -> None:
    server.script(f"/agents/{AGENT_ID}/certificate", reply)
    with pytest.raises(error_type) as info:
        transport.renew_certificate(AGENT_ID, "jwt", CSR)
    assert type(info.value) is error_type
    assert getattr(info.value, "code", None) == code


def test_refresh_rotates_tokens(server: FakeServer, transport: RestTransport) -> None:
    server.script(f"/agents/{AGENT_ID}/token",
                  Reply(200, {**GRANT, "agent_id": None, "refresh_token": "aami_rt_2"}))
    grant = transport.refresh(AGENT_ID, "aami_rt_1")
    assert server.requests[0].body == {"refresh_token": "aami_rt_1"}
    assert "authorization" not in server.requests[0].headers
    assert grant.refresh_token == "aami_rt_2"


@pytest.mark.parametrize("code", ["refresh_token_reused", "invalid_refresh_token"])
def test_refused_refresh_is_invalid_refresh_token(
    server: FakeServer, transport: RestTransport, code: str
) -> None:
    server.script(f"/agents/{AGENT_ID}/token", Reply(401, error(code)))
    with pytest.raises(InvalidRefreshToken) as info:
        transport.refresh(AGENT_ID, "aami_rt_1")
    assert info.value.code == code


def test_grant_without_tokens_is_a_transport_error(
    server: FakeServer, transport: RestTransport
) -> None:
    server.script(f"/agents/{AGENT_ID}/token", Reply(200, {"access_token": "at"}))
    with pytest.raises(TransportError, match="no access_token/refresh_token"):
        transport.refresh(AGENT_ID, "rt")


# -- heartbeat and the status mapping ------------------------------------------------------


def test_heartbeat_carries_the_bearer_token_and_returns_commands(
    server: FakeServer, transport: RestTransport
) -> None:
    server.script(f"/agents/{AGENT_ID}/heartbeat", Reply(200, {
        "config_version": "3f2a", "heartbeat_interval": 20, "server_time": "2026-11-22T10:00:00Z",
        "commands": [{"id": "c1", "type": "run_check", "check_id": "disk"}, "junk", {}]}))

    reply = transport.heartbeat(AGENT_ID, "the-jwt", {"version": "0.1.0", "spool_depth": 3})

    seen = server.requests[0]
    assert seen.headers["authorization"] == "Bearer the-jwt"
    assert seen.headers["content-type"] == "application/json"
    assert seen.body == {"version": "0.1.0", "spool_depth": 3}
    assert reply.config_version == "3f2a"
    assert reply.heartbeat_interval == 20
    assert [(c.id, c.type, c.check_id) for c in reply.commands] == [("c1", "run_check", "disk")]


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (401, error("token_expired"), AuthError),
        (401, error("invalid_token"), AuthError),
        (403, error("forbidden"), Forbidden),
        (404, error("target_not_found"), NotRegistered),
        (400, error("malformed"), RequestRejected),
        (422, error("invalid", fields={"version": "required"}), RequestRejected),
        (500, error("internal"), TransportError),
        (502, None, TransportError),
    ],
)
def test_heartbeat_status_mapping(
    server: FakeServer, transport: RestTransport, status: int, body: Any, expected: type
) -> None:
    server.script(f"/agents/{AGENT_ID}/heartbeat", Reply(status, body))
    with pytest.raises(TransportError) as info:
        transport.heartbeat(AGENT_ID, "jwt", {"version": "0.1.0"})
    assert type(info.value) is expected
    assert f"HTTP {status}" in str(info.value)
    if body:
        assert info.value.code == body["error"]["code"]


def test_invalid_fields_are_named_in_the_message(
    server: FakeServer, transport: RestTransport
) -> None:
    server.script(f"/agents/{AGENT_ID}/check-results",
                  Reply(422, error("invalid", "bad results", fields={"results.0.status": "bad"})))
    with pytest.raises(RequestRejected, match=r"bad results \(results.0.status: bad\)"):
        transport.push_results(AGENT_ID, "jwt", [{"result_id": "r"}])


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_seconds_is_honoured(
    server: FakeServer, transport: RestTransport, status: int
) -> None:
    server.script(f"/agents/{AGENT_ID}/heartbeat",
                  Reply(status, error("rate_limited"), headers={"Retry-After": "7"}))
    with pytest.raises(RetryLater) as info:
        transport.heartbeat(AGENT_ID, "jwt", {"version": "0.1.0"})
    assert info.value.retry_after == 7.0


def test_retry_after_http_date(server: FakeServer, transport: RestTransport) -> None:
    when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=120)
    server.script(f"/agents/{AGENT_ID}/heartbeat",
                  Reply(503, None, headers={"Retry-After": format_datetime(when, usegmt=True)}))
    with pytest.raises(RetryLater) as info:
        transport.heartbeat(AGENT_ID, "jwt", {"version": "0.1.0"})
    assert info.value.retry_after is not None and 100 < info.value.retry_after <= 120


def test_429_without_retry_after(server: FakeServer, transport: RestTransport) -> None:
    server.script(f"/agents/{AGENT_ID}/heartbeat", Reply(429, error("rate_limited")))
    with pytest.raises(RetryLater) as info:
        transport.heartbeat(AGENT_ID, "jwt", {"version": "0.1.0"})
    assert info.value.retry_after is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), ("", None), ("0", 0.0), ("30", 30.0), ("soon", None),
     ("999999", 3600.0), ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0)],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value) == expected


def test_reply_that_is_not_json_is_a_transport_error(
    server: FakeServer, transport: RestTransport
) -> None:
    server.script(f"/agents/{AGENT_ID}/heartbeat", Reply(200, raw=b"<html>proxy</html>"))
    with pytest.raises(TransportError, match="not JSON"):
        transport.heartbeat(AGENT_ID, "jwt", {"version": "0.1.0"})


def test_connection_refused_is_a_transport_error() -> None:
    probe = FakeServer()  # bound, never started, then closed: nobody listens on the port
    url = probe.url
    probe.httpd.server_close()
    rest = RestTransport(url, timeout=1.0)
    with pytest.raises(TransportError) as info:
        rest.heartbeat(AGENT_ID, "jwt", {"version": "0.1.0"})
    assert type(info.value) is TransportError


# -- assignment long-poll -----------------------------------------------------------------


def test_fetch_checks_returns_the_assignment_with_its_etag(
    server: FakeServer, transport: RestTransport
) -> None:
    checks = [{"id": "disk", "command": ["/bin/true"], "interval": "60s"}]
    server.script(f"/checks/target/{AGENT_ID}", Reply(200, {
        "target_id": AGENT_ID, "config_version": "3f2a", "checks": checks},
        headers={"ETag": '"3f2a"'}))

    result = transport.fetch_checks(AGENT_ID, "jwt", None, 0)

    assert result == Assignment(etag='"3f2a"', config_version="3f2a", checks=checks,
                                target_id=AGENT_ID)
    seen = server.requests[0]
    assert seen.method == "GET" and seen.query == {}
    assert "if-none-match" not in seen.headers
    assert seen.headers["authorization"] == "Bearer jwt"


def test_fetch_checks_keeps_the_signed_fields_as_sent(
    server: FakeServer, transport: RestTransport
) -> None:
    checks = [{"id": "disk", "command": ["/bin/true"], "interval": "60s", "limits": {"a": 1.5}}]
    server.script(f"/checks/target/{AGENT_ID}", Reply(200, {
        "target_id": AGENT_ID, "config_version": "3f2a", "checks": checks, "serial": 42,
        "issued_at": "2026-11-22T10:30:00.123Z", "commands": [],
        "signature": {"algorithm": "ed25519", "key_id": "3f2a9c", "value": "c2ln"}}))

    result = transport.fetch_checks(AGENT_ID, "jwt", None, 0)

    assert isinstance(result, Assignment)
    assert (result.target_id, result.serial, result.issued_at) == (
        AGENT_ID, 42, "2026-11-22T10:30:00.123Z")
    assert result.checks == checks
    assert result.signature == PolicySignature("ed25519", "3f2a9c", "c2ln")


@pytest.mark.parametrize("signature", ["not an object", ["x"], {"value": 3}])
def test_a_malformed_signature_is_not_mistaken_for_none(
    server: FakeServer, transport: RestTransport, signature: Any
) -> None:
    server.script(f"/checks/target/{AGENT_ID}", Reply(200, {
        "target_id": AGENT_ID, "config_version": "v", "checks": [], "signature": signature}))
    result = transport.fetch_checks(AGENT_ID, "jwt", None, 0)
    assert isinstance(result, Assignment) and result.signature is not None
    assert result.signature.algorithm == ""


def test_fetch_checks_sends_etag_and_wait_and_maps_304(
    server: FakeServer, transport: RestTransport
) -> None:
    server.script(f"/checks/target/{AGENT_ID}", Reply(304))

    assert transport.fetch_checks(AGENT_ID, "jwt", '"3f2a"', 30) is NOT_MODIFIED

    seen = server.requests[0]
    assert seen.headers["if-none-match"] == '"3f2a"'  # handed back verbatim
    assert seen.query == {"wait": ["30"]}


def test_fetch_checks_without_a_list_of_checks_is_a_transport_error(
    server: FakeServer, transport: RestTransport
) -> None:
    server.script(f"/checks/target/{AGENT_ID}", Reply(200, {"checks": "nope"}))
    with pytest.raises(TransportError, match="no list of checks"):
        transport.fetch_checks(AGENT_ID, "jwt", None, 0)


def test_long_poll_read_timeout_covers_the_wait(server: FakeServer) -> None:
    # The ordinary read timeout is 0.3 s; a long-poll answered after 0.8 s is fine, an
    # ordinary call that slow times out.
    transport = RestTransport(server.url, timeout=0.3)
    server.script(f"/checks/target/{AGENT_ID}", Reply(304, delay=0.8))
    server.script(f"/agents/{AGENT_ID}/heartbeat", Reply(200, {}, delay=0.8))

    assert transport.fetch_checks(AGENT_ID, "jwt", '"v"', 1) is NOT_MODIFIED
    with pytest.raises(TransportError, match="timed out"):
        transport.heartbeat(AGENT_ID, "jwt", {"version": "0.1.0"})
    assert LONG_POLL_MARGIN >= 5


# -- results --------------------------------------------------------------------------


def test_push_results_posts_the_batch_and_reads_accepted_and_rejected(
    server: FakeServer, transport: RestTransport
) -> None:
    server.script(f"/agents/{AGENT_ID}/check-results", Reply(202, {
        "job_id": "j1", "accepted": 1,
        "rejected": [{"result_id": "r2", "reason": "check not assigned"}]}))
    results = [{"result_id": "r1", "check_id": "disk"}, {"result_id": "r2", "check_id": "x"}]

    reply = transport.push_results(AGENT_ID, "jwt", results)

    assert server.requests[0].body == {"results": results}
    assert server.requests[0].headers["authorization"] == "Bearer jwt"
    assert reply.accepted == 1 and reply.job_id == "j1"
    assert [(r.result_id, r.reason) for r in reply.rejected] == [("r2", "check not assigned")]


@pytest.mark.parametrize("status", [400, 413, 422])
def test_batch_refusals_are_final(
    server: FakeServer, transport: RestTransport, status: int
) -> None:
    server.script(f"/agents/{AGENT_ID}/check-results", Reply(status, error("too_large")))
    with pytest.raises(RequestRejected):
        transport.push_results(AGENT_ID, "jwt", [{"result_id": "r1"}])


def test_push_results_timeout_override(server: FakeServer, transport: RestTransport) -> None:
    server.script(f"/agents/{AGENT_ID}/check-results", Reply(202, {"accepted": 1}, delay=0.6))
    started = time.monotonic()
    with pytest.raises(TransportError, match="timed out"):
        transport.push_results(AGENT_ID, "jwt", [{"result_id": "r1"}], timeout=0.2)
    assert time.monotonic() - started < 0.6


# -- TLS --------------------------------------------------------------------------------


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    renewed_cert: Path
    renewed_key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory = tmp_path_factory.mktemp("pki")
    now = dt.datetime.now(dt.UTC)

    def name(cn: str) -> Any:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write_key(key: Any, path: Path) -> None:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))

    def issue(cn: str, issuer_key: Any, issuer: Any, *, ca: bool = False,
              extra: Callable[[Any], Any] = lambda b: b) -> tuple[Any, Any]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(name(cn))
                   .issuer_name(issuer or name(cn)).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(minutes=5))
                   .not_valid_after(now + dt.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if ca:
            builder = builder.add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        builder = extra(builder)
        return key, builder.sign(issuer_key or key, hashes.SHA256())

    ca_key, ca_cert = issue("aami test ca", None, None, ca=True)
    ip = __import__("ipaddress").ip_address("127.0.0.1")
    server_key, server_cert = issue("localhost", ca_key, ca_cert.subject, extra=lambda b: b
                                    .add_extension(x509.SubjectAlternativeName(
                                        [x509.DNSName("localhost"), x509.IPAddress(ip)]),
                                        critical=False)
                                    .add_extension(x509.ExtendedKeyUsage(
                                        [ExtendedKeyUsageOID.SERVER_AUTH]), critical=False))
    client_key, client_cert = issue("agent", ca_key, ca_cert.subject, extra=lambda b: b
                                    .add_extension(x509.ExtendedKeyUsage(
                                        [ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
    renewed_key, renewed_cert = issue("agent-renewed", ca_key, ca_cert.subject,
                                      extra=lambda b: b.add_extension(x509.ExtendedKeyUsage(
                                          [ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
    pem = serialization.Encoding.PEM
    paths = Pki(directory / "ca.crt", directory / "server.crt", directory / "server.key",
                directory / "agent.crt", directory / "agent.key",
                directory / "renewed.crt", directory / "renewed.key")
    paths.ca.write_bytes(ca_cert.public_bytes(pem))
    paths.server_cert.write_bytes(server_cert.public_bytes(pem))
    paths.client_cert.write_bytes(client_cert.public_bytes(pem))
    paths.renewed_cert.write_bytes(renewed_cert.public_bytes(pem))
    write_key(server_key, paths.server_key)
    write_key(client_key, paths.client_key)
    write_key(renewed_key, paths.renewed_key)
    return paths


@pytest.fixture
def tls_server(pki: Pki) -> Iterator[FakeServer]:
    fake = FakeServer()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    context.load_verify_locations(pki.ca)
    context.verify_mode = ssl.CERT_REQUIRED  # mutual TLS: the agent must show its cert
    fake.httpd.socket = context.wrap_socket(fake.httpd.socket, server_side=True)
    fake.url = f"https://localhost:{fake.port}"
    fake.script(f"/agents/{AGENT_ID}/heartbeat", Reply(200, {"config_version": "v"}))
    fake.start()
    yield fake
    fake.stop()


def test_tls_with_ca_cert_and_client_certificate(tls_server: FakeServer, pki: Pki) -> None:
    rest = RestTransport(tls_server.url, timeout=2.0, ca_cert=str(pki.ca),
                         client_cert=str(pki.client_cert), client_key=str(pki.client_key))
    assert rest.heartbeat(AGENT_ID, "jwt", {"version": "0.1.0"}).config_version == "v"
    rest.close()


def test_new_client_certificate_files_are_used_without_a_restart(
    tls_server: FakeServer, pki: Pki, tmp_path: Path
) -> None:
    tls_server.httpd.RequestHandlerClass.protocol_version = "HTTP/1.1"  # keep-alive
    rest = RestTransport(tls_server.url, timeout=2.0, ca_cert=str(pki.ca))
    with pytest.raises(TransportError, match="TLS error"):  # the server wants a certificate
        rest.heartbeat(AGENT_ID, "jwt", {"version": "0.1.0"})

    cert, key = tmp_path / "agent.crt", tmp_path / "agent.key"
    cert.write_bytes(pki.client_cert.read_bytes())
    key.write_bytes(pki.client_key.read_bytes())
    rest.use_tls_files(str(cert), str(key), str(pki.ca))
    assert rest.heartbeat(AGENT_ID, "jwt", {"version": "0.1.0"}).config_version == "v"
    assert tls_server.requests[-1].peer_cn == "agent"

    # A renewal replaces the files in place: the next connection presents the new pair,
    # although the old pair's keep-alive connection is still open.
    cert.write_bytes(pki.renewed_cert.read_bytes())
    key.write_bytes(pki.renewed_key.read_bytes())
    rest.use_tls_files(str(cert), str(key), str(pki.ca))
    rest.heartbeat(AGENT_ID, "jwt", {"version": "0.1.0"})
    assert tls_server.requests[-1].peer_cn == "agent-renewed"
    rest.close()


def test_a_registration_over_verified_tls_says_so(tls_server: FakeServer, pki: Pki) -> None:
    tls_server.script("/bootstrap-tokens/register", Reply(201, {**GRANT, "policy_keys": []}))
    rest = RestTransport(tls_server.url, timeout=2.0, ca_cert=str(pki.ca),
                         client_cert=str(pki.client_cert), client_key=str(pki.client_key))
    grant = rest.register(Registration(token="t", agent_id=AGENT_ID, hostname="h"))
    assert grant.verified_tls is True and grant.policy_keys == ()
    rest.close()


def test_tls_server_not_signed_by_the_configured_ca_is_refused(
    tls_server: FakeServer, pki: Pki
) -> None:
    rest = RestTransport(tls_server.url, timeout=2.0, client_cert=str(pki.client_cert),
                         client_key=str(pki.client_key))  # system CAs only
    with pytest.raises(TransportError, match="TLS error"):
        rest.heartbeat(AGENT_ID, "jwt", {"version": "0.1.0"})
    rest.close()


def test_fetch_checks_hands_over_the_commands_of_a_long_poll_reply(
    server: FakeServer, transport: RestTransport
) -> None:
    server.script(f"/checks/target/{AGENT_ID}", Reply(200, {
        "target_id": AGENT_ID, "config_version": "3f2a", "checks": [],
        "commands": [{"id": "c1", "type": "run_check", "check_id": "disk"}]},
        headers={"ETag": '"3f2a"'}))

    result = transport.fetch_checks(AGENT_ID, "jwt", '"3f2a"', 30)

    assert isinstance(result, Assignment)
    assert result.commands == (Command(id="c1", type="run_check", check_id="disk"),)
