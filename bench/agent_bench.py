"""Benchmark of the node agent: its footprint under load, and the cost of one check run.

Two measurements, printed as tables (nothing is asserted; BENCHMARKS.md keeps the figures):

(a) footprint: a real ``aami-agent run`` with N checks (``check_dummy``, each every
    ``--interval`` seconds) against a real embedded server (``aami-server serve`` with
    AAMI_DATA_DIR in a temporary directory: SQLite and in-process jobs, no PostgreSQL or
    Redis). After a warm-up, the agent's resident memory (VmRSS from /proc/PID/status,
    sampled; the peak is the kernel's VmHWM) and its CPU time (utime+stime from
    /proc/PID/stat, and separately the plugins' cutime+cstime) are measured over a window.
    Targets: RSS < 40 MB.

(b) cost of one execution: ``agent.executor.Executor.run`` on ``check_dummy`` (built the way
    the agent builds it, from a default configuration) against a bare ``subprocess.run``
    loop spawning the same plugin, N times each, interleaved in rounds so that drift in the
    machine's load hits both alike. Target: the executor within 1.5x of the bare loop.

Run it from the repository root with the project's venv::

    .venv/bin/python bench/agent_bench.py            # both, default sizes (~2.5 minutes)
    .venv/bin/python bench/agent_bench.py --only executor --runs 1000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(1, str(ROOT))  # the checkout's agent package, even without an install
BIN = Path(sys.executable).parent
PLUGINS = Path("/usr/lib/nagios/plugins")
CHECK_DUMMY = str(PLUGINS / "check_dummy")
CLK_TCK = os.sysconf("SC_CLK_TCK")
RSS_TARGET_MB = 40.0
RATIO_TARGET = 1.5


# --------------------------------------------------------------------------- /proc


def proc_status(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def rss_mb(pid: int, key: str = "VmRSS") -> float:
    return int(proc_status(pid)[key].split()[0]) / 1024


def smaps_mb(pid: int) -> dict[str, float]:
    """/proc/PID/smaps_rollup in MB: Pss (resident pages, each shared one divided among
    the processes that map it), Private_Clean and Private_Dirty (pages no other process
    maps), and the rest."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, value = line.partition(":")
        fields[key] = int(value.split()[0]) / 1024
    return fields


def private_mb(pid: int) -> float:
    fields = smaps_mb(pid)
    return fields["Private_Clean"] + fields["Private_Dirty"]


