"""The admin listener: org, key, usage and suspension API plus /metrics, behind a token."""

from __future__ import annotations

import hmac
import json
import logging
import math
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.admin.console import build_console
from gateway.admin.history import history, with_forecasts
from gateway.admin.openapi import SPEC
from gateway.admin.orgs import OrgAdmin, key_json
from gateway.admin.origins import UpstreamAllowlist
from gateway.admin.throttle import AuthFailures
from gateway.billing import notify
from gateway.billing.webhooks import EventPolicy
from gateway.errors import BadRequest, Conflict, Disconnected, NotFound, PayloadTooLarge, StoreError
from gateway.ingest.body import BodyDeadlines, replaying
from gateway.metrics import Metrics
from gateway.responses import refusal_response
from gateway.runtime import Runtime
from gateway.types import ASGIApp, Receive, Scope, Send
from policies.decisions import Refusal

log = logging.getLogger("gateway.admin.app")
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 500: "internal_error"}
MAX_ADMIN_BODY = 1024 * 1024


def _error(
    status: int, code: str, message: str | None = None, retry_after: int | None = None
) -> Response:
    detail = {"message": message} if message else {}
    return refusal_response(Refusal(status, code, retry_after=retry_after, detail=detail))


class AdminAuth:
    """Every admin route needs ``Authorization: Bearer $GATEWAY_ADMIN_TOKEN``.

    A failure is counted and logged (never with what was sent); an address with ``limit``
    failures in the last second gets 429 instead of 401 until it stops.
    """

    def __init__(
        self,
        app: ASGIApp,
        token: str | None,
        metrics: Metrics,
        failures: AuthFailures | None = None,
    ) -> None:
        self.app = app
        self._expected = f"Bearer {token}".encode() if token else None
        self._failures = failures or AuthFailures()
        self._unauthorized = metrics.admin_auth_failures.labels("unauthorized")
        self._throttled = metrics.admin_auth_failures.labels("rate_limited")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            given = next((v for n, v in scope["headers"] if n == b"authorization"), b"")
            if self._expected is None or not hmac.compare_digest(given, self._expected):
                await self._refuse(scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        address = scope["client"][0] if scope.get("client") else "unknown"
        throttled = self._failures.fail(address)
        if throttled is None:
            self._unauthorized.inc()
            log.warning(
                "admin request refused, missing or wrong token: %s %s from %s",
                scope["method"],
                scope["path"],
                address,
            )
            response = _error(401, "unauthorized")
        else:
            self._throttled.inc()
            if throttled.started:
                log.warning("admin authentication failures from %s throttled (429)", address)
            wait = max(1, math.ceil(throttled.wait))
            response = _error(429, "rate_limited", retry_after=wait)
        if _announces_body(scope["headers"]):
            # The body is never read: end the connection rather than keep taking it.
            response.headers["connection"] = "close"
        await response(scope, receive, send)


def _announces_body(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(
        (n == b"content-length" and v.strip() != b"0") or n == b"transfer-encoding"
        for n, v in headers
    )


class AdminBodies:
    """Reads every admin body under the same deadline as ingest bodies, and a size limit."""

    def __init__(self, app: ASGIApp, bodies: BodyDeadlines, limit: int = MAX_ADMIN_BODY) -> None:
        self.app = app
        self.bodies = bodies
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((v for n, v in scope["headers"] if n == b"content-length"), b"")
        try:
            body = await self.bodies.read(
                receive,
                self.limit,
                # More digits than any limit has: too large, without parsing a huge number.
                (int(declared) if len(declared) < 19 else 2**63) if declared.isdigit() else None,
            )
        except PayloadTooLarge:
            response = _error(413, "payload_too_large")
            response.headers["connection"] = "close"  # the rest of the body is never read
            await response(scope, receive, send)
            return
        except TimeoutError:
            response = _error(408, "request_timeout")  # ends the connection
            await response(scope, receive, send)
            return
        except Disconnected:
            log.debug("admin client disconnected before its body arrived")
            return
        await self.app(scope, replaying(body, receive), send)


async def _json(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw) if raw else {}
    except (ValueError, RecursionError) as exc:  # RecursionError: nested past any real body
        raise BadRequest("the body is not valid JSON") from exc


def _path(request: Request, name: str) -> str:
    """An id from the path; one no store could hold (a NUL, a control character) is unknown."""
    value: str = request.path_params[name]
    if len(value) > 200 or not value.isprintable():
        raise NotFound(name)
    return value


def _limit(request: Request) -> int:
    raw = request.query_params.get("limit", "100")
    if not raw.isdigit() or not 1 <= int(raw) <= 1000:
        raise BadRequest("limit must be a whole number from 1 to 1000")
    return int(raw)


def build_admin_app(runtime: Runtime) -> Any:
    settings = runtime.settings
    allowlist = UpstreamAllowlist(settings.upstream_allowlist, settings.upstream_url)
    events = EventPolicy.from_settings(settings)
    orgs = OrgAdmin(runtime.store, runtime.hasher, runtime.invalidate_org, allowlist, events)

    async def create_org(request: Request) -> Response:
        org = await orgs.create_org(await _json(request))
        return JSONResponse(await orgs.org_view(org), status_code=201)

    async def list_orgs(request: Request) -> Response:
        query = request.query_params.get("q", "").strip()[:200] or None
        found = await runtime.store.list_orgs(query, _limit(request))
        return JSONResponse({"orgs": [await orgs.org_view(org) for org in found]})

    async def get_org(request: Request) -> Response:
        org = await orgs.get_org(_path(request, "org_id"))
        return JSONResponse(await orgs.org_view(org))

    async def update_org(request: Request) -> Response:
        org = await orgs.update_org(_path(request, "org_id"), await _json(request))
        return JSONResponse(await orgs.org_view(org))

    async def create_key(request: Request) -> Response:
        body = await _json(request) if await request.body() else None
        record, key = await orgs.create_key(_path(request, "org_id"), body)
        return JSONResponse({**key_json(record), "key": key}, status_code=201)

    async def list_plans(_request: Request) -> Response:
        return JSONResponse({"plans": [p.as_dict() for p in await runtime.store.list_plans()]})

    async def get_plan(request: Request) -> Response:
        return JSONResponse((await orgs.plan(_path(request, "name"))).as_dict())

    async def put_plan(request: Request) -> Response:
        plan = await orgs.put_plan(_path(request, "name"), await _json(request))
        return JSONResponse(plan.as_dict())

    async def delete_plan(request: Request) -> Response:
        await orgs.delete_plan(_path(request, "name"))
        return Response(status_code=204)

    async def list_keys(request: Request) -> Response:
        keys = await orgs.list_keys(_path(request, "org_id"))
        return JSONResponse({"keys": [key_json(key) for key in keys]})

    async def update_key(request: Request) -> Response:
        record = await orgs.update_key(_path(request, "key_id"), await _json(request))
        return JSONResponse(key_json(record))

    async def key_usage(request: Request) -> Response:
        await runtime.usage.flush()  # this replica's spends so far; a failed flush stays spooled
        key = await orgs.key(_path(request, "key_id"))
        now = datetime.fromtimestamp(runtime.clock(), UTC)
        period = await orgs.period(key.org_id, now)
        view = await orgs.key_usage(key.id, period)
        return JSONResponse(
            await with_forecasts(runtime.store, key.org_id, view, period, now, key.id)
        )

    async def revoke_key(request: Request) -> Response:
        await orgs.revoke_key(_path(request, "key_id"))
        return Response(status_code=204)

    async def usage(request: Request) -> Response:
        await runtime.usage.flush()  # this replica's spends so far; a failed flush stays spooled
        org_id = _path(request, "org_id")
        now = datetime.fromtimestamp(runtime.clock(), UTC)
        period = await orgs.period(org_id, now)
        view = await orgs.usage(org_id, period)
        return JSONResponse(await with_forecasts(runtime.store, org_id, view, period, now))

    async def usage_history(request: Request) -> Response:
        await runtime.usage.flush()  # this replica's spends so far; a failed flush stays spooled
        org = await orgs.get_org(_path(request, "org_id"))
        now = datetime.fromtimestamp(runtime.clock(), UTC)
        return JSONResponse(await history(runtime.store, org.id, request.query_params, now))

    async def key_usage_history(request: Request) -> Response:
        await runtime.usage.flush()
        key = await orgs.key(_path(request, "key_id"))
        now = datetime.fromtimestamp(runtime.clock(), UTC)
        found = await history(runtime.store, key.org_id, request.query_params, now, key.id)
        return JSONResponse({"key_id": key.id, **found})

    async def billing(request: Request) -> Response:
        await runtime.usage.flush()  # the balance counts this replica's spending so far
        return JSONResponse(await orgs.billing(_path(request, "org_id")))

    async def notifications(request: Request) -> Response:
        unknown = set(request.query_params) - {"org_id", "limit"}
        if unknown:
            raise BadRequest(f"unknown query parameter {sorted(unknown)[0]!r}")
        org_id = request.query_params.get("org_id")
        rows = await runtime.store.notifications(org_id, _limit(request))
        return JSONResponse({"notifications": notify.listed(rows)})

    async def webhook_events(request: Request) -> Response:
        return JSONResponse({"events": await runtime.store.webhook_events(_limit(request))})

    async def audit(request: Request) -> Response:
        org_id = request.query_params.get("org_id")
        entries = await runtime.store.audit_log(org_id, _limit(request))
        return JSONResponse({"entries": entries})

    async def suspension(request: Request) -> Response:
        org = await orgs.set_suspension(_path(request, "org_id"), await _json(request))
        return JSONResponse(await orgs.org_view(org))

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
        return _error(503, "store_unavailable", retry_after=1)

    async def http_error(_request: Request, exc: Exception) -> Response:
        # Starlette's own answers (no such route, wrong method) in our shape.
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        return _error(status, _HTTP_CODES.get(status, "bad_request"))

    async def internal_error(_request: Request, exc: Exception) -> Response:
        log.error("admin request failed", exc_info=exc)
        return _error(500, "internal_error")

    app = Starlette(
        routes=[
            Route("/metrics", metrics, methods=["GET"]),
            Route("/admin/openapi.json", openapi, methods=["GET"]),
            Route("/admin/orgs", create_org, methods=["POST"]),
            Route("/admin/orgs", list_orgs, methods=["GET"]),
            Route("/admin/orgs/{org_id}", get_org, methods=["GET"]),
            Route("/admin/orgs/{org_id}", update_org, methods=["PATCH"]),
            Route("/admin/orgs/{org_id}/keys", create_key, methods=["POST"]),
            Route("/admin/orgs/{org_id}/keys", list_keys, methods=["GET"]),
            Route("/admin/plans", list_plans, methods=["GET"]),
            Route("/admin/plans/{name}", get_plan, methods=["GET"]),
            Route("/admin/plans/{name}", put_plan, methods=["PUT"]),
            Route("/admin/plans/{name}", delete_plan, methods=["DELETE"]),
            Route("/admin/keys/{key_id}", revoke_key, methods=["DELETE"]),
            Route("/admin/keys/{key_id}", update_key, methods=["PATCH"]),
            Route("/admin/keys/{key_id}/usage", key_usage, methods=["GET"]),
            Route("/admin/keys/{key_id}/usage/history", key_usage_history, methods=["GET"]),
            Route("/admin/orgs/{org_id}/usage", usage, methods=["GET"]),
            Route("/admin/orgs/{org_id}/usage/history", usage_history, methods=["GET"]),
            Route("/admin/notifications", notifications, methods=["GET"]),
            Route("/admin/orgs/{org_id}/suspension", suspension, methods=["PUT"]),
            Route("/admin/orgs/{org_id}/billing", billing, methods=["GET"]),
            Route("/admin/webhooks/events", webhook_events, methods=["GET"]),
            Route("/admin/audit", audit, methods=["GET"]),
        ],
        middleware=[Middleware(AdminBodies, bodies=runtime.bodies)],
        exception_handlers={
            BadRequest: bad_request,
            NotFound: not_found,
            Conflict: conflict,
            StoreError: store_down,
            HTTPException: http_error,
            Exception: internal_error,
        },
    )
    # One tally of wrong tokens per address, whether sent in a header or the console's form.
    failures = AuthFailures()
    api = AdminAuth(app, settings.admin_token, runtime.metrics, failures)
    console = build_console(runtime, orgs, failures)
    return AdminListener(api, AdminBodies(console, runtime.bodies))


class AdminListener:
    """The admin listener: the console at /ui signs in with the token through a form, and
    everything else needs it in the Authorization header."""

    def __init__(self, api: AdminAuth, console: ASGIApp) -> None:
        self.api = api
        self.console = console

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        app = self.console if path == "/ui" or path.startswith("/ui/") else self.api
        await app(scope, receive, send)
