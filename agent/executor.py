"""Run one check as a Nagios plugin and turn whatever happens into a CheckResult.

The rules (see DESIGN.md, "Check semantics"):

* argv, never a shell; the program must resolve, symlinks and ``..`` followed, to a file
  inside one of the allowed directories. We exec the resolved path, so the file we vetted
  is the file that runs. The one exception is a check that asks for a shell
  (``"shell": true``, one command line) on an agent whose operator allowed it
  (``checks.allow_shell``): it runs as ``/bin/sh -c LINE``.
* The plugin gets its own session and process group, a scrubbed environment, and in the
  child before exec: resource limits, no_new_privs, the exec containment and an
  unprivileged user (agent/sandbox.py). On timeout the whole group gets SIGTERM, then
  SIGKILL after a short grace.
* The exec containment (agent/containment.py) keeps what the plugin runs in turn within
  what checks may execute: with Landlock the kernel enforces it and a check failing for
  it says so; with the denylist, plugins that run other programs are refused before
  start.
* A check is finished when its output pipe is closed *and* the plugin exited. A plugin that
  leaves a background process holding its stdout is therefore still running, and times out
  like any other hung plugin; this is why output is read with a deadline (``poll`` on the
  pipe, no thread per execution) rather than with a blocking read.
* Every failure (refused, missing, not executable, timed out, killed, limits that cannot be
  applied, a bug in here) comes back as a result, never as an exception.
"""

from __future__ import annotations

import codecs
import errno
import functools
import logging
import os
import select
import signal
import stat
import subprocess
import time
import uuid
import weakref
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Protocol

from agent import containment as exec_containment
from agent.containment import ExecContainment
from agent.durations import format_duration
from agent.model import CheckResult, CheckSpec, ResourceLimits, status_for_exit_code
from agent.perfdata import parse_plugin_output
from agent.sandbox import CheckUser, make_preexec
from agent.spawner import Spawner, SpawnerLost, SpawnerPool

log = logging.getLogger(__name__)

DEFAULT_OUTPUT_LIMIT_BYTES = 16384
#: Environment every plugin starts from; the agent's own environment never leaks in.
BASE_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
#: Between SIGTERM and SIGKILL: long enough for a plugin to clean up a temp file, short
#: enough that a hung check does not hold a worker much past its timeout.
KILL_GRACE_SECONDS = 0.5
#: How long to wait for the last output after the group was killed.
DRAIN_SECONDS = 0.25
#: The shell of ``"shell": true`` checks; outside allowed_paths on purpose: allowing shell
#: checks (checks.allow_shell) is the operator's explicit decision to run it.
SHELL = "/bin/sh"
SHELL_DISABLED = "shell checks are disabled on this agent (checks.allow_shell)"

EXIT_CRITICAL = 2
EXIT_UNKNOWN = 3

# Variables that make the dynamic loader or a script interpreter run code the server names
# from anywhere on disk, which would make allowed_paths pointless. A check asking for one is
# refused rather than silently run without it.
_DENIED_ENV = frozenset(
    {
        "BASH_ENV",
        "ENV",
        "GCONV_PATH",
        "GLIBC_TUNABLES",
        "NODE_OPTIONS",
        "PERL5DB",
        "PERL5LIB",
        "PERL5OPT",
        "PERLLIB",
        "PYTHONHOME",
        "PYTHONPATH",
        "PYTHONSTARTUP",
        "RUBYLIB",
        "RUBYOPT",
        "SHELLOPTS",
    }
)
_DENIED_ENV_PREFIXES = ("LD_", "DYLD_")
_READ_CHUNK = 65536


class _Refused(Exception):
    """The check cannot be started; the message says why, for the result output."""


class _Child(Protocol):
    """A running plugin, started by a spawner or by the executor itself."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    def poll(self) -> int | None: ...

    def wait_until(self, deadline: float) -> bool: ...

    def reap(self, timeout: float) -> bool: ...


class _LocalChild:
    """A plugin started by this process with ``subprocess.Popen``."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.pid = proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def poll(self) -> int | None:
        return self.proc.poll()

    def wait_until(self, deadline: float) -> bool:
        return _wait_exit(self.proc, deadline)

    def reap(self, timeout: float) -> bool:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        return True


