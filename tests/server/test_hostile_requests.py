"""Hostile and broken requests: each gets its documented 4xx and the JSON error body, never a 5xx.

One table: every row is a request, the status, the error code, and a word the message must
contain so that the caller can tell what was wrong.
"""

from __future__ import annotations

import base64
import importlib
import io
import json
import pkgutil
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import jwt
import pytest

import server.api
from server.api.routing import REGISTRY
from server.db import get_database
from server.security.ca import init_ca
from server.services import tokens
from tests.server.conftest import assert_error, bearer
from tests.server.test_client_certificates import make_csr, tls

REGISTER = "/api/v1/bootstrap-tokens/register"
CHECK = {"id": "disk", "command": ["/usr/lib/nagios/plugins/check_disk"]}


class World:
    """What hostile requests are made with: two agents, admin tokens, bootstrap tokens."""

    def __init__(self, app, client, make_admin_token, make_bootstrap_token, register):
        self.app = app
        self.client = client
        self.make_admin_token = make_admin_token
        self.make_bootstrap_token = make_bootstrap_token
        self.register = register
        self.settings = app.extensions["aami.settings"]

    @cached_property
    def a(self) -> dict[str, Any]:
        return self.register()

    @cached_property
    def b(self) -> dict[str, Any]:
        return self.register()

    @cached_property
    def admin(self) -> dict[str, str]:
        return bearer(self.make_admin_token())

    @cached_property
    def read_only(self) -> dict[str, str]:
        return bearer(self.make_admin_token("read-only", "viewer"))

    def agent(self, who: str = "a") -> dict[str, str]:
        return bearer(getattr(self, who)["access_token"])

    def claims(self, **changes: Any) -> dict[str, Any]:
        now = int(time.time())
        claims = {
            "sub": self.a["agent_id"],
            "iss": self.settings.JWT_ISSUER,
            "aud": self.settings.JWT_AUDIENCE,
            "iat": now,
            "exp": now + 600,
            "jti": str(uuid.uuid4()),
            "typ": "access",
        }
        claims.update(changes)
        return {k: v for k, v in claims.items() if v is not None}

    def signed(self, key: str | None = None, **changes: Any) -> dict[str, str]:
        token = jwt.encode(self.claims(**changes), key or self.settings.SECRET_KEY, "HS256")
        return bearer(token)

    def unsigned(self) -> dict[str, str]:
        def part(data: dict[str, Any]) -> str:
            return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

        return bearer(f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(self.claims())}.")

    def heartbeat(self, who: str = "a", **kwargs: Any) -> Any:
        agent_id = getattr(self, who)["agent_id"]
        kwargs.setdefault("headers", self.agent(who))
        return self.client.post(f"/api/v1/agents/{agent_id}/heartbeat", **kwargs)

    def results(self, results: list[dict[str, Any]], **kwargs: Any) -> Any:
        kwargs.setdefault("headers", self.agent())
        return self.client.post(
            f"/api/v1/agents/{self.a['agent_id']}/check-results",
            json={"results": results},
            **kwargs,
        )

    def with_ca(self) -> World:
        init_ca(self.settings.ca_dir())
        return self

    def register_csr(self, csr: str) -> Any:
        body = {"token": self.make_bootstrap_token(), "hostname": "h", "csr": csr}
        return self.client.post(REGISTER, json=body)

    def flood(self, path: str) -> Any:
        """POST junk to ``path`` until refused: the limit counts before anything is read."""
        for _ in range(100):
            reply = self.client.post(path, json={})
            if reply.status_code == 429:
                return reply
        raise AssertionError(f"{path} was never rate-limited")

    def register_with(self, token: str) -> Any:
        return self.client.post(REGISTER, json={"token": token, "hostname": "h"})

    def spent_refresh_token(self) -> Any:
        """Replay a refresh token after its successor was used (not a lost-reply retry)."""
        agent_id, first = self.a["agent_id"], self.a["refresh_token"]
        url = f"/api/v1/agents/{agent_id}/token"
        reply = self.client.post(url, json={"refresh_token": first})
        assert reply.status_code == 200
        second = reply.get_json()["refresh_token"]
        assert self.client.post(url, json={"refresh_token": second}).status_code == 200
        return self.client.post(url, json={"refresh_token": first})


