"""agent/policy.py and its use by the agent: only policies signed by a trusted key, for
this agent, and not older than the last one accepted, ever reach the scheduler."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from agent.assignment import AssignmentCache
from agent.config import load_config
from agent.errors import AgentError
from agent.policy import PolicyRejected, PolicyVerifier, canonical_bytes, key_id
from agent.runner import Agent, check_once
from agent.transport.base import Assignment, PolicySignature
from server.security import policy as server_policy
from tests.agent.fakes import FakeServer, wait_for
from tests.agent.test_runner import check, fast_backoff, write_config

TARGET = "6f1c2e9a-3b7d-4c1e-9f00-1234567890ab"
CHECKS = [{"id": "disk", "name": "Disk ✓ «space»",
           "command": ["/usr/lib/nagios/plugins/check_disk", "-w", "20%", "-c", "10%"],
           "interval": "60s", "timeout": "10s",
           "limits": {"cpu_seconds": 10, "memory_mb": None}, "env": {"LANG": "C"}},
          {"id": "load", "command": ["check_load"], "interval": 30, "shell": False}]


def new_key() -> Any:
    return ed25519.Ed25519PrivateKey.generate()


def public(key: Any) -> str:
    return server_policy.public_key_text(key)


def signed(key: Any, *, target_id: str = TARGET, serial: int = 7,
           checks: list[Any] | None = None) -> Assignment:
    """A reply as the server signs it and as the agent's transport decodes it."""
    policy: dict[str, Any] = {"target_id": target_id, "config_version": "3f2a",
                              "checks": checks if checks is not None else CHECKS,
                              "serial": serial, "issued_at": "2026-11-22T10:30:00.123Z"}
    policy["signature"] = server_policy.sign_policy(key, policy)
    wire = json.loads(json.dumps(policy))
    return Assignment(etag='"3f2a"', config_version=wire["config_version"],
                      checks=wire["checks"], target_id=wire["target_id"],
                      serial=wire["serial"], issued_at=wire["issued_at"],
                      signature=PolicySignature(**wire["signature"]))


@pytest.fixture(scope="module")
def key() -> Any:
    return new_key()


@pytest.fixture
def verifier(key: Any) -> PolicyVerifier:
    return PolicyVerifier([public(key)])


def refusal(verifier: PolicyVerifier, assignment: Assignment,
            last_serial: int | None = None) -> str:
    with pytest.raises(PolicyRejected) as info:
        verifier.verify(assignment, target_id=TARGET, last_serial=last_serial)
    return str(info.value)


# -- the verifier -------------------------------------------------------------------------


def test_canonical_bytes_match_the_servers_byte_for_byte(key: Any) -> None:
    assignment = signed(key)
    policy = {name: getattr(assignment, name) for name in server_policy.SIGNED_FIELDS}
    assert canonical_bytes(assignment) == server_policy.canonical_bytes(policy)
    assert "✓ «space»".encode() in canonical_bytes(assignment)  # UTF-8, not \\u escapes


def test_key_id_is_the_servers(key: Any) -> None:
    import base64

    assert key_id(base64.b64decode(public(key))) == server_policy.key_id(public(key))


def test_a_policy_signed_by_the_trusted_key_is_accepted(
    verifier: PolicyVerifier, key: Any
) -> None:
    verifier.verify(signed(key), target_id=TARGET, last_serial=None)
    verifier.verify(signed(key, serial=7), target_id=TARGET, last_serial=7)  # sent again


def test_changing_one_check_argument_breaks_the_signature(
    verifier: PolicyVerifier, key: Any
) -> None:
    genuine = signed(key)
    checks = json.loads(json.dumps(genuine.checks))
    checks[0]["command"][2] = "99%"
    message = refusal(verifier, dataclasses.replace(genuine, checks=checks))
    assert "does not verify" in message and "altered" in message


@pytest.mark.parametrize("field", ["serial", "issued_at", "config_version", "target_id"])
def test_changing_any_signed_field_breaks_the_signature(
    verifier: PolicyVerifier, key: Any, field: str
) -> None:
    genuine = signed(key)
    changed = {"serial": 8, "issued_at": "2030-01-01T00:00:00.000Z",
               "config_version": "ffff", "target_id": TARGET.upper()}[field]
    assert "does not verify" in refusal(verifier,
                                        dataclasses.replace(genuine, **{field: changed}))


