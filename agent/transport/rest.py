"""The REST implementation of :class:`~agent.transport.base.Transport` (docs/agent-api.md).

This is the only module of the agent that knows about HTTP: statuses, headers and
``requests`` stop here and come out as the typed errors of :mod:`agent.errors`.
"""

from __future__ import annotations

import dataclasses
import email.utils
import logging
import re
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

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
    HeartbeatReply,
    IssuedCertificate,
    NotModified,
    PolicySignature,
    PushReply,
    Registration,
    Rejection,
    TokenGrant,
)
from agent.transport.http_client import HTTPAdapter, requests

if TYPE_CHECKING:
    from agent.config import Config

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
# A long-poll's read timeout is the wait plus this margin, so a server that answers right
# at the end of the wait (plus its own jitter) is not cut off.
LONG_POLL_MARGIN = 15.0
# Retry-After values beyond this are treated as a misconfiguration, not an instruction.
MAX_RETRY_AFTER = 3600.0
# The heartbeat, assignment and result loops each hold at most one connection.
_POOL_SIZE = 4

_POOL_PREFIX = re.compile(r"^\w*Connection(?:Pool)?\(host=[^)]*\): ")

_ErrorMap = Mapping[int, type[TransportError]]
_DEFAULT_ERRORS: _ErrorMap = {401: AuthError, 403: Forbidden, 404: NotRegistered}
_REGISTER_ERRORS: _ErrorMap = {
    400: RegistrationRejected, 401: RegistrationRejected, 403: RegistrationRejected,
    # 404 here means the address does not point at an AAMI server: retryable.
    404: TransportError, 409: RegistrationRejected, 422: RegistrationRejected,
}
_REFRESH_ERRORS: _ErrorMap = {
    400: InvalidRefreshToken, 401: InvalidRefreshToken, 403: InvalidRefreshToken,
    404: NotRegistered, 422: InvalidRefreshToken,
}
# A server without the certificate endpoint answers 404: that must not read as "unknown
# agent", which would make the agent register again and again. The heartbeat finds out
# soon enough when the target is really gone.
_CERTIFICATE_ERRORS: _ErrorMap = {401: AuthError, 403: Forbidden, 404: RequestRejected}


