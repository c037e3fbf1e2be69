"""Registration takes its use of the bootstrap token last.

Every agent of a fleet registers with the same bootstrap token, and counting a use is a
conditional UPDATE of that token's one row, which PostgreSQL locks until the transaction
ends: done first, it made every registration wait for the previous one's whole transaction
(the fleet simulator saw registrations queue for seconds, holding pool connections that
heartbeats then lacked). Done last, the lock covers the commit only.
"""

from __future__ import annotations

from sqlalchemy import event

from server.db import get_database
from tests.server.conftest import new_agent_id


def _statements_of(app, action):
    engine = get_database(app).engine
    seen: list[str] = []

    def record(_conn, _cursor, statement, *_args):
        seen.append(" ".join(statement.split()).lower())

    event.listen(engine, "before_cursor_execute", record)
    try:
        action()
    finally:
        event.remove(engine, "before_cursor_execute", record)
    return seen


def test_the_token_use_is_counted_after_every_other_write(app, client, make_bootstrap_token):
    token = make_bootstrap_token()
    body = {"token": token, "agent_id": new_agent_id(), "hostname": "web-1"}

    def register():
        reply = client.post("/api/v1/bootstrap-tokens/register", json=body)
        assert reply.status_code == 201, reply.get_json()

    statements = _statements_of(app, register)
    writes = [s for s in statements if s.startswith(("insert", "update", "delete"))]
    claim = [n for n, s in enumerate(writes) if s.startswith("update bootstrap_tokens")]
    assert len(claim) == 1, writes
    assert any(s.startswith("insert into targets") for s in writes[: claim[0]]), writes
    assert claim[0] == len(writes) - 1, f"writes after the token's row was locked: {writes}"


def test_a_refused_token_costs_no_write(app, client, make_bootstrap_token):
    token = make_bootstrap_token(max_uses=1)
    first = client.post("/api/v1/bootstrap-tokens/register",
                        json={"token": token, "agent_id": new_agent_id(), "hostname": "a"})
    assert first.status_code == 201

    def refused():
        reply = client.post("/api/v1/bootstrap-tokens/register",
                            json={"token": token, "agent_id": new_agent_id(), "hostname": "b"})
        assert reply.status_code == 401
        assert reply.get_json()["error"]["code"] == "invalid_bootstrap_token"

    statements = _statements_of(app, refused)
    assert [s for s in statements if s.startswith(("insert", "update", "delete"))
            and "ratelimit" not in s] == []
