"""The running agent: its parts wired together in one constructor, and the loops that
move work between them.

::

    server --(long-poll)--> sync loop --update--> Scheduler --run--> Executor
       ^                                              | on_result
       |                                              v
       +---- sender loop <--peek/ack-- Spool <--append-+
       +---- heartbeat loop (liveness; delivers commands -> Scheduler.run_now;
                             renews the client certificate when enrolled)

An assignment runs only once :mod:`agent.policy_trust` accepted it (signed by a
configured or pinned key, unless the operator chose the insecure option); a refused one
leaves the scheduler untouched and is reported in the heartbeat's ``policy_error``.

Each loop is a thread that runs one step, then sleeps for as long as the step asked (or
its backoff says, after a failure) unless it is woken. A failed step never ends a loop:
the agent keeps running its checks and spooling results while the server is away.
Signal handlers only call :meth:`Agent.request_stop` / :meth:`Agent.request_reload`; the
main thread does the actual work in :meth:`Agent.run`.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent import containment as exec_containment
from agent import defaults
from agent.assignment import AssignmentCache, parse_checks
from agent.auth import Authenticator
from agent.backoff import Backoff
from agent.config import Config, load_config
from agent.credentials import CredentialStore
from agent.enrollment import CertificateManager
from agent.errors import AgentError, ConfigError, RequestRejected, RetryLater
from agent.executor import SHELL, Executor, iso_utc
from agent.fileio import write_json
from agent.identity import (
    load_or_create_agent_id,
    load_or_create_instance_id,
    load_or_create_registration_key,
)
from agent.logs import setup_logging
from agent.model import CheckResult, CheckSpec
from agent.policy import PolicyRejected
from agent.policy_pin import PolicyKeyPin
from agent.policy_trust import PolicyTrust
from agent.sandbox import check_user
from agent.scheduler import CheckRunner, Scheduler
from agent.spool import Spool
from agent.status import StatusBoard, pid_running, read_status
from agent.transport.base import (
    NOT_MODIFIED,
    Assignment,
    Command,
    Registration,
    TokenGrant,
    Transport,
)
from agent.version import agent_version

log = logging.getLogger(__name__)

# Commands are remembered by id so one delivered twice (heartbeat, long-poll) runs once.
_SEEN_COMMANDS = 256


class _SwappableExecutor:
    """Forwards to the current executor, so SIGHUP can replace it under the scheduler."""

    def __init__(self, executor: CheckRunner) -> None:
        self.current = executor

    def run(self, spec: CheckSpec) -> CheckResult:
        return self.current.run(spec)

    def close(self) -> None:
        """Let the current executor's spawner processes go. One replaced by SIGHUP lets
        its own go once the checks running in it are done with it."""
        close = getattr(self.current, "close", None)
        if close is not None:
            close()


def build_executor(config: Config) -> CheckRunner:
    """The executor ``config`` describes; ConfigError when its exec containment cannot
    apply on this host."""
    checks = config.checks
    # Shell checks run /bin/sh by design: allowing them (checks.allow_shell) lets the
    # server run any command line already, so the containment lets checks execute it.
    shell = [SHELL] if checks.allow_shell else []
    try:
        containment = exec_containment.resolve(
            checks.exec_containment, allowed_dirs=checks.allowed_paths,
            executables=[*checks.allowed_executables, *shell],
            no_new_privs=checks.no_new_privs,
        )
        return Executor(checks.allowed_paths, checks.default_limits, checks.output_limit,
                        allow_shell=checks.allow_shell, user=check_user(checks.run_as),
                        no_new_privs=checks.no_new_privs, containment=containment)
    except exec_containment.ContainmentUnavailable as exc:
        raise ConfigError(f"{config.path}: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"{config.path}: checks.exec_containment: cannot set up the "
                          f"Landlock ruleset: {exc}") from exc


def build_policy_trust(config: Config) -> PolicyTrust:
    """What decides whether a policy from the server may run (agent/policy_trust.py)."""
    server = config.server
    try:
        return PolicyTrust(
            server.policy_keys,
            insecure=server.insecure_accept_unsigned_policies,
            pin=PolicyKeyPin(config.agent.state_dir / defaults.POLICY_PIN_FILE),
            tls=server.tls.enabled,
        )
    except ImportError as exc:
        raise ConfigError(f"{config.path}: server.policy_keys: verifying policies needs the "
                          f"Python package 'cryptography' ({exc})") from exc


def build_transport(config: Config) -> Transport:
    # Imported here: requests is the biggest import of the agent; `id` and `status` skip it.
    from agent.transport.rest import RestTransport

    return RestTransport.from_config(config, agent_version())


def registration_for(config: Config, agent_id: str) -> Callable[[], Registration]:
    """A factory of registration requests that reads the bootstrap token when called."""

    def build() -> Registration:
        return Registration(
            token=config.read_bootstrap_token(),
            agent_id=agent_id,
            hostname=config.agent.hostname,
            ip_address=_local_ip(config.server.address),
            group_id=config.agent.group,
            labels=dict(config.agent.labels),
            metadata=_host_metadata(),
            agent_version=agent_version(),
            registration_key=load_or_create_registration_key(
                config.agent.state_dir / defaults.REGISTRATION_KEY_FILE
            ),
        )

    return build


class Agent:
    """One agent process's worth of state and threads."""

    def __init__(
        self,
        config: Config,
        *,
        transport: Transport | None = None,
        executor: CheckRunner | None = None,
        backoff: Callable[[], Backoff] = Backoff,
    ) -> None:
        """``transport`` and ``executor`` default to the real ones built from ``config``;
        ``backoff`` makes the retry pacing of each loop (tests speed it up)."""
        self.config = config
        self._backoff = backoff
        state_dir = config.agent.state_dir
        try:
            state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"{config.path}: agent.state_dir: cannot create {state_dir} ({exc.strerror})"
            ) from exc
        self.agent_id = load_or_create_agent_id(config.agent.id_file)
        self.version = agent_version()
        self.transport = transport or build_transport(config)
        self.policy = build_policy_trust(config)
        self.certificates: CertificateManager | None = None
        if config.server.tls.enroll:
            self.certificates = self._certificate_manager(config)
            self.certificates.on_change = self._use_certificate
            self._use_certificate()  # the pair on disk, vetted (or none)
        self.auth = Authenticator(
            self.transport,
            CredentialStore(state_dir / defaults.CREDENTIALS_FILE),
            registration_for(config, self.agent_id),
            enrollment=self.certificates,
            on_registered=self._registered,
        )
        self._executor = _SwappableExecutor(executor or build_executor(config))
        spool_path = state_dir / defaults.SPOOL_FILE
        try:
            self.spool = Spool(spool_path, config.spool.max_bytes)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(
                f"{config.path}: agent.state_dir: cannot open the result spool {spool_path} "
                f"({exc})"
            ) from exc
        self.scheduler = Scheduler(self._executor, self._on_result,
                                   config.checks.max_concurrent, splay_seed=self.agent_id)
        self.cache = AssignmentCache(state_dir / defaults.ASSIGNMENT_FILE)
        self.status = StatusBoard(agent_id=self.agent_id, server=config.server.address,
                                  version=self.version)
        self.status.show_containment(self._executor.current)
        self._status_path = state_dir / defaults.STATUS_FILE
        self._status_write_failing = False
        self.instance_id = _instance_id(state_dir)

        self._started = time.monotonic()
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._wake_sender = threading.Event()
        self._wake_heartbeat = threading.Event()
        self._wake_sync = threading.Event()
        self._lock = threading.Lock()
        self._unsent = 0  # results spooled since the sender last emptied the spool
        self._dropped_final = 0  # results the server refused for good
        self._lost = 0  # results that could not even be spooled
        self._assignment: Assignment | None = None
        self._policy_error: str | None = None
        self._policy_serial: int | None = None  # of the last accepted policy: replay floor
        self._refused_version: str | None = None
        self._last_refusal: tuple[str | None, str] | None = None
        self._seen_commands: OrderedDict[str, None] = OrderedDict()
        self._threads: list[threading.Thread] = []

    # -- life cycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Start checks (from the cached assignment) and the loops; returns at once.

        Raises ConfigError when the agent is not registered and has no bootstrap token:
        it could never reach the server, which deserves a stop at start-up.
        """
        if self.auth.credentials is None:
            self.config.read_bootstrap_token()
        self._report_policy_trust()
        cached = self.cache.load()
        if cached is not None:
            # Its serial is the floor from the start, even if the cache itself is refused:
            # a restart must not reopen the window for older policies.
            self._policy_serial = cached.serial
            try:
                self._admit(cached)
            except PolicyRejected as exc:
                self._refuse(cached, exc, source=f"the cached policy {self.cache.path}")
            else:
                log.info("running %d cached check(s) until the server answers",
                         len(cached.checks))
                self._apply(cached)
        self.scheduler.start()
        self.status.update(state="running")
        for name, target in (
            ("heartbeat", self._heartbeat_loop),
            ("assignment", self._sync_loop),
            ("sender", self._sender_loop),
            ("status", self._status_loop),
        ):
            thread = threading.Thread(target=target, name=f"aami-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def run(self) -> int:
        """Start, then serve reload and stop requests until stopped; returns the exit code."""
        log.info("agent starting", extra={"agent_id": self.agent_id, "version": self.version,
                                          "server": self.config.server.address})
        self.start()
        while not self._stop.is_set():
            # A timeout keeps the main thread responsive to signals on every platform.
            self._stop.wait(1.0)
            if self._reload.is_set():
                self._reload.clear()
                self.reload()
        self.shutdown()
        return 0

    def request_stop(self) -> None:
        """Ask the agent to stop (safe from a signal handler: it only sets events)."""
        self._stop.set()
        for event in (self._wake_sender, self._wake_heartbeat, self._wake_sync,
                      self.status.changed):
            event.set()

    def request_reload(self) -> None:
        """Ask the agent to re-read its configuration file (safe from a signal handler)."""
        self._reload.set()

    def shutdown(self, grace: float | None = None) -> None:
        """Stop scheduling, let running checks finish, hand results over or keep them."""
        self.request_stop()
        grace = self.config.agent.shutdown_grace if grace is None else grace
        log.info("stopping: waiting up to %gs for running checks", grace)
        self.status.update(state="stopping")
        self.scheduler.stop(grace)
        # The heartbeat and sender may be inside a request; the assignment loop is likely
        # inside a long-poll and is left behind (daemon thread) rather than waited for.
        for thread in self._threads:
            if thread.name != "aami-assignment":
                thread.join(timeout=self.config.heartbeat.timeout + 1.0)
        self._final_flush()
        self._executor.close()
        self.status.update(state="stopped", connected=False)
        self._write_status()
        self.spool.close()
        self.transport.close()
        log.info("agent stopped")

    def _final_flush(self) -> None:
        if any(t.is_alive() for t in self._threads if t.name == "aami-sender"):
            return  # still stuck in a send; whatever it did not ack stays spooled
        deadline = time.monotonic() + defaults.SHUTDOWN_FLUSH_TIMEOUT
        try:
            self._send_pending(deadline=deadline)
        except AgentError as exc:
            log.warning("could not hand the remaining results over before stopping: %s", exc)
        except Exception:
            log.exception("could not hand the remaining results over before stopping")
        depth = self.spool.depth()
        if depth:
            log.info("%d result(s) stay in the spool for the next start", depth)

    # -- configuration reload -----------------------------------------------------------

    def reload(self) -> None:
        """Re-read the configuration file and apply what can change without a restart."""
        old = self.config
        try:
            new = load_config(old.path)
        except ConfigError as exc:
            log.error("configuration not reloaded, keeping the running one: %s", exc)
            return
        fixed = {
            "server.address": (old.server.address, new.server.address),
            "server.tls": (old.server.tls, new.server.tls),
            "agent.id_file": (old.agent.id_file, new.agent.id_file),
            "agent.state_dir": (old.agent.state_dir, new.agent.state_dir),
            "heartbeat.timeout": (old.heartbeat.timeout, new.heartbeat.timeout),
            "spool": (old.spool, new.spool),
        }
        for key, (before, after) in fixed.items():
            if before != after:
                log.warning("%s changed: the change takes effect after a restart", key)
        if new.logging != old.logging:
            setup_logging(new.logging.level, new.logging.format)
        if new.checks != old.checks:
            try:
                executor = build_executor(new)
            except ConfigError as exc:
                log.error("checks settings not reloaded, keeping the running ones: %s", exc)
            else:
                self._executor.current = executor
                self.status.show_containment(executor)
                if new.checks.max_concurrent != old.checks.max_concurrent:
                    self.scheduler.set_max_concurrent(new.checks.max_concurrent)
        if (new.server.policy_keys, new.server.insecure_accept_unsigned_policies) != (
            old.server.policy_keys, old.server.insecure_accept_unsigned_policies
        ):
            # Rotation: trust the new key from the next policy on, no restart needed.
            try:
                self.policy = build_policy_trust(new)
            except ConfigError as exc:
                log.error("policy keys not reloaded, keeping the running ones: %s", exc)
            else:
                self._report_policy_trust()
                self._refused_version = None  # a refused policy may pass now: fetch again
                self._wake_sync.set()
        self.config = new
        # The bootstrap token, labels, hostname and group are sent at registration: they
        # apply from the next one (the wire contract has no call to change them between).
        self.auth.set_registration(registration_for(new, self.agent_id))
        if self._assignment is not None and (
            new.checks.default_timeout != old.checks.default_timeout
        ):
            self._apply(self._assignment)
        self._wake_heartbeat.set()
        log.info("configuration reloaded from %s", new.path)

    # -- loops --------------------------------------------------------------------------

    def _loop(self, name: str, step: Callable[[], float], wake: threading.Event) -> None:
        """Run ``step`` until stopped; sleep what it returns, or back off when it fails."""
        backoff = self._backoff()
        while not self._stop.is_set():
            try:
                delay = step()
                if backoff.attempts:
                    self._server_back(wake)
                backoff.reset()
            except Exception as exc:
                if self._stop.is_set():
                    return  # failures caused by shutting down (closed transport) are moot
                delay = self._failed(name, exc, backoff)
                if isinstance(exc, RetryLater):
                    self._stop.wait(delay)  # the server said when: no wake-up may hurry it
                    continue
            if delay > 0:
                wake.wait(delay)
            wake.clear()

    def _server_back(self, own: threading.Event) -> None:
        """The server answers again: cut the other loops' backoff short.

        Each loop backs off on its own, up to BACKOFF_CAP, so after a long outage the
        sender could sleep for most of a minute with the server long back. A Retry-After
        is still honoured: that wait does not listen to wake-ups.
        """
        for event in (self._wake_sender, self._wake_heartbeat, self._wake_sync):
            if event is not own:
                event.set()

    def _failed(self, name: str, exc: Exception, backoff: Backoff) -> float:
        """Report a failed step; returns how long to back off before the next one."""
        retry_after = exc.retry_after if isinstance(exc, RetryLater) else None
        delay = backoff.next_delay(retry_after)
        if isinstance(exc, AgentError):
            level = logging.ERROR if isinstance(exc, ConfigError) else logging.WARNING
            log.log(level, "%s: %s; retrying in %.1fs", name, exc, delay)
            self.status.failed(exc)
        else:  # a bug: it must not stop the loop, only be reported
            log.exception("%s loop: unexpected error; retrying in %.1fs", name, delay)
            self.status.failed(f"{name}: {exc!r}")
        return delay

    def _heartbeat_loop(self) -> None:
        self._loop("heartbeat", self._heartbeat_once, self._wake_heartbeat)

    def _sync_loop(self) -> None:
        self._loop("assignment", self._sync_once, self._wake_sync)

    def _sender_loop(self) -> None:
        def step() -> float:
            self._send_pending()
            return self.config.results.flush_interval

        self._loop("sender", step, self._wake_sender)

    def _status_loop(self) -> None:
        changed = self.status.changed
        while not self._stop.is_set():
            changed.wait(defaults.STATUS_INTERVAL)
            changed.clear()
            if self._stop.is_set():
                return  # shutdown() writes the final status itself
            self._write_status()
            # Coalesce bursts of changes (many results at once) into one write.
            self._stop.wait(0.5)

    # -- steps --------------------------------------------------------------------------

    def _heartbeat_once(self) -> float:
        beat = {
            "version": self.version,
            "uptime_s": round(time.monotonic() - self._started, 1),
            "spool_depth": self.spool.depth(),
            "dropped_results": self.dropped_results(),
            "running_checks": self.scheduler.running_count(),
            "hostname": self.config.agent.hostname,
            "policy_error": self._policy_error,
            "instance_id": self.instance_id,
        }
        reply = self.auth.call(
            lambda c: self.transport.heartbeat(c.agent_id, c.access_token, beat))
        self.status.connected(last_heartbeat_at=iso_utc(time.time()))
        applied = self._assignment.config_version if self._assignment else None
        # A version we refused is fetched again after a pause, not at every heartbeat.
        if reply.config_version and reply.config_version not in (applied,
                                                                  self._refused_version):
            self._wake_sync.set()  # in case the long-poll is backing off
        for command in reply.commands:
            self._execute(command)
        self._renew_certificate_if_due()
        interval = (reply.heartbeat_interval or self.auth.heartbeat_interval
                    or self.config.heartbeat.interval)
        return max(interval, defaults.MIN_HEARTBEAT_INTERVAL)

    def _execute(self, command: Command) -> None:
        if command.id:
            # Both the heartbeat and the assignment loop deliver commands.
            with self._lock:
                if command.id in self._seen_commands:
                    return
                self._seen_commands[command.id] = None
                if len(self._seen_commands) > _SEEN_COMMANDS:
                    self._seen_commands.popitem(last=False)
        if command.type == "run_check" and command.check_id:
            if self.scheduler.run_now(command.check_id):
                log.info("running check %s now, as the server asked", command.check_id,
                         extra={"command_id": command.id})
            else:
                log.warning("the server asked to run check %s, which is not assigned here",
                            command.check_id, extra={"command_id": command.id})
        else:
            log.warning("ignoring unknown command %r from the server", command.type,
                        extra={"command_id": command.id})

    def _sync_once(self) -> float:
        wait = defaults.LONG_POLL_WAIT
        etag = self._assignment.etag if self._assignment else None
        started = time.monotonic()
        result = self.auth.call(
            lambda c: self.transport.fetch_checks(c.agent_id, c.access_token, etag, wait))
        self.status.connected()
        if self._stop.is_set():
            return 0
        if result is NOT_MODIFIED:
            if time.monotonic() - started < wait - 1:
                # The server ended the wait early: a command is queued for us, and it
                # travels with the heartbeat reply.
                self._wake_heartbeat.set()
                return defaults.LONG_POLL_EARLY_PAUSE
            return 0
        assert isinstance(result, Assignment)
        current = self._assignment
        pause = 0.0
        # A reply that only hands commands over repeats the assignment we already run.
        if current is None or (result.etag, result.config_version) != (
            current.etag, current.config_version
        ):
            try:
                self._admit(result)
            except PolicyRejected as exc:
                self._refuse(result, exc, source="the server")
                # The server would send the same reply at once: ask again later.
                pause = defaults.POLICY_REFUSED_PAUSE
            else:
                self._apply(result)
                try:
                    self.cache.save(result)  # with its serial: the replay floor
                except OSError as exc:
                    log.warning("cannot cache the assignment in %s: %s", self.cache.path, exc)
        # After the assignment: a command may name a check that this reply just assigned.
        # Commands are not part of the signed policy (heartbeats carry them unsigned too)
        # and can only run checks of the policy in force, so a refused reply's still count.
        for command in result.commands:
            self._execute(command)
        return pause

    def _target_id(self) -> str:
        """The id the server knows us by (normally the one in the id file)."""
        creds = self.auth.credentials
        return creds.agent_id if creds is not None else self.agent_id

    def _admit(self, assignment: Assignment) -> None:
        """Raise PolicyRejected unless ``assignment`` may run here."""
        self.policy.verify(assignment, target_id=self._target_id(),
                           last_serial=self._policy_serial)

    def _report_policy_trust(self) -> None:
        """Say how policies are checked, loudly when they are not."""
        trust = self.policy.describe()
        self.status.update(policy_trust=trust)
        if not self.policy.verifies:
            log.warning("INSECURE: check policies from the server are %s: whoever can "
                        "alter this agent's traffic to the server can run commands on this "
                        "host", trust)
        else:
            log.info("check policies: %s", trust)

    def _registered(self, grant: TokenGrant) -> None:
        """A registration reply: pin the policy keys it announces, when that is safe."""
        if self.policy.learn(grant, self.config.server.address, time.time()):
            self._refused_version = None  # a refused policy may pass now: fetch again
            self._wake_sync.set()
        self.status.update(policy_trust=self.policy.describe())

    def _refuse(self, assignment: Assignment, exc: PolicyRejected, *, source: str) -> None:
        """Keep running the last good policy and say why the new one is not run."""
        refusal = (assignment.config_version, str(exc))
        running = self._assignment.config_version if self._assignment else None
        # The same reply comes back at every retry: one error per new refusal is enough.
        log.log(logging.ERROR if refusal != self._last_refusal else logging.DEBUG,
                "refusing the check policy from %s (config version %s): %s; still running "
                "%s", source, assignment.config_version, exc,
                f"config version {running}" if running else "no checks")
        self._last_refusal = refusal
        self._refused_version = assignment.config_version
        self._policy_error = f"policy refused: {exc}"[:1000]
        self.status.update(policy_error=self._policy_error)

    def _apply(self, assignment: Assignment) -> None:
        specs, problems = parse_checks(assignment.checks, self.config.checks.default_timeout)
        for problem in problems:
            log.error("skipping an invalid check from the server: %s", problem)
        self._policy_error = "; ".join(problems)[:1000] or None
        self.status.update(policy_error=self._policy_error)
        self._refused_version = self._last_refusal = None
        if assignment.serial is not None:
            self._policy_serial = max(assignment.serial, self._policy_serial or 0)
        self.scheduler.update(specs)
        self._assignment = assignment
        self.status.update(config_version=assignment.config_version)
        self.status.forget_checks_except({spec.id for spec in specs})
        log.info("applied assignment %s: %d check(s)", assignment.config_version, len(specs))

    def _on_result(self, result: CheckResult) -> None:
        """Called by the scheduler's workers: into the spool at once, durably."""
        self.status.record_result(result)
        try:
            self.spool.append([result.to_dict()])
        except Exception:
            with self._lock:
                self._lost += 1
            log.exception("cannot spool the result of check %s; it is lost", result.check_id)
            return
        with self._lock:
            self._unsent += 1
            # Wake the sender once per full batch, not for every result after it: while the
            # server is away, that would turn each new result into a retry.
            full = self._unsent % self.config.results.batch_size == 0
        if full:
            self._wake_sender.set()

    def _send_pending(self, deadline: float | None = None) -> None:
        """Send spooled results, oldest first, in batches, until the spool is empty.

        A batch is acked only once the server took it (rejected entries included: the
        server's refusal of an entry is final); any other failure leaves it spooled.
        """
        batch_size = self.config.results.batch_size
        while True:
            timeout = None
            if deadline is not None:
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    return
            entries = self.spool.peek(batch_size)
            if entries:
                self._send_batch(entries, timeout)
            if len(entries) < batch_size:
                with self._lock:
                    self._unsent = 0
                return

    def _send_batch(self, entries: list[tuple[int, dict[str, Any]]],
                    timeout: float | None) -> None:
        seqs = [seq for seq, _ in entries]
        results = [result for _, result in entries]
        try:
            reply = self.auth.call(lambda c: self.transport.push_results(
                c.agent_id, c.access_token, results, timeout))
        except RequestRejected as exc:
            log.error("the server refused a batch of %d result(s) for good; dropping it: %s",
                      len(seqs), exc)
            with self._lock:
                self._dropped_final += len(seqs)
        else:
            for rejection in reply.rejected:
                log.warning("the server rejected result %s: %s", rejection.result_id,
                            rejection.reason)
            self.status.connected()
        self.spool.ack(seqs)

    # -- client certificate ---------------------------------------------------------------

    def _certificate_manager(self, config: Config) -> CertificateManager:
        try:
            return CertificateManager.from_config(config)
        except ImportError as exc:
            raise ConfigError(f"{config.path}: server.tls.enroll: enrollment needs the "
                              f"Python package 'cryptography' ({exc})") from exc

    def _use_certificate(self) -> None:
        """Point the transport at the current certificate files (after a renewal too)."""
        assert self.certificates is not None
        self.transport.use_tls_files(*self.certificates.files())

    def _renew_certificate_if_due(self) -> None:
        """Enroll or renew when due; a failure is logged and retried later, and never
        fails the heartbeat (the current certificate, if any, stays in use)."""
        certificates = self.certificates
        if certificates is None or not certificates.due():
            return
        try:
            csr = certificates.make_csr(self._target_id())
            issued = self.auth.call(lambda c: self.transport.renew_certificate(
                c.agent_id, c.access_token, csr))
            certificates.store(issued)
        except AgentError as exc:
            certificates.failed(exc)

    # -- status -------------------------------------------------------------------------

    def dropped_results(self) -> int:
        """Results lost for good: spool overflow, refused batches, spool write errors."""
        with self._lock:
            own = self._dropped_final + self._lost
        return self.spool.dropped() + own

    def _write_status(self) -> None:
        try:
            next_due = {info["check_id"]: info["next_due"] for info in self.scheduler.snapshot()}
            data = self.status.snapshot(
                next_due=next_due,
                spool_depth=self.spool.depth(),
                dropped_results=self.dropped_results(),
            )
            write_json(self._status_path, data, durable=False)
        except OSError as exc:
            # Logged when it starts failing and when it works again, not every round: a
            # full disk would otherwise fill the journal with the same complaint.
            if not self._status_write_failing:
                log.error("cannot write %s (%s); aami-agent status shows stale data until "
                          "it can", self._status_path, exc.strerror or exc)
            self._status_write_failing = True
        except Exception:
            log.exception("cannot write %s", self._status_path)
        else:
            if self._status_write_failing:
                log.info("writing %s again", self._status_path)
            self._status_write_failing = False


