"""MeteringMiddleware: the gates as one ASGI middleware in front of any ASGI app.

The gateway's reverse proxy is one such app; an ingest service written in Python can
mount the same middleware in front of its own handlers. The inner app sees the
request body, the org in ``X-Gateway-Org-Id`` and the admission in
``scope["gateway.admission"]``; the ingest key and any client copy of the org header
are gone. A response outside 2xx from the inner app refunds the request's usage.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

from gateway.errors import BadRequest, ClientError, Disconnected, Uncuttable
from gateway.ingest.body import BodyDeadlines, replaying
from gateway.ingest.keys import extract_key, strip_key_param
from gateway.ingest.outcomes import REFUSALS, Outcome
from gateway.ingest.partial import MAX_ANSWER, partial_answer, rejected_items
from gateway.ingest.payload import BodyLimits, Cut, Payload, PayloadInspector
from gateway.limits.admission import AdmissionControl, Authorized
from gateway.limits.budgets import Admission
from gateway.metrics import Metrics
from gateway.responses import send_refusal
from gateway.types import ASGIApp, Message, Receive, Scope, Send
from policies.decisions import Refusal
from policies.model import Quantities

log = logging.getLogger("gateway.ingest")

OTLP_PATHS = {"/v1/traces": "traces", "/v1/logs": "logs", "/v1/metrics": "metrics"}
LOGPUSH_PREFIX = "/v1/logpush/"
METHOD_NOT_ALLOWED = Refusal(405, "method_not_allowed")
REQUEST_TIMEOUT = Refusal(408, "request_timeout")
# Tenant headers a client may not set: whatever it sent is replaced by the real org.
_TENANT_HEADERS = frozenset({b"x-gateway-org-id", b"x-scope-orgid", b"x-tenant-id"})
_DROPPED = frozenset({b"x-ingest-key"}) | _TENANT_HEADERS
_BODY_HEADERS = frozenset({b"content-type", b"content-encoding", b"content-length"})
_SOURCE = re.compile(r"[A-Za-z0-9_.-]{1,128}")


# Partial admission: what an OTLP signal's items are called, and how often a cut is retried.
_ITEM_NAMES = {"traces": "spans", "logs": "log records", "metrics": "data points"}
_CUT_TRIES = 3


def _cut_message(signal: str, rejected: int, refusal: Refusal) -> str:
    """The partial success's message: how many items were cut, and the limit that cut them."""
    d = refusal.detail
    scope = f"key {d['key_id']}" if d.get("scope") == "key" else "the organization"
    overage = f" (and its overage of {d['overage']})" if d.get("overage") else ""
    return (
        f"{rejected} {_ITEM_NAMES[signal]} not accepted: the {d.get('meter')} limit of "
        f"{d.get('limit')}{overage} for {scope} is reached this period; it resets "
        f"{d.get('resets_at')}"
    )


def _dropped(name: bytes) -> bool:
    """Underscore spellings too: a CGI-style upstream reads ``X_Gateway_Org_Id`` the same."""
    return name in _DROPPED or (b"_" in name and name.replace(b"_", b"-") in _DROPPED)


def signal_for(path: str) -> str | None:
    """The signal of an ingest route; only exact routes count (a logpush source is one safe
    path segment), so no other path of the upstream can be reached through the gates."""
    signal = OTLP_PATHS.get(path)
    if signal is None and path.startswith(LOGPUSH_PREFIX):
        source = path[len(LOGPUSH_PREFIX) :]
        if _SOURCE.fullmatch(source) and source not in {".", ".."}:
            return "logpush"
    return signal


