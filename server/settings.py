"""Server settings: documented defaults, then ``AAMI_*`` environment, then explicit overrides.

Every secret may also come from a file named by ``AAMI_<NAME>_FILE`` (Docker and systemd
credentials). A bad value stops the server at start-up with a message naming the variable.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from server.errors import SettingsError
from server.security.ratelimit import parse_rate_limit
from server.security.redaction import redact_url

if TYPE_CHECKING:
    from ipaddress import IPv4Network, IPv6Network

ENV_PREFIX = "AAMI_"
SECRET_SETTINGS = ("SECRET_KEY", "DATABASE_URL", "REDIS_URL")
MIN_SECRET_KEY_LENGTH = 32


@dataclass(frozen=True)
class Settings:
    # Where the embedded default keeps its SQLite file and generated secret key.
    DATA_DIR: str = "./var"
    # SQLAlchemy URL; empty means the embedded SQLite file under DATA_DIR.
    DATABASE_URL: str = ""
    # Redis URL; empty means the embedded in-process Redis stand-in (single process only).
    REDIS_URL: str = ""
    # Key that signs access JWTs (HS256). Empty: generated once into DATA_DIR/secret_key.
    SECRET_KEY: str = ""
    JWT_ISSUER: str = "aami-config-server"
    JWT_AUDIENCE: str = "aami-agent"
    ACCESS_TOKEN_TTL: int = 900
    REFRESH_TOKEN_TTL: int = 30 * 24 * 3600
    # Interval agents are told to heartbeat at; the stale sweep counts in these.
    HEARTBEAT_INTERVAL: int = 30
    STALE_AFTER_INTERVALS: int = 3
    OFFLINE_AFTER_INTERVALS: int = 10
    # Upper bound of ``?wait=`` on the assignment long-poll, in seconds.
    LONGPOLL_MAX_WAIT: int = 60
    # Largest request body accepted, in bytes (413 beyond).
    MAX_CONTENT_LENGTH: int = 1024 * 1024
    MAX_RESULTS_PER_BATCH: int = 500
    MAX_OUTPUT_LENGTH: int = 16384
    RESULT_RETENTION_DAYS: int = 30
    # How far ahead of the server's clock a result's executed_at may lie, in seconds. A result
    # dated later (its agent's clock runs ahead) is stored at the time the server received it,
    # with the agent's time kept beside it; one older than RESULT_RETENTION_DAYS is refused.
    RESULT_MAX_FUTURE_SKEW: int = 300
    # Ed25519 key that signs check policies (PEM). Empty: DATA_DIR/policy.key, created
    # on first use by the embedded server; a production deployment should set it.
    POLICY_KEY_FILE: str = ""
    # Built-in certificate authority (aami-server ca init). Empty: DATA_DIR/ca.
    CA_DIR: str = ""
    # Lifetime of agent client certificates issued from CSRs, in days.
    CLIENT_CERT_DAYS: int = 30
    # Every agent call (heartbeat, results, checks, refresh, certificate renewal) must come
    # with a verified client certificate naming the agent of the path. Registration is
    # exempt: it is how an agent without a certificate gets one.
    REQUIRE_CLIENT_CERT: bool = False
    # Header in which a trusted TLS proxy (nginx: $ssl_client_escaped_cert) passes the
    # verified client certificate, URL-escaped PEM. Empty: only gunicorn's own TLS counts.
    CLIENT_CERT_HEADER: str = ""
    # Comma-separated addresses or networks of reverse proxies whose X-Forwarded-For (and
    # client certificate header) are believed. Empty: the peer address is the client.
    TRUSTED_PROXIES: str = ""
    # "COUNT/PERIOD" (e.g. 30/1m) or "off": registrations per client address, and token
    # refreshes per agent id and client address. Counted in Redis, shared by every worker.
    REGISTER_RATE_LIMIT: str = "30/1m"
    REFRESH_RATE_LIMIT: str = "10/1m"
    # "COUNT/PERIOD" or "off": failed admin-token attempts (API or UI login) per client
    # address; past it, that address's admin-token attempts get 429 until the window ends.
    ADMIN_AUTH_FAILURE_LIMIT: str = "10/1m"
    # Admission control (server/api/admission.py), per server process: API calls worked on
    # at once, registrations among them, and how long a call may wait for a place before
    # it is answered 503 server_busy with a Retry-After.
    MAX_ACTIVE_REQUESTS: int = 32
    MAX_ACTIVE_REGISTRATIONS: int = 4
    ADMISSION_WAIT_MS: int = 2000
    # Comma-separated http(s) URLs that receive every event as a CloudEvent.
    EVENT_WEBHOOKS: str = ""
    # Seconds a webhook has to answer one delivery (1-20; an RQ job's timeout is 30 s).
    EVENT_WEBHOOK_TIMEOUT: int = 10
    # Embedded server: deliveries waiting per webhook before new events are dropped.
    EVENT_WEBHOOK_QUEUE_SIZE: int = 10000
    LOG_LEVEL: str = "info"
    LOG_FORMAT: str = "json"

    @property
    def embedded(self) -> bool:
        return not self.REDIS_URL

    def ca_dir(self) -> Path:
        return Path(self.CA_DIR or Path(self.DATA_DIR) / "ca")

    def policy_key_path(self) -> Path:
        return Path(self.POLICY_KEY_FILE or Path(self.DATA_DIR) / "policy.key")

    def trusted_proxies(self) -> list[IPv4Network | IPv6Network]:
        return parse_networks(self.TRUSTED_PROXIES)

    def event_webhook_urls(self) -> list[str]:
        return [url.strip() for url in self.EVENT_WEBHOOKS.split(",") if url.strip()]

    def database_url(self) -> str:
        if self.DATABASE_URL:
            return self.DATABASE_URL
        return f"sqlite:///{Path(self.DATA_DIR).resolve() / 'aami.db'}"


_FIELD_TYPES = {f.name: f.type for f in fields(Settings)}


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def parse_networks(text: str) -> list[IPv4Network | IPv6Network]:
    """``"10.0.0.1, 10.1.0.0/16"`` as networks; ``ValueError`` naming a bad entry."""
    import ipaddress

    networks = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or network") from None
    return networks


def _coerce(name: str, raw: Any) -> Any:
    kind = _FIELD_TYPES[name]
    if kind == "bool":
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.strip().lower() in _TRUE | _FALSE:
            return raw.strip().lower() in _TRUE
        raise SettingsError(f"{ENV_PREFIX}{name}: expected true or false, got {raw!r}")
    if kind == "int":
        if isinstance(raw, bool):
            raise SettingsError(f"{ENV_PREFIX}{name}: expected a whole number, got {raw!r}")
        try:
            value = int(raw)
        except (TypeError, ValueError):
            raise SettingsError(
                f"{ENV_PREFIX}{name}: expected a whole number, got {raw!r}"
            ) from None
        if value <= 0:
            raise SettingsError(f"{ENV_PREFIX}{name}: must be greater than 0, got {value}")
        return value
    if not isinstance(raw, str):
        raise SettingsError(f"{ENV_PREFIX}{name}: expected text, got {raw!r}")
    return raw


def _read_secret_file(name: str, path: str) -> str:
    try:
        value = Path(path).read_text().strip()
    except OSError as exc:
        raise SettingsError(
            f"{ENV_PREFIX}{name}_FILE: cannot read {path}: {exc.strerror}"
        ) from None
    if not value:
        # An empty file is a broken deployment, not "unset": an empty REDIS_URL would
        # quietly run every replica on its own embedded queue.
        raise SettingsError(f"{ENV_PREFIX}{name}_FILE: {path} is empty")
    return value


def _from_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in _FIELD_TYPES:
        file_var = f"{ENV_PREFIX}{name}_FILE"
        if name in SECRET_SETTINGS and environ.get(file_var):
            values[name] = _read_secret_file(name, environ[file_var])
        elif f"{ENV_PREFIX}{name}" in environ:
            values[name] = environ[f"{ENV_PREFIX}{name}"]
    return values


def _validate(settings: Settings) -> None:
    if settings.LOG_LEVEL.lower() not in {"debug", "info", "warning", "error"}:
        raise SettingsError(
            f"{ENV_PREFIX}LOG_LEVEL: {settings.LOG_LEVEL!r} is not one of "
            "debug, info, warning, error"
        )
    if settings.LOG_FORMAT not in {"json", "text"}:
        raise SettingsError(f"{ENV_PREFIX}LOG_FORMAT: {settings.LOG_FORMAT!r} is not json or text")
    if settings.DATABASE_URL and not settings.DATABASE_URL.startswith(("postgresql", "sqlite")):
        raise SettingsError(
            f"{ENV_PREFIX}DATABASE_URL: only postgresql+psycopg:// and sqlite:// URLs are supported"
        )
    if settings.REDIS_URL and not settings.REDIS_URL.startswith(
        ("redis://", "rediss://", "unix://")
    ):
        raise SettingsError(f"{ENV_PREFIX}REDIS_URL: expected a redis:// or rediss:// URL")
    for url in settings.event_webhook_urls():
        if not url.startswith(("http://", "https://")):
            raise SettingsError(
                f"{ENV_PREFIX}EVENT_WEBHOOKS: {redact_url(url)!r} is not an http(s) URL"
            )
    if not 1 <= settings.EVENT_WEBHOOK_TIMEOUT <= 20:
        raise SettingsError(f"{ENV_PREFIX}EVENT_WEBHOOK_TIMEOUT: must be 1 to 20 seconds")
    if settings.RESULT_MAX_FUTURE_SKEW < 0:
        raise SettingsError(f"{ENV_PREFIX}RESULT_MAX_FUTURE_SKEW: must be 0 seconds or more")
    if settings.EVENT_WEBHOOK_QUEUE_SIZE < 1:
        raise SettingsError(f"{ENV_PREFIX}EVENT_WEBHOOK_QUEUE_SIZE: must be at least 1")
    for name in ("REGISTER_RATE_LIMIT", "REFRESH_RATE_LIMIT", "ADMIN_AUTH_FAILURE_LIMIT"):
        try:
            parse_rate_limit(getattr(settings, name))
        except ValueError as exc:
            raise SettingsError(f"{ENV_PREFIX}{name}: {exc}") from None
    try:
        settings.trusted_proxies()
    except ValueError as exc:
        raise SettingsError(f"{ENV_PREFIX}TRUSTED_PROXIES: {exc}") from None
    header = settings.CLIENT_CERT_HEADER
    if header and not all(c.isalnum() or c == "-" for c in header):
        raise SettingsError(f"{ENV_PREFIX}CLIENT_CERT_HEADER: {header!r} is not a header name")
    if header and not settings.TRUSTED_PROXIES:
        # Without a proxy to trust, any client could send the header and claim any agent.
        raise SettingsError(
            f"{ENV_PREFIX}CLIENT_CERT_HEADER needs {ENV_PREFIX}TRUSTED_PROXIES: the header is "
            "believed only from the proxy that verified the certificate"
        )
    if settings.SECRET_KEY and len(settings.SECRET_KEY) < MIN_SECRET_KEY_LENGTH:
        raise SettingsError(
            f"{ENV_PREFIX}SECRET_KEY: must be at least {MIN_SECRET_KEY_LENGTH} characters long"
        )
    if settings.MAX_ACTIVE_REGISTRATIONS > settings.MAX_ACTIVE_REQUESTS:
        raise SettingsError(
            f"{ENV_PREFIX}MAX_ACTIVE_REGISTRATIONS cannot be larger than "
            f"{ENV_PREFIX}MAX_ACTIVE_REQUESTS (registrations are among the requests)"
        )
    if settings.OFFLINE_AFTER_INTERVALS <= settings.STALE_AFTER_INTERVALS:
        raise SettingsError(
            f"{ENV_PREFIX}OFFLINE_AFTER_INTERVALS must be larger than "
            f"{ENV_PREFIX}STALE_AFTER_INTERVALS"
        )


def _generated_secret_key(data_dir: str) -> str:
    """The embedded default's signing key: made once, kept in a 0600 file."""
    path = Path(data_dir) / "secret_key"
    try:
        if path.exists():
            key = path.read_text().strip()
            if len(key) < MIN_SECRET_KEY_LENGTH:
                raise SettingsError(
                    f"{path} holds no usable key (shorter than {MIN_SECRET_KEY_LENGTH} "
                    "characters): delete it to have a new one made (agents then re-register)"
                )
            return key
        path.parent.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(48)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(key + "\n")
    except OSError as exc:
        raise SettingsError(
            f"{ENV_PREFIX}DATA_DIR: cannot keep the signing key in {path}: {exc.strerror}"
        ) from None
    return key


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    signing_key: bool = True,
) -> Settings:
    """Defaults, then the environment, then ``overrides`` (tests); validated.

    ``signing_key=False`` is for commands that never sign or verify a token (database,
    CA and policy-key administration): they neither need AAMI_SECRET_KEY nor make one
    in DATA_DIR, wherever they happen to run.
    """
    values = _from_environment(os.environ if environ is None else environ)
    for key, value in (overrides or {}).items():
        if key not in _FIELD_TYPES:
            raise SettingsError(f"unknown setting {key!r}")
        values[key] = value
    coerced = {name: _coerce(name, raw) for name, raw in values.items()}
    settings = replace(Settings(), **coerced)
    _validate(settings)
    if not settings.SECRET_KEY and signing_key:
        if not settings.embedded:
            raise SettingsError(
                f"{ENV_PREFIX}SECRET_KEY (or {ENV_PREFIX}SECRET_KEY_FILE) is required when "
                f"{ENV_PREFIX}REDIS_URL is set: every server replica must sign with the same key"
            )
        settings = replace(settings, SECRET_KEY=_generated_secret_key(settings.DATA_DIR))
    return settings
