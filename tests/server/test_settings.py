"""server.settings.load_settings: defaults, environment, *_FILE secrets, and hard stops."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from server.errors import SettingsError
from server.settings import Settings, load_settings

KEY = "k" * 40


def _load(tmp_path: Path, environ: dict[str, str] | None = None, **overrides):
    """Settings from ``environ`` only (never this process's), with DATA_DIR in tmp_path."""
    environ = {"AAMI_DATA_DIR": str(tmp_path / "var"), **(environ or {})}
    return load_settings(overrides or None, environ=environ)


def _secret_file(tmp_path: Path, content: str) -> str:
    path = tmp_path / "secret"
    path.write_text(content)
    return str(path)


def test_defaults_are_the_documented_ones(tmp_path):
    settings = _load(tmp_path)
    assert settings.embedded
    assert settings.HEARTBEAT_INTERVAL == 30
    assert settings.ACCESS_TOKEN_TTL == 900
    assert settings.LONGPOLL_MAX_WAIT == 60
    assert settings.MAX_CONTENT_LENGTH == 1024 * 1024
    assert (settings.LOG_LEVEL, settings.LOG_FORMAT) == ("info", "json")
    assert settings.database_url() == f"sqlite:///{(tmp_path / 'var').resolve() / 'aami.db'}"
    assert len(settings.SECRET_KEY) >= 32


def test_data_dir_defaults_to_var_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = load_settings(environ={})
    assert settings.DATA_DIR == "./var"
    assert (tmp_path / "var" / "secret_key").exists()


def test_environment_overrides_defaults(tmp_path):
    settings = _load(
        tmp_path,
        {
            "AAMI_HEARTBEAT_INTERVAL": "45",
            "AAMI_LOG_LEVEL": "debug",
            "AAMI_LOG_FORMAT": "text",
            "AAMI_DATABASE_URL": "postgresql+psycopg://aami@db/aami",
            "AAMI_SECRET_KEY": KEY,
        },
    )
    assert settings.HEARTBEAT_INTERVAL == 45
    assert (settings.LOG_LEVEL, settings.LOG_FORMAT) == ("debug", "text")
    assert settings.database_url() == "postgresql+psycopg://aami@db/aami"
    assert settings.SECRET_KEY == KEY


def test_overrides_win_over_the_environment(tmp_path):
    settings = _load(tmp_path, {"AAMI_HEARTBEAT_INTERVAL": "45"}, HEARTBEAT_INTERVAL=10)
    assert settings.HEARTBEAT_INTERVAL == 10


def test_unrelated_environment_is_ignored(tmp_path):
    settings = _load(tmp_path, {"HEARTBEAT_INTERVAL": "99", "AAMI_NOT_A_SETTING": "x"})
    assert settings.HEARTBEAT_INTERVAL == 30


def test_unknown_override_is_refused(tmp_path):
    with pytest.raises(SettingsError, match="HEARTBEAT_INTERVALL"):
        _load(tmp_path, HEARTBEAT_INTERVALL=5)


def test_secret_key_file_is_read_and_stripped(tmp_path):
    path = _secret_file(tmp_path, f"  {KEY}\n")
    settings = _load(tmp_path, {"AAMI_SECRET_KEY_FILE": path, "AAMI_SECRET_KEY": "x" * 50})
    assert settings.SECRET_KEY == KEY
    assert not (tmp_path / "var" / "secret_key").exists()


def test_redis_url_file_is_read(tmp_path):
    path = _secret_file(tmp_path, "redis://:pw@redis:6379/0\n")
    settings = _load(tmp_path, {"AAMI_REDIS_URL_FILE": path, "AAMI_SECRET_KEY": KEY})
    assert settings.REDIS_URL == "redis://:pw@redis:6379/0"
    assert not settings.embedded


def test_unreadable_secret_file_names_the_variable(tmp_path):
    missing = str(tmp_path / "no-such-file")
    with pytest.raises(SettingsError, match="AAMI_SECRET_KEY_FILE") as raised:
        _load(tmp_path, {"AAMI_SECRET_KEY_FILE": missing})
    assert missing in str(raised.value)


def test_secret_file_that_is_a_directory_names_the_variable(tmp_path):
    with pytest.raises(SettingsError, match="AAMI_DATABASE_URL_FILE"):
        _load(tmp_path, {"AAMI_DATABASE_URL_FILE": str(tmp_path)})


def test_empty_secret_file_is_refused(tmp_path):
    path = _secret_file(tmp_path, "\n")
    with pytest.raises(SettingsError, match="AAMI_REDIS_URL_FILE"):
        _load(tmp_path, {"AAMI_REDIS_URL_FILE": path, "AAMI_SECRET_KEY": KEY})


@pytest.mark.parametrize(
    ("variable", "value", "problem"),
    [
        ("AAMI_HEARTBEAT_INTERVAL", "30s", "whole number"),
        ("AAMI_ACCESS_TOKEN_TTL", "", "whole number"),
        ("AAMI_MAX_CONTENT_LENGTH", "0", "greater than 0"),
        ("AAMI_LONGPOLL_MAX_WAIT", "-5", "greater than 0"),
    ],
)
def test_bad_number_names_the_variable(tmp_path, variable, value, problem):
    with pytest.raises(SettingsError, match=variable) as raised:
        _load(tmp_path, {variable: value})
    assert problem in str(raised.value)


def test_boolean_override_for_a_number_is_refused(tmp_path):
    with pytest.raises(SettingsError, match="HEARTBEAT_INTERVAL"):
        _load(tmp_path, HEARTBEAT_INTERVAL=True)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("AAMI_REDIS_URL", "http://redis:6379"),
        ("AAMI_REDIS_URL", "localhost:6379"),
        ("AAMI_DATABASE_URL", "mysql://db/aami"),
        ("AAMI_EVENT_WEBHOOKS", "https://hooks.example.com/a,ftp://b"),
    ],
)
def test_bad_url_scheme_names_the_variable(tmp_path, variable, value):
    with pytest.raises(SettingsError, match=variable):
        _load(tmp_path, {variable: value, "AAMI_SECRET_KEY": KEY})


