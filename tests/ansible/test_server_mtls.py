"""roles/aami_server with its production defaults - gevent workers, mutual TLS - applied to
a prefix twice (fixture ``server_mtls_install``), then its API started from the unit the
role wrote: the flags it renders are the ones ``aami-server serve`` accepts, and they
do what the README's "mTLS in production" says. And the combinations the role refuses.
"""

from __future__ import annotations

import stat
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from server.security.ca import init_ca, new_agent_key_pair, write_key_pair
from tests.ansible.conftest import MtlsInstall, agent_variables, server_variables
from tests.ansible.playbooks import apply_role
from tests.ansible.processes import (
    DeployedAgent,
    UnitService,
    clean_env,
    read_environment_file,
    session_members,
)
from tests.integration.processes import wait_until
from tests.support.services import skip_or_fail

CHECK_DUMMY = Path("/usr/lib/nagios/plugins/check_dummy")

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


def mode(path: Path) -> str:
    return oct(stat.S_IMODE(path.stat().st_mode))


def test_second_run_changes_nothing(server_mtls_install: MtlsInstall) -> None:
    assert server_mtls_install.second.recap["changed"] == 0, (
        f"the second run changed: {server_mtls_install.second.changed_tasks()}\n"
        f"{server_mtls_install.second.output_tail()}"
    )


def test_api_serves_gevent_and_verifies_client_certificates_by_default(
    server_mtls_install: MtlsInstall,
) -> None:
    root, port = server_mtls_install.root, server_mtls_install.variables["aami_server_port"]
    unit = (root / "etc/systemd/system/aami-server.service").read_text()
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    assert exec_start.split() == [
        f"ExecStart={root}/opt/aami-server/bin/aami-server",
        "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "2",
        "--worker-class", "gevent", "--worker-connections", "10000",
        "--certfile", f"{root}/etc/aami-server/server.crt",
        "--keyfile", f"{root}/etc/aami-server/server.key",
        "--ca-certs", f"{root}/etc/aami-server/client-ca.crt",
        "--client-certs", "optional",
    ]
    assert "runs gunicorn with gevent workers" in unit
    assert "client certificates optional, verified against client-ca.crt" in unit


def test_ca_files_land_with_tight_modes_and_the_environment_names_them(
    server_mtls_install: MtlsInstall,
) -> None:
    config, tls = server_mtls_install.root / "etc/aami-server", server_mtls_install.tls
    ca_dir = config / "ca"
    assert (config / "client-ca.crt").read_bytes() == (tls / "ca.crt").read_bytes()
    assert (ca_dir / "ca.crt").read_bytes() == (tls / "ca.crt").read_bytes()
    assert (ca_dir / "ca.key").read_bytes() == (tls / "ca.key").read_bytes()
    assert mode(config / "client-ca.crt") == "0o644"
    assert mode(ca_dir) == "0o750"
    assert mode(ca_dir / "ca.crt") == "0o644"
    assert mode(ca_dir / "ca.key") == "0o600"
    env = read_environment_file(config / "aami-server.env")
    assert env["AAMI_REQUIRE_CLIENT_CERT"] == "true"
    assert env["AAMI_CA_DIR"] == str(ca_dir)
    # The key is never shown: not in the play's output either.
    key_pem = (tls / "ca.key").read_text()
    body = "".join(key_pem.splitlines()[1:-1])
    for run in (server_mtls_install.first, server_mtls_install.second):
        assert body[:40] not in run.stdout + run.stderr


def _key_and_csr() -> tuple[bytes, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "agent")]))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem, csr.public_bytes(serialization.Encoding.PEM).decode()


