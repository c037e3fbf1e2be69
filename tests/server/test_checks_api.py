"""Checks: admin CRUD under /api/v1/checks, and the agent's view GET /checks/target/{id}."""

from __future__ import annotations

import threading
import time

import pytest

from server import create_app, migrate
from server.db import get_database
from server.services import commands, tokens
from tests.server.conftest import assert_error, bearer, new_agent_id

DISK = ["/usr/lib/nagios/plugins/check_disk", "-w", "20%", "-c", "10%", "-p", "/"]


@pytest.fixture
def make_check(client, admin_headers):
    def make(check_id, **fields):
        body = {"id": check_id, "command": DISK, **fields}
        reply = client.post("/api/v1/checks", json=body, headers=admin_headers)
        assert reply.status_code == 201, reply.get_json()
        return reply.get_json()

    return make


@pytest.fixture
def agent(register):
    return register(agent_id=new_agent_id())


def _assigned(client, agent, headers=None, **params):
    return client.get(
        f"/api/v1/checks/target/{agent['agent_id']}",
        headers={**bearer(agent["access_token"]), **(headers or {})},
        query_string=params,
    )


def _assigned_ids(client, agent):
    reply = _assigned(client, agent)
    assert reply.status_code == 200, reply.get_json()
    return [c["id"] for c in reply.get_json()["checks"]]


# --- CRUD -------------------------------------------------------------------------------------


def test_create_check_fills_in_defaults(client, admin_headers):
    reply = client.post(
        "/api/v1/checks", json={"id": "disk", "command": DISK}, headers=admin_headers
    )
    assert reply.status_code == 201, reply.get_json()
    check = reply.get_json()
    assert check["name"] == "disk"
    assert check["command"] == DISK
    assert (check["interval"], check["timeout"]) == ("1m", "30s")
    assert check["enabled"] is True
    assert check["assign"] == {"target_ids": [], "group_ids": [], "labels": {}}
    assert client.get("/api/v1/checks/disk", headers=admin_headers).get_json() == check


def test_list_checks_in_id_order(client, admin_headers, make_check):
    for check_id in ("zeta", "alpha", "mid"):
        make_check(check_id)
    reply = client.get("/api/v1/checks", headers=admin_headers)
    assert [c["id"] for c in reply.get_json()] == ["alpha", "mid", "zeta"]


def test_create_check_with_an_existing_id_is_a_conflict(client, admin_headers, make_check):
    make_check("disk", name="first")
    reply = client.post(
        "/api/v1/checks",
        json={"id": "disk", "command": DISK, "name": "second"},
        headers=admin_headers,
    )
    assert_error(reply, 409, "conflict", mentions="PATCH /api/v1/checks/disk")
    assert client.get("/api/v1/checks/disk", headers=admin_headers).get_json()["name"] == "first"


def test_create_check_with_timeout_over_interval_is_accepted(client, admin_headers):
    # Runs never overlap (the agent skips a run that comes due meanwhile) and the stale
    # sweep allows twice the interval plus the timeout, so a slow check is no error.
    reply = client.post(
        "/api/v1/checks",
        json={"id": "slow", "command": DISK, "interval": "10s", "timeout": "20s"},
        headers=admin_headers,
    )
    assert reply.status_code == 201, reply.get_json()
    assert (reply.get_json()["interval"], reply.get_json()["timeout"]) == ("10s", "20s")


def test_patch_changes_only_the_fields_sent(client, admin_headers, make_check):
    before = make_check(
        "disk",
        name="Disk",
        interval="2m",
        timeout="10s",
        env={"LANG": "C"},
        limits={"memory_mb": 64},
        assign={"labels": {"role": "db"}},
    )
    reply = client.patch("/api/v1/checks/disk", json={"name": "Disk space"}, headers=admin_headers)
    assert reply.status_code == 200, reply.get_json()
    after = reply.get_json()
    assert after["name"] == "Disk space"
    unchanged = ("command", "interval", "timeout", "env", "limits", "assign", "enabled")
    assert {k: after[k] for k in unchanged} == {k: before[k] for k in unchanged}


