"""agent/config.py: the configuration file users write, and every way it can be wrong."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.config import Config, load_config
from agent.errors import ConfigError
from agent.identity import load_or_create_agent_id
from agent.limits import DEFAULT_LIMITS

DESIGN_EXAMPLE = """\
server:
  address: "config-server.example.com:8443"
  bootstrap_token: "aami_bt_secret"
  tls:
    enabled: true
    ca_cert: "{dir}/ca.crt"
    client_cert: "{dir}/agent.crt"
    client_key: "{dir}/agent.key"
agent:
  id_file: "{dir}/agent-id"
  hostname: ""
  group: ""
  labels: {{environment: production, datacenter: dc1}}
  state_dir: "{dir}/state"
heartbeat: {{interval: 30s, timeout: 10s}}
checks:
  default_timeout: 30s
  max_concurrent: 10
  result_buffer_size: 1000
  allowed_paths: ["/usr/lib/nagios/plugins", "/etc/aami/checks"]
logging: {{level: info, format: json}}
"""


def write(tmp_path: Path, text: str, name: str = "agent.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load(tmp_path: Path, text: str) -> Config:
    return load_config(write(tmp_path, text))


def test_design_example_loads_with_typed_values(tmp_path: Path) -> None:
    for name in ("ca.crt", "agent.crt", "agent.key"):
        (tmp_path / name).write_text("pem")

    config = load(tmp_path, DESIGN_EXAMPLE.format(dir=tmp_path))

    assert config.server.address == "https://config-server.example.com:8443"
    assert config.server.tls.enabled is True
    assert config.server.tls.ca_cert == tmp_path / "ca.crt"
    assert config.server.bootstrap_token == "aami_bt_secret"
    assert config.agent.hostname  # auto-detected
    assert config.agent.group is None
    assert dict(config.agent.labels) == {"environment": "production", "datacenter": "dc1"}
    assert config.agent.state_dir == tmp_path / "state"
    assert (config.heartbeat.interval, config.heartbeat.timeout) == (30.0, 10.0)
    assert config.checks.default_timeout == 30.0
    assert config.checks.max_concurrent == 10
    assert config.checks.allowed_paths == ("/usr/lib/nagios/plugins", "/etc/aami/checks")
    assert config.logging.level == "info" and config.logging.format == "json"


def test_minimal_config_takes_documented_defaults(tmp_path: Path) -> None:
    config = load(tmp_path, "server: {address: 'localhost:8080'}\n")

    assert config.server.address == "http://localhost:8080"
    assert config.server.tls.enabled is False
    assert config.agent.id_file == Path("/etc/aami/agent-id")
    assert config.agent.state_dir == Path("/var/lib/aami")
    assert config.heartbeat.interval == 30.0
    assert config.checks.default_limits == DEFAULT_LIMITS
    assert config.checks.output_limit == 16384
    assert config.results.batch_size == 100 and config.results.flush_interval == 2.0
    # room for result_buffer_size results at full output size
    assert config.spool.max_bytes >= 1000 * 16384


@pytest.mark.parametrize(
    ("address", "tls", "expected"),
    [
        ("aami.example.com", "", "http://aami.example.com"),
        ("aami.example.com:8443", "tls: {enabled: true}", "https://aami.example.com:8443"),
        ("https://aami.example.com/", "", "https://aami.example.com"),
        ("http://10.0.0.1:8080/api/v1", "", "http://10.0.0.1:8080"),
        ("https://lb.example.com/aami", "", "https://lb.example.com/aami"),
    ],
)
def test_server_address_with_or_without_scheme(
    tmp_path: Path, address: str, tls: str, expected: str
) -> None:
    config = load(tmp_path, f"server:\n  address: '{address}'\n  {tls}\n")
    assert config.server.address == expected
    assert config.server.tls.enabled is expected.startswith("https://")


def test_relative_paths_are_resolved_against_the_config_directory(tmp_path: Path) -> None:
    config = load(tmp_path, """\
        server: {address: x}
        agent: {id_file: id, state_dir: ./state}
        checks: {allowed_paths: [plugins]}
    """)
    assert config.agent.id_file == tmp_path / "id"
    assert config.agent.state_dir == tmp_path / "state"
    assert config.checks.allowed_paths == (str(tmp_path / "plugins"),)


def test_optional_keys_for_operators(tmp_path: Path) -> None:
    config = load(tmp_path, """\
        server: {address: x}
        agent: {shutdown_grace: 3s}
        checks:
          output_limit: 4KB
          default_limits: {cpu_seconds: 5, memory_mb: 128, processes: 32}
        results: {batch_size: 500, flush_interval: 500ms}
        spool: {max_bytes: 64MB}
        logging: {level: WARN, format: text}
    """)
    assert config.agent.shutdown_grace == 3.0
    assert config.checks.output_limit == 4096
    assert config.checks.default_limits.cpu_seconds == 5
    assert config.checks.default_limits.memory_mb == 128
    assert config.checks.default_limits.processes == 32
    assert config.checks.default_limits.open_files == DEFAULT_LIMITS.open_files
    assert (config.results.batch_size, config.results.flush_interval) == (500, 0.5)
    assert config.spool.max_bytes == 64 * 1024 * 1024
    assert config.logging.level == "warning" and config.logging.format == "text"


def test_bad_duration_message_names_file_key_and_units(tmp_path: Path) -> None:
    path = write(tmp_path, "server: {address: x}\nheartbeat: {interval: 10x}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (
        f"{path}: heartbeat.interval: '10x' is not a duration (use 500ms, 30s, 5m, 1h)"
    )


BAD_CONFIGS = [
    # (id, yaml, expected fragment of the message)
    ("malformed-yaml", "server:\n  address: x\n bad: [1, 2\n", "agent.yaml:3:"),
    ("unclosed-flow", "server: {address: x\n", "malformed YAML"),
    ("top-level-list", "- server\n- agent\n", "top level must be a mapping"),
    ("top-level-scalar", "just text\n", "top level must be a mapping"),
    ("empty-file", "", "the file is empty"),
    ("duplicate-key", "server: {address: x}\nserver: {address: y}\n", "duplicate key 'server'"),
    ("unknown-top-key", "server: {address: x}\nservre: {}\n", "servre: unknown key"),
    ("unknown-top-key-hint", "server: {address: x}\nheartbeats: {}\n",
     "did you mean 'heartbeat'"),
    ("unknown-server-key", "server: {address: x, adress: y}\n", "server.adress: unknown key"),
    ("unknown-tls-key", "server: {address: x, tls: {ca: /x}}\n", "server.tls.ca: unknown key"),
    ("unknown-agent-key", "server: {address: x}\nagent: {labls: {}}\n",
     "agent.labls: unknown key; did you mean 'labels'"),
    ("unknown-heartbeat-key", "server: {address: x}\nheartbeat: {every: 5s}\n",
     "heartbeat.every: unknown key"),
    ("unknown-checks-key", "server: {address: x}\nchecks: {timeout: 5s}\n",
     "checks.timeout: unknown key"),
    ("unknown-limits-key", "server: {address: x}\nchecks: {default_limits: {cpu: 1}}\n",
     "checks.default_limits.cpu: unknown key"),
    ("unknown-logging-key", "server: {address: x}\nlogging: {file: /tmp/x}\n",
     "logging.file: unknown key"),
    ("unknown-results-key", "server: {address: x}\nresults: {size: 1}\n",
     "results.size: unknown key"),
    ("section-not-mapping", "server: {address: x}\nheartbeat: 30s\n",
     "heartbeat: expected a mapping"),
    ("missing-address", "agent: {}\n", "server.address: is required"),
    ("empty-address", "server: {address: ''}\n", "server.address: is required"),
    ("address-not-string", "server: {address: [x]}\n", "server.address: expected a string"),
    ("address-bad-scheme", "server: {address: 'ftp://x'}\n", "scheme 'ftp' is not supported"),
    ("address-bad-port", "server: {address: 'x:99999'}\n", "server.address:"),
    ("address-http-with-tls", "server: {address: 'http://x', tls: {enabled: true}}\n",
     "uses http:// but server.tls.enabled is true"),
    ("tls-enabled-not-bool", "server: {address: x, tls: {enabled: 'yes'}}\n",
     "server.tls.enabled: expected true or false"),
    ("tls-key-without-cert", "server: {address: x, tls: {enabled: true, client_key: /k}}\n",
     "server.tls.client_key: is set but tls.client_cert is not"),
    ("tls-ca-missing-file", "server: {address: x, tls: {enabled: true, ca_cert: /nope/ca}}\n",
     "server.tls.ca_cert: /nope/ca does not exist"),
    ("token-and-token-file",
     "server: {address: x, bootstrap_token: a, bootstrap_token_file: /t}\n",
     "server.bootstrap_token: set either"),
    ("interval-bad-unit", "server: {address: x}\nheartbeat: {interval: 30d}\n",
     "heartbeat.interval: '30d' is not a duration"),
    ("interval-zero", "server: {address: x}\nheartbeat: {interval: 0s}\n",
     "heartbeat.interval: '0s' must be greater than zero"),
    ("interval-too-short", "server: {address: x}\nheartbeat: {interval: 100ms}\n",
     "heartbeat.interval: '100ms' is too short"),
    ("timeout-negative", "server: {address: x}\nheartbeat: {timeout: -5}\n",
     "heartbeat.timeout: -5 is not a duration"),
    ("timeout-bool", "server: {address: x}\nchecks: {default_timeout: true}\n",
     "checks.default_timeout: True is not a duration"),
    ("flush-interval-list", "server: {address: x}\nresults: {flush_interval: [1]}\n",
     "results.flush_interval: [1] is not a duration"),
    ("max-concurrent-string", "server: {address: x}\nchecks: {max_concurrent: '10'}\n",
     "checks.max_concurrent: expected an integer, got a string '10'"),
    ("max-concurrent-bool", "server: {address: x}\nchecks: {max_concurrent: yes}\n",
     "checks.max_concurrent: expected an integer"),
    ("max-concurrent-zero", "server: {address: x}\nchecks: {max_concurrent: 0}\n",
     "checks.max_concurrent: 0 is too small (minimum 1)"),
    ("buffer-float", "server: {address: x}\nchecks: {result_buffer_size: 1.5}\n",
     "checks.result_buffer_size: expected an integer"),
    ("batch-too-big", "server: {address: x}\nresults: {batch_size: 501}\n",
     "results.batch_size: 501 is too large (maximum 500)"),
    ("allowed-paths-string", "server: {address: x}\nchecks: {allowed_paths: /usr/lib}\n",
     "checks.allowed_paths: expected a list of paths"),
    ("allowed-paths-item", "server: {address: x}\nchecks: {allowed_paths: [/a, 3]}\n",
     "checks.allowed_paths[1]: expected a file or directory path"),
    ("limit-negative", "server: {address: x}\nchecks: {default_limits: {memory_mb: -1}}\n",
     "checks.default_limits.memory_mb: -1 is too small"),
    ("output-limit-bad", "server: {address: x}\nchecks: {output_limit: lots}\n",
     "checks.output_limit: 'lots' is not a size"),
    ("spool-size-bad", "server: {address: x}\nspool: {max_bytes: 10}\n",
     "spool.max_bytes: 10 is too small"),
    ("labels-list", "server: {address: x}\nagent: {labels: [a, b]}\n",
     "agent.labels: expected a mapping of names to values"),
    ("labels-nested", "server: {address: x}\nagent: {labels: {a: {b: c}}}\n",
     "agent.labels.a: expected a string"),
    ("hostname-number", "server: {address: x}\nagent: {hostname: 12}\n",
     "agent.hostname: expected a string"),
    ("state-dir-list", "server: {address: x}\nagent: {state_dir: [a]}\n",
     "agent.state_dir: expected a file or directory path"),
    ("log-level", "server: {address: x}\nlogging: {level: loud}\n",
     "logging.level: 'loud' is not one of debug, info, warning, error, critical"),
    ("log-format", "server: {address: x}\nlogging: {format: xml}\n",
     "logging.format: 'xml' is not one of json, text"),
]


@pytest.mark.parametrize(("text", "fragment"), [case[1:] for case in BAD_CONFIGS],
                         ids=[case[0] for case in BAD_CONFIGS])
def test_bad_config_raises_config_error_naming_the_problem(
    tmp_path: Path, text: str, fragment: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}"), message
    assert fragment in message, message


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="configuration file not found"):
        load_config(tmp_path / "nope.yaml")


def test_directory_instead_of_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    path = write(tmp_path, "server: {address: x}\n")
    path.chmod(0)
    with pytest.raises(ConfigError, match="permission denied"):
        load_config(path)


def test_non_utf8_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_bytes(b"server: {address: \xff}\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path)


def test_tls_files_are_not_required_when_not_checked(tmp_path: Path) -> None:
    path = write(tmp_path, "server: {address: x, tls: {enabled: true, ca_cert: /nope/ca}}\n")
    assert load_config(path, check_files=False).server.tls.ca_cert == Path("/nope/ca")


# -- the bootstrap token, read only when registration needs it --------------------------


def test_bootstrap_token_from_the_config(tmp_path: Path) -> None:
    config = load(tmp_path, "server: {address: x, bootstrap_token: ' aami_bt_1 '}\n")
    assert config.read_bootstrap_token() == "aami_bt_1"


def test_bootstrap_token_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("aami_bt_2\n")
    config = load(tmp_path, "server: {address: x, bootstrap_token_file: token}\n")
    assert config.read_bootstrap_token() == "aami_bt_2"


@pytest.mark.parametrize(
    ("server", "fragment"),
    [
        ("{address: x}", "server.bootstrap_token: the agent is not registered yet"),
        ("{address: x, bootstrap_token: ''}", "server.bootstrap_token: the agent is not"),
        ("{address: x, bootstrap_token_file: gone}", "server.bootstrap_token_file: cannot read"),
        ("{address: x, bootstrap_token_file: empty}", "server.bootstrap_token_file:"),
    ],
    ids=["none", "blank", "file-missing", "file-empty"],
)
def test_missing_bootstrap_token_when_registration_is_needed(
    tmp_path: Path, server: str, fragment: str
) -> None:
    (tmp_path / "empty").write_text("\n")
    config = load(tmp_path, f"server: {server}\n")
    with pytest.raises(ConfigError) as info:
        config.read_bootstrap_token()
    assert fragment in str(info.value)
    assert str(tmp_path / "agent.yaml") in str(info.value)


# -- the id file named by the config -----------------------------------------------------


def test_invalid_id_file_is_a_config_error(tmp_path: Path) -> None:
    config = load(tmp_path, "server: {address: x}\nagent: {id_file: agent-id}\n")
    config.agent.id_file.write_text("not-a-uuid\n")
    with pytest.raises(ConfigError, match=r"agent.id_file: .*agent-id does not hold a valid UUID"):
        load_or_create_agent_id(config.agent.id_file)


def test_unreadable_id_file_is_a_config_error(tmp_path: Path) -> None:
    config = load(tmp_path, "server: {address: x}\nagent: {id_file: agent-id}\n")
    config.agent.id_file.mkdir()  # a directory where the file should be cannot be read
    with pytest.raises(ConfigError, match=r"agent.id_file: .*agent-id cannot be read"):
        load_or_create_agent_id(config.agent.id_file)


# -- the CLI turns every configuration error into exit code 2 ----------------------------


def _aami_agent() -> list[str]:
    script = Path(sys.executable).with_name("aami-agent")
    return [str(script)] if script.exists() else (
        [shutil.which("aami-agent") or sys.executable, "-m", "agent"])


@pytest.mark.parametrize(
    ("command", "text", "fragment"),
    [
        ("run", "server: {address: x}\nheartbeat: {interval: 10x}\n",
         "heartbeat.interval: '10x' is not a duration (use 500ms, 30s, 5m, 1h)"),
        ("run", "server: [\n", "malformed YAML"),
        ("id", "server: {address: x}\nagent: {colour: blue}\n", "agent.colour: unknown key"),
        ("check", "server: {address: x}\nchecks: {max_concurrent: many}\n",
         "checks.max_concurrent: expected an integer"),
        ("status", "nope: 1\n", "nope: unknown key"),
    ],
    ids=["run-duration", "run-yaml", "id-unknown", "check-type", "status-unknown"],
)
def test_cli_exits_2_with_the_message_and_no_traceback(
    tmp_path: Path, command: str, text: str, fragment: str
) -> None:
    path = write(tmp_path, text)
    args = [command, "--once"] if command == "check" else [command]
    proc = subprocess.run([*_aami_agent(), *args, "-c", str(path)],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert fragment in proc.stderr
    assert str(path) in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


# The id file and the bootstrap token are read only when the agent starts: these cases go
# through `aami-agent run` as a process too. The server address is never contacted: each
# stops before any network call.
@pytest.mark.parametrize(
    ("command", "agent_block", "server_extra", "prepare", "fragment"),
    [
        ("run", "{id_file: agent-id, state_dir: state}", ", bootstrap_token: t",
         lambda d: (d / "agent-id").write_text("not-a-uuid\n"),
         "agent.id_file: {d}/agent-id does not hold a valid UUID"),
        ("id", "{id_file: agent-id, state_dir: state}", "",
         lambda d: (d / "agent-id").write_text("12345\n"),
         "agent.id_file: {d}/agent-id does not hold a valid UUID"),
        ("run", "{id_file: agent-id, state_dir: state}", ", bootstrap_token: t",
         lambda d: (d / "agent-id").mkdir(),
         "agent.id_file: {d}/agent-id cannot be read"),
        ("run", "{id_file: agent-id, state_dir: state}", "",
         lambda d: None,
         "server.bootstrap_token: the agent is not registered yet"),
        ("run", "{id_file: agent-id, state_dir: state}", ", bootstrap_token_file: gone",
         lambda d: None,
         "server.bootstrap_token_file: cannot read"),
    ],
    ids=["run-invalid-id", "id-invalid-id", "run-unreadable-id", "run-no-token",
         "run-token-file-missing"],
)
def test_cli_exits_2_for_a_bad_id_file_or_a_missing_token(
    tmp_path: Path, command: str, agent_block: str, server_extra: str,
    prepare: Callable[[Path], object], fragment: str,
) -> None:
    prepare(tmp_path)
    server = "{address: 'http://127.0.0.1:9'" + server_extra + "}"
    path = write(tmp_path, f"server: {server}\nagent: {agent_block}\n")
    proc = subprocess.run([*_aami_agent(), command, "-c", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert fragment.format(d=tmp_path) in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_cli_missing_config_file_exits_2(tmp_path: Path) -> None:
    proc = subprocess.run([*_aami_agent(), "run", "-c", str(tmp_path / "agent.yaml")],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "configuration file not found" in proc.stderr
    assert "Traceback" not in proc.stderr


# -- security: policy keys, certificate enrollment -----------------------------------------

POLICY_KEY = "6G3g0mHc8pPOLJq5CmXbgqdrvSlD9J0vCMKxGrtOCkg="  # 32 raw bytes, base64


def test_policy_keys_are_a_list_of_base64_ed25519_public_keys(tmp_path: Path) -> None:
    assert load(tmp_path, "server: {address: x}\n").server.policy_keys == ()
    config = load(tmp_path, f"server: {{address: x, policy_keys: [{POLICY_KEY}, "
                            f"' {POLICY_KEY} ']}}\n")
    assert config.server.policy_keys == (POLICY_KEY,)  # duplicates collapse
    single = load(tmp_path, f"server: {{address: x, policy_keys: {POLICY_KEY}}}\n")
    assert single.server.policy_keys == (POLICY_KEY,)


@pytest.mark.parametrize("key", ["not-base64!", "c2hvcnQ=", POLICY_KEY + "AAAA", "42"])
def test_a_bad_policy_key_stops_the_agent_naming_the_entry(tmp_path: Path, key: str) -> None:
    with pytest.raises(ConfigError, match=r"server.policy_keys\[1\]: .* is not a base64 "
                                          r"Ed25519 public key"):
        load(tmp_path, f"server: {{address: x, policy_keys: [{POLICY_KEY}, '{key}']}}\n")


def test_unsigned_policies_are_refused_unless_the_insecure_option_is_set(
    tmp_path: Path,
) -> None:
    assert load(tmp_path, "server: {address: x}\n").server.insecure_accept_unsigned_policies \
        is False
    config = load(tmp_path, "server: {address: x, insecure_accept_unsigned_policies: true}\n")
    assert config.server.insecure_accept_unsigned_policies is True


@pytest.mark.parametrize(
    ("server", "message"),
    [(f"{{address: x, policy_keys: [{POLICY_KEY}], insecure_accept_unsigned_policies: true}}",
      "server.insecure_accept_unsigned_policies: cannot be true while server.policy_keys "
      "is set"),
     ("{address: x, insecure_accept_unsigned_policies: 'yes please'}",
      "server.insecure_accept_unsigned_policies: expected true or false")],
    ids=["with-keys", "not-a-boolean"],
)
def test_a_bad_insecure_option_stops_the_agent_naming_the_key(
    tmp_path: Path, server: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load(tmp_path, f"server: {server}\n")


def test_enrollment_puts_the_certificate_in_the_state_dir_by_default(tmp_path: Path) -> None:
    config = load(tmp_path, "server: {address: 'https://x', tls: {enroll: true}}\n"
                            "agent: {state_dir: state}\n")
    tls = config.server.tls
    assert tls.enroll and tls.enabled
    assert (tls.client_cert, tls.client_key) == (tmp_path / "state" / "agent.crt",
                                                 tmp_path / "state" / "agent.key")
    assert tls.ca_cert is None


def test_enrollment_keeps_configured_paths_and_does_not_need_the_files_yet(
    tmp_path: Path
) -> None:
    (tmp_path / "ca.crt").write_text("pem")
    config = load(tmp_path, "server:\n  address: x\n  tls: {enabled: true, enroll: true, "
                            "ca_cert: ca.crt, client_cert: tls/a.crt, client_key: tls/a.key}\n")
    tls = config.server.tls
    assert (tls.client_cert, tls.client_key) == (tmp_path / "tls/a.crt", tmp_path / "tls/a.key")
    assert not load(tmp_path, "server: {address: x}\n").server.tls.enroll


@pytest.mark.parametrize(
    ("server", "fragment"),
    [("{address: 'http://x', tls: {enroll: true}}",
      "server.tls.enroll: a client certificate needs TLS (server.address uses http://)"),
     ("{address: x, tls: {enroll: true}}",
      "server.tls.enroll: a client certificate needs TLS (set enabled: true)"),
     ("{address: 'https://x', tls: {enroll: 'yes'}}", "server.tls.enroll: expected true or false"),
     ("{address: 'https://x', tls: {enroll: true, ca_cert: /nope/ca.crt}}",
      "server.tls.ca_cert: /nope/ca.crt does not exist")],
)
def test_bad_enrollment_settings_stop_the_agent(tmp_path: Path, server: str,
                                                fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, f"server: {server}\n")
    assert fragment in str(info.value)


def test_validate_command_accepts_a_good_file_and_names_the_problem_in_a_bad_one(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    agent_cli = Path(sys.executable).with_name("aami-agent")
    bad = tmp_path / "bad.yaml"
    bad.write_text("server: {address: example.com}\nheartbeat: {interval: 10x}\n")
    done = subprocess.run([agent_cli, "validate", "-c", bad], capture_output=True, text=True)
    assert done.returncode == 2
    assert "heartbeat.interval" in done.stderr and "Traceback" not in done.stderr
    good = tmp_path / "good.yaml"
    good.write_text("server: {address: example.com}\n")
    done = subprocess.run(
        [agent_cli, "validate", "--skip-files", "-c", good], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