def spawner_pids(agent_pid: int) -> list[int]:
    """The agent's spawner processes (agent/spawner.py): its children running Python."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat[1]) == agent_pid and cmdline[1:4] == [b"-I", b"-S", b"-c"]:
            pids.append(int(entry.name))
    return sorted(pids)


@dataclass(frozen=True)
class Footprint:
    """The agent and its spawners at one moment, in MB."""

    agent_rss: float
    spawners_rss: float
    spawners_private: float
    total_pss: float
    spawners: int

    @classmethod
    def of(cls, agent_pid: int) -> Footprint:
        spawners = spawner_pids(agent_pid)
        return cls(
            agent_rss=rss_mb(agent_pid),
            spawners_rss=sum(rss_mb(pid) for pid in spawners),
            spawners_private=sum(private_mb(pid) for pid in spawners),
            total_pss=sum(smaps_mb(pid)["Pss"] for pid in [agent_pid, *spawners]),
            spawners=len(spawners),
        )

    @property
    def resident(self) -> float:
        """Memory the agent and its spawners hold together: the agent's RSS and what only
        the spawners map (the rest of theirs, the interpreter and libc, the agent maps
        too)."""
        return self.agent_rss + self.spawners_private

    @property
    def total_rss(self) -> float:
        """Both RSS added up: the pages they share counted twice."""
        return self.agent_rss + self.spawners_rss


@dataclass(frozen=True)
class CpuTimes:
    own: float  # utime + stime of the agent and its spawners
    children: float  # cutime + cstime of the spawners: the plugins they reaped

    @classmethod
    def of(cls, pid: int) -> CpuTimes:
        agent_own, _ = _cpu_times(pid)
        own, children = agent_own, 0.0
        for spawner in spawner_pids(pid):
            spawner_own, plugins = _cpu_times(spawner)
            own, children = own + spawner_own, children + plugins
        return cls(own, children)


def _cpu_times(pid: int) -> tuple[float, float]:
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # Fields after the command name start at field 3 (state): utime is field 14.
    utime, stime, cutime, cstime = (int(x) for x in stat[11:15])
    return (utime + stime) / CLK_TCK, (cutime + cstime) / CLK_TCK


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AAMI_")}
    env.update(AAMI_DATA_DIR=str(data_dir), AAMI_LOG_LEVEL="warning")
    return env


def cli_secret(data_dir: Path, *args: str) -> str:
    done = subprocess.run([str(BIN / "aami-server"), *args], env=server_env(data_dir),
                          cwd=data_dir, capture_output=True, text=True, check=True)
    return done.stdout.strip().splitlines()[-1]


def api(base: str, path: str, token: str, body: Any = None) -> Any:
    request = urllib.request.Request(
        f"{base}/api/v1/{path}", method="POST" if body is not None else "GET",
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as reply:
        return json.loads(reply.read() or b"null")


def wait_for(probe: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = probe()
        except (OSError, ValueError, urllib.error.URLError):
            value = None
        if value:
            return value
        time.sleep(0.2)
    raise RuntimeError(f"timed out waiting for {what}")


def stop(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextmanager
def embedded_system(work: Path, checks: int, interval: int) -> Iterator[dict[str, Any]]:
    """An embedded server with ``checks`` check_dummy checks, and an agent running them."""
    data_dir = work / "server"
    data_dir.mkdir()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    admin = cli_secret(data_dir, "admin-token", "create", "--name", "bench")
    bootstrap = cli_secret(data_dir, "token", "create", "--name", "bench")
    processes: list[subprocess.Popen[bytes]] = []
    try:
        with (data_dir / "server.log").open("ab") as log:
            processes.append(subprocess.Popen(
                [str(BIN / "aami-server"), "serve", "--host", "127.0.0.1", "--port", str(port)],
                env=server_env(data_dir), cwd=data_dir, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True))
        wait_for(lambda: urllib.request.urlopen(f"{base}/readyz", timeout=2).status == 200,
                 60, "the server")
        for n in range(checks):
            api(base, "checks", admin, {
                "id": f"bench-{n:03d}", "command": [CHECK_DUMMY, "0", f"bench check {n}"],
                "interval": f"{interval}s", "timeout": "5s",
                "assign": {"labels": {"bench": "true"}}})
        agent_dir = work / "agent"
        agent_dir.mkdir()
        config = agent_dir / "agent.yaml"
        # The agent verifies the server's signed policies, as a deployed one does.
        policy_key = cli_secret(data_dir, "policy-key", "show")
        config.write_text(f"""server:
  address: "{base}"
  bootstrap_token: "{bootstrap}"
  policy_keys: ["{policy_key}"]
agent:
  id_file: "{agent_dir}/agent-id"
  labels: {{bench: "true"}}
  state_dir: "{agent_dir}/state"
checks:
  allowed_paths: ["{PLUGINS}"]
