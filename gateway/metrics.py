"""Prometheus metrics of one gateway process, in a registry of its own."""

from __future__ import annotations

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
        self.upstream_seconds = Histogram(
            "gateway_upstream_seconds",
            "Time to forward a batch upstream and read the answer.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
            registry=self.registry,
        )
