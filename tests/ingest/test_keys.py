from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import BadRequest, ConfigError
from gateway.ingest.keys import (
    KEY_PREFIX,
    MAX_KEY_LENGTH,
    KeyHasher,
    extract_key,
    generate_key,
    strip_key_param,
)

SECRET = b"0123456789abcdef"


def test_generated_keys_are_prefixed_unique_and_extractable() -> None:
    first, second = generate_key(), generate_key()
    assert first.startswith(KEY_PREFIX)
    assert first != second
    assert extract_key([(b"x-ingest-key", first.encode())]) == first


@pytest.mark.parametrize("scheme", [b"Bearer", b"bearer", b"BEARER", b"bEaReR"])
def test_bearer_scheme_is_case_insensitive(scheme: bytes) -> None:
    headers = [(b"authorization", scheme + b" igk_abc")]
    assert extract_key(headers) == "igk_abc"


def test_x_ingest_key() -> None:
    assert extract_key([(b"x-ingest-key", b"igk_abc")]) == "igk_abc"


def test_no_key_headers() -> None:
    assert extract_key([(b"content-type", b"application/json")]) is None


@pytest.mark.parametrize("value", [b"Basic dXNlcjpwYXNz", b"Token igk_abc", b"Bearerigk_abc"])
def test_non_bearer_authorization_is_ignored(value: bytes) -> None:
    assert extract_key([(b"authorization", value)]) is None


def test_non_bearer_authorization_falls_through_to_x_ingest_key() -> None:
    headers = [(b"authorization", b"Basic dXNlcjpwYXNz"), (b"x-ingest-key", b"igk_abc")]
    assert extract_key(headers) == "igk_abc"


def test_query_key_only_when_allowed() -> None:
    assert extract_key([], b"a=1&key=igk_q", allow_query=False) is None
    assert extract_key([], b"a=1&key=igk_q", allow_query=True) == "igk_q"


def test_query_key_is_percent_decoded() -> None:
    assert extract_key([], b"key=igk_%41b", allow_query=True) == "igk_Ab"


@pytest.mark.parametrize(
    ("headers", "query"),
    [
        ([(b"x-ingest-key", b"igk_header")], b"key=igk_query"),
        ([(b"authorization", b"Bearer igk_a"), (b"x-ingest-key", b"igk_b")], b""),
        ([(b"x-ingest-key", b"igk_b"), (b"authorization", b"Bearer igk_a")], b""),
        ([(b"authorization", b"Bearer igk_a"), (b"authorization", b"Bearer igk_b")], b""),
        ([], b"key=igk_a&key=igk_b"),
    ],
)
def test_two_different_keys_in_one_request_are_refused(
    headers: list[tuple[bytes, bytes]], query: bytes
) -> None:
    """Regression: the first key found was charged, so which one depended on header order."""
    with pytest.raises(BadRequest, match="more than one ingest key"):
        extract_key(headers, query, allow_query=True)


def test_the_same_key_twice_is_one_key() -> None:
    headers = [(b"authorization", b"Bearer igk_a"), (b"x-ingest-key", b"igk_a")]
    assert extract_key(headers, b"key=igk_a", allow_query=True) == "igk_a"


@pytest.mark.parametrize(
    "headers",
    [
        [(b"authorization", b"Bearer ")],
        [(b"authorization", b"Bearer  \t ")],
        [(b"x-ingest-key", b"")],
        [(b"x-ingest-key", b"   ")],
    ],
    ids=["bearer-empty", "bearer-blank", "header-empty", "header-blank"],
)
def test_empty_header_key_is_none(headers: list[tuple[bytes, bytes]]) -> None:
    assert extract_key(headers) is None


@pytest.mark.parametrize("query", [b"key=", b"key", b"key=%20%20", b"key=+"])
def test_empty_query_key_is_none(query: bytes) -> None:
    assert extract_key([], query, allow_query=True) is None


