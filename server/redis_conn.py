"""The Redis connection: a real server in production, an in-process stand-in when embedded."""

from __future__ import annotations

import threading
from typing import Any

import redis

_embedded_lock = threading.Lock()
_embedded_servers: dict[str, Any] = {}


def connect(url: str, data_dir: str) -> redis.Redis:
    """A client for ``url``; with no URL, one shared in-process server per data directory.

    The embedded stand-in keeps nothing across restarts, which is acceptable for what it
    holds (liveness, queued commands); the embedded queue runs jobs inline, so no accepted
    result ever waits in it.
    """
    if url:
        return redis.Redis.from_url(url, health_check_interval=30, socket_keepalive=True)
    import fakeredis

    with _embedded_lock:
        server = _embedded_servers.get(data_dir)
        if server is None:
            server = fakeredis.FakeServer()
            _embedded_servers[data_dir] = server
    return fakeredis.FakeRedis(server=server)
