"""Poisoned result batches are isolated, never contagious (server.jobs.backlog, dead_letters).

A batch that cannot be stored, whether posted through an API that let it through or put on
the pending list by an earlier server, is set aside in the ``dead_letters`` table while
every other batch of its claim is stored; operators list, inspect, replay and drop it
through the API and ``aami-server dead-letter``, and see it in /metrics. These run on the
embedded app (SQLite, in-process Redis, jobs inline); tests/integration/test_poison_batches.py
does the same on PostgreSQL and Redis.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from typing import Any

import fakeredis
import pytest
import redis
from click.testing import CliRunner
from rq.timeouts import JobTimeoutException
from sqlalchemy import select
from sqlalchemy.exc import (
    DataError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    ProgrammingError,
    StatementError,
)

from server.cli import main
from server.db import Database, get_database
from server.jobs import backlog, dead_letters, ingest
from server.models import AuditLog, CheckResult
from server.settings import load_settings
from tests.server.backlog_helpers import claim_as, drain_refusing
from tests.server.conftest import assert_error
from tests.server.results_helpers import make_result, stored_result_ids

LETTERS = "/api/v1/ingest/dead-letters"


def letters(app) -> list[dict[str, Any]]:
    with get_database(app).session() as session:
        return [
            dead_letters.describe(letter, with_batch=True)
            for letter in dead_letters.list_letters(session)
        ]


def queue(redis_client, item: dict[str, Any] | bytes) -> bytes:
    """Put a batch straight on the pending list, as an earlier server (or anything with
    access to Redis) could: nothing checks it on the way."""
    raw = item if isinstance(item, bytes) else json.dumps(item).encode()
    redis_client.rpush(backlog.PENDING_KEY, raw)
    return raw


def good_batch(redis_client, agent_id: str, seconds: int) -> str:
    result = make_result("load", seconds=seconds)
    queue(redis_client, {"agent_id": agent_id, "results": [result]})
    return result["result_id"]


def drain(app) -> dict[str, int]:
    with app.app_context():
        return backlog.drain()


def batch_of(**fields: Any) -> Any:
    return lambda agent_id: {"agent_id": agent_id, "results": [make_result("load", **fields)]}


POISONS = {
    # Parses, but lies past year 9999 once in UTC.
    "overflowing-executed-at": (batch_of(executed_at="9999-12-31T23:59:59-14:00"), "executed_at"),
    "lone-surrogate-in-output": (batch_of(output="bad \ud800 text"), "output"),
    "lone-surrogate-in-perfdata-label": (batch_of(perfdata=[{"label": "\udc00"}]), "perfdata"),
    "not-json": (lambda a: b"{not json", "not a result batch"),
    "not-a-batch": (lambda a: {"agent_id": a}, "not a result batch"),
    "results-not-a-list": (lambda a: {"agent_id": a, "results": "x"}, "not a result batch"),
    "result-without-fields": (
        lambda a: {"agent_id": a, "results": [{"status": "ok"}]}, "result_id"
    ),
}


@pytest.mark.parametrize("kind", sorted(POISONS))
def test_a_poison_batch_in_the_pending_list_is_set_aside_and_the_others_stored(
    app, agent, redis_client, kind
):
    make, mention = POISONS[kind]
    before = good_batch(redis_client, agent["agent_id"], 1)
    poison = queue(redis_client, make(agent["agent_id"]))
    after = good_batch(redis_client, agent["agent_id"], 2)

    totals = drain(app)

    assert totals == {"received": 2, "inserted": 2}
    assert stored_result_ids(app) == {before, after}
    assert backlog.size(redis_client) == (0, 0)  # nothing left to stall the next claim
    (letter,) = letters(app)
    assert letter["id"] == dead_letters.letter_id(poison)
    assert letter["batch"].encode() == poison
    assert mention in letter["error"]


def test_batches_posted_after_a_poison_batch_are_stored(app, client, agent, redis_client):
    """The contagion of the issue: a later claim must not pick the poison up again."""
    queue(redis_client, POISONS["lone-surrogate-in-output"][0](agent["agent_id"]))
    drain(app)
    later = make_result("load", seconds=5)
    reply = client.post(
        f"/api/v1/agents/{agent['agent_id']}/check-results",
        json={"results": [later]},
        headers={"Authorization": f"Bearer {agent['access_token']}"},
    )
    assert reply.status_code == 202
    assert stored_result_ids(app) == {later["result_id"]}
    assert len(letters(app)) == 1


def test_a_retried_claim_holding_a_poison_batch_stores_the_rest(app, agent, redis_client):
    ids = [good_batch(redis_client, agent["agent_id"], n) for n in range(2)]
    queue(redis_client, POISONS["overflowing-executed-at"][0](agent["agent_id"]))
    ids.append(good_batch(redis_client, agent["agent_id"], 3))
    items = claim_as(redis_client, "crashed", 10)
    assert len(items) == 4  # ...and the job died; RQ retries it under the same id

    class Job:
        id = "crashed"

    with app.app_context(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(backlog, "get_current_job", lambda: Job)
        backlog.drain()

    assert stored_result_ids(app) == set(ids)
    assert len(letters(app)) == 1
    assert backlog.size(redis_client) == (0, 0)


def test_a_claim_is_split_until_the_batches_at_fault_stand_alone(app, agent, redis_client):
    ids = [good_batch(redis_client, agent["agent_id"], n) for n in range(8)]
    poisons = {ids[2], ids[5]}
    calls: list[int] = []

    totals = drain_refusing(app, poisons, "invalid input syntax", calls)

    assert totals == {"received": 6, "inserted": 6}
    assert stored_result_ids(app) == set(ids) - poisons
    refused = {json.loads(letter["batch"])["results"][0]["result_id"] for letter in letters(app)}
    assert refused == poisons
    assert calls[0] == 8 and len(calls) < 2 * 8  # halves, not one store per batch


def test_unavailability_leaves_the_whole_claim_for_a_retry(app, agent, redis_client):
    ids = [good_batch(redis_client, agent["agent_id"], n) for n in range(3)]

    def database_away(batches):
        raise OperationalError("INSERT ...", {}, Exception("connection refused"))

    with app.app_context(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(ingest, "store", database_away)
        with pytest.raises(OperationalError):
            backlog.drain()

    assert letters(app) == []  # an outage sets nothing aside
    assert backlog.size(redis_client) == (0, 3)  # still claimed: retried, then stored
    for owner in redis_client.zrange(backlog.CLAIMS_KEY, 0, -1):
        backlog.give_back(redis_client, owner.decode())
    drain(app)
    assert stored_result_ids(app) == set(ids)


class _PgError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"sqlstate {sqlstate}")
        self.sqlstate = sqlstate


@pytest.mark.parametrize(
    ("exc", "unavailable"),
    [
        (redis.ConnectionError("gone"), True),
        (JobTimeoutException("too long"), True),
        (OperationalError("x", {}, Exception("database is locked")), True),
        (InterfaceError("x", {}, Exception("connection closed")), True),
        (OperationalError("x", {}, _PgError("57P01")), True),  # admin shutdown
        (ProgrammingError("x", {}, _PgError("42P01")), True),  # table missing: not migrated
        (DataError("x", {}, _PgError("22P05")), False),  # untranslatable character
        (OperationalError("x", {}, _PgError("54000")), False),  # program limit exceeded
        (IntegrityError("x", {}, _PgError("23505")), False),
        (StatementError("x", "INSERT", {}, OverflowError("date value out of range")), False),
        (UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"), False),
        (ingest.UnstorableResult("lone surrogate"), False),
    ],
)
def test_only_unavailability_keeps_a_claim_whole(exc, unavailable):
    assert backlog.is_unavailability(exc) is unavailable


def test_setting_the_same_batch_aside_twice_keeps_one_and_counts_once(app, redis_client):
    refused = dead_letters.Refused(b'{"agent_id": "a", "results": []}', "DataError: bad")
    for _ in range(2):
        dead_letters.set_aside(get_database(app), redis_client, [refused])
    assert len(letters(app)) == 1
    assert int(redis_client.get(dead_letters.SET_ASIDE_COUNT_KEY)) == 1


def test_batches_an_earlier_version_set_aside_in_redis_are_adopted(app, redis_client):
    item = b'{"agent_id":"a","results":[]}'
    record = {"batch": item.decode(), "error": "invalid byte sequence", "at": 1.0}
    redis_client.rpush(backlog.LEGACY_REFUSED_KEY, json.dumps(record), b"\xff garbage")
    with app.app_context():
        assert backlog.adopt_legacy_refused(redis_client) == 2
    assert {letter["batch"].encode() for letter in letters(app)} >= {item}
    assert not redis_client.exists(backlog.LEGACY_REFUSED_KEY)


# --- operators: API, metrics ---------------------------------------------------------------


@pytest.fixture
def refused_once(app, agent, redis_client):
    """A good batch the database refused once (a fault since fixed): (letter id, result id)."""
    result_id = good_batch(redis_client, agent["agent_id"], 7)

    def refuse(batches):
        raise DataError("INSERT ...", {}, Exception("value too long"))

    with app.app_context(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(ingest, "store", refuse)
        backlog.drain()
    (letter,) = letters(app)
    return letter["id"], result_id


def test_operators_list_and_inspect_set_aside_batches(client, admin_headers, refused_once):
    letter_id, result_id = refused_once
    listed = client.get(LETTERS, headers=admin_headers)
    assert listed.status_code == 200
    (entry,) = listed.get_json()
    assert entry["id"] == letter_id and entry["results"] == 1
    assert "value too long" in entry["error"] and "batch" not in entry
    shown = client.get(f"{LETTERS}/{letter_id}", headers=admin_headers).get_json()
    assert json.loads(shown["batch"])["results"][0]["result_id"] == result_id


def test_replaying_a_batch_whose_fault_is_fixed_stores_it(app, client, admin_headers, refused_once):
    letter_id, result_id = refused_once
    reply = client.post(f"{LETTERS}/{letter_id}/replay", headers=admin_headers)
    assert reply.status_code == 200, reply.get_json()
    assert reply.get_json()["outcome"] == "stored"
    assert stored_result_ids(app) == {result_id}
    assert letters(app) == []
    with get_database(app).session() as session:
        assert session.scalar(select(AuditLog.action).where(AuditLog.subject == letter_id)) == (
            "dead_letter.replay"
        )


def test_replaying_a_batch_that_is_still_poison_sets_it_aside_again(
    app, client, admin_headers, agent, redis_client
):
    poison = queue(redis_client, POISONS["lone-surrogate-in-output"][0](agent["agent_id"]))
    drain(app)
    letter_id = dead_letters.letter_id(poison)
    reply = client.post(f"{LETTERS}/{letter_id}/replay", headers=admin_headers)
    assert reply.status_code == 200
    assert reply.get_json()["outcome"] == "set_aside"
    (letter,) = letters(app)
    assert letter["id"] == letter_id and letter["batch"].encode() == poison
    assert backlog.size(redis_client) == (0, 0)


def test_dropping_a_batch_deletes_it_and_is_audited(app, client, admin_headers, refused_once):
    letter_id, _ = refused_once
    reply = client.delete(f"{LETTERS}/{letter_id}", headers=admin_headers)
    assert reply.status_code == 200 and reply.get_json()["id"] == letter_id
    assert letters(app) == []
    with get_database(app).session() as session:
        assert session.scalar(select(AuditLog.action).where(AuditLog.subject == letter_id)) == (
            "dead_letter.drop"
        )


def test_unknown_letters_are_404_and_read_only_tokens_cannot_change_them(
    client, admin_headers, readonly_headers, refused_once
):
    letter_id, _ = refused_once
    for method, path in (("get", ""), ("post", "/replay"), ("delete", "")):
        reply = getattr(client, method)(f"{LETTERS}/0123456789abcdef{path}", headers=admin_headers)
        assert_error(reply, 404, "dead_letter_not_found", "0123456789abcdef")
    assert client.get(f"{LETTERS}/{letter_id}", headers=readonly_headers).status_code == 200
    assert client.post(f"{LETTERS}/{letter_id}/replay", headers=readonly_headers).status_code == 403
    assert client.delete(f"{LETTERS}/{letter_id}", headers=readonly_headers).status_code == 403


def test_set_aside_batches_are_in_the_metrics(client, admin_headers, refused_once):
    text = client.get("/metrics").get_data(as_text=True)
    assert "aami_ingest_dead_letters 1.0" in text
    assert "aami_ingest_batches_set_aside_total 1.0" in text
    client.delete(f"{LETTERS}/{refused_once[0]}", headers=admin_headers)
    text = client.get("/metrics").get_data(as_text=True)
    assert "aami_ingest_dead_letters 0.0" in text
    assert "aami_ingest_batches_set_aside_total 1.0" in text  # ever: a counter



# --- operators: aami-server dead-letter ------------------------------------------------------


@pytest.fixture
def cli(tmp_path, monkeypatch):
    """``aami-server`` on an embedded data directory of its own (no AAMI_* from outside)."""
    for name in list(os.environ):
        if name.startswith("AAMI_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AAMI_DATA_DIR", str(tmp_path / "var"))
    runner = CliRunner()

    def run(*args: str, code: int = 0, stdin: str | None = None):
        result = runner.invoke(main, list(args), input=stdin)
        assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
        assert result.exception is None or isinstance(result.exception, SystemExit)
        return result

    return run


def cli_database() -> Database:
    settings = load_settings(signing_key=False)
    return Database(settings.database_url())


def test_operators_list_show_replay_and_drop_set_aside_batches_with_the_cli(cli):
    cli("dead-letter", "list")  # makes the embedded database
    good = make_result("load", executed_at=datetime.now(UTC).isoformat())
    good_item = json.dumps({"agent_id": "a" * 36, "results": [good]}).encode()
    poison = make_result("load", output="\ud800")
    poison_item = json.dumps({"agent_id": "b" * 36, "results": [poison]}).encode()
    database = cli_database()
    dead_letters.set_aside(
        database,
        fakeredis.FakeRedis(),
        [dead_letters.Refused(good_item, "DataError: value too long"),
         dead_letters.Refused(poison_item, "UnstorableResult: lone surrogate")],
    )
    good_id, poison_id = dead_letters.letter_id(good_item), dead_letters.letter_id(poison_item)

    listed = cli("dead-letter", "list").stdout
    assert good_id in listed and poison_id in listed and "value too long" in listed
    assert good["result_id"] in cli("dead-letter", "show", good_id).stdout

    assert "stored" in cli("dead-letter", "replay", good_id).stdout
    failed_again = cli("dead-letter", "replay", poison_id, code=1).stdout
    assert "set aside again" in failed_again
    with database.session() as session:
        assert session.scalar(select(CheckResult.result_id)) == good["result_id"]
        assert [letter.id for letter in dead_letters.list_letters(session)] == [poison_id]

    cli("dead-letter", "drop", poison_id, code=1, stdin="n\n")  # asked, and declined
    assert "dropped" in cli("dead-letter", "drop", poison_id, stdin="y\n").stdout
    assert poison_id not in cli("dead-letter", "list").stdout
    database.engine.dispose()


@pytest.mark.parametrize("command", ["show", "replay", "drop"])
def test_the_cli_names_an_unknown_batch(cli, command):
    reply = cli("dead-letter", command, "0123456789abcdef", code=1)
    assert "no set-aside result batch '0123456789abcdef'" in reply.stderr
    assert "Traceback" not in reply.output


@pytest.mark.parametrize("command", ["list", "show", "replay", "drop"])
def test_every_dead_letter_command_has_help(cli, command):
    assert "Usage: main dead-letter " + command in cli("dead-letter", command, "--help").stdout
