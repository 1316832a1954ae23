"""`python -m loadtest.cachemem` runs end to end; memory is reported, never asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.smoke

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_cachemem_reports_each_point_and_the_bound_holds(tmp_path: Path) -> None:
    out = tmp_path / "cachemem.json"
    command = [sys.executable, "-m", "loadtest.cachemem", "--keys", "3000", "--max-keys",
               "5000", "--bounded", "1000", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    points = {p["max_keys"]: p for p in json.loads(out.read_text())}
    assert points[5000]["cached"] == 3000 and points[1000]["cached"] == 1000
    assert all(p["rss_mb"] > 0 and p["keys_seen"] == 3000 for p in points.values())
