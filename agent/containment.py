"""Exec containment: what the processes of a check may execute, not only its command.

``checks.allowed_paths`` vets a check's first argument, but plugins in those directories
run other programs: ``negate -o OK /bin/sh -c id`` or ``urlize`` run whatever they are
given, and ``check_by_ssh -o ProxyCommand=...`` makes ssh run a shell. The containment
closes that whatever the plugin does, in one of three modes (``checks.exec_containment``):

* ``landlock`` (Linux 5.13 and later): a Landlock ruleset that handles only the execute
  right (reads and writes stay as they were: plugins read all over the system) and grants
  it beneath the allowed paths, on the system's dynamic loader and on the entries of
  ``checks.allowed_executables``. The spawner (agent/spawn_server.py) restricts itself
  once, after its interpreter is loaded; every plugin it starts, and everything those
  start, inherit the restriction and cannot shed it. Shared libraries need no rule:
  Landlock checks the execute right when a file is executed, not when a library is mapped,
  while the loader named by an ELF program (``PT_INTERP``) is executed by the kernel and
  needs one. The loader can itself run any program (``ld.so /bin/sh``), so a check whose
  arguments name it is refused before start (:meth:`ExecContainment.refusal`).
* ``denylist``, where the kernel lacks Landlock: plugins known to run other programs
  (:data:`DENIED_PROGRAMS`) are refused before start. It cannot see what an unlisted
  plugin runs, which is why Landlock is preferred.
* ``none``: nothing beyond ``allowed_paths`` (documented as unsafe).

``auto`` (the default) picks ``landlock`` where it applies and ``denylist`` elsewhere.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import re
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

MODES = ("auto", "landlock", "denylist", "none")
DEFAULT_MODE = "auto"

#: Programs that run a program named in their arguments (or a shell command line), which
#: the denylist mode refuses as a check's command. Compared by file name, both as written
#: in the check and after symlinks are resolved (a busybox applet is a symlink).
DENIED_PROGRAMS = frozenset({
    # monitoring-plugins: negate and urlize run the plugin in their arguments;
    # check_by_ssh runs ssh, whose ProxyCommand and LocalCommand are shell lines.
    "negate", "urlize", "check_by_ssh",
    # Generic wrappers that exec their arguments.
    "timeout", "env", "nice", "nohup", "setsid", "stdbuf", "ionice", "chrt", "taskset",
    "flock", "xargs", "chroot", "unshare", "nsenter", "setpriv", "capsh", "runuser", "su",
    "sudo", "doas", "busybox", "strace", "ltrace", "script", "watch", "time", "ssh",
})

# From <linux/landlock.h>.
LANDLOCK_ACCESS_FS_EXECUTE = 1 << 0
LANDLOCK_CREATE_RULESET_VERSION = 1 << 0
LANDLOCK_RULE_PATH_BENEATH = 1
# landlock_create_ruleset, landlock_add_rule, landlock_restrict_self: one number on
# every architecture with the generic syscall table.
_LANDLOCK_SYSCALLS = {"x86_64": (444, 445, 446), "aarch64": (444, 445, 446),
                      "arm64": (444, 445, 446), "riscv64": (444, 445, 446)}
_CAP_SYS_ADMIN = 21
# File names of dynamic loaders (glibc on every architecture, musl), for arguments that
# name the loader without a path and rely on PATH.
_LOADER_NAME = re.compile(
    r"^(ld-linux.*\.so.*|ld64\.so.*|ld\.so.*|ld-musl-.*\.so.*|ld-[0-9.]+\.so)$"
)
_PT_INTERP = 3
_SHEBANG_BYTES = 256


class ContainmentUnavailable(Exception):
    """The configured containment cannot be applied on this host; the message says why."""


@dataclass(frozen=True)
class ExecContainment:
    """The containment in force for one executor."""

    mode: str
    """``landlock``, ``denylist`` or ``none``."""
    reason: str
    """Why this mode, for the status and the logs."""
    abi: int = 0
    """The kernel's Landlock ABI version (landlock mode)."""
    executable_dirs: tuple[str, ...] = ()
    """Real paths of directories beneath which checks may execute (landlock mode)."""
    executable_files: tuple[str, ...] = ()
    """Real paths of single files checks may execute: loaders and listed executables."""
    loaders: tuple[str, ...] = ()
    """Real paths of the dynamic loaders among :attr:`executable_files`."""
    loader_ids: frozenset[tuple[int, int]] = frozenset()
    """(device, inode) of each loader: an argument reaching one by any path names it."""

    def describe(self) -> str:
        """In a few words, as ``aami-agent status`` says it."""
        return describe(self.summary())

    def summary(self) -> dict[str, object]:
        """What the status file records."""
        data: dict[str, object] = {"mode": self.mode, "reason": self.reason}
        if self.mode == "landlock":
            data.update(abi=self.abi, executable=[*self.executable_dirs,
                                                  *self.executable_files])
        return data

    def refusal(self, path: str, argv: Sequence[str]) -> str | None:
        """Why the check running ``path`` with ``argv`` may not start, or None."""
        if self.mode == "denylist":
            for name in {os.path.basename(path), os.path.basename(argv[0])}:
                if name in DENIED_PROGRAMS:
                    return (f"{argv[0]} runs other programs, which the exec containment "
                            f"in use (denylist: {self.reason}) cannot restrict: refused")
        elif self.mode == "landlock":
            for argument in argv[1:]:
                if self._names_loader(argument):
                    return (f"argument {argument!r} names the dynamic loader, which can run "
                            "any program past the exec containment (landlock): refused")
        return None

    def permits(self, path: str) -> bool:
        """Whether a check may execute ``path`` under this containment."""
        if self.mode != "landlock":
            return True
        real = os.path.realpath(path)
        return real in self.executable_files or _beneath_any(real, self.executable_dirs)

    def denied_start(self, path: str) -> str | None:
        """Why executing ``path`` failed with EACCES under Landlock, if the containment
        explains it: the plugin's interpreter or loader is outside it."""
        if self.mode != "landlock":
            return None
        needed = _script_interpreter(path) or _elf_interpreter(path)
        if needed is None or self.permits(needed):
            return None
        return (f"its interpreter {needed} is outside what checks may execute "
                "(exec containment: landlock); list it in checks.allowed_executables")

    def denied_hint(self, argv: Sequence[str]) -> str | None:
        """A note for a failed check whose arguments name a program the containment
        keeps it from executing (``negate ... /bin/sh``): the likely reason it failed."""
        if self.mode != "landlock":
            return None
        for argument in argv[1:]:
            if (os.path.isabs(argument) and os.path.isfile(argument)
                    and os.access(argument, os.X_OK) and not self.permits(argument)):
                return (f"exec containment (landlock): {argument} is outside what checks "
                        "may execute (checks.allowed_paths, checks.allowed_executables), "
                        "so the check could not run it")
        return None

    def _names_loader(self, argument: str) -> bool:
        for candidate in {argument, argument.partition("=")[2]}:
            if not candidate:
                continue
            if _LOADER_NAME.match(os.path.basename(candidate)):
                return True
            if "/" in candidate and _file_id(os.path.join("/", candidate)) in self.loader_ids:
                return True
        return False


