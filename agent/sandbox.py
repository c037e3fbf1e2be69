"""What a check process may do, besides the allowed paths and the resource limits.

Everything here happens in the child between fork and exec, in one ``preexec_fn``
(:func:`make_preexec`), in this order:

1. resource limits (agent/limits.py), while the child still has the agent's privileges
   to set them;
2. ``no_new_privs`` (``prctl(PR_SET_NO_NEW_PRIVS, 1)``): from then on exec never grants
   privileges, so a set-user-ID or file-capability program runs with the caller's rights.
   Some Nagios plugins are set-user-ID root by design (``check_icmp``, ``check_dhcp``)
   and fail under it; ``checks.no_new_privs: false`` is the documented escape hatch;
3. the exec containment's Landlock ruleset (agent/containment.py), after no_new_privs and
   before the user switch: the kernel accepts it from a process with no_new_privs set or
   with CAP_SYS_ADMIN, which root loses with the switch;
4. the unprivileged user (``checks.run_as``, ``nobody`` by default when the agent runs as
   root): supplementary groups dropped, then the group, then the user (in that order:
   once the user is gone, the group can no longer be changed).

The plugin's output still reaches the agent: it writes into a pipe the agent created
before the fork, which needs no permission on any file.
"""

from __future__ import annotations

import functools
import logging
import os
import resource
from collections.abc import Callable
from dataclasses import dataclass

from agent.limits import rlimit_settings
from agent.model import ResourceLimits

log = logging.getLogger(__name__)

#: Whom checks run as when the agent runs as root and ``checks.run_as`` is not set.
DEFAULT_CHECK_USER = "nobody"
#: From <linux/prctl.h>.
PR_SET_NO_NEW_PRIVS = 38
_MAX_UID = 2**32 - 2  # (uid_t)-1 means "unchanged" to the kernel


@dataclass(frozen=True)
class CheckUser:
    """An account checks run as."""

    name: str
    uid: int
    gid: int


def resolve_user(value: str) -> CheckUser:
    """The account named by a user name or a numeric uid; raises LookupError.

    A uid without a passwd entry is allowed (containers often have those); its group is
    then the same number.
    """
    import pwd

    value = value.strip()
    if value.isdigit():
        uid = int(value)
        if uid > _MAX_UID:
            raise LookupError(f"uid {value} is out of range")
        try:
            entry = pwd.getpwuid(uid)
        except KeyError:
            return CheckUser(name=value, uid=uid, gid=uid)
        return CheckUser(name=entry.pw_name, uid=uid, gid=entry.pw_gid)
    try:
        entry = pwd.getpwnam(value)
    except KeyError:
        raise LookupError(f"no user {value!r} on this host") from None
    return CheckUser(name=entry.pw_name, uid=entry.pw_uid, gid=entry.pw_gid)


def check_user(run_as: str | None, *, euid: int | None = None) -> CheckUser | None:
    """Whom checks run as, or None for "as the agent itself".

    Only root can switch users: an unprivileged agent ignores ``run_as`` (with a warning,
    since the operator asked for something that does not happen). ``root`` or ``0``
    keeps checks running as root.
    """
    euid = os.geteuid() if euid is None else euid
    if euid != 0:
        if run_as is not None:
            log.warning("checks.run_as (%s) is ignored: the agent does not run as root, so "
                        "checks run as the agent's own user", run_as)
        return None
    user = resolve_user(run_as or DEFAULT_CHECK_USER)
    return None if user.uid == 0 else user


@functools.cache
def _prctl() -> Callable[[int, int, int, int, int], int]:
    # ctypes costs about 0.5 MB: loaded at the first check run, not at import.
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    prctl = libc.prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                      ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


def make_preexec(
    limits: ResourceLimits,
    *,
    user: CheckUser | None = None,
    no_new_privs: bool = False,
    restrict_exec: Callable[[], None] | None = None,
) -> Callable[[], None]:
    """A ``preexec_fn`` applying limits, no_new_privs, ``restrict_exec`` (the Landlock
    step of agent/containment.py) and the user, in that order.

    Everything is looked up here, in the parent: the child of a threaded process must do
    as little as possible before exec (no imports, no locks, no name lookups). An
    exception in the child makes ``Popen`` raise SubprocessError and nothing runs.
    Raises ValueError for invalid limits, OSError when prctl cannot be found.
    """
    settings = rlimit_settings(limits)
    setrlimit = resource.setrlimit
    prctl = _prctl() if no_new_privs else None
    ids = (user.uid, user.gid) if user is not None else None
    setgroups, setgid, setuid = os.setgroups, os.setgid, os.setuid

    def apply_sandbox() -> None:
        for which, values in settings:
            setrlimit(which, values)
        if prctl is not None and prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError("prctl(PR_SET_NO_NEW_PRIVS) failed")
        if restrict_exec is not None:
            restrict_exec()
        if ids is not None:
            setgroups([])
            setgid(ids[1])
            setuid(ids[0])

    return apply_sandbox