def test_surrounding_whitespace_is_stripped() -> None:
    assert extract_key([(b"authorization", b"Bearer   igk_abc \t")]) == "igk_abc"
    assert extract_key([(b"x-ingest-key", b" igk_abc ")]) == "igk_abc"
    assert extract_key([], b"key=%20igk_abc%20", allow_query=True) == "igk_abc"


@pytest.mark.parametrize("name", [b"authorization", b"x-ingest-key"])
def test_oversized_header_key_is_none(name: bytes) -> None:
    prefix = b"Bearer " if name == b"authorization" else b""
    longest = b"k" * MAX_KEY_LENGTH
    assert extract_key([(name, prefix + longest)]) == longest.decode()
    assert extract_key([(name, prefix + longest + b"k")]) is None


def test_oversized_query_key_is_none() -> None:
    query = b"key=" + b"k" * (MAX_KEY_LENGTH + 1)
    assert extract_key([], query, allow_query=True) is None


@pytest.mark.parametrize(
    ("query", "stripped"),
    [
        (b"key=igk_s", b""),
        (b"a=1&key=igk_s&b=2", b"a=1&b=2"),
        (b"key=igk_s&z=9&a=1", b"z=9&a=1"),
        (b"x=1&key&key=igk_s&y=2", b"x=1&y=2"),
        (b"key=&a=1", b"a=1"),
        (b"key=one&a=1&key=two", b"a=1"),
        (b"monkey=1&key=igk_s&keys=2", b"monkey=1&keys=2"),
        (b"a=key=1", b"a=key=1"),
    ],
)
def test_strip_key_param(query: bytes, stripped: bytes) -> None:
    assert strip_key_param(query) == stripped


def test_strip_key_param_without_key_is_unchanged() -> None:
    query = b"b=2&a=1&keyring=x"
    assert strip_key_param(query) == query
    assert strip_key_param(b"") == b""


@pytest.mark.parametrize("name", [b"k%65y", b"%6Bey"])
def test_a_query_key_that_is_accepted_never_travels_upstream(name: bytes) -> None:
    query = name + b"=igk_secret&a=1"
    assert extract_key([], query, allow_query=True) == "igk_secret"
    assert b"igk_secret" not in strip_key_param(query)


def test_hasher_is_deterministic() -> None:
    digest = KeyHasher(SECRET)("igk_abc")
    assert len(digest) == 32
    assert KeyHasher(SECRET)("igk_abc") == digest


def test_hasher_differs_by_key() -> None:
    hasher = KeyHasher(SECRET)
    assert hasher("igk_abc") != hasher("igk_abd")


def test_hasher_differs_by_secret() -> None:
    assert KeyHasher(SECRET)("igk_abc") != KeyHasher(SECRET[::-1])("igk_abc")


def test_hasher_rejects_short_secrets() -> None:
    with pytest.raises(ConfigError, match="at least 16 bytes"):
        KeyHasher(SECRET[:15])


def test_hasher_repr_hides_the_secret() -> None:
    text = repr(KeyHasher(SECRET))
    assert SECRET.decode() not in text
    assert text == "KeyHasher(secret=***)"


header_names = st.one_of(
    st.sampled_from([b"authorization", b"x-ingest-key", b"content-type"]), st.binary(max_size=20)
)
header_values = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda v: b"Bearer " + v, st.binary(max_size=300)),
)


@given(
    headers=st.lists(st.tuples(header_names, header_values), max_size=8),
    query=st.binary(max_size=300),
    allow_query=st.booleans(),
)
def test_extract_key_finds_one_key_or_refuses_two(
    headers: list[tuple[bytes, bytes]], query: bytes, allow_query: bool
) -> None:
    try:
        key = extract_key(headers, query, allow_query)
    except BadRequest as exc:
        assert str(exc) == "the request carries more than one ingest key"
        return
    assert key is None or (isinstance(key, str) and key != "")