# -- check --once --------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckOnceReport:
    """What ``aami-agent check --once`` ran, and where the assignment came from."""

    source: str
    results: list[CheckResult]
    problems: list[str]


def check_once(
    config: Config,
    *,
    transport: Transport | None = None,
    executor: CheckRunner | None = None,
) -> CheckOnceReport:
    """Run every assigned check once, in parallel, and return the results.

    The assignment comes from the server when it answers, else from the cached copy;
    either must pass the daemon's policy verification (agent/policy_trust.py).
    While an agent daemon is running this never refreshes or registers: refresh tokens
    rotate, and spending the daemon's token would force it to re-register.
    Raises AgentError when there is no assignment to be had at all.
    """
    state_dir = config.agent.state_dir
    agent_id = load_or_create_agent_id(config.agent.id_file)
    store = CredentialStore(state_dir / defaults.CREDENTIALS_FILE)
    cache = AssignmentCache(state_dir / defaults.ASSIGNMENT_FILE)
    trust = build_policy_trust(config)
    cached = cache.load()
    creds = store.load()
    target_id = creds.agent_id if creds is not None else agent_id
    floor = cached.serial if cached is not None else None

    def verify(assignment: Assignment) -> None:
        trust.verify(assignment, target_id=target_id, last_serial=floor)

    transport = transport or build_transport(config)
    try:
        assignment, source = _fetch_for_once(config, transport, store, agent_id, trust)
    finally:
        transport.close()
    if assignment is not None:
        try:
            verify(assignment)
        except PolicyRejected as exc:
            assignment, source = None, f"the server's policy was refused: {exc}"
    if assignment is None:
        if cached is None:
            raise AgentError(f"no assignment: {source}, and there is no cached assignment "
                             f"in {cache.path}")
        try:
            verify(cached)
        except PolicyRejected as exc:
            raise AgentError(f"no assignment: {source}, and the cached policy "
                             f"{cache.path} is refused too: {exc}") from None
        assignment = cached
        source = f"cached assignment {cache.path} ({source})"
    specs, problems = parse_checks(assignment.checks, config.checks.default_timeout)
    runner = executor or build_executor(config)
    with ThreadPoolExecutor(max_workers=config.checks.max_concurrent) as pool:
        results = list(pool.map(runner.run, specs))
    return CheckOnceReport(source=source, results=results, problems=problems)


