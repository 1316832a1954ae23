"""Undo a request's Content-Encoding under a hard output limit (gzip, deflate, zstd).

Every decoder stops one byte past its budget, so a compression bomb costs at most the
limit in memory and time. ``inflate(..., limit)`` returns None when the output would be
larger than ``limit``, so a caller can try a small budget first and hand the rest elsewhere.
"""

from __future__ import annotations

import io
import zlib

import zstandard

from gateway.errors import BadRequest, TooLarge, UnsupportedMediaType

IDENTITY = frozenset({"", "identity"})
_GZIP = frozenset({"gzip"})
_DEFLATE = frozenset({"deflate", "zlib"})
_ZSTD = frozenset({"zstd"})
ENCODINGS = IDENTITY | _GZIP | _DEFLATE | _ZSTD
_GZIP_WBITS = 16 + zlib.MAX_WBITS
# Each extra member costs a copy of the rest of the body (zlib's unused_data).
_MAX_MEMBERS = 16
# zstd frames name their own window; a larger one than this is refused, not allocated.
_MAX_ZSTD_WINDOW = 1 << 27


def coding(header: bytes | None) -> str:
    """The one content coding named by a Content-Encoding header, checked.

    Spelled exactly as the backend matches it (the Collector's lookup is case-sensitive, and
    older ones passed unknown codings through undecoded): a body must never be decoded here
    and read raw there.
    """
    name = "" if header is None else header.decode("latin-1").strip(" \t")
    if name in ENCODINGS:
        return name
    if "," in name:
        raise UnsupportedMediaType("one content coding at most (gzip, deflate or zstd)")
    raise UnsupportedMediaType("content encoding must be gzip, deflate, zlib, zstd or identity")


def inflate(body: bytes, name: str, limit: int) -> bytes:
    """The body decoded; ``TooLarge`` when the output exceeds ``limit`` bytes."""
    if name in IDENTITY:
        if len(body) > limit:
            raise TooLarge
        return body
    if name in _GZIP:
        return _zlib_members(body, _GZIP_WBITS, limit, "gzip")
    if name in _DEFLATE:
        # RFC 9110 "deflate" is the zlib format, as the Collector reads it (not raw deflate).
        return _zlib_members(body, zlib.MAX_WBITS, limit, "deflate", members=1)
    return _unzstd(body, limit)


def _zlib_members(
    body: bytes, wbits: int, limit: int, what: str, members: int = _MAX_MEMBERS
) -> bytes:
    view = memoryview(body)
    parts: list[bytes] = []
    size = 0
    start = 0
    for _ in range(members):
        inflater = zlib.decompressobj(wbits=wbits)
        try:
            # One byte over the budget is enough to know the output is too large.
            part = inflater.decompress(view[start:], limit - size + 1)
        except zlib.error as exc:
            raise BadRequest(f"malformed {what} body") from exc
        size += len(part)
        if size > limit:
            raise TooLarge
        if not inflater.eof:
            raise BadRequest(f"truncated {what} body")
        parts.append(part)
        rest = len(inflater.unused_data)
        if not rest:
            return parts[0] if len(parts) == 1 else b"".join(parts)
        start = len(body) - rest
    raise BadRequest(f"{what} body has trailing data or more than {members} members")


def _unzstd(body: bytes, limit: int) -> bytes:
    decompressor = zstandard.ZstdDecompressor(max_window_size=_MAX_ZSTD_WINDOW)
    try:
        # First bound the output (a bomb stops one byte past the limit) ...
        with decompressor.stream_reader(io.BytesIO(body), read_across_frames=True) as reader:
            if len(reader.read(limit + 1)) > limit:
                raise TooLarge
        # ... then decode frame by frame, which is what says whether each frame is whole.
        parts: list[bytes] = []
        rest = body
        for _ in range(_MAX_MEMBERS):
            frame = decompressor.decompressobj()
            parts.append(frame.decompress(rest))
            if not frame.eof:
                raise BadRequest("truncated zstd body")
            rest = frame.unused_data
            if not rest:
                return b"".join(parts)
    except zstandard.ZstdError as exc:
        raise BadRequest("malformed zstd body") from exc
    raise BadRequest(f"zstd body has more than {_MAX_MEMBERS} frames")
