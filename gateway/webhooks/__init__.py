"""Verification of payment-provider webhooks; see `gateway.webhooks.verify`."""

from gateway.errors import SignatureError
from gateway.webhooks.verify import (
    PROVIDERS,
    Verified,
    WebhookProvider,
    load_secrets,
    parse_secrets,
    verify_paddle,
    verify_stripe,
    verify_svix,
)

__all__ = [
    "PROVIDERS",
    "SignatureError",
    "Verified",
    "WebhookProvider",
    "load_secrets",
    "parse_secrets",
    "verify_paddle",
    "verify_stripe",
    "verify_svix",
]
