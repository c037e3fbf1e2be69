"""agent/runner.py: the Agent wired with a fake server and the real executor, scheduler
and spool: results leave the spool only once accepted, checks follow the server live,
and a lost server costs nothing but delay."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from agent import cli
from agent import runner as runner_module
from agent.assignment import AssignmentCache
from agent.backoff import Backoff
from agent.config import Config, load_config
from agent.errors import AgentError, ConfigError, RequestRejected, RetryLater, TransportError
from agent.runner import Agent, check_once
from agent.scheduler import splay_offset
from agent.spool import Spool
from tests.agent.fakes import TEST_POLICY_PUBLIC_KEY, FakeServer, signed_assignment, wait_for

SCRIPTS = {
    "ok.sh": 'echo "OK - all good | load=0.5;1;2"\n',
    "warn.sh": 'echo "WARNING - getting full"\nexit 1\n',
    "slow.sh": 'sleep 0.6\necho "OK - slow but fine"\n',
}


@pytest.fixture
def plugins(tmp_path: Path) -> Path:
    directory = tmp_path / "plugins"
    directory.mkdir()
    for name, body in SCRIPTS.items():
        script = directory / name
        script.write_text(f"#!/bin/sh\n{body}")
        script.chmod(0o755)
    return directory


def write_config(tmp_path: Path, extra: str = "", token: str = "aami_bt_test",
                 address: str = "aami.invalid:8080",
                 policy_keys: Sequence[str] = (TEST_POLICY_PUBLIC_KEY,)) -> Path:
    """An agent.yaml for a FakeServer; it trusts the FakeServer's default policy key."""
    path = tmp_path / "agent.yaml"
    token_line = f"bootstrap_token: {token}" if token else ""
    keys_line = f"policy_keys: {json.dumps(list(policy_keys))}" if policy_keys else ""
    path.write_text(textwrap.dedent(f"""\
        server:
          address: {address}
          {token_line}
          {keys_line}
        agent:
          id_file: {tmp_path}/agent-id
          state_dir: {tmp_path}/state
          labels: {{env: test}}
          shutdown_grace: 3s
        heartbeat: {{interval: 1s, timeout: 2s}}
        checks:
          allowed_paths: [{tmp_path}/plugins]
          default_timeout: 5s
          max_concurrent: 4
          run_as: root  # the plugins live in pytest's private (0700) temporary directory
          # What the shell-script plugins run, past the exec containment (Landlock).
          allowed_executables: [/bin/sh, /usr/bin/sleep]
        results: {{batch_size: 5, flush_interval: 100ms}}
        logging: {{level: debug, format: text}}
    """) + textwrap.dedent(extra))
    return path


def cache_assignment(tmp_path: Path, checks: list[Any], version: str = "v1") -> None:
    """Leave a signed assignment in the agent's cache, as an earlier run would have."""
    id_file = tmp_path / "agent-id"
    if not id_file.exists():
        id_file.write_text(f"{uuid.uuid4()}\n")
    AssignmentCache(tmp_path / "state" / "assignment.json").save(
        signed_assignment(id_file.read_text().strip(), checks, version=version))


def check(check_id: str, script: str, interval: str = "1s", plugins: Path | None = None,
          **extra: Any) -> dict[str, Any]:
    assert plugins is not None
    return {"id": check_id, "name": check_id, "command": [str(plugins / script)],
            "interval": interval, "timeout": "5s", **extra}


def fast_backoff() -> Backoff:
    return Backoff(base=0.05, cap=0.2)


class Harness:
    """Builds Agents on one config and one fake server; stops whatever it started."""

    def __init__(self, tmp_path: Path, server: FakeServer) -> None:
        self.tmp_path = tmp_path
        self.server = server
        self.config_path = write_config(tmp_path)
        self.agents: list[Agent] = []

    @property
    def config(self) -> Config:
        return load_config(self.config_path)

    def agent(self, start: bool = True) -> Agent:
        agent = Agent(self.config, transport=self.server.transport(), backoff=fast_backoff)
        self.agents.append(agent)
        if start:
            agent.start()
        return agent

    def stop(self, agent: Agent, grace: float = 3.0) -> None:
        agent.shutdown(grace)
        self.agents.remove(agent)

    def spool_depth(self) -> int:
        spool = Spool(self.tmp_path / "state" / "spool.db", 10**8)
        try:
            return spool.depth()
        finally:
            spool.close()


