"""aami-server: tokens, admin tokens, migrations, help, and how bad settings are reported."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import click
import pytest
from alembic.script import ScriptDirectory
from click.testing import CliRunner

from server import create_app, migrate
from server.cli import main
from tests.server.conftest import assert_error, bearer

SECRET = re.compile(r"aami_(bt|adm)_[A-Za-z0-9_-]{20,}")


def _command_paths(command: click.Command, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [path]
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            paths += _command_paths(sub, (*path, name))
    return paths


@pytest.fixture
def data_dir(tmp_path, monkeypatch) -> Path:
    """Only this test's settings: no AAMI_* from the outside, data under tmp_path."""
    for name in list(os.environ):
        if name.startswith("AAMI_"):
            monkeypatch.delenv(name)
    path = tmp_path / "var"
    monkeypatch.setenv("AAMI_DATA_DIR", str(path))
    return path


@pytest.fixture
def cli(data_dir):
    runner = CliRunner()

    def run(*args: str, code: int = 0, env: dict[str, str] | None = None):
        result = runner.invoke(main, list(args), env=env)
        assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
        # A failure is a message, never an exception escaping with a traceback.
        assert result.exception is None or isinstance(result.exception, SystemExit)
        return result

    return run


@pytest.fixture
def served(data_dir):
    """The API on the same data directory the CLI writes to."""
    return create_app({"LOG_LEVEL": "warning"}).test_client()


def _last_line(result) -> str:
    return result.stdout.splitlines()[-1]


def test_token_create_prints_the_secret_alone_on_the_last_line(cli, served):
    result = cli("token", "create", "--name", "web fleet", "--label", "env=prod", "--max-uses", "2")
    secret = _last_line(result)
    assert SECRET.fullmatch(secret)
    assert secret.startswith("aami_bt_")
    assert "created bootstrap token" in result.stderr
    assert secret not in result.stderr
    reply = served.post(
        "/api/v1/bootstrap-tokens/register", json={"token": secret, "hostname": "web-1"}
    )
    assert reply.status_code == 201, reply.get_json()


def test_token_create_with_options_applies_them(cli, served):
    secret = _last_line(cli("token", "create", "--name", "t", "--label", "env=prod"))
    agent = served.post(
        "/api/v1/bootstrap-tokens/register", json={"token": secret, "hostname": "h"}
    ).get_json()
    admin = bearer(_last_line(cli("admin-token", "create", "--name", "ops")))
    target = served.get(f"/api/v1/targets/{agent['agent_id']}", headers=admin).get_json()
    assert target["labels"] == {"env": "prod"}


def test_token_list_never_shows_the_secret(cli):
    secrets = [
        _last_line(cli("token", "create", "--name", f"t{n}", "--max-uses", "3")) for n in (1, 2)
    ]
    listing = cli("token", "list").stdout
    for secret in secrets:
        assert secret not in listing
        assert secret[:14] in listing
    assert listing.count("0/3") == 2
    assert "active" in listing
    assert not SECRET.search(listing)


def test_token_revoke_by_prefix_stops_registration(cli, served):
    secret = _last_line(cli("token", "create", "--name", "t"))
    revoked = cli("token", "revoke", secret[:14])
    assert "revoked bootstrap token" in revoked.stdout
    assert secret[:14] not in cli("token", "list").stdout
    assert "revoked" in cli("token", "list", "--all").stdout
    reply = served.post(
        "/api/v1/bootstrap-tokens/register", json={"token": secret, "hostname": "h"}
    )
    assert_error(reply, 401, "invalid_bootstrap_token", mentions="revoked")


def test_agent_reset_lets_a_rebuilt_host_claim_its_id_and_is_audited(cli, served):
    agent_id = str(uuid.uuid4())
    register = "/api/v1/bootstrap-tokens/register"

    def claim(key: str):
        secret = _last_line(cli("token", "create", "--name", "t"))
        return served.post(register, json={"token": secret, "hostname": "h",
                                           "agent_id": agent_id, "registration_key": key})

    old = claim("old-key-" + "o" * 24)
    assert old.status_code == 201, old.get_json()
    assert_error(claim("new-key-" + "n" * 24), 409, "agent_id_in_use")
    reset = cli("agent", "reset", agent_id)
    assert f"reset agent {agent_id}" in reset.stdout
    assert claim("new-key-" + "n" * 24).status_code == 200
    refresh = served.post(f"/api/v1/agents/{agent_id}/token",
                          json={"refresh_token": old.get_json()["refresh_token"]})
    assert_error(refresh, 401, "invalid_refresh_token")
    admin = bearer(_last_line(cli("admin-token", "create", "--name", "ops")))
    actions = [e["action"] for e in served.get("/api/v1/audit", headers=admin).get_json()]
    assert "agent.reset" in actions


def test_agent_reset_of_an_unknown_id_fails_cleanly(cli):
    result = cli("agent", "reset", str(uuid.uuid4()), code=1)
    assert "no target with id" in result.stderr


