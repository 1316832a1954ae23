"""The admin listener: org, key, usage and suspension API plus /metrics, behind a token."""

from __future__ import annotations

import hmac
import json
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.app import Runtime
from gateway.control import Conflict, Control, NotFound, UpstreamAllowlist, org_json
from gateway.errors import BadRequest, StoreError
from gateway.openapi import SPEC


def _error(status: int, code: str, message: str | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": code}
    if message:
        body["message"] = message
    return JSONResponse(body, status_code=status)


class AdminAuth:
    """Every admin route needs ``Authorization: Bearer $GATEWAY_ADMIN_TOKEN``."""

    def __init__(self, app: Any, token: str | None) -> None:
        self.app = app
        self._expected = f"Bearer {token}".encode() if token else None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            given = next((v for n, v in scope["headers"] if n == b"authorization"), b"")
            if self._expected is None or not hmac.compare_digest(given, self._expected):
                await _error(401, "unauthorized")(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _json(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw) if raw else {}
    except ValueError as exc:
        raise BadRequest("the body is not valid JSON") from exc


def _limit(request: Request) -> int:
    raw = request.query_params.get("limit", "100")
    if not raw.isdigit() or not 1 <= int(raw) <= 1000:
        raise BadRequest("limit must be a whole number from 1 to 1000")
    return int(raw)


def build_admin_app(runtime: Runtime) -> Any:
    settings = runtime.settings
    allowlist = UpstreamAllowlist(settings.upstream_allowlist, settings.upstream_url)
    control = Control(runtime.store, runtime.hasher, runtime.invalidate_org, allowlist)

    async def create_org(request: Request) -> Response:
        org = await control.create_org(await _json(request))
        return JSONResponse(org_json(org), status_code=201)

    async def get_org(request: Request) -> Response:
        return JSONResponse(org_json(await control.get_org(request.path_params["org_id"])))

    async def update_org(request: Request) -> Response:
        org = await control.update_org(request.path_params["org_id"], await _json(request))
        return JSONResponse(org_json(org))

    async def create_key(request: Request) -> Response:
        record, key = await control.create_key(request.path_params["org_id"])
        return JSONResponse({"id": record.id, "key": key, "org_id": record.org_id}, status_code=201)

    async def revoke_key(request: Request) -> Response:
        await control.revoke_key(request.path_params["key_id"])
        return Response(status_code=204)

    async def usage(request: Request) -> Response:
        await runtime.usage.flush()  # this replica's spends so far; a failed flush stays spooled
        org_id = request.path_params["org_id"]
        period = await control.period(org_id, datetime.now(UTC))
        return JSONResponse(await control.usage(org_id, period))

    async def billing(request: Request) -> Response:
        await runtime.usage.flush()  # the balance counts this replica's spending so far
        return JSONResponse(await control.billing(request.path_params["org_id"]))

    async def webhook_events(request: Request) -> Response:
        return JSONResponse({"events": await runtime.store.webhook_events(_limit(request))})

    async def audit(request: Request) -> Response:
        org_id = request.query_params.get("org_id")
        entries = await runtime.store.audit_log(org_id, _limit(request))
        return JSONResponse({"entries": entries})

    async def suspension(request: Request) -> Response:
        org = await control.set_suspension(request.path_params["org_id"], await _json(request))
        return JSONResponse(org_json(org))

    async def openapi(_request: Request) -> Response:
        return JSONResponse(SPEC)

    async def metrics(_request: Request) -> Response:
        return Response(generate_latest(runtime.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def bad_request(_request: Request, exc: Exception) -> Response:
        return _error(400, "bad_request", str(exc))

    async def not_found(_request: Request, _exc: Exception) -> Response:
        return _error(404, "not_found")

    async def conflict(_request: Request, exc: Exception) -> Response:
        return _error(409, "conflict", str(exc))

    async def store_down(_request: Request, _exc: Exception) -> Response:
        response = _error(503, "store_unavailable")
        response.headers["retry-after"] = "1"
        return response

    app = Starlette(
        routes=[
            Route("/metrics", metrics, methods=["GET"]),
            Route("/admin/openapi.json", openapi, methods=["GET"]),
            Route("/admin/orgs", create_org, methods=["POST"]),
            Route("/admin/orgs/{org_id}", get_org, methods=["GET"]),
            Route("/admin/orgs/{org_id}", update_org, methods=["PATCH"]),
            Route("/admin/orgs/{org_id}/keys", create_key, methods=["POST"]),
            Route("/admin/keys/{key_id}", revoke_key, methods=["DELETE"]),
            Route("/admin/orgs/{org_id}/usage", usage, methods=["GET"]),
            Route("/admin/orgs/{org_id}/suspension", suspension, methods=["PUT"]),
            Route("/admin/orgs/{org_id}/billing", billing, methods=["GET"]),
            Route("/admin/webhooks/events", webhook_events, methods=["GET"]),
            Route("/admin/audit", audit, methods=["GET"]),
        ],
        exception_handlers={
            BadRequest: bad_request,
            NotFound: not_found,
            Conflict: conflict,
            StoreError: store_down,
        },
    )
    return AdminAuth(app, runtime.settings.admin_token)
