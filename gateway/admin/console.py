"""The operator console at ``/ui`` on the admin listener: server-rendered pages over the admin
API's own code (``OrgAdmin``), signed in with the admin token.

A session is a cookie the gateway signs with the admin token (HMAC-SHA256 over its expiry and
a nonce), so every worker and replica accepts it and rotating the token ends every session.
It is ``HttpOnly``, ``SameSite=Strict``, ``Path=/ui`` and ``Secure`` over TLS. Every change is
a POST carrying the session's CSRF token (an HMAC of its nonce), checked before anything runs.
Pages send ``Content-Security-Policy: default-src 'self'``: no script runs on them at all.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from importlib import resources
from typing import Any
from urllib.parse import parse_qsl, quote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from gateway.admin import console_html as html
from gateway.admin.history import history, with_forecasts
from gateway.admin.orgs import OrgAdmin, org_json
from gateway.admin.throttle import AuthFailures
from gateway.billing import notify
from gateway.errors import BadRequest, Conflict, NotFound, StoreError
from gateway.ingest.outcomes import REFUSALS
from gateway.limits.budgets import REFUSED_PREFIX
from gateway.runtime import Runtime
from gateway.store.records import OrgRecord
from policies.model import Period, key_meter

log = logging.getLogger("gateway.admin.console")
COOKIE = "gw_console"
MAX_FORM = 16 * 1024
HEADERS = {
    "content-security-policy": "default-src 'self'; frame-ancestors 'none'; form-action 'self'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}
Endpoint = Callable[[Request], Awaitable[Response]]
Page = Callable[[Request, str], Awaitable[Response]]  # given the session's CSRF token
Change = Callable[[Request, str, dict[str, str]], Awaitable[Response]]  # and the form
_CSS = resources.files("gateway.admin").joinpath("console.css").read_bytes()


class Sessions:
    """Signed, stateless sessions: ``<expiry>.<nonce>.<mac>``."""

    def __init__(self, token: str | None, lifetime: float, clock: Any = time.time) -> None:
        self._key = hashlib.sha256(b"console|" + (token or "").encode()).digest() if token else None
        self.lifetime = lifetime
        self._clock = clock

    def _mac(self, what: str) -> str:
        assert self._key is not None
        return hmac.new(self._key, what.encode(), hashlib.sha256).hexdigest()

    def check_token(self, given: str) -> bool:
        if self._key is None:
            return False
        expected = hashlib.sha256(b"console|" + given.encode()).digest()
        return hmac.compare_digest(expected, self._key)

    def new(self) -> str:
        expiry = int(self._clock() + self.lifetime)
        nonce = secrets.token_urlsafe(18)
        return f"{expiry}.{nonce}.{self._mac(f'session|{expiry}|{nonce}')}"

    def valid(self, cookie: str | None) -> str | None:
        """The session's CSRF token when ``cookie`` is a live session, else None."""
        if self._key is None or not cookie or not cookie.isascii() or cookie.count(".") != 2:
            return None  # not ours (a cookie any other site of this host may have set)
        expiry, nonce, mac = cookie.split(".")
        if not expiry.isdigit() or len(expiry) > 12 or int(expiry) <= self._clock():
            return None
        if not hmac.compare_digest(mac.encode(), self._mac(f"session|{expiry}|{nonce}").encode()):
            return None
        return self._mac(f"csrf|{nonce}")


_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _id(request: Request, name: str) -> str:
    """A path's org or key id: ids the store makes; anything else is no such thing."""
    found: str = request.path_params[name]
    if not _ID.fullmatch(found):
        raise NotFound(name)
    return found


def _page(body: str, status: int = 200, **headers: str) -> HTMLResponse:
    return HTMLResponse(body, status_code=status, headers={**HEADERS, **headers})


def _to(location: str) -> RedirectResponse:
    return RedirectResponse(location, status_code=303, headers=HEADERS)


async def _form(request: Request) -> dict[str, str]:
    body = await request.body()
    if len(body) > MAX_FORM:
        raise BadRequest("form too large")
    return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))


