"""Load test of the ingest gateway: OTLP exporters and log shippers of many tenants.

Seed tenants, then run headless from the repository root::

    python -m loadtest.seed --admin-url http://127.0.0.1:8081 --token $GATEWAY_ADMIN_TOKEN \\
        --orgs 1000 --out loadtest/tenants.json
    locust -f loadtest/locustfile.py --headless -u 50 -r 10 -t 30s --host http://127.0.0.1:8080

Traffic: OTLP/HTTP protobuf traces, logs and metrics and NDJSON logpush, in three sizes, as is
or gzip-compressed (``loadtest/payloads.py``), from tenants picked with a Zipf distribution (a
few orgs send most of it) plus ~1% requests with keys that do not exist. Every answer is judged
against what the tenant's kind should get:

==========  =========================================  ==============================
kind        expected                                   locust statistics row
==========  =========================================  ==============================
normal      2xx                                        ``/v1/traces [16k gzip]``, ...
over        2xx, or 402 ``usage_limit_exceeded``       ``gate: over``
suspended   402 ``billing_suspended``                  ``gate: suspended``
invalid     401 ``invalid_ingest_key``                 ``gate: invalid``
==========  =========================================  ==============================

A headless run exits 1, logging which threshold it missed, when the failure ratio of the
requests that should pass (normal tenants) exceeds ``LOADTEST_MAX_FAILURE_RATIO`` (0.01), when
the requests that should meet a gate got a wrong answer more often than that same ratio, or
when the p95 response time exceeds ``LOADTEST_MAX_P95_MS`` (500); else 0.

Environment: ``LOADTEST_TENANTS`` (``loadtest/tenants.json``), ``LOADTEST_MAX_FAILURE_RATIO``,
``LOADTEST_MAX_P95_MS``, ``LOADTEST_ZIPF_S`` (1.1: the Zipf exponent),
``LOADTEST_INVALID_SHARE`` (0.01).
"""

from __future__ import annotations

import bisect
import itertools
import json
import logging
import os
import random
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from locust import FastHttpUser, between, events, task
from locust.runners import WorkerRunner

from loadtest.payloads import CATALOG, PROTOBUF

logger = logging.getLogger("loadtest")

GATE_KINDS = ("over", "suspended", "invalid")
# the share of each size in the traffic: small batches are the most common
SIZE_WEIGHTS = {"2k": 6, "16k": 3, "64k": 1}
INVALID_KEYS = 16
_WEIGHTS = {
    signal: [SIZE_WEIGHTS[body.size] for body in bodies] for signal, bodies in CATALOG.items()
}


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sends a request: the ingest key and the kind of tenant it belongs to."""

    key: str
    kind: str


class ZipfPicker:
    """Picks tenants by rank with probability proportional to ``1 / rank**s``."""

    def __init__(self, callers: list[Caller], s: float, rng: random.Random) -> None:
        if not callers:
            raise ValueError("no tenants to pick from")
        self._callers = list(callers)
        rng.shuffle(self._callers)  # so a kind's rank does not depend on the file's order
        weights = [1.0 / rank**s for rank in range(1, len(self._callers) + 1)]
        self._cumulative = list(itertools.accumulate(weights))

    def __len__(self) -> int:
        return len(self._callers)

    def pick(self, rng: random.Random) -> Caller:
        point = rng.random() * self._cumulative[-1]
        return self._callers[bisect.bisect_right(self._cumulative, point)]


@dataclass(frozen=True, slots=True)
class Traffic:
    """Everything a user needs to choose its next request, built once per process."""

    picker: ZipfPicker
    invalid: tuple[Caller, ...]
    invalid_share: float

    def caller(self, rng: random.Random) -> Caller:
        if rng.random() < self.invalid_share:
            return rng.choice(self.invalid)
        return self.picker.pick(rng)


def load_traffic(path: Path) -> Traffic:
    try:
        orgs = json.loads(path.read_text())["orgs"]
    except FileNotFoundError:
        raise SystemExit(f"{path} not found: create tenants with python -m loadtest.seed") from None
    callers = [Caller(org["key"], org["kind"]) for org in orgs]
    s = float(os.environ.get("LOADTEST_ZIPF_S", "1.1"))
    # random keys of the real format, so only the store lookup can refuse them
    invalid = tuple(
        Caller(f"igk_{secrets.token_urlsafe(32)}", "invalid") for _ in range(INVALID_KEYS)
    )
    share = float(os.environ.get("LOADTEST_INVALID_SHARE", "0.01"))
    return Traffic(ZipfPicker(callers, s, random.Random(0)), invalid, share)


def refusal_code(status: int, content_type: str, content: bytes | None) -> str:
    """The gateway's code of a refusal: JSON ``error``, or the protobuf ErrorInfo reason."""
    if not content:
        return str(status)
    try:
        if content_type.startswith(PROTOBUF):
            decoded = status_pb2.Status.FromString(content)
            for detail in decoded.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return str(info.reason)
            return decoded.message or str(status)
        return str(json.loads(content).get("error", status))
    except (DecodeError, ValueError, AttributeError):
        return str(status)


