"""Load and strictly validate the agent's YAML configuration.

Every key is documented in ``docs/agent-config.md``. Unknown keys, wrong types and bad
values raise :class:`~agent.errors.ConfigError` naming the file and the dotted key, so a
typo stops the agent at start-up instead of surfacing at 3 a.m. in a thread.
Relative paths are resolved against the directory of the configuration file.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, NoReturn
from urllib.parse import urlsplit

from agent import containment as exec_containment
from agent import defaults
from agent.durations import parse_duration
from agent.errors import ConfigError
from agent.limits import DEFAULT_LIMITS
from agent.model import ResourceLimits

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("json", "text")
_SECTIONS = ("server", "agent", "heartbeat", "checks", "results", "spool", "logging")
_LIMIT_KEYS = tuple(f.name for f in fields(ResourceLimits))
_SIZE_RE = re.compile(r"^\s*(\d+)\s*(b|kb|kib|mb|mib|gb|gib)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kb": 1024, "kib": 1024, "mb": 1024**2, "mib": 1024**2,
               "gb": 1024**3, "gib": 1024**3}


@dataclass(frozen=True)
class TLSConfig:
    enabled: bool = False
    ca_cert: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    enroll: bool = False
    """Get (and renew) the client certificate from the server's CA (agent/enrollment.py).
    The certificate and key paths then default into ``agent.state_dir``."""


@dataclass(frozen=True)
class ServerConfig:
    address: str
    """Base URL with scheme and no trailing slash, e.g. ``https://aami.example.com:8443``."""
    tls: TLSConfig
    bootstrap_token: str | None = None
    bootstrap_token_file: Path | None = None
    policy_keys: tuple[str, ...] = ()
    """Base64 raw Ed25519 public keys trusted to sign check policies (agent/policy.py)."""
    insecure_accept_unsigned_policies: bool = False
    """Run check policies without verifying them (unsafe; only for demos and labs)."""


@dataclass(frozen=True)
class AgentSettings:
    id_file: Path
    hostname: str
    """Never empty: auto-detected when the file leaves it blank."""
    group: str | None
    labels: Mapping[str, str]
    state_dir: Path
    shutdown_grace: float


@dataclass(frozen=True)
class HeartbeatConfig:
    interval: float
    timeout: float
    """Also the read timeout of every ordinary (not long-poll) request to the server."""


@dataclass(frozen=True)
class ChecksConfig:
    default_timeout: float
    max_concurrent: int
    result_buffer_size: int
    allowed_paths: tuple[str, ...]
    default_limits: ResourceLimits
    output_limit: int
    allow_shell: bool = False
    """Whether a check may ask for ``/bin/sh -c`` (``"shell": true``)."""
    run_as: str | None = None
    """User (name or uid) checks run as when the agent is root; None: the default."""
    no_new_privs: bool = True
    """Set no_new_privs in checks, so set-user-ID programs gain nothing."""
    exec_containment: str = exec_containment.DEFAULT_MODE
    """What restricts the programs checks run in turn (agent/containment.py)."""
    allowed_executables: tuple[str, ...] = ()
    """Files or directories checks may execute besides allowed_paths (interpreters), but
    not name as their command."""


@dataclass(frozen=True)
class ResultsConfig:
    batch_size: int
    flush_interval: float


@dataclass(frozen=True)
class SpoolConfig:
    max_bytes: int


@dataclass(frozen=True)
class LoggingConfig:
    level: str
    format: str


