"""The agent's side of the spawner processes (agent/spawn_server.py).

:class:`Spawner` starts one spawner with a set of sandbox settings and hands it plugins to
start; :class:`SpawnerPool` keeps one spawner per set of resource limits (the user and
no_new_privs are the executor's), replaces retiring or dead ones, and says when a set of
limits cannot have one (a memory or open-files limit too small for a Python interpreter),
so that the executor starts those checks itself, the slower way.
"""

from __future__ import annotations

import array
import contextlib
import functools
import itertools
import logging
import marshal
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from agent.spawn_server import EXITED, FAILED, READY, REPLY, RETIRING, SPAWNED

log = logging.getLogger(__name__)

_INTERPRETER = sys.executable


@functools.cache
def _source() -> str:
    """The spawner's program, read when the first spawner starts (not at import)."""
    return Path(__file__).with_name("spawn_server.py").read_text(encoding="utf-8")


#: How long a new spawner may take to say it is ready (an interpreter start-up).
START_TIMEOUT_S = 10.0
#: How long the spawner may take to answer a spawn request.
REQUEST_TIMEOUT_S = 10.0
#: Spawners kept at once; more sets of limits than this share the slow path.
MAX_SPAWNERS = 8


class SpawnerUnavailable(Exception):
    """No spawner can run with these settings; the message says why."""


class SpawnerLost(Exception):
    """The spawner exited while a plugin it started was running."""


class SpawnedProcess:
    """A plugin started by a spawner: its pid and, once it exited, its exit code."""

    def __init__(self, pid: int, spawner: Spawner) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.lost = False
        self._spawner = spawner
        self._done = threading.Event()

    def poll(self) -> int | None:
        return self.returncode

    def wait_until(self, deadline: float) -> bool:
        """True once the plugin exited; False at ``deadline``; SpawnerLost if nobody can
        tell any more."""
        self._done.wait(max(0.0, deadline - time.monotonic()))
        if self.lost:
            raise SpawnerLost("the process that started the check exited")
        return self.returncode is not None

    def reap(self, timeout: float) -> bool:
        """Wait for the exit after a kill; True when it exited (or init reaps it)."""
        self._done.wait(timeout)
        return self._done.is_set()

    def _finish(self, returncode: int | None) -> None:
        self.returncode = returncode
        self.lost = returncode is None
        self._done.set()


