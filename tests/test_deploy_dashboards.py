"""The Grafana dashboard and the Prometheus alert rules use only metrics the gateway exports,
and the rules are valid for Prometheus itself (promtool, installed by scripts/test)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway.admin.app import build_admin_app
from gateway.runtime import Runtime
from gateway.settings import Settings
from gateway.store.memory import MemoryStore

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
DASHBOARD = DEPLOY / "grafana" / "ingest-gateway.json"
RULES = DEPLOY / "prometheus" / "alerts.yaml"
TOKEN = "admin-token-for-dashboards"
METRIC = re.compile(r"\bgateway_[a-z_]+\b")
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum")}


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_exprs() -> list[str]:
    return [t["expr"] for panel in dashboard()["panels"] for t in panel["targets"]]


def rules() -> list[dict[str, Any]]:
    loaded = yaml.safe_load(RULES.read_text())
    return [rule for group in loaded["groups"] for rule in group["rules"]]


async def exported(tmp_path: Path) -> set[str]:
    """Every series name a gateway's /metrics can show, from its TYPE lines."""
    settings = Settings(data_dir=tmp_path, key_secret="k" * 32, admin_token=TOKEN)
    runtime = Runtime(settings, store=MemoryStore(), spool_dir=None)
    await runtime.start()
    try:
        transport = httpx.ASGITransport(app=build_admin_app(runtime))
        async with httpx.AsyncClient(transport=transport, base_url="http://admin") as client:
            answer = await client.get("/metrics", headers={"authorization": f"Bearer {TOKEN}"})
    finally:
        await runtime.close()
    assert answer.status_code == 200
    names = set()
    for line in answer.text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            base = name.removesuffix("_total") if kind == "counter" else name
            names |= {base, *(base + suffix for suffix in SUFFIXES.get(kind, ()))}
    return names


async def test_every_metric_the_dashboard_and_the_rules_use_is_exported(tmp_path: Path) -> None:
    names = await exported(tmp_path)
    used = {
        m for expr in dashboard_exprs() + [r["expr"] for r in rules()] for m in METRIC.findall(expr)
    }
    assert used, "no gateway metric found in the dashboard or the rules"
    assert used <= names, sorted(used - names)
    # What the issue asks the dashboard to show, each by its metric.
    for wanted in (
        "gateway_requests_total",
        "gateway_fail_open_admissions_total",
        "gateway_store_breaker_open",
        "gateway_store_seconds_bucket",
        "gateway_upstream_seconds_bucket",
        "gateway_spool_pending_batches",
        "gateway_reservations_in_flight",
        "gateway_notifications_total",
    ):
        assert any(wanted in expr for expr in dashboard_exprs()), wanted


def test_the_dashboard_imports_with_a_prometheus_data_source_of_the_importers_choice() -> None:
    board = dashboard()
    assert [i["name"] for i in board["__inputs"]] == ["DS_PROMETHEUS"]
    assert board["uid"] == "ingest-gateway" and board["panels"]
    for panel in board["panels"]:
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert all(t["expr"] and t["refId"] for t in panel["targets"]), panel["title"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))


def test_an_alert_fires_for_each_failure_an_operator_must_see() -> None:
    by_name = {rule["alert"]: rule for rule in rules()}
    expected = {
        "GatewayStoreBreakerOpen": "gateway_store_breaker_open",
        "GatewayFailOpenAdmissions": "gateway_fail_open_admissions_total",
        "GatewaySpoolGrowing": "gateway_spool_pending_batches",
        "GatewayUpstreamErrors": "upstream_unavailable",
        "GatewayNotificationsFailing": "gateway_notifications_total",
    }
    assert set(by_name) == set(expected)
    for name, needle in expected.items():
        assert needle in by_name[name]["expr"], name
        assert by_name[name]["labels"]["severity"] in ("warning", "critical")
        assert by_name[name]["annotations"]["summary"]


def test_promtool_accepts_the_rules() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI") == "true":
            pytest.fail("promtool is missing: scripts/test installs Debian's prometheus package")
        pytest.skip("promtool is not installed (Debian's prometheus package has it)")
    done = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 5 rules found" in done.stdout
