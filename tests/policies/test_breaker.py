from __future__ import annotations

import pytest

from policies.breaker import Breaker


def test_closed_allows() -> None:
    breaker = Breaker()
    assert breaker.state == "closed"
    assert breaker.allows(0.0)
    assert breaker.allows(1e9)


def test_attempt_on_closed_changes_nothing() -> None:
    breaker = Breaker()
    assert breaker.attempt(3.0) == breaker


def test_failure_opens() -> None:
    breaker = Breaker().failure(10.0)
    assert breaker.state == "open"
    assert breaker.opened_at == 10.0
    assert breaker.cooldown == 0.5


def test_open_refuses_until_cooldown() -> None:
    breaker = Breaker().failure(10.0)
    assert not breaker.allows(10.0)
    assert not breaker.allows(10.49)
    assert breaker.allows(10.5)


def test_attempt_before_cooldown_stays_open() -> None:
    breaker = Breaker().failure(10.0)
    assert breaker.attempt(10.2) == breaker


def test_exactly_one_probe_in_half_open() -> None:
    breaker = Breaker().failure(10.0)
    probing = breaker.attempt(10.5)
    assert probing.state == "half_open"
    assert not probing.allows(10.5)
    assert not probing.allows(1e9)
    assert probing.attempt(1e9) == probing


def test_success_closes_and_resets_cooldown() -> None:
    breaker = Breaker().failure(0.0)
    for now in (0.5, 1.5, 3.5):
        breaker = breaker.attempt(now).failure(now)
    assert breaker.cooldown == 4.0
    breaker = breaker.attempt(7.5).success()
    assert breaker.state == "closed"
    assert breaker.cooldown == 0.5
    reopened = breaker.failure(8.0)
    assert not reopened.allows(8.49)
    assert reopened.allows(8.5)


def test_half_open_failure_reopens_with_double_cooldown() -> None:
    breaker = Breaker().failure(0.0).attempt(0.5).failure(0.6)
    assert breaker.state == "open"
    assert breaker.opened_at == 0.6
    assert breaker.cooldown == 1.0
    assert not breaker.allows(1.59)
    assert breaker.allows(1.6)


def test_cooldown_doubles_up_to_max() -> None:
    breaker = Breaker().failure(0.0)
    cooldowns = []
    for _ in range(6):
        now = breaker.opened_at + breaker.cooldown
        breaker = breaker.attempt(now).failure(now)
        cooldowns.append(breaker.cooldown)
    assert cooldowns == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0]


def test_failure_while_closed_does_not_grow_cooldown() -> None:
    breaker = Breaker().failure(0.0).attempt(0.5).success().failure(1.0).failure(1.1)
    assert breaker.cooldown == 0.5
    assert breaker.opened_at == 1.1


@pytest.mark.parametrize(("base", "cap", "expected"), [(1.0, 3.0, [2.0, 3.0]), (2.0, 2.0, [2.0])])
def test_custom_cooldowns(base: float, cap: float, expected: list[float]) -> None:
    breaker = Breaker(cooldown=base, base_cooldown=base, max_cooldown=cap).failure(0.0)
    assert not breaker.allows(base - 0.01)
    seen = []
    for _ in expected:
        now = breaker.opened_at + breaker.cooldown
        breaker = breaker.attempt(now).failure(now)
        seen.append(breaker.cooldown)
    assert seen == expected
