"""Property tests: arbitrary request headers never break MeteringMiddleware.

The ingest app (dispatcher, MeteringMiddleware, ReverseProxy) is driven directly as an ASGI
callable with a hand-written scope, receive and send, in front of an in-memory store and an
in-memory upstream. Whatever the header list (bytes names and values, non-ASCII, very long,
content-type / content-encoding / content-length / authorization duplicated), nothing raises
out of the app and exactly one ``http.response.start`` goes out, with a documented status.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.ingest.app import IngestApp
from gateway.runtime import Runtime
from gateway.settings import Settings
from gateway.store.memory import MemoryStore
from gateway.types import Message
from policies.model import Limits
from tests.badinput.samples import EMPTY_TRACES, JSON, ONE_SPAN, PROTOBUF, protobuf_body
from tests.fakes import MemoryUpstream

SECRET = "k" * 32
DOCUMENTED = {200, 400, 401, 402, 405, 408, 413, 415, 429, 503}
MAX_BODY = 4096
# Python refuses int() of strings longer than this (CVE-2020-10735); see the xfail below.
INT_DIGITS = 4300


@dataclass
class Rig:
    loop: asyncio.AbstractEventLoop
    runtime: Runtime
    app: IngestApp
    upstream: MemoryUpstream
    keys: dict[str, str] = field(default_factory=dict)

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    loop = asyncio.new_event_loop()
    upstream = MemoryUpstream()
    settings_ = Settings(
        data_dir=tmp_path_factory.mktemp("headers"),
        store_url="memory://",
        key_secret=SECRET,
        upstream_url="http://upstream.invalid",
        flush_interval=3600,
        max_body=MAX_BODY,
        max_decompressed=4 * MAX_BODY,
        body_timeout=0.05,
        stripe_webhook_secret="whsec_headers_test",
    )
    runtime = Runtime(settings_, store=MemoryStore(), upstream=upstream, spool_dir=None)
    loop.run_until_complete(runtime.start())
    rig = Rig(loop, runtime, IngestApp(runtime), upstream)

    async def tenant(name: str, limits: Limits, suspended: bool = False) -> str:
        org = await runtime.store.create_org(name, limits, None)
        if suspended:
            await runtime.store.set_suspension(org.id, True, "test")
        key = "igk_" + name + "_0123456789"
        await runtime.store.create_key(org.id, runtime.hasher(key))
        return key

    rig.keys["open"] = rig.run(tenant("open", Limits()))
    rig.keys["tight"] = rig.run(tenant("tight", Limits(requests=3, rate_requests=2)))
    rig.keys["suspended"] = rig.run(tenant("suspended", Limits(), suspended=True))
    try:
        yield rig
    finally:
        loop.run_until_complete(runtime.close())
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


@dataclass
class Exchange:
    starts: list[Message]
    bodies: list[Message]

    @property
    def status(self) -> int:
        return int(self.starts[0]["status"])


def drive(
    rig: Rig,
    method: str,
    path: str,
    headers: list[tuple[bytes, bytes]],
    chunks: list[bytes],
    *,
    query: bytes = b"",
    stall: bool = False,
) -> Exchange:
    """One request through the ingest app; any exception propagates to the test."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode("latin-1", "replace"),
        "query_string": query,
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8080),
    }
    pending = list(chunks) or [b""]
    sent: list[Message] = []

    async def receive() -> Message:
        if pending:
            chunk = pending.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(pending) or stall}
        if stall:
            await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    rig.run(rig.app(scope, receive, send))
    return Exchange(
        [m for m in sent if m["type"] == "http.response.start"],
        [m for m in sent if m["type"] == "http.response.body"],
    )


def assert_one_documented_response(exchange: Exchange) -> None:
    assert len(exchange.starts) == 1, exchange
    assert exchange.status in DOCUMENTED, exchange
    final = [m for m in exchange.bodies if not m.get("more_body", False)]
    assert len(final) == 1, exchange
    for name, value in exchange.starts[0].get("headers", []):
        assert isinstance(name, bytes) and isinstance(value, bytes)


