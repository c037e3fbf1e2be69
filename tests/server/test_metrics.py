"""GET /metrics: Prometheus text with fleet figures read from the database and Redis."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.server.conftest import bearer
from tests.server.results_helpers import create_check, make_result, post_results


def samples(client):
    reply = client.get("/metrics")
    assert reply.status_code == 200
    assert reply.content_type.startswith("text/plain")
    found = {}
    for family in text_string_to_metric_families(reply.get_data(as_text=True)):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_fleet_figures_follow_the_fleet(client, register, admin_headers):
    before = samples(client)
    assert before[("aami_targets", (("status", "online"),))] == 0
    agent = register()
    client.post(
        f"/api/v1/agents/{agent['agent_id']}/heartbeat",
        json={"version": "t"},
        headers=bearer(agent["access_token"]),
    )
    create_check(client, admin_headers, "load", agent["agent_id"])
    post_results(client, agent, [make_result("load", "critical", seconds=i) for i in range(3)])
    after = samples(client)
    assert after[("aami_targets", (("status", "online"),))] == 1
    assert after[("aami_check_states", (("status", "critical"),))] == 1
    assert after[("aami_results_ingested_total", ())] == 3
    assert after[("aami_ingest_lag_seconds", ())] > 0
    assert ("aami_queue_depth", (("queue", "ingest"),)) in after


def test_request_latency_is_observed_per_endpoint(client):
    client.get("/healthz")
    found = samples(client)
    key = (
        "aami_http_request_duration_seconds_count",
        (("endpoint", "/healthz"), ("method", "GET"), ("status", "200")),
    )
    assert found[key] >= 1


def test_request_labels_come_from_bounded_sets(client):
    """A made-up method counts as ``other`` and a path no route matches as ``unmatched``:
    a client cannot mint a time series per request."""
    for method in ("FOO", "BAR", "get"):
        client.open("/healthz", method=method)
    for path in ("/no-such-1", "/no-such-2/x"):
        client.get(path)
    found = samples(client)
    count = "aami_http_request_duration_seconds_count"
    series = {labels for name, labels in found if name == count}
    methods = {dict(labels)["method"] for labels in series}
    endpoints = {dict(labels)["endpoint"] for labels in series}
    assert "other" in methods
    assert methods <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"}
    assert "unmatched" in endpoints
    assert not {"/no-such-1", "/no-such-2/x"} & endpoints
