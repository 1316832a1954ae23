"""``POST /webhooks/{stripe,autumn,paddle}`` on the ingest listener (providers must reach it).

Verify the signature on the raw body, then parse, then let the store claim the event id and
apply the policy's change in one transaction; invalidate the org's routing everywhere. An
event whose customer is linked to no org yet is kept (200 ``unlinked``) and applied through
the same ``EventPolicy`` when the customer is linked. A provider whose secret is not
configured does not exist here (404). A store failure answers 503, so the provider retries;
a duplicate answers 200 with no effect. An amount or balance beyond the store's integer range
is refused and recorded, and answers 400 (a retry is then a duplicate). An event applied with
its plan refused (not in ``GATEWAY_PLANS``) is no duplicate when delivered again: its plan is
decided again, so resending it once the plan is configured applies the plan.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from gateway.billing.signatures import PROVIDERS, load_secrets
from gateway.errors import ClientError, Disconnected, SignatureError, StoreError
from gateway.metrics import Metrics
from gateway.responses import send_json, send_refusal
from gateway.settings import Settings
from gateway.store.base import BillingStore, PlanStore
from gateway.store.records import BALANCE_OUT_OF_RANGE, Decide
from gateway.types import ReadBody, Receive, Scope, Send
from policies.billing import (
    OTHER_CURRENCY,
    OUT_OF_RANGE,
    UNKNOWN_PLAN,
    BillingEvent,
    MalformedEvent,
    apply_event,
    parse_autumn,
    parse_paddle,
    parse_stripe,
)
from policies.decisions import Refusal
from policies.entitlements import Plan

log = logging.getLogger("gateway.billing.webhooks")
MAX_WEBHOOK_BODY = 1024 * 1024

_PARSERS: dict[str, Callable[[Mapping[str, Any], str | None], BillingEvent]] = {
    "stripe": lambda payload, _id: parse_stripe(payload),
    "autumn": lambda payload, message_id: parse_autumn(payload, message_id or ""),
    "paddle": lambda payload, _id: parse_paddle(payload),
}


class WebhookStore(BillingStore, PlanStore, Protocol):
    """What the endpoint needs of a store: billing state, and the plan catalog."""


@dataclass(frozen=True, slots=True)
class EventPolicy:
    """How a provider event is decided, whether it arrives for a linked customer or is
    applied when its customer is linked later: ``apply_event`` with the settings' plans,
    free plan, plan grants and ledger currency."""

    plans: frozenset[str]
    free_plan: str
    plan_grants: Mapping[str, int]
    currency: str = "usd"

    @classmethod
    def from_settings(cls, settings: Settings) -> EventPolicy:
        currency = settings.currency.strip().lower()
        return cls(settings.plan_names(), settings.free_plan, settings.grants(), currency)

    def decide(self, event: BillingEvent, now: datetime, redelivered: bool = False) -> Decide:
        return lambda state: apply_event(
            state,
            event,
            plans=self.plans,
            free_plan=self.free_plan,
            plan_grants=self.plan_grants,
            currency=self.currency,
            now=now,
            redelivered=redelivered,
        )

    def with_catalog(self, catalog: Sequence[Plan]) -> EventPolicy:
        """This policy knowing the catalog's plans too, with their grants."""
        grants = {**self.plan_grants, **{p.name: p.grant_minor for p in catalog}}
        names = self.plans | {p.name for p in catalog}
        return replace(self, plans=frozenset(names), plan_grants=grants)

    def redelivery(self, event: BillingEvent, now: datetime) -> Decide | None:
        """The plan part alone, for a delivery of an event applied with its plan refused."""
        return None if event.plan is None else self.decide(event, now, redelivered=True)


def _refusal(status: int, code: str, **detail: str) -> Refusal:
    return Refusal(status, code, retry_after=5 if status == 503 else None, detail=detail)


