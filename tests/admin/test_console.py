"""The console at /ui, in process: sign-in, the session cookie, CSRF, pages and actions.

The browser tests (tests/e2e/test_console_browser.py) drive the same pages in Chromium.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.admin.app import build_admin_app
from gateway.admin.console import Sessions
from gateway.ingest.app import IngestApp
from gateway.runtime import Runtime
from gateway.settings import Settings
from gateway.store.memory import MemoryStore
from tests.fakes import MemoryUpstream

TOKEN = "console-admin-token-0123456789"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


class Rig:
    def __init__(self, runtime: Runtime, ui: httpx.AsyncClient, api: httpx.AsyncClient) -> None:
        self.runtime, self.ui, self.api = runtime, ui, api

    async def sign_in(self) -> str:
        answer = await self.ui.post("/ui/login", data={"token": TOKEN})
        assert answer.status_code == 303, answer.text
        page = await self.ui.get("/ui/orgs")
        found = CSRF.search(page.text)
        assert found, page.text
        return found.group(1)

    async def org(self, name: str, limits: dict[str, int]) -> str:
        made = await self.api.post("/admin/orgs", json={"name": name, "limits": limits})
        assert made.status_code == 201, made.text
        org_id: str = made.json()["id"]
        return org_id


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    settings = Settings(data_dir=tmp_path, key_secret="k" * 32, admin_token=TOKEN)
    runtime = Runtime(settings, store=MemoryStore(), upstream=MemoryUpstream(), spool_dir=None)
    await runtime.start()
    app = build_admin_app(runtime)
    ui = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://admin")
    api = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://admin",
        headers={"authorization": f"Bearer {TOKEN}"},
    )
    async with ui, api:
        yield Rig(runtime, ui, api)
    await runtime.close()


async def test_a_request_without_a_session_is_sent_to_sign_in(rig: Rig) -> None:
    for path in ("/ui", "/ui/orgs", "/ui/orgs/org_x", "/ui/plans", "/ui/notifications"):
        answer = await rig.ui.get(path)
        assert answer.status_code == 303 and answer.headers["location"] == "/ui/login", path
    form = await rig.ui.get("/ui/login")
    assert form.status_code == 200 and 'name="token"' in form.text
    assert form.headers["content-security-policy"].startswith("default-src 'self'")
    assert "<script" not in form.text


async def test_the_wrong_token_is_refused_and_the_right_one_signs_in_with_a_strict_cookie(
    rig: Rig,
) -> None:
    wrong = await rig.ui.post("/ui/login", data={"token": "not-it"})
    assert wrong.status_code == 401 and "gw_console" not in wrong.headers.get("set-cookie", "")
    assert "not-it" not in wrong.text
    right = await rig.ui.post("/ui/login", data={"token": TOKEN})
    cookie = right.headers["set-cookie"]
    assert right.status_code == 303 and right.headers["location"] == "/ui/orgs"
    for part in ("HttpOnly", "SameSite=Strict", "Path=/ui", "Max-Age=28800"):
        assert part in cookie, cookie
    assert "Secure" not in cookie  # plain HTTP here
    assert TOKEN not in cookie


async def test_over_tls_the_session_cookie_is_secure(rig: Rig) -> None:
    app = build_admin_app(rig.runtime)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="https://admin") as tls:
        answer = await tls.post("/ui/login", data={"token": TOKEN})
    assert "; Secure" in answer.headers["set-cookie"]


def test_a_session_expires_is_bound_to_the_token_and_cannot_be_forged() -> None:
    now = [1_000_000.0]
    sessions = Sessions(TOKEN, lifetime=60, clock=lambda: now[0])
    cookie = sessions.new()
    csrf = sessions.valid(cookie)
    assert csrf is not None and csrf not in cookie
    expiry, nonce, mac = cookie.split(".")
    assert sessions.valid(f"{int(expiry) + 3600}.{nonce}.{mac}") is None  # a longer life, forged
    assert sessions.valid(f"{expiry}.{nonce}x.{mac}") is None
    assert Sessions("another-admin-token-000", 60, lambda: now[0]).valid(cookie) is None
    now[0] += 61
    assert sessions.valid(cookie) is None


async def test_orgs_are_listed_closest_to_a_limit_first_with_a_bar_per_limited_meter(
    rig: Rig,
) -> None:
    calm = await rig.org("calm", {"requests": 1000})
    busy = await rig.org("busy", {"requests": 10, "bytes": 10_000})
    await rig.runtime.store.commit(_batch(busy, {"requests": 9, "bytes": 1000}))
    await rig.sign_in()
    page = (await rig.ui.get("/ui/orgs")).text
    assert page.index(f'data-org="{busy}"') < page.index(f'data-org="{calm}"')
    assert "requests 90%" in page and "bytes 10%" in page and 'class="bar near"' in page
    found = (await rig.ui.get("/ui/orgs", params={"q": "cal"})).text
    assert calm in found and busy not in found


async def test_an_org_page_shows_its_meters_a_chart_with_the_limit_and_its_keys(rig: Rig) -> None:
    org = await rig.org("acme", {"requests": 100})
    await rig.runtime.store.commit(_batch(org, {"requests": 40}))
    await rig.sign_in()
    page = (await rig.ui.get(f"/ui/orgs/{org}")).text
    assert '<svg class="chart" id="chart-requests"' in page
    assert 'class="limit"' in page and "limit 100" in page and 'class="used"' in page
    assert "requests 40%" in page and "No keys." in page
    assert (await rig.ui.get("/ui/orgs/org_nope")).status_code == 404


async def test_a_change_without_the_csrf_token_is_refused_and_changes_nothing(rig: Rig) -> None:
    org = await rig.org("acme", {"requests": 100})
    await rig.sign_in()
    for data in ({"suspended": "true"}, {"suspended": "true", "csrf": "forged"}):
        refused = await rig.ui.post(f"/ui/orgs/{org}/suspension", data=data)
        assert refused.status_code == 403
    assert (await rig.api.get(f"/admin/orgs/{org}")).json()["suspended"] is False
    # Without a session at all, no change either: sign-in first.
    rig.ui.cookies.clear()
    answer = await rig.ui.post(f"/ui/orgs/{org}/suspension", data={"suspended": "true"})
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/login"


async def test_suspend_lift_plan_limit_and_keys_go_through_the_admin_code_and_the_audit(
    rig: Rig,
) -> None:
    org = await rig.org("acme", {"requests": 100})
    csrf = await rig.sign_in()
    ingest = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=IngestApp(rig.runtime)), base_url="http://gw"
    )
    made = await rig.ui.post(f"/ui/orgs/{org}/keys", data={"csrf": csrf, "name": "ci"})
    assert made.status_code == 201
    plaintext = re.search(r'id="new-key">[^<]*<code>([^<]+)</code>', made.text)
    assert plaintext and plaintext.group(1).startswith("igk_")
    key = plaintext.group(1)
    again = (await rig.ui.get(f"/ui/orgs/{org}")).text
    assert key not in again  # shown once

    async def send() -> int:
        headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
        answer = await ingest.post("/v1/traces", content=b'{"resourceSpans":[]}', headers=headers)
        return answer.status_code

    assert await send() == 200
    await rig.ui.post(f"/ui/orgs/{org}/suspension", data={"csrf": csrf, "suspended": "true"})
    assert await send() == 402
    assert await send() == 402
    refusals = (await rig.ui.get(f"/ui/orgs/{org}")).text
    section = refusals[refusals.index("Refusals in the last 24 hours") :]
    assert "<td>billing_suspended</td><td>2</td>" in section, section[:400]
    await rig.ui.post(f"/ui/orgs/{org}/suspension", data={"csrf": csrf, "suspended": "false"})
    assert await send() == 200
    await rig.ui.post(
        f"/ui/orgs/{org}/limit", data={"csrf": csrf, "meter": "bytes", "value": "5000"}
    )
    assert (await rig.api.get(f"/admin/orgs/{org}")).json()["limits"]["bytes"] == 5000
    bad = await rig.ui.post(
        f"/ui/orgs/{org}/limit", data={"csrf": csrf, "meter": "x", "value": "1"}
    )
    assert bad.status_code == 400
    keys = (await rig.api.get(f"/admin/orgs/{org}/keys")).json()["keys"]
    revoked = await rig.ui.post(f"/ui/keys/{keys[0]['id']}/revoke", data={"csrf": csrf})
    assert revoked.status_code == 303
    assert await send() == 401
    audit = (await rig.api.get("/admin/audit", params={"org_id": org})).json()["entries"]
    assert {"suspended", "limits", "key"} <= {str(e.get("field")) for e in audit}, audit
    shown = (await rig.ui.get(f"/ui/orgs/{org}")).text
    assert "<h2>Audit log</h2>" in shown and "<td>suspended</td>" in shown and "revoked" in shown
    await ingest.aclose()


async def test_sign_out_ends_the_session_in_this_browser(rig: Rig) -> None:
    csrf = await rig.sign_in()
    out = await rig.ui.post("/ui/logout", data={"csrf": csrf})
    assert out.status_code == 303 and "Max-Age=0" in out.headers["set-cookie"]
    assert (await rig.ui.get("/ui/orgs")).status_code == 303


async def test_the_plans_and_notifications_pages_show_plans_and_delivery_attempts(
    rig: Rig,
) -> None:
    await rig.api.put("/admin/plans/pro", json={"limits": {"requests": 5000}})
    org = await rig.org("acme", {"requests": 100})
    store = rig.runtime.store
    body = '{"type": "usage.threshold"}'
    assert await store.claim_notification(
        "evt_1", "c1", org, "usage.threshold", "http://n", body, 1.0
    )
    await store.notification_attempted("evt_1", 2.0, "HTTP 503 from the endpoint", 60.0)
    await rig.sign_in()
    plans = (await rig.ui.get("/ui/plans")).text
    assert "pro" in plans and "requests 5,000" in plans
    sent = (await rig.ui.get("/ui/notifications")).text
    assert "usage.threshold" in sent and org in sent and "HTTP 503 from the endpoint" in sent
    assert "<td>1</td>" in sent  # one attempt


def _batch(org_id: str, used: dict[str, int]) -> Any:
    import time
    import uuid

    from gateway.store.records import UsageBatch
    from policies.periods import period_at

    period = period_at(time.time())
    return UsageBatch(uuid.uuid4().hex, "test", org_id, period.key, used, {}, at=time.time())


async def test_guessing_the_token_through_the_form_is_throttled_like_the_header(rig: Rig) -> None:
    answers = [
        (await rig.ui.post("/ui/login", data={"token": f"guess-{n}"})).status_code
        for n in range(12)
    ]
    assert answers[:10] == [401] * 10 and answers[10:] == [429, 429]
    throttled = await rig.ui.post("/ui/login", data={"token": "guess-again"})
    assert throttled.status_code == 429 and int(throttled.headers["retry-after"]) >= 1


async def test_review_findings_bad_input_gets_a_clean_answer_never_a_500(rig: Rig) -> None:
    """A cookie another site of this host set (not ASCII), odd numbers, a missing field, a
    trailing slash: each answered cleanly (before: 500s, or a redirect to the Host given)."""
    odd = {b"cookie": "gw_console=9999999999.n.\u00e9".encode()}
    for path in ("/ui/login", "/ui/orgs"):
        answer = await rig.ui.get(path, headers=odd)
        assert answer.status_code in (200, 303), (path, answer.status_code)
    org = await rig.org("acme", {"requests": 100})
    csrf = await rig.sign_in()
    for value in ("\u00b2", "9" * 5000, "-1", "1.5"):
        form = {"csrf": csrf, "meter": "bytes", "value": value}
        assert (await rig.ui.post(f"/ui/orgs/{org}/limit", data=form)).status_code == 400
    back = {"csrf": csrf, "meter": "requests", "value": "plan"}
    assert (await rig.ui.post(f"/ui/orgs/{org}/limit", data=back)).status_code == 303
    assert "requests" not in (await rig.api.get(f"/admin/orgs/{org}")).json()["limits"]
    assert (await rig.ui.post(f"/ui/orgs/{org}/suspension", data={"csrf": csrf})).status_code == 400
    bad_csrf = {"csrf": "\u00e9", "suspended": "true"}
    assert (await rig.ui.post(f"/ui/orgs/{org}/suspension", data=bad_csrf)).status_code == 403
    assert (await rig.ui.get("/ui/orgs/", headers={"host": "evil.example"})).status_code == 404
    assert (await rig.ui.get("/ui/orgs/org%00x")).status_code == 404


async def test_an_address_over_its_wrong_tokens_is_refused_before_its_guess_is_checked(
    rig: Rig,
) -> None:
    for n in range(11):
        await rig.ui.post("/ui/login", data={"token": f"guess-{n}"})
    right = await rig.ui.post("/ui/login", data={"token": TOKEN})
    assert right.status_code == 429 and "gw_console" not in right.headers.get("set-cookie", "")
    metrics = (await rig.api.get("/metrics")).text
    assert 'gateway_admin_auth_failures_total{answer="unauthorized"} 10.0' in metrics


async def test_a_suspended_orgs_usage_reads_are_not_counted_as_refused_requests(rig: Rig) -> None:
    org = await rig.org("acme", {"requests": 100})
    key = (await rig.api.post(f"/admin/orgs/{org}/keys")).json()["key"]
    await rig.api.put(f"/admin/orgs/{org}/suspension", json={"suspended": True})
    ingest = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=IngestApp(rig.runtime)), base_url="http://gw"
    )
    async with ingest:
        for _ in range(3):
            await ingest.get("/v1/usage", headers={"authorization": f"Bearer {key}"})
        answer = await ingest.post(
            "/v1/traces",
            content=b'{"resourceSpans":[]}',
            headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
        )
    assert answer.status_code == 402
    await rig.runtime.usage.flush()
    period = rig.runtime.usage.current_period(rig.runtime.clock())
    counters = await rig.runtime.store.usage(org, period.key)
    assert counters.get("refused:billing_suspended") == 1  # the ingest request, not the reads


def test_a_console_session_must_last_a_minute_to_thirty_days(tmp_path: Path) -> None:
    from gateway.errors import ConfigError

    for seconds in (0, 59, float("inf"), 31 * 86400):
        with pytest.raises(ConfigError, match="GATEWAY_UI_SESSION"):
            Settings(data_dir=tmp_path, ui_session=seconds)