def describe(summary: Mapping[str, object]) -> str:
    """:meth:`ExecContainment.summary` (as the status file keeps it) in a few words."""
    mode, reason = summary.get("mode"), summary.get("reason")
    if mode == "landlock":
        return f"landlock (ABI {summary.get('abi')})"
    if mode == "denylist":
        return f"denylist ({reason})"
    if mode == "none":
        return f"none ({reason})"
    return f"unknown ({mode!r})"


NONE = ExecContainment(mode="none", reason="checks.exec_containment is none")


def resolve(mode: str, *, allowed_dirs: Iterable[str], executables: Iterable[str] = (),
            no_new_privs: bool = True) -> ExecContainment:
    """The containment for ``mode`` (one of :data:`MODES`) on this host.

    ``executables`` are files or directories checks may execute besides ``allowed_dirs``
    (``checks.allowed_executables``, and the shell when shell checks are allowed).
    Raises ContainmentUnavailable when ``landlock`` is asked for and cannot apply.
    """
    if mode not in MODES:
        raise ValueError(f"unknown exec containment mode {mode!r}")
    if mode == "none":
        return NONE
    if mode == "denylist":
        return ExecContainment(mode="denylist", reason="checks.exec_containment is denylist")
    problem = landlock_problem(no_new_privs)
    if problem is not None:
        if mode == "landlock":
            raise ContainmentUnavailable(f"checks.exec_containment is landlock, but {problem}")
        log.warning("exec containment falls back to the denylist: %s", problem)
        return ExecContainment(mode="denylist", reason=f"no Landlock: {problem}")
    dirs, files = [], []
    for entry in [*allowed_dirs, *executables]:
        real = os.path.realpath(entry)
        if os.path.isdir(real):
            dirs.append(real)
        elif os.path.isfile(real):
            files.append(real)
        else:
            log.warning("exec containment: %s does not exist; checks cannot execute "
                        "anything there until the agent is reloaded after it appears", entry)
    loaders, abi = system_loaders(), landlock_abi()
    return ExecContainment(
        mode="landlock", reason=f"Landlock ABI {abi}", abi=abi,
        executable_dirs=tuple(dict.fromkeys(dirs)),
        executable_files=tuple(dict.fromkeys([*loaders, *files])), loaders=loaders,
        loader_ids=frozenset(ids for ids in map(_file_id, loaders) if ids is not None),
    )


