"""Wake long-polls when assignments change or a command is queued, across processes.

Each server process keeps one Redis pub/sub subscription on a listener thread and a
generation counter. Waiting requests block on a condition variable instead of holding a
Redis connection each, so thousands of parked long-polls cost one connection per process.
If the subscription drops, the generation is bumped on reconnect so that every waiter
re-checks what it waits for: a message lost in the gap cannot strand anyone.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref

import redis

log = logging.getLogger(__name__)

CHANNEL = "aami:changes"
ALL_AGENTS = "*"

_instances: weakref.WeakSet[ChangeNotifier] = weakref.WeakSet()


def release_all_waiters() -> None:
    """Let every parked long-poll in this process answer now (the process is stopping)."""
    for notifier in list(_instances):
        notifier.close()


class ChangeNotifier:
    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._condition = threading.Condition()
        self._generation = 0
        self._woken: dict[str, int] = {}
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._subscribed = threading.Event()
        self._closing = False
        _instances.add(self)

    def close(self) -> None:
        with self._condition:
            self._closing = True
            self._condition.notify_all()

    @property
    def closing(self) -> bool:
        """True once :meth:`close` was called: waiters must answer now, not wait again."""
        return self._closing

    def publish(self, agent_id: str = ALL_AGENTS) -> None:
        """Tell every process that ``agent_id`` (or everyone) should re-read its state."""
        self._client.publish(CHANNEL, agent_id)

    def generation(self, agent_id: str | None = None) -> int:
        """A counter that grows with every change for everyone, and (given ``agent_id``)
        with every change published for that agent alone."""
        self._ensure_listening()
        with self._condition:
            return self._current(agent_id)

    def _current(self, agent_id: str | None) -> int:
        return self._generation + (self._woken.get(agent_id, 0) if agent_id else 0)

    def wait(self, since: int, timeout: float, agent_id: str | None = None) -> int:
        """Block until a change newer than ``since`` arrives or ``timeout`` passes; returns
        the generation (of ``agent_id``, if given: a command queued for one agent then
        leaves the others parked instead of sending them all to the database)."""
        self._ensure_listening()
        deadline = time.monotonic() + timeout
        with self._condition:
            while self._current(agent_id) == since and not self._closing:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._condition.wait(remaining)
            return self._current(agent_id)

    def _ensure_listening(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        with self._start_lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._thread = threading.Thread(
                target=self._listen_forever, name="aami-change-listener", daemon=True
            )
            self._thread.start()
        # A change published before the subscription is live would be missed.
        self._subscribed.wait(timeout=5)

    def _bump(self, agent_id: str = ALL_AGENTS) -> None:
        with self._condition:
            if agent_id == ALL_AGENTS:
                self._generation += 1
            else:
                self._woken[agent_id] = self._woken.get(agent_id, 0) + 1
            self._condition.notify_all()

    def _listen_forever(self) -> None:
        delay = 0.5
        while True:
            try:
                pubsub = self._client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(CHANNEL)
                self._subscribed.set()
                self._bump()  # anything published while we were away: re-check
                delay = 0.5
                while True:
                    message = pubsub.get_message(timeout=1.0)
                    if message is not None:
                        self._bump(_agent_of(message))
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                log.warning(
                    "change listener lost Redis, retrying",
                    extra={"error": str(exc), "retry_in": delay},
                )
                time.sleep(delay)
                delay = min(delay * 2, 10.0)


def _agent_of(message: dict[str, object]) -> str:
    """The agent a message names, or everyone (also for anything unexpected)."""
    data = message.get("data")
    if isinstance(data, bytes):
        data = data.decode(errors="replace")
    return data if isinstance(data, str) and data else ALL_AGENTS
