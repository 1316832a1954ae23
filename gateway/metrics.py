"""Prometheus metrics of one gateway process, in a registry of its own."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "gateway_requests",
            "Ingest requests by signal and outcome (one Outcome each, never a raw status).",
            ["signal", "outcome"],
            registry=self.registry,
        )
        self.fail_open = Counter(
            "gateway_fail_open_admissions",
            "Requests admitted while the store was failing.",
            registry=self.registry,
        )
        self.shadow_refusals = Counter(
            "gateway_shadow_refusals",
            "Requests shadow mode admitted that the gates would have refused, by code.",
            ["code"],
            registry=self.registry,
        )
        self.refunds = Counter(
            "gateway_usage_refunds",
            "Admitted batches refunded because the upstream did not accept them.",
            registry=self.registry,
        )
        self.refunded_items = Counter(
            "gateway_refunded_items",
            "Items of accepted batches that the upstream rejected (partial success), refunded.",
            registry=self.registry,
        )
        self.partial_rejected = Counter(
            "gateway_partial_admission_rejected_items",
            "Items cut from batches over an items limit by partial admission, by signal.",
            ["signal"],
            registry=self.registry,
        )
        self.live_holders = Gauge(
            "gateway_live_holders",
            "Gateway processes the store saw live at the last flush tick (rates are shared by it).",
            registry=self.registry,
        )
        self.spool_pending = Gauge(
            "gateway_spool_pending_batches",
            "Usage batches spooled locally and not yet confirmed by the store.",
            registry=self.registry,
        )
        self.store_reads = Gauge(
            "gateway_routing_store_reads",
            "Routing reads that went to the store (cache misses).",
            registry=self.registry,
        )
        self.period_resets = Counter(
            "gateway_period_resets",
            "Period rollovers this replica claimed (exactly one replica claims each).",
            registry=self.registry,
        )
        self.webhooks = Counter(
            "gateway_webhooks",
            "Provider webhooks by provider and outcome (applied, duplicate, invalid_signature...).",
            ["provider", "outcome"],
            registry=self.registry,
        )
        self.notifications = Counter(
            "gateway_notifications",
            "Notification delivery attempts by outcome (delivered, retried, failed).",
            ["outcome"],
            registry=self.registry,
        )
        self.admin_auth_failures = Counter(
            "gateway_admin_auth_failures",
            "Admin requests with a missing or wrong token, by answer (unauthorized, rate_limited).",
            ["answer"],
            registry=self.registry,
        )
        self.store_seconds = Histogram(
            "gateway_store_seconds",
            "Store calls through a guard of the data plane, by guard (quota: reservations and"
            " flushes; lookups: key routing; presence: live holders) and result (ok, error).",
            ["guard", "result"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
            registry=self.registry,
        )
        self.breaker_open = Gauge(
            "gateway_store_breaker_open",
            "1 while a guard's circuit breaker is open or half open (the store is not asked).",
            ["guard"],
            registry=self.registry,
        )
        self.reservations_in_flight = Gauge(
            "gateway_reservations_in_flight",
            "Budgets waiting for the store to grant their next chunk of quota.",
            registry=self.registry,
        )
        self.upstream_seconds = Histogram(
            "gateway_upstream_seconds",
            "Time to forward a batch upstream and read the answer.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
            registry=self.registry,
        )

    def store_call(self, guard: str) -> Callable[[str, float], None]:
        """What a guard reports each store call with: its result and seconds."""
        children = {result: self.store_seconds.labels(guard, result) for result in ("ok", "error")}
        return lambda result, seconds: children[result].observe(seconds)

    def watch_breaker(self, guard: str, is_open: Callable[[], bool]) -> None:
        """The breaker gauge of ``guard``, read when /metrics is scraped."""
        self.breaker_open.labels(guard).set_function(lambda: float(is_open()))
