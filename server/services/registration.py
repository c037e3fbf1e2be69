"""Agent registration: the four matching rows of the design, plus identity-theft guard.

| scenario                         | agent_id  | result                          |
| new registration, id provided    | provided  | create a target with that id    |
| new registration, no id          | empty     | server generates the id         |
| re-registration / restart        | provided  | connect to the existing target  |
| pre-registered by an operator    | provided  | connect the agent to the target |

An id that already holds live credentials is only handed out again with proof: the
agent's current refresh token, a bootstrap token an operator bound to that id, or a
verified client certificate naming that id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from server.errors import Conflict, InvalidFields
from server.models import Group, Target, new_uuid, utcnow
from server.security.jwt_tokens import JwtConfig
from server.security.secrets import hash_secret, same_secret
from server.services import credentials
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
    group_id = request.get("group_id") or token.group_id
    if group_id is not None and session.get(Group, group_id) is None:
        raise InvalidFields(
            f"group {group_id!r} does not exist", fields={"group_id": ["unknown group"]}
        )
    labels = {**request.get("labels", {}), **token.labels}

    target = session.get(Target, agent_id) if agent_id else None
    created = target is None
    if target is None:
        target = Target(id=agent_id or new_uuid(), hostname=request["hostname"])
        session.add(target)
    elif credentials.has_live_credentials(session, target.id):
        proof = request.get("refresh_token")
        bound = token.bound_agent_id == target.id
        certified = certified_agent_id == target.id
        keyed = _holds_registration_key(target, request.get("registration_key"))
        if not (bound or certified or keyed) and not (
            proof and credentials.is_live_refresh_token(session, target.id, proof)
        ):
            raise Conflict(
                f"agent id {target.id} is already registered and holds credentials. "
                "If this is that agent, re-register with its current refresh token or "
                "registration key; "
                "otherwise ask an operator for a bootstrap token bound to this id "
                f"(aami-server token create --agent-id {target.id}), connect with the "
                "agent's client certificate, or give the host a new id.",
                code="agent_id_in_use",
            )
    target.hostname = request["hostname"]
    target.ip_address = request.get("ip_address") or target.ip_address
    # An existing target's group and labels are the operator's (pre-registration, PATCH):
    # the agent and its bootstrap token only fill in what the target does not have yet.
    target.group_id = target.group_id or group_id
    target.labels = {**labels, **(target.labels or {})}
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