def test_token_revoke_of_an_unknown_token_fails_cleanly(cli):
    result = cli("token", "revoke", "aami_bt_nope", code=1)
    assert "no bootstrap token" in result.stderr


def test_token_create_with_a_bad_duration_is_a_usage_error(cli):
    result = cli("token", "create", "--name", "t", "--expires-in", "soon", code=2)
    assert "--expires-in" in result.stderr


def test_token_create_for_an_unknown_group_fails_cleanly(cli):
    result = cli("token", "create", "--name", "t", "--group", "nope", code=1)
    assert "'nope' does not exist" in result.stderr
    assert result.stdout == ""


def test_token_create_bound_to_a_bad_agent_id_fails_cleanly(cli):
    result = cli("token", "create", "--name", "t", "--agent-id", "web-1", code=1)
    assert "agent" in result.stderr.lower()
    assert "web-1" in result.stderr
    assert result.stdout == ""


def test_admin_token_create_read_only_can_read_but_not_write(cli, served):
    result = cli("admin-token", "create", "--name", "dashboard", "--role", "read-only")
    secret = _last_line(result)
    assert SECRET.fullmatch(secret)
    assert secret.startswith("aami_adm_")
    assert served.get("/api/v1/targets", headers=bearer(secret)).status_code == 200
    refused = served.post("/api/v1/groups", json={"id": "web"}, headers=bearer(secret))
    assert_error(refused, 403, "read_only_token")
    listing = cli("admin-token", "list").stdout
    assert "read-only" in listing
    assert secret not in listing


def test_admin_token_create_defaults_to_the_admin_role(cli, served):
    secret = _last_line(cli("admin-token", "create", "--name", "ops"))
    created = served.post("/api/v1/groups", json={"id": "web"}, headers=bearer(secret))
    assert created.status_code == 201


def test_admin_token_revoke_stops_it(cli, served):
    secret = _last_line(cli("admin-token", "create", "--name", "ops"))
    cli("admin-token", "revoke", secret[:14])
    reply = served.get("/api/v1/targets", headers=bearer(secret))
    assert_error(reply, 401, "invalid_token", mentions="revoked")


def test_db_upgrade_then_current_reports_the_newest_revision(cli, data_dir):
    url = f"sqlite:///{data_dir.resolve() / 'aami.db'}"
    head = ScriptDirectory.from_config(migrate.alembic_config(url)).get_current_head()
    assert "empty" in cli("db", "current").stdout
    upgraded = cli("db", "upgrade")
    assert f"database at revision {head}" in upgraded.stdout
    assert cli("db", "current").stdout.strip() == head
    # Running it again is harmless.
    assert f"database at revision {head}" in cli("db", "upgrade").stdout


@pytest.mark.parametrize("path", _command_paths(main), ids=lambda p: " ".join(p) or "aami-server")
def test_help_on_every_command_exits_zero(cli, path):
    result = cli(*path, "--help")
    assert result.stdout.startswith("Usage: ")
    assert " ".join(path) in result.stdout.splitlines()[0]


@pytest.mark.parametrize(
    "args",
    [("token", "list"), ("token", "create", "--name", "t"), ("db", "upgrade"), ("serve",)],
    ids=" ".join,
)
def test_bad_setting_is_one_line_naming_the_variable(cli, args):
    result = cli(*args, code=1, env={"AAMI_LOG_LEVEL": "loud"})
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "AAMI_LOG_LEVEL" in lines[0]
    assert "loud" in lines[0]
    assert result.stdout == ""


def test_bad_setting_exits_without_a_traceback_in_a_real_process(data_dir):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AAMI_")}
    env.update(AAMI_DATA_DIR=str(data_dir), AAMI_LOG_LEVEL="loud")
    done = subprocess.run(
        [sys.executable, "-m", "server.cli", "token", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().count("\n") == 0
    assert "AAMI_LOG_LEVEL" in done.stderr
    assert done.stdout == ""


def test_administration_commands_make_no_signing_key(cli, data_dir, tmp_path):
    """CA, policy-key, token and db commands sign nothing, so wherever an operator or
    Ansible runs them they leave no AAMI_SECRET_KEY file behind; only the server makes it."""
    ca_dir, key_file = tmp_path / "ca", tmp_path / "policy.key"
    env = {"AAMI_CA_DIR": str(ca_dir), "AAMI_POLICY_KEY_FILE": str(key_file)}
    cli("db", "upgrade")
    cli("ca", "init", env=env)
    cli("policy-key", "create", env=env)
    shown = cli("policy-key", "show", env=env)
    cli("token", "create", "--name", "t")
    assert (ca_dir / "ca.crt").exists()
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert shown.stdout.strip()
    assert not (data_dir / "secret_key").exists()

    create_app({"LOG_LEVEL": "warning"})
    assert (data_dir / "secret_key").stat().st_mode & 0o777 == 0o600