@pytest.mark.parametrize(
    ("variable", "value"),
    [("AAMI_LOG_LEVEL", "loud"), ("AAMI_LOG_FORMAT", "xml")],
)
def test_bad_choice_names_the_variable_and_the_value(tmp_path, variable, value):
    with pytest.raises(SettingsError, match=variable) as raised:
        _load(tmp_path, {variable: value})
    assert value in str(raised.value)


def test_offline_must_come_after_stale(tmp_path):
    with pytest.raises(SettingsError, match="AAMI_OFFLINE_AFTER_INTERVALS"):
        _load(tmp_path, {"AAMI_STALE_AFTER_INTERVALS": "5", "AAMI_OFFLINE_AFTER_INTERVALS": "5"})


def test_redis_without_a_secret_key_is_refused(tmp_path):
    with pytest.raises(SettingsError, match="AAMI_SECRET_KEY") as raised:
        _load(tmp_path, {"AAMI_REDIS_URL": "redis://localhost:6379/0"})
    assert "AAMI_SECRET_KEY_FILE" in str(raised.value)
    assert not (tmp_path / "var" / "secret_key").exists()


def test_short_secret_key_is_refused(tmp_path):
    with pytest.raises(SettingsError, match="at least 32"):
        _load(tmp_path, {"AAMI_SECRET_KEY": "short"})


def test_generated_key_file_is_private_and_reused(tmp_path):
    first = _load(tmp_path)
    path = tmp_path / "var" / "secret_key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == first.SECRET_KEY
    second = _load(tmp_path)
    assert second.SECRET_KEY == first.SECRET_KEY
    other = load_settings(environ={"AAMI_DATA_DIR": str(tmp_path / "elsewhere")})
    assert other.SECRET_KEY != first.SECRET_KEY


@pytest.mark.parametrize("content", ["\n", "abc\n"], ids=["empty", "short"])
def test_truncated_generated_key_file_is_refused(tmp_path, content):
    path = tmp_path / "var" / "secret_key"
    path.parent.mkdir()
    path.write_text(content)
    with pytest.raises(SettingsError, match="secret_key"):
        _load(tmp_path)


def test_unusable_data_dir_names_the_variable(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SettingsError, match="AAMI_DATA_DIR"):
        load_settings(environ={"AAMI_DATA_DIR": str(blocker / "var")})


def test_settings_are_immutable(tmp_path):
    settings = _load(tmp_path)
    assert isinstance(settings, Settings)
    with pytest.raises(AttributeError):
        settings.HEARTBEAT_INTERVAL = 1  # type: ignore[misc]


def test_security_defaults(tmp_path):
    settings = _load(tmp_path)
    assert settings.REQUIRE_CLIENT_CERT is False
    assert settings.REGISTER_RATE_LIMIT == "30/1m"
    assert settings.REFRESH_RATE_LIMIT == "10/1m"
    assert settings.trusted_proxies() == []
    assert settings.CLIENT_CERT_HEADER == ""


@pytest.mark.parametrize(
    ("value", "expected"),
    [("true", True), ("1", True), ("Yes", True), ("false", False), ("0", False), ("", False)],
)
def test_require_client_cert_reads_booleans(tmp_path, value, expected):
    assert _load(tmp_path, {"AAMI_REQUIRE_CLIENT_CERT": value}).REQUIRE_CLIENT_CERT is expected


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("AAMI_REQUIRE_CLIENT_CERT", "sometimes"),
        ("AAMI_REGISTER_RATE_LIMIT", "30"),
        ("AAMI_REFRESH_RATE_LIMIT", "ten/1m"),
        ("AAMI_TRUSTED_PROXIES", "10.0.0.1, proxy.example.com"),
        ("AAMI_CLIENT_CERT_HEADER", "X Client Cert"),
    ],
)
def test_bad_security_setting_names_the_variable(tmp_path, variable, value):
    with pytest.raises(SettingsError, match=variable):
        # A proxy is trusted, so the header name is judged on its own.
        _load(tmp_path, {"AAMI_TRUSTED_PROXIES": "10.0.0.1", variable: value})


def test_certificate_header_without_trusted_proxies_is_refused(tmp_path):
    with pytest.raises(SettingsError, match="AAMI_TRUSTED_PROXIES"):
        _load(tmp_path, {"AAMI_CLIENT_CERT_HEADER": "X-Client-Cert"})


def test_trusted_proxies_accept_addresses_and_networks(tmp_path):
    settings = _load(tmp_path, {"AAMI_TRUSTED_PROXIES": "10.0.0.1, 192.168.0.0/16,::1"})
    assert [str(n) for n in settings.trusted_proxies()] == [
        "10.0.0.1/32",
        "192.168.0.0/16",
        "::1/128",
    ]


def test_settings_without_a_signing_key_make_no_key_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = load_settings(environ={}, signing_key=False)
    assert settings.SECRET_KEY == ""
    assert not (tmp_path / "var").exists()