def _result(**changes: Any) -> dict[str, Any]:
    result = {
        "result_id": str(uuid.uuid4()),
        "check_id": "disk",
        "status": "ok",
        "exit_code": 0,
        "executed_at": "2026-01-01T00:00:00Z",
    }
    result.update(changes)
    return result


def _raw(w: World, path: str, body: str | bytes, headers: dict[str, str] | None = None) -> Any:
    """POST ``body`` as it is written: JSON escapes such as ``\\ud800`` reach the server."""
    return w.client.post(path, data=body, content_type="application/json", headers=headers)


def _chunked(w: World, size: int) -> Any:
    """POST a JSON body of ``size`` bytes as a stream without Content-Length (chunked), the
    way gunicorn hands one over: it terminates the stream (``wsgi.input_terminated``)."""
    body = b'{"token": "x", "hostname": "' + b"h" * (size - 30) + b'"}'
    body += b" " * (size - len(body))
    return w.client.post(
        REGISTER,
        input_stream=io.BytesIO(body),
        content_type="application/json",
        headers={"Transfer-Encoding": "chunked"},  # werkzeug then ignores Content-Length
        environ_overrides={"wsgi.input_terminated": True},
    )


def _exhausted(w: World) -> Any:
    token = w.make_bootstrap_token(max_uses=1)
    assert w.register_with(token).status_code == 201
    return w.register_with(token)


def _revoked(w: World) -> Any:
    token = w.make_bootstrap_token()
    revoked = w.client.delete(f"/api/v1/bootstrap-tokens/{token[:14]}", headers=w.admin)
    assert revoked.status_code == 200
    return w.register_with(token)


def _revoked_admin(w: World) -> Any:
    secret = w.make_admin_token(name="gone")
    with get_database(w.app).session() as session:
        tokens.revoke_admin_token(session, secret[:14])
    return w.client.get("/api/v1/targets", headers=bearer(secret))


@dataclass(frozen=True)
class Hostile:
    name: str
    send: Callable[[World], Any]
    status: int
    code: str
    mentions: str


