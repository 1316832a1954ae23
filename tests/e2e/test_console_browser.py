"""The console in a real browser: Playwright driving Debian's Chromium against a real gateway.

Sign in, find the org near its limit, open it, see its bar and chart, suspend it and see
ingest answer 402, lift it, create and revoke a key, sign out; a request without a session is
sent to sign-in and a change without the CSRF token is refused. The orgs and org pages are
saved as screenshots (into docs/ with UPDATE_SCREENSHOTS=1, which the README shows).
``scripts/test`` installs ``chromium``; under CI a missing browser fails the test.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from loadtest.loadgen import otlp_traces
from tests.harness import Gateway

DOCS = Path(__file__).resolve().parents[2] / "docs"
PNG = b"\x89PNG\r\n\x1a\n"


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is missing: scripts/test installs Debian's chromium package")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    return found


@pytest.fixture
def browser_page() -> Iterator[Any]:
    executable = chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        # --no-sandbox: the tests run as root here, where Chromium's sandbox refuses to start.
        browser = driver.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1200, "height": 900})
        try:
            yield context.new_page()
        finally:
            context.close()
            browser.close()


def ingest(gateway: Gateway, key: str) -> int:
    body, _ = otlp_traces(512)
    headers = {"authorization": f"Bearer {key}", "content-type": "application/x-protobuf"}
    return httpx.post(
        f"{gateway.url}/v1/traces", content=body, headers=headers, timeout=10
    ).status_code


def shot(page: Any, name: str, tmp_path: Path) -> None:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    assert path.read_bytes()[:8] == PNG
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        DOCS.mkdir(exist_ok=True)
        shutil.copyfile(path, DOCS / name)


def test_an_operator_finds_an_org_near_its_limit_and_acts_on_it(
    gateway: Gateway, browser_page: Any, tmp_path: Path
) -> None:
    page = browser_page
    busy, busy_key = gateway.new_tenant("northwind-busy", limits={"requests": 10})
    calm, _ = gateway.new_tenant("contoso-calm", limits={"requests": 1000})
    for _ in range(8):
        assert ingest(gateway, busy_key) == 200

    page.goto(f"{gateway.admin_url}/ui/orgs")
    assert page.url.endswith("/ui/login")  # no session: sent to sign-in
    page.fill("#token", gateway.token)
    page.click("#sign-in")
    page.wait_for_url("**/ui/orgs")
    rows = page.locator("tbody tr[data-org]")
    assert rows.first.get_attribute("data-org") == busy  # closest to a limit first
    assert "requests 80%" in rows.first.inner_text()
    assert page.locator(f'tr[data-org="{calm}"]').count() == 1
    shot(page, "console-orgs.png", tmp_path)

    page.click(f'tr[data-org="{busy}"] a')
    page.wait_for_url(f"**/ui/orgs/{busy}")
    assert page.locator("svg#chart-requests polyline.used").count() == 1
    assert page.locator("svg#chart-requests line.limit").count() == 1
    assert "requests 80%" in page.locator("main").inner_text()
    shot(page, "console-org.png", tmp_path)

    page.click("#suspend")
    page.wait_for_url(f"**/ui/orgs/{busy}")
    assert page.inner_text("#state") == "suspended"
    assert ingest(gateway, busy_key) == 402
    page.click("#lift")
    page.wait_for_url(f"**/ui/orgs/{busy}")
    assert page.inner_text("#state") == "active"
    assert ingest(gateway, busy_key) == 200

    page.fill("#key-name", "from-the-console")
    page.click("#create-key")
    new_key = page.inner_text("#new-key code")
    assert new_key.startswith("igk_") and ingest(gateway, new_key) == 200
    key_id = gateway.admin("GET", f"/admin/orgs/{busy}/keys").json()["keys"][-1]["id"]
    page.click(f"#revoke-{key_id}")
    page.wait_for_url(f"**/ui/orgs/{busy}")
    assert new_key not in page.content()  # shown once
    assert ingest(gateway, new_key) == 401

    # A change without the CSRF token, with the session cookie: refused, nothing changed.
    forged = page.request.post(
        f"{gateway.admin_url}/ui/orgs/{busy}/suspension", form={"suspended": "true"}
    )
    assert forged.status == 403
    assert gateway.admin("GET", f"/admin/orgs/{busy}").json()["suspended"] is False

    page.click("#sign-out")
    page.wait_for_url("**/ui/login")
    page.goto(f"{gateway.admin_url}/ui/orgs")
    assert page.url.endswith("/ui/login")
