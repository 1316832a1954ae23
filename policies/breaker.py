"""A circuit breaker's state machine, so that a dead store adds no latency.

closed --failure--> open --cooldown elapsed--> half-open (one probe)
half-open --success--> closed; half-open --failure--> open (cooldown doubles, capped).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

State = Literal["closed", "open", "half_open"]


@dataclass(frozen=True, slots=True)
class Breaker:
    state: State = "closed"
    opened_at: float = 0.0
    cooldown: float = 0.5
    base_cooldown: float = 0.5
    max_cooldown: float = 5.0

    def allows(self, now: float) -> bool:
        """May a call be attempted now? In half-open only the probe that moved it there may."""
        if self.state == "closed":
            return True
        return self.state == "open" and now - self.opened_at >= self.cooldown

    def attempt(self, now: float) -> Breaker:
        """The state after a call is let through at ``now``."""
        if self.state == "open" and now - self.opened_at >= self.cooldown:
            return replace(self, state="half_open")
        return self

    def success(self) -> Breaker:
        return replace(self, state="closed", cooldown=self.base_cooldown)

    def failure(self, now: float) -> Breaker:
        if self.state == "half_open":
            cooldown = min(self.max_cooldown, self.cooldown * 2)
            return replace(self, state="open", opened_at=now, cooldown=cooldown)
        return replace(self, state="open", opened_at=now)
