"""GET /admin/orgs/{id}/usage/history and /admin/keys/{id}/usage/history over every backend."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from tests.limits.conftest import LOGS, SPANS, Rig, tenant


async def series(rig: Rig, path: str, **query: str) -> dict[str, Any]:
    response = await rig.admin.get(path, params=query)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_the_history_sums_to_the_usage_per_meter_hour_and_day(rig: Rig) -> None:
    org_id, key = await tenant(rig, {})
    for _ in range(3):
        assert (await rig.send(key, "traces", SPANS)).status_code == 200
    assert (await rig.send(key, "logs", LOGS)).status_code == 200
    usage = await rig.usage(org_id)
    hourly = await series(rig, f"/admin/orgs/{org_id}/usage/history", meter="items")
    assert (hourly["meter"], hourly["step"]) == ("items", "hour")
    assert len(hourly["points"]) in (24, 25)  # the last 24 h, hour by hour, zeros included
    assert sum(v for _, v in hourly["points"]) == usage["usage"]["items"] == 9  # type: ignore[index]
    assert hourly["points"][-1][1] == 9
    now = datetime.now(UTC)
    assert datetime.fromisoformat(hourly["points"][-1][0]) == now.replace(
        minute=0, second=0, microsecond=0
    )
    spans = await series(rig, f"/admin/orgs/{org_id}/usage/history", meter="traces.items")
    assert sum(v for _, v in spans["points"]) == 6
    daily = await series(rig, f"/admin/orgs/{org_id}/usage/history", meter="logs.items", step="day")
    assert len(daily["points"]) in (30, 31) and daily["points"][-1][1] == 3


async def test_a_key_s_history_is_its_own_requests(rig: Rig) -> None:
    org_id, key = await tenant(rig, {})
    made = await rig.admin.post(f"/admin/orgs/{org_id}/keys", json={"name": "second"})
    second_id, second = made.json()["id"], made.json()["key"]
    await rig.send(key, "traces", SPANS)
    await rig.send(second, "traces", SPANS)
    await rig.send(second, "logs", LOGS)
    own = await series(rig, f"/admin/keys/{second_id}/usage/history", meter="items")
    assert own["key_id"] == second_id and sum(v for _, v in own["points"]) == 5
    org = await series(rig, f"/admin/orgs/{org_id}/usage/history", meter="items")
    assert sum(v for _, v in org["points"]) == 7


async def test_a_span_of_hours_and_bad_queries(rig: Rig) -> None:
    org_id, key = await tenant(rig, {})
    await rig.send(key, "traces", SPANS)
    now = datetime.now(UTC)
    start = (now - timedelta(hours=2)).isoformat()
    end = (now + timedelta(hours=1)).replace(minute=0, second=0, microsecond=0).isoformat()
    found = await series(
        rig, f"/admin/orgs/{org_id}/usage/history", meter="requests", **{"from": start, "to": end}
    )
    assert [v for _, v in found["points"]] == [0, 0, 1]
    path = f"/admin/orgs/{org_id}/usage/history"
    for query in (
        {},
        {"meter": "spans"},
        {"meter": "key/x/items"},
        {"meter": "items", "step": "minute"},
        {"meter": "items", "from": "yesterday"},
        {"meter": "items", "from": end, "to": start},
        {"meter": "items", "from": "2000-01-01T00:00:00Z"},
        {"meter": "items", "window": "1h"},
        {"meter": "items", "to": "0001-01-01T00:00:00"},
        {"meter": "items", "step": "day", "to": "0001-01-20"},
        {"meter": "items", "from": "9999-12-31T23:00:00", "to": "9999-12-31T23:59:59-14:00"},
        {"meter": "items", "from": "2026-01-01T00:00:00Z", "to": "2026-07-28T08:30:00Z"},
    ):
        response = await rig.admin.get(path, params=query)
        assert (response.status_code, response.json()["error"]) == (400, "bad_request"), query
    missing = await rig.admin.get("/admin/orgs/org_nope/usage/history", params={"meter": "items"})
    assert missing.status_code == 404


async def test_the_usage_api_forecasts_each_limited_meter_from_the_history(rig: Rig) -> None:
    org_id, key = await tenant(rig, {"items": 6, "traces.items": 1_000_000})
    for _ in range(3):
        assert (await rig.send(key, "traces", SPANS)).status_code == 200
    usage: dict[str, Any] = await rig.usage(org_id)
    meters = usage["meters"]
    assert "forecast" not in meters["requests"]  # no limit, no forecast
    at_limit = meters["items"]["forecast"]
    assert at_limit["rate_per_hour"] > 0 and at_limit["projected"] >= 6
    reached = datetime.fromisoformat(at_limit["exhausted_at"])
    assert abs((reached - datetime.now(UTC)).total_seconds()) < 60  # used up: now
    far = meters["traces.items"]["forecast"]
    assert far["rate_per_hour"] == at_limit["rate_per_hour"]  # the same 6 spans
    if far["exhausted_at"] is not None:
        assert far["exhausted_at"] <= usage["period_end"].replace("Z", "+00:00")
