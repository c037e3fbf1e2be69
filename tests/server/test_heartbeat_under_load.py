"""The heartbeat's fast path: one query, one Redis round trip, and what happens when the
database is overloaded or fails half-way."""

from __future__ import annotations

from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from server.api import agents
from server.services import commands
from tests.server.conftest import assert_error, bearer, new_agent_id


def _beat(client, agent):
    return client.post(f"/api/v1/agents/{agent['agent_id']}/heartbeat",
                       json={"version": "test"}, headers=bearer(agent["access_token"]))


def test_an_exhausted_connection_pool_is_a_503_with_retry_after(client, register, monkeypatch):
    agent = register(agent_id=new_agent_id())

    def no_connection(*_args, **_kwargs):
        raise PoolTimeout("QueuePool limit of size 10 overflow 20 reached")

    monkeypatch.setattr(agents, "target_and_serial", no_connection)
    reply = _beat(client, agent)
    assert_error(reply, 503, "database_busy")
    assert reply.headers["Retry-After"] == "5"


def test_commands_survive_a_heartbeat_that_fails_after_taking_them(app, client, register,
                                                                  monkeypatch):
    agent = register(agent_id=new_agent_id())
    redis = app.extensions["aami.redis"]
    queued = [commands.queue_command(redis, agent["agent_id"], {"type": "run_check",
                                                                "check_id": f"c{n}"})
              for n in range(2)]

    def database_gone(*_args, **_kwargs):
        raise OperationalError("UPDATE targets", {}, Exception("server closed the connection"))

    # The first heartbeat moves the target online: the database fails right then.
    with monkeypatch.context() as patched:
        patched.setattr(agents, "transition_status", database_gone)
        assert _beat(client, agent).status_code == 503
    reply = _beat(client, agent)
    assert reply.status_code == 200, reply.get_json()
    assert reply.get_json()["commands"] == queued  # all of them, in order, once
    assert _beat(client, agent).get_json()["commands"] == []


def test_a_heartbeat_reply_hands_each_command_over_once(app, client, register):
    beats = 3
    agent = register(agent_id=new_agent_id())
    redis = app.extensions["aami.redis"]
    command = commands.queue_command(redis, agent["agent_id"], {"type": "run_check",
                                                                "check_id": "disk"})
    handed = [_beat(client, agent).get_json()["commands"] for _ in range(beats)]
    assert handed == [[command]] + [[]] * (beats - 1)


def test_a_long_command_queue_is_handed_over_in_bounded_replies(app, client, register):
    agent = register(agent_id=new_agent_id())
    redis = app.extensions["aami.redis"]
    queued = [commands.queue_command(redis, agent["agent_id"], {"type": "run_check",
                                                                "check_id": f"c{n}"})
              for n in range(commands.MAX_PER_REPLY + 5)]
    first = _beat(client, agent).get_json()["commands"]
    second = _beat(client, agent).get_json()["commands"]
    assert len(first) == commands.MAX_PER_REPLY
    assert first + second == queued  # oldest first, each once
    assert _beat(client, agent).get_json()["commands"] == []