class Executor:
    """Runs CheckSpecs as subprocesses; safe to share between threads."""

    def __init__(
        self,
        allowed_paths: Sequence[str],
        default_limits: ResourceLimits,
        output_limit_bytes: int = DEFAULT_OUTPUT_LIMIT_BYTES,
        *,
        allow_shell: bool = False,
        user: CheckUser | None = None,
        no_new_privs: bool = False,
        use_spawner: bool = True,
        containment: ExecContainment = exec_containment.NONE,
    ) -> None:
        """``user``: whom checks run as (None: as the agent); ``no_new_privs``: exec
        grants no privileges to checks (set-user-ID programs run unprivileged);
        ``use_spawner``: start plugins through spawner processes (agent/spawner.py), the
        fast way, rather than forking the agent for each; ``containment``: what the
        checks' processes may execute (agent/containment.py). Raises OSError when the
        containment's Landlock ruleset cannot be made."""
        if output_limit_bytes < 1:
            raise ValueError(f"output_limit_bytes must be positive, got {output_limit_bytes}")
        # Resolved once: the allowed directories are root-owned and do not move at runtime.
        self._allowed_dirs = tuple(os.path.realpath(p) for p in allowed_paths)
        self._default_limits = default_limits
        self._output_limit = output_limit_bytes
        self._allow_shell = allow_shell
        self._user = user
        self._no_new_privs = no_new_privs
        self._containment = containment
        ruleset = (exec_containment.open_ruleset(containment)
                   if containment.mode == "landlock" else None)
        self._restrict_exec = (exec_containment.make_restrict_self(ruleset)
                               if ruleset is not None else None)
        exec_ruleset = ((ruleset, exec_containment.restrict_self_syscall())
                        if ruleset is not None else None)
        self._spawners = (SpawnerPool((user.uid, user.gid) if user is not None else None,
                                      exec_ruleset)
                          if use_spawner else None)
        # An executor replaced on SIGHUP lets its spawners (and its ruleset) go once
        # nothing uses it; close() does the same at once. Either runs only once.
        self._finalizer = weakref.finalize(self, _release, self._spawners, ruleset)

    def close(self) -> None:
        """Let the spawner processes go (running plugins are killed)."""
        self._finalizer()

    @property
    def containment(self) -> ExecContainment:
        """What the checks' processes may execute."""
        return self._containment

    @property
    def allowed_paths(self) -> tuple[str, ...]:
        """The allowed directories, resolved."""
        return self._allowed_dirs

    def run(self, spec: CheckSpec) -> CheckResult:
        """Run ``spec`` to completion or timeout; never raises."""
        started = time.monotonic()
        executed_at = iso_utc(time.time())
        try:
            exit_code, output, perfdata = self._run(spec)
        except _Refused as exc:
            exit_code, output, perfdata = EXIT_UNKNOWN, f"UNKNOWN: {exc}", []
        except Exception as exc:
            log.exception("check %s: unexpected error in the executor", spec.id)
            exit_code, output, perfdata = EXIT_UNKNOWN, f"UNKNOWN: agent error: {exc!r}", []
        return CheckResult(
            result_id=str(uuid.uuid4()),
            check_id=spec.id,
            status=status_for_exit_code(exit_code),
            exit_code=exit_code,
            output=output,
            perfdata=perfdata,
            duration_ms=round((time.monotonic() - started) * 1000),
            executed_at=executed_at,
        )

    def _run(self, spec: CheckSpec) -> tuple[int, str, list[dict]]:
        if not spec.command:
            raise _Refused("empty command")
        if not all(isinstance(arg, str) and "\0" not in arg for arg in spec.command):
            raise _Refused("command arguments must be strings without NUL bytes")
        if not spec.timeout > 0:
            raise _Refused(f"invalid timeout {spec.timeout!r}")
        if spec.shell:
            if not self._allow_shell:
                raise _Refused(SHELL_DISABLED)
            if len(spec.command) != 1:
                raise _Refused("a shell check's command must be one command line")
            path, argv = SHELL, [SHELL, "-c", spec.command[0]]
        else:
            path, argv = self._resolve(spec.command[0]), list(spec.command)
            refusal = self._containment.refusal(path, argv)
            if refusal is not None:
                raise _Refused(refusal)
        _check_executable(path)
        env = _build_env(spec.env)
        limits = _merged_limits(spec.limits, self._default_limits)
        try:
            preexec = make_preexec(limits, user=self._user, no_new_privs=self._no_new_privs,
                                   restrict_exec=self._restrict_exec)
        except ValueError as exc:
            raise _Refused(str(exc)) from None
        except (OSError, AttributeError) as exc:  # no prctl in this libc
            raise _Refused(f"cannot set no_new_privs (checks.no_new_privs): {exc}") from None

        spawner = self._spawner_for(limits)
        read_fd, write_fd = os.pipe()
        try:
            child = self._start(spawner, spec, path, argv, env, preexec, write_fd)
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        try:
            # The timeout is the plugin's: from its start, not from when the agent began
            # to prepare it (a first run may wait for its spawner to start).
            exit_code, output, perfdata = self._supervise(child, read_fd, spec,
                                                          time.monotonic(), limits)
        finally:
            # Whatever went wrong above, no plugin outlives its supervision.
            if child.poll() is None:
                _kill_group(child)
            os.close(read_fd)
        if exit_code != 0:
            hint = self._containment.denied_hint(argv)
            if hint is not None:
                output = f"{output}\n{hint}" if output else hint
        return exit_code, output, perfdata

    def _spawner_for(self, limits: ResourceLimits) -> Spawner | None:
        if self._spawners is None:
            return None
        # The spawner switches to the check user itself (agent/spawn_server.py).
        preexec = make_preexec(limits, no_new_privs=self._no_new_privs)
        return self._spawners.get(limits, preexec, limits.cpu_seconds)

    def _start(self, spawner: Spawner | None, spec: CheckSpec, path: str, argv: list[str],
               env: dict[str, str], preexec: Callable[[], None], output_fd: int) -> _Child:
        if spawner is not None:
            try:
                return spawner.spawn(path, argv, env, output_fd)
            except SpawnerLost as exc:
                log.warning("check %s: %s; starting it from the agent", spec.id, exc)
            except OSError as exc:
                raise self._cannot_execute(path, exc) from None
        return self._start_here(path, argv, env, preexec, output_fd)

    def _start_here(self, path: str, argv: list[str], env: dict[str, str],
                    preexec: Callable[[], None], output_fd: int) -> _LocalChild:
        try:
            proc = subprocess.Popen(
                argv,
                executable=path,  # the vetted file; argv[0] stays as configured
                stdin=subprocess.DEVNULL,
                stdout=output_fd,
                stderr=output_fd,
                env=env,
                cwd="/",
                start_new_session=True,
                preexec_fn=preexec,
            )
        except subprocess.SubprocessError:
            # Only a failing preexec_fn raises this, and its own message is lost on the way.
            raise _Refused(
                "could not set up the check's sandbox in the child (resource limits, "
                f"no_new_privs, exec containment {self._containment.describe()} or "
                f"switching to user {self._user.name if self._user else '(unchanged)'})"
            ) from None
        except OSError as exc:
            raise self._cannot_execute(path, exc) from None
        return _LocalChild(proc)

    def _cannot_execute(self, path: str, exc: OSError) -> _Refused:
        who = f" as user {self._user.name}" if self._user is not None else ""
        if exc.errno == errno.EACCES:
            reason = self._containment.denied_start(path)
            if reason is not None:
                return _Refused(f"cannot execute {path}{who}: {reason}")
        return _Refused(f"cannot execute {path}{who}: {exc.strerror or exc}")

    def _resolve(self, program: str) -> str:
        """The real path of ``program`` if it lies inside an allowed directory.

        A bare name (no "/") is looked up in the allowed directories, in order.
        """
        if not program or "\0" in program:
            raise _Refused(f"invalid program name {program!r}")
        if os.path.isabs(program):
            candidates = [program]
        elif "/" in program:
            raise _Refused(f"relative program path {program!r}: use an absolute path")
        else:
            candidates = [os.path.join(d, program) for d in self._allowed_dirs]
            candidates = [c for c in candidates if os.path.lexists(c)] or candidates[:1]
            if not candidates:
                raise _Refused(f"{program!r} not found: no allowed paths are configured")
        real = os.path.realpath(candidates[0])
        for allowed in self._allowed_dirs:
            prefix = allowed if allowed.endswith(os.sep) else allowed + os.sep
            if real.startswith(prefix):
                return real
        shown = f"{program} (resolves to {real})" if real != program else program
        allowed_list = ", ".join(self._allowed_dirs) or "none configured"
        raise _Refused(f"command {shown} is outside the allowed paths ({allowed_list})")

    def _supervise(
        self,
        proc: _Child,
        fd: int,
        spec: CheckSpec,
        started: float,
        limits: ResourceLimits,
    ) -> tuple[int, str, list[dict]]:
        deadline = started + spec.timeout
        output = _CappedBuffer(self._output_limit)
        try:
            finished = _read_until(fd, deadline, output) and proc.wait_until(deadline)
        except SpawnerLost:
            _kill_group(proc)
            return EXIT_UNKNOWN, "UNKNOWN: the check's outcome is lost: the agent's " \
                "spawner process exited while it ran", []

        if not finished:
            _kill_group(proc)
            _read_until(fd, time.monotonic() + DRAIN_SECONDS, output)
            text = output.text()
            message = f"CRITICAL: check timed out after {format_duration(spec.timeout)}"
            return EXIT_CRITICAL, f"{message}\n{text}" if text else message, []

        assert proc.returncode is not None
        if proc.returncode < 0:
            name = _signal_name(-proc.returncode)
            text = output.text()
            message = f"UNKNOWN: check was killed by signal {name}"
            reason = _limit_reached(-proc.returncode, limits)
            if reason:
                message = f"{message}: {reason}"
            return EXIT_UNKNOWN, f"{message}\n{text}" if text else message, []

        human, perfdata = parse_plugin_output(output.text(with_marker=False))
        marker = output.marker()
        if marker:
            human = f"{human}\n{marker}" if human else marker
        return proc.returncode, human, perfdata


