"""server/services/notify.py: who wakes up when a change is published.

A fleet's agents are all parked on the same notifier: a command queued for one agent must
wake that agent's long-poll only, while a change for everyone (a check edited) wakes all.
"""

from __future__ import annotations

import threading
import time

import fakeredis
import pytest

from server.services.notify import ALL_AGENTS, ChangeNotifier

A = "11111111-1111-4111-8111-111111111111"
B = "22222222-2222-4222-8222-222222222222"


@pytest.fixture
def notifier():
    changes = ChangeNotifier(fakeredis.FakeRedis(server=fakeredis.FakeServer()))
    yield changes
    changes.close()


def _park(changes: ChangeNotifier, agent_id: str, timeout: float) -> dict[str, float]:
    """Start a waiter for ``agent_id``; the dict gets ``woke_after`` when it returns."""
    outcome: dict[str, float] = {}
    since = changes.generation(agent_id)
    ready = threading.Event()

    def run() -> None:
        began = time.monotonic()
        ready.set()
        changes.wait(since, timeout, agent_id)
        outcome["woke_after"] = time.monotonic() - began

    threading.Thread(target=run, daemon=True).start()
    ready.wait(5)
    return outcome


def _settle(outcomes: list[dict[str, float]], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not all(outcomes):
        time.sleep(0.01)


def test_a_change_for_one_agent_wakes_only_that_agents_waiters(notifier):
    parked_a, parked_b = _park(notifier, A, 10), _park(notifier, B, 1.5)
    time.sleep(0.1)
    notifier.publish(A)
    _settle([parked_a])
    assert parked_a.get("woke_after", 99) < 1.0
    _settle([parked_b])
    # B slept through A's change and only came back at its own deadline.
    assert parked_b["woke_after"] >= 1.4


def test_a_change_for_everyone_wakes_every_waiter(notifier):
    parked = [_park(notifier, agent, 10) for agent in (A, B)]
    time.sleep(0.1)
    notifier.publish(ALL_AGENTS)
    _settle(parked)
    assert all(p.get("woke_after", 99) < 1.0 for p in parked)


def test_generations_only_grow(notifier):
    seen = [notifier.generation(A)]
    for agent in (B, A, ALL_AGENTS, A):
        notifier.publish(agent)
        deadline = time.monotonic() + 5
        while notifier.generation(A) == seen[-1] and agent != B and time.monotonic() < deadline:
            time.sleep(0.01)
        seen.append(notifier.generation(A))
    assert seen == sorted(seen)
    assert seen[-1] == seen[0] + 3  # B's change did not count for A
