"""Agent registration: the four matching rows of the design, the identity guard and the
bootstrap token's scope (the trust model is written down in docs/security.md).

| scenario                         | agent_id  | result                          |
| new registration, id provided    | provided  | create a target with that id    |
| new registration, no id          | empty     | server generates the id         |
| re-registration / restart        | provided  | connect to the existing target  |
| pre-registered by an operator    | provided  | connect the agent to the target |

Once an agent has claimed an id (registered under it), the id is only handed out again
with proof, whatever the state of its credentials: the agent's registration key, its
current refresh token, a verified client certificate naming that id, or a bootstrap token
an operator bound to that id. Expired or revoked credentials prove nothing either way:
without this, anyone holding a bootstrap token took over a host whose refresh token had
lapsed. A target an operator pre-registered and no agent has claimed yet is free to claim.
An operator gives a rebuilt host its id back with a bound token or :func:`reset_claim`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from server.errors import Conflict, Forbidden, NotFound
from server.models import Target, new_uuid, utcnow
from server.security.jwt_tokens import JwtConfig
from server.security.secrets import hash_secret, same_secret
from server.services import credentials
from server.services.groups import require_group
from server.services.tokens import TokenUse


@dataclass(frozen=True)
class Registration:
    agent_id: str
    created: bool
    tokens: credentials.TokenPair


def _holds_registration_key(target: Target, key: str | None) -> bool:
    return bool(
        key
        and target.registration_key_hash
        and same_secret(hash_secret(key), target.registration_key_hash)
    )


def is_claimed(target: Target) -> bool:
    """Whether an agent registered under this id (pre-registered targets are not, until
    their agent comes; :func:`reset_claim` makes a target unclaimed again)."""
    return target.registered_at is not None or target.registration_key_hash is not None


def _proves_identity(
    session: Session,
    target: Target,
    request: dict[str, Any],
    token: TokenUse,
    certified_agent_id: str | None,
) -> bool:
    if token.bound_agent_id == target.id or certified_agent_id == target.id:
        return True
    if _holds_registration_key(target, request.get("registration_key")):
        return True
    proof = request.get("refresh_token")
    return bool(proof and credentials.is_live_refresh_token(session, target.id, proof))


def _require_group_in_scope(asked: str | None, token: TokenUse) -> None:
    """The token's group is authoritative: an agent cannot register itself elsewhere."""
    if token.group_id is not None and asked is not None and asked != token.group_id:
        raise Forbidden(
            f"this bootstrap token registers agents into group {token.group_id!r}, not "
            f"{asked!r}: set agent.group to {token.group_id!r} or leave it empty, or ask an "
            "operator for a token of that group",
            code="group_out_of_scope",
        )


def _place_in_group(target: Target, asked: str | None, token: TokenUse) -> None:
    """An operator's group stays; else the token's; else the group the agent asked for,
    marked as the agent's own (it then delivers no check that carries secrets)."""
    if target.group_id is not None and not target.group_from_agent:
        return
    if token.group_id is not None:
        target.group_id, target.group_from_agent = token.group_id, False
    else:
        target.group_id, target.group_from_agent = asked, asked is not None


def register_agent(
    session: Session,
    jwt_config: JwtConfig,
    refresh_ttl: int,
    request: dict[str, Any],
    token: TokenUse,
    *,
    certified_agent_id: str | None = None,
) -> Registration:
    """Register per the table above, with a use already taken of the bootstrap token
    (``tokens.take_bootstrap_token_use``). ``certified_agent_id``: the agent a verified
    client certificate of this request names, which proves the right to that id."""
    agent_id = str(request["agent_id"]) if request.get("agent_id") else None
    if token.bound_agent_id and agent_id not in (None, token.bound_agent_id):
        raise Conflict(
            f"this bootstrap token is bound to agent {token.bound_agent_id}, not {agent_id}",
            code="token_bound_elsewhere",
        )
    agent_id = agent_id or token.bound_agent_id
    asked_group = request.get("group_id") or None  # "" is no group, as it always was
    _require_group_in_scope(asked_group, token)
    require_group(session, asked_group or token.group_id)

    target = session.get(Target, agent_id) if agent_id else None
    created = target is None
    if target is None:
        target = Target(id=agent_id or new_uuid(), hostname=request["hostname"])
        session.add(target)
    elif is_claimed(target) and not _proves_identity(
        session, target, request, token, certified_agent_id
    ):
        raise Conflict(
            f"agent id {target.id} is already claimed by an agent. If this is that agent, "
            "re-register with its registration key or its current refresh token; "
            "after a rebuild, ask an operator for a bootstrap token bound to this id "
            f"(aami-server token create --agent-id {target.id}) or to reset the claim "
            f"(aami-server agent reset {target.id}), connect with the agent's client "
            "certificate, or give the host a new id.",
            code="agent_id_in_use",
        )
    target.hostname = request["hostname"]
    target.ip_address = request.get("ip_address") or target.ip_address
    _place_in_group(target, asked_group, token)
    # Trusted labels: the operator's (pre-registration, PATCH) win over the token's,
    # which only fill in. The agent's own labels are kept apart and replaced each time.
    target.labels = {**token.labels, **(target.labels or {})}
    target.agent_labels = dict(request.get("labels") or {})
    target.attributes = dict(request.get("metadata") or {})
    target.agent_version = request.get("agent_version") or target.agent_version
    target.registered_at = utcnow()
    if request.get("registration_key"):
        # Whoever registered successfully owns the id: from now on their key is proof,
        # which lets an agent whose registration reply was lost simply try again.
        target.registration_key_hash = hash_secret(request["registration_key"])
    session.flush()
    tokens = credentials.start_family(session, jwt_config, target.id, refresh_ttl)
    return Registration(target.id, created, tokens)


def reset_claim(session: Session, target_id: str) -> Target:
    """Forget which agent claimed ``target_id`` and revoke its credentials: the next agent
    to register under the id (any bootstrap token) claims it. For a host that was rebuilt
    and lost its registration key; the caller audits it."""
    target = session.get(Target, target_id)
    if target is None:
        raise NotFound(f"no target with id {target_id}", code="target_not_found")
    target.registered_at = None
    target.registration_key_hash = None
    credentials.revoke_all(session, target_id)
    session.flush()
    return target
