"""The OpenAPI 3.1 document, generated from the endpoint declarations and their msgspec types."""

from __future__ import annotations

from typing import Any

import msgspec

from agora import __version__
from agora.protocol.common import ErrorBody
from agora.server.routing import Endpoint

REF = "#/components/schemas/{name}"

_ERRORS = {
    400: "Malformed request (bad JSON or query string)",
    401: "Missing, invalid, expired or revoked access token",
    403: "Authenticated but not allowed",
    404: "No such resource, or one the caller may not see",
    409: "Conflicts with the current state",
    413: "Body larger than the limit",
    415: "Body is not JSON (for uploads: not an image Agora takes)",
    422: "Validation failed; `fields` names every bad field",
    429: "Rate limited; see the Retry-After header",
    503: "A service it needs is unavailable, or too busy; see the Retry-After header",
}


def _error_statuses(ep: Endpoint) -> list[int]:
    """What the endpoint's shape implies, plus what it declares (``errors=``)."""
    codes = [400, 429, *ep.errors]
    if ep.auth == "required" or ep.auth == "optional":
        codes.append(401)
    if ep.path_params or ep.auth == "optional":
        codes.append(404)
    if ep.body is not None:
        codes += [413, 415, 422]
    if ep.method in ("POST", "PUT", "PATCH", "DELETE") and ep.auth == "required":
        codes += [403, 409]
        if ep.body is not None:
            codes.append(404)  # the body names another object (a user, a post...) that is gone
    return sorted(set(codes))


def _content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def build(endpoints: list[Endpoint], server_url: str | None = None) -> dict[str, Any]:
    types: list[Any] = [ErrorBody]
    for ep in endpoints:
        for tp in (ep.body, ep.response, ep.query, *(t for _, t, _ in ep.also)):
            if tp is not None and tp not in types:
                types.append(tp)
    refs, components = msgspec.json.schema_components(types, ref_template=REF)
    ref_of = dict(zip(map(id, types), refs, strict=True))
    error_ref = ref_of[id(ErrorBody)]

    paths: dict[str, dict[str, Any]] = {}
    for ep in endpoints:
        op: dict[str, Any] = {
            "operationId": f"{ep.tag}_{ep.handler.__name__}",
            "summary": ep.summary,
            "tags": [ep.tag],
            "parameters": [],
            "responses": {},
        }
        docstring = (ep.handler.__doc__ or "").strip()
        if "\n" in docstring:
            op["description"] = "\n".join(
                line.strip() for line in docstring.splitlines()[1:]
            ).strip()
        for name in ep.path_params:
            op["parameters"].append(
                {
                    "name": name,
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "pattern": "^[0-9]+$"},
                }
            )
        if ep.query is not None:
            qschema = components[ep.query.__name__]
            required = set(qschema.get("required", []))
            for name, prop in qschema.get("properties", {}).items():
                op["parameters"].append(
                    {
                        "name": name,
                        "in": "query",
                        "required": name in required,
                        "schema": prop,
                        **({"description": prop["description"]} if "description" in prop else {}),
                    }
                )
        if ep.body is not None:
            op["requestBody"] = {"required": True, "content": _content(ref_of[id(ep.body)])}
        answers = [(ep.status, ep.response, "Success"), *ep.also]
        for status, tp, description in answers:
            if tp is None:
                op["responses"][str(status)] = {"description": description or "No content"}
            else:
                op["responses"][str(status)] = {
                    "description": description,
                    "content": _content(ref_of[id(tp)]),
                }
        for status in _error_statuses(ep):
            op["responses"].setdefault(
                str(status), {"description": _ERRORS[status], "content": _content(error_ref)}
            )
        if ep.auth == "required":
            op["security"] = [{"bearer": []}]
        elif ep.auth == "optional":
            op["security"] = [{"bearer": []}, {}]
        if not op["parameters"]:
            del op["parameters"]
        paths.setdefault(ep.path, {})[ep.method.lower()] = op

    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "Agora API",
            "version": __version__,
            "description": (
                "REST surface of an Agora node. Errors always answer "
                '`{"error": {"code", "message", "fields"?}}`. Lists take `limit` (1-100, '
                "default 20) and an opaque `cursor`, and answer `{items, next_cursor}`."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
    }
    if server_url:
        doc["servers"] = [{"url": server_url}]
    return doc
