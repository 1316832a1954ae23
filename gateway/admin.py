"""The admin listener: org, key, usage and suspension API plus /metrics, behind a token."""

from __future__ import annotations

import hmac
import json
import time
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.app import Runtime
from gateway.control import Control, NotFound, org_json
from gateway.errors import BadRequest, StoreError


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


def build_admin_app(runtime: Runtime) -> Any:
    control = Control(runtime.store, runtime.hasher, runtime.invalidate_org)

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
        period = runtime.usage.current_period(time.time())
        return JSONResponse(await control.usage(request.path_params["org_id"], period))

    async def suspension(request: Request) -> Response:
        org = await control.set_suspension(request.path_params["org_id"], await _json(request))
        return JSONResponse(org_json(org))

    async def metrics(_request: Request) -> Response:
        return Response(generate_latest(runtime.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def bad_request(_request: Request, exc: Exception) -> Response:
        return _error(400, "bad_request", str(exc))

    async def not_found(_request: Request, _exc: Exception) -> Response:
        return _error(404, "not_found")

    async def store_down(_request: Request, _exc: Exception) -> Response:
        response = _error(503, "store_unavailable")
        response.headers["retry-after"] = "1"
        return response

    app = Starlette(
        routes=[
            Route("/metrics", metrics, methods=["GET"]),
            Route("/admin/orgs", create_org, methods=["POST"]),
            Route("/admin/orgs/{org_id}", get_org, methods=["GET"]),
            Route("/admin/orgs/{org_id}", update_org, methods=["PATCH"]),
            Route("/admin/orgs/{org_id}/keys", create_key, methods=["POST"]),
            Route("/admin/keys/{key_id}", revoke_key, methods=["DELETE"]),
            Route("/admin/orgs/{org_id}/usage", usage, methods=["GET"]),
            Route("/admin/orgs/{org_id}/suspension", suspension, methods=["PUT"]),
        ],
        exception_handlers={BadRequest: bad_request, NotFound: not_found, StoreError: store_down},
    )
    return AdminAuth(app, runtime.settings.admin_token)
