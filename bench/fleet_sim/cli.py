"""Command line of the fleet simulator (``python -m bench.fleet_sim --help``)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.fleet_sim.runner import LABELS, Plan, RunReport, StepReport, Target, run  # noqa: E402
from bench.fleet_sim.stack import (  # noqa: E402
    CeilingServer,
    Serving,
    Stack,
    existing_setup,
    operator_setup,
    raise_open_files_limit,
)


def default_steps(agents: int) -> list[int]:
    steps = sorted({max(1, agents // 10), max(1, agents // 4), max(1, agents // 2), agents})
    return steps


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.fleet_sim",
        description="Simulate a fleet of agents in one process (asyncio + aiohttp) against "
        "a real AAMI server, in steps; report throughput, latency, errors, ingest lag and "
        "lost results per step, and the same mix against a bare Flask app (the ceiling).",
    )
    fleet = parser.add_argument_group("fleet")
    fleet.add_argument("--agents", type=int, default=10000, help="agents at the last step (10000)")
    fleet.add_argument("--steps", default="",
                       help="comma-separated fleet sizes (default: 1/10, 1/4, 1/2, all)")
    fleet.add_argument("--checks", type=int, default=10, help="checks per agent (10)")
    fleet.add_argument("--heartbeat-interval", type=float, default=30.0,
                       help="seconds between heartbeats; also the server's setting (30)")
    fleet.add_argument("--results-interval", type=float, default=60.0,
                       help="seconds between result batches (one result per check) (60)")
    fleet.add_argument("--poll-wait", type=float, default=55.0,
                       help="?wait= of the assignment long-poll, as aami-agent (55)")
    fleet.add_argument("--ramp-rate", type=float, default=100.0,
                       help="new agents started per second when a step grows the fleet (100)")
    fleet.add_argument("--warmup", type=float, default=45.0,
                       help="seconds between a step's last registration and its window (45)")
    fleet.add_argument("--window", type=float, default=60.0,
                       help="seconds each step is measured (60)")
    fleet.add_argument("--bootstrap-tokens", type=int, default=1,
                       help="bootstrap tokens the fleet's agents share out (1): every "
                       "registration counts a use of its token, on one locked row")
    fleet.add_argument("--seed", type=int, default=1)

    server = parser.add_argument_group("server")
    server.add_argument("--url", default=None,
                        help="use this running server instead of starting one (needs "
                        "--bootstrap-token and --admin-token; --database-url to count results)")
    server.add_argument("--bootstrap-token", default=None)
    server.add_argument("--admin-token", default=None)
    server.add_argument("--database-url", default=None)
    server.add_argument("--worker-class", choices=["gthread", "gevent"], default="gevent",
                        help="gunicorn worker class of the API and of the ceiling (gevent)")
    server.add_argument("--api-workers", type=int, default=2, help="gunicorn processes (2)")
    server.add_argument("--threads", type=int, default=32, help="threads per process (gthread)")
    server.add_argument("--worker-connections", type=int, default=10000,
                        help="connections per process (gevent) (10000)")
    server.add_argument("--workers", type=int, default=2, help="aami-server worker processes (2)")
    server.add_argument("--worker-nice", type=int, default=0,
                        help="niceness of the aami-server worker processes (0)")
    server.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment of the API and workers (repeatable)")
    server.add_argument("--durable", action=argparse.BooleanOptionalAction, default=True,
                        help="PostgreSQL with fsync on, as in production (default)")
    server.add_argument("--log-level", default="warning", help="AAMI_LOG_LEVEL (warning)")
    server.add_argument("--workdir", default=None, help="keep data and logs here")

    modes = parser.add_argument_group("modes")
    modes.add_argument("--restart-server", choices=["none", "term", "kill"], default="none",
                       help="restart the API under the fleet after a step: 'term' (SIGTERM, a "
                       "deploy) or 'kill' (SIGKILL, a crash); measures the reconnection storm")
    modes.add_argument("--restart-after-step", type=int, default=-1,
                       help="index of the step after which to restart (-1: the last)")
    modes.add_argument("--ceiling", action=argparse.BooleanOptionalAction, default=True,
                       help="also run the mix against a bare Flask app (default: yes)")
    modes.add_argument("--ceiling-only", action="store_true", help="only the ceiling")
    modes.add_argument("--progress", type=float, default=0, metavar="SECONDS",
                       help="print request counts every SECONDS (0: off)")
    modes.add_argument("--json", default=None, metavar="PATH", help="write the report as JSON")
    args = parser.parse_args(argv)
    if args.url and not (args.bootstrap_token and args.admin_token):
        parser.error("--url needs --bootstrap-token and --admin-token")
    if args.url and args.restart_server != "none":
        parser.error("--restart-server needs a server started by the simulator (no --url)")
    return args


def _plan(args: argparse.Namespace) -> Plan:
    steps = ([int(s) for s in args.steps.split(",") if s.strip()] if args.steps
             else default_steps(args.agents))
    return Plan(steps=steps, ramp_rate=args.ramp_rate, warmup=args.warmup, window=args.window,
                heartbeat_interval=args.heartbeat_interval,
                results_interval=args.results_interval, poll_wait=args.poll_wait,
                restart=args.restart_server, restart_after_step=args.restart_after_step,
                seed=args.seed, progress=args.progress)


# -- printing ------------------------------------------------------------------------------


def _lat(kinds: dict[str, Any], kind: str) -> str:
    entry = kinds.get(kind, {})
    p50, p99 = entry.get("p50_ms"), entry.get("p99_ms")
    if p50 is None:
        return "-"
    return f"{p50:g}/{p99:g}"


def step_line(step: StepReport) -> str:
    w = step.window
    kinds = w["kinds"]
    polls = kinds.get("poll", {}).get("outcomes", {})
    lag = step.ingest_lag_s
    cpu = " ".join(f"{role} {pct:g}%" for role, pct in step.cpu_percent.items())
    return (
        f"{step.agents:>6} agents | {w['requests_per_s']:>7.1f} req/s | fail {w['failures']:>5}"
        f" 5xx {w['server_errors_5xx']:>4} busy {w['shed_503_busy']:>5}"
        f" 429 {w['rate_limited_429']:>4} | p50/p99 ms:"
        f" heartbeat {_lat(kinds, 'heartbeat')} results {_lat(kinds, 'results')}"
        f" assignment {_lat(kinds, 'assignment')} register {_lat(kinds, 'register')}"
        f" | polls 304 {polls.get('304', 0)} 200 {polls.get('200', 0)}"
        f" | ingest lag median/max s {lag.get('median')}/{lag.get('max')}"
        f" | client loop lag p99 {w['client_loop_lag_p99_ms']} ms | CPU {cpu}"
        f" | accept-queue overflows {step.listen_overflows}"
    )


def ramp_line(step: StepReport) -> str:
    ramp = step.ramp
    register = ramp.get("kinds", {}).get("register", {})
    return (f"  growth to {step.agents}: {step.registration_s:g}s, registrations "
            f"{register.get('outcomes')} p50/p99 ms {register.get('p50_ms')}/"
            f"{register.get('p99_ms')}; all requests meanwhile: {ramp.get('requests')} "
            f"({ramp.get('failures')} failed, 5xx {ramp.get('server_errors_5xx')}, "
            f"503 busy {ramp.get('shed_503_busy')}, 429 {ramp.get('rate_limited_429')})")


def show(item: Any) -> None:
    if isinstance(item, StepReport):
        print(step_line(item), flush=True)
        print(ramp_line(item), flush=True)
        print(f"  worst seconds of the window (second, p99 ms, requests): "
              f"{item.window.get('worst_seconds')}", flush=True)
    else:
        print("restart:", json.dumps({k: v for k, v in item.items() if k != "window"}),
              flush=True)
        w = item["window"]
        print(f"  during the storm: {w['requests']} requests, {w['failures']} failed, "
              f"5xx {w['server_errors_5xx']}, 503 busy {w['shed_503_busy']}, "
              f"429 {w['rate_limited_429']}, p50/p99 ms "
              f"heartbeat {_lat(w['kinds'], 'heartbeat')} results {_lat(w['kinds'], 'results')}"
              f"; outcomes {json.dumps({k: v['outcomes'] for k, v in w['kinds'].items()})}",
              flush=True)


def side_by_side(real: RunReport, ceiling: RunReport) -> str:
    lines = ["", "AAMI server vs bare Flask (same gunicorn settings, same request mix):",
             f"{'agents':>7} | {'req/s':>15} | " + " | ".join(
                 f"{k} p50/p99 ms".rjust(27) for k in ("heartbeat", "results", "assignment"))]
    for a, b in zip(real.steps, ceiling.steps, strict=False):
        cells = [f"{a.window['requests_per_s']:g} / {b.window['requests_per_s']:g}".rjust(15)]
        for kind in ("heartbeat", "results", "assignment"):
            cells.append(f"{_lat(a.window['kinds'], kind)} vs {_lat(b.window['kinds'], kind)}"
                         .rjust(27))
        lines.append(f"{a.agents:>7} | " + " | ".join(cells))
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    load = os.getloadavg()
    return {"cpus": os.cpu_count(), "python": platform.python_version(),
            "kernel": platform.release(), "load_average_at_start": [round(x, 2) for x in load]}


# -- main ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = _plan(args)
    serving = Serving(worker_class=args.worker_class, workers=args.api_workers,
                      threads=args.threads, worker_connections=args.worker_connections)
    limit = raise_open_files_limit()
    need = max(plan.steps) * 2 + 1000
    if limit < need:
        print(f"warning: open files limit {limit} is below the ~{need} sockets this run needs",
              file=sys.stderr)
    check_ids = [f"sim-{n}" for n in range(args.checks)]
    out: dict[str, Any] = {"machine": machine(), "plan": asdict(plan),
                           "serving": serving.describe()}
    print(f"fleet-sim: steps {plan.steps}, window {plan.window:g}s after {plan.warmup:g}s "
          f"warm-up, serving {serving.describe()}, machine {out['machine']}", flush=True)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="fleet-sim-"))
    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o755)  # PostgreSQL runs as its own user when we are root
    real: RunReport | None = None
    try:
        if not args.ceiling_only:
            real = _run_real(args, plan, serving, workdir, check_ids)
            out["aami"] = asdict(real)
            if real.accounting is not None:
                print("results:", json.dumps(real.accounting), flush=True)
        if args.ceiling or args.ceiling_only:
            ceiling_plan = Plan(**{**asdict(plan), "restart": "none"})
            print("\nceiling: bare Flask app, same gunicorn settings", flush=True)
            ceiling = _run_ceiling(ceiling_plan, serving, workdir, check_ids)
            out["ceiling"] = asdict(ceiling)
            if real is not None:
                print(side_by_side(real, ceiling), flush=True)
    except KeyboardInterrupt:
        # The stack is stopped by the ``finally`` blocks on the way out.
        print("fleet-sim: interrupted; the servers it started are stopped", file=sys.stderr)
        return 130
    finally:
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=2, default=str))
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _run_real(args: argparse.Namespace, plan: Plan, serving: Serving, workdir: Path,
              check_ids: list[str]) -> RunReport:
    if args.url:
        existing_setup(args.url, args.admin_token, len(check_ids), LABELS)
        target = Target(base_url=args.url.rstrip("/"), bootstrap_tokens=[args.bootstrap_token],
                        check_ids=check_ids, database_url=args.database_url)
        return asyncio.run(run(target, plan, show=show))
    (workdir / "aami").mkdir(mode=0o755, exist_ok=True)
    stack = Stack(workdir / "aami", serving, workers=args.workers, durable=args.durable,
                  log_level=args.log_level, heartbeat_interval=args.heartbeat_interval,
                  worker_nice=args.worker_nice,
                  server_env=dict(item.split("=", 1) for item in args.server_env))
    began = time.monotonic()
    try:
        stack.start()
        server = stack.server
        assert server is not None
        bootstrap, _admin = operator_setup(server, len(check_ids), LABELS,
                                           tokens=args.bootstrap_tokens)
        print(f"stack up in {time.monotonic() - began:.1f}s: {server.url} "
              f"(logs in {workdir})", flush=True)

        def restart(kill: bool) -> None:
            server.restart_on_same_port(kill=kill)

        target = Target(base_url=server.url, bootstrap_tokens=bootstrap, check_ids=check_ids,
                        database_url=stack.database_url, processes=stack.processes,
                        restart=restart)
        return asyncio.run(run(target, plan, show=show))
    finally:
        stack.close()


def _run_ceiling(plan: Plan, serving: Serving, workdir: Path, check_ids: list[str]) -> RunReport:
    server = CeilingServer(workdir / "ceiling", serving, plan.heartbeat_interval)
    server.start()
    try:
        pid = server.pid

        def processes() -> dict[str, list[int]]:
            from tests.support.services import child_pids

            return {"api": [pid, *child_pids(pid)]} if pid else {}

        target = Target(base_url=server.url, bootstrap_tokens=["ceiling"], check_ids=check_ids,
                        processes=processes)
        return asyncio.run(run(target, plan, show=show))
    finally:
        server.close()
