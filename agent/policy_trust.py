"""Which keys an agent trusts to sign its check policies, and where they came from.

In order: the keys of ``server.policy_keys``; else, only with the insecure option, none
(every policy runs unverified); else the keys pinned at registration over verified TLS
(agent/policy_pin.py). With none of these every policy is refused, with a message that
says what to configure (docs/agent-config.md, "Signed policies").
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from agent.policy import PolicyRejected, PolicyVerifier, decode_public_key, key_id
from agent.policy_pin import PinError, PolicyKeyPin
from agent.transport.base import Assignment, TokenGrant

log = logging.getLogger(__name__)


INSECURE_OPTION = "server.insecure_accept_unsigned_policies"
_SHOW_KEY = "`aami-server policy-key show` on the server prints it"


class PolicyTrust:
    """Decides whether a policy may run (see the module docstring). Thread-safe:
    registration (which pins) and the assignment loop (which verifies) run in different
    threads."""

    def __init__(self, configured: Sequence[str], *, insecure: bool, pin: PolicyKeyPin,
                 tls: bool) -> None:
        """``tls``: the server address uses https (only the messages depend on it).

        Raises ValueError or ImportError when ``configured`` keys cannot be used.
        """
        self._configured = PolicyVerifier(configured) if configured else None
        self.insecure = insecure and self._configured is None
        self.pin = pin
        self._tls = tls
        self._lock = threading.Lock()
        self._pinned: PolicyVerifier | None = None
        self._pin_problem: str | None = None
        self._announced_none = False  # registration said: the server signs nothing
        self._announced_other: tuple[str, ...] = ()  # keys announced that differ from the pin
        if self._configured is None and not self.insecure:
            self._use_pin()

    def _use_pin(self) -> None:
        try:
            pin = self.pin.load()
            self._pinned = None if pin is None else PolicyVerifier(
                pin.keys, source=f"pinned in {self.pin.path}")
            self._pin_problem = None
        except (PinError, ValueError, ImportError) as exc:
            self._pinned, self._pin_problem = None, str(exc)

    @property
    def verifies(self) -> bool:
        """Whether policies are verified at all (False only with the insecure option)."""
        return not self.insecure

    def describe(self) -> str:
        """One line for the log and ``aami-agent status``."""
        with self._lock:
            if self._configured is not None:
                return (f"verified with server.policy_keys (key "
                        f"{', '.join(self._configured.key_ids)})")
            if self.insecure:
                return (f"NOT VERIFIED: unsigned and unverified policies run ({INSECURE_OPTION} "
                        "is true)")
            if self._pinned is not None:
                return (f"verified with the key pinned at registration (key "
                        f"{', '.join(self._pinned.key_ids)}, in {self.pin.path})")
            return f"every policy refused: {self._no_key_reason()}"

    def verify(self, assignment: Assignment, *, target_id: str,
               last_serial: int | None) -> None:
        """Return if ``assignment`` may run on agent ``target_id``; else PolicyRejected."""
        with self._lock:
            if self.insecure:
                return
            verifier = self._configured or self._pinned
            if verifier is None:
                raise PolicyRejected(self._no_key_reason())
            announced_other = self._announced_other if verifier is self._pinned else ()
        try:
            verifier.verify(assignment, target_id=target_id, last_serial=last_serial)
        except PolicyRejected as exc:
            signature = assignment.signature
            if announced_other and signature is not None and (
                signature.key_id not in verifier.key_ids
            ):
                raise PolicyRejected(f"{exc}. {self._changed_key_advice()}") from None
            raise

    def learn(self, grant: TokenGrant, server: str, now: float) -> bool:
        """Pin the keys a registration reply announced, when that is safe; returns
        whether a refused policy deserves another look (a new pin, or a changed key to
        explain in the refusal)."""
        with self._lock:
            if self._configured is not None or self.insecure:
                return False
            offered = tuple(dict.fromkeys(grant.policy_keys))
            if not offered:
                self._announced_none = True
                if self._pinned is None:
                    log.error("the server announced no policy key at registration: it signs "
                              "no check policies, and this agent runs none; %s",
                              self._what_to_do())
                return False
            self._announced_none = False
            if not grant.verified_tls:
                if self._pinned is None:
                    log.error("the server announced policy key(s) over plain HTTP: not "
                              "trusted, a man in the middle could have sent its own; this "
                              "agent runs no check policy; %s", self._what_to_do())
                return False
            try:
                for text in offered:
                    decode_public_key(text)
            except ValueError as exc:
                log.error("not pinning the policy keys the server announced: %s", exc)
                return False
            return self._pin(offered, server, now)

    def _pin(self, offered: tuple[str, ...], server: str, now: float) -> bool:
        try:
            pin = self.pin.load()
        except PinError as exc:
            log.error("not pinning the server's policy key: %s (delete the file, or set "
                      "server.policy_keys)", exc)
            return False
        if pin is not None:
            before = self._announced_other
            self._announced_other = () if set(offered) == set(pin.keys) else offered
            if self._announced_other and self._announced_other != before:
                log.error("the server announced policy key(s) %s at registration, not the "
                          "pinned %s; the pin stays: %s",
                          ", ".join(_ids(offered)), ", ".join(_ids(pin.keys)),
                          self._changed_key_advice())
            return self._announced_other != before  # a refusal to explain anew
        try:
            self.pin.create(offered, server, now)
        except OSError as exc:
            log.error("cannot pin the server's policy key in %s: %s", self.pin.path, exc)
            return False
        self._use_pin()
        log.info("pinned the server's policy key(s) %s (learnt over verified TLS) in %s",
                 ", ".join(_ids(offered)), self.pin.path)
        return self._pinned is not None

    def _what_to_do(self) -> str:
        return (f"set server.policy_keys to the server's key ({_SHOW_KEY}), or "
                f"{INSECURE_OPTION}: true to run unverified policies (unsafe)")

    def _no_key_reason(self) -> str:
        if self._pin_problem is not None:
            why = f"the pinned policy keys cannot be used ({self._pin_problem})"
        elif not self._tls:
            why = ("this agent has no key to verify check policies with, and it learns none "
                   "over plain HTTP, where anyone on the path could send their own (over "
                   "https it pins the server's key at registration)")
        elif self._announced_none:
            why = ("the server announced no policy key at registration (it signs no "
                   "policies: give it AAMI_POLICY_KEY_FILE)")
        else:
            why = ("no policy key is pinned (the agent pins the server's key when it "
                   "registers over verified TLS, and it has not registered since it was "
                   "installed or upgraded)")
        return f"{why}; {self._what_to_do()}"

    def _changed_key_advice(self) -> str:
        return (f"the server's policy key differs from the one pinned in {self.pin.path}; if "
                f"the key was changed on purpose, an operator sets server.policy_keys to the "
                f"new key ({_SHOW_KEY}) and reloads the agent")


def _ids(keys: Sequence[str]) -> list[str]:
    ids = []
    for text in keys:
        try:
            ids.append(key_id(decode_public_key(text)))
        except ValueError:
            ids.append(repr(text[:20]))
    return ids
