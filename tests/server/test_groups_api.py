"""Groups for operators: /api/v1/groups (create, list, get, delete)."""

from __future__ import annotations

from tests.server.conftest import assert_error

GROUPS = "/api/v1/groups"


def test_create_group_then_get_it(client, admin_headers):
    reply = client.post(
        GROUPS,
        json={"id": "web", "name": "Web servers", "description": "nginx fleet"},
        headers=admin_headers,
    )
    assert reply.status_code == 201, reply.get_json()
    created = reply.get_json()
    assert created == {"id": "web", "name": "Web servers", "description": "nginx fleet"}
    assert client.get(f"{GROUPS}/web", headers=admin_headers).get_json() == created


def test_group_name_defaults_to_its_id(make_group):
    assert make_group("db") == {"id": "db", "name": "db", "description": ""}


def test_list_groups_in_id_order(client, admin_headers, make_group):
    for group_id in ("web", "cache", "db"):
        make_group(group_id)
    reply = client.get(GROUPS, headers=admin_headers)
    assert [g["id"] for g in reply.get_json()] == ["cache", "db", "web"]


def test_create_group_with_an_existing_id_is_a_conflict(client, admin_headers, make_group):
    make_group("web", name="first")
    reply = client.post(GROUPS, json={"id": "web", "name": "second"}, headers=admin_headers)
    assert_error(reply, 409, "conflict", mentions="web")
    assert client.get(f"{GROUPS}/web", headers=admin_headers).get_json()["name"] == "first"


def test_group_id_must_be_a_slug(client, admin_headers):
    reply = client.post(GROUPS, json={"id": "Web Servers"}, headers=admin_headers)
    assert_error(reply, 422, "invalid_fields", mentions="id")


def test_get_or_delete_unknown_group_is_404(client, admin_headers):
    assert_error(client.get(f"{GROUPS}/nope", headers=admin_headers), 404, "not_found", "nope")
    assert_error(client.delete(f"{GROUPS}/nope", headers=admin_headers), 404, "not_found", "nope")


def test_delete_group_leaves_its_targets_without_a_group(client, admin_headers, make_group):
    make_group("web")
    target = client.post(
        "/api/v1/targets", json={"hostname": "web-1", "group_id": "web"}, headers=admin_headers
    ).get_json()
    reply = client.delete(f"{GROUPS}/web", headers=admin_headers)
    assert reply.status_code == 204
    assert_error(client.get(f"{GROUPS}/web", headers=admin_headers), 404, "not_found")
    assert client.get(GROUPS, headers=admin_headers).get_json() == []
    kept = client.get(f"/api/v1/targets/{target['id']}", headers=admin_headers).get_json()
    assert kept["hostname"] == "web-1"
    assert kept["group_id"] is None


def test_read_only_token_can_read_groups_but_not_change_them(client, readonly_headers, make_group):
    make_group("web")
    assert client.get(f"{GROUPS}/web", headers=readonly_headers).status_code == 200
    refused = client.post(GROUPS, json={"id": "db"}, headers=readonly_headers)
    assert_error(refused, 403, "read_only_token")
    assert_error(client.delete(f"{GROUPS}/web", headers=readonly_headers), 403, "read_only_token")
