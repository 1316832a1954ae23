"""The admin API's OpenAPI 3.0 document, served at ``GET /admin/openapi.json``."""

from __future__ import annotations

from typing import Any

_MAX = 2**63 - 1
_INT = {"type": "integer", "minimum": 0}
_NULLABLE_INT = {"type": "integer", "minimum": 0, "maximum": _MAX, "nullable": True}
_PRICE = {"type": "integer", "minimum": 0, "maximum": 10**9, "nullable": True}
_UNITS = ("requests", "bytes", "items")
_METERS = [
    *("requests", "bytes", "items"),
    *(f"{s}.{u}" for s in ("traces", "logs", "metrics", "logpush") for u in _UNITS),
]
_KEY_LIMITS = {
    "type": "object",
    "additionalProperties": False,
    "properties": {meter: _NULLABLE_INT for meter in _METERS},
}
_RATE = {"type": "integer", "minimum": 1, "maximum": _MAX, "nullable": True}
# An org's own limit: a number, null (unlimited whatever its plan), "plan" (the plan's value).
_PLAN_VALUE = {"type": "string", "enum": ["plan"]}
_LIMITS = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        **{meter: {"oneOf": [_NULLABLE_INT, _PLAN_VALUE]} for meter in _METERS},
        **{rate: {"oneOf": [_RATE, _PLAN_VALUE]} for rate in ("rate_requests", "rate_bytes")},
    },
}
_KEY: dict[str, Any] = {
    "type": "object",
    "required": ["id", "org_id", "name", "limits"],
    "properties": {
        "id": {"type": "string"},
        "org_id": {"type": "string"},
        "name": {"type": "string"},
        "limits": {"type": "object", "additionalProperties": {"type": "integer"}},
        "created_at": {"type": "string"},
        "revoked": {"type": "boolean"},
    },
}
_PLAN_BODY = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "limits": _KEY_LIMITS,
        "overage": _KEY_LIMITS,
        "rate_requests": _RATE,
        "rate_bytes": _RATE,
        "grant_minor": {"type": "integer", "minimum": 0, "maximum": _MAX, "nullable": True},
    },
}
_PLAN: dict[str, Any] = {
    "type": "object",
    "required": ["name", "limits"],
    "properties": {"name": {"type": "string"}, **_PLAN_BODY["properties"]},  # type: ignore[dict-item]
}
_KEY_BODY = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"name": {"type": "string", "maxLength": 200}, "limits": _KEY_LIMITS},
}
_ORG = {
    "type": "object",
    "required": ["id", "name", "limits"],
    "properties": {
        "id": {"type": "string"},
        "name": {"type": "string"},
        "plan": {"type": "string"},
        "limits": {
            "type": "object",
            "additionalProperties": {"type": "integer", "nullable": True},
            "description": "The org's own limits over its plan's; null is unlimited",
        },
        "effective_limits": {"type": "object", "additionalProperties": {"type": "integer"}},
        "upstream": {"type": "string", "nullable": True},
        "suspended": {"type": "boolean"},
        "suspension_reason": {"type": "string", "nullable": True},
        "billing_suspended": {"type": "boolean"},
        "billing_suspension_reason": {"type": "string", "nullable": True},
        "payment_status": {"type": "string", "enum": ["ok", "past_due", "blocked"]},
        "shadow": {"type": "boolean"},
        "prices": {"type": "object", "additionalProperties": {"type": "integer"}},
        "block_over_balance": {"type": "boolean"},
        "billing_customers": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}
_HISTORY_QUERY = [
    {"name": "meter", "in": "query", "required": True, "schema": {"type": "string"}},
    {"name": "step", "in": "query", "schema": {"type": "string", "enum": ["hour", "day"]}},
    {"name": "from", "in": "query", "schema": {"type": "string", "format": "date-time"}},
    {"name": "to", "in": "query", "schema": {"type": "string", "format": "date-time"}},
]
_HISTORY = {
    "type": "object",
    "required": ["meter", "step", "points"],
    "properties": {
        "meter": {"type": "string"},
        "step": {"type": "string"},
        "key_id": {"type": "string"},
        "points": {
            "type": "array",
            "items": {"type": "array", "minItems": 2, "maxItems": 2},
            "description": "[hour or day start (ISO 8601, UTC), usage]",
        },
    },
}
_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
}
_ORG_BODY = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 200},
        "limits": _LIMITS,
        "upstream": {"type": "string", "format": "uri", "nullable": True},
        "shadow": {"type": "boolean"},
    },
}
_PATCH_BODY = {
    **_ORG_BODY,
    "properties": {
        **_ORG_BODY["properties"],  # type: ignore[dict-item]
        "plan": {"type": "string"},
        "notify_url": {"type": "string", "format": "uri", "nullable": True, "maxLength": 2048},
        "partial_admission": {"type": "boolean", "nullable": True},
        "prices": {
            "type": "object",
            "additionalProperties": False,
            "properties": {m: _PRICE for m in ("requests", "bytes", "items")},
        },
        "block_over_balance": {"type": "boolean"},
        "billing_customers": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                p: {"type": "string", "minLength": 1} for p in ("stripe", "autumn", "paddle")
            },
        },
    },
}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _answers(ok: int, schema: dict[str, Any] | None, *errors: int) -> dict[str, Any]:
    answers: dict[str, Any] = {str(ok): {"description": "ok", **(_json(schema) if schema else {})}}
    for status in (401, *errors):
        answers[str(status)] = {"description": "error", **_json(_ERROR)}
    return answers


_ORG_ID = [{"name": "org_id", "in": "path", "required": True, "schema": {"type": "string"}}]
_LIMIT = [
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}
]