def _cli(install: MtlsInstall, *args: str) -> str:
    """The deployed ``aami-server ARGS`` with the services' environment; its last line."""
    data_dir = install.root / "var/lib/aami-server"
    env = read_environment_file(install.root / "etc/aami-server/aami-server.env")
    done = subprocess.run(
        [str(install.root / "opt/aami-server/bin/aami-server"), *args],
        env=clean_env(env), cwd=data_dir, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, f"aami-server {args} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout.strip().splitlines()[-1].strip()


def test_api_started_from_its_unit_enrolls_agents_and_binds_them_to_certificates(
    server_mtls_install: MtlsInstall, tmp_path: Path
) -> None:
    """ExecStart= word for word, with the unit's environment: gevent and mutual TLS run,
    a new agent registers without a certificate and gets one signed by the CA whose key
    the role installed, and agent calls then need it (AAMI_REQUIRE_CLIENT_CERT)."""
    install = server_mtls_install
    ca_cert = str(install.tls / "ca.crt")
    api = UnitService(
        install.root / "etc/systemd/system/aami-server.service",
        runtime_dir=tmp_path / "run",
        port=int(str(install.variables["aami_server_port"])),
    )
    base = f"https://127.0.0.1:{api.port}"
    api.ready_url, api.ready_kwargs = f"{base}/readyz", {"verify": ca_cert}
    token = _cli(install, "token", "create", "--name", "ansible-mtls")

    def call(method: str, path: str, **kwargs: Any) -> requests.Response:
        return requests.request(method, f"{base}/api/v1/{path}", verify=ca_cert, timeout=30,
                                **kwargs)

    try:
        api.start()
        log = api.log_text()
        assert "Using worker: gevent" in log, log

        # Registration without a certificate (--client-certs optional), with a CSR that
        # the built-in CA signs (AAMI_CA_DIR, the key the role copied).
        agent_id = str(uuid.uuid4())
        key_pem, csr = _key_and_csr()
        registered = call("POST", "bootstrap-tokens/register", json={
            "token": token, "hostname": "web-1", "agent_id": agent_id, "csr": csr})
        assert registered.status_code == 201, registered.text
        body = registered.json()
        assert body["ca_certificate"] == (install.tls / "ca.crt").read_text()
        cert_path, key_path = tmp_path / "agent.crt", tmp_path / "agent.key"
        cert_path.write_text(body["certificate"])
        key_path.write_bytes(key_pem)
        bearer = {"Authorization": f"Bearer {body['access_token']}"}

        # AAMI_REQUIRE_CLIENT_CERT: the token alone is not enough.
        bare = call("POST", f"agents/{agent_id}/heartbeat", json={"version": "1"},
                    headers=bearer)
        assert bare.status_code == 401, bare.text
        assert bare.json()["error"]["code"] == "client_certificate_required"
        # With the certificate, verified against --ca-certs in the handshake: accepted.
        certified = call("POST", f"agents/{agent_id}/heartbeat", json={"version": "1"},
                         headers=bearer, cert=(str(cert_path), str(key_path)))
        assert certified.status_code == 200, certified.text

        # The same agent id and subject from a CA the server does not trust: refused in
        # the handshake, whatever the token.
        rogue = init_ca(tmp_path / "rogue-ca", name="AAMI CA")
        forged = write_key_pair(tmp_path / "forged", "agent",
                                *new_agent_key_pair(rogue, agent_id, 1))
        with pytest.raises(requests.exceptions.ConnectionError):
            call("POST", f"agents/{agent_id}/heartbeat", json={"version": "1"},
                 headers=bearer, cert=(str(forged[1]), str(forged[0])))
    finally:
        api.stop()
        api.close()
    assert api.session_id is not None and session_members(api.session_id) == [], api.log_text()


def test_policy_key_is_made_once_on_the_host_and_stays_private(
    server_mtls_install: MtlsInstall,
) -> None:
    install = server_mtls_install
    key_file = install.root / "etc/aami-server/policy.key"
    assert oct(stat.S_IMODE(key_file.stat().st_mode)) == "0o600"
    env = read_environment_file(install.root / "etc/aami-server/aami-server.env")
    assert env["AAMI_POLICY_KEY_FILE"] == str(key_file)
    task = "aami_server : Create the policy signing key on this host"
    assert task in install.first.changed_tasks()
    assert task not in install.second.changed_tasks()  # the key is never replaced


def test_role_deployed_agent_enrolls_and_runs_signed_policies_from_the_role_deployed_server(
    server_mtls_install: MtlsInstall, wheel: Path, tmp_path: Path
) -> None:
    """Both roles together, as ansible/site.yml applies them: the server's role made the
    policy key and installed the CA's key; the agent's role writes server.tls.enroll and
    server.policy_keys. The deployed agent registers with a CSR, gets its certificate,
    and runs the check the server assigned it - which it would refuse unsigned, and which
    reaches the server only through calls that need its certificate."""
    if not CHECK_DUMMY.exists():
        skip_or_fail(f"{CHECK_DUMMY} is missing (Debian: apt install monitoring-plugins)")
    install = server_mtls_install
    api = UnitService(
        install.root / "etc/systemd/system/aami-server.service",
        runtime_dir=tmp_path / "run",
        port=int(str(install.variables["aami_server_port"])),
    )
    ca_cert = str(install.tls / "ca.crt")
    base = f"https://127.0.0.1:{api.port}"
    api.ready_url, api.ready_kwargs = f"{base}/readyz", {"verify": ca_cert}
    public_key = _cli(install, "policy-key", "show")
    bootstrap_token = _cli(install, "token", "create", "--name", "signed-e2e")
    admin = {"Authorization": f"Bearer {_cli(install, 'admin-token', 'create', '--name', 'e2e')}"}
    agent_root = tmp_path / "agent-root"
    agent = DeployedAgent(agent_root, tmp_path / "agent-log")
    try:
        api.start()
        created = requests.post(f"{base}/api/v1/checks", headers=admin, verify=ca_cert,
                                timeout=30, json={
            "id": "signed-dummy",
            "name": "dummy check under a signed policy",
            "command": [str(CHECK_DUMMY), "2", "signed and delivered"],
            "interval": "2s",
            "timeout": "2s",
            "assign": {"labels": {"environment": "mtls-e2e"}},
        })
        assert created.status_code == 201, created.text

        run = apply_role("aami_agent", tmp_path / "ansible", agent_variables(
            agent_root, wheel,
            aami_server_url=base,
            aami_bootstrap_token=bootstrap_token,
            aami_tls_ca_cert=ca_cert,
            aami_agent_tls_enroll=True,
            aami_agent_policy_keys=[public_key],
            aami_agent_labels={"environment": "mtls-e2e"},
            aami_agent_heartbeat_interval="2s",
            aami_agent_heartbeat_timeout="30s",
            aami_agent_log_format="text",
            aami_agent_config_extra={"results": {"flush_interval": "500ms"}},
        ))
        assert run.returncode == 0, run.output_tail()
        config = yaml.safe_load((agent_root / "etc/aami/agent.yaml").read_text())
        assert config["server"]["policy_keys"] == [public_key]
        assert config["server"]["tls"]["enroll"] is True

        agent.start()

        def check_state() -> dict[str, Any] | None:
            targets = requests.get(f"{base}/api/v1/targets", headers=admin, verify=ca_cert,
                                   timeout=30).json()
            for target in targets:
                states = requests.get(f"{base}/api/v1/targets/{target['id']}/checks",
                                      headers=admin, verify=ca_cert, timeout=30).json()
                for state in states:
                    if state["check_id"] == "signed-dummy":
                        return state
            return None

        try:
            state = wait_until(check_state, 90, "a result of the signed check")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nagent log:\n{agent.log_text()[-3000:]}") from None
        assert (state["status"], state["exit_code"]) == ("critical", 2)
        assert "signed and delivered" in state["output"]
        enrolled = agent_root / "var/lib/aami/agent.crt"
        assert enrolled.is_file(), sorted(p.name for p in enrolled.parent.iterdir())
        assert "refused" not in agent.log_text()
    finally:
        agent.stop()
        api.stop()
        api.close()
    assert agent.session_id is not None and session_members(agent.session_id) == []


def _refusal(tmp_path: Path, wheel: Path, overrides: dict[str, object]) -> tuple[str, str]:
    """Apply the role with ``overrides`` (a value ``tls/NAME`` is a file of that name on
    the controller): it must fail before it installs anything. The task that failed, and
    the output with its whitespace squeezed."""
    tls = tmp_path / "tls"
    tls.mkdir()

    def controller_file(value: object) -> object:
        if not (isinstance(value, str) and value.startswith("tls/")):
            return value
        path = tls / value.removeprefix("tls/")
        path.write_text(f"not a real {path.name}\n")
        return str(path)

    root = tmp_path / "root"
    variables = server_variables(
        root, wheel, **{key: controller_file(value) for key, value in overrides.items()}
    )
    run = apply_role("aami_server", tmp_path / "ansible", variables)
    assert run.returncode != 0, run.output_tail()
    assert not (root / "opt/aami-server").exists(), "the role installed before it refused"
    failed, task = "", ""
    for line in run.stdout.splitlines():
        if line.startswith("TASK ["):
            task = line.split("[", 1)[1].rsplit("]", 1)[0]
        elif line.startswith("fatal:") and not failed:
            failed = task
    return failed, " ".join((run.stdout + run.stderr).split())


ARG_SPEC = "aami_server : Validating arguments against arg spec 'main'"
MTLS = "aami_server : Check the mutual TLS settings"


@pytest.mark.parametrize(
    ("overrides", "task", "message"),
    [
        pytest.param({"aami_server_tls_client_ca": "tls/ca.crt"}, MTLS,
                     "not aami_server_tls_client_ca or aami_server_tls_cert | length > 0",
                     id="client-ca-without-https"),
        pytest.param({"aami_server_tls_cert": "tls/server.crt",
                      "aami_server_tls_key": "tls/server.key",
                      "aami_server_tls_client_ca_key": "tls/ca.key"}, MTLS,
                     "not aami_server_tls_client_ca_key or aami_server_tls_client_ca",
                     id="ca-key-without-client-ca"),
        pytest.param({"aami_server_require_client_cert": True}, MTLS,
                     "not (aami_server_require_client_cert | bool)",
                     id="require-without-verification"),
        pytest.param({"aami_server_tls_cert": "tls/server.crt",
                      "aami_server_tls_key": "tls/server.key",
                      "aami_server_tls_client_ca": "tls/ca.crt",
                      "aami_server_client_certs": "none"}, ARG_SPEC,
                     "aami_server_client_certs must be one of: optional, required",
                     id="client-certs-none"),
        pytest.param({"aami_server_worker_class": "sync"}, ARG_SPEC,
                     "aami_server_worker_class must be one of: gevent, gthread",
                     id="unknown-worker-class"),
    ],
)
def test_role_refuses_mutual_tls_and_serving_settings_that_cannot_work(
    overrides: dict[str, object], task: str, message: str, tmp_path: Path, wheel: Path
) -> None:
    failed, output = _refusal(tmp_path, wheel, overrides)
    # The argument spec's task name goes on with the role's short description.
    assert (failed.startswith(task), message in output) == (True, True), (failed, output[-3000:])
