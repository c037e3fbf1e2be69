"""Run the app under gunicorn from ``aami-server serve``."""

from __future__ import annotations

import gc
import importlib
import importlib.util
import os
import shutil
import signal
import ssl
import sys
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


def _gevent_patched() -> bool:
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and bool(monkey.is_module_patched("threading"))


def _post_worker_init(_worker: Any) -> None:
    """On SIGTERM, answer parked long-polls at once instead of holding the graceful
    shutdown for up to LONGPOLL_MAX_WAIT; gunicorn's own handler then runs as usual."""
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum: int, frame: Any) -> None:
        from server.services.notify import release_all_waiters

        if _gevent_patched():
            # A signal handler must not block on a (green) lock: let a greenlet do it.
            importlib.import_module("gevent").spawn(release_all_waiters)
        else:
            release_all_waiters()
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, on_term)
    _tune_garbage_collector()


# Allocations between young collections (CPython's default is 700).
GC_YOUNG_THRESHOLD = 10_000


def _tune_garbage_collector() -> None:
    """Keep the collector's pauses out of the answers' tail latency.

    A worker holding thousands of parked long-polls has a large, long-lived heap; full
    collections walked all of it, including everything the app loaded at start-up, and
    the fleet simulator measured pauses of 50-380 ms (35 in a minute) showing up as the
    p99 of heartbeats. Objects alive once the app is loaded live as long as the process:
    ``gc.freeze()`` takes them out of every collection, and a higher young threshold makes
    collections rarer. Cycles are still collected.
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def _remove_dir(path: str | None) -> None:
    if path:
        shutil.rmtree(path, ignore_errors=True)


def _metrics_dir() -> str | None:
    """A fresh directory for prometheus-client's per-process files, set before any
    worker imports the library (it reads the variable at import time). Returns the
    directory when this process made it, so that it can be removed at exit."""
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    path = given or tempfile.mkdtemp(prefix="aami-metrics-")
    for stale in Path(path).glob("*.db"):
        stale.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    return None if given else path


CLIENT_CERT_MODES = {
    "none": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
}

_contexts: dict[tuple[object, ...], ssl.SSLContext] = {}


def _ssl_context(conf: Any, default_factory: Any) -> ssl.SSLContext:
    """gunicorn's context, made once per worker process rather than per connection (the
    default loads the certificate chain and CA file on every accepted connection), and
    refusing TLS older than 1.2. A reload (SIGHUP) starts new workers that read the
    files afresh, which is how renewed server certificates are picked up."""
    key = (conf.certfile, conf.keyfile, conf.ca_certs, conf.cert_reqs, os.getpid())
    context = _contexts.get(key)
    if context is None:
        context = default_factory()
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        _contexts.clear()
        _contexts[key] = context
    return context


def tls_options(
    certfile: str | None,
    keyfile: str | None,
    ca_certs: str | None = None,
    client_certs: str = "none",
) -> dict[str, Any]:
    """gunicorn settings for HTTPS, with client certificates verified against ``ca_certs``
    (``optional``: asked for and verified when sent; ``required``: no certificate, no
    handshake). ``ValueError`` for a combination that cannot work."""
    if client_certs not in CLIENT_CERT_MODES:
        raise ValueError(f"client certificates must be one of {', '.join(CLIENT_CERT_MODES)}")
    if not certfile:
        if keyfile or ca_certs or client_certs != "none":
            raise ValueError("TLS options need --certfile (and --keyfile): HTTPS is off without")
        return {}
    if client_certs != "none" and not ca_certs:
        raise ValueError(f"--client-certs {client_certs} needs --ca-certs to verify them with")
    options: dict[str, Any] = {
        "certfile": certfile,
        "keyfile": keyfile,
        "ssl_context": _ssl_context,
    }
    if ca_certs:
        options["ca_certs"] = ca_certs
        options["cert_reqs"] = CLIENT_CERT_MODES[client_certs]
    return options


WORKER_CLASSES = ("gthread", "gevent")


def worker_options(worker_class: str, worker_connections: int) -> dict[str, Any]:
    """gunicorn's worker settings. ``gthread`` holds each request on a thread, parked
    long-polls included; ``gevent`` holds each on a greenlet (psycopg 3 and redis-py wait
    cooperatively once the worker has monkey-patched the standard library), so one process
    can park thousands of long-polls: ``worker_connections`` caps them per process."""
    if worker_class not in WORKER_CLASSES:
        raise ValueError(f"worker class must be one of {', '.join(WORKER_CLASSES)}")
    if worker_class == "gevent":
        if importlib.util.find_spec("gevent") is None:
            raise ValueError("--worker-class gevent needs the gevent package (pip install gevent)")
        return {"worker_class": "gevent", "worker_connections": worker_connections}
    return {"worker_class": "gthread"}


def run_gunicorn(
    *,
    bind: str,
    workers: int,
    threads: int,
    worker_class: str = "gthread",
    worker_connections: int = 1000,
    certfile: str | None = None,
    keyfile: str | None = None,
    ca_certs: str | None = None,
    client_certs: str = "none",
) -> None:
    tls = tls_options(certfile, keyfile, ca_certs, client_certs)
    made = _metrics_dir()
    _Gunicorn(
        {
            "on_exit": lambda _server: _remove_dir(made),
            "child_exit": _child_exit,
            "post_worker_init": _post_worker_init,
            "bind": bind,
            "workers": workers,
            "threads": threads,
            **worker_options(worker_class, worker_connections),
            # Long-polls hold a request up to LONGPOLL_MAX_WAIT: the timeout must exceed it.
            "timeout": 120,
            "graceful_timeout": 30,
            **tls,
            "accesslog": None,
            # Several servers may share a host (tests, blue/green): no shared control socket.
            "control_socket_disable": True,
        }
    ).run()
