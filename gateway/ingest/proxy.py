"""ReverseProxy: the ASGI app behind MeteringMiddleware that forwards a batch untouched."""

from __future__ import annotations

import time

from prometheus_client import Histogram

from gateway.errors import UpstreamError
from gateway.ingest.metering import OTLP_PATHS
from gateway.ingest.outcomes import Outcome
from gateway.ingest.upstream import Upstream
from gateway.limits.budgets import Admission
from gateway.responses import PLAIN_JSON, PROTOBUF, PROTOBUF_TYPE, STATUS_JSON, send_refusal
from gateway.types import Receive, Scope, Send

# RFC 9110 hop-by-hop headers, plus what the client library sets for the new hop.
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"content-length",
        b"x-forwarded-for",
        b"forwarded",
    }
)
# Client claims about earlier hops that an upstream might trust; the gateway sets none of them.
_SPOOFABLE = frozenset({b"x-real-ip", b"x-forwarded-host", b"x-forwarded-proto"})


def _spoofable(name: bytes) -> bool:
    return name in _SPOOFABLE or (b"_" in name and name.replace(b"_", b"-") in _SPOOFABLE)


class ReverseProxy:
    def __init__(
        self,
        upstream: Upstream,
        default_url: str | None,
        sink: Upstream,
        upstream_seconds: Histogram | None = None,
    ) -> None:
        self._upstream = upstream
        self._default = default_url.rstrip("/") if default_url else None
        self._sink = sink
        self._seconds = upstream_seconds

    def _observe(self, started: float) -> None:
        if self._seconds is not None:
            self._seconds.observe(time.perf_counter() - started)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        admission: Admission | None = scope.get("gateway.admission")
        body = scope.get("gateway.body")
        if body is None:
            body = await _read_all(receive)
            if body is None:
                return
        base = (admission.routing.upstream if admission else None) or self._default
        client = self._upstream if base else self._sink
        url = (base or "sink") + scope["path"]
        if scope["query_string"]:
            url += "?" + scope["query_string"].decode("latin-1")
        headers = _forward_headers(scope)
        started = time.perf_counter()
        try:
            response = await client.forward(url, headers, body)
        except UpstreamError as exc:
            self._observe(started)
            scope["gateway.outcome"] = Outcome.of(exc.code)
            await send_refusal(send, exc.refusal(), _style(scope))
            return
        self._observe(started)
        response_headers = [
            *response.headers,
            (b"content-length", str(len(response.body)).encode()),
        ]
        await send(
            {"type": "http.response.start", "status": response.status, "headers": response_headers}
        )
        await send({"type": "http.response.body", "body": response.body})


def _style(scope: Scope) -> str:
    content_type = next((v for n, v in scope["headers"] if n == b"content-type"), b"")
    if content_type.startswith(PROTOBUF_TYPE):
        return PROTOBUF
    return STATUS_JSON if scope["path"] in OTLP_PATHS else PLAIN_JSON


async def _read_all(receive: Receive) -> bytes | None:
    """The whole body, or None when the client went away first (never forward a part)."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _forward_headers(scope: Scope) -> list[tuple[str, str]]:
    raw = scope["headers"]
    named_hop: set[bytes] = set()
    forwarded_for: list[str] = []
    forwarded: list[str] = []
    for name, value in raw:
        if name == b"connection":
            named_hop.update(t.strip().lower() for t in value.split(b","))
        elif name == b"x-forwarded-for":
            forwarded_for.append(value.decode("latin-1"))
        elif name == b"forwarded":
            forwarded.append(value.decode("latin-1"))
    headers = [
        (n.decode("latin-1"), v.decode("latin-1"))
        for n, v in raw
        if n not in _HOP_BY_HOP and n not in named_hop and not _spoofable(n)
    ]
    client = scope.get("client")
    if client:
        peer = client[0]
        headers.append(("x-forwarded-for", ", ".join([*forwarded_for, peer])))
        # RFC 7239: an IPv6 node is quoted and bracketed; earlier elements are kept in order.
        node = f'"[{peer}]"' if ":" in peer else peer
        proto = scope.get("scheme", "http")
        headers.append(("forwarded", ", ".join([*forwarded, f"for={node};proto={proto}"])))
    return headers