@dataclass(frozen=True)
class Config:
    path: Path
    server: ServerConfig
    agent: AgentSettings
    heartbeat: HeartbeatConfig
    checks: ChecksConfig
    results: ResultsConfig
    spool: SpoolConfig
    logging: LoggingConfig

    def read_bootstrap_token(self) -> str:
        """The bootstrap token, read from the file only now (it may be removed after use).

        Raises ConfigError when neither ``server.bootstrap_token`` nor a readable, non-empty
        ``server.bootstrap_token_file`` is there: the agent cannot register without one.
        """
        if self.server.bootstrap_token:
            return self.server.bootstrap_token
        token_file = self.server.bootstrap_token_file
        if token_file is None:
            raise ConfigError(
                f"{self.path}: server.bootstrap_token: the agent is not registered yet and "
                "needs a bootstrap token (set server.bootstrap_token or "
                "server.bootstrap_token_file; create one with `aami-server token create`)"
            )
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                f"{self.path}: server.bootstrap_token_file: cannot read {token_file} "
                f"({exc.strerror or exc}); the agent is not registered yet and needs it"
            ) from exc
        if not token:
            raise ConfigError(
                f"{self.path}: server.bootstrap_token_file: {token_file} is empty; "
                "the agent is not registered yet and needs a bootstrap token"
            )
        return token


def load_config(path: str | os.PathLike[str], *, check_files: bool = True) -> Config:
    """Read, parse and validate the configuration file at ``path``.

    With ``check_files`` the TLS files it names must be readable now; commands that never
    talk to the server (``status``, ``id``) pass False so they work without them.
    """
    source = str(path)
    data = _parse_yaml(source, _read_text(source))
    return _build(Path(path), data, check_files=check_files)


def _read_text(source: str) -> str:
    try:
        with open(source, encoding="utf-8") as fh:
            return fh.read()
    except FileNotFoundError:
        raise ConfigError(f"{source}: configuration file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{source}: is a directory, not a configuration file") from None
    except PermissionError:
        raise ConfigError(f"{source}: cannot read the configuration file (permission denied)") \
            from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not UTF-8 text ({exc.reason} at byte {exc.start})") \
            from None
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read the configuration file ({exc})") from None


@functools.cache
def _strict_loader() -> type:
    """A yaml SafeLoader that refuses duplicate keys (PyYAML silently keeps the last one)."""
    import yaml  # imported here: commands that never read the config skip its cost

    class StrictLoader(yaml.SafeLoader):
        pass

    def construct_mapping(loader: StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
        loader.flatten_mapping(node)
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node)
            if isinstance(key, str) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return loader.construct_mapping(node)

    StrictLoader.add_constructor(
        yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping
    )
    return StrictLoader


def _parse_yaml(source: str, text: str) -> dict[Any, Any]:
    import yaml

    try:
        data = yaml.load(text, Loader=_strict_loader())  # a SafeLoader: no arbitrary tags
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = exc.problem or exc.context or "malformed YAML"
        raise ConfigError(f"{where}: malformed YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: malformed YAML: {exc}") from None
    if data is None:
        raise ConfigError(f"{source}: the file is empty; expected a mapping of settings")
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: the top level must be a mapping of settings, "
            f"not {_type_name(data)}"
        )
    return data


def _build(path: Path, data: dict[Any, Any], *, check_files: bool) -> Config:
    root = _Section(str(path), path.absolute().parent, "", data)
    # A misspelt section name explains every error that would follow from it: say it first.
    root.reject_unknown(_SECTIONS)
    server = _build_server(root.section("server"), check_files=check_files)
    agent = _build_agent(root.section("agent"))
    if server.tls.enroll:
        # Enrolled files live with the rest of the agent's state unless placed elsewhere.
        server = dataclasses.replace(server, tls=dataclasses.replace(
            server.tls,
            client_cert=server.tls.client_cert or agent.state_dir / defaults.CLIENT_CERT_FILE,
            client_key=server.tls.client_key or agent.state_dir / defaults.CLIENT_KEY_FILE,
        ))
    heartbeat = _build_heartbeat(root.section("heartbeat"))
    checks = _build_checks(root.section("checks"))
    results = _build_results(root.section("results"))
    spool_section = root.section("spool")
    # result_buffer_size is the number of results the agent must be able to hold while the
    # server is away; the spool is sized so that many fit even at the full output size.
    default_spool = checks.result_buffer_size * (checks.output_limit + 1024)
    spool = SpoolConfig(max_bytes=spool_section.size("max_bytes", default_spool, minimum=65536))
    spool_section.finish()
    log_section = root.section("logging")
    level = log_section.choice("level", "info", LOG_LEVELS, aliases={"warn": "warning"})
    fmt = log_section.choice("format", "json", LOG_FORMATS)
    log_section.finish()
    root.finish()
    return Config(
        path=path,
        server=server,
        agent=agent,
        heartbeat=heartbeat,
        checks=checks,
        results=results,
        spool=spool,
        logging=LoggingConfig(level=level, format=fmt),
    )


