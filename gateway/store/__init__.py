"""Storage backends behind small Protocols by capability, chosen by ``GATEWAY_STORE_URL``."""

from __future__ import annotations

from gateway.errors import ConfigError
from gateway.store.base import (
    BillingStore,
    DurableQuotaStore,
    LeaseStore,
    OrgStore,
    QuotaStore,
    Store,
)
from gateway.store.postgres import PostgresStore
from gateway.store.records import (
    Exhausted,
    Granted,
    KeyRecord,
    OrgChanges,
    OrgRecord,
    ReserveRequest,
    ReserveResult,
    UsageBatch,
)
from gateway.store.sqlite import SQLiteStore

__all__ = [
    "BillingStore",
    "DurableQuotaStore",
    "Exhausted",
    "Granted",
    "KeyRecord",
    "LeaseStore",
    "OrgChanges",
    "OrgRecord",
    "OrgStore",
    "PostgresStore",
    "QuotaStore",
    "ReserveRequest",
    "ReserveResult",
    "Store",
    "UsageBatch",
    "open_store",
]

_SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
_EXPECTED = (
    "memory://, sqlite:///abs/path.db, sqlite://rel/path.db, a path ending in .db "
    "or postgresql://user@host/db"
)


def open_store(url: str) -> Store:
    """The backend named by ``url``, not yet opened."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        if url.endswith(_SQLITE_SUFFIXES):
            return SQLiteStore(url)
        # Not echoed: a URL whose scheme was mistyped may still hold a password.
        raise ConfigError(f"GATEWAY_STORE_URL must be one of {_EXPECTED}")
    scheme = scheme.lower()
    if scheme == "memory":
        # The unit-test fake, for demos; loaded only when asked for.
        from gateway.store.memory import MemoryStore

        return MemoryStore()
    if scheme == "sqlite":
        if not rest:
            raise ConfigError("GATEWAY_STORE_URL: sqlite:// needs a file path, e.g. sqlite:///x.db")
        return SQLiteStore(rest)
    if scheme in ("postgresql", "postgres"):
        return PostgresStore(url)
    # Only the scheme is echoed: the rest of a URL may hold a password.
    raise ConfigError(f"GATEWAY_STORE_URL: unknown store scheme {scheme!r}; expected {_EXPECTED}")
