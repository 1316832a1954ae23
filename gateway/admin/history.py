"""``GET .../usage/history``: an org's or a key's usage per hour or per day, from the store's
hourly buckets, as a dense series (hours or days without usage are 0)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.errors import BadRequest
from gateway.store.base import HistoryStore
from policies.forecast import WINDOW_HOURS, forecast
from policies.model import Period, is_quota_meter, key_meter

STEPS = {"hour": 3600, "day": 86400}
DEFAULT_SPAN = {"hour": timedelta(hours=24), "day": timedelta(days=30)}
MAX_POINTS = 5000


async def history(
    store: HistoryStore,
    org_id: str,
    query: Mapping[str, str],
    now: datetime,
    key_id: str | None = None,
) -> dict[str, Any]:
    """The series the query asks for: ``meter`` (required), ``step``, ``from`` and ``to``."""
    unknown = set(query) - {"meter", "step", "from", "to"}
    if unknown:
        raise BadRequest(f"unknown query parameter {sorted(unknown)[0]!r}")
    meter = query.get("meter", "")
    if not meter or "/" in meter or not is_quota_meter(meter):
        raise BadRequest("meter must be a meter: requests, bytes, items, credit, traces.items, ...")
    step = query.get("step", "hour")
    if step not in STEPS:
        raise BadRequest("step must be hour or day")
    size = STEPS[step]
    try:
        end = _moment(query, "to", now)
        start = _moment(query, "from", end - DEFAULT_SPAN[step])
        first = int(start.timestamp()) // size * size
        last = int(end.timestamp())
        _iso(first), _iso(last)  # both must be times a point can be named by
    except (OverflowError, ValueError, OSError):
        raise BadRequest("from and to must be times from 1970 to 9999") from None
    if first < 0:
        raise BadRequest("from and to must be times from 1970 to 9999")
    if first >= last:
        raise BadRequest("from must be before to")
    if -(-(last - first) // size) > MAX_POINTS:
        raise BadRequest(f"at most {MAX_POINTS} points: a shorter span or step=day")
    stored = key_meter(key_id, meter) if key_id is not None else meter
    hours = await store.usage_history(org_id, stored, first, last)
    totals: dict[int, int] = {}
    for hour, used in hours:
        slot = hour // size * size
        totals[slot] = totals.get(slot, 0) + used
    points = [[_iso(t), totals.get(t, 0)] for t in range(first, last, size)]
    return {"meter": meter, "step": step, "points": points}


def _moment(query: Mapping[str, str], name: str, default: datetime) -> datetime:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an ISO 8601 time, e.g. 2026-12-01T00:00:00Z") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()


async def with_forecasts(
    store: HistoryStore,
    org_id: str,
    view: dict[str, Any],
    period: Period,
    now: datetime,
    key_id: str | None = None,
) -> dict[str, Any]:
    """The usage view with a ``forecast`` on each limited meter (``policies.forecast``)."""
    at = now.timestamp()
    for meter, entry in view["meters"].items():
        if entry.get("limit") is None:
            continue
        stored = key_meter(key_id, meter) if key_id is not None else meter
        since = max(period.start.timestamp(), at - (WINDOW_HOURS + 1) * 3600)
        hours = dict(await store.usage_history(org_id, stored, since, at + 1))
        found = forecast(
            entry["used"],
            entry["limit"],
            hours,
            at,
            period.start.timestamp(),
            period.end.timestamp(),
        )
        exhausted = found.exhausted_at
        entry["forecast"] = {
            "rate_per_hour": found.rate_per_hour,
            "projected": found.projected,
            "exhausted_at": None if exhausted is None else exhausted.isoformat(),
        }
    return view
