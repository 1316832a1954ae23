"""Listing orgs (the console's orgs page and ``GET /admin/orgs``), on every backend."""

from __future__ import annotations

from gateway.store import Store
from policies.model import Limits

NO_LIMITS = Limits()


async def test_orgs_are_listed_by_name_then_id_up_to_the_limit(store: Store) -> None:
    made = [await store.create_org(name, NO_LIMITS, None) for name in ("beta", "alpha", "gamma")]
    listed = await store.list_orgs()
    assert [o.name for o in listed] == ["alpha", "beta", "gamma"]
    assert {o.id for o in listed} == {o.id for o in made}
    assert [o.name for o in await store.list_orgs(limit=2)] == ["alpha", "beta"]
    # Each one whole, as get_org reads it.
    assert listed[0] == await store.get_org(listed[0].id)


async def test_a_query_finds_a_name_in_any_case_or_an_exact_id(store: Store) -> None:
    acme = await store.create_org("acme-prod", NO_LIMITS, None)
    await store.create_org("acme-staging", NO_LIMITS, None)
    other = await store.create_org("globex", NO_LIMITS, None)
    assert [o.name for o in await store.list_orgs("ACME")] == ["acme-prod", "acme-staging"]
    assert [o.id for o in await store.list_orgs(other.id)] == [other.id]
    assert [o.id for o in await store.list_orgs("prod")] == [acme.id]
    assert await store.list_orgs("initech") == []


async def test_like_wildcards_in_a_query_are_its_own_characters(store: Store) -> None:
    await store.create_org("a_b", NO_LIMITS, None)
    await store.create_org("axb", NO_LIMITS, None)
    await store.create_org("100%", NO_LIMITS, None)
    assert [o.name for o in await store.list_orgs("_")] == ["a_b"]
    assert [o.name for o in await store.list_orgs("%")] == ["100%"]
    assert await store.list_orgs("\\") == []
