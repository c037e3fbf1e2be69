"""Events delivered as CloudEvents to a real HTTP webhook, off the request path."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import fakeredis
import pytest
import redis as redis_lib
from rq import SimpleWorker

from server import create_app, migrate
from server.db import get_database
from server.jobs.background_delivery import BackgroundDelivery
from server.jobs.queues import EVENTS, JobQueues
from server.jobs.sinks import DeliveryFailed, QueuedSinks, Webhook, deliver_event
from server.models import Event, utcnow
from server.services import tokens
from tests.integration.processes import wait_until
from tests.server.conftest import bearer
from tests.server.results_helpers import create_check, make_result, post_results

# Credentials in the configured URL: none of them may reach a log line or a queued job.
PASSWORD = "pw-hunter2"
TOKEN = "tok-s3cr3t-value"


class Webhook_:  # noqa: N801 - a test double named after what it stands for
    """A local HTTP server that records what it receives; it may hang or redirect."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.location = ""
        self.hang = False
        self.hung = 0
        self.release = threading.Event()
        self.received: list[tuple[str, str, dict[str, Any]]] = []
        webhook = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                if webhook.hang:
                    webhook.hung += 1
                    webhook.release.wait(30)  # never answers while the test runs
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else {}
                webhook.received.append((self.command, self.headers["Content-Type"], body))
                self.send_response(webhook.status)
                if webhook.location:
                    self.send_header("Location", webhook.location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_POST = do_GET = _answer  # noqa: N815 - http.server's naming

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def secret_url(self) -> str:
        """Its URL with credentials in the userinfo and the query."""
        parts = urlsplit(self.url)
        return urlunsplit(
            (parts.scheme, f"ops:{PASSWORD}@{parts.netloc}", parts.path, f"token={TOKEN}", "")
        )

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def assert_no_secret(text: str) -> None:
    assert PASSWORD not in text and TOKEN not in text, text


def logged_text(caplog: pytest.LogCaptureFixture) -> str:
    """Every captured record's message and extra fields, as a log formatter would see."""
    return "\n".join(str(record.__dict__) for record in caplog.records)


@pytest.fixture
def webhook() -> Iterator[Webhook_]:
    hook = Webhook_()
    yield hook
    hook.close()


@pytest.fixture
def app(tmp_path: Path, webhook: Webhook_):  # overrides the plain app: this one has a sink
    app = create_app(
        {
            "DATA_DIR": str(tmp_path / "var"),
            "LOG_LEVEL": "warning",
            "EVENT_WEBHOOKS": webhook.secret_url,
            "EVENT_WEBHOOK_TIMEOUT": 2,
        }
    )
    migrate.upgrade(app.extensions["aami.settings"].database_url())
    yield app
    app.extensions["aami.event_sinks"].close(1)


def heartbeat(client, agent):
    return client.post(
        f"/api/v1/agents/{agent['agent_id']}/heartbeat",
        json={"version": "test"},
        headers=bearer(agent["access_token"]),
    )


def received_types(webhook: Webhook_) -> list[str]:
    return [event["type"] for _method, _type, event in webhook.received]


def test_target_coming_online_is_sent_as_cloud_event(client, register, webhook):
    agent = register()
    heartbeat(client, agent)
    wait_until(lambda: webhook.received, 10, "the event at the webhook")
    method, content_type, event = webhook.received[0]
    assert method == "POST"
    assert content_type == "application/cloudevents+json"
    assert event["specversion"] == "1.0"
    assert event["type"] == "io.aami.target.status_changed"
    assert event["subject"] == agent["agent_id"]
    assert event["data"]["previous"] == "pending" and event["data"]["current"] == "online"


def test_hanging_webhook_does_not_hold_heartbeats_or_results(
    client, register, webhook, admin_headers
):
    agent = register()
    create_check(client, admin_headers, "disk", agent["agent_id"])
    webhook.hang = True
    began = time.monotonic()
    assert heartbeat(client, agent).status_code == 200
    now = datetime.now(UTC).isoformat()
    result = make_result("disk", "critical", executed_at=now)
    assert post_results(client, agent, [result]).status_code == 202
    # Delivered inline, each call would wait out the 2 s delivery timeout.
    assert time.monotonic() - began < 1.5
    wait_until(lambda: webhook.hung, 10, "a delivery to reach the hanging webhook")

    webhook.hang = False  # it answers from now on: the hung delivery is tried again
    wait_until(
        lambda: {"io.aami.target.status_changed", "io.aami.check.state_changed"}
        <= set(received_types(webhook)),
        20,
        "both events delivered once the webhook answers",
    )


def test_redirect_is_not_followed(caplog):
    target, redirector = Webhook_(), Webhook_(status=302)
    try:
        redirector.location = target.url
        with pytest.raises(DeliveryFailed, match="302.*not followed"):
            deliver_event(redirector.url, {"id": "1"})
        assert [method for method, _, _ in redirector.received] == ["POST"]
        assert target.received == []
    finally:
        target.close()
        redirector.close()


def test_refused_delivery_raises_so_the_job_is_retried(webhook):
    webhook.status = 500
    with pytest.raises(DeliveryFailed, match="answered 500"):
        deliver_event(webhook.url, {"id": "1"})


def test_unreachable_webhook_error_names_it_without_credentials():
    url = f"http://ops:{PASSWORD}@127.0.0.1:9/nothing-listens?token={TOKEN}"
    with pytest.raises(DeliveryFailed) as raised:
        deliver_event(url, {"id": "1"})
    assert "127.0.0.1:9" in str(raised.value)
    assert_no_secret(str(raised.value))


def a_stored_event() -> Event:
    return Event(
        id=7, kind="target_status", target_id="t-1", check_id=None, previous="online",
        current="offline", message="gone", created_at=utcnow(),
    )


def test_failing_delivery_is_logged_without_credentials(webhook, caplog):
    webhook.status = 500
    delivery = BackgroundDelivery(
        [Webhook(webhook.secret_url)], timeout_s=2, capacity=10, retry_intervals=()
    )
    with caplog.at_level(logging.WARNING, logger="server.jobs.background_delivery"):
        delivery.announce([a_stored_event()])
        wait_until(lambda: "giving up" in caplog.text, 10, "the failure logged")
        delivery.close(1)
    assert "answered 500" in logged_text(caplog)
    assert "127.0.0.1" in logged_text(caplog)
    assert_no_secret(logged_text(caplog))


def test_full_delivery_queue_drops_new_events_and_says_so(webhook, caplog):
    webhook.hang = True
    delivery = BackgroundDelivery([Webhook(webhook.url)], timeout_s=2, capacity=2)
    with caplog.at_level(logging.ERROR, logger="server.jobs.background_delivery"):
        for _ in range(6):  # one being sent (hanging), two waiting, the rest dropped
            delivery.announce([a_stored_event()])
    assert delivery.pending() <= 2
    assert "queue full" in caplog.text
    webhook.hang = False
    webhook.release.set()
    delivery.close(5)


def test_queued_job_names_the_webhook_by_reference_only(app):
    queues = JobQueues(fakeredis.FakeRedis(), inline=False)
    configured = app.extensions["aami.settings"].event_webhook_urls()[0]
    QueuedSinks([Webhook(configured)], queues).announce([a_stored_event()])
    (job,) = queues.queue(EVENTS).get_jobs()
    assert_no_secret(repr(job.args) + repr(job.kwargs) + job.description)
    assert "127.0.0.1" in job.description  # an operator can still tell which webhook


def test_queued_job_resolves_its_reference_to_the_configured_url(app, webhook):
    queues = JobQueues(fakeredis.FakeRedis(), inline=False)
    configured = app.extensions["aami.settings"].event_webhook_urls()[0]
    QueuedSinks([Webhook(configured)], queues).announce([a_stored_event()])
    (job,) = queues.queue(EVENTS).get_jobs()
    assert job.func(*job.args, **job.kwargs) == 200
    assert received_types(webhook) == ["io.aami.target.status_changed"]


def test_with_redis_delivery_is_an_rq_job_that_keeps_no_credentials_in_redis(
    tmp_path, webhook, redis_db_url, pg_database_url
):
    migrate.upgrade(pg_database_url)
    app = create_app(
        {
            "DATA_DIR": str(tmp_path / "var"),
            "LOG_LEVEL": "warning",
            "DATABASE_URL": pg_database_url,
            "REDIS_URL": redis_db_url,
            "SECRET_KEY": "s" * 32,
            "EVENT_WEBHOOKS": webhook.secret_url,
        }
    )
    client = app.test_client()
    with get_database(app).session() as session:
        secret = tokens.create_bootstrap_token(session, name="t").secret
    agent = client.post(
        "/api/v1/bootstrap-tokens/register", json={"token": secret, "hostname": "web-1"}
    ).get_json()
    webhook.hang = True  # a hanging webhook does not hold the request here either
    began = time.monotonic()
    assert heartbeat(client, agent).status_code == 200
    assert time.monotonic() - began < 1.5
    webhook.hang = False

    raw = redis_lib.Redis.from_url(redis_db_url)
    stored = []
    for key in raw.scan_iter():
        kind = raw.type(key)
        if kind == b"hash":
            stored.append(repr(raw.hgetall(key)))
        elif kind == b"string":
            stored.append(repr(raw.get(key)))
        elif kind == b"list":
            stored.append(repr(raw.lrange(key, 0, -1)))
    assert stored, "nothing queued"
    assert_no_secret("\n".join(stored))
    queues = app.extensions["aami.queues"]
    (job,) = queues.queue(EVENTS).get_jobs()  # its arguments are stored compressed
    assert_no_secret(repr(job.args) + repr(job.kwargs) + job.description)

    SimpleWorker([queues.queue(EVENTS)], connection=raw).work(burst=True)
    assert received_types(webhook) == ["io.aami.target.status_changed"]


def test_closing_tries_pending_deliveries_once_more(webhook):
    webhook.status = 500
    delivery = BackgroundDelivery(
        [Webhook(webhook.url)], timeout_s=2, capacity=10, retry_intervals=(300,)
    )
    delivery.announce([a_stored_event()])
    wait_until(
        lambda: webhook.received and delivery.pending() == 1,
        10,
        "the refused delivery waiting for its retry",
    )
    webhook.status = 200  # its retry is 300 s away: only the drain at close can send it
    delivery.close(5)
    assert len(webhook.received) == 2
    assert delivery.pending() == 0
