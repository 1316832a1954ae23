"""The one I/O boundary towards ingest backends: ``Upstream.forward``.

``HttpUpstream`` forwards over a pooled aiohttp session (measured: aiohttp is an order
of magnitude faster than httpx here, see the README); ``LocalSink`` writes batches to
a folder for the quickstart. Library errors are mapped to UpstreamUnavailable or
UpstreamTimeout at this boundary.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import aiohttp

from gateway.errors import UpstreamTimeout, UpstreamUnavailable

Headers = list[tuple[str, str]]
# Response headers worth passing back to the client; the server sets the others.
_PASSED_BACK = frozenset({"content-type", "content-encoding", "retry-after"})


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


class Upstream(Protocol):
    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def forward(self, url: str, headers: Headers, body: bytes) -> UpstreamResponse: ...


class HttpUpstream:
    def __init__(
        self,
        *,
        timeout: float = 10.0,
        connect_timeout: float = 2.0,
        max_connections: int = 256,
        max_response: int = 4 * 1024 * 1024,
    ) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=connect_timeout)
        self._max_connections = max_connections
        self._max_response = max_response
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self._max_connections, ttl_dns_cache=60, enable_cleanup_closed=True
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def forward(self, url: str, headers: Headers, body: bytes) -> UpstreamResponse:
        assert self._session is not None, "HttpUpstream.start() was not awaited"
        try:
            # Never follow a redirect: an allowed upstream must not send a batch elsewhere.
            async with self._session.post(
                url, data=body, headers=headers, allow_redirects=False
            ) as resp:
                payload = await resp.content.read(self._max_response)
                passed = [
                    (k.lower().encode(), v.encode("latin-1"))
                    for k, v in resp.headers.items()
                    if k.lower() in _PASSED_BACK
                ]
                return UpstreamResponse(resp.status, passed, payload)
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamTimeout("upstream did not answer in time") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamUnavailable(f"upstream unreachable: {type(exc).__name__}") from exc


class LocalSink:
    """Writes every accepted batch under ``<directory>/<org>/<signal>/`` as it was received."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._seq = itertools.count()

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def forward(self, url: str, headers: Headers, body: bytes) -> UpstreamResponse:
        lookup = {k.lower(): v for k, v in headers}
        org = lookup.get("x-gateway-org-id", "unknown")
        signal = url.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0] or "data"
        content_type = lookup.get("content-type", "")
        suffix = ".pb" if "protobuf" in content_type else ".json"
        if lookup.get("content-encoding", "").lower() == "gzip":
            suffix += ".gz"
        name = f"{time.time_ns()}-{next(self._seq)}{suffix}"
        folder = self.directory / org / signal
        await asyncio.to_thread(_write, folder, name, body)
        if "protobuf" in content_type:
            # An empty Export*ServiceResponse: full success.
            return UpstreamResponse(200, [(b"content-type", b"application/x-protobuf")], b"")
        return UpstreamResponse(200, [(b"content-type", b"application/json")], b"{}")


def _write(folder: Path, name: str, body: bytes) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(body)
