"""Client certificates: enrollment with a CSR at registration, renewal, and identity binding.

The TLS handshake itself is exercised for real in tests/integration/test_mtls.py; here the
verified peer certificate is what gunicorn's TLS socket would report (``getpeercert()``),
put into the WSGI environ the way gunicorn does (``gunicorn.socket``).
"""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from sqlalchemy import select

from server import create_app
from server.db import get_database
from server.models import AuditLog
from server.security.ca import AGENT_URI_PREFIX, agent_id_from_pem, init_ca, new_agent_key_pair
from tests.server.conftest import assert_error, bearer, new_agent_id

REGISTER = "/api/v1/bootstrap-tokens/register"
BROKEN_PEM_CSR = "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"


def make_csr(common_name: str = "whatever-the-agent-asks", key: Any = None) -> str:
    key = key or ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


class FakeTlsSocket:
    """What gunicorn puts in ``environ['gunicorn.socket']`` on a verified TLS connection."""

    def __init__(self, agent_id: str | None) -> None:
        self.agent_id = agent_id

    def getpeercert(self) -> dict[str, Any] | None:
        if self.agent_id is None:
            return None
        return {
            "subject": ((("organizationName", "AAMI agents"),), (("commonName", self.agent_id),)),
            "subjectAltName": (("URI", AGENT_URI_PREFIX + self.agent_id),),
        }


def tls(agent_id: str | None) -> dict[str, Any]:
    return {"environ_base": {"gunicorn.socket": FakeTlsSocket(agent_id)}}


@pytest.fixture
def ca_dir(app) -> Path:
    directory = app.extensions["aami.settings"].ca_dir()
    init_ca(directory)
    return directory


