from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policies.model import MICROS_PER_MINOR
from policies.money import balance_minor, spent_minor


@pytest.mark.parametrize(
    ("micros", "minor"),
    [(0, 0), (1, 1), (999_999, 1), (1_000_000, 1), (1_000_001, 2), (-1_500_000, -1)],
)
def test_spending_rounds_up_to_a_whole_minor_unit(micros: int, minor: int) -> None:
    assert spent_minor(micros) == minor


@pytest.mark.parametrize(
    ("credited", "spent", "balance"),
    [
        pytest.param(100, 0, 100, id="nothing-spent"),
        pytest.param(100, 1, 99, id="a-millionth-costs-a-cent"),
        pytest.param(100, 1_000_000, 99, id="exactly-one"),
        pytest.param(100, 1_000_001, 98, id="just-over-one"),
        pytest.param(0, 5, -1, id="below-zero"),
        pytest.param(2**63 - 1, 2**63 - 1, 2**63 - 1 - 9_223_372_036_855, id="int64-range"),
    ],
)
def test_balance_minor(credited: int, spent: int, balance: int) -> None:
    assert balance_minor(credited, spent) == balance


@given(credited=st.integers(-(2**64), 2**64), spent=st.integers(-(2**64), 2**64))
def test_balance_is_exact_integer_arithmetic(credited: int, spent: int) -> None:
    expected = credited - math.ceil(Fraction(spent, MICROS_PER_MINOR))
    assert balance_minor(credited, spent) == expected
