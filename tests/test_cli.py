"""The CLI wraps the admin operations against the store, and quickstart serves a demo org."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.cli import main


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else err)


@pytest.fixture
def store_args(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.delenv("GATEWAY_STORE_URL", raising=False)
    return ["--store", f"sqlite:///{tmp_path}/gw.db", "--data-dir", str(tmp_path)]


def test_orgs_keys_usage_and_suspend(
    capsys: pytest.CaptureFixture[str], store_args: list[str]
) -> None:
    code, org = run(capsys, "orgs", "create", "--name", "acme", "--requests", "10", *store_args)
    assert code == 0 and org["limits"] == {"requests": 10}
    code, org = run(capsys, "orgs", "update", org["id"], "--items", "5", *store_args)
    assert org["limits"] == {"requests": 10, "items": 5}
    code, key = run(capsys, "keys", "create", org["id"], *store_args)
    assert code == 0 and key["key"].startswith("igk_")
    code, usage = run(capsys, "usage", org["id"], *store_args)
    assert usage["usage"] == {"requests": 0, "bytes": 0, "items": 0}
    code, suspended = run(capsys, "suspend", org["id"], "--reason", "fraud", *store_args)
    assert (suspended["suspended"], suspended["suspension_reason"]) == (True, "fraud")
    code, lifted = run(capsys, "suspend", org["id"], "--lift", *store_args)
    assert lifted["suspended"] is False
    code, revoked = run(capsys, "keys", "revoke", key["id"], *store_args)
    assert revoked == {"revoked": key["id"]}


def test_keys_are_created_with_a_name_and_limits_of_their_own(
    capsys: pytest.CaptureFixture[str], store_args: list[str]
) -> None:
    code, org = run(capsys, "orgs", "create", "--name", "acme", *store_args)
    code, key = run(
        capsys, "keys", "create", org["id"], "--name", "ci", "--items", "500",
        "--limit", "traces.items=100", *store_args,
    )  # fmt: skip
    assert code == 0
    assert (key["name"], key["limits"]) == ("ci", {"items": 500, "traces.items": 100})
    assert key["key"].startswith("igk_") and key["org_id"] == org["id"]
    code, err = run(capsys, "keys", "create", org["id"], "--limit", "spans", *store_args)
    assert code == 2 and "METER=N" in err


def test_errors_are_clear_and_exit_non_zero(
    capsys: pytest.CaptureFixture[str], store_args: list[str]
) -> None:
    code, err = run(capsys, "usage", "org_missing", *store_args)
    assert code == 1 and "not found" in err
    code, err = run(capsys, "orgs", "create", "--name", "x", "--requests", "-1", *store_args)
    assert code == 2 and "limits.requests must be an integer from 0" in err
    code, err = run(capsys, "usage", "org_x", "--store", "ftp://nowhere")
    assert code == 2 and "GATEWAY_STORE_URL" in err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_quickstart_prints_how_to_send_and_the_batch_lands_in_the_sink(tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "quickstart",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--admin-port",
            str(admin),
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines: list[str] = []
        assert proc.stdout is not None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "Uvicorn running" in line and sum("Uvicorn running" in x for x in lines) == 2:
                break
        text = "".join(lines)
        key = next(x.split()[2] for x in lines if "ingest key:" in x)
        org_id = next(x.split()[2] for x in lines if "demo org:" in x)
        assert f"OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:{port}" in text
        assert f"Authorization=Bearer {key}" in text
        r = httpx.post(
            f"http://127.0.0.1:{port}/v1/logs",
            content=b"{}",
            headers={"content-type": "application/json", "authorization": f"Bearer {key}"},
        )
        assert r.status_code == 200
        token = (tmp_path / "data" / "admin-token").read_text()
        usage = httpx.get(
            f"http://127.0.0.1:{admin}/admin/orgs/{org_id}/usage",
            headers={"authorization": f"Bearer {token}"},
        ).json()
        assert usage["usage"]["requests"] == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=15)
    assert proc.returncode == 0
    assert len(list((tmp_path / "data" / "sink" / org_id / "logs").iterdir())) == 1


def test_plans_apply_makes_the_catalog_match_a_file(
    capsys: pytest.CaptureFixture[str], store_args: list[str], tmp_path: Path
) -> None:
    path = tmp_path / "plans.toml"
    path.write_text(
        '[plans.pro]\nlimits = { items = 1000, "traces.items" = 600 }\nrate_requests = 50\n'
        "grant_minor = 2000\n\n[plans.team]\nlimits = { requests = 10 }\n"
    )
    code, applied = run(capsys, "plans", "apply", str(path), *store_args)
    assert code == 0 and applied["applied"] == ["pro", "team"]
    code, listed = run(capsys, "plans", "list", *store_args)
    pro = next(p for p in listed["plans"] if p["name"] == "pro")
    assert pro["limits"] == {"items": 1000, "traces.items": 600} and pro["rate_requests"] == 50
    path.write_text("[plans.pro]\nlimits = { items = 5 }\n")
    code, applied = run(capsys, "plans", "apply", str(path), *store_args)
    assert "team" in applied["deleted"]
    path.write_text("[plans.pro]\nlimits = { spans = 5 }\n")
    code, err = run(capsys, "plans", "apply", str(path), *store_args)
    assert code == 2 and "limits.spans" in err
    code, listed = run(capsys, "plans", "list", *store_args)
    assert [p["limits"] for p in listed["plans"] if p["name"] == "pro"] == [{"items": 5}]