def test_patch_timeout_and_interval_apply_independently(client, admin_headers, make_check):
    make_check("disk", interval="2m", timeout="10s")
    longer = client.patch("/api/v1/checks/disk", json={"timeout": "3m"}, headers=admin_headers)
    assert longer.status_code == 200, longer.get_json()
    shorter = client.patch("/api/v1/checks/disk", json={"interval": "1m"}, headers=admin_headers)
    assert shorter.status_code == 200, shorter.get_json()
    stored = client.get("/api/v1/checks/disk", headers=admin_headers).get_json()
    assert (stored["interval"], stored["timeout"]) == ("1m", "3m")


def test_patch_shell_against_a_stored_plugin_command_is_a_conflict(
    client, admin_headers, make_check
):
    make_check("disk", command=[DISK[0], "-w", "10%"])
    reply = client.patch("/api/v1/checks/disk", json={"shell": True}, headers=admin_headers)
    assert_error(reply, 409, "conflicts_with_stored_check", mentions="send command and shell")
    assert reply.get_json()["error"]["fields"] == {
        "command": ["must hold exactly one shell command line"]
    }
    both = client.patch(
        "/api/v1/checks/disk", json={"shell": True, "command": ["df -h /"]}, headers=admin_headers
    )
    assert both.status_code == 200, both.get_json()


def test_patch_name_null_falls_back_to_the_id(client, admin_headers, make_check):
    make_check("disk", name="Disk")
    reply = client.patch("/api/v1/checks/disk", json={"name": None}, headers=admin_headers)
    assert reply.status_code == 200, reply.get_json()
    assert reply.get_json()["name"] == "disk"


def test_patch_or_delete_of_an_unknown_check_is_404(client, admin_headers):
    patched = client.patch("/api/v1/checks/nope", json={"name": "x"}, headers=admin_headers)
    assert_error(patched, 404, "not_found", mentions="nope")
    assert_error(client.delete("/api/v1/checks/nope", headers=admin_headers), 404, "not_found")


def test_delete_check_removes_it_from_agents(client, admin_headers, make_check, agent):
    make_check("disk", assign={"target_ids": [agent["agent_id"]]})
    assert _assigned_ids(client, agent) == ["disk"]
    reply = client.delete("/api/v1/checks/disk", headers=admin_headers)
    assert reply.status_code == 204
    assert reply.data == b""
    assert_error(client.get("/api/v1/checks/disk", headers=admin_headers), 404, "not_found")
    assert _assigned_ids(client, agent) == []


# --- assignment ---------------------------------------------------------------------------------


def test_agent_sees_exactly_the_checks_assigned_to_it(
    make_group, client, admin_headers, make_check, register, make_bootstrap_token
):
    make_group("web")
    web = register(token=make_bootstrap_token(group_id="web"), labels={"role": "db"})
    plain = register()
    labelled = register(labels={"role": "cache"})
    make_check("by-id", assign={"target_ids": [web["agent_id"]]})
    make_check("by-group", assign={"group_ids": ["web"]})
    make_check("by-label", assign={"labels": {"role": "db"}})
    make_check("for-plain", assign={"target_ids": [plain["agent_id"]]})
    make_check("off", enabled=False, assign={"target_ids": [web["agent_id"]]})
    make_check("nobody")

    assert _assigned_ids(client, web) == ["by-group", "by-id", "by-label"]
    assert _assigned_ids(client, plain) == ["for-plain"]
    assert _assigned_ids(client, labelled) == []


def test_assignment_reply_has_the_documented_shape(client, make_check, agent):
    make_check(
        "disk",
        name="Disk space",
        interval="60s",
        timeout="10s",
        limits={"cpu_seconds": 10, "memory_mb": 256},
        env={"LANG": "C"},
        assign={"target_ids": [agent["agent_id"]]},
    )
    reply = _assigned(client, agent)
    body = reply.get_json()
    assert body["target_id"] == agent["agent_id"]
    assert reply.headers["ETag"] == f'"{body["config_version"]}"'
    assert reply.headers["Cache-Control"] == "no-cache"
    assert body["commands"] == []
    assert body["checks"] == [
        {
            "id": "disk",
            "name": "Disk space",
            "command": DISK,
            "interval": "1m",
            "timeout": "10s",
            "limits": {"cpu_seconds": 10, "memory_mb": 256},
            "env": {"LANG": "C"},
            "shell": False,
        }
    ]


