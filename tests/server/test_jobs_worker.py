"""The RQ worker's bounded clean-up: a stop that was asked for always ends the process."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

# Builds an AamiWorker on fakeredis and runs its teardown with RQ's own clean-up replaced
# by one that blocks (as its pub/sub clean-up can) or returns at once.
SCRIPT = textwrap.dedent(
    """
    import logging, sys, threading
    import fakeredis
    from rq import Queue, SimpleWorker
    from server.jobs.worker import AamiWorker

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    mode, stopping = sys.argv[1], sys.argv[2] == "stopping"
    if mode == "blocks":
        SimpleWorker.teardown = lambda self: threading.Event().wait()
    else:
        SimpleWorker.teardown = lambda self: None
    AamiWorker.TEARDOWN_LIMIT_S = 0.5
    connection = fakeredis.FakeStrictRedis()
    worker = AamiWorker([Queue("ingest", connection=connection)], connection=connection)
    worker.stopping = stopping
    print("tearing down", flush=True)
    worker.teardown()
    print("teardown returned", flush=True)
    """
)


def run(
    mode: str, stopping: str, timeout: float = 20.0
) -> tuple[subprocess.CompletedProcess[str], float]:
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode, stopping],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return done, time.monotonic() - began


def test_a_stuck_teardown_after_a_stop_exits_cleanly_after_the_limit() -> None:
    done, took = run("blocks", "stopping")
    assert done.returncode == 0, done.stderr
    assert "teardown returned" not in done.stdout
    assert "worker clean-up did not finish; exiting without it" in done.stderr
    assert took < 15  # the 0.5 s limit, plus interpreter start-up


def test_a_teardown_that_finishes_returns_normally() -> None:
    done, _ = run("returns", "stopping")
    assert done.returncode == 0, done.stderr
    assert "teardown returned" in done.stdout
    assert "did not finish" not in done.stderr


def test_without_a_stop_request_a_stuck_teardown_is_not_cut_short() -> None:
    # Only a requested stop may end the process: a worker that lost Redis is restarted.
    process = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, "blocks", "running"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "tearing down"
        time.sleep(4 * 0.5)  # four times the limit the watchdog would have used
        assert process.poll() is None, "teardown ended on its own"
    finally:
        process.kill()
        process.wait()