def assert_healthy(rig: Rig) -> None:
    health = drive(rig, "GET", "/healthz", [], [])
    assert health.status == 200
    normal = drive(rig, "POST", "/v1/traces", [*auth(rig, "open"), ctype(JSON)], [ONE_SPAN])
    assert normal.status == 200


def auth(rig: Rig, tenant: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", b"Bearer " + rig.keys[tenant].encode())]


def ctype(value: bytes) -> tuple[bytes, bytes]:
    return (b"content-type", value)


# Strategies

_NAMES = [
    b"content-type",
    b"content-encoding",
    b"content-length",
    b"authorization",
    b"x-ingest-key",
    b"x-gateway-org-id",
    b"transfer-encoding",
    b"connection",
    b"host",
    b"x-forwarded-for",
    b"expect",
]
_VALUES = [
    b"application/json",
    b"application/x-protobuf",
    b"application/x-protobuf; charset=\xff",
    b"APPLICATION/JSON ; x=y",
    b"text/plain",
    b"gzip",
    b"x-gzip",
    b"identity",
    b"br",
    b"gzip, gzip",
    b"chunked",
    b"0",
    b"-1",
    b"1e3",
    b"\xd9\xa3",  # Arabic-Indic digit three: str.isdigit() says yes, int() agrees, bytes do not
    b"99999999999999999999999999",
    b"Bearer ",
    b"Bearer",
    b"bearer igk_unknown",
    b"BEARER igk_\xff\xfe",
    b"Basic dXNlcjpwYXNz",
    b"\x00\r\n\t ",
    "h\u00e9llo \u2603".encode(),
    b"x-gateway-org-id, authorization",
]
names = st.one_of(
    st.sampled_from(_NAMES),
    st.sampled_from(_NAMES).map(bytes.upper),
    st.binary(min_size=0, max_size=40),
)
values = st.one_of(
    st.sampled_from(_VALUES),
    st.binary(max_size=200),
    st.text(max_size=100).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.integers(min_value=0, max_value=10**30).map(lambda n: str(n).encode()),
    st.text(alphabet="0123456789", min_size=1, max_size=INT_DIGITS).map(str.encode),
    st.integers(min_value=1_000, max_value=200_000).map(lambda n: b"v" * n),
)
header_lists = st.lists(st.tuples(names, values), max_size=12)
tenants = st.sampled_from(["open", "tight", "suspended", None])
bodies = st.one_of(
    st.sampled_from(
        [
            EMPTY_TRACES,
            ONE_SPAN,
            protobuf_body("traces"),
            gzip.compress(ONE_SPAN),
            b"",
            b"\xff\xfe\x00",
            b"[" * 5000,
            b"x" * (MAX_BODY + 1),
        ]
    ),
    st.binary(max_size=300),
)
paths = st.sampled_from(["/v1/traces", "/v1/logs", "/v1/metrics", "/v1/logpush/app"])
methods = st.sampled_from(["POST", "POST", "POST", "GET", "PUT"])


def split(body: bytes, pieces: int) -> list[bytes]:
    if pieces <= 1 or len(body) < pieces:
        return [body]
    step = len(body) // pieces
    return [body[i * step : (i + 1) * step if i < pieces - 1 else len(body)] for i in range(pieces)]


@settings(
    max_examples=400,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    method=methods,
    path=paths,
    tenant=tenants,
    key_first=st.booleans(),
    headers=header_lists,
    body=bodies,
    pieces=st.integers(min_value=1, max_value=4),
    query=st.sampled_from([b"", b"key=igk_unknown", b"a=1&key=&key=%ff", b"k%65y=\xff"]),
)
def test_arbitrary_headers_get_exactly_one_documented_answer(
    rig: Rig,
    method: str,
    path: str,
    tenant: str | None,
    key_first: bool,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    pieces: int,
    query: bytes,
) -> None:
    key_header = auth(rig, tenant) if tenant else []
    full = key_header + headers if key_first else headers + key_header
    exchange = drive(rig, method, path, full, split(body, pieces), query=query)
    assert_one_documented_response(exchange)


@settings(max_examples=100, deadline=None, database=None)
@given(
    headers=st.lists(
        st.sampled_from(
            [
                (b"content-type", b"application/json"),
                (b"content-type", b"application/x-protobuf"),
                (b"content-type", b"text/html"),
                (b"content-encoding", b"gzip"),
                (b"content-encoding", b"identity"),
                (b"content-encoding", b"deflate"),
                (b"content-length", b"20"),
                (b"content-length", b"999999999"),
                (b"content-length", b"abc"),
                (b"authorization", b"Bearer igk_unknown"),
                (b"authorization", b"Basic Zm9vOmJhcg=="),
                (b"x-ingest-key", b"igk_other"),
                (b"x-gateway-org-id", b"org_forged"),
            ]
        ),
        min_size=1,
        max_size=10,
    ),
)
def test_duplicated_framing_and_key_headers_get_exactly_one_documented_answer(
    rig: Rig, headers: list[tuple[bytes, bytes]]
) -> None:
    exchange = drive(rig, "POST", "/v1/traces", auth(rig, "open") + headers, [EMPTY_TRACES])
    assert_one_documented_response(exchange)
    if exchange.status == 200:
        forwarded = rig.upstream.requests[-1].headers
        org_headers = [v for n, v in forwarded if n.lower() == "x-gateway-org-id"]
        assert org_headers != ["org_forged"] and len(org_headers) == 1


def test_the_worker_is_healthy_after_the_property_runs(rig: Rig) -> None:
    assert_healthy(rig)


@pytest.mark.parametrize(
    ("headers", "body", "status"),
    [
        pytest.param([ctype(b"text/xml")], EMPTY_TRACES, 415, id="content-type"),
        pytest.param([ctype(JSON), (b"content-encoding", b"br")], EMPTY_TRACES, 415, id="encoding"),
        pytest.param(
            [ctype(JSON), (b"content-length", str(MAX_BODY + 1).encode())],
            EMPTY_TRACES,
            413,
            id="declared-too-large",
        ),
        pytest.param([ctype(PROTOBUF)], b"x" * (MAX_BODY + 1), 413, id="too-large"),
        pytest.param([ctype(JSON)], b'{"resourceSpans": [\xff]}', 400, id="bad-utf8"),
        pytest.param([ctype(JSON), (b"content-encoding", b"gzip")], b"\x1f\x8b", 400, id="gzip"),
    ],
)
def test_each_bad_header_class_gets_its_documented_status(
    rig: Rig, headers: list[tuple[bytes, bytes]], body: bytes, status: int
) -> None:
    exchange = drive(rig, "POST", "/v1/traces", auth(rig, "open") + headers, [body])
    assert exchange.status == status
    assert_healthy(rig)


def test_a_stalled_body_gets_408(rig: Rig) -> None:
    exchange = drive(
        rig, "POST", "/v1/traces", [*auth(rig, "open"), ctype(JSON)], [b"{"], stall=True
    )
    assert exchange.status == 408
    assert_healthy(rig)


def test_a_client_gone_mid_body_gets_no_answer_and_no_error(rig: Rig) -> None:
    sent: list[Message] = []
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": b"{", "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> Message:
        return messages.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/traces",
        "query_string": b"",
        "headers": [*auth(rig, "open"), ctype(JSON)],
        "client": ("127.0.0.1", 1),
    }
    rig.run(rig.app(scope, receive, send))
    assert sent == []
    assert_healthy(rig)


def test_a_content_length_of_5000_digits_is_refused_not_raised(rig: Rig) -> None:
    headers = [*auth(rig, "open"), ctype(JSON), (b"content-length", b"9" * 5000)]
    exchange = drive(rig, "POST", "/v1/traces", headers, [EMPTY_TRACES])
    assert exchange.status in {400, 413}


def test_a_webhook_content_length_of_superscript_digits_is_refused_not_raised(rig: Rig) -> None:
    headers = [ctype(JSON), (b"content-length", b"\xb2")]
    exchange = drive(rig, "POST", "/webhooks/stripe", headers, [b"{}"])
    assert exchange.status == 400
