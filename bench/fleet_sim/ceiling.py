"""The framework's ceiling: the agent API's shapes with nothing behind them.

A minimal Flask app answering the same five agent calls as the config-server (register,
refresh, heartbeat, assignment long-poll with ETag, result batch) with fixed replies: it
parses the JSON bodies, and a long-poll whose ETag matches sleeps the wait out, as the
real one parks. No authentication, no database, no Redis. Served by gunicorn with the
options ``aami-server serve`` uses (server/serving.py), so the fleet simulator can put
the same request mix on both and show how much of the budget is the framework's.

``python -m bench.fleet_sim.ceiling --bind 127.0.0.1:9000 --worker-class gevent ...``
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import time
import uuid
from typing import Any

from flask import Flask, Response, jsonify, request
from gunicorn.app.base import BaseApplication

VERSION = "ceiling-v1"
CHECKS = [
    {"id": f"sim-{n}", "name": f"simulated check {n}",
     "command": ["/usr/lib/nagios/plugins/check_dummy", "0", "simulated"],
     "interval": "60s", "timeout": "10s", "limits": {}, "env": {}}
    for n in range(10)
]


def _token(agent_id: str) -> str:
    claims = {"sub": agent_id, "exp": int(time.time()) + 86400}
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    return f"e30.{body}.ceiling"


def create_app(heartbeat_interval: float = 30.0) -> Flask:
    """The bare app; heartbeats tell agents ``heartbeat_interval``, as the real server
    tells them its ``AAMI_HEARTBEAT_INTERVAL``, so both see the same request mix."""
    app = Flask(__name__)

    @app.get("/healthz")
    def healthz() -> Any:
        return {"status": "ok"}

    @app.post("/api/v1/bootstrap-tokens/register")
    def register() -> Any:
        body = request.get_json()
        agent_id = body.get("agent_id") or str(uuid.uuid4())
        return {"agent_id": agent_id, "access_token": _token(agent_id),
                "refresh_token": "aami_rt_ceiling", "token_type": "Bearer",
                "expires_in": 86400, "heartbeat_interval": heartbeat_interval}, 201

    @app.post("/api/v1/agents/<agent_id>/token")
    def refresh(agent_id: str) -> Any:
        request.get_json()
        return {"access_token": _token(agent_id), "refresh_token": "aami_rt_ceiling",
                "token_type": "Bearer", "expires_in": 86400}

    @app.post("/api/v1/agents/<agent_id>/heartbeat")
    def heartbeat(agent_id: str) -> Any:
        request.get_json()
        return {"config_version": VERSION, "heartbeat_interval": heartbeat_interval,
                "server_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "commands": []}

    @app.get("/api/v1/checks/target/<agent_id>")
    def assignment(agent_id: str) -> Any:
        wait = min(float(request.args.get("wait", 0)), 60.0)
        if request.if_none_match.contains_weak(VERSION):
            if wait > 0:
                time.sleep(wait * random.uniform(0.85, 1.0))
            response = Response(status=304)
        else:
            response = jsonify({"target_id": agent_id, "config_version": VERSION,
                                "checks": CHECKS, "commands": []})
        response.set_etag(VERSION)
        return response

    @app.post("/api/v1/agents/<agent_id>/check-results")
    def results(agent_id: str) -> Any:
        body = request.get_json()
        return {"job_id": str(uuid.uuid4()), "accepted": len(body["results"]),
                "rejected": []}, 202

    return app


class _Ceiling(BaseApplication):
    def __init__(self, options: dict[str, Any], heartbeat_interval: float) -> None:
        self.options = options
        self.heartbeat_interval = heartbeat_interval
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        return create_app(self.heartbeat_interval)


def main() -> None:
    from server.serving import worker_options

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bind", required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--worker-class", default="gthread")
    parser.add_argument("--worker-connections", type=int, default=1000)
    parser.add_argument("--heartbeat-interval", type=float, default=30.0)
    args = parser.parse_args()
    # The options of server/serving.py run_gunicorn, minus the AAMI-specific hooks.
    _Ceiling({
        "bind": args.bind, "workers": args.workers, "threads": args.threads,
        **worker_options(args.worker_class, args.worker_connections),
        "timeout": 120, "graceful_timeout": 30, "accesslog": None,
        "control_socket_disable": True,
    }, args.heartbeat_interval).run()


if __name__ == "__main__":
    main()
