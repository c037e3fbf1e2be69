"""Short-lived access JWTs for agents, verified strictly (algorithm pinned, iss, aud, exp).

Each carries the agent's credential generation (``server.security.revocation``): the
caller checks it against Redis, so a revoked agent is cut off before its token expires.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import jwt

from server.errors import Unauthorized
from server.security.revocation import CLAIM as GENERATION_CLAIM

ALGORITHM = "HS256"
REQUIRED_CLAIMS = ["sub", "iss", "aud", "exp", "iat", "jti"]
CLOCK_LEEWAY_S = 10


@dataclass(frozen=True)
class JwtConfig:
    key: str
    issuer: str
    audience: str
    ttl_s: int


@dataclass(frozen=True)
class AccessClaims:
    agent_id: str
    generation: int


def issue_access_token(config: JwtConfig, agent_id: str, generation: int = 0) -> str:
    now = int(time.time())
    claims = {
        "sub": agent_id,
        "iss": config.issuer,
        "aud": config.audience,
        "iat": now,
        "exp": now + config.ttl_s,
        "jti": str(uuid.uuid4()),
        "typ": "access",
        GENERATION_CLAIM: generation,
    }
    return jwt.encode(claims, config.key, algorithm=ALGORITHM)


def verify_access_token(config: JwtConfig, token: str) -> AccessClaims:
    """The agent the token was issued to, and under which credential generation;
    ``Unauthorized`` for anything else."""
    try:
        claims = jwt.decode(
            token,
            config.key,
            algorithms=[ALGORITHM],
            audience=config.audience,
            issuer=config.issuer,
            leeway=CLOCK_LEEWAY_S,
            options={"require": REQUIRED_CLAIMS},
        )
    except jwt.ExpiredSignatureError:
        raise Unauthorized(
            "access token expired: refresh it with POST /api/v1/agents/{id}/token",
            code="token_expired",
        ) from None
    except jwt.InvalidTokenError as exc:
        raise Unauthorized(f"invalid access token: {exc}", code="invalid_token") from None
    if claims.get("typ") != "access":
        raise Unauthorized("invalid access token: not an access token", code="invalid_token")
    generation = claims.get(GENERATION_CLAIM, 0)  # tokens issued before the claim existed
    if not isinstance(generation, int) or isinstance(generation, bool):
        raise Unauthorized("invalid access token: bad generation claim", code="invalid_token")
    return AccessClaims(str(claims["sub"]), generation)
