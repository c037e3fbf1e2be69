"""``aami-server demo``: the whole system on one machine, with a live view in the terminal.

It runs the embedded server (SQLite, inline jobs), makes a bootstrap and an admin token,
assigns sample checks (Debian's monitoring-plugins when installed, small bundled
scripts otherwise), starts a real ``aami-agent`` and redraws the fleet's check states
every two seconds until Ctrl-C, which stops everything cleanly.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

PLUGIN_DIR = Path("/usr/lib/nagios/plugins")
STATUS_COLOURS = {"ok": 32, "warning": 33, "critical": 31, "unknown": 35, "online": 32}

# Stand-ins for monitoring-plugins, written into the demo directory when those are missing.
BUNDLED_PLUGINS = {
    "aami_check_load": """#!/bin/sh
read one five fifteen _ < /proc/loadavg
echo "LOAD OK - load average: $one, $five, $fifteen|load1=$one;;;0 load5=$five;;;0"
""",
    "aami_check_root_fs": """#!/bin/sh
df -P / | awk 'NR==2 { used=$5; sub("%","",used);
  state = used >= 95 ? 2 : (used >= 85 ? 1 : 0);
  split("OK WARNING CRITICAL", name, " ");
  printf "DISK %s - / is %s%% full|used=%s%%;85;95;0;100\\n", name[state+1], used, used;
  exit state }'
""",
    "aami_check_flaky": """#!/bin/sh
if [ $(( $(date +%s) / 20 % 2 )) -eq 0 ]; then echo "FLAKY OK - even window"; exit 0; fi
echo "FLAKY WARNING - odd window"; exit 1
""",
}


def _have_monitoring_plugins() -> bool:
    return (PLUGIN_DIR / "check_dummy").exists()


def _sample_checks(plugin_dir: Path) -> list[dict[str, Any]]:
    if _have_monitoring_plugins():
        p = str(PLUGIN_DIR)
        return [
            {"id": "load", "command": [f"{p}/check_load", "-r", "-w", "4,3,2", "-c", "8,6,4"]},
            {"id": "root-disk", "command": [f"{p}/check_disk", "-w", "15%", "-c", "5%", "-p", "/"]},
            {"id": "users", "command": [f"{p}/check_users", "-w", "20", "-c", "50"]},
            {"id": "procs", "command": [f"{p}/check_procs", "-w", "1500", "-c", "3000"]},
            {"id": "dummy-ok", "command": [f"{p}/check_dummy", "0", "all good"]},
            {"id": "dummy-warning", "command": [f"{p}/check_dummy", "1", "something is odd"]},
            {"id": "dummy-critical", "command": [f"{p}/check_dummy", "2", "something broke"]},
        ]
    return [
        {
            "id": name.removeprefix("aami_check_").replace("_", "-"),
            "command": [str(plugin_dir / name)],
        }
        for name in BUNDLED_PLUGINS
    ]


def _script_executables() -> list[str]:
    """What the checks may execute past the agent's exec containment besides the plugin
    directories: nothing for monitoring-plugins' programs; the shell and its tools for the
    bundled stand-ins, which are shell scripts."""
    return [] if _have_monitoring_plugins() else ["/bin/sh", "/usr/bin"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _colour(status: str) -> str:
    code = STATUS_COLOURS.get(status)
    return f"\033[{code}m{status}\033[0m" if code and sys.stdout.isatty() else status


class Demo:
    def __init__(self, data_dir: Path, port: int | None) -> None:
        self.data_dir = data_dir.resolve()
        self.port = port or _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "AAMI_DATA_DIR": str(self.data_dir)}
        for name in ("AAMI_DATABASE_URL", "AAMI_REDIS_URL"):
            self.env.pop(name, None)
        self.processes: list[subprocess.Popen[bytes]] = []
        self.stop = threading.Event()
        self.session = requests.Session()

    def _spawn(self, argv: list[str], log_name: str) -> subprocess.Popen[bytes]:
        log = open(self.data_dir / log_name, "ab")  # closed when the process ends
        # Own session: Ctrl-C reaches only the demo, which then stops the agent before
        # the server, so the agent can hand its last results over.
        process = subprocess.Popen(
            argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.processes.append(process)
        return process

    def _cli(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "server.cli", *args],
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout.strip().splitlines()[-1]

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        print(f"AAMI demo: data in {self.data_dir}, server on {self.base}")
        admin = self._cli("admin-token", "create", "--name", "demo")
        bootstrap = self._cli("token", "create", "--name", "demo agents", "--label", "demo=true")
        self.session.headers["Authorization"] = f"Bearer {admin}"
        self._spawn(
            [sys.executable, "-m", "server.cli", "serve", "--port", str(self.port)], "server.log"
        )
        self._wait_ready()
        plugin_dir = self._write_bundled_plugins()
        self._create_checks(plugin_dir)
        # The server made its policy key at its first start; the agent trusts it from the
        # start (over plain HTTP it would learn no key, and refuse every policy).
        policy_key = self._cli("policy-key", "show")
        config = self._write_agent_config(bootstrap, plugin_dir, policy_key)
        self._spawn([sys.executable, "-m", "agent", "run", "-c", str(config)], "agent.log")
        print(f"agent started with {config}; logs in {self.data_dir}/*.log. Ctrl-C stops.")

    def _wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.base}/readyz", timeout=1).ok:
                    return
            except (requests.ConnectionError, requests.Timeout):
                pass  # not listening yet, or too busy starting to answer in time
            if any(p.poll() is not None for p in self.processes):
                break
            time.sleep(0.2)
        raise RuntimeError(f"the server did not start: see {self.data_dir}/server.log")

    def _write_bundled_plugins(self) -> Path:
        plugin_dir = self.data_dir / "plugins"
        plugin_dir.mkdir(exist_ok=True)
        for name, body in BUNDLED_PLUGINS.items():
            path = plugin_dir / name
            path.write_text(body)
            path.chmod(0o755)
        return plugin_dir

    def _create_checks(self, plugin_dir: Path) -> None:
        for check in _sample_checks(plugin_dir):
            body = {
                **check,
                "interval": "10s",
                "timeout": "5s",
                "assign": {"labels": {"demo": "true"}},
            }
            reply = self.session.post(f"{self.base}/api/v1/checks", json=body, timeout=5)
            if reply.status_code == 409:
                patch = {k: v for k, v in body.items() if k != "id"}
                reply = self.session.patch(
                    f"{self.base}/api/v1/checks/{check['id']}", json=patch, timeout=5
                )
            reply.raise_for_status()

    def _write_agent_config(self, bootstrap: str, plugin_dir: Path, policy_key: str) -> Path:
        agent_dir = self.data_dir / "agent"
        agent_dir.mkdir(exist_ok=True)
        config = agent_dir / "agent.yaml"
        config.write_text(
            f"""# Written by aami-server demo.
