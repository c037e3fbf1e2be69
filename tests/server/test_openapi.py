"""GET /api/v1/openapi.json: a structurally valid OpenAPI 3 document that matches the app.

openapi-spec-validator is not a dependency, so the checks here are structural: the document's
shape, every served route documented (and only those), and request schemas that carry the
same fields and strictness as the marshmallow schemas that validate the requests.
"""

from __future__ import annotations

import re

import pytest
from werkzeug.exceptions import MethodNotAllowed, NotFound

from server.api.routing import REGISTRY

IGNORED_METHODS = {"HEAD", "OPTIONS"}
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


@pytest.fixture
def spec(client):
    reply = client.get("/api/v1/openapi.json")
    assert reply.status_code == 200
    assert reply.is_json
    return reply.get_json()


def _resolve(spec, node):
    """Follow a local ``$ref`` (``#/components/schemas/Name``)."""
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/"), ref
        node = spec
        for part in ref[2:].split("/"):
            node = node[part]
    return node


def _refs(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def _api_routes(app):
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/api/v1"):
            path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
            for method in sorted(rule.methods - IGNORED_METHODS):
                yield path, method.lower()


def _input_fields(schema):
    """Field names as they appear on the wire, for loading, with their required flag."""
    return {
        (field.data_key or name): field.required
        for name, field in schema.fields.items()
        if not field.dump_only
    }


def test_document_is_openapi_3_with_resolvable_references(spec):
    assert re.fullmatch(r"3\.\d+\.\d+", spec["openapi"])
    assert spec["info"]["title"]
    assert spec["info"]["version"]
    assert spec["paths"]
    for ref in set(_refs(spec)):
        assert _resolve(spec, {"$ref": ref}) is not None, ref
    for path, operations in spec["paths"].items():
        assert path.startswith("/api/v1/"), path
        for method, operation in operations.items():
            assert method in HTTP_METHODS, (path, method)
            assert operation["summary"], (path, method)
            assert any(code.startswith("2") or code == "304" for code in operation["responses"])
            for code, response in operation["responses"].items():
                assert re.fullmatch(r"[1-5]\d\d", code), (path, method, code)
                assert response["description"], (path, method, code)


def test_every_served_route_is_documented_with_its_method(app, spec):
    served = set(_api_routes(app))
    assert ("/api/v1/checks/target/{agent_id}", "get") in served
    missing = {
        (path, method) for path, method in served if method not in spec["paths"].get(path, {})
    }
    assert not missing


def test_every_documented_operation_is_served(app, spec):
    urls = app.url_map.bind("localhost")
    for path, operations in spec["paths"].items():
        concrete = re.sub(r"\{\w+\}", "some-id", path)
        for method in operations:
            try:
                urls.match(concrete, method=method.upper())
            except (NotFound, MethodNotAllowed) as exc:
                pytest.fail(f"{method.upper()} {path} is documented but not served: {exc}")


def test_request_bodies_carry_the_fields_and_strictness_of_their_schemas(app, spec):
    checked = 0
    for doc in REGISTRY:
        if doc.body is None:
            continue
        operation = spec["paths"][re.sub(r"<(\w+)>", r"{\1}", doc.path)][doc.method]
        body = operation["requestBody"]
        assert body["required"] is True
        documented = _resolve(spec, body["content"]["application/json"]["schema"])
        expected = _input_fields(doc.body())
        assert set(documented["properties"]) == set(expected), doc.path
        assert set(documented.get("required", [])) == {n for n, req in expected.items() if req}
        # Unknown fields are refused (422), and the document says so.
        assert documented["additionalProperties"] is False, doc.path
        checked += 1
    assert checked >= 8


def test_patch_schema_requires_nothing(spec):
    operation = spec["paths"]["/api/v1/checks/{check_id}"]["patch"]
    schema = _resolve(spec, operation["requestBody"]["content"]["application/json"]["schema"])
    assert "id" not in schema["properties"]
    assert "command" in schema["properties"]
    assert not schema.get("required")


def test_path_and_query_parameters_are_declared(spec):
    for doc in REGISTRY:
        operation = spec["paths"][re.sub(r"<(\w+)>", r"{\1}", doc.path)][doc.method]
        parameters = operation.get("parameters", [])
        path_names = {p["name"] for p in parameters if p["in"] == "path"}
        assert path_names == set(re.findall(r"<(\w+)>", doc.path)), doc.path
        assert all(p["required"] for p in parameters if p["in"] == "path")
        query_names = {p["name"] for p in parameters if p["in"] == "query"}
        expected = set(_input_fields(doc.query())) if doc.query else set()
        assert query_names == expected, doc.path


def test_wait_parameter_documents_its_bounds(spec):
    parameters = spec["paths"]["/api/v1/checks/target/{agent_id}"]["get"]["parameters"]
    [wait] = [p for p in parameters if p["name"] == "wait"]
    assert wait["schema"]["type"] == "number"
    assert wait["schema"]["minimum"] == 0


def test_security_is_declared_where_a_token_is_needed(spec):
    scheme = spec["components"]["securitySchemes"]["bearer"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    for doc in REGISTRY:
        operation = spec["paths"][re.sub(r"<(\w+)>", r"{\1}", doc.path)][doc.method]
        if doc.auth in ("none", "bootstrap"):
            assert "security" not in operation, doc.path
        else:
            assert operation["security"] == [{"bearer": []}], doc.path
    assert "security" not in spec["paths"]["/api/v1/bootstrap-tokens/register"]["post"]
    assert spec["paths"]["/api/v1/agents/{agent_id}/heartbeat"]["post"]["security"]


def test_error_responses_use_the_error_body(spec):
    error = _resolve(spec, {"$ref": "#/components/schemas/ErrorReply"})
    assert error["required"] == ["error"]
    detail = _resolve(spec, error["properties"]["error"])
    assert set(detail["required"]) == {"code", "message"}
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for code, response in operation["responses"].items():
                # 414 comes from gunicorn, before the app: the document says it is not JSON.
                if code.startswith("4") and code != "414":
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/ErrorReply"}, (
                        path,
                        method,
                        code,
                    )


def test_registration_documents_both_success_statuses_and_the_conflict(spec):
    responses = spec["paths"]["/api/v1/bootstrap-tokens/register"]["post"]["responses"]
    for code in ("200", "201"):
        schema = responses[code]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/RegisterReply"}
    assert "409" in responses


def test_allow_lists_exactly_the_documented_methods_of_each_path(client, spec):
    for path, operations in spec["paths"].items():
        concrete = re.sub(r"\{\w+\}", "some-id", path)
        reply = client.options(concrete)
        allowed = set(reply.headers["Allow"].split(", ")) - {"HEAD", "OPTIONS"}
        assert allowed == {method.upper() for method in operations}, path


def test_a_fixed_path_is_not_taken_for_a_parameter_of_its_neighbour(client, admin_headers):
    """DELETE /bootstrap-tokens/register is no revocation of a token called "register"."""
    reply = client.delete("/api/v1/bootstrap-tokens/register", headers=admin_headers)
    assert reply.status_code == 405
    assert reply.headers["Allow"] == "OPTIONS, POST"
    reply = client.put("/api/v1/bootstrap-tokens/register", headers=admin_headers)
    assert reply.headers["Allow"] == "OPTIONS, POST"
