"""Run the app under gunicorn from ``aami-server serve``."""

from __future__ import annotations

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
        return app


def run_gunicorn(
    *,
    bind: str,
    workers: int,
    threads: int,
    certfile: str | None = None,
    keyfile: str | None = None,
) -> None:
    _Gunicorn(
        {
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
