"""Bad input against a real gateway process, over raw sockets where a client would refuse.

Every case uses a tenant of its own. A refused request reaches no upstream and counts no
usage; whatever happened, the worker stays healthy: ``GET /healthz`` answers 200 and a normal
request with the same key is admitted and counted exactly once. Where the gateway has no
documented answer (conflicting framing headers, huge heads) the test allows "4xx or the
connection closed" and never 2xx or 5xx; the ids and comments record what was seen.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from gateway.responses import decode_status, decode_status_json
from tests.badinput.rawhttp import Answer, chunked, head, request
from tests.badinput.samples import (
    ITEMS,
    ONE_SPAN,
    deep_json,
    protobuf_body,
)
from tests.harness import Gateway, Upstream

JSON = "application/json"
PROTOBUF = "application/x-protobuf"


@dataclass(frozen=True)
class Case:
    """``build(gateway, key)`` gives the bytes to send (and optionally bytes to send later)."""

    build: Callable[[Gateway, str], tuple[bytes, bytes]]
    statuses: frozenset[int]
    code: str | None = None
    may_close: bool = False
    pause: float = 0.0


def post(
    target: bytes = b"/v1/traces",
    *,
    content_type: str | None = JSON,
    extra: tuple[tuple[str, str], ...] = (),
    length: int | None = None,
) -> Callable[[str, bytes], bytes]:
    """A POST head with the key; Content-Length is the body's unless given or chunked."""

    def build(key: str, body: bytes) -> bytes:
        headers = [("Authorization", f"Bearer {key}")]
        if content_type is not None:
            headers.append(("Content-Type", content_type))
        headers.extend(extra)
        if length is not None:
            headers.append(("Content-Length", str(length)))
        elif not any(n.lower() == "transfer-encoding" for n, _ in extra):
            headers.append(("Content-Length", str(len(body))))
        return head("POST", target, headers)

    return build


def simple(
    body: Callable[[Gateway], bytes], **kwargs: Any
) -> Callable[[Gateway, str], tuple[bytes, bytes]]:
    make_head = post(**kwargs)

    def build(gateway: Gateway, key: str) -> tuple[bytes, bytes]:
        data = body(gateway)
        return make_head(key, data) + data, b""

    return build


def framed(
    headers: Callable[[str], list[tuple[str, str]]], body: bytes, target: bytes = b"/v1/traces"
) -> Callable[[Gateway, str], tuple[bytes, bytes]]:
    def build(_gateway: Gateway, key: str) -> tuple[bytes, bytes]:
        return head("POST", target, headers(key)) + body, b""

    return build


def too_large(gw: Gateway) -> bytes:
    return b"\0" * (gw.max_body + 1)


def gzip_bomb(gw: Gateway) -> bytes:
    return gzip.compress(b"\0" * (gw.max_decompressed * 32), compresslevel=9, mtime=0)


def key_and_json(key: str) -> list[tuple[str, str]]:
    return [("Authorization", f"Bearer {key}"), ("Content-Type", JSON)]


REFUSED_413 = frozenset({413})
CLIENT_ERROR = frozenset(range(400, 500))

