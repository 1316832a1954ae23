"""GateMiddleware: the gates as one ASGI middleware in front of any ASGI app.

The gateway's reverse proxy is one such app; an ingest service written in Python can
mount the same middleware in front of its own handlers. The inner app sees the
request body, the org in ``X-Gateway-Org-Id`` and the admission in
``scope["gateway.admission"]``; the ingest key and any client copy of the org header
are gone. A response outside 2xx from the inner app refunds the request's usage.
"""

from __future__ import annotations

import re
from typing import Any

from gateway.body import BodyDeadlines, Disconnected
from gateway.errors import ClientError
from gateway.gates import Gates
from gateway.keys import extract_key, strip_key_param
from gateway.metrics import Metrics
from gateway.payload import BodyLimits, inspect
from gateway.responses import send_refusal
from policies.decisions import Refusal
from policies.model import Quantities

Scope = dict[str, Any]

OTLP_PATHS = {"/v1/traces": "traces", "/v1/logs": "logs", "/v1/metrics": "metrics"}
LOGPUSH_PREFIX = "/v1/logpush/"
METHOD_NOT_ALLOWED = Refusal(405, "method_not_allowed")
REQUEST_TIMEOUT = Refusal(408, "request_timeout")
# Tenant headers a client may not set: whatever it sent is replaced by the real org.
_TENANT_HEADERS = frozenset({b"x-gateway-org-id", b"x-scope-orgid", b"x-tenant-id"})
_DROPPED = frozenset({b"x-ingest-key"}) | _TENANT_HEADERS
_SOURCE = re.compile(r"[A-Za-z0-9_.-]{1,128}")


def _dropped(name: bytes) -> bool:
    """Underscore spellings too: a CGI-style upstream reads ``X_Gateway_Org_Id`` the same."""
    return name in _DROPPED or name.replace(b"_", b"-") in _DROPPED


def signal_for(path: str) -> str | None:
    """The signal of an ingest route; only exact routes count (a logpush source is one safe
    path segment), so no other path of the upstream can be reached through the gates."""
    signal = OTLP_PATHS.get(path)
    if signal is None and path.startswith(LOGPUSH_PREFIX):
        source = path[len(LOGPUSH_PREFIX) :]
        if _SOURCE.fullmatch(source) and source not in {".", ".."}:
            return "logpush"
    return signal


class GateMiddleware:
    def __init__(
        self,
        app: Any,
        gates: Gates,
        metrics: Metrics,
        *,
        limits: BodyLimits | None = None,
        body_timeout: float = 30.0,
    ) -> None:
        self.app = app
        self.gates = gates
        self.metrics = metrics
        self.limits = limits or BodyLimits()
        self.body_timeout = body_timeout
        self._counters: dict[tuple[str, str], Any] = {}
        self._reads = BodyDeadlines(body_timeout)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        signal = signal_for(scope["path"])
        if signal is None:
            await self.app(scope, receive, send)
            return
        content_type = content_encoding = declared = None
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value
            elif name == b"content-encoding":
                content_encoding = value
            elif name == b"content-length" and value.isdigit():
                # More digits than any limit has: too large, without parsing a huge number.
                declared = int(value) if len(value) < 19 else 2**63
        protobuf = content_type is not None and content_type.startswith(b"application/x-protobuf")

        if scope["method"] != "POST":
            await self._refuse(send, signal, METHOD_NOT_ALLOWED, protobuf)
            return
        key = extract_key(scope["headers"], scope["query_string"], signal == "logpush")
        auth = await self.gates.authorize(key)
        if isinstance(auth, Refusal):
            await self._refuse(send, signal, auth, protobuf)
            return
        try:
            body = await self._reads.read(receive, self.limits.max_received, declared)
            payload = inspect(signal, content_type, content_encoding, body, self.limits)
        except ClientError as exc:
            await self._refuse(send, signal, exc.refusal(), protobuf)
            return
        except TimeoutError:
            await self._refuse(send, signal, REQUEST_TIMEOUT, protobuf)
            return
        except Disconnected:
            return
        admission = await self.gates.admit(auth, Quantities(1, payload.size, payload.items))
        if isinstance(admission, Refusal):
            await self._refuse(send, signal, admission, protobuf)
            return

        org_header = admission.routing.org_id.encode()
        inner = dict(scope)
        inner["headers"] = [
            (n, v)
            for n, v in scope["headers"]
            if not _dropped(n) and not (n == b"authorization" and v[:7].lower() == b"bearer ")
        ]
        inner["headers"] += [(b"x-gateway-org-id", org_header), (b"x-scope-orgid", org_header)]
        inner["query_string"] = strip_key_param(scope["query_string"])
        inner["gateway.admission"] = admission
        inner["gateway.body"] = body
        inner["gateway.signal"] = signal

        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return dict(await receive())

        status = 0

        async def watch(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(inner, replay, watch)
        finally:
            if not 200 <= status < 300:
                self.gates.refund(admission)
            self._count(signal, "forwarded" if status < 400 else str(status))

    async def _refuse(self, send: Any, signal: str, refusal: Refusal, protobuf: bool) -> None:
        self._count(signal, refusal.code)
        await send_refusal(send, refusal, protobuf)

    def _count(self, signal: str, outcome: str) -> None:
        counter = self._counters.get((signal, outcome))
        if counter is None:
            counter = self._counters[(signal, outcome)] = self.metrics.requests.labels(
                signal, outcome
            )
        counter.inc()
