"""aami-server serve: the gunicorn worker class (gthread or gevent) and its sizes."""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import pytest
from click.testing import CliRunner

from server import serving
from server.cli import main


@pytest.fixture
def served_with(tmp_path, monkeypatch) -> dict[str, Any]:
    """Run ``serve`` without starting gunicorn; returns what it would have been given."""
    for name in [n for n in os.environ if n.startswith("AAMI_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AAMI_DATA_DIR", str(tmp_path / "var"))
    given: dict[str, Any] = {}
    monkeypatch.setattr(serving, "run_gunicorn", lambda **kwargs: given.update(kwargs))
    return given


def _serve(*args: str, code: int = 0) -> Any:
    result = CliRunner().invoke(main, ["serve", *args])
    assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
    return result


def test_threads_are_the_default_worker_class(served_with):
    _serve()
    assert served_with["worker_class"] == "gthread"
    assert serving.worker_options("gthread", 1000) == {"worker_class": "gthread"}


@pytest.mark.skipif(importlib.util.find_spec("gevent") is None, reason="gevent not installed")
def test_gevent_workers_get_their_connection_cap(served_with):
    _serve("--worker-class", "gevent", "--worker-connections", "12000")
    assert served_with["worker_class"] == "gevent"
    assert served_with["worker_connections"] == 12000
    assert serving.worker_options("gevent", 12000) == {
        "worker_class": "gevent", "worker_connections": 12000}


def test_gevent_without_the_package_is_refused_at_start_up(served_with, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gevent" else real_find_spec(name, *a))
    result = _serve("--worker-class", "gevent", code=2)
    assert "pip install gevent" in result.stderr
    assert served_with == {}


def test_an_unknown_worker_class_is_refused(served_with):
    result = _serve("--worker-class", "sync", code=2)
    assert "gthread" in result.stderr and "gevent" in result.stderr
    with pytest.raises(ValueError, match="gthread, gevent"):
        serving.worker_options("eventlet", 1000)