def build_console(runtime: Runtime, orgs: OrgAdmin, failures: AuthFailures) -> Starlette:
    """``failures``: the wrong tokens per address, shared with the API's header check."""
    wrong_token = runtime.metrics.admin_auth_failures.labels("unauthorized")
    throttled_answers = runtime.metrics.admin_auth_failures.labels("rate_limited")
    settings = runtime.settings
    sessions = Sessions(settings.admin_token, settings.ui_session)

    def now() -> datetime:
        return datetime.fromtimestamp(runtime.clock(), UTC)

    def cookie_header(request: Request, value: str, max_age: int) -> str:
        secure = "; Secure" if request.url.scheme == "https" else ""
        return f"{COOKIE}={value}; Max-Age={max_age}; Path=/ui; HttpOnly; SameSite=Strict{secure}"

    def signed_in(request: Request) -> str | None:
        return sessions.valid(request.cookies.get(COOKIE))

    def signed(handler: Page) -> Endpoint:
        """A page for a signed-in operator (given the session's CSRF token); else sign-in."""

        async def endpoint(request: Request) -> Response:
            csrf = signed_in(request)
            return _to("/ui/login") if csrf is None else await handler(request, csrf)

        return endpoint

    def change(handler: Change) -> Endpoint:
        """A POST of a signed-in operator whose form carries the session's CSRF token."""

        async def endpoint(request: Request, csrf: str) -> Response:
            form = await _form(request)
            if not hmac.compare_digest(form.get("csrf", "").encode(), csrf.encode()):
                log.warning(
                    "console change refused: missing or wrong CSRF token: %s", request.url.path
                )
                stale = html.page("Refused", "<p>The form was stale. Go back and try again.</p>")
                return _page(stale, 403)
            return await handler(request, csrf, form)

        return signed(endpoint)

    async def login_form(request: Request) -> Response:
        if signed_in(request) is not None:
            return _to("/ui/orgs")
        return _page(html.sign_in())

    async def login(request: Request) -> Response:
        form = await _form(request)
        address = request.client.host if request.client else "unknown"
        # An address over its wrong tokens is answered before its guess is even checked.
        throttled = failures.over(address)
        if throttled is None and not sessions.check_token(form.get("token", "")):
            throttled = failures.fail(address)
            if throttled is None:
                wrong_token.inc()
                log.warning("console sign-in refused: wrong token, from %s", address)
                return _page(html.sign_in("That is not the admin token."), 401)
            log.warning("console sign-ins from %s throttled (429)", address)
        if throttled is not None:
            throttled_answers.inc()
            wait = str(max(1, math.ceil(throttled.wait)))
            text = html.sign_in("Too many wrong tokens: wait a moment.")
            return _page(text, 429, **{"retry-after": wait})
        answer = _to("/ui/orgs")
        lifetime = int(sessions.lifetime)
        answer.headers["set-cookie"] = cookie_header(request, sessions.new(), lifetime)
        return answer

    async def logout(request: Request, _csrf: str, _form: dict[str, str]) -> Response:
        answer = _to("/ui/login")
        answer.headers["set-cookie"] = cookie_header(request, "", 0)
        return answer

    async def home(request: Request) -> Response:
        return _to("/ui/orgs" if signed_in(request) else "/ui/login")

    async def stylesheet(_request: Request) -> Response:
        return Response(_CSS, media_type="text/css", headers=HEADERS)

    async def org_usage(org_id: str) -> tuple[Period, dict[str, Any]]:
        period = await orgs.period(org_id, now())
        view = await orgs.usage(org_id, period)
        return period, await with_forecasts(runtime.store, org_id, view, period, now())

    async def orgs_page(request: Request, csrf: str) -> Response:
        await runtime.usage.flush()
        query = request.query_params.get("q", "").strip()[:200]
        rows = []
        for org in await runtime.store.list_orgs(query or None, 200):
            rows.append((org_json(org), (await org_usage(org.id))[1]))
        return _page(html.page("Orgs", html.orgs_table(rows, query), csrf=csrf))

    async def org_page(request: Request, csrf: str) -> Response:
        await runtime.usage.flush()
        return await org_answer(await orgs.get_org(_id(request, "org_id")), csrf)

    async def org_answer(record: OrgRecord, csrf: str, new_key: str | None = None) -> Response:
        org_id, org = record.id, org_json(record)
        period, view = await org_usage(org_id)
        meters = []
        charts: list[str] = []
        days = max(1, round((period.end - period.start).total_seconds() / 86400))
        span = (view["period_start"], view["period_end"], days)

        async def daily(meter: str) -> list[tuple[str, int]]:
            query = {"meter": meter, "step": "day", "from": period.start.isoformat()}
            found = await history(runtime.store, org_id, query, now())
            return [(str(p[0]), int(p[1])) for p in found["points"]]

        for meter, entry in view["meters"].items():
            forecast = entry.get("forecast") or {}
            overage = entry.get("overage")
            meters.append(
                [
                    html.esc(meter),
                    html.number(entry["used"]),
                    html.number(entry["limit"]),
                    "" if overage is None else html.number(overage),
                    html.number(forecast.get("projected")) if forecast else "",
                    html.usage_bar(meter, entry["used"], entry["limit"]),
                ]
            )
            if entry.get("limit") and len(charts) < 3:
                projected = forecast.get("projected")
                charts.append(
                    html.chart(meter, await daily(meter), entry["limit"], projected, span)
                )
        if not charts:
            charts.append(html.chart("requests", await daily("requests"), None, None, span))
        plans = [p.name for p in await runtime.store.list_plans()]
        counters = await runtime.store.usage(org_id, period.key)  # the keys' meters too
        keys = []
        for key in await orgs.list_keys(org_id):
            revoke = "" if key.revoked else html.post_button(
                f"/ui/keys/{key.id}/revoke", csrf, "Revoke", {}, f"revoke-{key.id}"
            )  # fmt: skip
            limits = ", ".join(f"{m} {n:,}" for m, n in key.limits.as_dict().items())
            keys.append(
                [
                    html.esc(key.id),
                    html.esc(key.name),
                    html.number(counters.get(key_meter(key.id, "requests"), 0)),
                    html.esc(limits),
                    "revoked" if key.revoked else "active",
                    revoke,
                ]
            )
        billing = await orgs.billing(org_id)
        audit = await runtime.store.audit_log(org_id, 20)
        refusals = await refused_today(org_id)
        body = "".join(
            [
                html.org_actions(org, csrf, plans),
                f"<h2>Usage from {html.esc(view['period_start'])} to "
                f"{html.esc(view['period_end'])}</h2>",
                html.table(["meter", "used", "limit", "overage cap", "forecast", ""], meters),
                "".join(charts),
                "<h2>Keys</h2>",
                html.new_key(new_key),
                html.table(["id", "name", "requests", "limits", "state", ""], keys, "No keys."),
                html.key_form(org_id, csrf),
                "<h2>Refusals in the last 24 hours</h2>",
                html.table(
                    ["code", "requests"],
                    [[html.esc(code), html.number(n)] for code, n in refusals],
                    "None.",
                ),
                "<h2>Billing</h2>",
                html.table(
                    ["field", "value"], [[html.esc(k), html.esc(v)] for k, v in billing.items()]
                ),
                "<h2>Audit log</h2>",
                html.table(
                    ["at", "what", "old", "new", "by", "why"],
                    [
                        [
                            html.esc(e.get(f))
                            for f in ("at", "field", "old", "new", "actor", "reason")
                        ]
                        for e in audit
                    ],
                    "Nothing changed yet.",
                ),
            ]
        )
        return _page(html.page(record.name, body, csrf=csrf), 201 if new_key else 200)

    def org_change(apply: Callable[[str, dict[str, str]], Awaitable[object]]) -> Endpoint:
        """A POST that changes an org through ``apply``, then shows the org again."""

        async def changed(request: Request, _csrf: str, form: dict[str, str]) -> Response:
            org_id = _id(request, "org_id")
            await apply(org_id, form)
            return _to(f"/ui/orgs/{quote(org_id)}")

        return change(changed)

    async def refused_today(org_id: str) -> list[tuple[str, int]]:
        """Refusals of the org's requests by code over the last 24 hours, most first."""
        end = runtime.clock()
        counts = []
        for outcome in sorted(REFUSALS):
            meter = REFUSED_PREFIX + outcome.value
            hours = await runtime.store.usage_history(org_id, meter, end - 86400, end + 1)
            if total := sum(n for _, n in hours):
                counts.append((outcome.value, total))
        return sorted(counts, key=lambda pair: -pair[1])

    async def suspend(org_id: str, form: dict[str, str]) -> object:
        wanted = form.get("suspended")
        if wanted not in ("true", "false"):
            raise BadRequest("suspended must be true or false")
        return await orgs.set_suspension(
            org_id, {"suspended": wanted == "true", "reason": "console"}
        )

    async def change_plan(org_id: str, form: dict[str, str]) -> object:
        return await orgs.update_org(org_id, {"plan": form.get("plan", "")})

    async def set_limit(org_id: str, form: dict[str, str]) -> object:
        raw = form.get("value", "").strip().replace(",", "")
        value: int | str | None = raw or None  # "plan": back to the plan's limit
        if raw and raw != "plan":
            if not (raw.isascii() and raw.isdigit() and len(raw) <= 18):
                raise BadRequest("a limit is a whole number, empty (unlimited) or plan")
            value = int(raw)
        return await orgs.update_org(org_id, {"limits": {form.get("meter", "").strip(): value}})

    async def create_key(request: Request, csrf: str, form: dict[str, str]) -> Response:
        org_id, name = _id(request, "org_id"), form.get("name", "").strip()
        _, plaintext = await orgs.create_key(org_id, {"name": name} if name else None)
        return await org_answer(await orgs.get_org(org_id), csrf, plaintext)

    async def revoke_key(request: Request, _csrf: str, _form: dict[str, str]) -> Response:
        key = await orgs.key(_id(request, "key_id"))
        await orgs.revoke_key(key.id)
        return _to(f"/ui/orgs/{quote(key.org_id)}")

    async def plans_page(request: Request, csrf: str) -> Response:
        rows = [
            [
                html.esc(p.name),
                html.esc(", ".join(f"{m} {html.number(n)}" for m, n in p.limits.items())),
            ]
            for p in await runtime.store.list_plans()
        ]
        return _page(
            html.page("Plans", html.table(["plan", "limits"], rows, "No plans."), csrf=csrf)
        )

    async def notifications_page(request: Request, csrf: str) -> Response:
        listed = notify.listed(await runtime.store.notifications(None, 100))
        shown = ("created_at", "org_id", "type", "attempts", "delivered_at", "failed_at")
        rows = [
            [*(html.esc(row.get(f)) for f in shown), html.esc(row.get("last_error") or "")]
            for row in listed
        ]
        return _page(
            html.page(
                "Notifications",
                html.table([*shown, "last error"], rows, "No notifications."),
                csrf=csrf,
            )
        )

    async def refused(request: Request, exc: Exception) -> Response:
        status = 404 if isinstance(exc, NotFound) else 409 if isinstance(exc, Conflict) else 400
        if isinstance(exc, StoreError):
            status = 503
        text = (
            "Not found."
            if status == 404
            else "The store is unavailable."
            if status == 503
            else str(exc)
        )
        csrf = signed_in(request)
        return _page(
            html.page("Not done", f'<p class="error" role="alert">{html.esc(text)}</p>', csrf=csrf),
            status,
        )

    app = Starlette(
        routes=[
            Route("/ui", home, methods=["GET"]),
            Route("/ui/static/console.css", stylesheet, methods=["GET"]),
            Route("/ui/login", login_form, methods=["GET"]),
            Route("/ui/login", login, methods=["POST"]),
            Route("/ui/logout", change(logout), methods=["POST"]),
            Route("/ui/orgs", signed(orgs_page), methods=["GET"]),
            Route("/ui/orgs/{org_id}", signed(org_page), methods=["GET"]),
            Route("/ui/orgs/{org_id}/suspension", org_change(suspend), methods=["POST"]),
            Route("/ui/orgs/{org_id}/plan", org_change(change_plan), methods=["POST"]),
            Route("/ui/orgs/{org_id}/limit", org_change(set_limit), methods=["POST"]),
            Route("/ui/orgs/{org_id}/keys", change(create_key), methods=["POST"]),
            Route("/ui/keys/{key_id}/revoke", change(revoke_key), methods=["POST"]),
            Route("/ui/plans", signed(plans_page), methods=["GET"]),
            Route("/ui/notifications", signed(notifications_page), methods=["GET"]),
        ],
        exception_handlers={
            BadRequest: refused,
            NotFound: refused,
            Conflict: refused,
            StoreError: refused,
        },
    )
    # "/ui/orgs/" is not redirected: the redirect would name whatever host the client said.
    app.router.redirect_slashes = False
    return app
