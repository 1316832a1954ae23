"""Load generators for the benchmarks: a Python one (aiohttp, in a child process) and wrk.

The Python generator runs ``python -m loadtest.loadgen`` with a JSON ``LoadSpec`` on stdin and
prints one JSON result line. Closed loop: exactly ``concurrency`` keep-alive connections, each
sending its next request when the last one is answered. Open loop (``rate``): requests start at
fixed times, ``rate`` per second, whatever the answers do; latency runs from the planned start,
so a target that falls behind pays for the queue (no coordinated omission).

Requests carry a fixed body (an OTLP ``ExportTraceServiceRequest`` of exactly ``size`` bytes, so
the gateway counts real spans) and an ingest key chosen by a weighted round robin over
``keys``; every answer is counted per key over the whole run, warm-up included, so the 200s a
key got can be compared with the usage the gateway recorded.

``measure`` runs a spec from the parent: with wrk when it is on PATH (closed loop only; one
thread per connection, so a Lua ``response`` always belongs to the thread's last request),
else with the Python generator in a child process.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from loadtest.servers import HOST, ROUTE, Children

REQUEST_TIMEOUT_S = 5.0
ERROR_PAUSE_S = 0.01  # after an error, so that a dead target is not spun on


@dataclass(frozen=True)
class KeyShare:
    """One ingest key in the mix: ``weight`` requests out of every ``sum(weights)``."""

    label: str
    key: str | None = None
    weight: int = 1
    measured_only: bool = False  # not sent during the warm-up
    expect: tuple[int, ...] = (200,)  # statuses that are answers; anything else is an error


@dataclass
class LoadSpec:
    port: int
    path: str = ROUTE
    concurrency: int = 32
    seconds: float = 5.0
    warmup: float = 1.0
    size: int = 2048
    body: str = "otlp"  # "otlp-json" (OTLP/JSON), or "pattern": bytes(range(256)) repeated
    rate: float | None = None  # requests per second: open loop; None: closed loop
    keys: list[KeyShare] = field(default_factory=lambda: [KeyShare("anonymous")])

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> LoadSpec:
        data = json.loads(raw)
        data["keys"] = [
            KeyShare(**{**k, "expect": tuple(k.get("expect", (200,)))}) for k in data["keys"]
        ]
        return cls(**data)


# --------------------------------------------------------------------------------------------
# Bodies and key schedules
# --------------------------------------------------------------------------------------------


def otlp_traces(size: int) -> tuple[bytes, int]:
    """An ``ExportTraceServiceRequest`` of exactly ``size`` bytes (at least one span) and its
    span count: spans while they fit, then a resource attribute padded to the last byte."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )
    from opentelemetry.proto.trace.v1.trace_pb2 import Span

    request = ExportTraceServiceRequest()
    resource = request.resource_spans.add()
    resource.resource.attributes.add(key="service.name").value.string_value = "loadtest"
    pad = resource.resource.attributes.add(key="loadtest.pad")
    scope = resource.scope_spans.add()
    scope.scope.name = "loadtest"
    start = 1_700_000_000_000_000_000

    def add_span(i: int) -> None:
        span = scope.spans.add()
        span.trace_id = (i + 1).to_bytes(16, "big")
        span.span_id = (i + 1).to_bytes(8, "big")
        span.name = "loadtest-span"
        span.kind = Span.SPAN_KIND_SERVER
        span.start_time_unix_nano = start + i * 1000
        span.end_time_unix_nano = start + i * 1000 + 5000
        span.attributes.add(key="http.route").value.string_value = ROUTE

    add_span(0)
    span_bytes = request.ByteSize()
    add_span(1)
    span_bytes = request.ByteSize() - span_bytes
    spans = 2
    # Leave at least 16 bytes for the pad, whose own framing takes a few.
    while request.ByteSize() + span_bytes + 16 <= size:
        add_span(spans)
        spans += 1
    for _ in range(3):  # a length prefix growing by a byte can skip a size: one span less
        if spans > 1 and request.ByteSize() + 8 > size:
            del scope.spans[-1]
            spans -= 1
        gap = size - request.ByteSize()
        for length in range(max(0, gap), max(-1, gap - 16), -1):
            pad.value.string_value = "x" * length
            if request.ByteSize() <= size:
                break
        if request.ByteSize() == size or spans == 1:
            break
        pad.value.string_value = ""
        del scope.spans[-1]
        spans -= 1
    return request.SerializeToString(), spans


