"""agent/spool.py: the on-disk queue of results waiting for the server's acknowledgement."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import stat
import threading
from pathlib import Path
from typing import Any

import pytest

from agent import spool as spool_module
from agent.spool import Spool


def result(n: int, size: int = 0) -> dict:
    return {"result_id": f"r-{n}", "check_id": "disk", "status": "ok", "output": "x" * size}


def body_size(res: dict) -> int:
    return len(json.dumps(res, separators=(",", ":")).encode())


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "spool.db"


@pytest.fixture
def spool(path: Path):
    spool = Spool(path, max_bytes=1_000_000)
    yield spool
    spool.close()


def ids(entries: list[tuple[int, dict]]) -> list[str]:
    return [res["result_id"] for _, res in entries]


def test_peek_is_oldest_first_and_removes_nothing(spool: Spool) -> None:
    spool.append([result(1), result(2)])
    spool.append([result(3)])
    assert ids(spool.peek(2)) == ["r-1", "r-2"]
    assert ids(spool.peek(10)) == ["r-1", "r-2", "r-3"]
    assert spool.peek(10)[0][1] == result(1)
    assert spool.depth() == 3
    assert spool.peek(0) == []


def test_ack_removes_only_the_acked_results(spool: Spool) -> None:
    spool.append([result(n) for n in range(5)])
    entries = spool.peek(5)
    spool.ack([entries[1][0], entries[3][0], 999_999])  # an unknown seq is ignored
    assert ids(spool.peek(10)) == ["r-0", "r-2", "r-4"]
    assert spool.depth() == 3


def test_spool_survives_reopen(path: Path) -> None:
    spool = Spool(path, max_bytes=1_000_000)
    spool.append([result(n) for n in range(3)])
    before = spool.peek(10)
    spool.ack([before[0][0]])
    spool.close()

    reopened = Spool(path, max_bytes=1_000_000)
    try:
        assert reopened.peek(10) == before[1:]
        assert reopened.depth() == 2
    finally:
        reopened.close()


def test_duplicate_result_ids_are_stored_once(spool: Spool) -> None:
    spool.append([result(1), result(1)])
    spool.append([result(1), result(2)])
    assert ids(spool.peek(10)) == ["r-1", "r-2"]
    assert spool.depth() == 2


def test_sequence_numbers_are_never_reused(path: Path) -> None:
    spool = Spool(path, max_bytes=1_000_000)
    spool.append([result(1), result(2)])
    acked = [seq for seq, _ in spool.peek(10)]
    spool.ack(acked)
    spool.close()
    spool = Spool(path, max_bytes=1_000_000)
    spool.append([result(3)])
    ((seq, _),) = spool.peek(10)
    spool.close()
    # An ack of an old seq (say, from a retry) must never hit this new result.
    assert seq > max(acked)


def test_spool_is_bounded_dropping_the_oldest_and_counting_them(path: Path) -> None:
    size = body_size(result(10, 100))
    spool = Spool(path, max_bytes=10 * size)
    for n in range(25):
        spool.append([result(n, 100)])
    assert spool.depth() == 10
    assert ids(spool.peek(100)) == [f"r-{n}" for n in range(15, 25)]
    assert spool.dropped() == 15
    spool.close()

    reopened = Spool(path, max_bytes=10 * size)
    try:
        assert reopened.dropped() == 15  # the counter is on disk, not only in memory
        assert reopened.depth() == 10
    finally:
        reopened.close()


def test_a_batch_larger_than_the_bound_keeps_its_newest(path: Path) -> None:
    size = body_size(result(1, 100))
    spool = Spool(path, max_bytes=3 * size)
    spool.append([result(n, 100) for n in range(5)])
    assert ids(spool.peek(10)) == ["r-2", "r-3", "r-4"]
    assert spool.dropped() == 2
    spool.close()


def test_a_single_result_over_the_bound_is_dropped_not_the_others(path: Path) -> None:
    spool = Spool(path, max_bytes=1000)
    spool.append([result(1)])
    spool.append([result(2, 5000)])
    assert ids(spool.peek(10)) == ["r-1"]
    assert spool.dropped() == 1
    spool.close()


def test_files_are_private(path: Path) -> None:
    old_umask = os.umask(0)  # even a careless umask must not widen them
    try:
        spool = Spool(path, max_bytes=1_000_000)
        spool.append([result(1)])
        for name in (path, Path(f"{path}-wal")):
            assert stat.S_IMODE(name.stat().st_mode) == 0o600, name
        spool.close()
    finally:
        os.umask(old_umask)


def test_an_existing_world_readable_file_is_tightened(path: Path) -> None:
    Spool(path, max_bytes=1000).close()
    path.chmod(0o644)
    Spool(path, max_bytes=1000).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_file_that_is_not_a_database_is_moved_aside(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(b"this is not sqlite" * 500)
    with caplog.at_level(logging.ERROR, logger="agent.spool"):
        spool = Spool(path, max_bytes=1_000_000)
    try:
        assert spool.depth() == 0
        spool.append([result(1)])
        assert ids(spool.peek(10)) == ["r-1"]
    finally:
        spool.close()
    aside = list(path.parent.glob("spool.db.corrupt-*"))
    assert len(aside) == 1
    assert aside[0].read_bytes().startswith(b"this is not sqlite")
    assert "moved it to" in caplog.text


def test_a_damaged_database_is_moved_aside(path: Path) -> None:
    spool = Spool(path, max_bytes=10_000_000)
    spool.append([result(n, 500) for n in range(200)])
    spool.close()
    with path.open("r+b") as f:  # scribble over the pages after the header page
        f.seek(4096)
        f.write(os.urandom(4096 * 8))

    spool = Spool(path, max_bytes=10_000_000)
    try:
        assert spool.depth() == 0
        spool.append([result(1)])
        assert spool.depth() == 1
    finally:
        spool.close()
    assert list(path.parent.glob("spool.db.corrupt-*"))


def test_two_recoveries_keep_both_damaged_files(path: Path) -> None:
    for _ in range(2):
        path.parent.mkdir(parents=True, exist_ok=True)
        for leftover in (Path(f"{path}-wal"), Path(f"{path}-shm"), path):
            leftover.unlink(missing_ok=True)
        path.write_bytes(b"garbage" * 1000)
        Spool(path, max_bytes=1000).close()
    assert len(list(path.parent.glob("spool.db.corrupt-*[!lm]"))) == 2


def test_disk_full_on_append_drops_and_counts_instead_of_raising(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = Spool(path, max_bytes=100_000_000)
    spool.append([result(0)])
    # SQLite reports SQLITE_FULL ("database or disk is full") past max_page_count, exactly
    # as on a full file system; this reaches into the connection to set it.
    pages = spool._conn.execute("PRAGMA page_count").fetchone()[0]  # type: ignore[union-attr]
    spool._conn.execute(f"PRAGMA max_page_count = {pages}")  # type: ignore[union-attr]
    with caplog.at_level(logging.ERROR, logger="agent.spool"):
        spool.append([result(n, 20_000) for n in range(1, 4)])
    assert "disk full" in caplog.text
    assert spool.depth() == 1
    assert spool.dropped() == 3
    assert ids(spool.peek(10)) == ["r-0"]

    spool._conn.execute("PRAGMA max_page_count = 1073741823")  # type: ignore[union-attr]
    spool.append([result(9)])  # space again: the drop count gets written down too
    spool.close()
    reopened = Spool(path, max_bytes=100_000_000)
    try:
        assert reopened.dropped() == 3
        assert ids(reopened.peek(10)) == ["r-0", "r-9"]
    finally:
        reopened.close()


def test_the_spool_keeps_its_reserve_free_and_reuses_the_room_of_acked_results(
    path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    free = {"bytes": 1 << 40}
    monkeypatch.setattr(spool_module, "_free_bytes", lambda directory: free["bytes"])
    spool = Spool(path, max_bytes=100_000_000, min_free_bytes=64 * 1024)
    spool.append([result(n, 2000) for n in range(100)])
    free["bytes"] = 0  # the spool filled its disk (the server was away)
    with caplog.at_level(logging.ERROR, logger="agent.spool"):
        spool.append([result(100)])
    assert "disk full" in caplog.text
    assert (spool.depth(), spool.dropped()) == (100, 1)

    # The server is back: what it acknowledged can still be removed, and the pages it
    # held take new results although the file system has no byte left.
    spool.ack([seq for seq, _ in spool.peek(100)])
    spool.append([result(101)])
    assert ids(spool.peek(10)) == ["r-101"]
    spool.close()
    reopened = Spool(path, max_bytes=100_000_000)
    try:
        assert reopened.dropped() == 1
    finally:
        reopened.close()


def test_results_dropped_to_keep_the_reserve_stay_counted_across_a_restart(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spool_module, "_free_bytes", lambda directory: 0)
    spool = Spool(path, max_bytes=100_000_000)
    spool.append([result(1)])
    spool.append([result(2)])
    spool.close()  # nothing was stored since the drops: the count is on disk all the same
    reopened = Spool(path, max_bytes=100_000_000)
    try:
        assert (reopened.depth(), reopened.dropped()) == (0, 2)
    finally:
        reopened.close()


class _FullOnce:
    """A connection whose first DELETE fails as on a full disk (the WAL cannot grow)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.statements: list[str] = []
        self.failed = False

    def execute(self, statement: str, *args: Any) -> sqlite3.Cursor:
        self.statements.append(statement)
        if statement.startswith("DELETE") and not self.failed:
            self.failed = True
            raise sqlite3.OperationalError("database or disk is full")
        return self.conn.execute(statement, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)