CASES = {
    # 413 payload_too_large, from the declared length before the body is read.
    "too-large": Case(simple(too_large, content_type=PROTOBUF), REFUSED_413, "payload_too_large"),
    # A declared length over the limit: 413 at once, the body is never waited for.
    "declared-too-large": Case(
        lambda gw, key: (post(length=gw.max_body * 64)(key, b"") + b"{", b""),
        REFUSED_413,
        "payload_too_large",
    ),
    # Chunked, no length declared: counted while read, 413 once past the limit.
    "too-large-chunked": Case(
        lambda gw, key: (
            post(extra=(("Transfer-Encoding", "chunked"),))(key, b"") + chunked(too_large(gw)),
            b"",
        ),
        REFUSED_413,
        "payload_too_large",
    ),
    # A lying small Content-Length before an oversized body: exactly the declared 10 bytes are
    # the body (not JSON: 400); the rest is never read as part of it (Connection: close).
    "lying-small-length": Case(
        lambda gw, key: (post(length=10)(key, b"") + b"x" * (gw.max_body * 2), b""),
        frozenset({400}),
        "bad_request",
    ),
    # gzip of 32 x max_decompressed zeros, small on the wire: 413 while inflating.
    "gzip-bomb": Case(
        simple(gzip_bomb, content_type=PROTOBUF, extra=(("Content-Encoding", "gzip"),)),
        REFUSED_413,
        "payload_too_large",
    ),
    "wrong-content-type": Case(
        simple(lambda _: ONE_SPAN, content_type="text/xml"),
        frozenset({415}),
        "unsupported_media_type",
    ),
    "no-content-type": Case(
        simple(lambda _: ONE_SPAN, content_type=None),
        frozenset({415}),
        "unsupported_media_type",
    ),
    "unknown-content-encoding-br": Case(
        simple(lambda _: ONE_SPAN, extra=(("Content-Encoding", "br"),)),
        frozenset({415}),
        "unsupported_media_type",
    ),
    "deflate-that-is-not-zlib": Case(
        simple(lambda _: ONE_SPAN, extra=(("Content-Encoding", "deflate"),)),
        frozenset({400}),
        "bad_request",
    ),
    # uvicorn (httptools) refuses both orders with a plain-text 400 and closes the connection.
    "content-length-and-chunked": Case(
        framed(
            lambda key: [
                *key_and_json(key),
                ("Content-Length", "5"),
                ("Transfer-Encoding", "chunked"),
            ],
            chunked(ONE_SPAN),
        ),
        CLIENT_ERROR,
        may_close=True,
    ),
    "chunked-and-content-length": Case(
        framed(
            lambda key: [
                *key_and_json(key),
                ("Transfer-Encoding", "chunked"),
                ("Content-Length", str(len(ONE_SPAN))),
            ],
            chunked(ONE_SPAN),
        ),
        CLIENT_ERROR,
        may_close=True,
    ),
    "lying-small-length-and-chunked-oversized": Case(
        lambda gw, key: (
            head(
                "POST",
                b"/v1/traces",
                [*key_and_json(key), ("Content-Length", "10"), ("Transfer-Encoding", "chunked")],
            )
            + chunked(too_large(gw)),
            b"",
        ),
        CLIENT_ERROR,
        may_close=True,
    ),
    "two-content-lengths": Case(
        framed(
            lambda key: [*key_and_json(key), ("Content-Length", "3"), ("Content-Length", "62")],
            ONE_SPAN,
        ),
        CLIENT_ERROR,
        may_close=True,
    ),
    "invalid-utf8-json": Case(
        simple(lambda _: b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"name":"\xff\xfe"}]}]}]}'),
        frozenset({400}),
        "bad_request",
    ),
    "invalid-utf8-ndjson": Case(
        simple(lambda _: b'{"a":1}\n{"b":"\xc3\x28"}\n', target=b"/v1/logpush/app"),
        frozenset({400}),
        "bad_request",
    ),
    # 100 000 nested lists, gzipped to fit the body limit: RecursionError is mapped to 400.
    "deeply-nested-json": Case(
        simple(
            lambda _: gzip.compress(deep_json(100_000), mtime=0),
            extra=(("Content-Encoding", "gzip"),),
        ),
        frozenset({400}),
        "bad_request",
    ),
    "deeply-nested-ndjson": Case(
        simple(lambda _: b"[" * 10_000 + b"\n", target=b"/v1/logpush/app"),
        frozenset({400}),
        "bad_request",
    ),
    "truncated-protobuf": Case(
        simple(lambda _: protobuf_body("traces")[:-7], content_type=PROTOBUF),
        frozenset({400}),
        "bad_request",
    ),
    # A 100 KB header value: uvicorn takes it and the gateway forwards it; the test upstream
    # (aiohttp, 8190-byte header limit) answers 400, passed back and refunded.
    "header-value-100kb": Case(
        simple(lambda _: ONE_SPAN, extra=(("X-Big", "a" * 100_000),)),
        CLIENT_ERROR,
        may_close=True,
    ),
    # A 64 KB request line: uvicorn answers a plain-text 400 and closes.
    "request-line-64kb": Case(
        simple(lambda _: ONE_SPAN, target=b"/v1/traces?pad=" + b"a" * 65536),
        CLIENT_ERROR,
        may_close=True,
    ),
    # A raw NUL byte in the request target: uvicorn answers 400 and closes.
    "nul-byte-in-path": Case(
        simple(lambda _: ONE_SPAN, target=b"/v1/tra\x00ces"),
        CLIENT_ERROR,
        may_close=True,
    ),
    "nul-byte-in-header-value": Case(
        simple(lambda _: ONE_SPAN, extra=(("X-Nul", "a\x00b"),)),
        CLIENT_ERROR,
        may_close=True,
    ),
    # 2000 headers: forwarded; the test upstream (aiohttp) refuses more than 128: 400 passed
    # back and refunded. Never a 5xx.
    "many-small-headers-2000": Case(
        simple(lambda _: ONE_SPAN, extra=tuple((f"X-H{i}", "v") for i in range(2000))),
        CLIENT_ERROR,
        may_close=True,
    ),
    # A slow client: 10 of 100 declared bytes, then nothing: 408 request_timeout.
    "body-never-finished": Case(
        lambda _gw, key: (post(length=100)(key, b"") + b'{"resourceS', b""),
        frozenset({408}),
        "request_timeout",
    ),
    "get-method": Case(
        lambda _gw, key: (head("GET", b"/v1/traces", key_and_json(key)), b""),
        frozenset({405}),
        "method_not_allowed",
    ),
}


