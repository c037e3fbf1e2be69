"""Durable FIFO of check results waiting to be acknowledged by the server.

One SQLite file (stdlib ``sqlite3``) in WAL mode. A result leaves the spool only through
``ack()``, which the transport calls after the server replied; ``peek()`` does not remove
anything, so a crash between sending and the reply means a resend, which the server
ingests idempotently by ``result_id``.

Durability: ``synchronous=FULL``. With WAL, NORMAL already survives an agent crash; FULL
also fsyncs the WAL at every commit, so results written just before a power loss or a
kernel panic (exactly when monitoring data matters) are not lost. The cost is one fsync
per append or ack batch, and an agent writes a handful per second at most.

Bounded: ``max_bytes`` bounds the stored result payloads (the JSON text), not the file,
which adds page and index overhead on top. When an append goes over, the oldest results
are dropped and counted in a persistent counter that the heartbeat reports.

Failures that must not stop the agent:

* a corrupt or foreign file is moved aside (``<name>.corrupt-<UTC timestamp>``), logged,
  and a fresh spool started;
* a full disk on append drops (and counts) the new results instead of raising.

The spool never takes the last of its disk: it keeps ``min_free_bytes`` free and drops
new results rather than go below (counted like any other drop). In WAL mode even a
DELETE needs room (WAL frames, then a checkpoint that copies them into the database), so
a spool that filled its disk while the server was away would be able neither to remove
what the server then acknowledged nor to store anything new: every later result would be
dropped until someone freed space. At the reserve it checkpoints and truncates the WAL,
which gives the WAL's space back; pages of acknowledged results are reused before the
file grows again; the drop count is written down at once, inside the reserve.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_SCHEMA_VERSION = 1
# AUTOINCREMENT: sequence numbers are never reused, even after the newest rows were acked
# or dropped. Without it SQLite hands out max(seq)+1 again, and an ack for a seq the
# transport peeked before an overflow drop could delete a different, unsent result.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    result_id TEXT UNIQUE,
    body TEXT NOT NULL,
    size INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO counters (name, value) VALUES ('dropped', 0);
"""
#: Seconds between two "spool is full" warnings.
EVICTION_LOG_INTERVAL = 60.0
#: Free space the spool leaves on its file system: room for the WAL frames of the
#: deletions and for the checkpoints that make room again (see the module docstring).
MIN_FREE_BYTES = 2 * 1024 * 1024
# Checkpoint every 256 WAL pages (1 MiB) rather than SQLite's 1000: what a checkpoint adds
# to the database file then always fits in MIN_FREE_BYTES.
_WAL_AUTOCHECKPOINT_PAGES = 256
# Stay under SQLITE_MAX_VARIABLE_NUMBER of older SQLite builds (999).
_CHUNK = 500


class _CorruptSpool(sqlite3.DatabaseError):
    """The file opened but failed its integrity check."""


