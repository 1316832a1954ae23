"""What became of an ingest request: exactly one ``Outcome`` each, counted in one place.

Like Sentry Relay's outcomes, the set is closed: a refusal code clients see, or what became
of a batch that was admitted. ``MeteringMiddleware.__call__`` counts each request once, in a
``finally``, so no path can count a request twice or not at all; the values are the
``outcome`` labels of ``gateway_requests``.
"""

from __future__ import annotations

from enum import StrEnum


class Outcome(StrEnum):
    FORWARDED = "forwarded"
    PARTIALLY_FORWARDED = "partially_forwarded"  # cut at an items limit: the part that fit
    UPSTREAM_REJECTED = "upstream_rejected"  # the upstream answered, but not 2xx: refunded
    UPSTREAM_UNAVAILABLE = "upstream_unavailable"
    UPSTREAM_TIMEOUT = "upstream_timeout"
    CLIENT_DISCONNECTED = "client_disconnected"
    INTERNAL_ERROR = "internal_error"
    # Refusals, by the code clients see.
    BAD_REQUEST = "bad_request"
    INVALID_INGEST_KEY = "invalid_ingest_key"
    BILLING_SUSPENDED = "billing_suspended"
    USAGE_LIMIT_EXCEEDED = "usage_limit_exceeded"
    PREPAID_CREDIT_EXHAUSTED = "prepaid_credit_exhausted"
    RATE_LIMITED = "rate_limited"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    REQUEST_TIMEOUT = "request_timeout"
    STORE_UNAVAILABLE = "store_unavailable"

    @classmethod
    def of(cls, code: str) -> Outcome:
        """The outcome of a refusal or upstream error code; a code nobody declared must not
        become a label, so it counts as an internal error."""
        return _BY_CODE.get(code, cls.INTERNAL_ERROR)

    @classmethod
    def of_answer(cls, status: int, failed: bool) -> Outcome:
        """The outcome of an admitted request from the inner app's answer status (0: none)."""
        if 200 <= status < 300:
            return cls.FORWARDED
        if status:
            return cls.UPSTREAM_REJECTED
        return cls.INTERNAL_ERROR if failed else cls.CLIENT_DISCONNECTED


_BY_CODE: dict[str, Outcome] = {o.value: o for o in Outcome}
#: The outcomes that are refusals clients see (from bad_request on, in the order above).
REFUSALS = frozenset(list(Outcome)[list(Outcome).index(Outcome.BAD_REQUEST) :])