def _certificate(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


def _audit_rows(app, action: str) -> list[AuditLog]:
    with get_database(app).session() as session:
        return list(session.scalars(select(AuditLog).where(AuditLog.action == action)))


# --- enrollment at registration ----------------------------------------------------------


def test_register_with_csr_returns_a_certificate_for_the_agent_id(app, client, ca_dir, register):
    agent_id = new_agent_id()
    reply = register(agent_id, csr=make_csr("someone-else"))
    certificate = _certificate(reply["certificate"])
    # The CSR asked for another name: the certificate names the registered agent only.
    assert agent_id_from_pem(reply["certificate"]) == agent_id
    cn = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == agent_id
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [AGENT_URI_PREFIX + agent_id]
    assert reply["ca_certificate"] == (ca_dir / "ca.crt").read_text()
    ca_cert = _certificate(reply["ca_certificate"])
    certificate.verify_directly_issued_by(ca_cert)
    expires = dt.datetime.fromisoformat(reply["certificate_expires_at"])
    assert expires == certificate.not_valid_after_utc
    days = app.extensions["aami.settings"].CLIENT_CERT_DAYS
    assert abs(expires - (dt.datetime.now(dt.UTC) + dt.timedelta(days=days))) < dt.timedelta(
        minutes=5
    )
    [row] = _audit_rows(app, "certificate.issue")
    assert (row.actor, row.subject) == (f"agent:{agent_id}", agent_id)
    assert row.details["via"] == "registration"
    assert row.details["serial"] == format(certificate.serial_number, "x")


def test_register_with_csr_and_no_agent_id_names_the_generated_id(client, ca_dir, register):
    reply = register(csr=make_csr())
    assert agent_id_from_pem(reply["certificate"]) == reply["agent_id"]


def test_register_without_csr_has_no_certificate_fields(client, ca_dir, register):
    reply = register(new_agent_id())
    assert not {"certificate", "ca_certificate", "certificate_expires_at"} & set(reply)


def test_csr_without_a_ca_is_409_and_spends_no_token_use(client, make_bootstrap_token):
    token = make_bootstrap_token(max_uses=1)
    body = {"token": token, "hostname": "h", "csr": make_csr()}
    message = assert_error(client.post(REGISTER, json=body), 409, "ca_not_configured")
    assert "aami-server ca init" in message
    # The refused request left the single use for a registration that can succeed.
    del body["csr"]
    assert client.post(REGISTER, json=body).status_code == 201


@pytest.mark.parametrize(
    ("csr", "mentions"),
    [
        ("not a csr", "PEM"),
        ("", "PEM"),
        (make_csr().replace("MI", "QQ", 3), "csr"),
        (
            make_csr(key=rsa.generate_private_key(public_exponent=65537, key_size=2048)),
            "ECDSA",
        ),
    ],
    ids=["garbage", "empty", "corrupted", "rsa-key"],
)
def test_bad_csr_is_422_naming_csr(client, ca_dir, make_bootstrap_token, csr, mentions):
    token = make_bootstrap_token(max_uses=1)
    reply = client.post(REGISTER, json={"token": token, "hostname": "h", "csr": csr})
    message = assert_error(reply, 422, "invalid_fields", mentions=mentions)
    assert "csr" in message
    assert "csr" in reply.get_json()["error"]["fields"]
    # Nothing was registered: the token's single use is still there.
    assert client.post(REGISTER, json={"token": token, "hostname": "h"}).status_code == 201


def test_oversized_csr_is_refused_by_the_schema(client, ca_dir):
    reply = client.post(REGISTER, json={"token": "x", "hostname": "h", "csr": "A" * 8193})
    assert_error(reply, 422, "invalid_fields", mentions="csr")


def test_ca_created_after_start_is_picked_up_without_restart(app, client, register):
    body = {"csr": make_csr()}
    agent = register(new_agent_id())
    url = f"/api/v1/agents/{agent['agent_id']}/certificate"
    headers = bearer(agent["access_token"])
    assert_error(client.post(url, json=body, headers=headers), 409, "ca_not_configured")
    init_ca(app.extensions["aami.settings"].ca_dir())
    assert client.post(url, json=body, headers=headers).status_code == 200


# --- renewal -----------------------------------------------------------------------------


def test_renewal_issues_a_new_certificate_for_the_callers_own_id(app, client, ca_dir, register):
    agent = register(new_agent_id(), csr=make_csr())
    reply = client.post(
        f"/api/v1/agents/{agent['agent_id']}/certificate",
        json={"csr": make_csr()},
        headers=bearer(agent["access_token"]),
    )
    assert reply.status_code == 200, reply.get_json()
    body = reply.get_json()
    assert set(body) == {"certificate", "ca_certificate", "certificate_expires_at"}
    assert agent_id_from_pem(body["certificate"]) == agent["agent_id"]
    assert body["certificate"] != agent["certificate"]
    vias = sorted(row.details["via"] for row in _audit_rows(app, "certificate.issue"))
    assert vias == ["registration", "renewal"]


def test_renewal_for_another_agent_is_403(client, ca_dir, register):
    a, b = register(new_agent_id()), register(new_agent_id())
    reply = client.post(
        f"/api/v1/agents/{b['agent_id']}/certificate",
        json={"csr": make_csr()},
        headers=bearer(a["access_token"]),
    )
    assert_error(reply, 403, "forbidden", mentions="own paths")


def test_renewal_needs_an_agent_token(client, ca_dir, register, admin_headers):
    agent = register(new_agent_id())
    url = f"/api/v1/agents/{agent['agent_id']}/certificate"
    assert_error(client.post(url, json={"csr": make_csr()}), 401, "missing_token")
    as_admin = client.post(url, json={"csr": make_csr()}, headers=admin_headers)
    assert_error(as_admin, 403, "forbidden")


def test_renewal_with_a_bad_csr_is_422(client, ca_dir, register):
    agent = register(new_agent_id())
    reply = client.post(
        f"/api/v1/agents/{agent['agent_id']}/certificate",
        json={"csr": BROKEN_PEM_CSR},
        headers=bearer(agent["access_token"]),
    )
    assert_error(reply, 422, "invalid_fields", mentions="csr")


def test_ca_is_loaded_once_per_app(app, client, ca_dir, register, monkeypatch):
    from server.security import ca as ca_module

    loads = []
    real = ca_module.load_ca
    monkeypatch.setattr(ca_module, "load_ca", lambda d: loads.append(d) or real(d))
    for _ in range(3):
        register(new_agent_id(), csr=make_csr())
    assert loads == [ca_dir]


# --- identity binding --------------------------------------------------------------------


def _heartbeat(client, agent: dict[str, Any], path_agent: str | None = None, **kwargs: Any):
    return client.post(
        f"/api/v1/agents/{path_agent or agent['agent_id']}/heartbeat",
        json={"version": "1"},
        headers=bearer(agent["access_token"]),
        **kwargs,
    )


def test_own_certificate_and_token_work(client, register):
    agent = register(new_agent_id())
    assert _heartbeat(client, agent, **tls(agent["agent_id"])).status_code == 200
    checks = client.get(
        f"/api/v1/checks/target/{agent['agent_id']}",
        headers=bearer(agent["access_token"]),
        **tls(agent["agent_id"]),
    )
    assert checks.status_code == 200


def test_certificate_of_agent_a_cannot_act_for_b_even_with_bs_token(client, register):
    a, b = register(new_agent_id()), register(new_agent_id())
    reply = _heartbeat(client, b, **tls(a["agent_id"]))
    message = assert_error(reply, 403, "certificate_mismatch", mentions=a["agent_id"])
    assert b["agent_id"] in message
    checks = client.get(
        f"/api/v1/checks/target/{b['agent_id']}",
        headers=bearer(b["access_token"]),
        **tls(a["agent_id"]),
    )
    assert_error(checks, 403, "certificate_mismatch")
    refresh = client.post(
        f"/api/v1/agents/{b['agent_id']}/token",
        json={"refresh_token": b["refresh_token"]},
        **tls(a["agent_id"]),
    )
    assert_error(refresh, 403, "certificate_mismatch")


def test_certificate_naming_no_agent_is_refused(client, register):
    agent = register(new_agent_id())

    class ServerCertSocket:
        def getpeercert(self) -> dict[str, Any]:
            return {"subject": ((("organizationName", "ACME"),),), "subjectAltName": ()}

    reply = _heartbeat(client, agent, environ_base={"gunicorn.socket": ServerCertSocket()})
    assert_error(reply, 403, "certificate_mismatch", mentions="no agent")


def test_no_certificate_is_fine_unless_required(client, register):
    agent = register(new_agent_id())
    assert _heartbeat(client, agent).status_code == 200
    assert _heartbeat(client, agent, **tls(None)).status_code == 200


@pytest.fixture
def strict_app(app):
    """The same server, with AAMI_REQUIRE_CLIENT_CERT=true."""
    return create_app(
        {
            "DATA_DIR": app.extensions["aami.settings"].DATA_DIR,
            "LOG_LEVEL": "warning",
            "REQUIRE_CLIENT_CERT": "true",
        }
    )


def test_required_certificate_missing_is_401_on_every_agent_path(strict_app, register):
    agent = register(new_agent_id())
    client = strict_app.test_client()
    agent_id, headers = agent["agent_id"], bearer(agent["access_token"])
    calls = [
        client.post(f"/api/v1/agents/{agent_id}/heartbeat", json={"version": "1"}, headers=headers),
        client.get(f"/api/v1/checks/target/{agent_id}", headers=headers),
        client.post(
            f"/api/v1/agents/{agent_id}/check-results",
            json={"results": [{"result_id": str(uuid.uuid4()), "check_id": "c", "status": "ok",
                               "exit_code": 0, "executed_at": "2026-01-01T00:00:00Z"}]},
            headers=headers,
        ),
        client.post(f"/api/v1/agents/{agent_id}/certificate", json={"csr": make_csr()},
                    headers=headers),
        client.post(f"/api/v1/agents/{agent_id}/token",
                    json={"refresh_token": agent["refresh_token"]}),
    ]
    for reply in calls:
        assert_error(reply, 401, "client_certificate_required", mentions="client certificate")


def test_required_certificate_present_works_and_registration_needs_none(
    strict_app, make_bootstrap_token
):
    client = strict_app.test_client()
    agent_id = new_agent_id()
    registered = client.post(
        REGISTER, json={"token": make_bootstrap_token(), "hostname": "h", "agent_id": agent_id}
    )
    assert registered.status_code == 201
    reply = client.post(
        f"/api/v1/agents/{agent_id}/heartbeat",
        json={"version": "1"},
        headers=bearer(registered.get_json()["access_token"]),
        **tls(agent_id),
    )
    assert reply.status_code == 200


def test_admin_reading_an_assignment_needs_no_agent_certificate(
    strict_app, register, admin_headers
):
    agent = register(new_agent_id())
    reply = strict_app.test_client().get(
        f"/api/v1/checks/target/{agent['agent_id']}", headers=admin_headers
    )
    assert reply.status_code == 200


def test_certificate_proves_the_right_to_re_register_a_held_id(client, make_bootstrap_token):
    agent_id = new_agent_id()
    first = {"token": make_bootstrap_token(), "hostname": "h", "agent_id": agent_id}
    assert client.post(REGISTER, json=first).status_code == 201
    again = {**first, "token": make_bootstrap_token()}
    assert_error(client.post(REGISTER, json=again), 409, "agent_id_in_use")
    assert_error(client.post(REGISTER, json=again, **tls(new_agent_id())), 409, "agent_id_in_use")
    assert client.post(REGISTER, json=again, **tls(agent_id)).status_code == 200


# --- a TLS proxy in front (nginx) --------------------------------------------------------


@pytest.fixture
def proxied_app(app):
    return create_app(
        {
            "DATA_DIR": app.extensions["aami.settings"].DATA_DIR,
            "LOG_LEVEL": "warning",
            "REQUIRE_CLIENT_CERT": "true",
            "TRUSTED_PROXIES": "10.0.0.1",
            "CLIENT_CERT_HEADER": "X-Client-Cert",
        }
    )


def _escaped_certificate(app, agent_id: str) -> str:
    from server.security.ca import load_ca

    directory = app.extensions["aami.settings"].ca_dir()
    _key, certificate = new_agent_key_pair(load_ca(directory), agent_id, 1)
    return quote(certificate.decode(), safe="")  # nginx's $ssl_client_escaped_cert


def test_certificate_header_from_the_trusted_proxy_is_believed(proxied_app, ca_dir, register):
    agent = register(new_agent_id())
    client = proxied_app.test_client()
    header = {"X-Client-Cert": _escaped_certificate(proxied_app, agent["agent_id"])}
    ok = client.post(
        f"/api/v1/agents/{agent['agent_id']}/heartbeat",
        json={"version": "1"},
        headers={**bearer(agent["access_token"]), **header},
        environ_base={"REMOTE_ADDR": "10.0.0.1"},
    )
    assert ok.status_code == 200, ok.get_json()
    other = {"X-Client-Cert": _escaped_certificate(proxied_app, new_agent_id())}
    mismatch = client.post(
        f"/api/v1/agents/{agent['agent_id']}/heartbeat",
        json={"version": "1"},
        headers={**bearer(agent["access_token"]), **other},
        environ_base={"REMOTE_ADDR": "10.0.0.1"},
    )
    assert_error(mismatch, 403, "certificate_mismatch")


def test_certificate_header_from_anyone_else_is_ignored(proxied_app, ca_dir, register):
    agent = register(new_agent_id())
    reply = proxied_app.test_client().post(
        f"/api/v1/agents/{agent['agent_id']}/heartbeat",
        json={"version": "1"},
        headers={
            **bearer(agent["access_token"]),
            "X-Client-Cert": _escaped_certificate(proxied_app, agent["agent_id"]),
        },
        environ_base={"REMOTE_ADDR": "203.0.113.9"},
    )
    assert_error(reply, 401, "client_certificate_required")