logging: {{level: info, format: json}}
""")
        with (agent_dir / "agent.log").open("ab") as log:
            agent = subprocess.Popen(
                [str(BIN / "aami-agent"), "run", "-c", str(config)], cwd=agent_dir,
                env=server_env(data_dir), stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        processes.append(agent)
        agent_id = wait_for(lambda: (agent_dir / "agent-id").read_text().strip(), 30,
                            "the agent id")
        yield {"base": base, "admin": admin, "agent": agent, "agent_id": agent_id,
               "status": agent_dir / "state" / "status.json"}
    finally:
        for proc in reversed(processes):  # the agent first: it hands its results over
            stop(proc)


# --------------------------------------------------------------------------- (a) footprint


def bench_agent(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="aami-agent-bench-"))
    try:
        with embedded_system(work, args.checks, args.interval) as system:
            pid = system["agent"].pid
            started = time.monotonic()
            samples: list[Footprint] = []

            def sample_until(until: float) -> None:
                while time.monotonic() < until:
                    if system["agent"].poll() is not None:
                        raise RuntimeError(f"the agent exited; see {work}/agent/agent.log")
                    samples.append(Footprint.of(pid))
                    time.sleep(0.25)

            sample_until(started + args.warmup)
            warm = len(samples)
            cpu_before, wall_before = CpuTimes.of(pid), time.monotonic()
            window_start = time.time()
            sample_until(wall_before + args.window)
            cpu_after, wall_after = CpuTimes.of(pid), time.monotonic()
            window_end = time.time()
            status = proc_status(pid)
            spawners = spawner_pids(pid)
            spawners_peak = sum(rss_mb(p, "VmHWM") for p in spawners)
            spawners_private = sum(private_mb(p) for p in spawners)
            # Runs of the window's last seconds are still on their way (the agent sends
            # every flush interval, 2 s by default): let them arrive before counting.
            time.sleep(5)
            results = api(system["base"], f"targets/{system['agent_id']}/results?limit=1000",
                          system["admin"])
            runs = sum(1 for r in results
                       if window_start <= _epoch(r["executed_at"]) < window_end)
            checks_seen = len(json.loads(system["status"].read_text()).get("checks", {}))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    elapsed = wall_after - wall_before
    window = samples[warm:]
    agent_rss = [f.agent_rss for f in window]
    resident = [f.resident for f in window]
    total_rss = [f.total_rss for f in window]
    total_pss = [f.total_pss for f in window]
    agent_peak = int(status["VmHWM"].split()[0]) / 1024
    own = cpu_after.own - cpu_before.own
    plugins = cpu_after.children - cpu_before.children
    return {
        "checks": args.checks,
        "checks_seen_by_agent": checks_seen,
        "interval_s": args.interval,
        "warmup_s": args.warmup,
        "window_s": round(elapsed, 1),
        "agent_rss_peak_mb": round(agent_peak, 1),
        "agent_rss_steady_median_mb": round(statistics.median(agent_rss), 1),
        "spawners": len(spawners),
        "spawners_rss_peak_mb": round(spawners_peak, 1),
        "spawners_private_mb": round(spawners_private, 1),
        "resident_peak_mb": round(agent_peak + spawners_private, 1),
        "resident_steady_median_mb": round(statistics.median(resident), 1),
        "resident_window_min_mb": round(min(resident), 1),
        "resident_window_max_mb": round(max(resident), 1),
        "rss_sum_steady_median_mb": round(statistics.median(total_rss), 1),
        "pss_steady_median_mb": round(statistics.median(total_pss), 1),
        "resident_after_warmup_mb": round(samples[warm - 1].resident, 1) if warm else None,
        "threads": int(status["Threads"]),
        "cpu_agent_pct": round(100 * own / elapsed, 2),
        "cpu_plugins_pct": round(100 * plugins / elapsed, 2),
        "executions_in_window": runs,
        "executions_per_s": round(runs / elapsed, 2),
        "agent_cpu_ms_per_execution": round(1000 * own / runs, 2) if runs else None,
    }


def _epoch(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


# --------------------------------------------------------------------------- (b) executor


def agent_executor(work: Path) -> Any:
    """The executor exactly as ``aami-agent run`` builds it from a default configuration."""
    from agent.config import load_config
    from agent.runner import build_executor

    config = work / "agent.yaml"
    config.write_text(f"""server: {{address: "127.0.0.1:9", bootstrap_token: "x"}}