def _fetch_for_once(
    config: Config, transport: Transport, store: CredentialStore, agent_id: str,
    trust: PolicyTrust,
) -> tuple[Assignment | None, str]:
    status = _daemon_status(config)
    daemon_running = status is not None and pid_running(status.get("pid"))
    try:
        if daemon_running:
            creds = store.load()
            if creds is None or creds.needs_refresh():
                return None, "the running agent holds no current access token to borrow"
            result = transport.fetch_checks(creds.agent_id, creds.access_token, None, 0)
        else:
            auth = Authenticator(
                transport, store, registration_for(config, agent_id),
                on_registered=lambda grant: trust.learn(grant, config.server.address,
                                                        time.time()))
            result = auth.call(
                lambda c: transport.fetch_checks(c.agent_id, c.access_token, None, 0))
    except AgentError as exc:
        return None, f"no assignment from the server: {exc}"
    if not isinstance(result, Assignment):
        return None, "the server sent no assignment"
    return result, f"server {config.server.address} (config version {result.config_version})"


def _daemon_status(config: Config) -> dict[str, Any] | None:
    try:
        return read_status(config.agent.state_dir / defaults.STATUS_FILE)
    except (OSError, ValueError):
        return None


# -- host facts ----------------------------------------------------------------------------


def _instance_id(state_dir: Path) -> str | None:
    """This install's instance id (clone detection); None, and a warning, if the state
    directory cannot keep it: heartbeats go on without it."""
    try:
        return load_or_create_instance_id(state_dir / defaults.INSTANCE_ID_FILE)
    except OSError as exc:
        log.warning("cannot keep the instance id in %s (%s): the server cannot tell clones "
                    "of this agent apart", state_dir, exc)
        return None


def _local_ip(server_address: str) -> str | None:
    """The address this host uses to reach the server (no packet is sent: UDP connect)."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(server_address)
    if not parts.hostname:
        return None
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect((parts.hostname, parts.port or 80))
            return str(sock.getsockname()[0])
    except OSError:
        return None


def _host_metadata() -> dict[str, str]:
    import platform

    return {
        "os": platform.system().lower(),
        "kernel": platform.release(),
        "arch": platform.machine(),
        "python": platform.python_version(),
    }
