"""Short-lived access JWTs for agents, verified strictly (algorithm pinned, iss, aud, exp)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import jwt

from server.errors import Unauthorized

ALGORITHM = "HS256"
REQUIRED_CLAIMS = ["sub", "iss", "aud", "exp", "iat", "jti"]
CLOCK_LEEWAY_S = 10


@dataclass(frozen=True)
class JwtConfig:
    key: str
    issuer: str
    audience: str
    ttl_s: int


def issue_access_token(config: JwtConfig, agent_id: str) -> str:
    now = int(time.time())
    claims = {
        "sub": agent_id,
        "iss": config.issuer,
        "aud": config.audience,
        "iat": now,
        "exp": now + config.ttl_s,
        "jti": str(uuid.uuid4()),
        "typ": "access",
    }
    return jwt.encode(claims, config.key, algorithm=ALGORITHM)


def verify_access_token(config: JwtConfig, token: str) -> str:
    """The agent id the token was issued to; ``Unauthorized`` for anything else."""
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
    return str(claims["sub"])