agent: {{id_file: "{work}/agent-id", state_dir: "{work}/state"}}
checks: {{allowed_paths: ["{PLUGINS}"]}}
""")
    return build_executor(load_config(config))


def bench_executor(args: argparse.Namespace) -> dict[str, Any]:
    from agent.model import CheckSpec, ResourceLimits

    work = Path(tempfile.mkdtemp(prefix="aami-exec-bench-"))
    try:
        executor = agent_executor(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    argv = [CHECK_DUMMY, "0", "bench"]
    spec = CheckSpec(id="bench", name="bench", command=tuple(argv), interval=10.0,
                     timeout=10.0, limits=ResourceLimits(), env={})

    def bare() -> None:
        done = subprocess.run(argv, capture_output=True, check=False)
        assert done.returncode == 0

    def agent() -> None:
        result = executor.run(spec)
        assert result.status == "ok", result.output

    # For attribution: the executor's way of spawning (new session, resource limits set
    # by a preexec_fn, which makes subprocess fork() the whole process instead of using
    # vfork()), without the rest of the executor.
    from agent.limits import DEFAULT_LIMITS, make_preexec

    set_limits = make_preexec(DEFAULT_LIMITS)

    def bare_limited() -> None:
        done = subprocess.run(argv, capture_output=True, check=False, start_new_session=True,
                              preexec_fn=set_limits)
        assert done.returncode == 0

    loops = {"bare": bare, "bare_limited": bare_limited, "agent": agent}
    for _ in range(max(args.runs // 20, 5)):  # warm caches (page cache, lru_caches)
        for run in loops.values():
            run()
    timings: dict[str, list[float]] = {name: [] for name in loops}
    per_round = max(args.runs // args.rounds, 1)
    for n in range(args.rounds):
        order = list(loops.items())
        if n % 2:
            order.reverse()
        for name, run in order:
            for _ in range(per_round):
                began = time.perf_counter()
                run()
                timings[name].append(time.perf_counter() - began)

    def summary(values: list[float]) -> dict[str, float]:
        ordered = sorted(values)
        return {
            "mean_ms": round(1000 * statistics.fmean(values), 3),
            "median_ms": round(1000 * statistics.median(values), 3),
            "p95_ms": round(1000 * ordered[int(0.95 * (len(ordered) - 1))], 3),
            "runs_per_s": round(len(values) / sum(values), 1),
        }

    bare_stats, agent_stats = summary(timings["bare"]), summary(timings["agent"])
    return {
        "runs_each": len(timings["bare"]),
        "rounds": args.rounds,
        "bare": bare_stats,
        "bare_limited": summary(timings["bare_limited"]),
        "agent": agent_stats,
        "ratio_mean": round(agent_stats["mean_ms"] / bare_stats["mean_ms"], 2),
        "ratio_median": round(agent_stats["median_ms"] / bare_stats["median_ms"], 2),
    }


# --------------------------------------------------------------------------- output


def table(rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def print_agent(a: dict[str, Any]) -> None:
    print(f"\n(a) agent footprint: {a['checks']} check_dummy checks every {a['interval_s']} s "
          f"against an embedded server; {a['warmup_s']} s warm-up, {a['window_s']} s window")
    print(table([
        ("metric", "value", "target"),
        ("resident peak: agent VmHWM + spawners' own", f"{a['resident_peak_mb']} MB",
         f"< {RSS_TARGET_MB:g} MB: {verdict(a['resident_peak_mb'] < RSS_TARGET_MB)}"),
        ("resident steady (median in window)", f"{a['resident_steady_median_mb']} MB",
         f"< {RSS_TARGET_MB:g} MB: "
         f"{verdict(a['resident_steady_median_mb'] < RSS_TARGET_MB)}"),
        ("resident min / max in window",
         f"{a['resident_window_min_mb']} / {a['resident_window_max_mb']} MB", ""),
        ("RSS peak, agent alone (VmHWM)", f"{a['agent_rss_peak_mb']} MB", ""),
        ("spawners: RSS peak / own pages",
         f"{a['spawners_rss_peak_mb']} / {a['spawners_private_mb']} MB ({a['spawners']})",
         ""),
        ("RSS of agent + spawners added (shared twice)", f"{a['rss_sum_steady_median_mb']} MB",
         ""),
        ("PSS of agent + spawners", f"{a['pss_steady_median_mb']} MB", ""),
        ("threads", str(a["threads"]), ""),
        ("CPU, agent + spawners (utime+stime)", f"{a['cpu_agent_pct']} % of one core", ""),
        ("CPU, plugins (spawners' cutime+cstime)", f"{a['cpu_plugins_pct']} % of one core",
         ""),
        ("executions in window", f"{a['executions_in_window']} "
                                 f"({a['executions_per_s']}/s)", ""),
        ("agent CPU per execution", f"{a['agent_cpu_ms_per_execution']} ms", ""),
        ("checks the agent reports", str(a["checks_seen_by_agent"]), ""),
    ]))


def print_executor(e: dict[str, Any]) -> None:
    print(f"\n(b) one check execution: check_dummy 0, {e['runs_each']} runs each, "
          f"interleaved in {e['rounds']} rounds")
    rows = [("loop", "mean", "median", "p95", "runs/s")]
    for name, label in (("bare", "bare subprocess.run"),
                        ("bare_limited", "subprocess.run + setsid + rlimits (preexec_fn)"),
                        ("agent", "agent Executor.run")):
        s = e[name]
        rows.append((label, f"{s['mean_ms']} ms", f"{s['median_ms']} ms", f"{s['p95_ms']} ms",
                     str(s["runs_per_s"])))
    rows.append(("ratio agent/bare", f"{e['ratio_mean']}x", f"{e['ratio_median']}x", "", ""))
    print(table(rows))
    print(f"target: within {RATIO_TARGET}x: {verdict(e['ratio_mean'] <= RATIO_TARGET)}")


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    load = os.getloadavg()
    return (f"{os.cpu_count()} CPUs ({cpu}), Linux {platform.release()}, "
            f"Python {platform.python_version()}, load average {load[0]:.2f} at start")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Measure the AAMI agent: (a) its memory and CPU while running many "
                    "checks against an embedded server, (b) the cost of one check execution "
                    "through its Executor against a bare subprocess loop.")
    parser.add_argument("--only", choices=["agent", "executor"],
                        help="run one of the two measurements (default: both)")
    parser.add_argument("--checks", type=int, default=100, help="checks for (a) [100]")
    parser.add_argument("--interval", type=int, default=10,
                        help="seconds between runs of each check in (a) [10]")
    parser.add_argument("--warmup", type=float, default=30.0,
                        help="seconds before the measured window in (a) [30]")
    parser.add_argument("--window", type=float, default=60.0,
                        help="seconds of the measured window in (a) [60]")
    parser.add_argument("--runs", type=int, default=1000,
                        help="executions of each kind in (b) [1000]")
    parser.add_argument("--rounds", type=int, default=10,
                        help="rounds the runs of (b) are interleaved in [10]")
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary directory of (a) (logs, databases)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not Path(CHECK_DUMMY).exists():
        print(f"{CHECK_DUMMY} is missing: apt-get install monitoring-plugins", file=sys.stderr)
        return 2
    print(f"machine: {machine()}")
    figures: dict[str, Any] = {"machine": machine()}
    if args.only in (None, "executor"):
        figures["executor"] = bench_executor(args)
        print_executor(figures["executor"])
    if args.only in (None, "agent"):
        figures["agent"] = bench_agent(args)
        print_agent(figures["agent"])
    if args.json:
        print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
