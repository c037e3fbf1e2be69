"""``aami-server serve`` stops at once on SIGTERM while agents are parked in long-polls.

Every connected agent holds a ``GET /checks/target/{id}?wait=30``. On SIGTERM each gunicorn
worker releases its waiters so they answer (304) at once and the graceful shutdown is not
held for the rest of the wait (up to 30 s; past the supervisor's patience, a SIGKILL).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import requests

from tests.integration.live_server import LiveServer, last_line

pytestmark = pytest.mark.integration

WAIT_S = 30


def test_sigterm_answers_parked_long_polls_and_the_server_exits_at_once(
    live_server: LiveServer,
) -> None:
    token = last_line(live_server.cli("token", "create", "--name", "fleet"))
    agents = []
    for n in range(4):  # enough that both gunicorn workers hold some
        reply = requests.post(live_server.api("bootstrap-tokens/register"),
                              json={"token": token, "hostname": f"host-{n}"}, timeout=30)
        assert reply.status_code == 201, reply.text
        agents.append(reply.json())
    answers: list[dict[str, Any]] = []

    def poll(agent: dict[str, Any]) -> None:
        url = live_server.api(f"checks/target/{agent['agent_id']}")
        headers = {"Authorization": f"Bearer {agent['access_token']}"}
        etag = requests.get(url, headers=headers, timeout=10).headers["ETag"]
        try:
            reply = requests.get(url, params={"wait": WAIT_S}, timeout=WAIT_S + 10,
                                 headers={**headers, "If-None-Match": etag})
            answers.append({"status": reply.status_code, "at": time.monotonic()})
        except requests.RequestException as exc:
            answers.append({"error": repr(exc), "at": time.monotonic()})

    threads = [threading.Thread(target=poll, args=(a,), daemon=True) for a in agents]
    for thread in threads:
        thread.start()
    time.sleep(1.5)  # all parked
    assert answers == [], "a poll returned before anything changed"

    began = time.monotonic()
    live_server.stop()
    took = time.monotonic() - began
    for thread in threads:
        thread.join(10)

    assert live_server.exit_code == 0, live_server.log_tail()
    assert took < 10, f"the server took {took:.1f}s to stop"
    assert [a.get("status") for a in answers] == [304] * len(agents), answers
    assert max(a["at"] for a in answers) - began < 5, answers
