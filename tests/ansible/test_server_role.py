"""roles/aami_server applied to a prefix on this machine, twice (fixture ``server_install``)."""

from __future__ import annotations

import shlex
import stat
import subprocess

import pytest

from tests.ansible.conftest import SECRET_KEY, Applied

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


def test_first_run_changes_the_host_and_the_second_changes_nothing(
    server_install: Applied,
) -> None:
    first, second = server_install.first.recap, server_install.second.recap
    assert first["failed"] == 0 and first["changed"] > 0, server_install.first.output_tail()
    assert second["changed"] == 0, (
        f"the second run changed: {server_install.second.changed_tasks()}\n"
        f"{server_install.second.output_tail()}"
    )


def test_migration_reports_a_change_only_when_it_applied_one(server_install: Applied) -> None:
    task = "aami_server : Apply the database migrations"
    assert task in server_install.first.changed_tasks()
    assert task not in server_install.second.changed_tasks()
    assert (server_install.root / "var/lib/aami-server/aami.db").is_file()


def test_environment_file_is_private_and_reads_back_the_same_in_a_shell(
    server_install: Applied,
) -> None:
    env_file = server_install.root / "etc/aami-server/aami-server.env"
    assert oct(stat.S_IMODE(env_file.stat().st_mode)) == "0o600"
    script = f"set -a; . {shlex.quote(str(env_file))}; env"
    done = subprocess.run(["/bin/sh", "-c", script], env={}, capture_output=True, text=True,
                          check=True, timeout=30)
    env = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    assert env["AAMI_SECRET_KEY"] == SECRET_KEY
    assert env["AAMI_REDIS_URL"] == "redis://127.0.0.1:1/0"
    assert env["AAMI_DATA_DIR"] == f"{server_install.root}/var/lib/aami-server"
    assert env["AAMI_HEARTBEAT_INTERVAL"] == "15"
    # A client CA turns AAMI_REQUIRE_CLIENT_CERT on; without the CA's key, no AAMI_CA_DIR.
    assert env["AAMI_REQUIRE_CLIENT_CERT"] == "true"
    assert "AAMI_DATABASE_URL" not in env
    assert "AAMI_CA_DIR" not in env


def test_tls_key_is_private_and_the_api_serves_https_on_its_port(
    server_install: Applied,
) -> None:
    root = server_install.root
    assert oct(stat.S_IMODE((root / "etc/aami-server/server.key").stat().st_mode)) == "0o600"
    unit = (root / "etc/systemd/system/aami-server.service").read_text()
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    assert exec_start.split()[1:] == [
        "serve", "--host", "0.0.0.0", "--port", "443", "--workers", "2",
        "--worker-class", "gthread", "--threads", "16",
        "--certfile", f"{root}/etc/aami-server/server.crt",
        "--keyfile", f"{root}/etc/aami-server/server.key",
        "--ca-certs", f"{root}/etc/aami-server/client-ca.crt",
        "--client-certs", "required",
    ]
    # Port 443 needs exactly one capability; nothing else is granted.
    assert "CapabilityBoundingSet=CAP_NET_BIND_SERVICE" in unit.splitlines()
    assert "runs gunicorn with gthread workers" in unit
    assert "client certificates required, verified against client-ca.crt" in unit


def test_client_ca_is_copied_public_and_no_ca_key_without_one(server_install: Applied) -> None:
    config = server_install.root / "etc/aami-server"
    client_ca = config / "client-ca.crt"
    assert client_ca.read_text() == "not a real CA certificate\n"
    assert oct(stat.S_IMODE(client_ca.stat().st_mode)) == "0o644"
    assert not (config / "ca").exists()


def test_every_unit_reads_the_environment_file_and_runs_unprivileged(
    server_install: Applied,
) -> None:
    units = server_install.root / "etc/systemd/system"
    env_line = f"EnvironmentFile={server_install.root}/etc/aami-server/aami-server.env"
    expected = {
        "aami-server.service": " serve ",
        "aami-server-worker@.service": " worker --queues ingest,events,maintenance",
        "aami-server-cron.service": " cron",
    }
    assert sorted(p.name for p in units.iterdir()) == sorted(expected)
    for name, command in expected.items():
        lines = (units / name).read_text().splitlines()
        assert env_line in lines, name
        assert "User=aami-server" in lines, name
        assert "NoNewPrivileges=yes" in lines and "ProtectSystem=strict" in lines, name
        assert any(line.startswith("ExecStart=") and command in line for line in lines), name
