"""Decode an ingest request body and count its items, refusing malformed or oversized bodies.

The media type picks the format, the content coding is undone under a hard output limit
(``gateway.ingest.decoding``) and the items are counted as the backend will ingest them
(``gateway.ingest.counting``). A body that decodes to no more than ``BodyLimits.inline`` bytes is
counted on the event loop; a larger one is decoded and counted in a worker process, so one
tenant's costly body never stalls the others. Every refusal is a ``ClientError`` whose
message never echoes the payload.
"""

from __future__ import annotations

import asyncio
import functools
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, TypeVar

from gateway.errors import PayloadTooLarge, TooLarge, UnsupportedMediaType
from gateway.ingest.counting import count
from gateway.ingest.cutting import cut, encoded
from gateway.ingest.decoding import IDENTITY, coding, inflate

SIGNALS = ("traces", "logs", "metrics", "logpush")
_T = TypeVar("_T")

_OTLP_MEDIA = {"application/x-protobuf": "protobuf", "application/json": "json"}
# "" is a missing or empty Content-Type: log shippers often send none.
_LOGPUSH_MEDIA = frozenset(
    {
        "",
        "application/x-ndjson",
        "application/jsonl",
        "application/json",
        "application/x-jsonlines",
        "text/plain",
    }
)


@dataclass(frozen=True, slots=True)
class BodyLimits:
    max_received: int = 16 * 1024 * 1024
    max_decompressed: int = 64 * 1024 * 1024
    max_items: int = 1_000_000
    inline: int = 256 * 1024  # decoded bodies up to this are counted on the event loop


@dataclass(frozen=True, slots=True)
class Payload:
    format: str
    size: int
    items: int


@dataclass(frozen=True, slots=True)
class Cut:
    """The first items of a batch: the body to forward (in the request's content coding) and
    what it counts, counted again from the cut body itself."""

    body: bytes
    payload: Payload


def media_format(signal: str, content_type: bytes | None) -> str:
    """The body format for ``signal`` named by a Content-Type header, parameters ignored."""
    media = "" if content_type is None else _token(content_type.split(b";", 1)[0])
    if signal == "logpush":
        if media in _LOGPUSH_MEDIA:
            return "ndjson"
        raise UnsupportedMediaType("logpush expects newline-delimited JSON")
    if signal not in SIGNALS:
        raise ValueError(f"unknown signal {signal!r}")
    try:
        return _OTLP_MEDIA[media]
    except KeyError as exc:
        raise UnsupportedMediaType(
            f"{signal} expects application/x-protobuf or application/json"
        ) from exc


def decompress(body: bytes, content_encoding: bytes | None, limits: BodyLimits) -> bytes:
    """The body with its Content-Encoding (gzip, deflate, zstd) undone."""
    try:
        return inflate(body, coding(content_encoding), limits.max_decompressed)
    except TooLarge:
        raise PayloadTooLarge(
            f"decompressed body exceeds {limits.max_decompressed} bytes"
        ) from None


def count_items(signal: str, fmt: str, data: bytes, max_items: int = 1_000_000) -> int:
    """Spans, log records or metric data points in an OTLP body; NDJSON records."""
    return count(signal, fmt, data, max_items)


def inspect(
    signal: str,
    content_type: bytes | None,
    content_encoding: bytes | None,
    body: bytes,
    limits: BodyLimits,
) -> Payload:
    """The whole inspection in this thread: format, decoded size and items."""
    fmt = media_format(signal, content_type)
    if len(body) > limits.max_received:
        raise PayloadTooLarge(f"body exceeds {limits.max_received} bytes")
    data = decompress(body, content_encoding, limits)
    return Payload(fmt, len(data), count(signal, fmt, data, limits.max_items))


def _inspect_coded(
    signal: str, fmt: str, name: str, body: bytes, max_items: int, max_decompressed: int
) -> tuple[int, int]:
    """In the worker process: (decoded size, items)."""
    try:
        data = inflate(body, name, max_decompressed)
    except TooLarge:
        raise PayloadTooLarge(f"decompressed body exceeds {max_decompressed} bytes") from None
    return len(data), count(signal, fmt, data, max_items)


def _cut_coded(
    signal: str, fmt: str, name: str, body: bytes, keep: int, max_items: int, limit: int
) -> tuple[bytes, int, int]:
    """The cut, in this thread or the worker: (body as forwarded, decoded size, items)."""
    part = cut(signal, fmt, inflate(body, name, limit), keep)
    return encoded(part, name), len(part), count(signal, fmt, part, max_items)


class PayloadInspector:
    """Inspects bodies: small ones inline, larger ones in one worker process (started lazily)."""

    def __init__(self, limits: BodyLimits) -> None:
        self.limits = limits
        self._pool: ProcessPoolExecutor | None = None
        self.inspected = 0
        self.offloaded = 0

    async def inspect(
        self, signal: str, content_type: bytes | None, content_encoding: bytes | None, body: bytes
    ) -> Payload:
        limits = self.limits
        self.inspected += 1
        fmt = media_format(signal, content_type)
        name = coding(content_encoding)
        if len(body) > limits.max_received:
            raise PayloadTooLarge(f"body exceeds {limits.max_received} bytes")
        if len(body) <= limits.inline:
            try:
                data = inflate(body, name, limits.inline)
            except TooLarge:
                pass
            else:
                return Payload(fmt, len(data), count(signal, fmt, data, limits.max_items))
        elif name in IDENTITY and len(body) > limits.max_decompressed:
            raise PayloadTooLarge(f"decompressed body exceeds {limits.max_decompressed} bytes")
        size, items = await self._offload(_inspect_coded, signal, fmt, name, body, limits.max_items)
        return Payload(fmt, size, items)

    async def cut(
        self,
        signal: str,
        content_type: bytes | None,
        content_encoding: bytes | None,
        body: bytes,
        inspected: Payload,
        keep: int,
    ) -> Cut:
        """The inspected batch with its first ``keep`` items only."""
        name = coding(content_encoding)
        args = (signal, inspected.format, name, body, keep, self.limits.max_items)
        if inspected.size <= self.limits.inline:
            forwarded, size, items = _cut_coded(*args, self.limits.inline)
        else:
            forwarded, size, items = await self._offload(_cut_coded, *args)
        return Cut(forwarded, Payload(inspected.format, size, items))

    async def _offload(self, work: Callable[..., _T], *args: Any) -> _T:
        if self._pool is None:
            # spawn: a fork of a running event loop (and its threads) is not safe.
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(max_workers=1, mp_context=context)
        self.offloaded += 1
        loop = asyncio.get_running_loop()
        try:
            job = functools.partial(work, *args, self.limits.max_decompressed)
            return await loop.run_in_executor(self._pool, job)
        except BrokenProcessPool as exc:
            # The worker died on this body (out of memory): refuse it, start afresh next time.
            self._pool = None
            raise PayloadTooLarge("body too costly to count") from exc

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


def _token(header: bytes) -> str:
    return header.decode("latin-1").strip().lower()
