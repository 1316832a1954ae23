"""A durable local buffer of usage batches not yet confirmed by the store.

Each process appends to its own file (``<holder>.jsonl``, locked while it lives): a
``batch`` line is fsynced before the batch is sent to the store, and a ``done`` line
follows once the store confirmed it. Files left by dead processes are adopted at start,
so admitted usage survives a crash after it was spooled and a store outage of any length.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import IO

from gateway.store.base import UsageBatch


def _encode(batch: UsageBatch) -> dict[str, object]:
    return {
        "op": "batch",
        "id": batch.batch_id,
        "holder": batch.holder,
        "org": batch.org_id,
        "period": batch.period_start,
        "used": batch.used,
        "reserved": batch.reserved,
    }


def _decode(record: dict[str, object]) -> UsageBatch:
    used = record["used"]
    reserved = record["reserved"]
    assert isinstance(used, dict) and isinstance(reserved, dict)
    return UsageBatch(
        batch_id=str(record["id"]),
        holder=str(record["holder"]),
        org_id=str(record["org"]),
        period_start=str(record["period"]),
        used={str(k): int(v) for k, v in used.items()},
        reserved={str(k): int(v) for k, v in reserved.items()},
    )


def read_pending(path: Path) -> list[UsageBatch]:
    """Batches in a spool file without a ``done`` line; a torn last line is ignored."""
    batches: dict[str, UsageBatch] = {}
    with path.open("rb") as fh:
        for line in fh:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("op") == "batch":
                batches[record["id"]] = _decode(record)
            elif record.get("op") == "done":
                batches.pop(record["id"], None)
    return list(batches.values())


class Spool:
    """Batches waiting for the store. ``directory=None`` keeps them in memory only."""

    def __init__(self, directory: Path | None, holder: str) -> None:
        self._dir = directory
        self._holder = holder
        self._fh: IO[bytes] | None = None
        self._pending: dict[str, UsageBatch] = {}

    @property
    def path(self) -> Path | None:
        return self._dir / f"{self._holder}.jsonl" if self._dir else None

    def open(self) -> list[UsageBatch]:
        """Open this process's file and adopt what dead processes left; returns adopted batches."""
        if self._dir is None:
            return []
        self._dir.mkdir(parents=True, exist_ok=True)
        own = self.path
        assert own is not None
        self._fh = own.open("ab")
        fcntl.flock(self._fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        adopted: list[UsageBatch] = []
        for other in sorted(self._dir.glob("*.jsonl")):
            if other == own:
                continue
            with other.open("rb") as probe:
                try:
                    fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live process owns it
                orphans = read_pending(other)
                if orphans:
                    self.append(orphans)
                    adopted.extend(orphans)
                other.unlink()
        return adopted

    def append(self, batches: list[UsageBatch]) -> None:
        for batch in batches:
            self._pending[batch.batch_id] = batch
        if self._fh is None:
            return
        self._fh.write(b"".join(json.dumps(_encode(b)).encode() + b"\n" for b in batches))
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def done(self, batch_ids: list[str]) -> None:
        for batch_id in batch_ids:
            self._pending.pop(batch_id, None)
        if self._fh is None:
            return
        if not self._pending:
            self._fh.truncate(0)
            self._fh.seek(0)
        else:
            lines = (json.dumps({"op": "done", "id": i}).encode() + b"\n" for i in batch_ids)
            self._fh.write(b"".join(lines))
        self._fh.flush()

    def pending(self) -> list[UsageBatch]:
        return list(self._pending.values())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
            if not self._pending and self.path is not None:
                self.path.unlink(missing_ok=True)