def test_unsigned_policy_is_refused(verifier: PolicyVerifier, key: Any) -> None:
    assert "not signed" in refusal(verifier, dataclasses.replace(signed(key), signature=None))


def test_policy_signed_by_an_unknown_key_is_refused(verifier: PolicyVerifier) -> None:
    stranger = new_key()
    message = refusal(verifier, signed(stranger))
    assert f"unknown key '{server_policy.key_id(public(stranger))}'" in message


def test_policy_with_a_forged_key_id_is_refused(verifier: PolicyVerifier, key: Any) -> None:
    forged = signed(new_key())
    assert forged.signature is not None
    forged = dataclasses.replace(forged, signature=dataclasses.replace(
        forged.signature, key_id=server_policy.key_id(public(key))))
    assert "does not verify" in refusal(verifier, forged)


@pytest.mark.parametrize(
    ("signature", "fragment"),
    [(PolicySignature("rsa", "x", "y"), "unsupported signature algorithm 'rsa'"),
     (PolicySignature("", "", ""), "unsupported signature algorithm"),
     (None, "not signed")],
)
def test_malformed_signatures_are_refused(
    verifier: PolicyVerifier, key: Any, signature: PolicySignature | None, fragment: str
) -> None:
    assert fragment in refusal(verifier, dataclasses.replace(signed(key), signature=signature))


def test_signature_that_is_not_base64_is_refused(verifier: PolicyVerifier, key: Any) -> None:
    genuine = signed(key)
    assert genuine.signature is not None
    bad = dataclasses.replace(genuine.signature, value="not base64!")
    assert "not base64" in refusal(verifier, dataclasses.replace(genuine, signature=bad))


def test_policy_missing_its_serial_is_refused(verifier: PolicyVerifier, key: Any) -> None:
    assert "lacks serial" in refusal(verifier, dataclasses.replace(signed(key), serial=None))


def test_policy_for_another_target_is_refused(verifier: PolicyVerifier, key: Any) -> None:
    other = "0b9d4a7e-0000-4000-8000-000000000001"
    message = refusal(verifier, signed(key, target_id=other))
    assert f"for target {other}, not for this agent ({TARGET})" in message


def test_older_serial_is_a_replay(verifier: PolicyVerifier, key: Any) -> None:
    message = refusal(verifier, signed(key, serial=6), last_serial=7)
    assert "replayed policy: serial 6 is older than the last accepted serial 7" in message


def test_rotation_a_policy_signed_by_the_second_trusted_key_is_accepted(key: Any) -> None:
    new = new_key()
    verifier = PolicyVerifier([public(key), public(new)])
    verifier.verify(signed(new), target_id=TARGET, last_serial=None)
    verifier.verify(signed(key), target_id=TARGET, last_serial=None)
    assert verifier.key_ids == (server_policy.key_id(public(key)),
                                server_policy.key_id(public(new)))