def _build_server(section: _Section, *, check_files: bool) -> ServerConfig:
    tls_section = section.section("tls")
    enabled = tls_section.optional_boolean("enabled")
    ca_cert = tls_section.optional_path("ca_cert")
    client_cert = tls_section.optional_path("client_cert")
    client_key = tls_section.optional_path("client_key")
    enroll = bool(tls_section.optional_boolean("enroll"))
    tls_section.finish()

    address, scheme_was_given = _normalise_address(section, enabled)
    tls = TLSConfig(
        enabled=address.startswith("https://"),
        ca_cert=ca_cert,
        client_cert=client_cert,
        client_key=client_key,
        enroll=enroll,
    )
    if client_key is not None and client_cert is None and not enroll:
        section.fail("tls.client_key", "is set but tls.client_cert is not")
    if not tls.enabled and (ca_cert or client_cert):
        section.fail(
            "tls.enabled",
            "certificates are configured but TLS is off "
            + ("(server.address uses http://)" if scheme_was_given else "(set enabled: true)"),
        )
    if enroll and not tls.enabled:
        section.fail(
            "tls.enroll",
            "a client certificate needs TLS "
            + ("(server.address uses http://)" if scheme_was_given else "(set enabled: true)"),
        )
    if check_files:
        files = [("tls.ca_cert", ca_cert)]
        if not enroll:  # an enrolling agent creates them
            files += [("tls.client_cert", client_cert), ("tls.client_key", client_key)]
        for key, file in files:
            if file is not None:
                section.require_readable(key, file)

    token = section.optional_string("bootstrap_token")
    token_file = section.optional_path("bootstrap_token_file")
    if token and token_file:
        section.fail("bootstrap_token", "set either bootstrap_token or bootstrap_token_file")
    policy_keys = section.policy_keys("policy_keys")
    insecure = bool(section.optional_boolean("insecure_accept_unsigned_policies"))
    if insecure and policy_keys:
        section.fail("insecure_accept_unsigned_policies",
                     "cannot be true while server.policy_keys is set (with keys, every "
                     "policy is verified; remove one of the two)")
    section.finish()
    return ServerConfig(address=address, tls=tls, bootstrap_token=token,
                        bootstrap_token_file=token_file, policy_keys=policy_keys,
                        insecure_accept_unsigned_policies=insecure)


def _normalise_address(section: _Section, tls_enabled: bool | None) -> tuple[str, bool]:
    """``host:port`` or a URL -> base URL; returns it and whether a scheme was written."""
    raw = section.string("address", "")
    if not raw.strip():
        section.fail("address", "is required (for example config-server.example.com:8443)")
    raw = raw.strip()
    scheme_given = "://" in raw
    if not scheme_given:
        raw = ("https://" if tls_enabled else "http://") + raw
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        section.fail("address", f"{raw!r} is not a valid address ({exc})")
    if parts.scheme not in ("http", "https"):
        section.fail("address", f"scheme {parts.scheme!r} is not supported (use http or https)")
    if not parts.hostname:
        section.fail("address", f"{raw!r} has no host name")
    if parts.query or parts.fragment:
        section.fail("address", f"{raw!r} must not carry a query or fragment")
    if tls_enabled is True and parts.scheme == "http":
        section.fail("address", "uses http:// but server.tls.enabled is true")
    if tls_enabled is False and parts.scheme == "https":
        section.fail("address", "uses https:// but server.tls.enabled is false")
    path = parts.path.rstrip("/")
    # Operators often paste the API root; the transport adds /api/v1 itself.
    path = path.removesuffix("/api/v1")
    return f"{parts.scheme}://{parts.netloc}{path}", scheme_given