class RestTransport:
    """JSON over HTTP(S) with one ``requests.Session`` shared by all loops."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 10.0,
        connect_timeout: float | None = None,
        ca_cert: str | None = None,
        client_cert: str | None = None,
        client_key: str | None = None,
        user_agent: str = "aami-agent",
    ) -> None:
        self.base_url = base_url.rstrip("/") + API_PREFIX
        self.timeout = timeout
        self.connect_timeout = min(timeout, 10.0) if connect_timeout is None else connect_timeout
        session = requests.Session()
        self._mount_new_adapter(session)
        # Passed with every request rather than set on the session: requests lets
        # REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE from the environment override session.verify,
        # which would silently swap the configured CA for the system bundle.
        self._verify: str | bool = ca_cert if ca_cert else True
        self._cert: str | tuple[str, str] | None = None
        if client_cert:
            self._cert = (client_cert, client_key) if client_key else client_cert
        session.headers.update({"User-Agent": user_agent, "Accept": "application/json"})
        self._session = session

    @staticmethod
    def _mount_new_adapter(session: requests.Session) -> HTTPAdapter | None:
        """A fresh connection pool for ``session``; returns the one it replaces."""
        old = session.adapters.get("https://")
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=_POOL_SIZE, max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return old if isinstance(old, HTTPAdapter) else None

    @classmethod
    def from_config(cls, config: Config, version: str) -> RestTransport:
        # Not agent.enrollment's heavy half: tls_files only looks at paths.
        from agent.enrollment import tls_files

        client_cert, client_key, ca_cert = tls_files(config)
        return cls(
            config.server.address,
            timeout=config.heartbeat.timeout,
            ca_cert=ca_cert,
            client_cert=client_cert,
            client_key=client_key,
            user_agent=f"aami-agent/{version}",
        )

    def use_tls_files(
        self, client_cert: str | None, client_key: str | None, ca_bundle: str | None
    ) -> None:
        cert: str | tuple[str, str] | None = None
        if client_cert:
            cert = (client_cert, client_key) if client_key else client_cert
        self._cert = cert
        self._verify = ca_bundle if ca_bundle else True
        # Pooled keep-alive connections went through the handshake with the old files; new
        # connections (from a new pool) read the files again. A request in flight on the
        # old pool finishes there; its connection is closed when it is handed back.
        old = self._mount_new_adapter(self._session)
        if old is not None:
            old.close()

    # -- Transport --------------------------------------------------------------------

    def register(self, registration: Registration) -> TokenGrant:
        body = {
            "token": registration.token,
            "agent_id": registration.agent_id,
            "hostname": registration.hostname,
            "ip_address": registration.ip_address,
            "group_id": registration.group_id,
            "labels": dict(registration.labels),
            "metadata": dict(registration.metadata),
            "agent_version": registration.agent_version,
        }
        if registration.refresh_token:
            body["refresh_token"] = registration.refresh_token
        if registration.csr:
            body["csr"] = registration.csr
        if registration.registration_key:
            body["registration_key"] = registration.registration_key
        reply = self._json(self._call("POST", "/bootstrap-tokens/register", json=body,
                                      errors=_REGISTER_ERRORS))
        grant = dataclasses.replace(
            _token_grant(reply, "register"),
            policy_keys=_policy_keys(reply.get("policy_keys")),
            # requests verifies every https connection (verify is a CA bundle or True) and
            # never follows redirects here, so https means the server proved who it is.
            verified_tls=self.base_url.startswith("https://") and self._verify is not False,
        )
        if reply.get("certificate") is not None:
            grant = dataclasses.replace(grant, certificate=_issued(reply, "register"))
        return grant

    def renew_certificate(
        self, agent_id: str, access_token: str, csr: str
    ) -> IssuedCertificate:
        response = self._call("POST", f"/agents/{quote(agent_id, safe='')}/certificate",
                              token=access_token, json={"csr": csr}, ok=(200, 201),
                              errors=_CERTIFICATE_ERRORS)
        return _issued(self._json(response), "certificate")

    def refresh(self, agent_id: str, refresh_token: str) -> TokenGrant:
        response = self._call("POST", f"/agents/{quote(agent_id, safe='')}/token",
                              json={"refresh_token": refresh_token}, errors=_REFRESH_ERRORS)
        return _token_grant(self._json(response), "refresh")

    def heartbeat(
        self, agent_id: str, access_token: str, beat: Mapping[str, Any]
    ) -> HeartbeatReply:
        response = self._call("POST", f"/agents/{quote(agent_id, safe='')}/heartbeat",
                              token=access_token, json=dict(beat))
        reply = self._json(response)
        return HeartbeatReply(
            config_version=_opt_str(reply.get("config_version")),
            heartbeat_interval=_opt_positive(reply.get("heartbeat_interval")),
            server_time=_opt_str(reply.get("server_time")),
            commands=_commands(reply.get("commands")),
        )

    def fetch_checks(
        self, agent_id: str, access_token: str, etag: str | None, wait: float
    ) -> Assignment | NotModified:
        headers = {"If-None-Match": etag} if etag else {}
        params = {"wait": str(int(wait))} if wait >= 1 else None
        read_timeout = self.timeout + (wait + LONG_POLL_MARGIN if params else 0)
        response = self._call("GET", f"/checks/target/{quote(agent_id, safe='')}",
                              token=access_token, headers=headers, params=params,
                              timeout=(self.connect_timeout, read_timeout), ok=(200, 304))
        if response.status_code == 304:
            return NOT_MODIFIED
        reply = self._json(response)
        checks = reply.get("checks")
        if not isinstance(checks, list):
            raise TransportError("GET checks: the reply has no list of checks")
        # Kept as sent (no str() of a number): the policy signature covers these values.
        config_version, target_id = reply.get("config_version"), reply.get("target_id")
        config_version = config_version if isinstance(config_version, str) else None
        serial, issued_at = reply.get("serial"), reply.get("issued_at")
        etag = response.headers.get("ETag") or (f'"{config_version}"' if config_version else None)
        return Assignment(
            etag=etag,
            config_version=config_version,
            checks=checks,
            commands=_commands(reply.get("commands")),
            target_id=target_id if isinstance(target_id, str) else None,
            serial=serial if isinstance(serial, int) and not isinstance(serial, bool) else None,
            issued_at=issued_at if isinstance(issued_at, str) else None,
            signature=_signature(reply.get("signature")),
        )

    def push_results(
        self,
        agent_id: str,
        access_token: str,
        results: Sequence[Mapping[str, Any]],
        timeout: float | None = None,
    ) -> PushReply:
        limits = None if timeout is None else (min(self.connect_timeout, timeout), timeout)
        response = self._call("POST", f"/agents/{quote(agent_id, safe='')}/check-results",
                              token=access_token, json={"results": list(results)},
                              timeout=limits, ok=(200, 201, 202))
        reply = self._json(response)
        rejected = tuple(
            Rejection(result_id=_opt_str(item.get("result_id")),
                      reason=str(item.get("reason") or "rejected"))
            for item in reply.get("rejected") or () if isinstance(item, dict)
        )
        accepted = reply.get("accepted")
        return PushReply(
            accepted=accepted if isinstance(accepted, int) else len(results) - len(rejected),
            rejected=rejected,
            job_id=_opt_str(reply.get("job_id")),
        )

    def close(self) -> None:
        self._session.close()

    # -- HTTP -------------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: tuple[float, float] | None = None,
        ok: tuple[int, ...] = (200, 201),
        errors: _ErrorMap = _DEFAULT_ERRORS,
    ) -> requests.Response:
        all_headers = dict(headers or {})
        if token:
            all_headers["Authorization"] = f"Bearer {token}"
        call = f"{method} {self.base_url}{path}"
        try:
            response = self._session.request(
                method, self.base_url + path, json=json, params=params, headers=all_headers,
                timeout=timeout or (self.connect_timeout, self.timeout),
                verify=self._verify, cert=self._cert, allow_redirects=False,
            )
        except requests.exceptions.SSLError as exc:
            raise TransportError(
                f"{call}: TLS error (check server.tls settings): {_reason(exc)}") from exc
        except requests.exceptions.Timeout as exc:
            raise TransportError(f"{call}: timed out ({_reason(exc)})") from exc
        except requests.exceptions.RequestException as exc:
            raise TransportError(f"{call}: {_reason(exc)}") from exc
        if response.status_code in ok:
            return response
        raise _error_for(response, call, errors)

    @staticmethod
    def _json(response: requests.Response) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError:
            raise TransportError(
                f"{response.request.method} {response.url}: the reply is not JSON"
            ) from None
        if not isinstance(body, dict):
            raise TransportError(f"{response.request.method} {response.url}: "
                                 "the reply is not a JSON object")
        return body


def _reason(exc: requests.exceptions.RequestException) -> str:
    """The useful part of a requests error, without urllib3's pool and retry wrapping."""
    cause = exc.args[0] if exc.args else exc
    text = str(getattr(cause, "reason", None) or cause)
    # "HTTPConnectionPool(host='x', port=1): Max retries exceeded ..." -> the part after it
    return _POOL_PREFIX.sub("", text)


