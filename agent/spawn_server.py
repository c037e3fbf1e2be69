"""The spawner process: starts check plugins for the agent, already sandboxed.

The agent starts one spawner per set of sandbox settings (agent/spawner.py), applying the
settings to the spawner itself with the usual ``preexec_fn`` (agent/sandbox.py): resource
limits, no_new_privs, the check user. Every plugin the spawner then starts with
``posix_spawn`` (a ``vfork``, no copy of any address space) inherits all of them from its
first instruction, so the limits are as race-free as before while a plugin start costs no
more than a bare ``subprocess`` spawn. A full ``fork()`` of the multi-threaded agent for
every execution cost 2 to 3 ms; see BENCHMARKS.md, "Agent".

This file runs as a script, ``python -I -S -c SOURCE FD CPU_BUDGET UID GID RULESET
SYSCALL``, and imports only modules of the standard library that load no others, to stay
small (about 9 MB resident, most of it the interpreter itself); it switches to the check
user (UID, GID; -1: stay) once they are loaded. Before that, when RULESET is a file
descriptor (not -1), it restricts itself to that Landlock ruleset of the exec containment
(agent/containment.py) with syscall number SYSCALL (``landlock_restrict_self``): the
restriction has to wait until the interpreter runs, since exec'ing it would need the
execute right that checks must not have, and every plugin it then starts inherits it.
FD is one end of a ``SOCK_SEQPACKET`` socket pair:

* agent to spawner: ``marshal`` of ``(request_id, path, argv, env)`` with the write end
  of the plugin's output pipe attached (``SCM_RIGHTS``);
* spawner to agent: fixed-size records ``(kind, number, value)`` (``REPLY``): the agent
  parses only integers from a process that runs as the check user.

When the agent's end closes (the agent exited or let this spawner go), the process
groups of plugins still running are killed and the spawner exits once it has reaped them.
When its own CPU time reaches CPU_BUDGET seconds (half the checks' CPU limit, which it
carries too) it says it is retiring, and the agent starts a fresh spawner.
"""

import _socket
import array
import marshal
import os
import resource
import select
import signal
import struct

READY, SPAWNED, FAILED, EXITED, RETIRING = 1, 2, 3, 4, 5
#: kind, request id or pid, pid or errno or exit code (negative: killed by that signal).
REPLY = struct.Struct("!Bqq")
MAX_REQUEST_BYTES = 1 << 20
_FD_SIZE = array.array("i").itemsize


class SpawnServer:
    def __init__(self, sock: _socket.socket, cpu_budget: float) -> None:
        self.sock = sock
        self.cpu_budget = cpu_budget
        self.children: set[int] = set()
        self.retiring = False
        self.agent_gone = False
        # SIGCHLD wakes the poll below through this pipe; children are reaped in a loop.
        self.wake_read, wake_write = os.pipe()
        os.set_blocking(wake_write, False)
        os.set_blocking(self.wake_read, False)
        signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        self.poller = select.poll()
        self.poller.register(self.sock.fileno(), select.POLLIN)
        self.poller.register(self.wake_read, select.POLLIN)

    def serve(self) -> None:
        self.send(READY, 0, 0)
        while not (self.agent_gone and not self.children):
            for fd, _ in self.poller.poll():
                if fd == self.wake_read:
                    self.drain_wakeups()
                elif not self.agent_gone:
                    self.handle_request()
            self.reap()

    def handle_request(self) -> None:
        try:
            message, ancillary, flags, _ = self.sock.recvmsg(
                MAX_REQUEST_BYTES, _socket.CMSG_SPACE(_FD_SIZE)
            )
        except OSError:
            message, ancillary, flags = b"", [], 0
        fds = _received_fds(ancillary)
        if not message:
            for fd in fds:
                os.close(fd)
            self.let_go()
            return
        try:
            request_id, path, argv, env = marshal.loads(message)
        except (EOFError, ValueError, TypeError):
            for fd in fds:
                os.close(fd)
            return  # cannot come from the agent; nobody to answer
        if len(fds) != 1 or flags & _socket.MSG_CTRUNC:
            for fd in fds:
                os.close(fd)
            self.send(FAILED, request_id, 24)  # EMFILE: the fd did not fit under the limit
            return
        output = fds[0]
        try:
            pid = os.posix_spawn(
                path,
                argv,
                env,
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, output, 1),
                    (os.POSIX_SPAWN_DUP2, output, 2),
                ],
                setsid=True,
                # Python ignores these two; a plugin must start with the defaults. (glibc's
                # posix_spawn also leaves its two reserved signals, 32 and 33, ignored:
                # no program may use them, and glibc sets them up itself when it needs
                # them.)
                setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
            )
        except OSError as exc:
            self.send(FAILED, request_id, exc.errno or 0)
        else:
            self.children.add(pid)
            self.send(SPAWNED, request_id, pid)
        finally:
            os.close(output)
        self.check_budget()

    def reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            if pid in self.children:
                self.children.discard(pid)
                self.send(EXITED, pid, os.waitstatus_to_exitcode(status))

    def drain_wakeups(self) -> None:
        try:
            while os.read(self.wake_read, 512):
                pass
        except BlockingIOError:
            pass

    def check_budget(self) -> None:
        if self.retiring or self.cpu_budget <= 0:
            return
        usage = resource.getrusage(resource.RUSAGE_SELF)
        if usage.ru_utime + usage.ru_stime >= self.cpu_budget:
            self.retiring = True
            self.send(RETIRING, 0, 0)

    def send(self, kind: int, number: int, value: int) -> None:
        if self.agent_gone:
            return
        try:
            self.sock.send(REPLY.pack(kind, number, value))
        except OSError:
            self.let_go()

    def let_go(self) -> None:
        """The agent is gone: nothing started here may outlive its supervision."""
        self.agent_gone = True
        self.poller.unregister(self.sock.fileno())
        for pid in self.children:
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass


def _received_fds(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancillary:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            received = array.array("i")
            received.frombytes(data[: len(data) - len(data) % _FD_SIZE])
            fds.extend(received)
    for fd in fds:
        os.set_inheritable(fd, False)  # only the dup2 onto 1 and 2 reaches a plugin
    return fds


def restrict_exec(ruleset: int, syscall_number: int) -> None:
    """Enter the Landlock domain of ``ruleset``; raises OSError (and the spawner exits
    before it says it is ready: checks then fail closed in the agent)."""
    import ctypes  # only here: the cost of ctypes is paid only under Landlock

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    if libc.syscall(ctypes.c_long(syscall_number), ctypes.c_int(ruleset),
                    ctypes.c_uint32(0)) != 0:
        raise OSError(ctypes.get_errno(), "landlock_restrict_self failed")
    os.close(ruleset)


def main(argv: list[str]) -> None:
    fd, cpu_budget, uid, gid = int(argv[1]), float(argv[2]), int(argv[3]), int(argv[4])
    ruleset, syscall_number = int(argv[5]), int(argv[6])
    if ruleset >= 0:
        # Before the user switch: without no_new_privs, only CAP_SYS_ADMIN allows it.
        restrict_exec(ruleset, syscall_number)
    if uid >= 0:
        # Now that the interpreter and every module are loaded (the check user may not be
        # allowed to read them): the same order as agent/sandbox.py.
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    os.chdir("/")
    os.set_inheritable(fd, False)  # passed to us open across exec; no plugin may have it
    sock = _socket.socket(fileno=fd)
    SpawnServer(sock, cpu_budget).serve()


if __name__ == "__main__":
    import sys

    main(sys.argv)