def verdict(kind: str, status: int, code: str) -> str | None:
    """None when ``status``/``code`` is what a tenant of ``kind`` should get, else why not."""
    admitted = 200 <= status < 300
    if kind == "normal" and admitted:
        return None
    if kind == "over" and (admitted or (status == 402 and code == "usage_limit_exceeded")):
        return None
    if kind == "suspended" and status == 402 and code == "billing_suspended":
        return None
    if kind == "invalid" and status == 401 and code == "invalid_ingest_key":
        return None
    if status == 0:
        return f"{kind}: no response"
    if admitted:
        return f"{kind}: admitted with {status}"
    return f"{kind}: {status} {code}"


def gate_name(kind: str) -> str:
    return f"gate: {kind}"


@dataclass(frozen=True, slots=True)
class Thresholds:
    max_failure_ratio: float
    max_p95_ms: float

    @classmethod
    def from_env(cls) -> Thresholds:
        return cls(
            float(os.environ.get("LOADTEST_MAX_FAILURE_RATIO", "0.01")),
            float(os.environ.get("LOADTEST_MAX_P95_MS", "500")),
        )

    def missed(self, stats: Any) -> list[str]:
        """What the run missed, from locust's (master-aggregated) statistics."""
        total = stats.total
        if total.num_requests == 0:
            return ["no requests were made"]
        gates = [stats.entries.get((gate_name(kind), "POST")) for kind in GATE_KINDS]
        gate_requests = sum(entry.num_requests for entry in gates if entry is not None)
        gate_failures = sum(entry.num_failures for entry in gates if entry is not None)
        normal_requests = total.num_requests - gate_requests
        normal_failures = total.num_failures - gate_failures
        missed = []
        for label, failures, requests in (
            ("requests that should pass", normal_failures, normal_requests),
            ("requests that should meet a gate", gate_failures, gate_requests),
        ):
            ratio = failures / requests if requests else 0.0
            if ratio > self.max_failure_ratio:
                missed.append(
                    f"failure ratio {ratio:.2%} of {requests} {label} "
                    f"> LOADTEST_MAX_FAILURE_RATIO {self.max_failure_ratio:.2%}"
                )
        p95 = total.get_response_time_percentile(0.95)
        if p95 > self.max_p95_ms:
            missed.append(
                f"p95 response time {p95} ms > LOADTEST_MAX_P95_MS {self.max_p95_ms:g} ms"
            )
        return missed


TRAFFIC: Traffic | None = None


@events.init.add_listener  # type: ignore[untyped-decorator]
def _load_tenants(environment: Any, **_kwargs: Any) -> None:
    global TRAFFIC
    path = Path(os.environ.get("LOADTEST_TENANTS", "loadtest/tenants.json"))
    TRAFFIC = load_traffic(path)
    logger.info("%d tenants from %s", len(TRAFFIC.picker), path)


@events.quitting.add_listener  # type: ignore[untyped-decorator]
def _enforce_thresholds(environment: Any, **_kwargs: Any) -> None:
    options = environment.parsed_options
    if isinstance(environment.runner, WorkerRunner) or not (options and options.headless):
        return
    missed = Thresholds.from_env().missed(environment.stats)
    for reason in missed:
        logger.error("threshold missed: %s", reason)
    # set either way: the ratio decides, not locust's "any failure at all"
    environment.process_exit_code = 1 if missed else 0


class IngestUser(FastHttpUser):
    abstract = True
    host = "http://127.0.0.1:8080"
    wait_time = between(0.01, 0.1)

    def on_start(self) -> None:
        if TRAFFIC is None:
            raise RuntimeError("tenants not loaded: the init event did not run")
        self.traffic = TRAFFIC
        self.rng = random.Random()

    def send(self, signal: str) -> None:
        body = self.rng.choices(CATALOG[signal], weights=_WEIGHTS[signal])[0]
        caller = self.traffic.caller(self.rng)
        name = body.name if caller.kind == "normal" else gate_name(caller.kind)
        headers = {**body.headers, "Authorization": f"Bearer {caller.key}"}
        with self.client.post(
            body.path,
            data=body.data,  # type: ignore[arg-type]  # bytes are sent as they are
            headers=headers,
            name=name,
            catch_response=True,
        ) as response:
            status = response.status_code
            content_type = (response.headers or {}).get("content-type", "")
            code = refusal_code(status, content_type, response.content) if status >= 300 else ""
            wrong = verdict(caller.kind, status, code)
            if wrong is None:
                response.success()
            else:
                response.failure(wrong)


class OtlpExporter(IngestUser):
    """An OpenTelemetry SDK or Collector exporting over OTLP/HTTP."""

    weight = 3

    @task(5)
    def traces(self) -> None:
        self.send("traces")

    @task(3)
    def logs(self) -> None:
        self.send("logs")

    @task(2)
    def metrics(self) -> None:
        self.send("metrics")


class LogShipper(IngestUser):
    """An edge log shipper pushing NDJSON batches."""

    weight = 1

    @task
    def logpush(self) -> None:
        self.send("logpush")
