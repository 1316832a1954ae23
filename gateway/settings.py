"""Typed settings read from ``GATEWAY_*`` variables; every CLI flag has one of these twins."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class Settings:
    host: str = "0.0.0.0"
    port: int = 8080
    admin_host: str = "127.0.0.1"
    admin_port: int = 8081
    upstream_url: str | None = None
    store_url: str = "sqlite://data/gateway.db"
    redis_url: str | None = None
    # redis_url names any node of a Redis Cluster (the quota hashes shard by org)
    redis_cluster: bool = False
    admin_token: str | None = field(default=None, repr=False)
    key_secret: str | None = field(default=None, repr=False)
    data_dir: Path = Path("data")
    max_body: int = 16 * 1024 * 1024
    max_decompressed: int = 64 * 1024 * 1024
    upstream_timeout: float = 10.0
    gate_timeout: float = 0.25
    lookup_timeout: float = 1.0
    cache_ttl: float = 1.0
    # keys each routing cache holds (fresh, last-known, unknown); least recently used go first
    cache_max_keys: int = 1_000_000
    flush_interval: float = 1.0
    reservation_ttl: float = 60.0
    shadow: bool = False
    # cut an OTLP batch over an items limit to what fits (an org's partial_admission wins)
    partial_admission: bool = False
    strict_limits: bool = False
    gates: bool = True
    workers: int = 1
    loop: str = "uvloop"
    body_timeout: float = 30.0
    header_timeout: float = 10.0
    max_header_bytes: int = 64 * 1024
    max_header_line: int = 16 * 1024
    max_items: int = 1_000_000
    count_inline_below: int = 256 * 1024
    upstream_allowlist: str = ""
    log_level: str = "info"
    log_format: str = "text"
    ui_session: float = 8 * 3600.0  # seconds a console sign-in lasts
    # billing control plane
    stripe_webhook_secret: str | None = field(default=None, repr=False)
    autumn_webhook_secret: str | None = field(default=None, repr=False)
    paddle_webhook_secret: str | None = field(default=None, repr=False)
    plans: str = "free"
    free_plan: str = "free"
    plan_grants: str = ""
    currency: str = "usd"
    suspension_grace: float = 3 * 86400.0
    reconcile_interval: float = 60.0
    # usage export to the billing provider
    stripe_api_key: str | None = field(default=None, repr=False)
    stripe_api_url: str = "https://api.stripe.com"
    stripe_meters: str = ""
    autumn_api_key: str | None = field(default=None, repr=False)
    autumn_api_url: str = "https://api.useautumn.com"
    autumn_features: str = ""
    export_interval: float = 60.0
    # usage history: hourly buckets kept this many days
    history_days: int = 90
    # usage notifications (Standard Webhooks)
    notify_url: str | None = None
    notify_secret: str | None = field(default=None, repr=False)
    notify_thresholds: str = "50,80,100"
    notify_interval: float = 5.0

    def __post_init__(self) -> None:
        if not 1 <= self.history_days <= 3660:
            raise ConfigError("GATEWAY_HISTORY_DAYS must be a whole number of days, 1 to 3660")
        if self.cache_max_keys < 1:
            raise ConfigError("GATEWAY_CACHE_MAX_KEYS must be a whole number of keys, 1 or more")
        if not 60 <= self.ui_session <= 30 * 86400:
            raise ConfigError("GATEWAY_UI_SESSION must be seconds from 60 to 2592000 (30 days)")

    def plan_names(self) -> frozenset[str]:
        return frozenset({p.strip() for p in self.plans.split(",") if p.strip()} | {self.free_plan})

    def grants(self) -> dict[str, int]:
        """``GATEWAY_PLAN_GRANTS=pro=1000,team=5000``: minor units credited each new period."""
        return {name: int(value) for name, value in _pairs("GATEWAY_PLAN_GRANTS", self.plan_grants)}

    def meter_names(self, raw: str, variable: str) -> dict[str, str]:
        """``items=otel_items,bytes=otel_bytes``: our meter -> the provider's meter or feature."""
        return dict(_pairs(variable, raw))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then ``GATEWAY_<FIELD>`` variables, then explicit (non-None) overrides."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f"GATEWAY_{f.name.upper()}")
            if raw is not None and raw != "":
                values[f.name] = _parse(f.name, f.type, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    def key_secret_bytes(self) -> bytes:
        """The key hashing secret: GATEWAY_KEY_SECRET, else one kept in the data folder."""
        if self.key_secret:
            if len(self.key_secret) < 16:
                raise ConfigError("GATEWAY_KEY_SECRET must be at least 16 characters")
            return self.key_secret.encode()
        path = self.data_dir / "key-secret"
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32))
        return path.read_text().strip().encode()


def _pairs(variable: str, raw: str) -> list[tuple[str, str]]:
    pairs = []
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        name, sep, value = part.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise ConfigError(f"{variable}: expected name=value pairs separated by commas")
        pairs.append((name.strip(), value.strip()))
    if variable == "GATEWAY_PLAN_GRANTS":
        for name, value in pairs:
            if not value.isdigit():
                raise ConfigError(f"{variable}: the grant of {name} must be a whole number")
    return pairs


def _parse(name: str, kind: Any, raw: str) -> Any:
    var = f"GATEWAY_{name.upper()}"
    kind = str(kind)
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            lowered = raw.strip().lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off"}:
                return False
            raise ValueError(raw)
        if kind == "Path":
            return Path(raw)
    except ValueError as exc:
        raise ConfigError(f"{var}={raw!r} is not a valid {kind}") from exc
    return raw
