"""Every error the gateway raises, mapped at its boundary from library errors.

GatewayError
├── ClientError                  the request is refused as sent (final for SDKs)
│   ├── BadRequest               400 bad_request
│   │   └── BadOrigin            an upstream that is not an origin (ConfigError in settings)
│   ├── PayloadTooLarge          413 payload_too_large
│   │   └── TooLarge             a decoded body past the budget it was decoded under
│   ├── HeadTooLarge             431 or 414: a request head over a bound, from the parser
│   ├── UnsupportedMediaType     415 unsupported_media_type
│   ├── SignatureError           400 invalid_signature: a webhook refused, the reason code only
│   ├── NotFound                 404 an org or key the admin API or CLI named does not exist
│   └── Conflict                 409 the change contradicts what is stored
│       └── CustomerTaken        a billing customer id is already linked to another org
├── Disconnected                 the client went away before its body arrived
├── StoreError                   the store failed or answered too slowly
│   └── StoreUnavailable         the circuit is open: not even tried
├── UpstreamError                the upstream did not accept a batch
│   ├── UpstreamUnavailable      503 upstream_unavailable + Retry-After
│   └── UpstreamTimeout          504 upstream_timeout
├── Uncuttable                   a batch partial admission cannot cut unchanged: refused whole
└── ConfigError                  settings are missing or malformed (at start-up)

policies.billing.MalformedEvent  a ValueError outside this tree, because ``policies`` imports
                                 nothing from ``gateway``; the webhook endpoint answers it with
                                 400 bad_request.
policies.entitlements.EntitlementError  likewise: a plan or limits that cannot be applied.
policies.notifications.NotificationError  likewise: a notification setting that cannot be
                                 used; the runtime raises it again as a ConfigError.

Library errors (aiohttp, asyncpg, redis, sqlite3, OSError, TimeoutError) are mapped to the
most specific of these where they arise, with ``raise ... from exc``. Anything else raised is
a programming error (a ValueError for an argument no caller passes, a NotImplementedError of
a base class) and ends a request as ``internal_error``.
"""

from __future__ import annotations

from typing import Literal

from policies.decisions import Refusal

SignatureReason = Literal[
    "missing_signature", "bad_signature", "stale_timestamp", "malformed_header"
]


class GatewayError(Exception):
    """Base of every error raised by the gateway."""


class ClientError(GatewayError):
    status = 400
    code = "bad_request"

    def refusal(self) -> Refusal:
        return Refusal(self.status, self.code, detail={"message": str(self)} if str(self) else {})


class BadRequest(ClientError):
    status = 400
    code = "bad_request"


class PayloadTooLarge(ClientError):
    status = 413
    code = "payload_too_large"


class BadOrigin(BadRequest, ValueError):
    """Not an origin; the message names the first thing wrong, never the input."""


class TooLarge(PayloadTooLarge):
    """The decoded body would exceed the limit it was decoded under."""


class Uncuttable(GatewayError):
    """A batch that cannot be cut without changing what the backend reads of it."""


class HeadTooLarge(ClientError):
    """Raised from a parser callback to stop parsing a head that is over a bound."""

    def __init__(self, status: int, code: str) -> None:
        super().__init__(code)
        self.status = status
        self.code = code


class UnsupportedMediaType(ClientError):
    status = 415
    code = "unsupported_media_type"


class SignatureError(ClientError):
    """The webhook is refused (HTTP 400); the message is the reason code and nothing else."""

    status = 400
    code = "invalid_signature"

    def __init__(self, reason: SignatureReason) -> None:
        super().__init__(reason)
        self.reason: SignatureReason = reason


class NotFound(ClientError, LookupError):
    status = 404
    code = "not_found"


class Conflict(ClientError):
    status = 409
    code = "conflict"


class CustomerTaken(Conflict):
    """A billing customer id is already linked to another org."""

    def __init__(self, provider: str, customer_id: str) -> None:
        super().__init__(f"{provider} customer {customer_id} belongs to another org")
        self.provider = provider
        self.customer_id = customer_id


class Disconnected(GatewayError):
    """The client went away before its body arrived."""


class StoreError(GatewayError):
    """The store raised, or did not answer within the gate's time budget."""


class StoreUnavailable(StoreError):
    """The circuit breaker is open: the store was not asked."""


class UpstreamError(GatewayError):
    status = 503
    code = "upstream_unavailable"
    retry_after: int | None = 1

    def refusal(self) -> Refusal:
        return Refusal(self.status, self.code, retry_after=self.retry_after)


class UpstreamUnavailable(UpstreamError):
    status = 503
    code = "upstream_unavailable"
    retry_after = 1


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"
    retry_after = None


class ConfigError(GatewayError):
    """A setting is missing or malformed; the message names the variable."""
