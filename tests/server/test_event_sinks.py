"""Events delivered as CloudEvents to a real HTTP webhook."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from server import create_app, migrate
from server.jobs.sinks import DeliveryFailed, deliver_event
from tests.server.conftest import bearer


class Webhook:
    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.received: list[tuple[str, dict[str, Any]]] = []
        webhook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers["Content-Length"]))
                webhook.received.append((self.headers["Content-Type"], json.loads(body)))
                self.send_response(webhook.status)
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.server.shutdown()


@pytest.fixture
def app(tmp_path: Path, webhook: Webhook):  # overrides the plain app: this one has a sink
    app = create_app(
        {"DATA_DIR": str(tmp_path / "var"), "LOG_LEVEL": "warning", "EVENT_WEBHOOKS": webhook.url}
    )
    migrate.upgrade(app.extensions["aami.settings"].database_url())
    return app


def test_target_coming_online_is_sent_as_cloud_event(client, register, webhook):
    agent = register()
    client.post(
        f"/api/v1/agents/{agent['agent_id']}/heartbeat",
        json={"version": "test"},
        headers=bearer(agent["access_token"]),
    )
    assert len(webhook.received) == 1
    content_type, event = webhook.received[0]
    assert content_type == "application/cloudevents+json"
    assert event["specversion"] == "1.0"
    assert event["type"] == "io.aami.target.status_changed"
    assert event["subject"] == agent["agent_id"]
    assert event["data"]["previous"] == "pending" and event["data"]["current"] == "online"


def test_refused_delivery_raises_so_the_job_is_retried(webhook):
    webhook.status = 500
    with pytest.raises(DeliveryFailed, match="answered 500"):
        deliver_event(webhook.url, {"id": "1"})


def test_unreachable_webhook_raises_so_the_job_is_retried():
    with pytest.raises(DeliveryFailed):
        deliver_event("http://127.0.0.1:9/nothing-listens", {"id": "1"})
