"""Fuzz every operation of the OpenAPI schema with hypothesis: no input may cause a 5xx.

Bodies are drawn from the schema itself (with `$ref`s resolved), mixed with values of the wrong
type, unknown fields, missing fields and raw non-JSON bytes. Runs against the simulated backend
(the HTTP layer, engine, scheduler and KV Slab are real; tokens are instant).
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        node: Any = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            node = node[part]
        schema = node
    return schema


def from_schema(schema: dict[str, Any], root: dict[str, Any], depth: int = 0) -> Any:
    """A strategy for values of `schema`, sometimes anything at all."""
    schema = _resolve(schema, root)
    wild = ANY_JSON if depth < 3 else st.none()
    options = schema.get("anyOf") or schema.get("oneOf")
    if options:
        return st.one_of([from_schema(o, root, depth + 1) for o in options]) | wild
    kind = schema.get("type")
    if "enum" in schema:
        base: Any = st.sampled_from(schema["enum"])
    elif kind == "integer":
        base = st.integers(schema.get("minimum", -5), min(schema.get("maximum", 3000), 2**64))
    elif kind == "number":
        base = st.floats(schema.get("minimum", -3), schema.get("maximum", 3), allow_nan=False)
    elif kind == "string":
        base = st.text(max_size=40)
    elif kind == "boolean":
        base = st.booleans()
    elif kind == "array" and depth < 4:
        base = st.lists(from_schema(schema.get("items", {}), root, depth + 1), max_size=4)
    elif kind == "object" and depth < 4:
        props = schema.get("properties", {})
        required = set(schema.get("required", ()))
        fields = {k: from_schema(v, root, depth + 1) for k, v in props.items()}
        base = st.fixed_dictionaries(
            {k: v for k, v in fields.items() if k in required},
            optional={k: v for k, v in fields.items() if k not in required},
        )
    else:
        base = ANY_JSON
    return base | wild if depth else base


def operations(spec: dict[str, Any]) -> list[tuple[str, str, Any]]:
    out = []
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {})
            schema = body.get("schema")
            strategy = from_schema(schema, spec) if schema else st.none()
            out.append((method.upper(), path.replace("{name}", "sim-a"), strategy))
    return out


@pytest.fixture(scope="module")
def spec(sim_live: Any) -> dict[str, Any]:
    return httpx.get(sim_live.url + "/openapi.json").json()


def test_the_schema_covers_the_openai_routes(spec: dict[str, Any]) -> None:
    assert {"/v1/completions", "/v1/chat/completions", "/v1/models"} <= set(spec["paths"])


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_no_input_causes_a_server_error(sim_live: Any, spec: dict[str, Any], data: Any) -> None:
    method, path, strategy = data.draw(st.sampled_from(operations(spec)))
    raw = data.draw(st.booleans().map(lambda b: b) if method == "POST" else st.just(False))
    if raw and data.draw(st.integers(0, 4)) == 0:
        content = data.draw(st.binary(max_size=64))
    else:
        body = data.draw(strategy)
        if isinstance(body, dict) and body.get("model") and data.draw(st.booleans()):
            body["model"] = "sim-a"
        if isinstance(body, dict) and isinstance(body.get("max_tokens"), int):
            body["max_tokens"] = min(body["max_tokens"], 64)
        content = json.dumps(body).encode()
    resp = httpx.request(method, sim_live.url + path, content=content, timeout=30,
                         headers={"content-type": "application/json"})  # fmt: skip
    assert resp.status_code < 500, (method, path, content[:300], resp.text[:300])
    if resp.status_code >= 400:
        assert set(resp.json()["error"]) == {"message", "type", "param", "code"}
