"""How much quota a replica reserves from the store at a time.

Far from a limit one reservation serves thousands of requests; near it the chunk
shrinks so that replicas share what is left, down to exactly what one request needs.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ChunkPolicy:
    """Upper bounds on one reservation per meter; ``replicas`` is how many share an org."""

    max_requests: int = 1_000
    max_bytes: int = 256 * 1024 * 1024
    max_items: int = 1_000_000
    max_credit: int = 10**12  # millionths of a minor unit: 1,000,000 minor units
    replicas: int = 1
    strict: bool = False

    def max_chunk(self, meter: str) -> int:
        """The bound of ``meter``; a signal's or a key's meter (``key/k/logs.items``) has its
        unit's."""
        unit = meter.rpartition("/")[2].rpartition(".")[2]
        value: int = getattr(self, f"max_{unit}")
        return value

    def want(self, meter: str, need: int, remaining: int) -> int:
        """How much to ask for when ``need`` is missing and the store has ``remaining`` left.

        Never less than ``need`` (the store refuses then), never more than ``remaining``
        when ``remaining`` covers ``need``.
        """
        if self.strict or need >= remaining:
            return need
        share = remaining // (2 * max(1, self.replicas))
        return max(need, min(self.max_chunk(meter), share))


def worth_waiting_for(others: int, need: int, left: int) -> bool:
    """Whether a refusal should be a retry: other holders keep enough of what is left (a
    quarter or more, and this request's need) that its return is worth waiting for. The
    slivers busy holders keep at the very end of a burst are theirs to spend: that is final."""
    return need <= others <= left and 4 * others >= left
