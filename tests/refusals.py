"""Read a refusal whatever its form: google.rpc.Status in JSON or protobuf, or {"error": ...}."""

from __future__ import annotations

import json
from typing import Any

from gateway.responses import decode_status, decode_status_json


def error_of(response: Any) -> tuple[str, dict[str, Any]]:
    """(stable code, details) of a refusal response (httpx or Starlette TestClient)."""
    content_type = response.headers.get("content-type", "")
    if content_type.startswith("application/x-protobuf"):
        _, reason, metadata = decode_status(response.content)
        return reason, dict(metadata)
    body = json.loads(response.content)
    if "error" in body:
        return body["error"], {k: v for k, v in body.items() if k != "error"}
    _, reason, metadata = decode_status_json(response.content)
    return reason, dict(metadata)


def code_of(response: Any) -> str:
    return error_of(response)[0]