@pytest.fixture
def server() -> FakeServer:
    return FakeServer()


@pytest.fixture
def harness(tmp_path: Path, server: FakeServer, plugins: Path) -> Iterator[Harness]:
    h = Harness(tmp_path, server)
    yield h
    for agent in list(h.agents):
        agent.shutdown(0.5)


def delivered_ids(server: FakeServer) -> list[str]:
    return [r["result_id"] for r in server.accepted]


# -- results: spool, acknowledgement, retries --------------------------------------------


def test_results_are_kept_while_the_server_fails_and_sent_once_it_accepts(
    harness: Harness, server: FakeServer, plugins: Path
) -> None:
    server.assign([check("ok", "ok.sh", plugins=plugins)])
    server.push_error = TransportError("HTTP 503 (fake)")
    agent = harness.agent()

    wait_for(lambda: agent.spool.depth() >= 2 and server.push_attempts >= 2,
             what="results piling up in the spool")
    assert server.accepted == []  # nothing acked: nothing accepted

    server.push_error = None
    wait_for(lambda: agent.spool.depth() == 0 and server.accepted, what="the spool draining")
    ids = delivered_ids(server)
    assert len(ids) == len(set(ids))  # each result sent until accepted, then never again
    first = server.accepted[0]
    assert first["check_id"] == "ok" and first["status"] == "ok"
    assert first["perfdata"][0]["label"] == "load"
    assert {"result_id", "exit_code", "output", "duration_ms", "executed_at"} <= set(first)


class _Longest(random.Random):
    """Backoff with no jitter: always the longest delay."""

    def uniform(self, a: float, b: float) -> float:
        return b


def test_when_the_server_returns_the_first_loop_through_wakes_the_sender(
    tmp_path: Path, server: FakeServer, plugins: Path
) -> None:
    # The heartbeat retries every 0.1 s; the sender would back off for a whole minute.
    def backoff() -> Backoff:
        if threading.current_thread().name == "aami-heartbeat":
            return Backoff(base=0.1, cap=0.1)
        return Backoff(base=60.0, cap=60.0, rng=_Longest())

    config = write_config(tmp_path)
    # Big batches: no full batch wakes the sender early while results pile up.
    config.write_text(config.read_text().replace("batch_size: 5", "batch_size: 500"))
    server.assign([check("ok", "ok.sh", plugins=plugins)])
    agent = Agent(load_config(config), transport=server.transport(), backoff=backoff)
    agent.start()
    try:
        wait_for(lambda: server.accepted, what="a first result")
        server.down = True
        wait_for(lambda: agent.spool.depth() >= 2, what="results piling up in the spool")
        server.down = False
        wait_for(lambda: agent.spool.depth() == 0, timeout=5, what="the spool draining")
    finally:
        agent.shutdown(0.5)


def test_refused_batches_are_acked_and_counted_as_dropped(
    harness: Harness, server: FakeServer, plugins: Path
) -> None:
    server.assign([check("ok", "ok.sh", plugins=plugins)])
    server.push_error = RequestRejected("HTTP 422 invalid (fake)")
    agent = harness.agent()

    wait_for(lambda: agent.dropped_results() >= 1, what="a refused batch to be dropped")
    assert agent.spool.depth() <= 1  # dropped, not retried forever
    wait_for(lambda: any(b["dropped_results"] >= 1 for b in server.heartbeats),
             what="the heartbeat to report the drop")