def otlp_traces_json(size: int) -> tuple[bytes, int]:
    """The OTLP/JSON form of ``otlp_traces``: exactly ``size`` bytes (at least one span) and
    its span count, with hex ids and compact separators, padded by a resource attribute."""
    start = 1_700_000_000_000_000_000

    def span(i: int) -> dict[str, Any]:
        return {
            "traceId": f"{i + 1:032x}",
            "spanId": f"{i + 1:016x}",
            "name": "loadtest-span",
            "kind": 2,
            "startTimeUnixNano": str(start + i * 1000),
            "endTimeUnixNano": str(start + i * 1000 + 5000),
            "attributes": [{"key": "http.route", "value": {"stringValue": ROUTE}}],
        }

    def encode(spans: int, pad: int) -> bytes:
        resource = {
            "attributes": [
                {"key": "service.name", "value": {"stringValue": "loadtest"}},
                {"key": "loadtest.pad", "value": {"stringValue": "x" * pad}},
            ]
        }
        scope = {"scope": {"name": "loadtest"}, "spans": [span(i) for i in range(spans)]}
        body = {"resourceSpans": [{"resource": resource, "scopeSpans": [scope]}]}
        return json.dumps(body, separators=(",", ":")).encode()

    spans = 1
    while len(encode(spans + 1, 0)) <= size:
        spans += 1
    # The pad is ASCII: each character of it is one byte of the body.
    return encode(spans, max(0, size - len(encode(spans, 0)))), spans