def test_an_ack_that_meets_a_full_disk_checkpoints_and_tries_again(spool: Spool) -> None:
    spool.append([result(n) for n in range(3)])
    full = _FullOnce(spool._conn)  # type: ignore[arg-type]
    spool._conn = full  # type: ignore[assignment]
    spool.ack([seq for seq, _ in spool.peek(2)])
    assert "PRAGMA wal_checkpoint(TRUNCATE)" in full.statements
    assert spool.depth() == 1
    assert ids(spool.peek(10)) == ["r-2"]


def test_concurrent_appends_and_acks_stay_consistent(spool: Spool) -> None:
    acked: list[int] = []
    stop = threading.Event()

    def writer(worker: int) -> None:
        for n in range(50):
            spool.append([result(worker * 1000 + n)])

    def sender() -> None:
        while not stop.is_set() or spool.depth():
            entries = spool.peek(7)
            spool.ack([seq for seq, _ in entries])
            acked.extend(seq for seq, _ in entries)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(6)]
    send = threading.Thread(target=sender)
    send.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stop.set()
    send.join(timeout=10)
    assert len(acked) == len(set(acked)) == 300
    assert spool.depth() == 0


def test_a_closed_spool_says_so(spool: Spool) -> None:
    spool.close()
    with pytest.raises(RuntimeError, match="closed"):
        spool.append([result(1)])
