"""A local, append-only record of usage not yet confirmed by the store.

Each process appends to its own file (``<holder>.jsonl``, flock'ed while it lives):
- ``spend`` lines as requests are admitted or refunded (one ``write`` per loop tick; a write
  survives the death of the process, so even a SIGKILL loses no admitted usage);
- at every flush a ``cut`` line and one ``batch`` line per (org, period) holding everything
  spent before the cut; batch lines are fsynced before the batch is sent to the store;
- ``done`` lines once the store confirmed a batch.

A file whose owner died is adopted by any live process that shares the folder: its pending
batches are committed, the spends after its last cut become one more batch with a
deterministic id, and the dead holder's reservations are then released.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path

from gateway.store.records import (
    UsageBatch,
)


@dataclass(frozen=True, slots=True)
class Orphan:
    """What a dead process left: its holder id and the batches still to commit."""

    holder: str
    batches: list[UsageBatch]


def _batch_record(batch: UsageBatch) -> dict[str, object]:
    return {
        "op": "batch",
        "id": batch.batch_id,
        "holder": batch.holder,
        "org": batch.org_id,
        "period": batch.period_start,
        "used": batch.used,
        "reserved": batch.reserved,
        "at": batch.at,
    }


def _ints(raw: object) -> dict[str, int]:
    return {str(k): int(v) for k, v in raw.items()} if isinstance(raw, dict) else {}


def read_orphan(path: Path) -> Orphan:
    """Pending batches of a spool file, plus its spends after the last cut as one more batch."""
    holder = path.stem
    batches: dict[str, UsageBatch] = {}
    tail: dict[tuple[str, str], dict[str, int]] = {}
    with path.open("rb") as fh:
        for line in fh:
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a torn last line
            op = record.get("op")
            if op == "spend":
                used = tail.setdefault((record["org"], record["period"]), {})
                for meter, delta in _ints(record["used"]).items():
                    used[meter] = used.get(meter, 0) + delta
            elif op == "cut":
                tail.clear()
            elif op == "batch":
                batches[record["id"]] = UsageBatch(
                    batch_id=str(record["id"]),
                    holder=str(record["holder"]),
                    org_id=str(record["org"]),
                    period_start=str(record["period"]),
                    used=_ints(record["used"]),
                    reserved=_ints(record["reserved"]),
                    at=float(record.get("at") or 0.0),
                )
            elif op == "done":
                batches.pop(record["id"], None)
    # The spends after the last cut were written by the time the file last changed.
    last_write = path.stat().st_mtime
    for (org, period), used in tail.items():
        if any(used.values()):
            batch_id = f"tail-{holder}-{org}-{period}"
            batches[batch_id] = UsageBatch(batch_id, holder, org, period, used=used, at=last_write)
    return Orphan(holder, list(batches.values()))


class Spool:
    """Usage waiting for the store. ``directory=None`` keeps batches in memory only."""

    def __init__(self, directory: Path | None, holder: str) -> None:
        self._dir = directory
        self._holder = holder
        self._fd: int | None = None
        self._pending: dict[str, UsageBatch] = {}
        self._buffer: dict[tuple[str, str], dict[str, int]] = {}
        self._spends_since_cut = 0

    @property
    def path(self) -> Path | None:
        return self._dir / f"{self._holder}.jsonl" if self._dir else None

    def open(self) -> None:
        """Open (and lock) this process's file."""
        if self._dir is None:
            return
        self._dir.mkdir(parents=True, exist_ok=True)
        assert self.path is not None
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def adopt(self) -> list[Orphan]:
        """Take over the files of processes that died; their batches become ours to commit."""
        if self._dir is None or self._fd is None:
            return []
        orphans = []
        for other in sorted(self._dir.glob("*.jsonl")):
            if other == self.path:
                continue
            try:
                probe = os.open(other, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                try:
                    fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live process owns it
                orphan = read_orphan(other)
                if orphan.batches:
                    # No cut: our own spends before this point are not in these batches.
                    self._write_batches(orphan.batches)
                    self.sync()
                orphans.append(orphan)
                other.unlink()
            finally:
                os.close(probe)
        return orphans

    def record_spend(self, org_id: str, period_start: str, used: dict[str, int]) -> None:
        """Note admitted (or refunded) usage: summed per (org, period) and written each tick."""
        if self._fd is None:
            return
        if not self._buffer:
            asyncio.get_running_loop().call_soon(self._write_buffer)
        pending = self._buffer.get((org_id, period_start))
        if pending is None:
            self._buffer[(org_id, period_start)] = dict(used)
        else:
            for meter, delta in used.items():
                pending[meter] = pending.get(meter, 0) + delta
        self._spends_since_cut += 1

    def _write_buffer(self) -> None:
        if self._buffer and self._fd is not None:
            lines = [
                json.dumps({"op": "spend", "org": org, "period": period, "used": used})
                for (org, period), used in self._buffer.items()
            ]
            os.write(self._fd, ("\n".join(lines) + "\n").encode())
        self._buffer.clear()

    def append(self, batches: list[UsageBatch]) -> None:
        """A cut and these batches (covering every spend before it), in order; not yet fsynced."""
        if not batches and not self._spends_since_cut:
            return
        if self._fd is not None:
            self._write_buffer()
            os.write(self._fd, b'{"op":"cut"}\n')
            self._spends_since_cut = 0
        self._write_batches(batches)

    def _write_batches(self, batches: list[UsageBatch]) -> None:
        for batch in batches:
            self._pending[batch.batch_id] = batch
        if self._fd is not None and batches:
            lines = [json.dumps(_batch_record(b)).encode() + b"\n" for b in batches]
            os.write(self._fd, b"".join(lines))

    def sync(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)

    def done(self, batch_ids: list[str]) -> None:
        for batch_id in batch_ids:
            self._pending.pop(batch_id, None)
        if self._fd is None:
            return
        self._write_buffer()
        if not self._pending and not self._spends_since_cut:
            os.ftruncate(self._fd, 0)
        else:
            lines = (json.dumps({"op": "done", "id": i}).encode() + b"\n" for i in batch_ids)
            os.write(self._fd, b"".join(lines))

    def pending(self) -> list[UsageBatch]:
        return list(self._pending.values())

    def close(self) -> None:
        if self._fd is None:
            return
        self._write_buffer()
        clean = not self._pending and not self._spends_since_cut
        os.close(self._fd)
        self._fd = None
        if clean and self.path is not None:
            self.path.unlink(missing_ok=True)