def send(gateway: Gateway, data: bytes, then: bytes = b"", pause: float = 0.0) -> Answer:
    host, port = gateway.url.removeprefix("http://").split(":")
    return request(host, int(port), data, then=then, pause=pause)


def normal_request(gateway: Gateway, key: str) -> Answer:
    return send(gateway, post()(key, ONE_SPAN) + ONE_SPAN)


def error_code(answer: Answer) -> str:
    if answer.headers.get("content-type") == PROTOBUF:
        return decode_status(answer.body)[1]
    body = json.loads(answer.body)
    if "error" in body:
        return str(body["error"])
    return str(decode_status_json(answer.body)[1])


def assert_healthy_and_counts_once(
    gateway: Gateway, upstream: Upstream, org: str, key: str
) -> None:
    health = send(gateway, head("GET", b"/healthz", []))
    assert health.status == 200, health.describe()
    before = len(upstream.received(org))
    answer = normal_request(gateway, key)
    assert answer.status == 200, answer.describe()
    assert len(upstream.received(org)) == before + 1
    assert gateway.process.poll() is None


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gets_its_status_and_the_worker_stays_healthy(
    gateway: Gateway, upstream: Upstream, name: str
) -> None:
    case = CASES[name]
    org, key = gateway.new_tenant(f"bad-{name}")
    data, later = case.build(gateway, key)
    answer = send(gateway, data, later, case.pause)

    if answer.closed_without_answer:
        assert case.may_close, f"{name}: {answer.describe()}"
    else:
        assert answer.status is not None
        assert answer.status < 500, f"{name}: {answer.describe()}"
        assert not 200 <= answer.status < 300, f"{name}: {answer.describe()}"
        assert answer.status in case.statuses, f"{name}: {answer.describe()}"
        if case.code is not None:
            assert error_code(answer) == case.code
    assert upstream.received(org) == []
    assert gateway.usage(org) == {"requests": 0, "bytes": 0, "items": 0}

    assert_healthy_and_counts_once(gateway, upstream, org, key)
    assert gateway.usage(org) == {"requests": 1, "bytes": len(ONE_SPAN), "items": 1}


@pytest.mark.parametrize(
    "target",
    [
        pytest.param(b"/v1/traces%00", id="percent-encoded-nul-after"),
        pytest.param(b"/v1/tra%00ces", id="percent-encoded-nul-inside"),
    ],
)
def test_a_percent_encoded_nul_in_the_path_is_refused_without_reaching_upstream(
    gateway: Gateway, upstream: Upstream, target: bytes
) -> None:
    before = len(upstream.received())
    answer = send(gateway, post(target)("igk_not_a_key", ONE_SPAN) + ONE_SPAN)
    assert answer.status is None or 400 <= answer.status < 500, answer.describe()
    assert len(upstream.received()) == before


def test_moderately_nested_json_is_admitted_and_counted(
    gateway: Gateway, upstream: Upstream
) -> None:
    org, key = gateway.new_tenant("nested-ok")
    value: object = "leaf"
    for _ in range(200):
        value = {"arrayValue": {"values": [value]}}
    span = {"name": "deep", "attributes": [{"key": "k", "value": value}]}
    body = json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}).encode()
    answer = send(gateway, post()(key, body) + body)
    assert answer.status == 200, answer.describe()
    assert gateway.usage(org) == {"requests": 1, "bytes": len(body), "items": 1}


def test_a_hundred_small_headers_are_forwarded_and_counted_once(
    gateway: Gateway, upstream: Upstream
) -> None:
    org, key = gateway.new_tenant("hundred-headers")
    headers = tuple((f"X-H{i}", "v") for i in range(100))
    answer = send(gateway, post(extra=headers)(key, ONE_SPAN) + ONE_SPAN)
    assert answer.status == 200, answer.describe()
    assert len(upstream.received(org)) == 1
    assert gateway.usage(org) == {"requests": 1, "bytes": len(ONE_SPAN), "items": 1}


def test_every_signal_is_counted_once_after_all_the_bad_input(
    gateway: Gateway, upstream: Upstream
) -> None:
    """Runs last in this module: the process survived everything above and still counts."""
    org, key = gateway.new_tenant("after-bad-input")
    for signal in ("traces", "logs", "metrics"):
        body = protobuf_body(signal)
        target = f"/v1/{signal}".encode()
        answer = send(gateway, post(target, content_type=PROTOBUF)(key, body) + body)
        assert answer.status == 200, answer.describe()
    assert len(upstream.received(org)) == 3
    usage = gateway.usage(org)
    assert usage["requests"] == 3
    assert usage["items"] == sum(ITEMS.values())
    assert send(gateway, head("GET", b"/readyz", [])).status == 200
    assert gateway.process.poll() is None
    assert "Exception in ASGI application" not in gateway.logs()
    assert "Traceback" not in gateway.logs()