def test_the_agent_does_not_load_cryptography_without_policy_keys(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = ("import sys; import agent.policy, agent.policy_trust, agent.runner, "
            "agent.enrollment; "
            "print('cryptography' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"


# -- the agent: a refused policy changes nothing ------------------------------------------


@pytest.fixture
def plugins(tmp_path: Path) -> Path:
    directory = tmp_path / "plugins"
    directory.mkdir()
    for name, body in {"ok.sh": 'echo "OK - $1"\n', "warn.sh": 'echo "WARN"\nexit 1\n'}.items():
        (directory / name).write_text(f"#!/bin/sh\n{body}")
        (directory / name).chmod(0o755)
    return directory


def config_with_keys(tmp_path: Path, *keys: Any, address: str = "aami.invalid:8080",
                     extra_server: str = "") -> Path:
    """An agent.yaml trusting ``keys`` (none: the default configuration); ``extra_server``
    adds lines to its server section."""
    path = write_config(tmp_path, address=address, policy_keys=[public(k) for k in keys])
    if extra_server:
        path.write_text(path.read_text().replace("server:\n", f"server:\n{extra_server}", 1))
    return path


class Agents:
    def __init__(self, tmp_path: Path, server: FakeServer) -> None:
        self.tmp_path, self.server = tmp_path, server
        self.running: list[Agent] = []

    def start(self, config: Path) -> Agent:
        agent = Agent(load_config(config), transport=self.server.transport(),
                      backoff=fast_backoff)
        self.running.append(agent)
        agent.start()
        return agent

    def stop(self, agent: Agent) -> None:
        self.running.remove(agent)
        agent.shutdown(0.5)


@pytest.fixture
def server(key: Any) -> FakeServer:
    fake = FakeServer()
    fake.policy_key = key
    return fake


@pytest.fixture
def agents(tmp_path: Path, server: FakeServer) -> Iterator[Agents]:
    pool = Agents(tmp_path, server)
    yield pool
    for agent in list(pool.running):
        agent.shutdown(0.5)


def checks_of(agent: Agent) -> list[str]:
    return [info["check_id"] for info in agent.scheduler.snapshot()]


def heartbeats_after(server: FakeServer, count: int) -> list[dict[str, Any]]:
    return server.heartbeats[count:]


def make_stranger_sign(server: FakeServer) -> None:
    server.policy_key = new_key()


def make_unsigned(server: FakeServer) -> None:
    server.policy_key = None


def make_tampered(server: FakeServer) -> None:
    def tamper(policy: dict[str, Any]) -> None:
        policy["checks"][0]["command"].append("--rm -rf /")
    server.tamper = tamper


def make_replay(server: FakeServer) -> None:
    server.serial = 0  # assign() makes it 1: older than the 2 accepted before


def make_for_other_target(server: FakeServer) -> None:
    server.target_override = "0b9d4a7e-0000-4000-8000-000000000001"


@pytest.mark.parametrize(
    ("attack", "reason"),
    [(make_tampered, "does not verify"), (make_unsigned, "not signed"),
     (make_stranger_sign, "unknown key"), (make_replay, "replayed policy: serial 1"),
     (make_for_other_target, "for target 0b9d4a7e")],
    ids=["tampered", "unsigned", "unknown-key", "replayed", "other-target"],
)
def test_a_refused_policy_leaves_the_last_good_one_running_and_is_reported(
    tmp_path: Path, server: FakeServer, agents: Agents, plugins: Path, key: Any,
    attack: Callable[[FakeServer], None], reason: str, caplog: pytest.LogCaptureFixture,
) -> None:
    server.assign([])
    server.assign([check("good", "ok.sh", plugins=plugins)])  # serial 2
    agent = agents.start(config_with_keys(tmp_path, key))
    wait_for(lambda: server.results_for("good"), what="the good policy to run")

    attack(server)
    with caplog.at_level(logging.ERROR, logger="agent.runner"):
        server.assign([check("evil", "warn.sh", plugins=plugins)])
        wait_for(lambda: any(reason in (b["policy_error"] or "") for b in server.heartbeats),
                 what="the refusal in a heartbeat")
    assert "refusing the check policy from the server (config version v3): " in caplog.text
    assert reason in caplog.text

    assert checks_of(agent) == ["good"]  # the scheduler never saw the refused policy
    delivered = len(server.results_for("good"))
    wait_for(lambda: len(server.results_for("good")) > delivered + 1,
             what="the good check to keep reporting")
    assert server.results_for("evil") == []
    cached = AssignmentCache(tmp_path / "state" / "assignment.json").load()
    assert cached is not None and cached.serial == 2 and cached.config_version == "v2"

    # The server is fixed: the next good policy runs and the error is cleared.
    server.policy_key, server.tamper, server.target_override = key, None, None
    server.serial = max(server.serial, 2)
    seen = len(server.heartbeats)
    server.assign([check("fixed", "ok.sh", plugins=plugins)])
    wait_for(lambda: server.results_for("fixed"), what="the fixed policy to run")
    assert checks_of(agent) == ["fixed"]
    wait_for(lambda: any(b["policy_error"] is None for b in heartbeats_after(server, seen)),
             what="policy_error cleared")


def test_the_replay_floor_survives_a_restart(
    tmp_path: Path, server: FakeServer, agents: Agents, plugins: Path, key: Any
) -> None:
    config = config_with_keys(tmp_path, key)
    server.serial = 40
    server.assign([check("current", "ok.sh", plugins=plugins)])  # serial 41
    agent = agents.start(config)
    wait_for(lambda: server.results_for("current"), what="serial 41 to run")
    agents.stop(agent)
    state = json.loads((tmp_path / "state" / "assignment.json").read_text())
    assert state["serial"] == 41 and state["signature"]["key_id"]

    # A genuine but older policy (an attacker's recording) after the restart.
    server.serial = 10
    server.assign([check("old", "warn.sh", plugins=plugins)])
    agent = agents.start(config)
    assert checks_of(agent) == ["current"]  # the cached policy verified and runs
    wait_for(lambda: any("replayed policy: serial 11" in (b["policy_error"] or "")
                         for b in server.heartbeats), what="the replay refused")
    assert checks_of(agent) == ["current"]
    assert server.results_for("old") == []


def test_rotation_the_agent_runs_a_policy_signed_by_its_second_key(
    tmp_path: Path, server: FakeServer, agents: Agents, plugins: Path, key: Any
) -> None:
    successor = new_key()
    server.policy_key = successor
    server.assign([check("rotated", "ok.sh", plugins=plugins)])
    agents.start(config_with_keys(tmp_path, key, successor))
    wait_for(lambda: server.results_for("rotated"), what="the policy of the new key to run")
    assert all(b["policy_error"] is None for b in server.heartbeats)


def test_a_cached_policy_that_does_not_verify_is_not_run_at_start(
    tmp_path: Path, server: FakeServer, agents: Agents, plugins: Path, key: Any
) -> None:
    # Cached by this agent before policy keys were configured: unsigned.
    AssignmentCache(tmp_path / "state" / "assignment.json").save(Assignment(
        etag='"v7"', config_version="v7", checks=[check("cached", "ok.sh", plugins=plugins)],
        serial=3))
    server.down = True
    agent = agents.start(config_with_keys(tmp_path, key))
    assert checks_of(agent) == []
    assert agent._policy_error is not None and "not signed" in agent._policy_error
    assert agent._policy_serial == 3

    server.down = False
    server.serial = 5
    server.assign([check("signed", "ok.sh", plugins=plugins)])
    wait_for(lambda: server.results_for("signed"), what="the signed policy to run")


def test_check_once_refuses_a_tampered_policy_and_uses_the_verified_cache(
    tmp_path: Path, server: FakeServer, plugins: Path, key: Any
) -> None:
    config = load_config(config_with_keys(tmp_path, key))
    server.assign([check("real", "ok.sh", plugins=plugins)])
    report = check_once(config, transport=server.transport())
    assert [r.check_id for r in report.results] == ["real"]

    # The verified policy of that run, cached as the daemon would have.
    good = server._policy(load_config(config.path).agent.id_file.read_text().strip(), ())
    AssignmentCache(tmp_path / "state" / "assignment.json").save(good)
    make_tampered(server)
    report = check_once(config, transport=server.transport())
    assert [r.check_id for r in report.results] == ["real"]
    assert "cached assignment" in report.source and "policy was refused" in report.source

    (tmp_path / "state" / "assignment.json").unlink()
    with pytest.raises(AgentError, match="policy was refused"):
        check_once(config, transport=server.transport())


def test_a_key_added_by_a_reload_is_trusted_without_a_restart(
    tmp_path: Path, server: FakeServer, agents: Agents, plugins: Path, key: Any
) -> None:
    successor = new_key()
    server.assign([check("first", "ok.sh", plugins=plugins)])
    config = config_with_keys(tmp_path, key)
    agent = agents.start(config)
    wait_for(lambda: server.results_for("first"), what="the first policy")

    server.policy_key = successor  # the server rotated before this agent was told
    server.assign([check("second", "ok.sh", plugins=plugins)])
    wait_for(lambda: agent._policy_error and "unknown key" in agent._policy_error,
             what="the new key refused")
    assert checks_of(agent) == ["first"]

    config_with_keys(tmp_path, key, successor)
    agent.reload()
    wait_for(lambda: server.results_for("second"), what="the policy of the new key to run")
    assert agent._policy_error is None


# -- the default: no keys configured -------------------------------------------------------

HTTPS = "https://aami.invalid:8443"
PIN = Path("state") / "policy-keys.json"


def refusal_reported(server: FakeServer, fragment: str) -> None:
    wait_for(lambda: any(fragment in (b["policy_error"] or "") for b in server.heartbeats),
             what=f"a heartbeat reporting {fragment!r}")


def start_pinned_agent(
    tmp_path: Path, server: FakeServer, agents: Agents, plugins: Path
) -> tuple[Path, Agent]:
    """An agent with the default configuration over verified TLS, running the policy (check
    ``first``) signed by the key it pinned at registration; returns its config file too."""
    server.verified_tls = True
    config = config_with_keys(tmp_path, address=HTTPS)
    server.assign([check("first", "ok.sh", plugins=plugins)])
    agent = agents.start(config)
    wait_for(lambda: server.results_for("first"), what="the first policy")
    return config, agent


def test_default_agent_over_http_refuses_even_a_signed_policy_and_says_what_to_set(
    tmp_path: Path, server: FakeServer, agents: Agents, plugins: Path,
) -> None:
    # A man in the middle of plain HTTP could send any policy with any key: trust none.
    server.assign([check("evil", "warn.sh", plugins=plugins)])
    agent = agents.start(config_with_keys(tmp_path))
    refusal_reported(server, "learns none over plain HTTP")
    message = agent._policy_error or ""
    assert "set server.policy_keys to the server's key" in message
    assert "server.insecure_accept_unsigned_policies: true" in message
    assert checks_of(agent) == [] and server.results_for("evil") == []
    assert not (tmp_path / PIN).exists()  # the key the reply announced is not pinned
    assert agent.status.snapshot()["policy_trust"].startswith("every policy refused")


def test_default_agent_refuses_a_policy_the_server_did_not_sign(
    tmp_path: Path, server: FakeServer, agents: Agents, plugins: Path,
) -> None:
    make_unsigned(server)  # a server with policy signing off: it announces no key either
    server.verified_tls = True
    server.assign([check("unsigned", "ok.sh", plugins=plugins)])
    agent = agents.start(config_with_keys(tmp_path, address=HTTPS))
    refusal_reported(server, "the server announced no policy key at registration")
    assert checks_of(agent) == [] and server.results_for("unsigned") == []
    assert not (tmp_path / PIN).exists()


def test_over_verified_tls_the_agent_pins_the_key_and_then_refuses_tampering(
    tmp_path: Path, server: FakeServer, agents: Agents, plugins: Path, key: Any,
) -> None:
    server.verified_tls = True
    server.assign([check("real", "ok.sh", plugins=plugins)])
    agent = agents.start(config_with_keys(tmp_path, address=HTTPS))
    wait_for(lambda: server.results_for("real"), what="the signed policy to run")
    pin = tmp_path / PIN
    assert json.loads(pin.read_text())["keys"] == [public(key)]
    assert pin.stat().st_mode & 0o777 == 0o600
    assert "pinned at registration" in agent.status.snapshot()["policy_trust"]

    make_tampered(server)
    server.assign([check("evil", "warn.sh", plugins=plugins)])
    refusal_reported(server, "does not verify")
    assert checks_of(agent) == ["real"] and server.results_for("evil") == []


def test_a_restarted_agent_keeps_trusting_its_pin_without_registering(
    tmp_path: Path, server: FakeServer, agents: Agents, plugins: Path,
) -> None:
    config, first = start_pinned_agent(tmp_path, server, agents, plugins)
    agents.stop(first)
    server.down = True  # the cached policy verifies with the pin at start, offline
    agent = agents.start(config)
    assert checks_of(agent) == ["first"]
    assert len(server.registrations) == 1


def test_a_changed_server_key_is_not_pinned_and_its_policies_wait_for_an_operator(
    tmp_path: Path, server: FakeServer, agents: Agents, plugins: Path, key: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config, agent = start_pinned_agent(tmp_path, server, agents, plugins)

    impostor = new_key()  # or a rotation nobody told the agents about
    server.policy_key = impostor
    server.forget_agents()  # the agent registers again and is told of the new key
    server.assign([check("second", "warn.sh", plugins=plugins)])
    with caplog.at_level(logging.ERROR, logger="agent.policy_trust"):
        refusal_reported(server, "differs from the one pinned")
    assert "the pin stays" in caplog.text
    assert json.loads((tmp_path / PIN).read_text())["keys"] == [public(key)]
    assert checks_of(agent) == ["first"] and server.results_for("second") == []

    # The operator acts: the new key goes into the configuration, and a reload trusts it.
    config.write_text(config.read_text().replace(
        "server:\n", f"server:\n  policy_keys: [{json.dumps(public(impostor))}]\n", 1))
    agent.reload()
    wait_for(lambda: server.results_for("second"), what="the new key's policy to run")


def test_a_damaged_pin_is_reported_and_never_silently_replaced(
    tmp_path: Path, server: FakeServer, agents: Agents, plugins: Path,
) -> None:
    server.verified_tls = True
    pin = tmp_path / PIN
    pin.parent.mkdir(parents=True)
    pin.write_text("{not json")
    server.assign([check("real", "ok.sh", plugins=plugins)])
    agent = agents.start(config_with_keys(tmp_path, address=HTTPS))
    refusal_reported(server, f"the pinned policy keys cannot be used (cannot read {pin}")
    assert pin.read_text() == "{not json"
    assert checks_of(agent) == []


def test_the_insecure_option_runs_unsigned_policies_and_says_so_loudly(
    tmp_path: Path, server: FakeServer, agents: Agents, plugins: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    make_unsigned(server)
    server.assign([check("plain", "ok.sh", plugins=plugins)])
    config = config_with_keys(
        tmp_path, extra_server="  insecure_accept_unsigned_policies: true\n")
    with caplog.at_level(logging.WARNING, logger="agent.runner"):
        agent = agents.start(config)
        wait_for(lambda: server.results_for("plain"), what="the unsigned policy to run")
    assert caplog.text.count("INSECURE: check policies from the server are NOT VERIFIED") == 1
    assert "NOT VERIFIED" in agent.status.snapshot()["policy_trust"]
    assert not (tmp_path / PIN).exists()


def test_check_once_with_the_default_configuration_refuses_over_http(
    tmp_path: Path, server: FakeServer, plugins: Path,
) -> None:
    server.assign([check("evil", "warn.sh", plugins=plugins)])
    with pytest.raises(AgentError, match="learns none over plain HTTP"):
        check_once(load_config(config_with_keys(tmp_path)), transport=server.transport())


def test_check_once_pins_over_verified_tls(
    tmp_path: Path, server: FakeServer, plugins: Path,
) -> None:
    server.verified_tls = True
    server.assign([check("real", "ok.sh", plugins=plugins)])
    config = load_config(config_with_keys(tmp_path, address=HTTPS))
    report = check_once(config, transport=server.transport())
    assert [r.check_id for r in report.results] == ["real"]
    assert (tmp_path / PIN).exists()


def test_keys_announced_over_tls_that_are_not_keys_are_not_pinned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from agent.policy_pin import PolicyKeyPin
    from agent.policy_trust import PolicyTrust
    from agent.transport.base import TokenGrant

    pin = PolicyKeyPin(tmp_path / "policy-keys.json")
    trust = PolicyTrust((), insecure=False, pin=pin, tls=True)
    grant = TokenGrant(access_token="a", refresh_token="r", policy_keys=("c2hvcnQ=",),
                       verified_tls=True)
    with caplog.at_level(logging.ERROR, logger="agent.policy_trust"):
        assert trust.learn(grant, HTTPS, 0.0) is False
    assert "not pinning the policy keys the server announced" in caplog.text
    assert not pin.path.exists()
    assert trust.describe().startswith("every policy refused: no policy key is pinned")
