"""Unauthenticated traffic cannot grow the server's telemetry without bound.

Before the request histogram's labels came from known sets, every made-up HTTP method
was a new time series: 2,000 requests with random methods grew ``/metrics`` from 3 KB to
3.4 MB and each gunicorn worker by tens of MB. Here 10,000 requests with random methods
and random paths hit a live ``aami-server serve`` (gunicorn, two workers, the multiprocess
metrics files): ``/metrics`` stays under twice its size and the workers' memory within 10 MB.
"""

from __future__ import annotations

import random
import string
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from tests.integration.live_server import LiveServer

REQUESTS = 10_000
THREADS = 4
STANDARD = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
MAX_RSS_GROWTH_KB = 10 * 1024


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for process {pid}")


def _metrics_size(server: LiveServer) -> int:
    reply = requests.get(f"{server.url}/metrics", timeout=10)
    assert reply.status_code == 200
    return len(reply.content)


def _random_word(rng: random.Random, letters: str, low: int, high: int) -> str:
    return "".join(rng.choice(letters) for _ in range(rng.randint(low, high)))


def _send(server: LiveServer, seed: int, count: int) -> list[int]:
    """``count`` requests on one keep-alive session: a made-up method (a standard one one time
    in four) on a made-up path, or on a real one so that 405s are made too."""
    rng = random.Random(seed)
    statuses = []
    with requests.Session() as session:
        for _ in range(count):
            if rng.random() < 0.25:
                method = rng.choice(STANDARD)
            else:
                method = _random_word(rng, string.ascii_uppercase, 3, 12)
            if rng.random() < 0.2:
                path = rng.choice(["/healthz", "/api/v1/targets", "/api/v1/openapi.json"])
            else:
                path = "/" + "/".join(
                    _random_word(rng, string.ascii_lowercase + string.digits, 1, 10)
                    for _ in range(rng.randint(1, 4))
                )
            statuses.append(session.request(method, server.url + path, timeout=30).status_code)
    return statuses


def _send_concurrently(server: LiveServer, seeds: range, per_thread: int) -> list[int]:
    """One :func:`_send` per seed, all at once; every status."""
    with ThreadPoolExecutor(len(seeds)) as pool:
        batches = list(pool.map(lambda seed: _send(server, seed, per_thread), seeds))
    return [status for batch in batches for status in batch]


def test_random_methods_and_paths_leave_metrics_and_memory_bounded(live_server):
    # Warm up at the same concurrency as the run: every worker has answered the usual
    # kinds of request and the hostile kind from as many connections at once, so the
    # threads, their stacks and malloc arenas, caches and buffers it needs are not growth.
    _send_concurrently(live_server, seeds=range(-THREADS, 0), per_thread=250)
    size_before = _metrics_size(live_server)
    workers = live_server.worker_pids()
    rss_before = {pid: _rss_kb(pid) for pid in workers}

    statuses = _send_concurrently(
        live_server, seeds=range(1, THREADS + 1), per_thread=REQUESTS // THREADS
    )

    assert len(statuses) == REQUESTS
    assert all(status < 500 for status in statuses), sorted(set(statuses))
    assert {404, 405} <= set(statuses)
    size_after = _metrics_size(live_server)
    assert size_after < 2 * size_before, (size_before, size_after)
    assert live_server.worker_pids() == workers, "a worker was replaced: its growth is unseen"
    growth = sum(_rss_kb(pid) - rss_before[pid] for pid in workers)
    assert growth < MAX_RSS_GROWTH_KB, f"workers grew by {growth} kB in all"
