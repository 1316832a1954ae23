"""Reading a request body whole, under a size limit and a deadline, for every listener.

Ingest, webhooks and admin all read bodies through ``BodyDeadlines``, so no unauthenticated
client can hold a worker or memory by sending slowly.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from gateway.errors import Disconnected, PayloadTooLarge
from gateway.types import Receive


async def read_body(receive: Receive, limit: int, declared: int | None) -> bytes:
    if declared is not None and declared > limit:
        raise PayloadTooLarge("request body is larger than the limit")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge("request body is larger than the limit")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def replaying(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands an app the body already read, then the client's own messages."""
    replayed = False

    async def replay() -> dict[str, Any]:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return dict(await receive())

    return replay


class BodyDeadlines:
    """Ends body reads that take longer than the timeout (slow clients), with one sweeper task
    per second instead of a timer per request: the common read costs two dict operations."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._reading: dict[asyncio.Task[Any], float] = {}
        self._expired: set[asyncio.Task[Any]] = set()
        self._sweeper: asyncio.Task[None] | None = None

    async def read(self, receive: Receive, limit: int, declared: int | None) -> bytes:
        task = asyncio.current_task()
        assert task is not None
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())
        self._reading[task] = time.monotonic() + self.timeout
        try:
            return await read_body(receive, limit, declared)
        except asyncio.CancelledError:
            if task in self._expired:
                self._expired.discard(task)
                task.uncancel()
                raise TimeoutError from None
            raise
        finally:
            self._reading.pop(task, None)

    async def _sweep(self) -> None:
        while self._reading:
            await asyncio.sleep(min(1.0, self.timeout))
            now = time.monotonic()
            for task, deadline in list(self._reading.items()):
                if deadline <= now and task not in self._expired:
                    self._expired.add(task)
                    task.cancel()
