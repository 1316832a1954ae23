"""uvicorn's httptools protocol, with a deadline for request headers (slowloris).

uvicorn times out idle keep-alive connections only after a response; a client that opens a
connection and sends its headers a byte at a time would hold it forever. Every connection
gets ``header_timeout`` seconds from the start of each request to finish its headers; one
sweeper per process checks once a second, so a request costs two dict operations.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class _Deadlines:
    def __init__(self) -> None:
        self.pending: dict[HttpToolsProtocol, float] = {}
        self.sweeper: asyncio.Task[None] | None = None

    def watch(self, protocol: HttpToolsProtocol, timeout: float) -> None:
        self.pending[protocol] = time.monotonic() + timeout
        if self.sweeper is None or self.sweeper.done():
            self.sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def _sweep(self) -> None:
        while self.pending:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for protocol, deadline in list(self.pending.items()):
                if deadline <= now:
                    self.pending.pop(protocol, None)
                    if not protocol.transport.is_closing():
                        protocol.transport.close()


_deadlines = _Deadlines()


def guarded(header_timeout: float) -> type[HttpToolsProtocol]:
    """An httptools protocol class that closes connections slower than ``header_timeout``."""

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            _deadlines.watch(self, header_timeout)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            _deadlines.watch(self, header_timeout)

        def on_headers_complete(self) -> None:
            _deadlines.pending.pop(self, None)
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            _deadlines.pending.pop(self, None)
            super().connection_lost(exc)

    return GuardedHttpToolsProtocol