class Spawner:
    """One spawner process and the reader thread that takes its replies."""

    def __init__(self, preexec: Callable[[], None], cpu_budget: float,
                 user: tuple[int, int] | None = None,
                 exec_ruleset: tuple[int, int] | None = None) -> None:
        """``preexec`` sandboxes the spawner except for the user and the exec containment:
        it switches to ``user`` (uid, gid) itself once its interpreter is loaded, which the
        check user may not be allowed to read, and before that restricts itself to
        ``exec_ruleset`` (a Landlock ruleset fd and the number of landlock_restrict_self,
        agent/containment.py), which would not let it exec its interpreter."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        uid, gid = user if user is not None else (-1, -1)
        ruleset, restrict_syscall = exec_ruleset if exec_ruleset is not None else (-1, -1)
        passed = (theirs.fileno(),) if ruleset < 0 else (theirs.fileno(), ruleset)
        try:
            self._process = subprocess.Popen(
                [_INTERPRETER, "-I", "-S", "-c", _source(), str(theirs.fileno()),
                 str(cpu_budget), str(uid), str(gid), str(ruleset), str(restrict_syscall)],
                pass_fds=passed,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                cwd="/",
                env={},
                start_new_session=True,  # a Ctrl-C at the agent's terminal is the agent's
                preexec_fn=preexec,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            ours.close()
            raise SpawnerUnavailable(f"cannot start a spawner: {exc}") from None
        finally:
            theirs.close()
        self._sock = ours
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._requests: dict[int, tuple[threading.Event, list[object]]] = {}
        self._running: dict[int, SpawnedProcess] = {}
        self.retiring = False
        self.closed = False
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read_replies, name="spawner-reader",
                                        daemon=True)
        self._reader.start()
        if not self._ready.wait(START_TIMEOUT_S) or self.closed:
            self.close()
            raise SpawnerUnavailable("the spawner did not start (its resource limits may be "
                                     "too small for a Python interpreter)")

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def usable(self) -> bool:
        return not (self.closed or self.retiring)

    def spawn(self, path: str, argv: Sequence[str], env: Mapping[str, str],
              output_fd: int) -> SpawnedProcess:
        """Start ``path`` with ``argv`` and ``env``, its stdout and stderr on ``output_fd``
        (which the caller still closes). Raises OSError as exec would, SpawnerLost."""
        request_id = next(self._ids)
        answered = threading.Event()
        answer: list[object] = []  # filled by the reader: kind, then errno or the process
        self._requests[request_id] = (answered, answer)
        message = marshal.dumps((request_id, path, list(argv), dict(env)))
        fds = array.array("i", [output_fd])
        try:
            with self._lock:
                self._sock.sendmsg([message], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
        except OSError as exc:
            self._requests.pop(request_id, None)
            self.close()
            raise SpawnerLost(f"cannot reach the spawner: {exc}") from None
        if not answered.wait(REQUEST_TIMEOUT_S):
            self._requests.pop(request_id, None)
            self.close()
            raise SpawnerLost("the spawner did not answer")
        if not answer:
            raise SpawnerLost("the spawner exited")
        kind, value = answer
        if isinstance(value, SpawnedProcess):
            return value
        assert kind == FAILED and isinstance(value, int)
        raise OSError(value, os.strerror(value))

    def close(self) -> None:
        """Let the spawner go: it kills what it still runs and exits."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    def _read_replies(self) -> None:
        try:
            while True:
                data = self._sock.recv(REPLY.size)
                if len(data) != REPLY.size:
                    break
                self._dispatch(*REPLY.unpack(data))
        except OSError:
            pass
        finally:
            self.closed = True
            self._ready.set()
            for answered, _ in list(self._requests.values()):
                answered.set()
            for process in list(self._running.values()):
                # Nobody can tell its exit any more: it must not outlive its supervision
                # (and its output pipe closes, so the executor stops reading at once).
                with contextlib.suppress(OSError):
                    os.killpg(process.pid, signal.SIGKILL)
                process._finish(None)
            self._running.clear()
            self._sock.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=5)

    def _dispatch(self, kind: int, number: int, value: int) -> None:
        if kind == READY:
            self._ready.set()
        elif kind in (SPAWNED, FAILED):
            outcome: object = value
            if kind == SPAWNED:
                outcome = self._running[value] = SpawnedProcess(value, self)
            request = self._requests.pop(number, None)
            if request is not None:
                request[1].extend((kind, outcome))
                request[0].set()
        elif kind == EXITED:
            process = self._running.pop(number, None)
            if process is not None:
                process._finish(value)
        elif kind == RETIRING:
            self.retiring = True


class SpawnerPool:
    """Spawners by the sandbox settings they were started with, all for one check user
    (uid, gid; None: the agent's own) and one exec containment (see :class:`Spawner`)."""

    def __init__(self, user: tuple[int, int] | None = None,
                 exec_ruleset: tuple[int, int] | None = None) -> None:
        self._user = user
        self._exec_ruleset = exec_ruleset
        self._spawners: dict[object, Spawner] = {}
        self._draining: list[Spawner] = []
        self._refused: dict[object, str] = {}
        self._lock = threading.Lock()

    def get(self, key: object, preexec: Callable[[], None],
            cpu_seconds: int | None) -> Spawner | None:
        """The spawner for ``key``, started now with ``preexec`` if needed, or None when
        these settings cannot have one."""
        with self._lock:
            for idle in [s for s in self._draining if not s.running]:
                idle.close()
            self._draining = [s for s in self._draining if not s.closed]
            spawner = self._spawners.get(key)
            if spawner is not None and spawner.usable:
                return spawner
            if spawner is not None:
                self._retire(key, spawner)
            if key in self._refused:
                return None
            if len(self._spawners) >= MAX_SPAWNERS and not self._evict_idle():
                return None
            # Half the checks' CPU limit, which the spawner carries too: it retires well
            # before the kernel would stop it.
            budget = cpu_seconds / 2 if cpu_seconds else 0.0
            try:
                spawner = Spawner(preexec, budget, self._user, self._exec_ruleset)
            except SpawnerUnavailable as exc:
                log.warning("checks with these settings are started by the agent itself, "
                            "which costs more per run: %s", exc)
                self._refused[key] = str(exc)
                return None
            self._spawners[key] = spawner
            return spawner

    def close(self) -> None:
        with self._lock:
            for spawner in [*self._spawners.values(), *self._draining]:
                spawner.close()
            self._spawners.clear()
            self._draining.clear()

    def _retire(self, key: object, spawner: Spawner) -> None:
        del self._spawners[key]
        if spawner.running:
            self._draining.append(spawner)  # its plugins still report to it
        else:
            spawner.close()

    def _evict_idle(self) -> bool:
        for key, spawner in self._spawners.items():
            if not spawner.running:
                del self._spawners[key]
                spawner.close()
                return True
        return False
