"""uvicorn's httptools protocol, with a deadline and size bounds for request heads.

uvicorn times out idle keep-alive connections only after a response; a client that opens a
connection and sends its headers a byte at a time would hold it forever. Every connection
gets ``header_timeout`` seconds from the start of each request to finish its headers; one
sweeper per process checks once a second, so a request costs two dict operations.

Nor does uvicorn bound the size of a head. Here the request target and the header lines of
one request may total ``max_header_bytes`` (431), one header line may be ``max_header_line``
long (431) and so may the target (414). httptools hands over a header only once it is whole
and buffers it until then, so the raw bytes of an unfinished head are bounded too.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.errors import HeadTooLarge
from gateway.responses import refusal_bytes
from policies.decisions import Refusal


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


TOO_LARGE = (431, "header_fields_too_large")
URI_TOO_LONG = (414, "uri_too_long")
# After a refusal the rest of the head is read and dropped for this long, so that the client
# reads the answer instead of a reset (closing with unread data sends an RST).
LINGER = 1.0


def guarded(
    header_timeout: float, max_header_bytes: int = 64 * 1024, max_header_line: int = 16 * 1024
) -> type[HttpToolsProtocol]:
    """An httptools protocol class that closes connections slower than ``header_timeout`` and
    refuses heads over ``max_header_bytes`` in all or ``max_header_line`` in one line."""
    # A head still unfinished past this many raw bytes is over a bound, whatever its lines.
    raw_bound = max_header_bytes + max_header_line

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        head_size = 0
        url_size = 0
        # Raw bytes fed while the head is unfinished; None in the chunk where it began, when
        # that chunk may also hold the end of the previous request.
        head_raw: int | None = 0
        in_head = True
        refused = False

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            _deadlines.watch(self, header_timeout)

        def data_received(self, data: bytes) -> None:
            if self.refused:
                return
            self._unset_keepalive_if_required()
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserCallbackError as exc:
                if isinstance(exc.__context__, HeadTooLarge):
                    self._refuse(exc.__context__)
                else:
                    self._invalid()
                return
            except httptools.HttpParserError:
                self._invalid()
                return
            except httptools.HttpParserUpgrade:
                if self._should_upgrade():
                    self.handle_websocket_upgrade()
                else:
                    self._unsupported_upgrade_warning()
                return
            if self.in_head:
                if self.head_raw is None:
                    self.head_raw = 0
                else:
                    self.head_raw += len(data)
                    if self.head_raw > raw_bound:
                        self._refuse(HeadTooLarge(*TOO_LARGE))

        def _invalid(self) -> None:
            message = "Invalid HTTP request received."
            self.logger.warning(message)
            self.send_400_response(message)

        def on_message_begin(self) -> None:
            first = self.cycle is None
            super().on_message_begin()
            self.head_size = self.url_size = 0
            self.in_head, self.head_raw = True, 0 if first else None
            _deadlines.watch(self, header_timeout)

        def on_url(self, url: bytes) -> None:
            self.url_size += len(url)
            if self.url_size > max_header_line:
                raise HeadTooLarge(*URI_TOO_LONG)
            self._count(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            line = len(name) + 2 + len(value)  # "name: value"
            if line > max_header_line:
                raise HeadTooLarge(*TOO_LARGE)
            self._count(line + 2)  # and its CRLF
            super().on_header(name, value)

        def _count(self, size: int) -> None:
            self.head_size += size
            if self.head_size > max_header_bytes:
                raise HeadTooLarge(*TOO_LARGE)

        def on_headers_complete(self) -> None:
            self.in_head = False
            _deadlines.pending.pop(self, None)
            super().on_headers_complete()

        def _refuse(self, refusal: HeadTooLarge) -> None:
            self.in_head, self.refused = False, True
            if self.transport.is_closing():
                return
            if self.cycle is not None and not self.cycle.response_complete:
                # A pipelined head: an answer must not cut into the one being sent.
                self.transport.close()
                return
            self.transport.write(refusal_bytes(Refusal(refusal.status, refusal.code)))
            if self.transport.can_write_eof():
                self.transport.write_eof()
            _deadlines.watch(self, LINGER)

        def connection_lost(self, exc: Exception | None) -> None:
            _deadlines.pending.pop(self, None)
            super().connection_lost(exc)

    return GuardedHttpToolsProtocol
