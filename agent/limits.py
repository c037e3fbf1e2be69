"""Resource limits (setrlimit) for check processes, applied before exec.

The limits are set by a ``preexec_fn``, between fork and exec, so the plugin and everything
it starts inherit them from its first instruction. That fork is of the agent's spawner
(agent/spawner.py), once per set of limits, and the plugins inherit the limits from the
spawner; only limits too small for the spawner's interpreter make the agent fork for
every run (2x to 3.5x a bare spawn). Two other routes were measured and rejected:

* ``prlimit(2)`` on the child right after ``Popen`` returns keeps ``subprocess`` on its
  ``vfork()`` fast path (~1.0x a bare ``Popen`` instead of 2x to 3.5x for a ``preexec_fn``,
  which forces a full ``fork()`` of the agent), but it races the plugin: a shell-script
  plugin routinely forks its first command before the parent thread gets the CPU back, and
  that command then runs unlimited (the test suite caught it). It also fails with EPERM on
  set-user-ID plugins such as ``check_icmp`` when the agent is not root.
* a trampoline (``prlimit --as=... -- plugin`` or ``sh -c 'ulimit ...; exec "$0" "$@"'``)
  costs an extra exec (1.7x to 2.0x) and depends on external tools whose flags differ
  between implementations.

Every limit is set with soft = hard so a plugin cannot raise its own limits again, except
for CPU where the hard limit is one second above the soft one: the kernel sends SIGXCPU at
the soft limit and SIGKILL at the hard one, so a plugin gets a chance to report first.
"""

from __future__ import annotations

import functools
import resource
from collections.abc import Callable

from agent.model import ResourceLimits

#: CPU seconds a check may burn; a plugin that spins this long is broken, not slow.
DEFAULT_CPU_SECONDS = 60
#: Address space (RLIMIT_AS), not resident memory: Nagios plugins are small C programs or
#: scripts, and 512 MB of address space fits a Python or Perl interpreter comfortably.
DEFAULT_MEMORY_MB = 512
#: Open file descriptors.
DEFAULT_OPEN_FILES = 1024
#: Largest file a check may write; stops a runaway plugin from filling the disk.
DEFAULT_FILE_SIZE_MB = 64
#: Processes (RLIMIT_NPROC) are left unlimited by default: the kernel counts *every* process
#: of the real user ID, not just the check's descendants, so for an agent running as a
#: dedicated non-root user a default here would be shared with the agent itself and all its
#: other checks, and a busy host would see unrelated checks fail to fork. For root it is not
#: enforced at all (CAP_SYS_RESOURCE). Set ``processes`` per check when it is wanted.
DEFAULT_PROCESSES: int | None = None

DEFAULT_LIMITS = ResourceLimits(
    cpu_seconds=DEFAULT_CPU_SECONDS,
    memory_mb=DEFAULT_MEMORY_MB,
    open_files=DEFAULT_OPEN_FILES,
    file_size_mb=DEFAULT_FILE_SIZE_MB,
    processes=DEFAULT_PROCESSES,
)

_MB = 1024 * 1024

RlimitSettings = tuple[tuple[int, tuple[int, int]], ...]


@functools.lru_cache(maxsize=64)
def rlimit_settings(limits: ResourceLimits) -> RlimitSettings:
    """The ``(resource, (soft, hard))`` pairs for ``limits``; unset fields are left alone.

    Values are clamped to the agent's own hard limits, which an unprivileged process cannot
    raise: asking for more would make every check fail instead of running with what the
    host allows. Raises ValueError for a limit below 1.
    """
    wanted = (
        ("cpu_seconds", resource.RLIMIT_CPU, limits.cpu_seconds, 1),
        ("memory_mb", resource.RLIMIT_AS, limits.memory_mb, _MB),
        ("open_files", resource.RLIMIT_NOFILE, limits.open_files, 1),
        ("file_size_mb", resource.RLIMIT_FSIZE, limits.file_size_mb, _MB),
        ("processes", resource.RLIMIT_NPROC, limits.processes, 1),
    )
    settings = []
    for name, which, value, scale in wanted:
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"resource limit {name} must be a positive integer, got {value!r}")
        soft = value * scale
        hard = soft + 1 if which == resource.RLIMIT_CPU else soft
        _, current_hard = resource.getrlimit(which)
        if current_hard != resource.RLIM_INFINITY:
            soft, hard = min(soft, current_hard), min(hard, current_hard)
        settings.append((which, (soft, hard)))
    return tuple(settings)


def make_preexec(limits: ResourceLimits) -> Callable[[], None]:
    """A ``preexec_fn`` applying ``limits`` in the child between fork and exec.

    Everything is computed here, in the parent: the child of a threaded process must do as
    little as possible before exec (no imports, no locks), see the ``subprocess`` docs.
    """
    settings = rlimit_settings(limits)
    setrlimit = resource.setrlimit

    def apply_limits() -> None:
        for which, values in settings:
            setrlimit(which, values)

    return apply_limits