def pattern_body(size: int) -> bytes:
    return (bytes(range(256)) * (size // 256 + 1))[:size]


def build_body(kind: str, size: int) -> tuple[bytes, int]:
    if kind == "otlp":
        return otlp_traces(size)
    if kind == "otlp-json":
        return otlp_traces_json(size)
    if kind == "pattern":
        return pattern_body(size), 0
    raise ValueError(f"unknown body kind {kind!r}")


def schedule(keys: Sequence[KeyShare], warmup: bool = False) -> list[int]:
    """Key indices in smooth weighted round-robin order (nginx's), one cycle of sum(weights)."""
    weights = [0 if (warmup and k.measured_only) else max(0, k.weight) for k in keys]
    total = sum(weights)
    if total == 0:
        raise ValueError("no key to send" + (" during the warm-up" if warmup else ""))
    current = [0] * len(keys)
    order = []
    for _ in range(total):
        for i, weight in enumerate(weights):
            current[i] += weight
        best = max(range(len(keys)), key=lambda i: current[i])
        current[best] -= total
        order.append(best)
    return order


def content_type(kind: str) -> str:
    return "application/json" if kind == "otlp-json" else "application/x-protobuf"


def key_headers(key: KeyShare, kind: str = "otlp") -> dict[str, str]:
    headers = {"content-type": content_type(kind)}
    if key.key is not None:
        headers["authorization"] = f"Bearer {key.key}"
    return headers


def percentile(sorted_values: Sequence[float], pct: float) -> float | None:
    if not sorted_values:
        return None
    rank = max(1, math.ceil(pct / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


# --------------------------------------------------------------------------------------------
# The Python generator (child process)
# --------------------------------------------------------------------------------------------


class _Tally:
    """Answers and errors: per key over the whole run, latencies within the measured window."""

    def __init__(self, keys: Sequence[KeyShare], measure_from: float, measure_to: float) -> None:
        self.keys = keys
        self.measure_from = measure_from
        self.measure_to = measure_to
        self.latencies: list[float] = []
        self.errors = 0
        self.error_samples: dict[str, int] = {}
        self.by_key: dict[str, dict[str, int]] = {k.label: {} for k in keys}

    def add(self, index: int, started: float, ended: float, outcome: int | str) -> bool:
        """Count one request; True when it was an answer (not an error)."""
        key = self.keys[index]
        counts = self.by_key[key.label]
        name = str(outcome)
        counts[name] = counts.get(name, 0) + 1
        answered = isinstance(outcome, int) and outcome in key.expect
        if self.measure_from <= started < self.measure_to:
            if answered:
                self.latencies.append(ended - started)
            else:
                self.errors += 1
                sample = f"HTTP {outcome}" if isinstance(outcome, int) else outcome
                self.error_samples[sample] = self.error_samples.get(sample, 0) + 1
        return answered

    def result(self, seconds: float, **extra: Any) -> dict[str, Any]:
        self.latencies.sort()
        p50 = percentile(self.latencies, 50)
        p99 = percentile(self.latencies, 99)
        return {
            "tool": "python-aiohttp",
            "requests": len(self.latencies),
            "errors": self.errors,
            "error_samples": self.error_samples,
            "req_per_s": len(self.latencies) / seconds,
            "p50_ms": None if p50 is None else p50 * 1000,
            "p99_ms": None if p99 is None else p99 * 1000,
            "max_ms": self.latencies[-1] * 1000 if self.latencies else None,
            "by_key": self.by_key,
            "seconds": seconds,
            **extra,
        }


async def _post(session: Any, url: str, body: bytes, headers: dict[str, str]) -> int | str:
    import aiohttp

    try:
        async with session.post(url, data=body, headers=headers) as resp:
            await resp.read()
            return int(resp.status)
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        return type(exc).__name__


async def run_closed(spec: LoadSpec) -> dict[str, Any]:
    import aiohttp

    url = f"http://{HOST}:{spec.port}{spec.path}"
    body, items = build_body(spec.body, spec.size)
    headers = [key_headers(k, spec.body) for k in spec.keys]
    warm_order, order = schedule(spec.keys, warmup=True), schedule(spec.keys)
    counter = itertools.count()
    connections = 0

    async def on_connection_created(*_: Any) -> None:
        nonlocal connections
        connections += 1

    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(on_connection_created)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    start = time.perf_counter()
    tally = _Tally(spec.keys, start + spec.warmup, start + spec.warmup + spec.seconds)

    async def worker() -> None:
        # One session with a one-connection pool per worker: exactly `concurrency` keep-alive
        # connections, each carrying one request at a time.
        connector = aiohttp.TCPConnector(limit=1, keepalive_timeout=60)
        async with aiohttp.ClientSession(
            connector=connector, timeout=timeout, trace_configs=[trace], trust_env=False
        ) as session:
            while True:
                t0 = time.perf_counter()
                if t0 >= tally.measure_to:
                    return
                cycle = warm_order if t0 < tally.measure_from else order
                index = cycle[next(counter) % len(cycle)]
                outcome = await _post(session, url, body, headers[index])
                if not tally.add(index, t0, time.perf_counter(), outcome):
                    await asyncio.sleep(ERROR_PAUSE_S)

    # Every request in flight at the end is awaited: its answer is counted like any other.
    async with asyncio.timeout(spec.warmup + spec.seconds + REQUEST_TIMEOUT_S + 5):
        await asyncio.gather(*(worker() for _ in range(spec.concurrency)))
    return tally.result(
        spec.seconds,
        mode="closed",
        body_bytes=len(body),
        items_per_request=items,
        client_connections=connections,
    )


async def run_open(spec: LoadSpec) -> dict[str, Any]:
    import aiohttp

    assert spec.rate is not None and spec.rate > 0
    url = f"http://{HOST}:{spec.port}{spec.path}"
    body, items = build_body(spec.body, spec.size)
    headers = [key_headers(k, spec.body) for k in spec.keys]
    warm_order, order = schedule(spec.keys, warmup=True), schedule(spec.keys)
    interval = 1.0 / spec.rate
    planned = int((spec.warmup + spec.seconds) * spec.rate)
    cap = max(256, int(spec.rate * REQUEST_TIMEOUT_S))  # in flight, then requests are dropped
    start = time.perf_counter() + 0.05
    tally = _Tally(spec.keys, start + spec.warmup, start + spec.warmup + spec.seconds)
    in_flight: set[asyncio.Task[None]] = set()
    dropped = 0
    max_lag = 0.0
    connector = aiohttp.TCPConnector(limit=spec.concurrency, keepalive_timeout=60)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)

    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, trust_env=False
    ) as session:

        async def one(index: int, planned_at: float) -> None:
            outcome = await _post(session, url, body, headers[index])
            tally.add(index, planned_at, time.perf_counter(), outcome)

        for i in range(planned):
            planned_at = start + i * interval
            delay = planned_at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                await asyncio.sleep(0)  # behind schedule: still let answers be read
                if planned_at >= tally.measure_from:
                    max_lag = max(max_lag, -delay)
            cycle = warm_order if planned_at < tally.measure_from else order
            index = cycle[i % len(cycle)]
            if len(in_flight) >= cap:
                dropped += 1
                tally.add(index, planned_at, planned_at, "dropped")
                continue
            task = asyncio.create_task(one(index, planned_at))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        if in_flight:
            await asyncio.wait(set(in_flight), timeout=REQUEST_TIMEOUT_S + 2)
        for task in list(in_flight):
            task.cancel()
    return tally.result(
        spec.seconds,
        mode="open",
        rate=spec.rate,
        planned=planned,
        dropped=dropped,
        max_lag_ms=max_lag * 1000,
        body_bytes=len(body),
        items_per_request=items,
    )


async def fire(
    port: int,
    keys: Sequence[str],
    concurrency: int,
    body: bytes,
    path: str = ROUTE,
    deadline_s: float = 600.0,
) -> dict[str, int]:
    """One request per key, ``concurrency`` at a time (all start at once); status counts."""
    import aiohttp

    url = f"http://{HOST}:{port}{path}"
    counts: dict[str, int] = {}
    remaining = iter(keys)
    connector = aiohttp.TCPConnector(limit=concurrency, keepalive_timeout=60)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, trust_env=False
    ) as session:

        async def worker() -> None:
            headers = {"content-type": "application/x-protobuf", "authorization": ""}
            for key in remaining:
                headers["authorization"] = f"Bearer {key}"
                outcome = str(await _post(session, url, body, headers))
                counts[outcome] = counts.get(outcome, 0) + 1

        async with asyncio.timeout(deadline_s):
            await asyncio.gather(*(worker() for _ in range(min(concurrency, len(keys)) or 1)))
    return counts


def _child_main() -> int:
    spec = LoadSpec.from_json(sys.stdin.buffer.read())
    runner = run_closed if spec.rate is None else run_open
    print(json.dumps(asyncio.run(runner(spec))), flush=True)
    return 0


# --------------------------------------------------------------------------------------------
# wrk (parent side)
# --------------------------------------------------------------------------------------------

_WRK_SCRIPT = r"""
-- Generated by loadtest.loadgen. One connection per thread, so `last` is the key of the
-- request a response answers. `counts` is flat ("key:status" -> n): wrk's thread:get
-- crashes on nested tables.
local keys = {%(keys)s}
local cycle_measured = {%(measured)s}
local cycle_warm = {%(warm)s}
local cycle = cycle_measured
local reqs = {}
local n = 0
local last = 1
counts = {}
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  if args[1] == "warm" then cycle = cycle_warm end
  local f = assert(io.open(%(body_path)s, "rb"))
  local body = f:read("*a")
  f:close()
  for i, key in ipairs(keys) do
    local headers = {["Content-Type"] = %(content_type)s}
    if key ~= "" then headers["Authorization"] = "Bearer " .. key end
    reqs[i] = wrk.format("POST", %(path)s, headers, body)
  end
end

function request()
  n = n + 1
  last = cycle[(n - 1) %% #cycle + 1]
  return reqs[last]
end

function response(status, headers, body)
  local k = last .. ":" .. status
  counts[k] = (counts[k] or 0) + 1
end

function done(summary, latency, requests)
  local parts = {}
  for _, t in ipairs(threads) do
    for k, count in pairs(t:get("counts")) do
      local i, status = k:match("^(%%d+):(%%d+)$")
      table.insert(parts, string.format("[%%s,%%s,%%d]", i, status, count))
    end
  end
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%%d,"duration_us":%%d,"connect":%%d,"read":%%d,"write":%%d,' ..
    '"status":%%d,"timeout":%%d,"p50_us":%%d,"p99_us":%%d,"max_us":%%d,"counts":[%%s]}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max, table.concat(parts, ",")))
end
"""


def wrk_path() -> str | None:
    return shutil.which("wrk")


def _lua_string(text: str) -> str:
    return json.dumps(text)  # a JSON string of printable ASCII is a valid Lua string


def _lua_list(values: Iterable[int]) -> str:
    return ",".join(str(v + 1) for v in values)


def _wrk_once(
    children: Children, spec: LoadSpec, script: Path, seconds: int, phase: str
) -> dict[str, Any]:
    binary = wrk_path()
    assert binary is not None
    argv = [
        binary,
        f"-t{spec.concurrency}",
        f"-c{spec.concurrency}",
        f"-d{seconds}s",
        f"--timeout={int(REQUEST_TIMEOUT_S)}s",
        "-s",
        str(script),
        f"http://{HOST}:{spec.port}{spec.path}",
        "--",
        phase,
    ]
    child = children.spawn(f"wrk-{phase}", argv, capture=True, python=False)
    try:
        limit = seconds + REQUEST_TIMEOUT_S + 30
        try:
            out, _ = child.proc.communicate(timeout=limit)
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"wrk exceeded {limit:.0f}s") from exc
        lines = [ln for ln in out.decode(errors="replace").splitlines() if ln.startswith("WRKJSON")]
        if child.proc.returncode != 0 or not lines:
            raise RuntimeError(f"wrk failed ({child.proc.returncode}):\n" + child.log_tail())
        result: dict[str, Any] = json.loads(lines[-1].removeprefix("WRKJSON "))
        return result
    finally:
        children.stop(child)


