from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policies.reservations import ChunkPolicy, worth_waiting_for


def test_max_chunk_per_meter() -> None:
    policy = ChunkPolicy(max_requests=1, max_bytes=2, max_items=3)
    assert [policy.max_chunk(m) for m in ("requests", "bytes", "items")] == [1, 2, 3]


def test_strict_asks_for_exactly_what_is_needed() -> None:
    assert ChunkPolicy(strict=True).want("requests", 1, 1_000_000) == 1


@pytest.mark.parametrize(("need", "remaining"), [(5, 5), (6, 5), (1, 0)])
def test_need_at_or_above_remaining_asks_for_need(need: int, remaining: int) -> None:
    assert ChunkPolicy().want("requests", need, remaining) == need


@pytest.mark.parametrize(("replicas", "want"), [(1, 500), (2, 250), (4, 125)])
def test_replicas_share_half_of_what_is_left(replicas: int, want: int) -> None:
    assert ChunkPolicy(replicas=replicas).want("requests", 1, 1000) == want


def test_zero_replicas_count_as_one() -> None:
    assert ChunkPolicy(replicas=0).want("requests", 1, 1000) == 500


def test_max_chunk_caps_the_share() -> None:
    policy = ChunkPolicy(max_bytes=4096)
    assert policy.want("bytes", 100, 10**12) == 4096


def test_never_below_need_when_the_share_is_smaller() -> None:
    # share = 400 // 2 = 200, below the 300 needed.
    assert ChunkPolicy().want("items", 300, 400) == 300


def test_never_below_need_when_the_max_chunk_is_smaller() -> None:
    assert ChunkPolicy(max_items=10).want("items", 50, 10**9) == 50


policies = st.builds(
    ChunkPolicy,
    max_requests=st.integers(1, 10**6),
    max_bytes=st.integers(1, 10**12),
    max_items=st.integers(1, 10**9),
    replicas=st.integers(0, 64),
    strict=st.booleans(),
)


@given(
    policy=policies,
    meter=st.sampled_from(["requests", "bytes", "items"]),
    data=st.data(),
)
def test_want_is_between_need_and_remaining(
    policy: ChunkPolicy, meter: str, data: st.DataObject
) -> None:
    remaining = data.draw(st.integers(0, 10**12), label="remaining")
    need = data.draw(st.integers(0, remaining), label="need")
    want = policy.want(meter, need, remaining)
    assert need <= want <= remaining


def test_only_a_real_share_held_elsewhere_makes_a_refusal_a_retry() -> None:
    assert worth_waiting_for(others=49, need=1, left=99)  # an idle replica sits on half
    assert worth_waiting_for(others=130, need=1, left=130)
    assert not worth_waiting_for(others=5, need=1, left=100)  # a busy holder's last sliver
    assert not worth_waiting_for(others=30, need=40, left=100)  # could not cover this request
    assert not worth_waiting_for(others=0, need=1, left=0)
    assert not worth_waiting_for(others=40, need=1, left=0)  # at the limit: nothing returns
