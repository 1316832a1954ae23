"""The fakes every test shares: a settable clock, a store that fails on demand, and an
in-memory upstream behind the ``Upstream`` Protocol (what httpx's MockTransport is to httpx)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.errors import StoreError
from gateway.ingest.upstream import Headers, UpstreamResponse

ACCEPTED = UpstreamResponse(200, [(b"content-type", b"application/json")], b"{}")


class Clock:
    """A clock a test moves by hand: ``clock()`` is ``clock.now``."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FlakyStore:
    """Delegates to a real store; ``down = True`` makes every call fail like a dead server,
    ``failing`` names the methods that fail alone, ``delay`` slows every call and ``delays``
    the methods it names, and ``calls`` counts each method's calls."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.down = False
        self.failing: set[str] = set()
        self.delay = 0.0
        self.delays: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.inner, name)
        if not asyncio.iscoroutinefunction(target):
            return target

        async def call(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] = self.calls.get(name, 0) + 1
            delay = self.delays.get(name, self.delay)
            if delay:
                await asyncio.sleep(delay)
            if (self.down and name not in {"open", "close"}) or name in self.failing:
                raise StoreError("store is down (injected)")
            return await target(*args, **kwargs)

        return call


@dataclass(frozen=True, slots=True)
class Forwarded:
    """One request the gateway forwarded upstream."""

    url: str
    headers: Headers
    body: bytes

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for n, v in self.headers if n.lower() == name), None)


class MemoryUpstream:
    """Records every request and answers ``answer``; or what ``handler`` returns for it (a
    handler may raise, e.g. ``UpstreamTimeout``, as ``HttpUpstream`` maps library errors)."""

    def __init__(self, handler: Callable[[Forwarded], UpstreamResponse] | None = None) -> None:
        self.handler = handler
        self.answer = ACCEPTED
        self.requests: list[Forwarded] = []

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def forward(self, url: str, headers: Headers, body: bytes) -> UpstreamResponse:
        request = Forwarded(url, headers, body)
        self.requests.append(request)
        return self.answer if self.handler is None else self.handler(request)
