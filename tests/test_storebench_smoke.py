"""`python -m loadtest.storebench --quick` runs end to end on the machine's PostgreSQL and
Redis; timings are reported, never asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.services import postgres_url, redis_url

pytestmark = pytest.mark.smoke

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_quick_storebench_measures_every_point_and_finds_usage_exact(tmp_path: Path) -> None:
    postgres_url(), redis_url()  # skips without them, fails under CI
    out = tmp_path / "storebench"
    proc = subprocess.run(
        [sys.executable, "-m", "loadtest.storebench", "--quick", "--out", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(Path(f"{out}.json").read_text())
    points = {
        (r["point"]["backend"], r["point"]["orgs"], r["point"]["replicas"]) for r in report["rows"]
    }
    for backend in ("postgresql", "postgresql+redis"):
        assert {(backend, 100, 1), (backend, 1000, 1), (backend, 1000, 2)} <= points
    for row in report["rows"]:
        assert row["exact"], row
        assert row["reserve"]["per_s"] > 0 and row["flush"]["batches_per_s"] > 0
        assert row["heartbeat"]["slowest_s"] >= 0 and row["release"]["slowest_s"] >= 0
        assert row["first_flush"]["batches_per_s"] > 0
    assert any("per_batch_flush_s" in row for row in report["rows"])
    assert report["machine"]["cpu_model"] and report["config"]["flush_group"] >= 1
