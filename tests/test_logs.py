"""``GATEWAY_LOG_FORMAT=json``: one JSON object a line, with the org and the request it
concerns, and never a credential."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from gateway.errors import ConfigError
from gateway.logs import JsonFormatter, MaskingFormatter, configure, mask
from loadtest.loadgen import otlp_traces
from tests.harness import GATEWAY_BIN, Upstream, start_gateway

FIELDS = {"time", "level", "logger", "message"}


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("gateway.test", logging.WARNING, __file__, 1, message, args, None)
    for name, value in extra.items():
        setattr(made, name, value)
    return made


def test_a_json_line_has_time_level_logger_message_and_the_org() -> None:
    line = json.loads(JsonFormatter().format(record("suspended %s", "org_1", org_id="org_1")))
    assert set(line) == FIELDS | {"org_id"}
    assert line["level"] == "warning" and line["logger"] == "gateway.test"
    assert line["message"] == "suspended org_1" and line["org_id"] == "org_1"
    assert line["time"].endswith("Z") and line["time"][10] == "T"


@pytest.mark.parametrize(
    "secret",
    [
        "igk_" + "A1b2" * 10,
        "Bearer abc.def-ghi_123",
        "basic dXNlcjpwYXNzd29yZA==",
        "whsec_" + "C3d4" * 8,
        "sk_live_" + "x" * 24,
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        # Review findings: these slipped through the first pattern.
        "whsec_MfKQ9r8GKYqr+TwjUPD8/ILPZIo2LaLaSw==",
        "api_key_igk_" + "Zz9-" * 8,
        "q=%3Digk_" + "Yy8_" * 8,
        "Bearer%20igk_" + "Xx7a" * 8,
        "v0=" + "ab12" * 16,
        "v1a,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        "pdl_ntfset_01hx" + "q" * 20,
        "h1=" + "cd34" * 16,
        "postgresql://gw:hunter2-db-password@db:5432/gw#hunter2-db-password",
        "redis://:s3cret-redis-pass@cache:6379/0#s3cret-redis-pass",
    ],
)
def test_what_looks_like_a_credential_never_reaches_a_line(secret: str) -> None:
    # A URL's secret is its password (after the #); anything else is secret to its end.
    secret, _, hidden = secret.partition("#")
    for formatter in (JsonFormatter(), MaskingFormatter()):
        text = formatter.format(record("refused %s after %s", secret, "a retry"))
        assert "[masked]" in text and "a retry" in text
        for part in (hidden,) if hidden else (secret[-12:], secret[len(secret) // 2 :][:12]):
            assert part not in text, (secret, text)
    assert mask("no secret here: org_1, 402") == "no secret here: org_1, 402"


def test_an_exception_is_one_field_of_the_same_line() -> None:
    try:
        raise ValueError("boom Bearer hunter2-secret")
    except ValueError:
        made = record("failed")
        made.exc_info = sys.exc_info()
    text = JsonFormatter().format(made)
    assert "\n" not in text
    line = json.loads(text)
    assert "ValueError" in line["exception"] and "hunter2" not in line["exception"]


def test_a_log_format_other_than_text_or_json_is_refused() -> None:
    with pytest.raises(ConfigError, match="GATEWAY_LOG_FORMAT"):
        configure("info", "yaml")
    done = subprocess.run(
        [str(GATEWAY_BIN), "serve", "--store", "memory://"],
        env={"GATEWAY_LOG_FORMAT": "yaml", "GATEWAY_ADMIN_TOKEN": "a" * 32, "PATH": "/usr/bin"},
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2 and b"GATEWAY_LOG_FORMAT" in done.stderr


def test_a_json_gateway_logs_one_object_a_line_with_its_org_and_request(tmp_path: Path) -> None:
    upstream = Upstream()
    upstream.start()
    gateway = start_gateway(
        tmp_path, upstream.url, {"GATEWAY_LOG_FORMAT": "json", "GATEWAY_LOG_LEVEL": "info"}
    )
    try:
        org_id, key = gateway.new_tenant("acme")
        headers = {
            "authorization": f"Bearer {key}",
            "content-type": "application/x-protobuf",
            "x-request-id": "req-2026-12-03.1",
        }
        body, _ = otlp_traces(1024)
        with httpx.Client(timeout=10) as client:
            sent = client.post(f"{gateway.url}/v1/traces", content=body, headers=headers)
            assert sent.status_code == 200, sent.text
            wrong = {"authorization": "Bearer hunter2-not-the-admin-token"}
            refused = client.get(f"{gateway.admin_url}/admin/orgs/{org_id}", headers=wrong)
            assert refused.status_code == 401
        deadline = time.monotonic() + 10
        while "claimed the period reset" not in gateway.logs() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        gateway.terminate()
        upstream.stop()
    logs = gateway.logs()
    lines = [json.loads(text) for text in logs.splitlines() if text.strip()]
    assert lines and all(isinstance(line, dict) and FIELDS <= set(line) for line in lines)
    claimed = [line for line in lines if "claimed the period reset" in line["message"]]
    assert claimed, logs[-2000:]
    assert claimed[0]["org_id"] == org_id
    assert claimed[0]["request_id"] == "req-2026-12-03.1"
    denied = [line for line in lines if f"wrong token: GET /admin/orgs/{org_id}" in line["message"]]
    assert denied and denied[0]["org_id"] == org_id and len(denied[0]["request_id"]) == 16
    for secret in (key, gateway.token, "hunter2"):
        assert secret not in logs