def _error_for(response: requests.Response, call: str, errors: _ErrorMap) -> TransportError:
    status = response.status_code
    code, message = _error_body(response)
    text = f"{call}: HTTP {status}" + (f" {code}" if code else "") + (
        f": {message}" if message else "")
    if status in (429, 503):
        return RetryLater(text, retry_after=parse_retry_after(response.headers.get("Retry-After")),
                          code=code)
    if status >= 500 or status < 400:
        # A 5xx is a server bug or an outage, and a 3xx means a proxy in the way: retry.
        return TransportError(text, code=code)
    return errors.get(status, RequestRejected)(text, code=code)


def _error_body(response: requests.Response) -> tuple[str | None, str | None]:
    """``(code, message)`` from ``{"error": {...}}``, or the start of a non-JSON body."""
    try:
        body = response.json()
    except ValueError:
        snippet = response.text.strip().splitlines()[0][:200] if response.text.strip() else None
        return None, snippet
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return None, None
    message = _opt_str(error.get("message"))
    fields = error.get("fields")
    if isinstance(fields, dict) and fields:
        details = ", ".join(f"{name}: {problem}" for name, problem in fields.items())
        message = f"{message or 'invalid fields'} ({details})"
    return _opt_str(error.get("code")), message


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None if absent."""
    if not value:
        return None
    value = value.strip()
    seconds: float | None
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _token_grant(reply: Mapping[str, Any], call: str) -> TokenGrant:
    access, refresh = reply.get("access_token"), reply.get("refresh_token")
    if not isinstance(access, str) or not access or not isinstance(refresh, str) or not refresh:
        raise TransportError(f"{call}: the reply carries no access_token/refresh_token")
    return TokenGrant(
        access_token=access,
        refresh_token=refresh,
        expires_in=_opt_positive(reply.get("expires_in")),
        agent_id=_opt_str(reply.get("agent_id")),
        heartbeat_interval=_opt_positive(reply.get("heartbeat_interval")),
    )


def _issued(reply: Mapping[str, Any], call: str) -> IssuedCertificate:
    certificate = reply.get("certificate")
    if not isinstance(certificate, str) or "BEGIN CERTIFICATE" not in certificate:
        raise TransportError(f"{call}: the reply carries no PEM certificate")
    ca_certificate = reply.get("ca_certificate")
    return IssuedCertificate(
        certificate=certificate,
        ca_certificate=ca_certificate if isinstance(ca_certificate, str) else None,
        expires_at=_opt_str(reply.get("certificate_expires_at")),
    )


def _signature(raw: object) -> PolicySignature | None:
    """The reply's signature; a malformed one comes out empty, so it fails verification
    (rather than passing for an unsigned reply, which an agent without keys accepts)."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        return PolicySignature(algorithm="", key_id="", value="")
    return PolicySignature(
        algorithm=str(raw.get("algorithm") or ""),
        key_id=str(raw.get("key_id") or ""),
        value=str(raw.get("value") or ""),
    )


def _policy_keys(raw: object) -> tuple[str, ...]:
    """The strings of the reply's ``policy_keys`` (agent/policy_trust.py checks each one)."""
    return tuple(item for item in raw if isinstance(item, str)) if isinstance(raw, list) else ()


def _commands(raw: object) -> tuple[Command, ...]:
    commands = []
    for item in raw if isinstance(raw, list) else ():
        if not isinstance(item, dict) or not item.get("type"):
            log.warning("ignoring malformed command from the server: %r", item)
            continue
        commands.append(Command(id=str(item.get("id") or ""), type=str(item["type"]),
                                check_id=_opt_str(item.get("check_id"))))
    return tuple(commands)


def _opt_str(value: object) -> str | None:
    return str(value) if isinstance(value, str | int) and not isinstance(value, bool) else None


def _opt_positive(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    return None
