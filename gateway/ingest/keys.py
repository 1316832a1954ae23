"""Ingest keys: where a request carries one, and how it is stored (a keyed hash only)."""

from __future__ import annotations

import hmac
import secrets
from urllib.parse import parse_qsl, unquote_plus

from gateway.errors import BadRequest, ConfigError

KEY_PREFIX = "igk_"
_BEARER = b"bearer "
MAX_KEY_LENGTH = 256


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def extract_key(
    headers: list[tuple[bytes, bytes]], query_string: bytes = b"", allow_query: bool = False
) -> str | None:
    """The ingest key from ``Authorization: Bearer``, ``X-Ingest-Key`` or (logpush) ``?key=``.

    Two different keys in one request are refused (``BadRequest``): which one an intermediary
    or the upstream would read depends on header order, so neither is charged."""
    found: str | None = None
    for name, value in headers:
        if name == b"authorization":
            if value[:7].lower() == _BEARER:
                found = _one(found, _clean(value[7:]))
        elif name == b"x-ingest-key":
            found = _one(found, _clean(value))
    if allow_query and query_string:
        for param, text in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
            if param == "key":
                found = _one(found, _clean(text.encode("latin-1", "replace")))
    return found


def _one(found: str | None, key: str | None) -> str | None:
    if found is not None and key is not None and key != found:
        raise BadRequest("the request carries more than one ingest key")
    return found if found is not None else key


def _clean(raw: bytes) -> str | None:
    raw = raw.strip()
    if not raw or len(raw) > MAX_KEY_LENGTH:
        return None
    return raw.decode("latin-1")


def strip_key_param(query_string: bytes) -> bytes:
    """The query string without any parameter that ``extract_key`` would read as the key.

    Names are decoded the same way (``k%65y`` is ``key``), and ``;`` separates parameters too,
    as some upstream frameworks read it, so the secret never travels upstream.
    """
    if not query_string:
        return query_string
    kept = []
    for part in query_string.split(b"&"):
        pieces = [p for p in part.split(b";") if not _names_key(p)]
        if pieces:
            kept.append(b";".join(pieces))
    return b"&".join(kept)


def _names_key(parameter: bytes) -> bool:
    """``key`` in any case and array spellings (``key[]``) too: some upstreams read those."""
    name = unquote_plus(parameter.split(b"=", 1)[0].decode("latin-1"), encoding="latin-1")
    name = name.strip().lower()
    return name == "key" or name.startswith("key[")


class KeyHasher:
    """HMAC-SHA256 with a server-side secret: a leaked table of hashes reveals no key."""

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ConfigError("the key hashing secret must be at least 16 bytes")
        self._secret = secret

    def __call__(self, key: str) -> bytes:
        return hmac.digest(self._secret, key.encode("utf-8", "surrogateescape"), "sha256")

    def __repr__(self) -> str:
        return "KeyHasher(secret=***)"