class _RequestHeaders:
    """One pass over the client's headers: what the gates need, and what may go upstream."""

    __slots__ = ("conflict", "content_encoding", "content_type", "declared", "named", "protobuf")

    def __init__(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.content_type: bytes | None = None
        self.content_encoding: bytes | None = None
        self.declared: int | None = None
        self.conflict: str | None = None
        self.named: set[bytes] = set()
        for name, value in headers:
            if name == b"content-type":
                if self.content_type is not None:
                    # Valid JSON can be valid protobuf too: the backend must not read it otherwise.
                    self.conflict = "more than one Content-Type header"
                self.content_type = value
            elif name == b"content-encoding":
                if self.content_encoding is not None:
                    self.conflict = "more than one Content-Encoding header"
                self.content_encoding = value
            elif name == b"content-length" and value.isdigit():
                # More digits than any limit has: too large, without parsing a huge number.
                self.declared = int(value) if len(value) < 19 else 2**63
            elif name == b"connection":
                self.named.update(t.strip().lower() for t in value.split(b","))
                if not self.named.isdisjoint(_BODY_HEADERS):
                    # Dropped on the way, the backend would read the body other than we counted.
                    self.conflict = "Connection may not name a header that describes the body"
        self.protobuf = self.content_type is not None and self.content_type.startswith(
            b"application/x-protobuf"
        )

    def floor(self, signal: str) -> Quantities:
        """The least this request can count: one request, and the bytes of a plain body."""
        declared = self.declared or 0
        plain = self.content_encoding is None or self.content_encoding.strip() in (b"", b"identity")
        least = declared if plain else min(declared, 1)
        return Quantities(1, least, min(declared, 1), signal=signal)

    def forwardable(self, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """The client's headers less the key, tenant headers and what its Connection names;
        the gateway's own headers are added after this, so no client header can remove them."""
        named = self.named
        return [
            (n, v)
            for n, v in headers
            if n != b"authorization" and n != b"connection" and n not in named and not _dropped(n)
        ]


class _Answer:
    """The start of a 2xx answer's body, to read a partial success from (never all of it)."""

    __slots__ = ("body", "content_type", "encoding")

    def __init__(self) -> None:
        self.body = b""
        self.content_type: bytes | None = None
        self.encoding: bytes | None = None

    def start(self, message: Message) -> None:
        for name, value in message.get("headers", ()):
            name = name.lower()
            if name == b"content-type":
                self.content_type = value
            elif name == b"content-encoding":
                self.encoding = value

    def add(self, chunk: bytes) -> None:
        if chunk and len(self.body) + len(chunk) <= MAX_ANSWER:
            self.body += chunk


@dataclass(frozen=True, slots=True)
class _Part:
    """A batch cut by partial admission: what was forwarded, and what the client is told."""

    cut: Cut
    rejected: int
    message: str


class _Exchange:
    """One request's answer: a refusal decided by the gates, or what the inner app said (held
    back for a cut batch, whose answer is the gateway's partial success)."""

    __slots__ = ("answer", "held", "inner", "refused", "send_client", "status")

    def __init__(self, send: Send) -> None:
        self.send_client = send
        self.status = 0
        self.answer = _Answer()
        self.inner: Scope | None = None
        self.refused: Outcome | None = None
        self.held: list[Message] | None = None

    async def refuse(self, refusal: Refusal, style: str) -> Outcome:
        # Decided before it is sent: a client gone meanwhile does not change the outcome.
        self.refused = Outcome.of(refusal.code)
        await send_refusal(self.send_client, refusal, style)
        return self.refused

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.answer.start(message)
        elif 200 <= self.status < 300:
            self.answer.add(message.get("body", b""))
        if self.held is None:
            await self.send_client(message)
        else:
            self.held.append(message)

    async def answer_part(self, signal: str, part: _Part) -> None:
        """A 2xx from the upstream becomes a partial success naming the items cut as well as
        the ones it rejected; any other answer goes to the client as it came."""
        held, self.held = self.held or [], None
        if not 200 <= self.status < 300:
            for message in held:
                await self.send_client(message)
            return
        answer = self.answer
        content_type, body = partial_answer(
            signal,
            part.cut.payload.format,
            part.rejected,
            part.message,
            (answer.content_type, answer.encoding, answer.body),
            part.cut.payload.items,
        )
        headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
        await self.send_client({"type": "http.response.start", "status": 200, "headers": headers})
        await self.send_client({"type": "http.response.body", "body": body})

    def outcome(self, failed: bool) -> Outcome:
        """The refusal, or what the inner app's answer says (the proxy may have named it); an
        exception before either is an internal error."""
        if self.refused is not None:
            return self.refused
        if self.inner is None:
            return Outcome.INTERNAL_ERROR
        named = self.inner.get("gateway.outcome")
        if named:
            return Outcome.of(named)
        outcome = Outcome.of_answer(self.status, failed)
        if outcome is Outcome.FORWARDED and "gateway.part" in self.inner:
            return Outcome.PARTIALLY_FORWARDED
        return outcome


class MeteringMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        admission: AdmissionControl,
        metrics: Metrics,
        *,
        limits: BodyLimits | None = None,
        body_timeout: float = 30.0,
        inspector: PayloadInspector | None = None,
        partial_admission: bool = False,
    ) -> None:
        self.app = app
        self.partial_admission = partial_admission  # an org's own setting wins
        self.admission = admission
        self.metrics = metrics
        self.limits = limits or BodyLimits()
        self.body_timeout = body_timeout
        self.inspector = inspector or PayloadInspector(self.limits)
        self._counters: dict[tuple[str, Outcome], Any] = {}
        self._reads = BodyDeadlines(body_timeout)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        signal = signal_for(scope["path"])
        if signal is None:
            await self.app(scope, receive, send)
            return
        exchange = _Exchange(send)
        outcome = Outcome.INTERNAL_ERROR
        try:
            outcome = await self._admit(scope, receive, signal, exchange)
        except BaseException:
            outcome = exchange.outcome(failed=True)
            raise
        finally:
            # The one place a request is counted: every path, an exception's too, ends here.
            self._count(signal, outcome)
            routing = scope.get("gateway.routing")
            if routing is not None and outcome in REFUSALS:
                self.admission.refused(routing, outcome.value)

    async def _admit(
        self, scope: Scope, receive: Receive, signal: str, exchange: _Exchange
    ) -> Outcome:
        request = _RequestHeaders(scope["headers"])
        style = "protobuf" if request.protobuf else ("status" if signal != "logpush" else "json")

        if scope["method"] != "POST":
            return await exchange.refuse(METHOD_NOT_ALLOWED, style)
        try:
            key = extract_key(scope["headers"], scope["query_string"], signal == "logpush")
        except BadRequest as exc:
            return await exchange.refuse(exc.refusal(), style)
        routing = await self.admission.identify(key)
        if isinstance(routing, Refusal):
            return await exchange.refuse(routing, style)
        scope["gateway.routing"] = routing  # for its refusals' count and its log lines
        auth = self.admission.admits(routing)
        if isinstance(auth, Refusal):
            return await exchange.refuse(auth, style)
        if request.conflict is not None:
            return await exchange.refuse(BadRequest(request.conflict).refusal(), style)
        # What the key, the routing and the declared length decide comes before any parsing.
        early = self.admission.precheck(auth, request.floor(signal))
        if early is not None:
            return await exchange.refuse(early, style)
        try:
            body = await self._reads.read(receive, self.limits.max_received, request.declared)
            payload = await self.inspector.inspect(
                signal, request.content_type, request.content_encoding, body
            )
        except ClientError as exc:
            return await exchange.refuse(exc.refusal(), style)
        except TimeoutError:
            return await exchange.refuse(REQUEST_TIMEOUT, style)
        except Disconnected:
            log.debug("client disconnected before its %s body arrived", signal)
            return Outcome.CLIENT_DISCONNECTED
        quantities = Quantities(1, payload.size, payload.items, signal=signal)
        admission = await self.admission.admit(auth, quantities)
        part = None
        if isinstance(admission, Refusal) and self._cuts(auth, signal):
            admission, part = await self._admit_part(
                auth, admission, signal, request, body, payload
            )
        if isinstance(admission, Refusal):
            return await exchange.refuse(admission, style)
        return await self._forward(scope, receive, signal, request, body, admission, exchange, part)

    def _cuts(self, auth: Authorized, signal: str) -> bool:
        setting = auth.routing.partial_admission
        return signal in _ITEM_NAMES and (self.partial_admission if setting is None else setting)

    async def _admit_part(
        self,
        auth: Authorized,
        refusal: Refusal,
        signal: str,
        request: _RequestHeaders,
        body: bytes,
        payload: Payload,
    ) -> tuple[Admission, _Part] | tuple[Refusal, None]:
        """The first items of a batch over an items limit, admitted as far as they fit: each
        try cuts to what the store's last answer says is left, until one is admitted (another
        items meter, or another request meanwhile, may leave less)."""
        keep = payload.items
        for _ in range(_CUT_TRIES):
            fit = self.admission.items_fit(auth, refusal, signal)
            if not 0 < fit < keep:
                break
            keep = fit
            try:
                cut = await self.inspector.cut(
                    signal, request.content_type, request.content_encoding, body, payload, keep
                )
            except (Uncuttable, ClientError):
                break  # refused whole, as without partial admission
            if cut.payload.items != keep:
                log.error("a cut of %s kept %d items, not %d", signal, cut.payload.items, keep)
                break
            outcome = await self.admission.admit_part(
                auth, Quantities(1, cut.payload.size, keep, signal=signal)
            )
            if isinstance(outcome, Admission):
                rejected = payload.items - keep
                return outcome, _Part(cut, rejected, _cut_message(signal, rejected, refusal))
            refusal = outcome
        return refusal, None

    async def _forward(
        self,
        scope: Scope,
        receive: Receive,
        signal: str,
        request: _RequestHeaders,
        body: bytes,
        admission: Admission,
        exchange: _Exchange,
        part: _Part | None = None,
    ) -> Outcome:
        org_header = admission.routing.org_id.encode()
        inner = dict(scope)
        inner["headers"] = [
            *request.forwardable(scope["headers"]),
            (b"x-gateway-org-id", org_header),
            (b"x-scope-orgid", org_header),
        ]
        inner["query_string"] = strip_key_param(scope["query_string"])
        inner["gateway.admission"] = admission
        inner["gateway.body"] = body
        inner["gateway.signal"] = signal
        if part is not None:
            body = inner["gateway.body"] = part.cut.body
            length = str(len(body)).encode()
            # The upstream's answer is read and rewritten: it must come in a coding we undo.
            inner["headers"] = [
                (n, length if n == b"content-length" else v)
                for n, v in inner["headers"]
                if n != b"accept-encoding"
            ]
            inner["gateway.part"] = part.rejected
            exchange.held = []
        exchange.inner = inner
        try:
            await self.app(inner, replaying(body, receive), exchange.send)
        finally:
            answer = exchange.answer
            if not 200 <= exchange.status < 300:
                self.admission.refund(admission)
            elif answer.body:
                # An OTLP partial success: the org pays only for what the backend accepted.
                rejected = rejected_items(signal, answer.content_type, answer.encoding, answer.body)
                if rejected:
                    self.admission.refund_items(admission, rejected)
        if part is not None:
            await exchange.answer_part(signal, part)
            if 200 <= exchange.status < 300:
                self.metrics.partial_rejected.labels(signal).inc(part.rejected)
        return exchange.outcome(failed=False)

    def _count(self, signal: str, outcome: Outcome) -> None:
        counter = self._counters.get((signal, outcome))
        if counter is None:
            counter = self._counters[(signal, outcome)] = self.metrics.requests.labels(
                signal, outcome.value
            )
        counter.inc()
