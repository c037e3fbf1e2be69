"""agent/credentials.py: tokens on disk (0600, atomic) and expiry read from the JWT."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from agent.credentials import Credentials, CredentialStore, jwt_claims
from tests.agent.jwt_helpers import make_jwt

NOW = 1_800_000_000.0


def test_jwt_claims_are_read_without_verifying() -> None:
    token = make_jwt(sub="agent-1", exp=1_800_000_900, iat=1_800_000_000)
    assert jwt_claims(token) == {"sub": "agent-1", "exp": 1_800_000_900, "iat": 1_800_000_000}


@pytest.mark.parametrize("token", ["opaque", "a.b", "a.!!!.c", "a.bm90IGpzb24.c", "a.WzFd.c"])
def test_jwt_claims_of_something_else_are_empty(token: str) -> None:
    assert jwt_claims(token) == {}


def test_refresh_is_due_a_minute_before_exp() -> None:
    token = make_jwt(exp=NOW + 900, iat=NOW)
    creds = Credentials.issued("a", token, "r", now=NOW)

    assert creds.expires_at == NOW + 900
    assert creds.refresh_at == NOW + 840
    assert not creds.needs_refresh(NOW + 839)
    assert creds.needs_refresh(NOW + 840)


def test_lifetime_is_applied_to_the_local_clock_when_clocks_disagree() -> None:
    # The server's clock is an hour ahead of ours: exp is far in "our" future, but the
    # token still lives 900 s from now.
    token = make_jwt(exp=NOW + 3600 + 900, iat=NOW + 3600)
    creds = Credentials.issued("a", token, "r", now=NOW)
    assert creds.expires_at == NOW + 900


def test_without_iat_the_exp_claim_is_taken_as_is() -> None:
    creds = Credentials.issued("a", make_jwt(exp=NOW + 300), "r", now=NOW)
    assert creds.expires_at == NOW + 300
    assert creds.refresh_at == NOW + 240


def test_short_lived_tokens_refresh_half_way() -> None:
    creds = Credentials.issued("a", make_jwt(exp=NOW + 60, iat=NOW), "r", now=NOW)
    assert creds.refresh_at == NOW + 30


def test_opaque_token_falls_back_to_expires_in() -> None:
    creds = Credentials.issued("a", "opaque", "r", expires_in=600, now=NOW)
    assert creds.expires_at == NOW + 600
    assert creds.refresh_at == NOW + 540


def test_unknown_expiry_means_refresh_only_when_refused() -> None:
    creds = Credentials.issued("a", "opaque", "r", now=NOW)
    assert creds.expires_at is None and creds.refresh_at is None
    assert not creds.needs_refresh(NOW + 10**9)


def test_store_round_trip_with_mode_0600(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path / "state" / "credentials.json")
    creds = Credentials.issued("agent-1", make_jwt(exp=NOW + 900, iat=NOW), "rt-1", now=NOW)

    store.save(creds)

    assert store.load() == creds
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert json.loads(store.path.read_text())["refresh_token"] == "rt-1"
    assert [p.name for p in store.path.parent.iterdir()] == ["credentials.json"]


def test_save_replaces_the_previous_credentials(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path / "credentials.json")
    store.save(Credentials("a", "at-1", "rt-1"))
    store.save(Credentials("a", "at-2", "rt-2"))
    loaded = store.load()
    assert loaded is not None and loaded.refresh_token == "rt-2"


def test_missing_store_loads_as_none(tmp_path: Path) -> None:
    assert CredentialStore(tmp_path / "credentials.json").load() is None


@pytest.mark.parametrize(
    "content",
    ["{not json", "[]", '{"agent_id": "a"}', '{"agent_id": "a", "access_token": "x", '
     '"refresh_token": "y", "expires_at": "soon"}'],
)
def test_damaged_store_loads_as_none(tmp_path: Path, content: str) -> None:
    path = tmp_path / "credentials.json"
    path.write_text(content)
    assert CredentialStore(path).load() is None


def test_clear_removes_the_file(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path / "credentials.json")
    store.save(Credentials("a", "at", "rt"))
    store.clear()
    store.clear()  # idempotent
    assert store.load() is None
