"""Does a SIGKILLed Redis lose writes it acknowledged? Measured, per fsync policy.

Accepted result batches wait in Redis (an RPUSH per batch) until a worker stores them, so
what a killed Redis keeps is what the API's 202 promises. This starts a private
``redis-server`` with ``appendonly yes`` and the fsync policy asked for, has a client RPUSH
numbered entries as fast as it can (each acknowledged before the next is sent, as an API
request does), SIGKILLs Redis at a random moment, restarts it on the same AOF and counts
acknowledged entries that are gone. Repeated ``--rounds`` times; also reports the
acknowledged writes per second each policy allows.

``.venv/bin/python bench/redis_kill.py --help``
"""

from __future__ import annotations

import argparse
import random
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from tests.support.services import RedisServer  # noqa: E402

KEY = "aof-kill-test"


def one_round(server: RedisServer, rng: random.Random) -> tuple[int, int, float]:
    """(acknowledged, lost, writes/s) of one kill."""
    client = server.client()
    client.delete(KEY)
    acknowledged = 0
    stop = threading.Event()
    failure: list[BaseException] = []

    def writer() -> None:
        nonlocal acknowledged
        n = 0
        try:
            while not stop.is_set():
                client.rpush(KEY, n)
                acknowledged = n + 1
                n += 1
        except (redis.ConnectionError, redis.TimeoutError):
            return
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            failure.append(exc)

    thread = threading.Thread(target=writer, daemon=True)
    began = time.monotonic()
    thread.start()
    time.sleep(rng.uniform(0.5, 2.5))
    server.kill()
    killed_after = time.monotonic() - began
    thread.join(10)
    stop.set()
    if failure:
        raise failure[0]
    server.start()
    with server.client() as after:
        kept = after.llen(KEY)
        present = {int(v) for v in after.lrange(KEY, 0, -1)}
    lost = sum(1 for n in range(acknowledged) if n not in present)
    assert kept >= 0
    client.close()
    return acknowledged, lost, acknowledged / killed_after


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30, help="kills per policy (30)")
    parser.add_argument("--policies", default="everysec,always",
                        help="appendfsync policies to try (everysec,always)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    print(f"{'appendfsync':>11} | {'rounds':>6} | {'acknowledged':>12} | {'lost':>5} | "
          f"{'rounds with loss':>16} | {'acked writes/s':>14}")
    for policy in args.policies.split(","):
        server = RedisServer(appendonly=True, options={"appendfsync": policy})
        server.start()
        try:
            totals = [one_round(server, rng) for _ in range(args.rounds)]
        finally:
            server.close()
        acknowledged = sum(t[0] for t in totals)
        lost = sum(t[1] for t in totals)
        rounds_with_loss = sum(1 for t in totals if t[1])
        rate = sorted(t[2] for t in totals)[len(totals) // 2]
        print(f"{policy:>11} | {args.rounds:>6} | {acknowledged:>12} | {lost:>5} | "
              f"{rounds_with_loss:>16} | {rate:>14.0f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