class Spool:
    """Thread-safe: one connection, guarded by a lock."""

    def __init__(
        self, path: str | Path, max_bytes: int, min_free_bytes: int = MIN_FREE_BYTES
    ) -> None:
        if max_bytes < 1:
            raise ValueError(f"spool max_bytes must be positive, got {max_bytes}")
        self._path = Path(path)
        self._max_bytes = max_bytes
        self._min_free = min_free_bytes
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._depth = 0
        self._bytes = 0
        self._dropped = 0
        # Drops we could not write down (disk full); added to the stored counter later.
        self._unsaved_dropped = 0
        self._evicted_unlogged = 0
        self._last_evict_log = -EVICTION_LOG_INTERVAL
        with self._lock:
            self._open()

    # -- public API ------------------------------------------------------------------

    def append(self, results: Sequence[dict[str, Any]]) -> None:
        """Store ``results`` at the tail; a ``result_id`` already in the spool is not stored
        again. Over ``max_bytes`` the oldest results are dropped and counted. When SQLite
        fails (full disk, I/O error) the new results are dropped, counted and logged:
        this runs in the check workers, and raising there would lose them just the same."""
        rows = []
        for result in results:
            body = json.dumps(result, separators=(",", ":"), ensure_ascii=False)
            rows.append((result.get("result_id"), body, len(body.encode())))
        if not rows:
            return
        with self._lock:
            try:
                if not self._room_for(sum(size for _, _, size in rows)):
                    self._drop_new(rows, f"disk full: keeping {self._min_free} bytes free")
                    return
                self._append(rows)
                return
            except sqlite3.DatabaseError as exc:
                if not _is_corrupt(exc):
                    self._drop_new(rows, _reason(exc))
                    return
                self._recover(exc)
            try:
                self._append(rows)
            except sqlite3.DatabaseError as exc:
                self._drop_new(rows, _reason(exc))

    def peek(self, limit: int) -> list[tuple[int, dict[str, Any]]]:
        """Up to ``limit`` results, oldest first, as ``(seq, result)``; removes nothing."""
        if limit <= 0:
            return []  # SQLite reads LIMIT -1 as "no limit"
        with self._lock:
            try:
                rows = (
                    self._connection()
                    .execute("SELECT seq, body FROM results ORDER BY seq LIMIT ?", (limit,))
                    .fetchall()
                )
            except sqlite3.DatabaseError as exc:
                if not _is_corrupt(exc):
                    raise
                self._recover(exc)
                return []
        return [(seq, json.loads(body)) for seq, body in rows]

    def ack(self, seqs: Sequence[int]) -> None:
        """Remove exactly these results (the server has them); unknown seqs are ignored."""
        if not seqs:
            return
        with self._lock:
            try:
                try:
                    self._delete(seqs)
                except sqlite3.DatabaseError as exc:
                    if not _is_disk_full(exc):
                        raise
                    # The WAL could not grow: give its space back, then try once more.
                    self._checkpoint()
                    self._delete(seqs)
            except sqlite3.DatabaseError as exc:
                if not _is_corrupt(exc):
                    raise
                self._recover(exc)

    def depth(self) -> int:
        """How many results are waiting."""
        with self._lock:
            return self._depth

    def dropped(self) -> int:
        """How many results were dropped since the spool file was created."""
        with self._lock:
            return self._dropped + self._unsaved_dropped

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # -- internals (callers hold self._lock) ------------------------------------------

    def _delete(self, seqs: Sequence[int]) -> None:
        conn = self._connection()
        try:
            with _transaction(conn):
                for chunk in _chunks(list(seqs)):
                    marks = ",".join("?" * len(chunk))
                    sizes = conn.execute(
                        f"DELETE FROM results WHERE seq IN ({marks}) RETURNING size", chunk
                    ).fetchall()
                    self._depth -= len(sizes)
                    self._bytes -= sum(size for (size,) in sizes)
        except sqlite3.DatabaseError:
            self._reload_totals_quietly()
            raise

    def _room_for(self, size: int) -> bool:
        """Whether ``size`` more bytes can be stored and ``min_free_bytes`` stay free;
        on the edge, checkpoint first (it gives the WAL's space back)."""
        wanted = self._min_free + size
        free = _free_bytes(self._path.parent)
        if free >= wanted:
            return True
        conn = self._connection()
        # Pages of removed results are reused before the file grows.
        (pages,) = conn.execute("PRAGMA freelist_count").fetchone()
        (page_size,) = conn.execute("PRAGMA page_size").fetchone()
        if free + pages * page_size >= wanted:
            return True
        self._checkpoint()
        return _free_bytes(self._path.parent) + pages * page_size >= wanted

    def _checkpoint(self) -> None:
        """Copy the WAL into the database and truncate it; best effort."""
        try:
            self._connection().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.Error as exc:
            log.warning("spool %s: checkpoint failed: %s", self._path, exc)

    def _append(self, rows: list[tuple[Any, str, int]]) -> None:
        conn = self._connection()
        oversized = 0
        try:
            with _transaction(conn):
                for result_id, body, size in rows:
                    if size > self._max_bytes:
                        # Storing it would evict everything else, then itself.
                        log.error(
                            "spool %s: a result of %d bytes exceeds max_bytes; dropped it",
                            self._path,
                            size,
                        )
                        oversized += 1
                        continue
                    cursor = conn.execute(
                        "INSERT OR IGNORE INTO results (result_id, body, size) VALUES (?, ?, ?)",
                        (result_id, body, size),
                    )
                    if cursor.rowcount == 1:
                        self._depth += 1
                        self._bytes += size
                evicted = self._evict_oldest(conn) if self._bytes > self._max_bytes else 0
                newly_dropped = oversized + evicted + self._unsaved_dropped
                if newly_dropped:
                    conn.execute(
                        "UPDATE counters SET value = value + ? WHERE name = 'dropped'",
                        (newly_dropped,),
                    )
        except BaseException:
            # Rolled back: the running totals moved with rows that are not there.
            self._reload_totals_quietly()
            raise
        self._dropped += newly_dropped
        self._unsaved_dropped = 0
        if evicted:
            self._evicted_unlogged += evicted
            now = time.monotonic()
            # While the server is away every append evicts: one line a minute is enough.
            if now - self._last_evict_log >= EVICTION_LOG_INTERVAL:
                log.warning(
                    "spool %s is full (max_bytes %d): dropped the %d oldest result(s)",
                    self._path,
                    self._max_bytes,
                    self._evicted_unlogged,
                )
                self._evicted_unlogged = 0
                self._last_evict_log = now

    def _drop_new(self, rows: list[tuple[Any, str, int]], reason: str) -> None:
        self._unsaved_dropped += len(rows)
        log.error("spool %s: cannot store results (%s); dropped %d", self._path, reason, len(rows))
        # Write the count down now if there is room for that (there is, when the results
        # were refused to keep MIN_FREE_BYTES free), so that a restart cannot lose it.
        try:
            conn = self._connection()
            with _transaction(conn):
                conn.execute("UPDATE counters SET value = value + ? WHERE name = 'dropped'",
                             (self._unsaved_dropped,))
        except (sqlite3.Error, RuntimeError):
            return  # kept in memory and written with the next append that fits
        self._dropped += self._unsaved_dropped
        self._unsaved_dropped = 0

    def _evict_oldest(self, conn: sqlite3.Connection) -> int:
        excess = self._bytes - self._max_bytes
        freed = count = 0
        last_seq = None
        for seq, size in conn.execute("SELECT seq, size FROM results ORDER BY seq"):
            freed += size
            count += 1
            last_seq = seq
            if freed >= excess:
                break
        conn.execute("DELETE FROM results WHERE seq <= ?", (last_seq,))
        self._depth -= count
        self._bytes -= freed
        return count

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError(f"spool {self._path} is closed")
        return self._conn

    def _open(self) -> None:
        try:
            self._connect()
        except sqlite3.DatabaseError as exc:
            # Anything else (permissions, a missing directory) is a setup problem the
            # operator must see at start-up, not a reason to move their file away.
            if not _is_corrupt(exc):
                raise
            self._recover(exc)

    def _connect(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Create the file ourselves so it is 0600 from the first byte: results can carry
        # whatever a plugin printed. SQLite gives the -wal and -shm files the same mode.
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.fchmod(fd, 0o600)
        finally:
            os.close(fd)
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA busy_timeout = 5000")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            # Keep the WAL from growing without bound between checkpoints.
            conn.execute("PRAGMA journal_size_limit = 4194304")
            conn.execute(f"PRAGMA wal_autocheckpoint = {_WAL_AUTOCHECKPOINT_PAGES}")
            check = conn.execute("PRAGMA quick_check").fetchall()
            if check != [("ok",)]:
                raise _CorruptSpool(f"quick_check failed: {check[:3]}")
            conn.executescript(_SCHEMA)
            conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._reload_totals()

    def _reload_totals(self) -> None:
        conn = self._connection()
        self._depth, self._bytes = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM results"
        ).fetchone()
        (self._dropped,) = conn.execute(
            "SELECT value FROM counters WHERE name = 'dropped'"
        ).fetchone()

    def _recover(self, exc: BaseException) -> None:
        """Move the damaged file (and its WAL) aside and start an empty spool."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        lost = self._dropped + self._unsaved_dropped
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = self._path.with_name(f"{self._path.name}.corrupt-{stamp}")
        for n in itertools.count(1):
            if not aside.exists():
                break
            aside = self._path.with_name(f"{self._path.name}.corrupt-{stamp}-{n}")
        for suffix in ("", "-wal", "-shm"):
            source = Path(f"{self._path}{suffix}")
            if source.exists():
                os.replace(source, f"{aside}{suffix}")
        log.error(
            "spool %s is unreadable (%s); moved it to %s and started an empty spool",
            self._path,
            exc,
            aside,
        )
        self._connect()
        # Keep counting from where we were: the counter lived in the damaged file.
        self._unsaved_dropped = lost
        self._dropped = 0

    def _reload_totals_quietly(self) -> None:
        try:
            self._reload_totals()
        except (sqlite3.Error, RuntimeError):
            pass  # the caller is already handling the error that got us here


class _transaction:
    """BEGIN IMMEDIATE ... COMMIT, ROLLBACK on any exception."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self._conn.execute("BEGIN IMMEDIATE")
        return self._conn

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            try:
                self._conn.execute("COMMIT")
                return
            except BaseException:
                # SQLITE_FULL at commit may or may not roll back by itself; make sure.
                self._rollback()
                raise
        self._rollback()

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass


def _chunks(items: list[int]) -> Iterator[list[int]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _free_bytes(directory: Path) -> int:
    """Bytes an unprivileged process may still write on ``directory``'s file system."""
    try:
        stats = os.statvfs(directory)
    except OSError:
        return 1 << 62  # cannot tell: let SQLite find out
    return stats.f_bavail * stats.f_frsize


def _reason(exc: sqlite3.DatabaseError) -> str:
    return "disk full" if _is_disk_full(exc) else str(exc)


def _is_disk_full(exc: sqlite3.DatabaseError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF == sqlite3.SQLITE_FULL
    return "disk is full" in str(exc)


def _is_corrupt(exc: sqlite3.DatabaseError) -> bool:
    if isinstance(exc, _CorruptSpool):
        return True
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
    message = str(exc)
    return "malformed" in message or "not a database" in message