CASES = [
    # --- malformed bodies: 400 --------------------------------------------------------------------
    Hostile(
        "malformed-json",
        lambda w: w.client.post(REGISTER, data='{"token": ', content_type="application/json"),
        400,
        "malformed_json",
        "not valid JSON",
    ),
    Hostile(
        "json-array-not-object",
        lambda w: w.client.post(REGISTER, json=[{"token": "x"}]),
        400,
        "malformed_json",
        "JSON object",
    ),
    Hostile(
        "json-scalar-not-object",
        lambda w: w.heartbeat(data="42", content_type="application/json"),
        400,
        "malformed_json",
        "JSON object",
    ),
    Hostile(
        "empty-body",
        lambda w: w.client.post(REGISTER, data="", content_type="application/json"),
        400,
        "malformed_json",
        "empty",
    ),
    Hostile(
        "not-utf8",
        lambda w: w.client.post(REGISTER, data=b"\xff\xfe{", content_type="application/json"),
        400,
        "malformed_json",
        "not valid JSON",
    ),
    Hostile(
        "nested-too-deeply",
        lambda w: w.client.post(
            REGISTER, data="[" * 100_000 + "]" * 100_000, content_type="application/json"
        ),
        400,
        "malformed_json",
        "nested",
    ),
    Hostile(
        "content-type-text",
        lambda w: w.client.post(REGISTER, data='{"token": "x"}', content_type="text/plain"),
        400,
        "unsupported_media_type",
        "text/plain",
    ),
    Hostile(
        "content-type-form",
        lambda w: w.client.post(REGISTER, data={"token": "x", "hostname": "h"}),
        400,
        "unsupported_media_type",
        "application/x-www-form-urlencoded",
    ),
    Hostile(
        "content-type-missing",
        lambda w: w.heartbeat(data='{"version": "1"}'),
        400,
        "unsupported_media_type",
        "Content-Type",
    ),
    # --- too large: 413 ---------------------------------------------------------------------------
    Hostile(
        "body-over-max-content-length",
        lambda w: w.client.post(REGISTER, json={"token": "x", "hostname": "h" * (1024 * 1024 + 1)}),
        413,
        "payload_too_large",
        "larger than 1048576 bytes",
    ),
    Hostile(
        "results-body-over-max-content-length",
        lambda w: w.results([_result(output="x" * 60_000) for _ in range(20)]),
        413,
        "payload_too_large",
        "larger than",
    ),
    Hostile(
        "chunked-body-over-max-content-length",
        lambda w: _chunked(w, 1024 * 1024 + 1),
        413,
        "payload_too_large",
        "larger than 1048576 bytes",
    ),
    # --- text no database stores (lone surrogates, NUL): 422 naming the field --------------------
    Hostile(
        "lone-surrogate-in-bootstrap-token",
        lambda w: _raw(w, REGISTER, '{"token": "\\ud800", "hostname": "h"}'),
        422,
        "invalid_fields",
        "token",
    ),
    Hostile(
        "lone-low-surrogate-in-refresh-token",
        lambda w: _raw(
            w, f"/api/v1/agents/{w.a['agent_id']}/token", '{"refresh_token": "x\\udc00"}'
        ),
        422,
        "invalid_fields",
        "refresh_token",
    ),
    Hostile(
        # A literal backslash and "ud800" before a lone low surrogate: no pair for all that.
        "lone-surrogate-after-escaped-backslash",
        lambda w: _raw(w, REGISTER, '{"token": "x", "hostname": "\\\\ud800\\udc00"}'),
        422,
        "invalid_fields",
        "hostname",
    ),
    Hostile(
        "lone-surrogate-in-label-key",
        lambda w: _raw(w, REGISTER, '{"token": "x", "hostname": "h", "labels": {"\\udbff": "v"}}'),
        422,
        "invalid_fields",
        "labels",
    ),
    Hostile(
        "lone-surrogate-in-admin-target",
        lambda w: _raw(w, "/api/v1/targets", '{"hostname": "\\ud800"}', w.admin),
        422,
        "invalid_fields",
        "hostname",
    ),
    Hostile(
        # Raw UTF-8 bytes of a surrogate (ED A0 80), no escape: Python's decoder lets it in.
        "lone-surrogate-as-raw-bytes-in-admin-target",
        lambda w: _raw(w, "/api/v1/targets", b'{"hostname": "\xed\xa0\x80"}', w.admin),
        422,
        "invalid_fields",
        "hostname",
    ),
    Hostile(
        # JSON may come as UTF-16: its escapes are not the bytes the escape screen looks for.
        "nul-escape-in-a-utf16-body",
        lambda w: _raw(
            w, REGISTER, '{"token": "x", "hostname": "\\u0000"}'.encode("utf-16-le")
        ),
        422,
        "invalid_fields",
        "hostname",
    ),
    Hostile(
        "lone-surrogate-in-admin-check",
        lambda w: _raw(
            w, "/api/v1/checks", '{"id": "c", "command": ["/bin/true", "\\ud800"]}', w.admin
        ),
        422,
        "invalid_fields",
        "command.1",
    ),
    Hostile(
        "lone-surrogate-in-admin-token",
        lambda w: _raw(w, "/api/v1/bootstrap-tokens", '{"name": "\\uDFFF"}', w.admin),
        422,
        "invalid_fields",
        "name",
    ),
    Hostile(
        "lone-surrogate-in-result-output",
        lambda w: _raw(
            w,
            f"/api/v1/agents/{w.a['agent_id']}/check-results",
            json.dumps({"results": [_result(), _result(output="\ud800")]}),
            w.agent(),
        ),
        422,
        "invalid_fields",
        "results.1.output",
    ),
    Hostile(
        "nul-in-perfdata-label",
        lambda w: w.results([_result(perfdata=[{"label": "a\x00b", "value": 1}])]),
        422,
        "invalid_fields",
        "results.0.perfdata.0.label",
    ),
    Hostile(
        "nul-in-query-parameter",
        lambda w: w.client.get("/api/v1/targets?hostname=a%00", headers=w.admin),
        422,
        "invalid_fields",
        "hostname",
    ),
    Hostile(
        "nul-in-query-parameter-name",
        lambda w: w.client.get("/api/v1/targets?host%00name=a", headers=w.admin),
        422,
        "invalid_fields",
        "host\\x00name",
    ),
    Hostile(
        "nul-in-path",
        lambda w: w.client.get("/api/v1/targets/a%00b", headers=w.admin),
        404,
        "not_found",
        "NUL",
    ),
    Hostile(
        "audit-since-past-the-last-utc-date",
        lambda w: w.client.get("/api/v1/audit?since=9999-12-31T23:59:59-14:00", headers=w.admin),
        422,
        "invalid_fields",
        "since",
    ),
    Hostile(
        "audit-until-before-the-first-utc-date",
        lambda w: w.client.get(
            "/api/v1/audit", query_string={"until": "0001-01-01T00:00:00+14:00"}, headers=w.admin
        ),
        422,
        "invalid_fields",
        "until",
    ),
    Hostile(
        "events-since-past-the-last-utc-date",
        lambda w: w.client.get("/api/v1/events?since=9999-12-31T23:59:59-14:00", headers=w.admin),
        422,
        "invalid_fields",
        "since",
    ),
    # --- invalid fields: 422 naming the field -----------------------------------------------------
    Hostile(
        "wrong-type-hostname",
        lambda w: w.client.post(REGISTER, json={"token": "x", "hostname": 5}),
        422,
        "invalid_fields",
        "hostname",
    ),
    Hostile(
        "wrong-type-labels",
        lambda w: w.client.post(REGISTER, json={"token": "x", "hostname": "h", "labels": ["a"]}),
        422,
        "invalid_fields",
        "labels",
    ),
    Hostile(
        "wrong-type-label-value",
        lambda w: w.client.post(
            REGISTER, json={"token": "x", "hostname": "h", "labels": {"env": 1}}
        ),
        422,
        "invalid_fields",
        "labels.env",
    ),
    Hostile(
        "wrong-type-uptime",
        lambda w: w.heartbeat(json={"version": "1", "uptime_s": "long"}),
        422,
        "invalid_fields",
        "uptime_s",
    ),
    Hostile(
        "boolean-for-integer",
        lambda w: w.client.post(
            "/api/v1/bootstrap-tokens", json={"name": "t", "max_uses": True}, headers=w.admin
        ),
        422,
        "invalid_fields",
        "max_uses",
    ),
    Hostile(
        "nan-number",
        lambda w: w.heartbeat(
            data='{"version": "1", "uptime_s": NaN}', content_type="application/json"
        ),
        422,
        "invalid_fields",
        "uptime_s",
    ),
    Hostile(
        "not-a-uuid-agent-id",
        lambda w: w.client.post(REGISTER, json={"token": "x", "hostname": "h", "agent_id": "me"}),
        422,
        "invalid_fields",
        "agent_id",
    ),
    Hostile(
        "bad-duration",
        lambda w: w.client.post(
            "/api/v1/checks", json={**CHECK, "interval": "soon"}, headers=w.admin
        ),
        422,
        "invalid_fields",
        "interval",
    ),
    Hostile(
        "relative-command",
        lambda w: w.client.post(
            "/api/v1/checks", json={**CHECK, "command": ["check_disk"]}, headers=w.admin
        ),
        422,
        "invalid_fields",
        "command",
    ),
    Hostile(
        "bad-label-name",
        lambda w: w.client.post(
            "/api/v1/targets", json={"hostname": "h", "labels": {"a b": "c"}}, headers=w.admin
        ),
        422,
        "invalid_fields",
        "labels",
    ),
    Hostile(
        "bad-result-status",
        lambda w: w.results([_result(status="fine")]),
        422,
        "invalid_fields",
        "results.0.status",
    ),
    Hostile(
        "missing-hostname",
        lambda w: w.client.post(REGISTER, json={"token": "x"}),
        422,
        "invalid_fields",
        "hostname",
    ),
    Hostile(
        "missing-heartbeat-version",
        lambda w: w.heartbeat(json={"uptime_s": 1}),
        422,
        "invalid_fields",
        "version",
    ),
    Hostile(
        "missing-check-command",
        lambda w: w.client.post("/api/v1/checks", json={"id": "disk"}, headers=w.admin),
        422,
        "invalid_fields",
        "command",
    ),
    Hostile(
        "missing-results",
        lambda w: w.client.post(
            f"/api/v1/agents/{w.a['agent_id']}/check-results", json={}, headers=w.agent()
        ),
        422,
        "invalid_fields",
        "results",
    ),
    Hostile(
        "unknown-field",
        lambda w: w.client.post(REGISTER, json={"token": "x", "hostname": "h", "is_admin": True}),
        422,
        "invalid_fields",
        "is_admin",
    ),
    Hostile(
        "unknown-nested-field",
        lambda w: w.results([_result(sneaky=1)]),
        422,
        "invalid_fields",
        "results.0.sneaky",
    ),
    Hostile(
        "unknown-query-parameter",
        lambda w: w.client.get("/api/v1/targets?sort=hostname", headers=w.admin),
        422,
        "invalid_fields",
        "sort",
    ),
    Hostile(
        "oversized-hostname",
        lambda w: w.client.post(REGISTER, json={"token": "x", "hostname": "h" * 256}),
        422,
        "invalid_fields",
        "hostname",
    ),
    Hostile(
        "oversized-token",
        lambda w: w.client.post(REGISTER, json={"token": "t" * 513, "hostname": "h"}),
        422,
        "invalid_fields",
        "token",
    ),
    Hostile(
        "oversized-label-value",
        lambda w: w.client.post(
            REGISTER, json={"token": "x", "hostname": "h", "labels": {"env": "v" * 257}}
        ),
        422,
        "invalid_fields",
        "labels",
    ),
    Hostile(
        "oversized-result-output",
        lambda w: w.results([_result(output="x" * 65_537)]),
        422,
        "invalid_fields",
        "results.0.output",
    ),
    Hostile(
        "too-many-results",
        lambda w: w.results([_result() for _ in range(501)]),
        422,
        "invalid_fields",
        "500",
    ),
    Hostile(
        "integer-over-column-size",
        lambda w: w.client.post(
            "/api/v1/bootstrap-tokens", json={"name": "t", "max_uses": 10**20}, headers=w.admin
        ),
        422,
        "invalid_fields",
        "max_uses",
    ),
    Hostile(
        "result-duration-over-column-size",
        lambda w: w.results([_result(duration_ms=10**20)]),
        422,
        "invalid_fields",
        "results.0.duration_ms",
    ),
    Hostile(
        "offset-over-column-size",
        lambda w: w.client.get("/api/v1/targets", query_string={"offset": 10**20}, headers=w.admin),
        422,
        "invalid_fields",
        "offset",
    ),
    Hostile(
        "negative-wait",
        lambda w: w.client.get(
            f"/api/v1/checks/target/{w.a['agent_id']}?wait=-1", headers=w.agent()
        ),
        422,
        "invalid_fields",
        "wait",
    ),
    Hostile(
        "infinite-wait",
        lambda w: w.client.get(
            f"/api/v1/checks/target/{w.a['agent_id']}?wait=inf", headers=w.agent()
        ),
        422,
        "invalid_fields",
        "wait",
    ),
    # --- bootstrap tokens: 401 --------------------------------------------------------------------
    Hostile(
        "unknown-bootstrap-token",
        lambda w: w.register_with("aami_bt_" + "x" * 43),
        401,
        "invalid_bootstrap_token",
        "unknown",
    ),
    Hostile(
        "expired-bootstrap-token",
        lambda w: w.register_with(w.make_bootstrap_token(expires_in=-1)),
        401,
        "invalid_bootstrap_token",
        "expired",
    ),
    Hostile("exhausted-bootstrap-token", _exhausted, 401, "invalid_bootstrap_token", "used 1 of 1"),
    Hostile("revoked-bootstrap-token", _revoked, 401, "invalid_bootstrap_token", "revoked"),
    # --- access tokens: 401 -----------------------------------------------------------------------
    Hostile(
        "missing-authorization",
        lambda w: w.heartbeat(json={"version": "1"}, headers={}),
        401,
        "missing_token",
        "Authorization",
    ),
    Hostile(
        "missing-authorization-admin",
        lambda w: w.client.get("/api/v1/targets"),
        401,
        "missing_token",
        "Authorization",
    ),
    Hostile(
        "basic-auth-scheme",
        lambda w: w.client.get("/api/v1/targets", headers={"Authorization": "Basic b3BzOm9wcw=="}),
        401,
        "missing_token",
        "Bearer",
    ),
    Hostile(
        "jwt-alg-none",
        lambda w: w.heartbeat(json={"version": "1"}, headers=w.unsigned()),
        401,
        "invalid_token",
        "alg",
    ),
    Hostile(
        "jwt-wrong-key",
        lambda w: w.heartbeat(json={"version": "1"}, headers=w.signed(key="k" * 48)),
        401,
        "invalid_token",
        "signature",
    ),
    Hostile(
        "jwt-expired",
        lambda w: w.heartbeat(
            json={"version": "1"},
            headers=w.signed(iat=int(time.time()) - 3600, exp=int(time.time()) - 600),
        ),
        401,
        "token_expired",
        "expired",
    ),
    Hostile(
        "jwt-wrong-audience",
        lambda w: w.heartbeat(json={"version": "1"}, headers=w.signed(aud="someone-else")),
        401,
        "invalid_token",
        "audience",
    ),
    Hostile(
        "jwt-wrong-issuer",
        lambda w: w.heartbeat(json={"version": "1"}, headers=w.signed(iss="someone-else")),
        401,
        "invalid_token",
        "issuer",
    ),
    Hostile(
        "jwt-not-an-access-token",
        lambda w: w.heartbeat(json={"version": "1"}, headers=w.signed(typ=None)),
        401,
        "invalid_token",
        "not an access token",
    ),
    Hostile(
        "jwt-without-expiry",
        lambda w: w.heartbeat(json={"version": "1"}, headers=w.signed(exp=None)),
        401,
        "invalid_token",
        "exp",
    ),
    Hostile(
        "garbage-bearer",
        lambda w: w.heartbeat(json={"version": "1"}, headers=bearer("not.a.jwt")),
        401,
        "invalid_token",
        "invalid access token",
    ),
    Hostile(
        "refresh-token-as-bearer",
        lambda w: w.heartbeat(json={"version": "1"}, headers=bearer(w.a["refresh_token"])),
        401,
        "invalid_token",
        "invalid access token",
    ),
    Hostile(
        "unknown-admin-token",
        lambda w: w.client.get("/api/v1/targets", headers=bearer("aami_adm_" + "x" * 43)),
        401,
        "invalid_token",
        "admin token",
    ),
    Hostile("revoked-admin-token", _revoked_admin, 401, "invalid_token", "revoked"),
    Hostile(
        "reused-refresh-token",
        lambda w: w.spent_refresh_token(),
        401,
        "refresh_token_reused",
        "already used",
    ),
    Hostile(
        "another-agents-refresh-token",
        lambda w: w.client.post(
            f"/api/v1/agents/{w.a['agent_id']}/token", json={"refresh_token": w.b["refresh_token"]}
        ),
        401,
        "invalid_refresh_token",
        "this agent",
    ),
    # --- wrong agent or role: 403 -----------------------------------------------------------------
    Hostile(
        "agent-a-token-on-b-heartbeat",
        lambda w: w.heartbeat("b", json={"version": "1"}, headers=w.agent("a")),
        403,
        "forbidden",
        "own paths",
    ),
    Hostile(
        "agent-a-token-on-b-checks",
        lambda w: w.client.get(f"/api/v1/checks/target/{w.b['agent_id']}", headers=w.agent("a")),
        403,
        "forbidden",
        "own paths",
    ),
    Hostile(
        "agent-a-token-on-b-results",
        lambda w: w.client.post(
            f"/api/v1/agents/{w.b['agent_id']}/check-results",
            json={"results": [_result()]},
            headers=w.agent("a"),
        ),
        403,
        "forbidden",
        "own paths",
    ),
    Hostile(
        "agent-token-on-admin-read",
        lambda w: w.client.get("/api/v1/targets", headers=w.agent()),
        403,
        "forbidden",
        "admin token",
    ),
    Hostile(
        "agent-token-on-admin-write",
        lambda w: w.client.post("/api/v1/checks", json=CHECK, headers=w.agent()),
        403,
        "forbidden",
        "admin token",
    ),
    Hostile(
        "agent-token-on-own-target-admin-path",
        lambda w: w.client.patch(
            f"/api/v1/targets/{w.a['agent_id']}", json={"labels": {}}, headers=w.agent()
        ),
        403,
        "forbidden",
        "admin token",
    ),
    Hostile(
        "admin-token-on-agent-heartbeat",
        lambda w: w.heartbeat(json={"version": "1"}, headers=w.admin),
        403,
        "forbidden",
        "agents",
    ),
    Hostile(
        "admin-token-on-agent-results",
        lambda w: w.results([_result()], headers=w.admin),
        403,
        "forbidden",
        "agents",
    ),
    # --- client certificates and rate limits ------------------------------------------------------
    Hostile(
        "csr-without-a-ca",
        lambda w: w.client.post(
            REGISTER, json={"token": w.make_bootstrap_token(), "hostname": "h", "csr": make_csr()}
        ),
        409,
        "ca_not_configured",
        "aami-server ca init",
    ),
    Hostile(
        "csr-not-pem", lambda w: w.with_ca().register_csr("junk"), 422, "invalid_fields", "csr"
    ),
    Hostile(
        "renew-another-agents-certificate",
        lambda w: w.client.post(
            f"/api/v1/agents/{w.b['agent_id']}/certificate",
            json={"csr": make_csr()},
            headers=w.agent("a"),
        ),
        403,
        "forbidden",
        "own paths",
    ),
    Hostile(
        "agent-a-certificate-with-b-token",
        lambda w: w.heartbeat(
            "b", json={"version": "1"}, environ_base=tls(w.a["agent_id"])["environ_base"]
        ),
        403,
        "certificate_mismatch",
        "not agent",
    ),
    Hostile(
        "agent-a-certificate-refreshing-b",
        lambda w: w.client.post(
            f"/api/v1/agents/{w.b['agent_id']}/token",
            json={"refresh_token": w.b["refresh_token"]},
            **tls(w.a["agent_id"]),
        ),
        403,
        "certificate_mismatch",
        "not agent",
    ),
    Hostile("registration-flood", lambda w: w.flood(REGISTER), 429, "rate_limited", "retry in"),
    Hostile(
        "refresh-flood",
        lambda w: w.flood(f"/api/v1/agents/{w.a['agent_id']}/token"),
        429,
        "rate_limited",
        "retry in",
    ),
    Hostile(
        "audit-bad-filter",
        lambda w: w.client.get("/api/v1/audit?since=yesterday", headers=w.admin),
        422,
        "invalid_fields",
        "since",
    ),
    # --- routing: 404, 405 ------------------------------------------------------------------------
    Hostile(
        "unknown-path",
        lambda w: w.client.get("/api/v1/no-such-thing", headers=w.admin),
        404,
        "not_found",
        "not found",
    ),
    Hostile(
        "unknown-path-outside-api",
        lambda w: w.client.get("/wp-login.php"),
        404,
        "not_found",
        "not found",
    ),
    Hostile(
        "wrong-method",
        lambda w: w.client.put("/api/v1/checks", json=CHECK, headers=w.admin),
        405,
        "method_not_allowed",
        "not allowed",
    ),
]