def test_entries_rejected_inside_an_accepted_batch_are_acked(
    harness: Harness, server: FakeServer, plugins: Path
) -> None:
    server.assign([check("ok", "ok.sh", plugins=plugins),
                   check("gone", "ok.sh", plugins=plugins)])
    server.reject_check_ids.add("gone")
    agent = harness.agent()

    wait_for(lambda: server.results_for("ok") and server.rejected, what="a mixed batch")
    wait_for(lambda: agent.spool.depth() == 0, what="the spool to drain")
    assert len(server.rejected) == len(set(server.rejected))  # never sent again
    assert agent.dropped_results() == 0  # the server's verdict, not a loss


def test_batches_are_at_most_batch_size_oldest_first(
    harness: Harness, server: FakeServer, plugins: Path
) -> None:
    state = harness.tmp_path / "state"
    state.mkdir()
    spool = Spool(state / "spool.db", 10**7)
    old = [{"result_id": f"r{i:02d}", "check_id": "old", "status": "ok", "exit_code": 0,
            "output": "", "perfdata": [], "duration_ms": 1,
            "executed_at": "2026-01-01T00:00:00.000Z"} for i in range(12)]
    spool.append(old)
    spool.close()
    sizes: list[int] = []
    original = server.push_results

    def recording(agent_id: str, token: str, results: Any, timeout: Any = None) -> Any:
        sizes.append(len(results))
        return original(agent_id, token, results, timeout)

    server.push_results = recording  # type: ignore[method-assign,assignment]
    harness.agent()

    wait_for(lambda: len(server.accepted) >= 12, what="the old results delivered")
    assert delivered_ids(server)[:12] == [r["result_id"] for r in old]
    assert sizes[:3] == [5, 5, 2]


def test_retry_after_is_honoured_by_the_sender(harness: Harness, server: FakeServer) -> None:
    state = harness.tmp_path / "state"
    state.mkdir()
    spool = Spool(state / "spool.db", 10**7)
    spool.append([{"result_id": f"r{i}", "check_id": "old", "status": "ok"} for i in range(3)])
    spool.close()
    server.push_error = RetryLater("HTTP 429 (fake)", retry_after=1.0)
    agent = harness.agent()

    wait_for(lambda: server.push_attempts >= 1, what="the first push")
    first = time.monotonic()
    server.push_error = None
    agent._wake_sender.set()  # even a wake-up must not hurry the retry
    wait_for(lambda: len(server.accepted) == 3, what="the retried push")
    assert time.monotonic() - first >= 0.9


def test_spool_survives_a_restart_of_the_agent(
    harness: Harness, server: FakeServer, plugins: Path
) -> None:
    server.assign([check("ok", "ok.sh", plugins=plugins)])
    server.push_error = TransportError("connection reset (fake)")
    first = harness.agent()
    wait_for(lambda: first.spool.depth() >= 2, what="results spooled")
    harness.stop(first, grace=1.0)
    kept = harness.spool_depth()
    assert kept >= 2

    pending = Spool(harness.tmp_path / "state" / "spool.db", 10**8)
    kept_ids = [r["result_id"] for _, r in pending.peek(100)]
    pending.close()

    server.push_error = None
    harness.agent()
    wait_for(lambda: set(kept_ids) <= set(delivered_ids(server)),
             what="the previous run's results delivered")
    assert len(server.registrations) == 1  # credentials survived the restart too


# -- the assignment: live updates, cache, invalid entries ---------------------------------


def test_assignment_changes_apply_live(
    harness: Harness, server: FakeServer, plugins: Path
) -> None:
    server.assign([check("first", "ok.sh", plugins=plugins)])
    agent = harness.agent()
    wait_for(lambda: server.results_for("first"), what="the first check to report")

    server.assign([check("second", "warn.sh", plugins=plugins)])
    wait_for(lambda: server.results_for("second"), what="the new check to report")
    assert server.results_for("second")[0]["status"] == "warning"
    assert [c["check_id"] for c in agent.scheduler.snapshot()] == ["second"]
    cached = AssignmentCache(harness.tmp_path / "state" / "assignment.json").load()
    assert cached is not None and cached.etag == server.etag
    assert [c["id"] for c in cached.checks] == ["second"]
    # the long-poll handed the ETag back and asked the server to wait
    assert any(etag == '"v1"' and wait >= 10 for etag, wait in server.polls)


