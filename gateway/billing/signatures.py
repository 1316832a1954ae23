"""Verify payment-provider webhooks on the raw body, before anything is parsed or stored.

Each scheme is an HMAC-SHA256 over a timestamp and the body exactly as received:

    Stripe   Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>]   signs b"<t>." + body
    Autumn   svix-id / svix-timestamp / svix-signature          signs b"<id>.<ts>." + body
             (Svix, i.e. Standard Webhooks; webhook-* names accepted too)
    Paddle   Paddle-Signature: ts=<unix>;h1=<hex>[;h1=<hex>]   signs b"<ts>:" + body

Every configured secret is tried against every signature of the supported version, so a
secret can be rotated by configuring the old and the new one side by side. A refusal raises
`SignatureError` whose message is only a reason code; nothing here logs, and no header value,
signature, body or secret ever reaches an exception message. A misconfigured secret is the
operator's problem, not the sender's, so it raises `ConfigError` (HTTP 500), never a 400.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from gateway.errors import ConfigError, SignatureError

DEFAULT_TOLERANCE = 300

# Digits only: int() would also take "+1", " 1", "1_0" and non-ASCII digits; 15 digits keep
# the float arithmetic in the freshness check exact and overflow-free.
_UNIX_SECONDS = re.compile(r"[0-9]{1,15}")
_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")
_MESSAGE_ID = re.compile(r"[\x21-\x7e]{1,256}")
_SVIX_PREFIX = "whsec_"


@dataclass(frozen=True)
class Verified:
    """An authentic, fresh webhook. `event_id` is the svix-id for Autumn; Stripe and Paddle
    carry the event id in the body."""

    event_id: str | None = None


def parse_secrets(raw: str | None) -> tuple[str, ...]:
    """Comma-separated secrets (old and new during a rotation); blanks dropped, () when unset."""
    if raw is None:
        return ()
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def utf8_key(secret: str) -> bytes:
    """Stripe ("whsec_...") and Paddle ("pdl_ntfset_...") key the HMAC with the secret text."""
    if not secret:
        raise ConfigError("webhook secret is empty")
    return secret.encode("utf-8")


def svix_key(secret: str) -> bytes:
    """Svix keys the HMAC with the base64 after "whsec_" (or the whole secret, unprefixed)."""
    encoded = secret.removeprefix(_SVIX_PREFIX)
    try:
        # Svix hands out padded secrets, but unpadded ones are accepted by its own libraries.
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        # ``from None``: the decoder's message could quote the secret.
        raise ConfigError("Svix webhook secret is not whsec_<base64>") from None
    if not key:
        raise ConfigError("Svix webhook secret is empty")
    return key


def verify_stripe(
    body: bytes,
    header: str | None,
    secrets: Sequence[str],
    now: float,
    tolerance: int = DEFAULT_TOLERANCE,
) -> Verified:
    """Check a Stripe-Signature header; schemes other than v1 (such as test-mode v0) are ignored."""
    return _verify_timestamped_hex(body, header, secrets, now, tolerance, _STRIPE)


def verify_svix(
    body: bytes,
    headers: Mapping[str, str],
    secrets: Sequence[str],
    now: float,
    tolerance: int = DEFAULT_TOLERANCE,
) -> Verified:
    """Check Svix / Standard Webhooks headers; only v1 (HMAC) signatures are considered."""
    keys = [svix_key(secret) for secret in _configured(secrets)]
    lowered = {name.lower(): value for name, value in headers.items()}
    signatures = _first(lowered, "svix-signature", "webhook-signature")
    if signatures is None:
        raise SignatureError("missing_signature")
    message_id = _first(lowered, "svix-id", "webhook-id")
    timestamp = _first(lowered, "svix-timestamp", "webhook-timestamp")
    if message_id is None or not _MESSAGE_ID.fullmatch(message_id):
        raise SignatureError("malformed_header")
    if timestamp is None or not _UNIX_SECONDS.fullmatch(timestamp):
        raise SignatureError("malformed_header")
    candidates = []
    entries = signatures.split()
    if not entries:
        raise SignatureError("malformed_header")
    for entry in entries:
        version, comma, signature = entry.partition(",")
        if not comma:
            raise SignatureError("malformed_header")
        if version == "v1" and signature.isascii():
            candidates.append(signature.encode("ascii"))
    signed = f"{message_id}.{timestamp}.".encode() + body
    expected = [base64.b64encode(_hmac(key, signed)) for key in keys]
    if not any(hmac.compare_digest(e, c) for e in expected for c in candidates):
        raise SignatureError("bad_signature")
    _fresh(int(timestamp), now, tolerance)
    return Verified(event_id=message_id)


def verify_paddle(
    body: bytes,
    header: str | None,
    secrets: Sequence[str],
    now: float,
    tolerance: int = DEFAULT_TOLERANCE,
) -> Verified:
    """Check a Paddle-Signature header.

    Paddle's guide recommends comparing ts with the current time and rejecting old events to
    stop replays; we hold it to the same window, both ways, as Stripe and Svix.
    """
    return _verify_timestamped_hex(body, header, secrets, now, tolerance, _PADDLE)


Verifier = Callable[[bytes, Mapping[str, str], Sequence[str], float], Verified]


@dataclass(frozen=True, slots=True)
class _HexScheme:
    """A header of ``name=value`` fields holding a timestamp and hex HMACs of
    ``timestamp + joiner + body``: Stripe's and Paddle's, told apart by their spellings."""

    separator: str
    timestamp_field: str
    joiner: str
    signature_field: str


_STRIPE = _HexScheme(",", "t", ".", "v1")
_PADDLE = _HexScheme(";", "ts", ":", "h1")


def _verify_timestamped_hex(
    body: bytes,
    header: str | None,
    secrets: Sequence[str],
    now: float,
    tolerance: int,
    scheme: _HexScheme,
) -> Verified:
    keys = [utf8_key(secret) for secret in _configured(secrets)]
    if header is None:
        raise SignatureError("missing_signature")
    fields = _fields(header, scheme.separator)
    timestamp = _timestamp(fields, scheme.timestamp_field)
    signed = f"{timestamp}{scheme.joiner}".encode() + body
    expected = [_hmac(key, signed).hex() for key in keys]
    _match_hex(expected, [value for name, value in fields if name == scheme.signature_field])
    _fresh(int(timestamp), now, tolerance)
    return Verified()


class WebhookProvider(NamedTuple):
    """What the HTTP layer needs per provider: `verify(body, headers, secrets, now)`."""

    secret_variable: str
    verify: Verifier
    # Turns one configured secret into the HMAC key; raises ConfigError when it cannot.
    key: Callable[[str], bytes]


def _stripe(
    body: bytes, headers: Mapping[str, str], secrets: Sequence[str], now: float
) -> Verified:
    return verify_stripe(body, _header(headers, "stripe-signature"), secrets, now)


def _autumn(
    body: bytes, headers: Mapping[str, str], secrets: Sequence[str], now: float
) -> Verified:
    return verify_svix(body, headers, secrets, now)


def _paddle(
    body: bytes, headers: Mapping[str, str], secrets: Sequence[str], now: float
) -> Verified:
    return verify_paddle(body, _header(headers, "paddle-signature"), secrets, now)


PROVIDERS: Mapping[str, WebhookProvider] = {
    "stripe": WebhookProvider("GATEWAY_STRIPE_WEBHOOK_SECRET", _stripe, utf8_key),
    "autumn": WebhookProvider("GATEWAY_AUTUMN_WEBHOOK_SECRET", _autumn, svix_key),
    "paddle": WebhookProvider("GATEWAY_PADDLE_WEBHOOK_SECRET", _paddle, utf8_key),
}


def load_secrets(provider: str, raw: str | None) -> tuple[str, ...]:
    """`parse_secrets`, then each secret checked for the provider, so a bad one fails start-up."""
    entry = PROVIDERS[provider]
    secrets = parse_secrets(raw)
    for position, secret in enumerate(secrets, start=1):
        try:
            entry.key(secret)
        except ConfigError as exc:
            raise ConfigError(f"{entry.secret_variable}: secret #{position}: {exc}") from None
    return secrets


def _configured(secrets: Sequence[str]) -> Sequence[str]:
    # Without a secret nothing can be authentic; that is a deployment error, not a bad request.
    if not secrets:
        raise ConfigError("no webhook secret is configured")
    return secrets


def _hmac(key: bytes, signed: bytes) -> bytes:
    return hmac.new(key, signed, hashlib.sha256).digest()


def _fields(header: str, separator: str) -> list[tuple[str, str]]:
    fields = []
    for item in header.split(separator):
        key, equals, value = item.strip().partition("=")
        if not equals:
            raise SignatureError("malformed_header")
        fields.append((key, value))
    return fields


def _timestamp(fields: list[tuple[str, str]], name: str) -> str:
    values = [value for key, value in fields if key == name]
    if len(values) != 1 or not _UNIX_SECONDS.fullmatch(values[0]):
        raise SignatureError("malformed_header")
    return values[0]


def _match_hex(expected: list[str], candidates: list[str]) -> None:
    # Only well-formed hex reaches compare_digest, which refuses non-ASCII str with TypeError.
    wellformed = [c for c in candidates if _HEX_SHA256.fullmatch(c)]
    if not any(hmac.compare_digest(e, c) for e in expected for c in wellformed):
        raise SignatureError("bad_signature")


def _fresh(timestamp: int, now: float, tolerance: int) -> None:
    if abs(now - timestamp) > tolerance:
        raise SignatureError("stale_timestamp")


def _first(lowered: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        if name in lowered:
            return lowered[name]
    return None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None