def _write_routes() -> list[tuple[str, str]]:
    """Every admin-write route, as declared: a read-only token must be refused on each."""
    for module in pkgutil.iter_modules(server.api.__path__):
        importlib.import_module(f"server.api.{module.name}")
    return sorted({(doc.method, doc.path) for doc in REGISTRY if doc.auth == "admin-write"})


def _read_only(method: str, path: str) -> Hostile:
    url = re.sub(r"<(\w+)>", lambda m: str(uuid.uuid4()), path)
    return Hostile(
        f"read-only-{method}-{path}",
        lambda w: w.client.open(url, method=method.upper(), json={}, headers=w.read_only),
        403,
        "read_only_token",
        "read-only",
    )


WRITE_ROUTES = _write_routes()
assert ("post", "/api/v1/checks") in WRITE_ROUTES, "the route declarations were not found"
CASES += [_read_only(method, path) for method, path in WRITE_ROUTES]


@pytest.fixture
def world(app, client, make_admin_token, make_bootstrap_token, register):
    return World(app, client, make_admin_token, make_bootstrap_token, register)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_request_gets_its_documented_error(world, case):
    reply = case.send(world)
    assert reply.status_code < 500, reply.get_data(as_text=True)
    assert_error(reply, case.status, case.code, mentions=case.mentions)
    if case.status == 405:
        assert set(reply.headers["Allow"].split(", ")) >= {"GET", "POST"}
    if case.code == "invalid_fields":
        assert reply.get_json()["error"]["fields"], "a 422 lists the offending fields"


def test_surrogate_pairs_and_escaped_text_are_stored_text(world):
    """Only lone surrogates and NUL are refused: an emoji sent as an escaped pair, or the
    text of an escape, is text like any other (the token check answers, not the field check)."""
    for hostname in ('"\\ud83d\\ude00 host"', '"\\\\u0000 \\\\ud800"'):
        body = '{"token": "aami_bt_unknown", "hostname": ' + hostname + "}"
        reply = _raw(world, REGISTER, body)
        assert_error(reply, 401, "invalid_bootstrap_token")