def run_wrk(children: Children, spec: LoadSpec) -> dict[str, Any]:
    """The closed-loop run with wrk: an unmeasured warm-up run, then the measured one (wrk
    durations are whole seconds)."""
    body, items = build_body(spec.body, spec.size)
    with tempfile.TemporaryDirectory(prefix="loadtest-wrk-") as folder:
        body_path = Path(folder) / "body.bin"
        body_path.write_bytes(body)
        script = Path(folder) / "mix.lua"
        script.write_text(
            _WRK_SCRIPT
            % {
                "keys": ",".join(_lua_string(k.key or "") for k in spec.keys),
                "measured": _lua_list(schedule(spec.keys)),
                "warm": _lua_list(schedule(spec.keys, warmup=True)),
                "body_path": _lua_string(str(body_path)),
                "path": _lua_string(spec.path),
                "content_type": _lua_string(content_type(spec.body)),
            }
        )
        by_key: dict[str, dict[str, int]] = {k.label: {} for k in spec.keys}
        runs = []
        if spec.warmup > 0:
            runs.append(("warm", max(1, math.ceil(spec.warmup))))
        seconds = max(1, round(spec.seconds))
        runs.append(("measured", seconds))
        measured: dict[str, Any] = {}
        for phase, duration in runs:
            measured = _wrk_once(children, spec, script, duration, phase)
            for index, status, count in measured["counts"]:
                counts = by_key[spec.keys[index - 1].label]
                counts[str(status)] = counts.get(str(status), 0) + count
    answered = 0
    errors = sum(measured[k] for k in ("connect", "read", "write", "timeout"))
    samples = {k: measured[k] for k in ("connect", "read", "write", "timeout") if measured[k]}
    for index, status, count in measured["counts"]:
        if status in spec.keys[index - 1].expect:
            answered += count
        else:
            errors += count
            samples[f"HTTP {status}"] = samples.get(f"HTTP {status}", 0) + count
    duration_s = measured["duration_us"] / 1e6
    return {
        "tool": "wrk",
        "mode": "closed",
        "requests": answered,
        "errors": errors,
        "error_samples": samples,
        "req_per_s": answered / duration_s if duration_s else None,
        # wrk's percentiles cover every answer it read, errors included.
        "p50_ms": measured["p50_us"] / 1000,
        "p99_ms": measured["p99_us"] / 1000,
        "max_ms": measured["max_us"] / 1000,
        "by_key": by_key,
        "seconds": duration_s,
        "body_bytes": len(body),
        "items_per_request": items,
        "client_connections": spec.concurrency,
    }


def run_python(children: Children, spec: LoadSpec) -> dict[str, Any]:
    child = children.spawn(
        "loadgen", ["-m", "loadtest.loadgen"], capture=True, stdin=spec.to_json()
    )
    try:
        limit = spec.warmup + spec.seconds + REQUEST_TIMEOUT_S + 30
        try:
            out, _ = child.proc.communicate(timeout=limit)
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"load generator exceeded {limit:.0f}s") from exc
        if child.proc.returncode != 0:
            raise RuntimeError(
                f"load generator failed ({child.proc.returncode}):\n" + child.log_tail()
            )
        result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
        return result
    finally:
        children.stop(child)


def measure(children: Children, spec: LoadSpec, use_wrk: bool) -> dict[str, Any]:
    """Run ``spec``: wrk for a closed loop when asked (and installed), else the Python one."""
    if use_wrk and spec.rate is None and wrk_path() is not None:
        return run_wrk(children, spec)
    return run_python(children, spec)


if __name__ == "__main__":
    sys.exit(_child_main())
