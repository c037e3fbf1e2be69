"""End-to-end ingest benchmark: HTTP POST of result batches -> rows in PostgreSQL.

Starts its own PostgreSQL and Redis (the classes of tests/support/services.py; Redis with
the append-only persistence the README asks production to use), ``aami-server serve``
under gunicorn and ``aami-server worker`` processes, registers simulated agents over HTTP
with a bootstrap token made by the CLI, and assigns them one check. Client threads then
post pre-built batches of results; the end-to-end rate is results per second from the
first POST to the moment the last row is visible in PostgreSQL.

Beside it, the raw ceiling of the same PostgreSQL: the same number of rows bulk-inserted
from one connection with ``INSERT ... ON CONFLICT DO NOTHING`` in batches of 100 (a commit
per batch, as an ingest job does), and with ``COPY`` for reference.

Run from the checkout: ``.venv/bin/python bench/ingest_bench.py --help``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import queue
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make the checkout importable
    sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
import requests  # noqa: E402

from tests.integration.ingest_helpers import (  # noqa: E402
    Agent,
    admin_headers,
    bootstrap_token,
    create_check,
    make_result,
    register_agents,
)
from tests.integration.live_server import LiveServer  # noqa: E402
from tests.integration.processes import LiveWorker  # noqa: E402
from tests.support.services import (  # noqa: E402
    PostgresServer,
    RedisServer,
    child_pids,
    libpq_url,
    temporary_database,
)

CHECK_ID = "bench-load"
# A check that is fine most of the time: a five-result warning every 250 results, so
# about one state-change event per batch of 100, as a fleet sees in an ordinary hour.
EPISODE_EVERY = 250
EPISODE_LENGTH = 5


def status_at(n: int) -> str:
    return "warning" if n % EPISODE_EVERY >= EPISODE_EVERY - EPISODE_LENGTH else "ok"


@dataclass
class EndToEnd:
    results: int
    posts: int
    retries: int
    statuses: Counter[int]
    accept_s: float  # first POST to last 202
    total_s: float  # first POST to last row in PostgreSQL

    @property
    def rate(self) -> float:
        return self.results / self.total_s

    @property
    def accept_rate(self) -> float:
        return self.results / self.accept_s


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Measure end-to-end result ingestion (HTTP -> Redis -> worker -> "
        "PostgreSQL) against the raw bulk-insert ceiling of the same PostgreSQL.",
    )
    parser.add_argument("--agents", type=int, default=100, help="simulated agents (100)")
    parser.add_argument(
        "--results", type=int, default=100_000, help="results to post in total (100000)"
    )
    parser.add_argument("--batch-size", type=int, default=100, help="results per POST (100)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent client threads (8)")
    parser.add_argument(
        "--api-workers", type=int, default=2, help="gunicorn worker processes (2)"
    )
    parser.add_argument(
        "--api-threads", type=int, default=8, help="threads per gunicorn worker (8)"
    )
    parser.add_argument("--workers", type=int, default=2, help="aami-server worker processes (2)")
    parser.add_argument(
        "--durable",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="PostgreSQL with fsync on, as in production (default); --no-durable turns it off",
    )
    parser.add_argument(
        "--log-level", default="info", help="AAMI_LOG_LEVEL of server and workers (info)"
    )
    parser.add_argument(
        "--timeout", type=float, default=600, help="give up waiting for rows after this (s)"
    )
    parser.add_argument(
        "--skip-raw", action="store_true", help="measure only end to end, not the raw ceiling"
    )
    parser.add_argument(
        "--raw-runs", type=int, default=3, help="repetitions of the raw ceiling (median, 3)"
    )
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE as JSON")
    parser.add_argument(
        "--keep", action="store_true", help="keep the scratch directory (logs) afterwards"
    )
    args = parser.parse_args(argv)
    if args.results < args.agents or args.batch_size < 1 or args.batch_size > 500:
        parser.error("need --results >= --agents and 1 <= --batch-size <= 500")
    return args


# --------------------------------------------------------------------------- workload


def build_bodies(agents: list[Agent], total: int, batch_size: int) -> list[tuple[Agent, bytes]]:
    """Pre-serialised POST bodies, interleaved across agents so every agent keeps posting."""
    per_agent = total // len(agents)
    extra = total - per_agent * len(agents)
    start = datetime.now(UTC) - timedelta(hours=1)
    per_agent_batches: list[list[bytes]] = []
    for n, _agent in enumerate(agents):
        count = per_agent + (1 if n < extra else 0)
        results = [
            make_result(CHECK_ID, status_at(i), start + timedelta(seconds=i))
            for i in range(count)
        ]
        per_agent_batches.append(
            [
                json.dumps({"results": results[i : i + batch_size]}).encode()
                for i in range(0, count, batch_size)
            ]
        )
    bodies = []
    for round_ in range(max(len(b) for b in per_agent_batches)):
        for agent, agent_batches in zip(agents, per_agent_batches, strict=True):
            if round_ < len(agent_batches):
                bodies.append((agent, agent_batches[round_]))
    return bodies


def post_all(
    server: LiveServer, bodies: list[tuple[Agent, bytes]], clients: int
) -> tuple[float, int, Counter[int]]:
    """Post every body from ``clients`` threads, retrying anything but a 202.

    Returns (seconds from first POST to last 202, retries, status counts).
    """
    work: queue.SimpleQueue[tuple[Agent, bytes] | None] = queue.SimpleQueue()
    for item in bodies:
        work.put(item)
    for _ in range(clients):
        work.put(None)
    statuses: Counter[int] = Counter()
    retries = 0
    lock = threading.Lock()
    failures: list[BaseException] = []

    def client() -> None:
        nonlocal retries
        session = requests.Session()
        try:
            while (item := work.get()) is not None:
                agent, body = item
                url = server.api(f"agents/{agent.agent_id}/check-results")
                headers = {**agent.headers, "Content-Type": "application/json"}
                for attempt in range(50):
                    try:
                        reply = session.post(url, data=body, headers=headers, timeout=60)
                        code = reply.status_code
                    except requests.RequestException:
                        code = 0
                    with lock:
                        statuses[code] += 1
                        retries += attempt > 0
                    if code == 202:
                        break
                    time.sleep(min(0.05 * 2**attempt, 2))
                else:
                    raise RuntimeError(f"batch for {agent.agent_id} never accepted")
        except BaseException as exc:  # noqa: B036  # reported by the main thread
            failures.append(exc)
        finally:
            session.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
    return time.perf_counter() - began, retries, statuses


def count_rows(dsn: str, table: str = "check_results") -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()  # noqa: S608
        return int(row[0]) if row else 0


def measure_end_to_end(
    server: LiveServer, agents: list[Agent], args: argparse.Namespace
) -> EndToEnd:
    bodies = build_bodies(agents, args.results, args.batch_size)
    dsn = libpq_url(server.database_url)
    done = threading.Event()
    finished: list[float] = []

    def watch() -> None:
        # Counting from a separate connection while posting: a few queries a second.
        with psycopg.connect(dsn, autocommit=True) as conn:
            while not done.is_set():
                row = conn.execute("SELECT count(*) FROM check_results").fetchone()
                if row and row[0] >= args.results:
                    finished.append(time.perf_counter())
                    return
                time.sleep(0.05)

    began = time.perf_counter()
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    accept_s, retries, statuses = post_all(server, bodies, args.clients)
    watcher.join(args.timeout)
    done.set()
    if not finished:
        raise SystemExit(
            f"only {count_rows(dsn)} of {args.results} rows after {args.timeout:g} s; "
            f"see the logs in {server.data_dir}"
        )
    stored = count_rows(dsn)
    if stored != args.results:
        raise SystemExit(f"{stored} rows stored for {args.results} results posted")
    return EndToEnd(
        results=args.results,
        posts=len(bodies),
        retries=retries,
        statuses=statuses,
        accept_s=accept_s,
        total_s=finished[0] - began,
    )


# --------------------------------------------------------------------------- CPU accounting


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _process_tree(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(child_pids(current))
    return found


def _cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and of its reaped children, in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(v) for v in fields[11:15]) / CLOCK_TICKS


class CpuMeter:
    """CPU seconds used by each group of processes between :meth:`start` and :meth:`stop`.

    PostgreSQL forks a backend per connection and a connection may close in between, so
    the groups are read as whole process trees, counting reaped children too.
    """

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self.before: dict[str, float] = {}
        self.used: dict[str, float] = {}

    def _read(self) -> dict[str, float]:
        totals = {}
        for name, roots in self.groups.items():
            if roots == [os.getpid()]:
                times = os.times()
                totals[name] = times.user + times.system
            else:
                totals[name] = sum(_cpu_seconds(p) for r in roots for p in _process_tree(r))
        return totals

    def start(self) -> None:
        self.before = self._read()

    def stop(self) -> None:
        after = self._read()
        self.used = {name: after[name] - self.before.get(name, 0.0) for name in after}


# --------------------------------------------------------------------------- raw ceiling


COLUMNS = (
    "result_id", "executed_at", "target_id", "check_id", "status", "exit_code", "output",
    "perfdata", "duration_ms", "received_at",
)


def raw_rows(agents: list[Agent], total: int) -> list[tuple[Any, ...]]:
    start = datetime.now(UTC) - timedelta(hours=1)
    rows = []
    for n in range(total):
        agent = agents[n % len(agents)]
        r = make_result(CHECK_ID, status_at(n), start + timedelta(seconds=n))
        rows.append(
            (
                r["result_id"], start + timedelta(seconds=n), agent.agent_id, CHECK_ID,
                r["status"], r["exit_code"], r["output"], json.dumps(r["perfdata"]),
                r["duration_ms"], datetime.now(UTC),
            )
        )
    return rows


@contextlib.contextmanager
def scratch_table(conn: psycopg.Connection[Any], name: str) -> Iterator[str]:
    """A copy of ``check_results`` (columns, keys, indexes), dropped afterwards."""
    conn.execute(f"DROP TABLE IF EXISTS {name}")
    conn.execute(f"CREATE TABLE {name} (LIKE check_results INCLUDING ALL)")
    try:
        yield name
    finally:
        conn.execute(f"DROP TABLE IF EXISTS {name}")


def raw_insert_rate(dsn: str, rows: list[tuple[Any, ...]], batch: int = 100) -> float:
    placeholders = "(" + ", ".join(["%s"] * len(COLUMNS)) + ")"
    with psycopg.connect(dsn) as conn:
        conn.autocommit = True
        with scratch_table(conn, "bench_raw_insert") as table:
            conn.autocommit = False
            began = time.perf_counter()
            for i in range(0, len(rows), batch):
                chunk = rows[i : i + batch]
                values = ", ".join([placeholders] * len(chunk))
                conn.execute(
                    f"INSERT INTO {table} ({', '.join(COLUMNS)}) VALUES {values} "  # noqa: S608
                    "ON CONFLICT DO NOTHING",
                    [v for row in chunk for v in row],
                )
                conn.commit()
            elapsed = time.perf_counter() - began
            conn.autocommit = True
            assert count_rows(dsn, table) == len(rows)
    return len(rows) / elapsed


def raw_copy_rate(dsn: str, rows: list[tuple[Any, ...]], batch: int = 1000) -> float:
    with psycopg.connect(dsn) as conn:
        conn.autocommit = True
        with scratch_table(conn, "bench_raw_copy") as table:
            conn.autocommit = False
            began = time.perf_counter()
            for i in range(0, len(rows), batch):
                with conn.cursor() as cur, cur.copy(
                    f"COPY {table} ({', '.join(COLUMNS)}) FROM STDIN"
                ) as copy:
                    for row in rows[i : i + batch]:
                        copy.write_row(row)
                conn.commit()
            elapsed = time.perf_counter() - began
            conn.autocommit = True
            assert count_rows(dsn, table) == len(rows)
    return len(rows) / elapsed


# --------------------------------------------------------------------------- report


def machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        kb = int(Path("/proc/meminfo").read_text().splitlines()[0].split()[1])
        memory = f", {kb / 1024 / 1024:.0f} GiB RAM"
    return f"{os.cpu_count()} x {cpu}{memory}, {platform.system()} {platform.release()}"


def report(
    args: argparse.Namespace,
    e2e: EndToEnd,
    insert: list[float],
    copy: list[float],
    cpu: dict[str, float],
) -> str:
    out = io.StringIO()
    print(f"machine        {machine()}", file=out)
    print(
        f"workload       {e2e.results} results from {args.agents} agents, {e2e.posts} POSTs of "
        f"{args.batch_size}, {args.clients} client threads; gunicorn {args.api_workers}x"
        f"{args.api_threads} threads, {args.workers} aami-server workers; PostgreSQL "
        f"fsync={'on' if args.durable else 'off'}, Redis appendonly everysec",
        file=out,
    )
    print(f"HTTP statuses  {dict(sorted(e2e.statuses.items()))} ({e2e.retries} retried)", file=out)
    print("", file=out)
    print(f"{'path':44} {'results/s':>10}  {'share':>6}", file=out)
    print(f"{'end to end (first POST -> last row)':44} {e2e.rate:>10,.0f}", file=out)
    print(f"{'  accepted by the API (first POST -> last 202)':44} {e2e.accept_rate:>10,.0f}",
          file=out)
    for label, rates in (
        ("raw INSERT ON CONFLICT, batches of 100", insert),
        ("raw COPY, batches of 1000 (reference)", copy),
    ):
        if rates:
            middle = statistics.median(rates)
            spread = ", ".join(f"{r:,.0f}" for r in rates)
            print(f"{label:44} {middle:>10,.0f}  {e2e.rate / middle:>6.0%}  (runs: {spread})",
                  file=out)
    print("", file=out)
    print(f"CPU during the end-to-end run ({e2e.total_s:.1f} s wall, "
          f"{os.cpu_count()} cores = {e2e.total_s * (os.cpu_count() or 1):.1f} CPU-s)", file=out)
    for name, seconds in cpu.items():
        per = 1000 * seconds / e2e.results * 100
        print(f"  {name:28} {seconds:7.1f} CPU-s  {per:6.2f} ms per batch of 100", file=out)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="aami-ingest-bench-"))
    postgres = PostgresServer(durable=args.durable)
    redis_server = RedisServer(appendonly=True)
    processes: list[Any] = []
    try:
        postgres.start()
        redis_server.start()
        with temporary_database(postgres.url, prefix="aami_bench") as database_url:
            server = LiveServer(
                scratch / "server",
                database_url=database_url,
                redis_url=redis_server.url,
                workers=args.api_workers,
                threads=args.api_threads,
                # Every simulated agent registers from 127.0.0.1.
                extra_settings={"AAMI_LOG_LEVEL": args.log_level,
                                "AAMI_REGISTER_RATE_LIMIT": "off"},
            )
            processes.append(server)
            server.start()
            for index in range(args.workers):
                worker = LiveWorker(server, index=index)
                processes.append(worker)
                worker.start()
            token = bootstrap_token(server)
            agents = register_agents(server, token, args.agents, prefix="bench")
            create_check(server, admin_headers(server), CHECK_ID, [a.agent_id for a in agents])
            meter = CpuMeter(
                {
                    "API (gunicorn)": [server.pid or 0],
                    "aami-server workers": [w.pid or 0 for w in processes[1:]],
                    "PostgreSQL": [postgres.pid or 0],
                    "Redis": [redis_server.pid or 0],
                    "load generator": [os.getpid()],
                }
            )
            print(f"posting {args.results} results ...", file=sys.stderr)
            meter.start()
            e2e = measure_end_to_end(server, agents, args)
            meter.stop()
            for process in reversed(processes):
                process.close()
            processes.clear()
            insert: list[float] = []
            copy: list[float] = []
            if not args.skip_raw:
                print("raw ceiling ...", file=sys.stderr)
                dsn = libpq_url(database_url)
                rows = raw_rows(agents, args.results)
                # The raw figures swing with the disk's fsync latency: take the median.
                for _ in range(args.raw_runs):
                    insert.append(raw_insert_rate(dsn, rows))
                    copy.append(raw_copy_rate(dsn, rows))
        text = report(args, e2e, insert, copy, meter.used)
        print(text)
        if args.json:
            Path(args.json).write_text(
                json.dumps(
                    {
                        "machine": machine(),
                        "args": vars(args),
                        "end_to_end_results_per_s": e2e.rate,
                        "accepted_results_per_s": e2e.accept_rate,
                        "raw_insert_rows_per_s": insert,
                        "raw_copy_rows_per_s": copy,
                        "share_of_raw_insert": (
                            e2e.rate / statistics.median(insert) if insert else None
                        ),
                        "http_statuses": dict(e2e.statuses),
                        "cpu_seconds": meter.used,
                    },
                    indent=2,
                )
            )
        return 0
    finally:
        for process in reversed(processes):
            process.close()
        redis_server.close()
        postgres.close()
        if args.keep:
            print(f"kept {scratch}", file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
