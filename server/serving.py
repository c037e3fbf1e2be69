"""Run the app under gunicorn from ``aami-server serve``."""

from __future__ import annotations

import os
import signal
import tempfile
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication


class _Gunicorn(BaseApplication):
    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            if value is not None:
                self.cfg.set(key, value)

    def load(self) -> Any:
        from server import create_app
        from server.logs import configure_logging

        app = create_app()
        settings = app.extensions["aami.settings"]
        configure_logging(settings.LOG_LEVEL, settings.LOG_FORMAT)
        if settings.embedded:
            from server.jobs.embedded import start_embedded_periodic_jobs

            start_embedded_periodic_jobs(settings)
        return app


def _child_exit(_server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def _post_worker_init(_worker: Any) -> None:
    """On SIGTERM, answer parked long-polls at once instead of holding the graceful
    shutdown for up to LONGPOLL_MAX_WAIT; gunicorn's own handler then runs as usual."""
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum: int, frame: Any) -> None:
        from server.services.notify import release_all_waiters

        release_all_waiters()
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, on_term)


def _metrics_dir() -> str:
    """A fresh directory for prometheus-client's per-process files, set before any
    worker imports the library (it reads the variable at import time)."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(prefix="aami-metrics-")
    for stale in Path(path).glob("*.db"):
        stale.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    return path


def run_gunicorn(
    *,
    bind: str,
    workers: int,
    threads: int,
    certfile: str | None = None,
    keyfile: str | None = None,
) -> None:
    _metrics_dir()
    _Gunicorn(
        {
            "child_exit": _child_exit,
            "post_worker_init": _post_worker_init,
            "bind": bind,
            "workers": workers,
            "threads": threads,
            "worker_class": "gthread",
            # Long-polls hold a request up to LONGPOLL_MAX_WAIT: the timeout must exceed it.
            "timeout": 120,
            "graceful_timeout": 30,
            "certfile": certfile,
            "keyfile": keyfile,
            "accesslog": None,
            # Several servers may share a host (tests, blue/green): no shared control socket.
            "control_socket_disable": True,
        }
    ).run()