class _CappedBuffer:
    """Keeps the first ``limit`` bytes of the output and counts the rest."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.kept = bytearray()
        self.total = 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.limit - len(self.kept)
        if room > 0:
            self.kept += chunk[:room]

    @property
    def truncated(self) -> bool:
        return self.total > len(self.kept)

    def marker(self) -> str:
        if not self.truncated:
            return ""
        return f"[output truncated: kept {len(self.kept)} of {self.total} bytes]"

    def text(self, with_marker: bool = True) -> str:
        data = bytes(self.kept)
        if self.truncated:
            # Cut back to the last separator so a half-written perfdata item is dropped
            # rather than parsed into a wrong value; not if that would lose half of it.
            cut = max(data.rfind(b"\n"), data.rfind(b" "))
            if cut >= len(data) // 2:
                data = data[:cut]
        # final=False: a multi-byte character cut in half is dropped, not turned into U+FFFD.
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        text = decoder.decode(data, final=not self.truncated).rstrip()
        # NUL is legal in plugin output but not in PostgreSQL text columns.
        text = text.replace("\x00", "\ufffd")
        if with_marker and self.truncated:
            text = f"{text}\n{self.marker()}" if text else self.marker()
        return text


def _read_until(fd: int, deadline: float, output: _CappedBuffer) -> bool:
    """Read ``fd`` into ``output`` until EOF (True) or ``deadline`` (False).

    Reading continues past the cap, discarding, so a chatty plugin never blocks on a full
    pipe and then times out for it.
    """
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        # poll() takes milliseconds; round up so we never spin on a sub-millisecond rest.
        if not poller.poll(int(remaining * 1000) + 1):
            continue
        chunk = os.read(fd, _READ_CHUNK)
        if not chunk:
            return True
        output.add(chunk)


def _wait_exit(proc: subprocess.Popen[bytes], deadline: float) -> bool:
    """Reap the plugin if it exits before ``deadline``; False if it is still running then."""
    if proc.poll() is not None:
        return True
    # Popen.wait(timeout) polls with sleeps starting at 0.5 ms, which alone cost a third of
    # a typical plugin run; a pidfd wakes us the moment the plugin exits.
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return False
        return True
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        remaining = deadline - time.monotonic()
        if remaining > 0:
            poller.poll(int(remaining * 1000) + 1)
    finally:
        os.close(pidfd)
    return proc.poll() is not None


def _kill_group(proc: _Child) -> None:
    """SIGTERM the plugin's process group, SIGKILL it after a grace period, reap the plugin."""
    pgid = proc.pid  # start_new_session: the plugin leads its own group
    _signal_group(pgid, signal.SIGTERM)
    grace_end = time.monotonic() + KILL_GRACE_SECONDS
    while time.monotonic() < grace_end:
        proc.poll()  # reap the leader, or its zombie keeps the group "alive"
        if not _group_exists(pgid):
            return
        time.sleep(0.01)
    _signal_group(pgid, signal.SIGKILL)
    if not proc.reap(5):
        # Only a process stuck in uninterruptible sleep (a dead NFS mount) survives SIGKILL.
        log.error("plugin pid %d did not exit after SIGKILL; leaving it", proc.pid)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        # A set-user-ID member we may not signal; the rest of the group still got it.
        log.warning("not permitted to send %s to every process of group %d", sig.name, pgid)


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _release(spawners: SpawnerPool | None, ruleset: int | None) -> None:
    if spawners is not None:
        spawners.close()
    if ruleset is not None:
        os.close(ruleset)


