"""The ingest listener: a plain ASGI dispatcher. OTLP and logpush go through the
MeteringMiddleware to the ReverseProxy; provider webhooks to the WebhookEndpoint; health
checks are answered here."""

from __future__ import annotations

from gateway.billing.webhooks import WebhookEndpoint
from gateway.ingest.metering import signal_for
from gateway.ingest.proxy import ReverseProxy
from gateway.ingest.usage_view import KeyUsageEndpoint
from gateway.responses import send_json, send_text
from gateway.runtime import Runtime
from gateway.types import Receive, Scope, Send


class IngestApp:
    """The ingest listener: health checks here, everything else through the gates."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        proxy = ReverseProxy(
            runtime.upstream,
            runtime.settings.upstream_url,
            runtime.sink,
            runtime.metrics.upstream_seconds,
        )
        # --no-gates: forwarding alone, to measure what the gates cost.
        self.metered = runtime.middleware(proxy) if runtime.settings.gates else proxy
        self.usage = (
            KeyUsageEndpoint(
                runtime.admission, runtime.store, runtime.usage, runtime.clock, runtime.timer
            )
            if runtime.settings.gates
            else None
        )
        self.webhooks = WebhookEndpoint(
            runtime.store,
            runtime.metrics,
            runtime.invalidate_org,
            runtime.settings,
            read_body=runtime.bodies.read,
            clock=runtime.clock,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan_noop(receive, send)
            return
        path = scope["path"]
        if path == "/healthz":
            await send_text(send, 200, "ok")
        elif path == "/readyz":
            ok = await self.runtime.ready()
            await send_text(send, 200 if ok else 503, "ready" if ok else "store unreachable")
        elif path == "/v1/usage" and self.usage is not None:
            await self.usage(scope, receive, send)
        elif signal_for(path) is not None:
            await self.metered(scope, receive, send)
        elif path.startswith("/webhooks/"):
            await self.webhooks(scope, receive, send)
        else:
            await send_json(send, 404, {"error": "not_found"})


async def _lifespan_noop(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