def landlock_problem(no_new_privs: bool) -> str | None:
    """Why Landlock cannot restrict checks here, or None when it can."""
    if not landlock_abi():
        return ("this kernel does not offer Landlock (Linux 5.13 or later with landlock "
                "among its security modules)")
    if not system_loaders():
        return "the system's dynamic loader was not found"
    if not (no_new_privs or _process_status_flag("NoNewPrivs", 0)
            or _process_status_flag("CapEff", _CAP_SYS_ADMIN)):
        # The kernel takes a ruleset from a process with no_new_privs or CAP_SYS_ADMIN
        # only (a service manager may have set no_new_privs for the whole agent).
        return ("Landlock needs checks.no_new_privs: true when the agent runs without "
                "CAP_SYS_ADMIN (as a user other than root)")
    return None


@functools.cache
def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 when it offers none."""
    numbers = _LANDLOCK_SYSCALLS.get(platform.machine())
    if numbers is None:
        return 0
    try:
        import ctypes

        version = _syscall()(numbers[0], None, ctypes.c_size_t(0),
                             ctypes.c_uint32(LANDLOCK_CREATE_RULESET_VERSION))
    except (OSError, AttributeError):
        return 0
    return max(int(version), 0)


def restrict_self_syscall() -> int:
    """The number of ``landlock_restrict_self`` here (only once :func:`landlock_abi` > 0)."""
    return _LANDLOCK_SYSCALLS[platform.machine()][2]


def open_ruleset(containment: ExecContainment) -> int:
    """A Landlock ruleset file descriptor for ``containment`` (close-on-exec; the caller
    closes it). Raises OSError."""
    import ctypes

    create, add_rule, _ = _LANDLOCK_SYSCALLS[platform.machine()]
    syscall = _syscall()

    class RulesetAttr(ctypes.Structure):
        _fields_ = [("handled_access_fs", ctypes.c_uint64)]

    class PathBeneathAttr(ctypes.Structure):
        _pack_ = 1  # packed in <linux/landlock.h>
        _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]

    attr = RulesetAttr(LANDLOCK_ACCESS_FS_EXECUTE)
    ruleset = syscall(create, ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)),
                      ctypes.c_uint32(0))
    if ruleset < 0:
        raise _errno_error("landlock_create_ruleset")
    try:
        for path in [*containment.executable_dirs, *containment.executable_files]:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                rule = PathBeneathAttr(LANDLOCK_ACCESS_FS_EXECUTE, fd)
                if syscall(add_rule, ctypes.c_int(ruleset),
                           ctypes.c_int(LANDLOCK_RULE_PATH_BENEATH), ctypes.byref(rule),
                           ctypes.c_uint32(0)) != 0:
                    raise _errno_error(f"landlock_add_rule({path})")
            finally:
                os.close(fd)
    except BaseException:
        os.close(ruleset)
        raise
    return int(ruleset)


def make_restrict_self(ruleset: int) -> Callable[[], None]:
    """A function for the child between fork and exec: restrict it to ``ruleset``.
    Everything is looked up here, in the parent (see agent/sandbox.py)."""
    import ctypes

    syscall, number = _syscall(), restrict_self_syscall()
    fd, flags = ctypes.c_int(ruleset), ctypes.c_uint32(0)

    def restrict_self() -> None:
        if syscall(number, fd, flags) != 0:
            raise OSError("landlock_restrict_self failed")

    return restrict_self


@functools.cache
def system_loaders() -> tuple[str, ...]:
    """Real paths of the dynamic loader native programs name (the one of this agent's own
    interpreter, which is a native program too)."""
    found = []
    for program in ("/proc/self/exe", "/bin/sh"):
        interpreter = _elf_interpreter(program)
        if interpreter and os.path.isfile(interpreter):
            found.append(os.path.realpath(interpreter))
    return tuple(dict.fromkeys(found))


def _elf_interpreter(path: str) -> str | None:
    """The ``PT_INTERP`` of an ELF file (its dynamic loader), or None."""
    try:
        with open(path, "rb") as file:
            header = file.read(64)
            if len(header) < 52 or header[:4] != b"\x7fELF":
                return None
            order = "<" if header[5] == 1 else ">"
            if header[4] == 2:  # 64-bit
                (phoff,) = struct.unpack_from(order + "Q", header, 32)
                phentsize, phnum = struct.unpack_from(order + "HH", header, 54)
                entry = struct.Struct(order + "I4xQ16xQ")  # p_type, p_offset, p_filesz
            else:
                (phoff,) = struct.unpack_from(order + "I", header, 28)
                phentsize, phnum = struct.unpack_from(order + "HH", header, 42)
                entry = struct.Struct(order + "II8xI")
            file.seek(phoff)
            table = file.read(phentsize * min(phnum, 64))
            for index in range(len(table) // phentsize if phentsize >= entry.size else 0):
                kind, offset, size = entry.unpack_from(table, index * phentsize)
                if kind == _PT_INTERP and 0 < size <= 4096:
                    file.seek(offset)
                    return file.read(size).split(b"\0", 1)[0].decode("utf-8", "replace")
    except (OSError, struct.error):
        return None
    return None


def _script_interpreter(path: str) -> str | None:
    """The interpreter of a ``#!`` script, or None."""
    try:
        with open(path, "rb") as file:
            head = file.read(_SHEBANG_BYTES)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    words = head[2:].split(b"\n", 1)[0].split()
    return words[0].decode("utf-8", "replace") if words else None


def _beneath_any(real: str, directories: Iterable[str]) -> bool:
    return any(real.startswith(d.rstrip("/") + "/") for d in directories)


def _file_id(path: str) -> tuple[int, int] | None:
    """(device, inode) of ``path``, symlinks followed; None if it cannot be reached."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def _process_status_flag(field: str, bit: int) -> bool:
    """Bit ``bit`` of the hexadecimal ``field`` of /proc/self/status (``CapEff``, or
    ``NoNewPrivs`` with bit 0)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(f"{field}:"):
                    return bool(int(line.split()[1], 16) >> bit & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


@functools.cache
def _syscall() -> Callable[..., int]:
    # ctypes costs about 0.5 MB: loaded when containment is first resolved, not at import.
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    syscall = libc.syscall
    syscall.restype = ctypes.c_long
    return syscall


def _errno_error(what: str) -> OSError:
    import ctypes

    number = ctypes.get_errno()
    return OSError(number, f"{what}: {os.strerror(number)}")
