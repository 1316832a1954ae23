"""The console's pages as HTML, rendered by the gateway itself: no scripts, no fonts, no CDN.

Every value from the store goes through ``esc``. Charts are inline SVG drawn here; the one
stylesheet is ``/ui/static/console.css``, so the pages keep to ``default-src 'self'``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from html import escape
from typing import Any

CHART_WIDTH, CHART_HEIGHT, CHART_PAD = 640, 200, 36


def esc(value: object) -> str:
    return escape("" if value is None else str(value), quote=True)


def number(value: object) -> str:
    return "unlimited" if value is None else f"{value:,}" if isinstance(value, int) else esc(value)


def page(title: str, body: str, *, csrf: str | None = None) -> str:
    """A whole page; signed in (``csrf`` given), with the navigation and the sign-out form."""
    nav = ""
    if csrf is not None:
        nav = (
            '<nav><a href="/ui/orgs">Orgs</a> <a href="/ui/plans">Plans</a> '
            '<a href="/ui/notifications">Notifications</a>'
            f'<form method="post" action="/ui/logout" class="inline">{hidden(csrf)}'
            '<button type="submit" id="sign-out">Sign out</button></form></nav>'
        )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(title)} · ingest gateway</title>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="stylesheet" href="/ui/static/console.css"></head>'
        f"<body>{nav}<main><h1>{esc(title)}</h1>{body}</main></body></html>"
    )


def hidden(csrf: str) -> str:
    return f'<input type="hidden" name="csrf" value="{esc(csrf)}">'


def sign_in(error: str | None = None) -> str:
    message = f'<p class="error" role="alert">{esc(error)}</p>' if error else ""
    form = (
        f'{message}<form method="post" action="/ui/login" class="card">'
        '<label>Admin token <input type="password" name="token" id="token" required '
        'autocomplete="current-password"></label>'
        '<button type="submit" id="sign-in">Sign in</button></form>'
    )
    return page("Sign in", form)


def usage_bar(meter: str, used: int, limit: int | None) -> str:
    """A bar of ``used`` against ``limit`` with its percentage (none without a limit)."""
    if not limit:
        return f'<div class="bar none"><span>{esc(meter)}: {number(used)}</span></div>'
    share = used / limit
    level = "over" if share >= 1 else "near" if share >= 0.8 else "ok"
    width = min(100.0, 100 * share)
    return (
        f'<div class="bar {level}" title="{esc(meter)}: {used:,} of {limit:,}">'
        f'<svg viewBox="0 0 100 8" preserveAspectRatio="none" aria-hidden="true">'
        f'<rect class="track" x="0" y="0" width="100" height="8"></rect>'
        f'<rect class="fill" x="0" y="0" width="{width:.1f}" height="8"></rect></svg>'
        f"<span>{esc(meter)} {100 * share:.0f}%</span></div>"
    )


def closeness(meters: Mapping[str, Mapping[str, Any]]) -> float:
    """How close an org is to a limit: the largest used / limit of its limited meters."""
    shares = [m["used"] / m["limit"] for m in meters.values() if m.get("limit")]
    return max(shares, default=0.0)


def orgs_table(rows: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]], query: str) -> str:
    """Each (org, usage view), closest to a limit first."""
    search = (
        '<form method="get" action="/ui/orgs" class="search"><input type="search" name="q" '
        f'id="search" value="{esc(query)}" placeholder="name or id">'
        '<button type="submit">Search</button></form>'
    )
    ordered = sorted(rows, key=lambda pair: -closeness(pair[1]["meters"]))
    lines = []
    for org, view in ordered:
        bars = "".join(
            usage_bar(meter, entry["used"], entry["limit"])
            for meter, entry in view["meters"].items()
            if entry.get("limit")
        )
        state = "suspended" if org["suspended"] or org["billing_suspended"] else "active"
        lines.append(
            f'<tr data-org="{esc(org["id"])}"><td><a href="/ui/orgs/{esc(org["id"])}">'
            f'{esc(org["name"])}</a><div class="id">{esc(org["id"])}</div></td>'
            f"<td>{esc(org['plan'])}</td><td>{esc(org['payment_status'])}</td>"
            f'<td class="{state}">{state}</td><td>{bars or "no limits"}</td></tr>'
        )
    table = (
        "<table><thead><tr><th>Org</th><th>Plan</th><th>Payment</th><th>State</th>"
        f"<th>Usage against limits</th></tr></thead><tbody>{''.join(lines)}</tbody></table>"
    )
    return search + (table if lines else "<p>No org matches.</p>")


def chart(
    meter: str,
    points: Sequence[tuple[str, int]],
    limit: int | None,
    projected: int | None,
    period: tuple[str, str, int],
) -> str:
    """Cumulative daily usage of one meter over the period (``period``: its first and last
    day and how many days it has) as an SVG line, with the limit as a line and the forecast
    as a dashed line from today's total to what the period's end projects."""
    totals, running = [], 0
    for _, used in points:
        running += used
        totals.append(running)
    top = max([*totals, limit or 0, projected or 0, 1])
    inner_w, inner_h = CHART_WIDTH - 2 * CHART_PAD, CHART_HEIGHT - 2 * CHART_PAD
    count = max(1, period[2] - 1, len(totals) - 1)

    def x(i: float) -> float:
        return CHART_PAD + inner_w * i / count

    def y(v: float) -> float:
        return CHART_HEIGHT - CHART_PAD - inner_h * v / top

    parts = [
        f'<svg class="chart" id="chart-{esc(meter)}" viewBox="0 0 {CHART_WIDTH} {CHART_HEIGHT}"'
        f' role="img" aria-label="{esc(meter)} per day over the period">',
        f'<line class="axis" x1="{CHART_PAD}" y1="{y(0):.1f}" x2="{x(count):.1f}"'
        f' y2="{y(0):.1f}"/>',
    ]
    if totals:
        path = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(totals))
        parts.append(f'<polyline class="used" points="{path}"/>')
    if limit:
        parts.append(
            f'<line class="limit" x1="{CHART_PAD}" y1="{y(limit):.1f}" x2="{x(count):.1f}"'
            f' y2="{y(limit):.1f}"/><text x="{CHART_PAD + 4}" y="{y(limit) - 4:.1f}">limit '
            f"{limit:,}</text>"
        )
    if projected is not None and totals:
        parts.append(
            f'<line class="forecast" x1="{x(len(totals) - 1):.1f}" y1="{y(totals[-1]):.1f}"'
            f' x2="{x(count):.1f}" y2="{y(projected):.1f}"/>'
        )
    parts.append(
        f'<text x="{CHART_PAD}" y="{CHART_HEIGHT - 8}">{esc(period[0][:10])}</text>'
        f'<text x="{x(count) - 70:.1f}" y="{CHART_HEIGHT - 8}">{esc(period[1][:10])}</text>'
    )
    parts.append("</svg>")
    return "".join(parts)


def table(head: Iterable[str], rows: Iterable[Iterable[str]], empty: str = "None.") -> str:
    """A table of cells already escaped (or built of escaped parts)."""
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    if not body:
        return f"<p>{esc(empty)}</p>"
    header = "".join(f"<th>{esc(h)}</th>" for h in head)
    return f"<table><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>"


def post_button(action: str, csrf: str, label: str, fields: Mapping[str, str], ident: str) -> str:
    inputs = "".join(
        f'<input type="hidden" name="{esc(n)}" value="{esc(v)}">' for n, v in fields.items()
    )
    return (
        f'<form method="post" action="{esc(action)}" class="inline">{hidden(csrf)}{inputs}'
        f'<button type="submit" id="{esc(ident)}">{esc(label)}</button></form>'
    )


def org_actions(org: Mapping[str, Any], csrf: str, plans: Iterable[str]) -> str:
    """An org's id and state with the suspend or lift button, the plan and limit forms."""
    org_id, suspended = org["id"], org["suspended"]
    state = "suspended" if suspended or org["billing_suspended"] else "active"
    action = f"/ui/orgs/{org_id}"
    toggle = post_button(
        f"{action}/suspension",
        csrf,
        "Lift suspension" if suspended else "Suspend",
        {"suspended": "false" if suspended else "true"},
        "lift" if suspended else "suspend",
    )
    options = "".join(
        f'<option value="{esc(p)}"{" selected" if p == org["plan"] else ""}>{esc(p)}</option>'
        for p in sorted({*plans, org["plan"]})
    )
    return (
        f'<p class="id">{esc(org_id)}</p><p>Plan <b>{esc(org["plan"])}</b> · payment '
        f'<b>{esc(org["payment_status"])}</b> · <b class="{state}" id="state">{state}</b> '
        f'{toggle}</p><p><form method="post" action="{esc(action)}/plan" class="inline">'
        f'{hidden(csrf)}<select name="plan" id="plan">{options}</select>'
        '<button type="submit" id="change-plan">Change plan</button></form> '
        f'<form method="post" action="{esc(action)}/limit" class="inline">{hidden(csrf)}'
        '<input name="meter" id="limit-meter" placeholder="meter" required>'
        '<input name="value" id="limit-value" placeholder="number, empty: none, plan">'
        '<button type="submit" id="set-limit">Set limit</button></form></p>'
    )


def key_form(org_id: str, csrf: str) -> str:
    return (
        f'<form method="post" action="/ui/orgs/{esc(org_id)}/keys" class="inline">'
        f'{hidden(csrf)}<input name="name" id="key-name" placeholder="key name">'
        '<button type="submit" id="create-key">Create key</button></form>'
    )


def new_key(plaintext: str | None) -> str:
    """A key just created: its plaintext, this once."""
    if not plaintext:
        return ""
    notice = '<p class="secret" id="new-key">New key, shown this once: '
    return f"{notice}<code>{esc(plaintext)}</code></p>"