def _build_agent(section: _Section) -> AgentSettings:
    id_file = section.path("id_file", defaults.ID_FILE)
    hostname = section.string("hostname", "").strip() or socket.gethostname()
    group = section.optional_string("group")
    labels = section.string_map("labels")
    state_dir = section.path("state_dir", defaults.STATE_DIR)
    grace = section.duration("shutdown_grace", defaults.SHUTDOWN_GRACE, allow_zero=True)
    section.finish()
    return AgentSettings(id_file=id_file, hostname=hostname, group=group,
                         labels=MappingProxyType(labels), state_dir=state_dir,
                         shutdown_grace=grace)


def _build_heartbeat(section: _Section) -> HeartbeatConfig:
    interval = section.duration("interval", defaults.HEARTBEAT_INTERVAL,
                                minimum=defaults.MIN_HEARTBEAT_INTERVAL)
    timeout = section.duration("timeout", defaults.HEARTBEAT_TIMEOUT)
    section.finish()
    return HeartbeatConfig(interval=interval, timeout=timeout)


def _build_checks(section: _Section) -> ChecksConfig:
    default_timeout = section.duration("default_timeout", defaults.CHECK_TIMEOUT)
    max_concurrent = section.integer("max_concurrent", defaults.MAX_CONCURRENT,
                                     minimum=1, maximum=1000)
    buffer_size = section.integer("result_buffer_size", defaults.RESULT_BUFFER_SIZE, minimum=1)
    allowed = section.path_list("allowed_paths", defaults.ALLOWED_PATHS)
    limits_section = section.section("default_limits")
    # Keys left out keep the executor's documented defaults (agent/limits.py).
    limits = ResourceLimits(
        **{key: limits_section.optional_integer(key, minimum=1) for key in _LIMIT_KEYS}
    ).merged_over(DEFAULT_LIMITS)
    limits_section.finish()
    output_limit = section.size("output_limit", defaults.OUTPUT_LIMIT_BYTES, minimum=256)
    allow_shell = bool(section.optional_boolean("allow_shell"))
    run_as = section.run_as("run_as")
    no_new_privs = section.optional_boolean("no_new_privs")
    containment = section.choice("exec_containment", exec_containment.DEFAULT_MODE,
                                 exec_containment.MODES)
    executables = section.path_list("allowed_executables", ())
    section.finish()
    return ChecksConfig(default_timeout=default_timeout, max_concurrent=max_concurrent,
                        result_buffer_size=buffer_size, allowed_paths=allowed,
                        default_limits=limits, output_limit=output_limit,
                        allow_shell=allow_shell, run_as=run_as,
                        no_new_privs=True if no_new_privs is None else no_new_privs,
                        exec_containment=containment, allowed_executables=executables)


def _build_results(section: _Section) -> ResultsConfig:
    batch_size = section.integer("batch_size", defaults.RESULT_BATCH_SIZE, minimum=1,
                                 maximum=defaults.MAX_RESULT_BATCH_SIZE)
    flush_interval = section.duration("flush_interval", defaults.FLUSH_INTERVAL)
    section.finish()
    return ResultsConfig(batch_size=batch_size, flush_interval=flush_interval)


