"""Every answer the gateway writes itself: refusals on every listener, and the few small
JSON or text bodies (health, webhook acknowledgements).

An OTLP request's refusal is a google.rpc.Status (protobuf, or its JSON mapping for
OTLP/JSON) with a readable message and an ErrorInfo detail whose reason is our stable code and
whose metadata holds the details; logpush, webhooks and the admin API get a JSON body
``{"error": code, ...}``. The header-deadline protocol writes its 408/414/431 from here too.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from google.protobuf.any_pb2 import Any as AnyProto
from google.rpc import code_pb2, error_details_pb2, status_pb2
from starlette.responses import Response

from gateway.types import Send
from policies.decisions import Refusal

_GRPC_CODES = {
    400: code_pb2.INVALID_ARGUMENT,
    401: code_pb2.UNAUTHENTICATED,
    402: code_pb2.RESOURCE_EXHAUSTED,
    405: code_pb2.UNIMPLEMENTED,
    408: code_pb2.DEADLINE_EXCEEDED,
    413: code_pb2.INVALID_ARGUMENT,
    415: code_pb2.INVALID_ARGUMENT,
    429: code_pb2.RESOURCE_EXHAUSTED,
    503: code_pb2.UNAVAILABLE,
    504: code_pb2.DEADLINE_EXCEEDED,
}
JSON_TYPE = b"application/json"
PROTOBUF_TYPE = b"application/x-protobuf"


# How a refusal is written: a Status in protobuf, a Status in JSON, or {"error": code}.
PROTOBUF, STATUS_JSON, PLAIN_JSON = "protobuf", "status", "json"
_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
_DOMAIN = "ingest-gateway"


def encode(refusal: Refusal, style: str | bool) -> tuple[bytes, bytes]:
    """(content type, body) for a refusal; ``style`` True/False is protobuf/plain JSON."""
    if style is True:
        style = PROTOBUF
    metadata = {k: str(v) for k, v in refusal.detail.items()}
    code = _GRPC_CODES.get(refusal.status, code_pb2.UNKNOWN)
    if style == PROTOBUF:
        info = error_details_pb2.ErrorInfo(reason=refusal.code, domain=_DOMAIN, metadata=metadata)
        detail = AnyProto()
        detail.Pack(info)
        status = status_pb2.Status(code=code, message=refusal.message, details=[detail])
        return PROTOBUF_TYPE, status.SerializeToString()
    if style == STATUS_JSON:
        info_json = {"@type": _ERROR_INFO, "reason": refusal.code, "domain": _DOMAIN}
        if metadata:
            info_json["metadata"] = metadata  # type: ignore[assignment]
        body = {"code": code, "message": refusal.message, "details": [info_json]}
        return JSON_TYPE, json.dumps(body, separators=(",", ":")).encode()
    return JSON_TYPE, json.dumps(refusal.body(), separators=(",", ":")).encode()


def refusal_headers(
    refusal: Refusal, content_type: bytes, length: int
) -> list[tuple[bytes, bytes]]:
    headers = [(b"content-type", content_type), (b"content-length", str(length).encode())]
    if refusal.retry_after is not None:
        headers.append((b"retry-after", str(refusal.retry_after).encode()))
    if refusal.status == 408:
        # RFC 9110 15.5.9: the rest of a half-sent request cannot be trusted; end the connection.
        headers.append((b"connection", b"close"))
    return headers


async def send_refusal(send: Send, refusal: Refusal, style: str | bool = PLAIN_JSON) -> None:
    content_type, body = encode(refusal, style)
    headers = refusal_headers(refusal, content_type, len(body))
    await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def refusal_response(refusal: Refusal) -> Response:
    """The same refusal as a Starlette response, for the admin app's handlers."""
    content_type, body = encode(refusal, PLAIN_JSON)
    response = Response(body, status_code=refusal.status)
    response.raw_headers = refusal_headers(refusal, content_type, len(body))
    return response


def refusal_bytes(refusal: Refusal) -> bytes:
    """A whole HTTP/1.1 response that ends its connection, for a protocol that answers before
    any ASGI app runs."""
    content_type, body = encode(refusal, PLAIN_JSON)
    lines = [f"HTTP/1.1 {refusal.status} {HTTPStatus(refusal.status).phrase}".encode()]
    headers = refusal_headers(refusal, content_type, len(body))
    if (b"connection", b"close") not in headers:
        headers.append((b"connection", b"close"))
    lines += [name + b": " + value for name, value in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


async def send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    raw = json.dumps(body, separators=(",", ":")).encode()
    await _send(send, status, JSON_TYPE, raw)


async def send_text(send: Send, status: int, text: str) -> None:
    await _send(send, status, b"text/plain", text.encode())


async def _send(send: Send, status: int, content_type: bytes, body: bytes) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def decode_status(body: bytes) -> tuple[int, str, dict[str, str]]:
    """(grpc code, reason, metadata) of a google.rpc.Status body; for clients and tests."""
    status = status_pb2.Status.FromString(body)
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return status.code, info.reason, dict(info.metadata)
    return status.code, status.message, {}


def decode_status_json(body: bytes) -> tuple[int, str, dict[str, str]]:
    """(grpc code, reason, metadata) of a google.rpc.Status in JSON; for clients and tests."""
    status = json.loads(body)
    for detail in status.get("details", []):
        if detail.get("@type") == _ERROR_INFO:
            return status["code"], detail["reason"], detail.get("metadata", {})
    return status["code"], status.get("message", ""), {}