def test_etag_changes_when_the_assignment_changes(client, admin_headers, make_check, agent):
    empty = _assigned(client, agent).headers["ETag"]
    make_check("disk", assign={"target_ids": [agent["agent_id"]]})
    assigned = _assigned(client, agent).headers["ETag"]
    client.patch(
        "/api/v1/checks/disk", json={"command": [*DISK, "-x", "/tmp"]}, headers=admin_headers
    )
    changed = _assigned(client, agent).headers["ETag"]
    client.patch("/api/v1/checks/disk", json={"assign": {}}, headers=admin_headers)
    unassigned = _assigned(client, agent).headers["ETag"]
    assert len({empty, assigned, changed}) == 3
    assert unassigned == empty


def test_unchanged_assignment_answers_304_to_if_none_match(client, make_check, agent):
    make_check("disk", assign={"target_ids": [agent["agent_id"]]})
    etag = _assigned(client, agent).headers["ETag"]
    again = _assigned(client, agent, headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.data == b""
    assert again.headers["ETag"] == etag
    stale = _assigned(client, agent, headers={"If-None-Match": '"something-older"'})
    assert stale.status_code == 200
    assert stale.get_json()["checks"][0]["id"] == "disk"


def test_admin_can_read_an_agents_assignment(client, admin_headers, make_check, agent):
    make_check("disk", assign={"target_ids": [agent["agent_id"]]})
    reply = client.get(f"/api/v1/checks/target/{agent['agent_id']}", headers=admin_headers)
    assert reply.status_code == 200
    assert [c["id"] for c in reply.get_json()["checks"]] == ["disk"]


def test_assignment_of_an_unknown_target_is_404(client, admin_headers):
    reply = client.get(f"/api/v1/checks/target/{new_agent_id()}", headers=admin_headers)
    assert_error(reply, 404, "target_not_found")


# --- long-poll ------------------------------------------------------------------------------------


class LongPoll:
    """One ``?wait=`` request in a thread of its own, on a client of its own."""

    def __init__(self, app, agent, etag, wait):
        self.parked = threading.Event()
        notifier = app.extensions["aami.notifier"]
        real_wait = notifier.wait

        def spy(since, timeout, *args):
            self.parked.set()
            return real_wait(since, timeout, *args)

        notifier.wait = spy
        self.reply = None
        self.elapsed = None
        client = app.test_client()

        def run():
            started = time.monotonic()
            self.reply = _assigned(client, agent, headers={"If-None-Match": etag}, wait=wait)
            self.elapsed = time.monotonic() - started

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert self.parked.wait(3), "the long-poll never parked"

    def result(self):
        self.thread.join(10)
        assert not self.thread.is_alive()
        return self.reply


def test_long_poll_returns_soon_after_an_admin_changes_the_assignment(
    app, client, admin_headers, make_check, agent
):
    make_check("disk", assign={"target_ids": [agent["agent_id"]]})
    etag = _assigned(client, agent).headers["ETag"]
    poll = LongPoll(app, agent, etag, wait=5)
    started = time.monotonic()
    changed = client.patch("/api/v1/checks/disk", json={"interval": "2m"}, headers=admin_headers)
    assert changed.status_code == 200
    reply = poll.result()
    assert time.monotonic() - started < 1.0
    assert reply.status_code == 200
    assert reply.headers["ETag"] != etag
    assert reply.get_json()["checks"][0]["interval"] == "2m"


def test_long_poll_returns_soon_after_the_targets_labels_change(
    app, client, admin_headers, make_check, agent
):
    make_check("disk", assign={"labels": {"role": "db"}})
    etag = _assigned(client, agent).headers["ETag"]
    poll = LongPoll(app, agent, etag, wait=5)
    started = time.monotonic()
    client.patch(
        f"/api/v1/targets/{agent['agent_id']}",
        json={"labels": {"role": "db"}},
        headers=admin_headers,
    )
    reply = poll.result()
    assert time.monotonic() - started < 1.0
    assert [c["id"] for c in reply.get_json()["checks"]] == ["disk"]


def test_long_poll_answers_304_after_the_wait_when_nothing_changes(app, client, agent):
    etag = _assigned(client, agent).headers["ETag"]
    poll = LongPoll(app, agent, etag, wait=1)
    reply = poll.result()
    assert reply.status_code == 304
    # The wait is jittered down by at most 15 % so a fleet does not expire in lockstep.
    assert 0.8 <= poll.elapsed < 2.5


def test_long_poll_is_woken_by_a_queued_command(app, client, make_check, agent):
    make_check("disk", assign={"target_ids": [agent["agent_id"]]})
    etag = _assigned(client, agent).headers["ETag"]
    poll = LongPoll(app, agent, etag, wait=5)
    started = time.monotonic()
    queued = commands.queue_command(
        app.extensions["aami.redis"], agent["agent_id"], {"type": "run_check", "check_id": "disk"}
    )
    reply = poll.result()
    assert time.monotonic() - started < 1.0
    assert reply.status_code == 200
    assert reply.get_json()["commands"] == [queued]
    assert reply.headers["ETag"] == etag  # the assignment itself did not change
    # Delivered once: the next heartbeat does not carry it again.
    beat = client.post(
        f"/api/v1/agents/{agent['agent_id']}/heartbeat",
        json={"version": "0.1.0"},
        headers=bearer(agent["access_token"]),
    )
    assert beat.get_json()["commands"] == []


def test_long_poll_wait_is_capped_by_the_server(tmp_path):
    app = create_app(
        {"DATA_DIR": str(tmp_path / "capped"), "LOG_LEVEL": "warning", "LONGPOLL_MAX_WAIT": 1}
    )
    migrate.upgrade(app.extensions["aami.settings"].database_url())
    with get_database(app).session() as session:
        secret = tokens.create_bootstrap_token(session, name="t").secret
    client = app.test_client()
    agent = client.post(
        "/api/v1/bootstrap-tokens/register", json={"token": secret, "hostname": "h"}
    ).get_json()
    etag = _assigned(client, agent).headers["ETag"]
    started = time.monotonic()
    reply = _assigned(client, agent, headers={"If-None-Match": etag}, wait=30)
    assert reply.status_code == 304
    assert time.monotonic() - started < 2.0


def test_weak_if_none_match_from_a_proxy_still_answers_304(client, make_check, agent):
    # Proxies that compress (nginx gzip) weaken ETags; If-None-Match compares weakly.
    make_check("disk", assign={"target_ids": [agent["agent_id"]]})
    etag = _assigned(client, agent).headers["ETag"]
    reply = _assigned(client, agent, headers={"If-None-Match": f"W/{etag}"})
    assert reply.status_code == 304


def test_long_poll_of_a_target_deleted_meanwhile_answers_404(app, client, admin_headers, agent):
    etag = _assigned(client, agent).headers["ETag"]
    poll = LongPoll(app, agent, etag, wait=5)
    started = time.monotonic()
    deleted = client.delete(f"/api/v1/targets/{agent['agent_id']}", headers=admin_headers)
    assert deleted.status_code == 204
    reply = poll.result()
    assert time.monotonic() - started < 1.0
    assert_error(reply, 404, "target_not_found")


def test_admin_long_poll_leaves_the_agents_commands_queued(app, client, admin_headers, agent):
    etag = _assigned(client, agent).headers["ETag"]
    queued = commands.queue_command(
        app.extensions["aami.redis"], agent["agent_id"], {"type": "run_check", "check_id": "disk"}
    )
    watched = client.get(
        f"/api/v1/checks/target/{agent['agent_id']}",
        headers={**admin_headers, "If-None-Match": etag},
        query_string={"wait": 0.2},
    )
    assert watched.status_code == 304
    reply = _assigned(client, agent, headers={"If-None-Match": etag}, wait=1)
    assert reply.status_code == 200
    assert reply.get_json()["commands"] == [queued]


def test_shell_check_is_one_command_line_and_reaches_the_agent(client, admin_headers, agent):
    line = {
        "id": "root-use",
        "command": ["df -P / | tail -1"],
        "shell": True,
        "assign": {"target_ids": [agent["agent_id"]]},
    }
    assert client.post("/api/v1/checks", json=line, headers=admin_headers).status_code == 201
    [check] = _assigned(client, agent).get_json()["checks"]
    assert check["shell"] is True and check["command"] == ["df -P / | tail -1"]


@pytest.mark.parametrize(
    ("command", "shell", "problem"),
    [
        (["df", "-h"], True, "one command line"),
        (["check_disk", "-w", "10%"], False, "absolute path"),
    ],
)
def test_command_must_fit_the_shell_flag(client, admin_headers, command, shell, problem):
    reply = client.post(
        "/api/v1/checks",
        json={"id": "c", "command": command, "shell": shell},
        headers=admin_headers,
    )
    assert_error(reply, 422, "invalid_fields", problem)
