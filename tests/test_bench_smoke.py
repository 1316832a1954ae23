"""`python -m loadtest.bench --quick` runs end to end; timings are reported, never asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest.bench import RATIOS, TARGETS

pytestmark = pytest.mark.smoke

REPO_ROOT = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.mark.timeout(300)  # two encodings of each target: about a minute here
def test_quick_bench_reports_every_target_ratio_and_an_exact_limit(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    proc = subprocess.run(
        [sys.executable, "-m", "loadtest.bench", "--quick", "--out", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    report = json.loads(Path(f"{out}.json").read_text())
    size = report["config"]["sizes"][0]
    loads = {(size, "protobuf"), (size, "json")}
    rows = {(row["target"], row["size"], row["format"]): row for row in report["rows"]}
    assert set(rows) == {(t.id, *load) for t in TARGETS for load in loads}
    for target in ("direct", "starlette-httpx", "asgi-aiohttp", "gates-off", "gates-on"):
        for load in loads:
            assert rows[(target, *load)]["status"] == "ok"
            assert rows[(target, *load)]["req_per_s"] is not None
    ratios = {(r["name"], r["size"], r["format"]) for r in report["ratios"]}
    assert ratios == {(name, *load) for name, *_ in RATIOS for load in loads}

    assert report["exactness"], "no gates-on run checked its limit"
    for check in report["exactness"]:
        assert check["passed"], check
        assert check["usage_requests"] == check["generator_200s"] == check["limit"]

    assert report["p99_added"] and report["memory"]["rss_mb"] and report["cold_keys"]["keys"]
    for key in ("nproc", "cpu_model", "python", "date", "command_line"):
        assert report["machine"][key]
    assert Path(f"{out}.png").read_bytes()[:8] == PNG_SIGNATURE


@pytest.mark.timeout(300)
def test_workers_over_postgresql_report_the_shared_stores_cost_and_an_exact_limit(
    tmp_path: Path,
) -> None:
    """The workers axis (not in --quick): 2 workers on PostgreSQL, their store cost counted."""
    out = tmp_path / "workers"
    argv = ["--targets", "workers2-pg", "--seconds", "1", "--sizes", "2048"]
    argv += ["--formats", "protobuf", "--memory-keys", "50", "--cold-keys", "50"]
    proc = subprocess.run(
        [sys.executable, "-m", "loadtest.bench", *argv, "--out", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(Path(f"{out}.json").read_text())
    (row,) = [r for r in report["rows"] if r["target"] == "workers2-pg"]
    assert row["status"] == "ok" and row["req_per_s"]
    cost = row["store"]
    assert cost["requests"] > 0 and cost["pg_transactions"] > 0
    assert cost["pg_transactions_per_1k"] > 0 and cost["store_cpu_us_per_request"] >= 0
    (check,) = [c for c in report["exactness"] if c["target"] == "workers2-pg"]
    assert check["passed"], check
