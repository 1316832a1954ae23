"""Fault injection for tests: a real store that can be made to fail like a dead server."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.errors import StoreError


class FlakyStore:
    """Delegates to a real store; ``down = True`` makes every call fail like a dead server."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.down = False
        self.delay = 0.0
        self.calls: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.inner, name)
        if not asyncio.iscoroutinefunction(target):
            return target

        async def call(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] = self.calls.get(name, 0) + 1
            if self.delay:
                await asyncio.sleep(self.delay)
            if self.down and name not in {"open", "close"}:
                raise StoreError("store is down (injected)")
            return await target(*args, **kwargs)

        return call
