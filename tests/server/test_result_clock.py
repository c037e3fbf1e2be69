"""What the results API accepts matches what storage takes, and the state follows the newest
result by an order the server can trust (server/jobs/clock_window.py, state_fold.py).

- a time that overflows once in UTC, and text no database stores, are a 422 naming the
  field, in the results schema itself (the fast path and marshmallow alike), not only in
  the check every JSON body gets;
- a result dated past the allowed skew is stored at the time the server received it, with
  the agent's time beside it, and orders the state by that time: one ``ok`` dated 2999 no
  longer hides the ``critical`` after it;
- a result older than the retention period is refused on its own, the rest of its batch
  stored.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from marshmallow import ValidationError
from sqlalchemy import select, update

from server.api import results as results_api
from server.db import get_database
from server.errors import SettingsError
from server.extensions import SETTINGS
from server.jobs import backlog, context
from server.jobs.state_fold import StateFold
from server.models import CheckResult, CheckState, utcnow
from server.settings import load_settings
from tests.server.conftest import assert_error, bearer
from tests.server.results_helpers import make_result, post_results

FAR_FUTURE = "2999-01-01T00:00:00Z"


def rows(app: Flask) -> list[CheckResult]:
    with get_database(app).session() as session:
        return list(session.scalars(select(CheckResult).order_by(CheckResult.executed_at)))


def state(app: Flask, agent: dict[str, Any]) -> CheckState:
    with get_database(app).session() as session:
        found = session.get(CheckState, (agent["agent_id"], "load"))
        assert found is not None
        return found


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


# --- the edge -----------------------------------------------------------------------------


def test_an_executed_at_that_overflows_in_utc_is_a_422_naming_it(client, agent):
    result = make_result("load", executed_at="9999-12-31T23:59:59-14:00")
    reply = post_results(client, agent, [result])
    assert_error(reply, 422, "invalid_fields", "results.0.executed_at")


UNSTORABLE = {
    "output": ({"output": "plugin said \ud800"}, "output"),
    "perfdata-label": ({"perfdata": [{"label": "\udc00", "value": 1}]}, "perfdata"),
    "perfdata-uom": ({"perfdata": [{"label": "l", "value": 1, "uom": "\ud800"}]}, "perfdata"),
    "threshold-text": ({"perfdata": [{"label": "l", "warn": "\ud800"}]}, "perfdata"),
    "threshold-nan": ({"perfdata": [{"label": "l", "crit": float("nan")}]}, "perfdata"),
    "threshold-object": ({"perfdata": [{"label": "l", "warn": {"a": 1}}]}, "perfdata"),
    "nul-in-label": ({"perfdata": [{"label": "a\x00b"}]}, "perfdata"),
}


@pytest.mark.parametrize("case", sorted(UNSTORABLE))
def test_the_results_schema_refuses_what_storage_cannot_take_naming_the_field(case):
    """The schema defends on its own: a body that reached it without the JSON body check
    (a test client, another caller of the schema) is refused all the same."""
    fields, where = UNSTORABLE[case]
    data = {"results": [make_result("load", **fields)]}
    assert results_api.fast_load(data) is None  # the fast path leaves it to marshmallow
    with pytest.raises(ValidationError) as raised:
        results_api.ResultBatch().load(data)
    assert where in raised.value.messages["results"][0]


def test_a_lone_surrogate_posted_as_json_is_a_422_naming_the_field(client, agent):
    body = json.dumps({"results": [make_result("load", output="x")]}).replace('"x"', '"\\ud800"')
    reply = client.post(
        f"/api/v1/agents/{agent['agent_id']}/check-results",
        data=body,
        content_type="application/json",
        headers=bearer(agent["access_token"]),
    )
    assert_error(reply, 422, "invalid_fields", "output")


def test_usual_thresholds_still_load_on_the_fast_path():
    perfdata = [{"label": "l", "value": 1.0, "warn": "10:20", "crit": 30, "uom": "%"}]
    data = {"results": [make_result("load", perfdata=perfdata)]}
    loaded = results_api.fast_load(data)
    assert loaded is not None and loaded["results"][0]["perfdata"][0]["crit"] == 30


# --- the window around the server's clock ------------------------------------------------


def test_an_ok_dated_2999_does_not_hide_the_critical_after_it(app, client, agent):
    before = utcnow()
    first = make_result("load", "ok", executed_at=FAR_FUTURE)
    assert post_results(client, agent, [first]).status_code == 202
    critical = make_result("load", "critical", executed_at=iso(utcnow()))
    assert post_results(client, agent, [critical]).status_code == 202

    assert state(app, agent).status == "critical"
    placed, real = rows(app)
    assert placed.result_id == first["result_id"]
    assert placed.agent_executed_at == datetime(2999, 1, 1, tzinfo=UTC)
    assert before <= placed.executed_at <= utcnow()  # when the server received it
    assert real.agent_executed_at is None


def test_history_shows_the_agents_own_time_of_a_placed_result(app, client, agent, admin_headers):
    post_results(client, agent, [make_result("load", executed_at=FAR_FUTURE)])
    (entry,) = client.get(
        f"/api/v1/targets/{agent['agent_id']}/results", headers=admin_headers
    ).get_json()
    assert entry["agent_executed_at"].startswith("2999-01-01T00:00:00")
    assert entry["executed_at"] < "2999"


def test_results_placed_together_keep_their_agents_order(app, client, agent):
    ahead = utcnow() + timedelta(hours=2)
    batch = [
        make_result("load", "critical", executed_at=iso(ahead + timedelta(seconds=1))),
        make_result("load", "ok", executed_at=iso(ahead)),
    ]
    assert post_results(client, agent, batch).status_code == 202
    assert [r.status for r in rows(app)] == ["ok", "critical"]
    assert state(app, agent).status == "critical"  # the newest by the agent's own clock


def test_a_placed_result_sent_again_is_stored_once(app, client, agent):
    result = make_result("load", executed_at=FAR_FUTURE)
    for _ in range(2):  # the agent did not hear the first 202
        assert post_results(client, agent, [result]).status_code == 202
    assert [r.result_id for r in rows(app)] == [result["result_id"]]
    assert state(app, agent).occurrences == 1


def test_a_result_older_than_the_retention_is_refused_alone(app, client, agent):
    old = make_result("load", executed_at=iso(utcnow() - timedelta(days=31)))
    fresh = make_result("load")
    reply = post_results(client, agent, [old, fresh])
    assert reply.status_code == 202
    body = reply.get_json()
    assert body["accepted"] == 1
    (rejected,) = body["rejected"]
    assert rejected["result_id"] == old["result_id"]
    assert "retention period (30 days)" in rejected["reason"]
    assert [r.result_id for r in rows(app)] == [fresh["result_id"]]


def test_a_state_dated_past_the_window_is_replaced_by_the_next_result(app, client, agent):
    """A state an earlier server stored from a result dated 2999 must not freeze the check."""
    post_results(client, agent, [make_result("load", "ok")])
    with get_database(app).session() as session:
        session.execute(
            update(CheckState).values(executed_at=datetime(2999, 1, 1, tzinfo=UTC))
        )
    post_results(client, agent, [make_result("load", "critical", executed_at=iso(utcnow()))])
    assert state(app, agent).status == "critical"


def test_a_batch_an_earlier_server_queued_unplaced_is_placed_by_the_worker(app, agent):
    result = make_result("load", executed_at=FAR_FUTURE)
    client = app.extensions["aami.redis"]
    client.rpush(
        backlog.PENDING_KEY, json.dumps({"agent_id": agent["agent_id"], "results": [result]})
    )
    with app.app_context():
        backlog.drain()
    (row,) = rows(app)
    assert row.agent_executed_at == datetime(2999, 1, 1, tzinfo=UTC)
    assert row.executed_at <= utcnow()


def test_a_fold_of_a_state_past_the_trusted_time_takes_any_result():
    now = datetime(2026, 12, 1, tzinfo=UTC)

    class Stored:
        status, exit_code, output, perfdata = "ok", 0, "", []
        executed_at = since = datetime(2999, 1, 1, tzinfo=UTC)
        occurrences, history, flapping, last_result_id = 1, "o", False, "r0"

    row = {"executed_at": now, "result_id": "r1", "status": "critical", "exit_code": 2,
           "output": "", "perfdata": []}
    assert StateFold.of(Stored(), trusted_until=now + timedelta(minutes=5)).is_news(row)
    assert not StateFold.of(Stored(), trusted_until=datetime(3000, 1, 1, tzinfo=UTC)).is_news(row)


def test_the_allowed_skew_is_a_setting(app, client, agent, monkeypatch):
    lenient = dataclasses.replace(app.extensions[SETTINGS], RESULT_MAX_FUTURE_SKEW=3600)
    monkeypatch.setitem(app.extensions, SETTINGS, lenient)  # the API's
    monkeypatch.setattr(context, "_settings", lenient)  # the ingest job's
    ahead = iso(utcnow() + timedelta(minutes=30))
    assert post_results(client, agent, [make_result("load", executed_at=ahead)]).status_code == 202
    (row,) = rows(app)
    assert row.agent_executed_at is None and iso(row.executed_at) == ahead


def test_a_negative_skew_is_refused_at_start(monkeypatch):
    monkeypatch.setenv("AAMI_RESULT_MAX_FUTURE_SKEW", "-1")
    with pytest.raises(SettingsError, match="RESULT_MAX_FUTURE_SKEW"):
        load_settings()