class _Section:
    """One mapping of the document, read key by key; keys never read are unknown keys."""

    def __init__(self, source: str, base_dir: Path, prefix: str, value: object) -> None:
        self._source = source
        self._base_dir = base_dir
        self._prefix = prefix
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ConfigError(
                f"{source}: {prefix}: expected a mapping of settings, got {_type_name(value)}"
            )
        self._data: dict[Any, Any] = value
        self._known: list[str] = []

    def _dotted(self, key: str) -> str:
        return f"{self._prefix}.{key}" if self._prefix else key

    def fail(self, key: str, problem: str) -> NoReturn:
        raise ConfigError(f"{self._source}: {self._dotted(key)}: {problem}")

    def _get(self, key: str) -> Any:
        self._known.append(key)
        return self._data.get(key)

    def finish(self) -> None:
        """Raise on the first key nobody asked for: a typo or a setting that does not exist."""
        self.reject_unknown(self._known)

    def reject_unknown(self, known: Sequence[str]) -> None:
        import difflib

        for key in self._data:
            if key not in known:
                hint = difflib.get_close_matches(str(key), known, n=1)
                suggestion = f"; did you mean {hint[0]!r}?" if hint else (
                    f" (known keys: {', '.join(known)})")
                self.fail(str(key), f"unknown key{suggestion}")

    def section(self, key: str) -> _Section:
        return _Section(self._source, self._base_dir, self._dotted(key), self._get(key))

    def string(self, key: str, default: str) -> str:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            self.fail(key, f"expected a string, got {_type_name(value)} {value!r}")
        return str(value)

    def optional_string(self, key: str) -> str | None:
        """A string where blank means "not set"."""
        return self.string(key, "").strip() or None

    def optional_boolean(self, key: str) -> bool | None:
        value = self._get(key)
        if value is None or isinstance(value, bool):
            return value
        return self.fail(key, f"expected true or false, got {value!r}")

    def integer(self, key: str, default: int, *, minimum: int | None = None,
                maximum: int | None = None) -> int:
        value = self.optional_integer(key, minimum=minimum, maximum=maximum)
        return default if value is None else value

    def optional_integer(self, key: str, *, minimum: int | None = None,
                         maximum: int | None = None) -> int | None:
        value = self._get(key)
        if value is None:
            return None
        # bool is an int subclass in Python; `max_concurrent: yes` is still a mistake.
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(key, f"expected an integer, got {_type_name(value)} {value!r}")
        return self._bounded(key, value, minimum, maximum)

    def _bounded(self, key: str, value: int, minimum: int | None, maximum: int | None) -> int:
        if minimum is not None and value < minimum:
            self.fail(key, f"{value} is too small (minimum {minimum})")
        if maximum is not None and value > maximum:
            self.fail(key, f"{value} is too large (maximum {maximum})")
        return value

    def size(self, key: str, default: int, *, minimum: int) -> int:
        """Bytes, as an integer or a string such as ``16KB`` or ``64MB`` (powers of 1024)."""
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, int) and not isinstance(value, bool):
            return self._bounded(key, value, minimum, None)
        match = _SIZE_RE.match(value) if isinstance(value, str) else None
        if match is None:
            return self.fail(key, f"{value!r} is not a size (use bytes, or 512KB, 64MB, 1GB)")
        size = int(match.group(1)) * _SIZE_UNITS[(match.group(2) or "b").lower()]
        return self._bounded(key, size, minimum, None)

    def duration(self, key: str, default: float, *, minimum: float | None = None,
                 allow_zero: bool = False) -> float:
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool):
            return self.fail(key, f"{value!r} is not a duration (use 500ms, 30s, 5m, 1h)")
        try:
            seconds = parse_duration(value)
        except (ValueError, TypeError):
            return self.fail(key, f"{value!r} is not a duration (use 500ms, 30s, 5m, 1h)")
        if seconds < 0 or (seconds == 0 and not allow_zero):
            self.fail(key, f"{value!r} must be greater than zero")
        if minimum is not None and seconds < minimum:
            self.fail(key, f"{value!r} is too short (minimum {minimum:g}s)")
        return seconds

    def choice(self, key: str, default: str, choices: tuple[str, ...],
               aliases: Mapping[str, str] | None = None) -> str:
        value = self.string(key, default).strip().lower()
        value = (aliases or {}).get(value, value)
        if value not in choices:
            self.fail(key, f"{value!r} is not one of {', '.join(choices)}")
        return value

    def _as_path(self, key: str, value: object) -> Path:
        if not isinstance(value, str) or not value.strip():
            self.fail(key, f"expected a file or directory path, got {value!r}")
        path = Path(str(value).strip())
        return path if path.is_absolute() else self._base_dir / path

    def path(self, key: str, default: str) -> Path:
        value = self._get(key)
        return self._as_path(key, default if value is None or value == "" else value)

    def optional_path(self, key: str) -> Path | None:
        value = self._get(key)
        return None if value is None or value == "" else self._as_path(key, value)

    def path_list(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, list):
            self.fail(key, f"expected a list of paths, got {_type_name(value)}")
        return tuple(str(self._as_path(f"{key}[{i}]", item)) for i, item in enumerate(value))

    def string_map(self, key: str) -> dict[str, str]:
        """A flat mapping of names to scalar values; numbers and booleans become strings."""
        value = self._get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(key, f"expected a mapping of names to values, got {_type_name(value)}")
        result: dict[str, str] = {}
        for name, item in value.items():
            if not isinstance(name, str) or not name.strip():
                self.fail(key, f"names must be non-empty strings, got {name!r}")
            if isinstance(item, bool):
                item = "true" if item else "false"
            elif isinstance(item, int | float):
                item = str(item)
            elif not isinstance(item, str):
                self.fail(f"{key}.{name}", f"expected a string, got {_type_name(item)}")
            result[name] = item
        return result

    def policy_keys(self, key: str) -> tuple[str, ...]:
        """A list of base64 raw Ed25519 public keys (32 bytes each)."""
        value = self._get(key)
        if value is None:
            return ()
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            self.fail(key, f"expected a list of base64 public keys, got {_type_name(value)}")
        from agent.policy import decode_public_key

        keys: list[str] = []
        for index, item in enumerate(value):
            text = item.strip() if isinstance(item, str) else ""
            try:
                decode_public_key(text)
            except ValueError:
                self.fail(f"{key}[{index}]", f"{item!r} is not a base64 Ed25519 public key "
                          "(32 raw bytes, as `aami-server policy-key show` prints it)")
            if text not in keys:
                keys.append(text)
        return tuple(keys)

    def run_as(self, key: str) -> str | None:
        """A user name or uid the checks run as; it must exist on this host.

        Left out: None, and when the agent runs as root ``nobody`` must exist, so that
        a host without it says so at start-up rather than running checks as root.
        """
        from agent.sandbox import DEFAULT_CHECK_USER, resolve_user

        value = self._get(key)
        if value is None or value == "":
            if os.geteuid() == 0:
                try:
                    resolve_user(DEFAULT_CHECK_USER)
                except LookupError:
                    self.fail(key, f"the agent runs as root and the default check user "
                              f"{DEFAULT_CHECK_USER!r} does not exist on this host: set "
                              "checks.run_as to an unprivileged user (or root, to run "
                              "checks as root)")
            return None
        if isinstance(value, bool) or not isinstance(value, str | int):
            self.fail(key, f"expected a user name or uid, got {_type_name(value)} {value!r}")
        text = str(value).strip()
        try:
            resolve_user(text)
        except LookupError as exc:
            self.fail(key, str(exc))
        return text

    def require_readable(self, key: str, file: Path) -> None:
        if not file.is_file():
            self.fail(key, f"{file} does not exist or is not a file")
        if not os.access(file, os.R_OK):
            self.fail(key, f"{file} is not readable by this user")


def _type_name(value: object) -> str:
    names = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean",
             int: "an integer", float: "a number", type(None): "nothing"}
    return names.get(type(value), type(value).__name__)