SPEC: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "ingest-gateway admin API", "version": "1"},
    "components": {"securitySchemes": {"token": {"type": "http", "scheme": "bearer"}}},
    "security": [{"token": []}],
    "paths": {
        "/admin/orgs": {
            "post": {
                "requestBody": {"required": True, **_json({**_ORG_BODY, "required": ["name"]})},
                "responses": _answers(201, _ORG, 400),
            },
            "get": {
                "parameters": [
                    {"name": "q", "in": "query", "schema": {"type": "string", "maxLength": 200}},
                    *_LIMIT,
                ],
                "responses": _answers(
                    200,
                    {"type": "object", "properties": {"orgs": {"type": "array", "items": _ORG}}},
                    400,
                ),
            },
        },
        "/admin/orgs/{org_id}": {
            "parameters": _ORG_ID,
            "get": {"responses": _answers(200, _ORG, 404)},
            "patch": {
                "requestBody": {"required": True, **_json(_PATCH_BODY)},
                "responses": _answers(200, _ORG, 400, 404, 409),
            },
        },
        "/admin/orgs/{org_id}/keys": {
            "parameters": _ORG_ID,
            "post": {
                "requestBody": {"required": False, **_json(_KEY_BODY)},
                "responses": _answers(
                    201,
                    {**_KEY, "properties": {**_KEY["properties"], "key": {"type": "string"}}},
                    400,
                    404,
                ),
            },
            "get": {
                "responses": _answers(
                    200,
                    {"type": "object", "properties": {"keys": {"type": "array", "items": _KEY}}},
                    404,
                )
            },
        },
        "/admin/keys/{key_id}": {
            "parameters": [
                {"name": "key_id", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "delete": {
                "responses": {
                    "204": {"description": "revoked"},
                    **{k: v for k, v in _answers(204, None, 404).items() if k != "204"},
                }
            },
            "patch": {
                "requestBody": {"required": True, **_json(_KEY_BODY)},
                "responses": _answers(200, _KEY, 400, 404, 409),
            },
        },
        "/admin/notifications": {
            "parameters": [
                {"name": "org_id", "in": "query", "schema": {"type": "string"}},
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1}},
            ],
            "get": {
                "responses": _answers(
                    200,
                    {
                        "type": "object",
                        "properties": {
                            "notifications": {"type": "array", "items": {"type": "object"}}
                        },
                    },
                    400,
                )
            },
        },
        "/admin/plans": {
            "get": {
                "responses": _answers(
                    200,
                    {"type": "object", "properties": {"plans": {"type": "array", "items": _PLAN}}},
                )
            }
        },
        "/admin/plans/{name}": {
            "parameters": [
                {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "get": {"responses": _answers(200, _PLAN, 404)},
            "put": {
                "requestBody": {"required": True, **_json(_PLAN_BODY)},
                "responses": _answers(200, _PLAN, 400, 404),
            },
            "delete": {
                "responses": {
                    "204": {"description": "deleted"},
                    **{k: v for k, v in _answers(204, None, 404, 409).items() if k != "204"},
                }
            },
        },
        "/admin/keys/{key_id}/usage": {
            "parameters": [
                {"name": "key_id", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "get": {"responses": _answers(200, {"type": "object"}, 404)},
        },
        "/admin/orgs/{org_id}/usage": {
            "parameters": _ORG_ID,
            "get": {
                "responses": _answers(
                    200,
                    {
                        "type": "object",
                        "required": ["period_start", "period_end", "usage", "limits"],
                        "properties": {
                            "period_start": {"type": "string"},
                            "period_end": {"type": "string"},
                            "usage": {
                                "type": "object",
                                "properties": {m: _INT for m in ("requests", "bytes", "items")},
                            },
                            "limits": {"type": "object"},
                            "shadow_refused": {"type": "object"},
                        },
                    },
                    404,
                )
            },
        },
        "/admin/orgs/{org_id}/usage/history": {
            "parameters": [*_ORG_ID, *_HISTORY_QUERY],
            "get": {"responses": _answers(200, _HISTORY, 400, 404)},
        },
        "/admin/keys/{key_id}/usage/history": {
            "parameters": [
                {"name": "key_id", "in": "path", "required": True, "schema": {"type": "string"}},
                *_HISTORY_QUERY,
            ],
            "get": {"responses": _answers(200, _HISTORY, 400, 404)},
        },
        "/admin/orgs/{org_id}/suspension": {
            "parameters": _ORG_ID,
            "put": {
                "requestBody": {
                    "required": True,
                    **_json(
                        {
                            "type": "object",
                            "required": ["suspended"],
                            "additionalProperties": False,
                            "properties": {
                                "suspended": {"type": "boolean"},
                                "reason": {"type": "string", "maxLength": 500},
                            },
                        }
                    ),
                },
                "responses": _answers(200, _ORG, 400, 404),
            },
        },
        "/admin/orgs/{org_id}/billing": {
            "parameters": _ORG_ID,
            "get": {"responses": _answers(200, {"type": "object"}, 404)},
        },
        "/admin/webhooks/events": {
            "get": {"parameters": _LIMIT, "responses": _answers(200, {"type": "object"}, 400)}
        },
        "/admin/audit": {
            "get": {
                "parameters": [
                    *_LIMIT,
                    {"name": "org_id", "in": "query", "schema": {"type": "string"}},
                ],
                "responses": _answers(200, {"type": "object"}, 400),
            }
        },
        "/metrics": {
            "get": {
                "responses": {
                    "200": {"description": "Prometheus text"},
                    "401": {"description": "no token"},
                }
            }
        },
    },
}
