"""Money arithmetic: integers in minor units; the credit meter counts millionths of one."""

from __future__ import annotations

from policies.model import MICROS_PER_MINOR


def spent_minor(spent_micros: int) -> int:
    """Spending in minor units, rounded up: a fraction of a cent spent is a cent."""
    return -(-spent_micros // MICROS_PER_MINOR)


def balance_minor(credited_minor: int, spent_micros: int) -> int:
    """What is left of the credited amount after spending; spending rounds up."""
    return credited_minor - spent_minor(spent_micros)