def test_invalid_checks_from_the_server_are_skipped_and_reported(
    harness: Harness, server: FakeServer, plugins: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server.assign([
        {"id": "broken", "command": "not a list", "interval": "1s"},
        {"id": "bad-interval", "command": [str(plugins / "ok.sh")], "interval": "often"},
        "not even an object",
        check("good", "ok.sh", plugins=plugins),
    ])
    with caplog.at_level(logging.ERROR, logger="agent.runner"):
        harness.agent()
        wait_for(lambda: server.results_for("good"), what="the valid check to run")
    assert "broken" in caplog.text and "bad-interval" in caplog.text
    wait_for(lambda: any(b["policy_error"] for b in server.heartbeats), what="policy_error")
    policy_error = next(b["policy_error"] for b in server.heartbeats if b["policy_error"])
    assert "command must be a non-empty list" in policy_error


def test_cached_assignment_runs_when_the_server_is_unreachable_at_start(
    harness: Harness, server: FakeServer, plugins: Path
) -> None:
    cache_assignment(harness.tmp_path, [check("cached", "ok.sh", plugins=plugins)], "v7")
    server.down = True

    agent = harness.agent()
    wait_for(lambda: agent.spool.depth() >= 1, what="the cached check to run offline")
    assert server.accepted == [] and server.registrations == []

    server.down = False
    server.assign([check("cached", "ok.sh", plugins=plugins)])
    wait_for(lambda: server.results_for("cached") and server.polls,
             what="offline results delivered")
    assert server.polls[0][0] == '"v7"'  # asked with the cached ETag


def test_forced_check_command_runs_the_check_now(
    tmp_path: Path, harness: Harness, server: FakeServer, plugins: Path
) -> None:
    # An agent id whose first hourly run is well beyond the test's horizon.
    agent_id = next(str(u) for u in iter(uuid.uuid4, None)
                    if splay_offset(str(u), "hourly", 3600) > 30)
    (tmp_path / "agent-id").write_text(agent_id + "\n")
    server.assign([check("hourly", "ok.sh", interval="1h", plugins=plugins)])
    harness.agent()
    wait_for(lambda: server.heartbeats and server.polls, what="the agent to connect")

    server.queue_command("no-such-check")  # logged, ignored
    server.queue_command("hourly")
    wait_for(lambda: server.results_for("hourly"), timeout=5, what="the forced run")
    assert len(server.results_for("hourly")) == 1


# -- registration and tokens ------------------------------------------------------------


def test_registration_carries_identity_labels_and_version(
    harness: Harness, server: FakeServer
) -> None:
    agent = harness.agent()
    wait_for(lambda: server.heartbeats, what="a heartbeat")
    registration = server.registrations[0]
    assert registration.agent_id == agent.agent_id
    assert registration.token == "aami_bt_test"
    assert dict(registration.labels) == {"env": "test"}
    assert registration.agent_version == agent.version
    beat = server.heartbeats[0]
    assert beat["version"] == agent.version
    assert {"uptime_s", "spool_depth", "dropped_results", "running_checks"} <= set(beat)
    credentials = json.loads((harness.tmp_path / "state" / "credentials.json").read_text())
    assert credentials["agent_id"] == agent.agent_id


def test_heartbeats_carry_the_instance_id_kept_across_restarts(
    harness: Harness, server: FakeServer
) -> None:
    agent = harness.agent()
    wait_for(lambda: server.heartbeats, what="a heartbeat")
    instance_id = server.heartbeats[0]["instance_id"]
    assert isinstance(instance_id, str) and len(instance_id) == 32
    assert (harness.tmp_path / "state" / "instance.id").is_file()
    assert agent.instance_id == instance_id
    # A restart builds the agent anew from the same state directory.
    assert harness.agent(start=False).instance_id == instance_id


def test_unregistered_agent_without_bootstrap_token_stops_at_start(
    tmp_path: Path, server: FakeServer, plugins: Path
) -> None:
    config = load_config(write_config(tmp_path, token=""))
    agent = Agent(config, transport=server.transport())
    with pytest.raises(ConfigError, match="server.bootstrap_token"):
        agent.start()
    agent.spool.close()


def test_expired_token_is_refreshed_and_a_forgotten_agent_registers_again(
    harness: Harness, server: FakeServer
) -> None:
    harness.agent()
    wait_for(lambda: server.heartbeats, what="a heartbeat")

    server.expire_tokens()
    beats = len(server.heartbeats)
    wait_for(lambda: len(server.heartbeats) > beats, what="a heartbeat after refresh")
    assert server.refreshes >= 1
    assert len(server.registrations) == 1

    server.forget_agents()
    beats = len(server.heartbeats)
    wait_for(lambda: len(server.heartbeats) > beats, what="a heartbeat after re-registering")
    assert len(server.registrations) == 2


# -- reload, status, shutdown --------------------------------------------------------------


def test_reload_applies_live_settings_and_keeps_the_old_config_on_errors(
    harness: Harness, server: FakeServer, plugins: Path
) -> None:
    agent = harness.agent()
    text = harness.config_path.read_text()
    harness.config_path.write_text(
        text.replace("max_concurrent: 4", "max_concurrent: 2")
            .replace("labels: {env: test}", "labels: {env: prod}")
            .replace("level: debug", "level: warning"))

    agent.reload()

    assert agent.config.checks.max_concurrent == 2
    assert dict(agent.config.agent.labels) == {"env": "prod"}
    assert logging.getLogger().level == logging.WARNING

    harness.config_path.write_text(text.replace("interval: 1s", "interval: soon"))
    agent.reload()  # logged, not raised
    assert agent.config.checks.max_concurrent == 2


def test_status_file_and_status_command(
    harness: Harness, server: FakeServer, plugins: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server.assign([check("ok", "ok.sh", plugins=plugins)])
    agent = harness.agent()
    status_path = harness.tmp_path / "state" / "status.json"
    wait_for(lambda: status_path.exists() and json.loads(status_path.read_text())
             .get("checks", {}).get("ok", {}).get("status") == "ok"
             and json.loads(status_path.read_text())["connected"], what="status.json")

    status = json.loads(status_path.read_text())
    assert status["agent_id"] == agent.agent_id
    assert status["pid"] == os.getpid()
    assert status["config_version"] == "v1"
    assert status["checks"]["ok"]["output"] == "OK - all good"
    assert status["checks"]["ok"]["next_due"]
    assert "spool_depth" in status and "dropped_results" in status

    assert cli.main(["status", "-c", str(harness.config_path)]) == 0
    out = capsys.readouterr().out
    assert "running (pid" in out and "OK - all good" in out

    harness.stop(agent)
    assert cli.main(["status", "-c", str(harness.config_path), "--json"]) == 3
    printed = json.loads(capsys.readouterr().out)
    assert printed["running"] is False and printed["state"] == "stopped"


def test_status_command_without_a_status_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path)
    assert cli.main(["status", "-c", str(path)]) == 3
    assert "no status file" in capsys.readouterr().err


def test_shutdown_lets_a_running_check_finish_and_flushes_its_result(
    harness: Harness, server: FakeServer, plugins: Path
) -> None:
    server.assign([check("slow", "slow.sh", interval="1h", plugins=plugins)])
    agent = harness.agent()
    wait_for(lambda: server.polls, what="the assignment")
    server.queue_command("slow")
    wait_for(lambda: agent.scheduler.running_count() == 1, what="the slow check to start")

    harness.stop(agent, grace=3.0)

    assert [r["check_id"] for r in server.accepted] == ["slow"]
    assert harness.spool_depth() == 0


def test_run_returns_0_after_a_stop_request(harness: Harness, server: FakeServer) -> None:
    agent = harness.agent(start=False)
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(agent.run()))
    thread.start()
    wait_for(lambda: server.heartbeats, what="a heartbeat")
    agent.request_reload()
    agent.request_stop()
    thread.join(timeout=10)
    harness.agents.remove(agent)
    assert codes == [0]


