"""Property-based fuzzing of every operation in /api/v1/openapi.json with schemathesis.

The embedded app is driven through WSGI (no network). Each operation gets generated
requests, valid and invalid, with real credentials injected: an admin token on operator
calls, a registered agent's JWT on agent calls (and, half of the time, that agent's own id
in the path, so the fuzzing reaches past the "not your path" check). Every reply must not
be a 5xx, must have a documented status and content type, and must match the documented
schema for its status.
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, settings
from schemathesis.checks import CHECKS, load_all_checks

import server.api
from server import create_app
from server.api.openapi import build_spec
from server.db import get_database
from server.security.ca import init_ca
from server.services import tokens

# Bounded and derandomized for the suite (about half a minute); FUZZ_EXAMPLES=500 runs a
# longer, random exploration.
MAX_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
DERANDOMIZE = "FUZZ_EXAMPLES" not in os.environ
# Every check schemathesis has, as `st run --checks all` runs them.
load_all_checks()
ALL_CHECKS = CHECKS.get_all()
CHECK = {"id": "disk", "command": ["/usr/lib/nagios/plugins/check_disk"], "interval": "60s"}


def _csr() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fuzz")]))
        .sign(key, hashes.SHA256())
    )
    return request.public_bytes(serialization.Encoding.PEM).decode()


CSR = _csr()


class World:
    """The fuzzed app, with an admin, an agent, a check and a group to aim at."""

    def __init__(self, app: Any) -> None:
        self.app = app
        with get_database(app).session() as session:
            self.admin = tokens.create_admin_token(session, name="fuzz", role="admin").secret
            self.bootstrap = tokens.create_bootstrap_token(session, name="fuzz").secret
        client = app.test_client()
        reply = client.post(
            "/api/v1/bootstrap-tokens/register",
            json={"token": self.bootstrap, "hostname": "fuzz-1"},
        ).get_json()
        self.agent_id = reply["agent_id"]
        self.agent_token = reply["access_token"]
        self.refresh_token = reply["refresh_token"]
        self.calls = 0
        admin = {"Authorization": f"Bearer {self.admin}"}
        check = {**CHECK, "assign": {"target_ids": [self.agent_id]}}
        assert client.post("/api/v1/checks", json=check, headers=admin).status_code == 201
        assert client.post("/api/v1/groups", json={"id": "web"}, headers=admin).status_code == 201

    def aim(self, case: Any) -> dict[str, str]:
        """Every other case: point it at things that exist and give it valid secrets, so
        that generation reaches past lookups and credential checks. Returns credentials."""
        self.calls += 1
        # Never a negative case: a real token or path put over its invalid part makes it valid.
        aimed = self.calls % 2 == 0 and case.meta.generation.mode.is_positive
        params = case.path_parameters or {}
        body = case.body if isinstance(case.body, dict) else {}
        if aimed:
            if "agent_id" in params:
                params["agent_id"] = self.agent_id
            if case.method.upper() != "DELETE":
                # Never deleted: the agent and its check must outlive this case.
                if "target_id" in params:
                    params["target_id"] = self.agent_id
                if "check_id" in params:
                    params["check_id"] = "disk"
            if "token" in body:
                body["token"] = self.bootstrap
            if isinstance(body.get("group_id"), str):
                body["group_id"] = "web"
            if "refresh_token" in body and "agent_id" in params:
                body["refresh_token"] = self.refresh_token
            if isinstance(body.get("csr"), str):
                body["csr"] = CSR
            if isinstance(body.get("command"), list) and body["command"]:
                body["command"][0] = "/usr/lib/nagios/plugins/check_dummy"
        if "agent_id" in params:
            return {"Authorization": f"Bearer {self.agent_token}"}
        return {"Authorization": f"Bearer {self.admin}"}

    def saw(self, case: Any, response: Any) -> None:
        """Keep the agent's refresh token current when a case rotated it."""
        # (schemathesis also probes other methods: an OPTIONS reply is 200 and empty.)
        rotated = case.method.upper() == "POST" and case.path.endswith("/token")
        if rotated and response.status_code == 200:
            self.refresh_token = response.json()["refresh_token"]


@pytest.fixture
def fuzz_app(tmp_path, migrated_database):
    """A fresh embedded app, its limits opened up so that fuzzing reaches the code behind."""
    import sqlite3

    data_dir = tmp_path / "var"
    data_dir.mkdir()
    source, copy = sqlite3.connect(migrated_database), sqlite3.connect(data_dir / "aami.db")
    try:
        source.backup(copy)
    finally:
        source.close()
        copy.close()
    init_ca(data_dir / "ca")  # so that generated CSRs reach the signing code
    return create_app(
        {
            "DATA_DIR": str(data_dir),
            "LOG_LEVEL": "error",
            "REGISTER_RATE_LIMIT": "off",
            "REFRESH_RATE_LIMIT": "off",
            # A generated ?wait= must not hold the run for a minute.
            "LONGPOLL_MAX_WAIT": 1,
        }
    )


@pytest.fixture
def world(fuzz_app) -> Iterator[World]:
    CURRENT_APP.app = fuzz_app
    try:
        yield World(fuzz_app)
    finally:
        CURRENT_APP.app = None


class CurrentApp:
    """The app of the running test, behind the one WSGI app a module-level schema holds:
    generated requests go to it, and so do those that checks send on their own (the same
    call without credentials, a deleted resource fetched again)."""

    app: Any = None

    def __call__(self, environ: Any, start_response: Any) -> Any:
        return self.app(environ, start_response)


def _document() -> dict[str, Any]:
    """The OpenAPI document the app serves (built from the same route declarations)."""
    for module in pkgutil.iter_modules(server.api.__path__):
        importlib.import_module(f"server.api.{module.name}")
    return build_spec()


CURRENT_APP = CurrentApp()
DOCUMENT = _document()
schema = schemathesis.openapi.from_dict(DOCUMENT)
schema.app = CURRENT_APP
schema.config.update(base_url="http://localhost")


def test_fuzzed_document_is_the_served_one(fuzz_app):
    served = fuzz_app.test_client().get("/api/v1/openapi.json").get_json()
    assert served == json.loads(json.dumps(DOCUMENT))


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=DERANDOMIZE,
    suppress_health_check=list(HealthCheck),
)
def test_api_answers_every_generated_request_within_its_contract(case, world):
    headers = world.aim(case)
    response = case.call(headers=headers)
    world.saw(case, response)
    case.validate_response(response, checks=ALL_CHECKS, headers=headers)

