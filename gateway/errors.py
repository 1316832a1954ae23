"""Every error the gateway raises, mapped at its boundary from library errors.

GatewayError
├── ClientError                  the request is refused as sent (final for SDKs)
│   ├── BadRequest               400 bad_request
│   ├── PayloadTooLarge          413 payload_too_large
│   └── UnsupportedMediaType     415 unsupported_media_type
├── StoreError                   the store failed or answered too slowly
│   └── StoreUnavailable         the circuit is open: not even tried
├── UpstreamError                the upstream did not accept a batch
│   ├── UpstreamUnavailable      503 upstream_unavailable + Retry-After
│   └── UpstreamTimeout          504 upstream_timeout
└── ConfigError                  settings are missing or malformed (at start-up)
"""

from __future__ import annotations

from policies.decisions import Refusal


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


class UnsupportedMediaType(ClientError):
    status = 415
    code = "unsupported_media_type"


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
