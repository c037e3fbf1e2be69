"""aami-server serve: TLS and client-certificate options handed to gunicorn."""

from __future__ import annotations

import os
import ssl
from typing import Any

import pytest
from click.testing import CliRunner

from server import serving
from server.cli import main
from server.security.ca import init_ca


@pytest.fixture
def served_with(tmp_path, monkeypatch) -> dict[str, Any]:
    """Run ``serve`` without starting gunicorn; returns what it would have been given."""
    for name in [n for n in os.environ if n.startswith("AAMI_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AAMI_DATA_DIR", str(tmp_path / "var"))
    given: dict[str, Any] = {}
    monkeypatch.setattr(serving, "run_gunicorn", lambda **kwargs: given.update(kwargs))
    return given


@pytest.fixture
def pem_files(tmp_path) -> dict[str, str]:
    files = {}
    for name in ("server.crt", "server.key", "clients.crt"):
        path = tmp_path / name
        path.write_text("placeholder")
        files[name] = str(path)
    return files


def _serve(*args: str, code: int = 0) -> Any:
    result = CliRunner().invoke(main, ["serve", *args])
    assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
    return result


def test_plain_http_by_default(served_with):
    _serve()
    assert served_with["certfile"] is None
    assert served_with["client_certs"] == "none"
    assert serving.tls_options(None, None) == {}


def test_ca_certs_turns_optional_client_certificates_on(served_with, pem_files):
    _serve("--certfile", pem_files["server.crt"], "--keyfile", pem_files["server.key"],
           "--ca-certs", pem_files["clients.crt"])
    assert served_with["client_certs"] == "optional"
    options = serving.tls_options(
        served_with["certfile"], served_with["keyfile"], served_with["ca_certs"], "optional"
    )
    assert options["cert_reqs"] == ssl.CERT_OPTIONAL
    assert options["ca_certs"] == pem_files["clients.crt"]


def test_required_client_certificates_use_the_built_in_ca_by_default(
    served_with, pem_files, tmp_path
):
    init_ca(tmp_path / "var" / "ca")
    _serve("--certfile", pem_files["server.crt"], "--keyfile", pem_files["server.key"],
           "--client-certs", "required")
    assert served_with["ca_certs"] == str(tmp_path / "var" / "ca" / "ca.crt")
    options = serving.tls_options(
        pem_files["server.crt"], pem_files["server.key"], served_with["ca_certs"], "required"
    )
    assert options["cert_reqs"] == ssl.CERT_REQUIRED


def test_client_certificates_without_any_ca_are_refused(served_with, pem_files):
    result = _serve("--certfile", pem_files["server.crt"], "--keyfile", pem_files["server.key"],
                    "--client-certs", "optional", code=2)
    assert "ca init" in result.stderr


def test_client_certificates_without_https_are_refused(served_with, pem_files):
    result = _serve("--ca-certs", pem_files["clients.crt"], code=2)
    assert "--certfile" in result.stderr


def test_required_setting_without_verification_warns(served_with, monkeypatch):
    monkeypatch.setenv("AAMI_REQUIRE_CLIENT_CERT", "true")
    result = _serve()
    assert "every agent call will be refused" in result.stderr


def test_ssl_context_is_made_once_per_process_and_refuses_old_tls():
    made = []

    class Conf:
        certfile, keyfile, ca_certs, cert_reqs = "a", "b", "c", ssl.CERT_OPTIONAL

    def factory() -> ssl.SSLContext:
        made.append(1)
        return ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)

    first = serving._ssl_context(Conf(), factory)
    assert serving._ssl_context(Conf(), factory) is first
    assert len(made) == 1
    assert first.minimum_version == ssl.TLSVersion.TLSv1_2