def test_aami_agent_run_exits_0_on_sigterm(tmp_path: Path, plugins: Path) -> None:
    # Nobody listens on the server address: the agent keeps retrying and still stops
    # cleanly, with its cached checks run meanwhile.
    config = write_config(tmp_path, address="127.0.0.1:9")
    cache_assignment(tmp_path, [check("ok", "ok.sh", plugins=plugins)])
    script = Path(sys.executable).with_name("aami-agent")
    proc = subprocess.Popen([str(script), "run", "-c", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        status_path = tmp_path / "state" / "status.json"
        wait_for(lambda: status_path.exists()
                 and "ok" in json.loads(status_path.read_text()).get("checks", {}),
                 timeout=10, what="the agent to run its cached check")
        rss_kb = _rss_kb(proc.pid)
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert "configuration reloaded" in stderr
    assert json.loads(status_path.read_text())["state"] == "stopped"
    assert rss_kb < 40 * 1024, f"resident memory {rss_kb} kB"


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


# -- check --once --------------------------------------------------------------------------


def test_check_once_runs_the_assignment_from_the_server(
    tmp_path: Path, server: FakeServer, plugins: Path
) -> None:
    server.assign([check("ok", "ok.sh", plugins=plugins), check("warn", "warn.sh",
                                                               plugins=plugins)])
    config = load_config(write_config(tmp_path))

    report = check_once(config, transport=server.transport())

    assert sorted((r.check_id, r.status) for r in report.results) == [
        ("ok", "ok"), ("warn", "warning")]
    assert "server" in report.source and "v1" in report.source
    assert server.accepted == []  # check --once reports locally, it does not push


def test_check_once_falls_back_to_the_cached_assignment(
    tmp_path: Path, server: FakeServer, plugins: Path
) -> None:
    config = load_config(write_config(tmp_path))
    cache_assignment(tmp_path, [check("ok", "ok.sh", plugins=plugins)])
    server.down = True

    report = check_once(config, transport=server.transport())

    assert [r.status for r in report.results] == ["ok"]
    assert "cached assignment" in report.source and "connection refused" in report.source


def test_check_once_without_server_or_cache_is_an_error(
    tmp_path: Path, server: FakeServer
) -> None:
    server.down = True
    with pytest.raises(AgentError, match="no cached assignment"):
        check_once(load_config(write_config(tmp_path)), transport=server.transport())


def test_check_once_cli_exit_code_is_the_worst_status(
    tmp_path: Path, plugins: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, address="127.0.0.1:9")
    cache_assignment(tmp_path, [check("ok", "ok.sh", plugins=plugins),
                                check("warn", "warn.sh", plugins=plugins)])

    assert cli.main(["check", "--once", "-c", str(config)]) == 1

    out = capsys.readouterr().out
    assert "cached assignment" in out
    assert "WARNING - getting full" in out and "OK - all good" in out


def test_a_status_file_that_cannot_be_written_is_logged_once_until_it_can(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    agent = harness.agent(start=False)
    full = OSError(28, "No space left on device")

    def disk_full(*_args: object, **_kwargs: object) -> None:
        raise full

    with monkeypatch.context() as patched:
        patched.setattr(runner_module, "write_json", disk_full)
        with caplog.at_level(logging.INFO, logger="agent.runner"):
            for _ in range(5):
                agent._write_status()
    complaints = [r for r in caplog.records if "cannot write" in r.getMessage()]
    assert len(complaints) == 1, [r.getMessage() for r in caplog.records]
    assert "No space left on device" in complaints[0].getMessage()
    assert complaints[0].exc_info is None  # a reason, not a traceback

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="agent.runner"):
        agent._write_status()
    assert (harness.tmp_path / "state" / "status.json").exists()
    assert any("writing" in r.getMessage() and "again" in r.getMessage()
               for r in caplog.records)