class WebhookEndpoint:
    """The endpoint over what it uses: the billing store, the metrics, a callback that drops an
    org's routing on every replica, its settings (secrets, plans, currency) and a body reader
    with the listener's deadline."""

    def __init__(
        self,
        store: WebhookStore,
        metrics: Metrics,
        invalidate: Callable[[str], Awaitable[None]],
        settings: Settings,
        *,
        read_body: ReadBody,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.invalidate = invalidate
        self.clock = clock
        self.read_body = read_body
        configured = {
            "stripe": settings.stripe_webhook_secret,
            "autumn": settings.autumn_webhook_secret,
            "paddle": settings.paddle_webhook_secret,
        }
        self.secrets = {name: load_secrets(name, raw) for name, raw in configured.items()}
        self.policy = EventPolicy.from_settings(settings)
        self._missing_logged: set[str] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        provider = scope["path"].removeprefix("/webhooks/").strip("/")
        secrets = self.secrets.get(provider, ())
        if provider not in PROVIDERS or not secrets:
            if provider in PROVIDERS and provider not in self._missing_logged:
                self._missing_logged.add(provider)
                variable = PROVIDERS[provider].secret_variable
                log.warning("webhook for %s refused: %s is not set", provider, variable)
            await send_refusal(send, _refusal(404, "not_found"))
            return
        if scope["method"] != "POST":
            await send_refusal(send, _refusal(405, "method_not_allowed"))
            return
        headers = {n.decode("latin-1").lower(): v.decode("latin-1") for n, v in scope["headers"]}
        declared = headers.get("content-length", "")
        try:
            body = await self.read_body(
                receive,
                MAX_WEBHOOK_BODY,
                int(declared)
                if declared.isascii() and declared.isdigit() and len(declared) < 19
                else None,
            )
        except ClientError as exc:
            await send_refusal(send, _refusal(exc.status, exc.code))
            return
        except TimeoutError:
            await send_refusal(send, _refusal(408, "request_timeout"))
            return
        except Disconnected:
            log.debug("webhook client disconnected before its body arrived")
            return
        now = self.clock()
        try:
            verified = PROVIDERS[provider].verify(body, headers, secrets, now)
        except SignatureError as exc:
            self._count(provider, "invalid_signature")
            await send_refusal(send, _refusal(400, "invalid_signature", reason=str(exc)))
            return
        try:
            payload = json.loads(body)
            if not isinstance(payload, dict):
                raise MalformedEvent("the body is not a JSON object")
            event = _PARSERS[provider](payload, verified.event_id)
        except (ValueError, RecursionError) as exc:  # MalformedEvent is a ValueError
            self._count(provider, "bad_request")
            message = str(exc) if isinstance(exc, MalformedEvent) else "the body is not JSON"
            await send_refusal(send, _refusal(400, "bad_request", message=message))
            return
        moment = datetime.fromtimestamp(now, UTC)
        try:
            policy = self.policy.with_catalog(await self.store.list_plans())
            decide = policy.decide(event, moment)
            redelivered = policy.redelivery(event, moment)
            outcome = await self.store.apply_billing_event(event, decide, moment, redelivered)
        except StoreError:
            self._count(provider, "store_unavailable")
            await send_refusal(send, _refusal(503, "store_unavailable"))
            return
        refused = outcome.change.refused if outcome.change is not None else None
        if outcome.change is not None:
            plan = outcome.change.plan_refused or (event.plan if refused == UNKNOWN_PLAN else None)
            self._log_refusal(event, refused, plan)
        if outcome.status == "applied" and outcome.org_id:
            await self.invalidate(outcome.org_id)
        self._count(provider, outcome.status)
        if refused in (OUT_OF_RANGE, BALANCE_OUT_OF_RANGE):
            await send_refusal(send, _refusal(400, "bad_request", message=refused))
            return
        await send_json(send, 200, {"status": outcome.status})

    def _log_refusal(self, event: BillingEvent, refused: str | None, plan: str | None) -> None:
        name = f"{event.provider} event {event.event_id}"
        if plan is not None:
            log.warning(
                "%s: plan %r is not in GATEWAY_PLANS; the rest of the event is applied, and"
                " delivering it again once the plan is configured applies the plan",
                name,
                plan[:100],
            )
        if refused in (None, UNKNOWN_PLAN):
            return
        if refused == OTHER_CURRENCY:
            log.warning(
                "%s not applied: currency %r is not GATEWAY_CURRENCY (%s)",
                name,
                (event.currency or "")[:16],
                self.policy.currency,
            )
        else:
            log.warning("%s not applied: %s", name, refused)

    def _count(self, provider: str, outcome: str) -> None:
        self.metrics.webhooks.labels(provider, outcome).inc()