@functools.lru_cache(maxsize=256)
def _merged_limits(own: ResourceLimits, defaults: ResourceLimits) -> ResourceLimits:
    return own.merged_over(defaults)


def _check_executable(path: str) -> None:
    """Raise _Refused unless ``path`` is an executable regular file."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise _Refused(f"command not found: {path}") from None
    except OSError as exc:
        raise _Refused(f"cannot access {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise _Refused(f"command is not a regular file: {path}")
    if not os.access(path, os.X_OK):
        raise _Refused(f"command is not executable: {path}")


def _build_env(extra: Mapping[str, str]) -> dict[str, str]:
    env = dict(BASE_ENV)
    for name, value in extra.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise _Refused(f"environment variable {name!r}: names and values must be strings")
        if not name or "=" in name or "\0" in name or "\0" in value:
            raise _Refused(f"invalid environment variable name or value: {name!r}")
        if name in _DENIED_ENV or name.startswith(_DENIED_ENV_PREFIXES):
            raise _Refused(f"environment variable {name} is not allowed for checks")
        env[name] = value
    return env


def _limit_reached(signum: int, limits: ResourceLimits) -> str | None:
    """Which resource limit a death by ``signum`` means, in words, if any: the kernel
    sends SIGXCPU at the CPU limit and SIGXFSZ at the file size limit."""
    if signum == signal.SIGXCPU and limits.cpu_seconds is not None:
        return f"it used up its CPU time limit ({limits.cpu_seconds} s, cpu_seconds)"
    if signum == signal.SIGXFSZ and limits.file_size_mb is not None:
        return f"it wrote past its file size limit ({limits.file_size_mb} MB, file_size_mb)"
    return None


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def iso_utc(timestamp: float) -> str:
    """``2026-11-22T10:30:00.123Z`` for a ``time.time()`` value."""
    moment = datetime.fromtimestamp(timestamp, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def error_result(check_id: str, output: str, exit_code: int = EXIT_UNKNOWN) -> CheckResult:
    """A result for a check that could not run at all, stamped now (for callers like the
    scheduler that must report a failure without an execution)."""
    return CheckResult(
        result_id=str(uuid.uuid4()),
        check_id=check_id,
        status=status_for_exit_code(exit_code),
        exit_code=exit_code,
        output=output,
        perfdata=[],
        duration_ms=0,
        executed_at=iso_utc(time.time()),
    )