server:
  address: "{self.base}"
  bootstrap_token: "{bootstrap}"
  policy_keys: ["{policy_key}"]  # the server's: aami-server policy-key show
  tls:
    enabled: false
agent:
  id_file: "{agent_dir}/agent-id"
  labels: {{demo: "true"}}
  state_dir: "{agent_dir}/state"
heartbeat: {{interval: 10s, timeout: 5s}}
checks:
  default_timeout: 10s
  max_concurrent: 4
  allowed_paths: ["{PLUGIN_DIR}", "{plugin_dir}"]
  allowed_executables: {json.dumps(_script_executables())}
logging: {{level: info, format: json}}
"""
        )
        return config

    def render(self) -> str:
        lines = [f"AAMI demo - {time.strftime('%H:%M:%S')} - {self.base} - Ctrl-C stops", ""]
        targets = self.session.get(f"{self.base}/api/v1/targets", timeout=5).json()
        if not targets:
            lines.append("waiting for the agent to register...")
        for target in targets:
            lines.append(
                f"{target['hostname']}  {target['id']}  {_colour(target['status'])}"
                f"  last seen {target['last_seen'] or 'never'}"
            )
            states = self.session.get(
                f"{self.base}/api/v1/targets/{target['id']}/checks", timeout=5
            ).json()
            if not states:
                lines.append("    (no results yet)")
            for state in states:
                output = (state.get("output") or "").splitlines()[0:1] or [""]
                lines.append(
                    f"    {state['check_id']:<16} {_colour(state['status']):<17} {output[0][:70]}"
                )
        return "\n".join(lines)

    def watch(self, out: Callable[[str], None] = print, interval: float = 2.0) -> bool:
        """Redraw until stopped; False if a demo process died meanwhile."""
        while not self.stop.is_set():
            if any(p.poll() is not None for p in self.processes):
                out(f"a demo process exited: see the logs in {self.data_dir}")
                return False
            try:
                screen = self.render()
            except requests.RequestException as exc:
                screen = f"server not answering: {exc}"
            out(("\033[2J\033[H" if sys.stdout.isatty() else "") + screen)
            self.stop.wait(interval)
        return True

    def shutdown(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in reversed(self.processes):
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def run_demo(data_dir: Path, port: int | None) -> int:
    demo = Demo(data_dir, port)

    def request_stop(_signum: int, _frame: object) -> None:
        demo.stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        demo.start()
        healthy = demo.watch()
    finally:
        print("\nstopping the agent and the server...")
        demo.shutdown()
    print("stopped.")
    # A process that died on its own is a failure a script running the demo must see.
    return 0 if healthy else 1
