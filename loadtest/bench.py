"""The gateway's benchmark: one command, everything on 127.0.0.1, every process stopped after.

    python -m loadtest.bench [--seconds 5] [--concurrency 32] [--sizes 2048,65536]
                             [--formats protobuf,json] [--targets ID,...] [--quick]
                             [--out reports/bench]

1. A fast upstream: nginx answering ``200`` when it is on PATH, else the raw asyncio server.
2. The same closed-loop load (wrk when on PATH, else ``loadtest.loadgen`` in a child process:
   exactly ``--concurrency`` keep-alive connections, OTLP trace batches of each size in
   protobuf and in JSON) against: direct, nginx as a reverse proxy, a Starlette + httpx
   proxy, a raw ASGI + aiohttp proxy, and the gateway with gates off, with gates on (SQLite;
   and an org on a plan with signal meters and key limits), with gates on (PostgreSQL +
   Redis) and with gates on over PostgreSQL with 1, 2 and 4 workers. uvicorn's httptools on
   uvloop (the gateway's default loop) for every Python server, no access log.
3. req/s, p50, p99 and errors per target and body, the ratios the gateway aims for, and for
   the targets on the shared store its work per request: PostgreSQL transactions, Redis
   commands and the store's CPU.
4. p99 added over direct at half the gateway's max throughput (open loop, fixed rate).
5. Exactness: an org with a small requests limit takes a fixed share of each gates-on run; its
   usage and the 200s its key got must both equal the limit (else the exit status is 1).
6. Memory with 100,000 keys cached, and 10,000 cold keys at once -> one store read per key.
7. A table on stdout, ``<out>.json`` with every number and the machine, ``<out>.png``.

``--quick`` (the smoke test): 1 s runs, one size, 1,000 and 500 keys, no PostgreSQL targets.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import secrets
import shlex
import shutil
import signal
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loadtest.loadgen import KeyShare, LoadSpec, fire, measure, otlp_traces, wrk_path
from loadtest.servers import (
    HOST,
    REPO_ROOT,
    Child,
    Children,
    http_request,
    nginx_path,
    pick_http_impl,
    start_nginx,
    start_proxy,
    start_python_upstream,
    start_ready,
)

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/0"
BIG_LIMITS = {"requests": 10**12, "bytes": 10**15, "items": 10**13}
# The entitlements target: its orgs are on this plan (limits on signal meters, an overage cap)
# and each key has limits of its own, so a request is reserved on 12 meters, not 3.
BENCH_PLAN = {
    "limits": {"traces.items": 10**13, "traces.bytes": 10**15, "logs.bytes": 10**15},
    "overage": {"traces.items": 10**6},
}
BIG_KEY_LIMITS = {"requests": 10**12, "items": 10**13, "traces.items": 10**13}
# Every EXACT_SHARE-th request of a gates-on run carries the small org's key.
MAIN_WEIGHT, EXACT_WEIGHT = 9, 1
EXACT_MAX_LIMIT = 500
MEMORY_ORGS = 100
MEMORY_BODY_BYTES = 512
MEMORY_CONCURRENCY = 64
COLD_CONCURRENCY = 500
SEED_BATCH = 10_000
MB = 1024 * 1024


@dataclass(frozen=True)
class Load:
    """What each run sends: OTLP traces of ``size`` bytes encoded as ``format``."""

    size: int
    format: str  # protobuf or json

    @property
    def body(self) -> str:
        return "otlp-json" if self.format == "json" else "otlp"

    def __str__(self) -> str:
        return f"{self.size} B {self.format}"


@dataclass(frozen=True)
class Target:
    id: str
    label: str
    short: str


TARGETS = (
    Target("direct", "direct to the upstream", "direct"),
    Target("nginx-proxy", "nginx reverse proxy", "nginx\nproxy"),
    Target("starlette-httpx", "Starlette + httpx proxy", "Starlette\n+ httpx"),
    Target("asgi-aiohttp", "raw ASGI + aiohttp proxy", "ASGI\n+ aiohttp"),
    Target("gates-off", "gateway, gates off", "gateway\ngates off"),
    Target("gates-on", "gateway, gates on, SQLite", "gateway\nSQLite"),
    Target(
        "gates-on-plan",
        "gateway, gates on, SQLite, plan + signal meters + key limits",
        "gateway\nplan + keys",
    ),
    Target(
        "gates-on-before",
        "gateway before entitlements (--baseline-src), gates on, SQLite",
        "gateway\nbefore",
    ),
    Target("gates-on-pg-redis", "gateway, gates on, PostgreSQL + Redis", "gateway\nPG + Redis"),
    Target("workers1-pg", "gateway, gates on, PostgreSQL, 1 worker", "PostgreSQL\n1 worker"),
    Target("workers2-pg", "gateway, gates on, PostgreSQL, 2 workers", "PostgreSQL\n2 workers"),
    Target("workers4-pg", "gateway, gates on, PostgreSQL, 4 workers", "PostgreSQL\n4 workers"),
)
# Targets whose store is the shared one (PostgreSQL, with Redis or not), and their workers.
SHARED_STORE = {"gates-on-pg-redis": 1, "workers1-pg": 1, "workers2-pg": 2, "workers4-pg": 4}
GATES_ON = ("gates-on", "gates-on-plan", "gates-on-before", *SHARED_STORE)
# (name, numerator, denominator, minimum or None, what it says)
RATIOS = (
    ("gates_on_over_raw_aiohttp", "gates-on", "asgi-aiohttp", 0.8, "gates on / raw ASGI+aiohttp"),
    ("gates_on_over_gates_off", "gates-on", "gates-off", 0.9, "gates on / gates off"),
    ("gates_on_over_starlette_httpx", "gates-on", "starlette-httpx", 8.0, "gates on / httpx"),
    ("workers2_over_workers1", "workers2-pg", "workers1-pg", None, "2 workers / 1 worker"),
    ("workers4_over_workers1", "workers4-pg", "workers1-pg", None, "4 workers / 1 worker"),
    (
        "plan_over_raw_aiohttp",
        "gates-on-plan",
        "asgi-aiohttp",
        None,
        "plan+keys / raw ASGI+aiohttp",
    ),
    (
        "before_over_raw_aiohttp",
        "gates-on-before",
        "asgi-aiohttp",
        None,
        "before / raw ASGI+aiohttp",
    ),
    ("plan_over_before", "gates-on-plan", "gates-on-before", 0.9, "plan+keys / before"),
)
P99_ADDED_MAX_MS = 3.0
RSS_MAX_MB = 200.0


@dataclass
class Options:
    seconds: float
    warmup: float
    concurrency: int
    sizes: list[int]
    formats: list[str]
    quick: bool
    out: Path
    memory_keys: int
    cold_keys: int
    loadgen: str  # auto, wrk or python
    argv: list[str]
    #: Target ids to run (None: all); the others are reported as skipped.
    targets: list[str] | None = None
    #: A source tree of the gateway before entitlements (a checkout of f6ebeed, say), run as
    #: the gates-on-before target; None skips it.
    baseline_src: Path | None = None

    @property
    def loads(self) -> list[Load]:
        return [Load(size, fmt) for fmt in self.formats for size in self.sizes]


# --------------------------------------------------------------------------------------------
# The gateway as a child process
# --------------------------------------------------------------------------------------------


def _gateway_command() -> list[str]:
    for script in (
        Path(sys.executable).with_name("ingest-gateway"),
        REPO_ROOT / ".venv/bin/ingest-gateway",
    ):
        if script.exists():
            return [str(script)]
    return [sys.executable, "-m", "gateway.cli"]


@dataclass
class Gateway:
    child: Child
    admin_port: int
    token: str
    orgs: list[str] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.child.port

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        raw = None if body is None else json.dumps(body).encode()
        headers = {"authorization": f"Bearer {self.token}", "content-type": "application/json"}
        status, answer = http_request(self.admin_port, method, path, raw, headers, timeout=10)
        if status >= 300:
            raise RuntimeError(f"admin {method} {path} answered {status}: {answer[:200]!r}")
        return json.loads(answer) if answer.startswith((b"{", b"[")) else answer.decode()

    def create_org(self, name: str, limits: dict[str, int]) -> str:
        org_id: str = self.admin("POST", "/admin/orgs", {"name": name, "limits": limits})["id"]
        self.orgs.append(org_id)
        return org_id

    def create_key(self, org_id: str, limits: dict[str, int] | None = None) -> str:
        body = None if limits is None else {"name": "bench", "limits": limits}
        key: str = self.admin("POST", f"/admin/orgs/{org_id}/keys", body)["key"]
        return key

    def requests_used(self, org_id: str) -> int:
        return int(self.admin("GET", f"/admin/orgs/{org_id}/usage")["usage"].get("requests", 0))

    def metric(self, name: str) -> float | None:
        text: str = self.admin("GET", "/metrics")
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return None


def start_gateway(
    children: Children,
    name: str,
    *,
    upstream_url: str,
    store_url: str,
    data_dir: Path,
    token: str,
    key_secret: str,
    gates: bool = True,
    workers: int = 1,
    redis_url: str | None = None,
    source: Path | None = None,
) -> Gateway:
    env = {k: v for k, v in children.env.items() if not k.startswith("GATEWAY_")}
    env.update(
        GATEWAY_ADMIN_TOKEN=token, GATEWAY_KEY_SECRET=key_secret, GATEWAY_LOG_LEVEL="warning"
    )
    if source is not None:  # another version of the gateway, imported ahead of this one
        env["PYTHONPATH"] = str(source)
    admin_ports: dict[int, int] = {}

    def spawn(port: int) -> Child:
        admin_port = free_admin_port(port)
        admin_ports[port] = admin_port
        argv = [
            *_gateway_command(),
            "serve",
            "--host",
            HOST,
            "--port",
            str(port),
            "--admin-host",
            HOST,
            "--admin-port",
            str(admin_port),
            "--upstream",
            upstream_url,
            "--store",
            store_url,
            "--data-dir",
            str(data_dir / f"{name}-{port}"),
            "--log-level",
            "warning",
            "--workers",
            str(workers),
        ]
        if not gates:
            argv.append("--no-gates")
        if redis_url:
            argv += ["--redis", redis_url]
        return children.spawn(name, argv, port=port, python=False, env=env)

    def ready(port: int) -> bool:
        if http_request(port, "GET", "/healthz")[0] != 200:
            return False
        auth = {"authorization": f"Bearer {token}"}
        return http_request(admin_ports[port], "GET", "/metrics", None, auth)[0] == 200

    child = start_ready(children, spawn, ready)
    return Gateway(child, admin_ports[child.port], token)


def free_admin_port(avoid: int) -> int:
    for _ in range(10):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            port = int(sock.getsockname()[1])
        if port != avoid:
            return port
    raise RuntimeError("no free port for the admin listener")


def vm_status(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of a process, in MB."""
    found: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                found[name] = int(value.split()[0]) / 1024
    return found


# --------------------------------------------------------------------------------------------
# PostgreSQL + Redis
# --------------------------------------------------------------------------------------------


def pg_redis_unreachable() -> str | None:
    """Why PostgreSQL or Redis cannot be used, or None when both answer."""
    for what, port in (("PostgreSQL", 5432), ("Redis", 6379)):
        with socket.socket() as sock:
            sock.settimeout(1.0)
            if sock.connect_ex((HOST, port)) != 0:
                return f"{what} not reachable on {HOST}:{port}"
    try:
        asyncio.run(_pg_execute("SELECT 1"))
    except Exception as exc:  # any driver or server error means: not usable here
        return f"PostgreSQL: {type(exc).__name__}: {exc}"
    try:
        import redis

        client = redis.Redis.from_url(REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:  # as above
        return f"Redis: {type(exc).__name__}: {exc}"
    return None


async def _pg_execute(statement: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_URL, timeout=3)
    try:
        await conn.execute(statement, timeout=10)
    finally:
        await conn.close()


def postgres_cpu_seconds() -> float:
    """User + system CPU of every process named postgres (the server and its backends)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            if name.startswith("postgres"):
                fields = stat[stat.rindex(")") + 2 :].split()
                total += int(fields[11]) + int(fields[12])
    return total / ticks


def store_counters() -> dict[str, float]:
    """What the shared store has done so far: PostgreSQL's transactions in the bench's
    database and its processes' CPU seconds; Redis's commands and CPU seconds."""

    async def transactions() -> int:
        import asyncpg

        conn = await asyncpg.connect(PG_URL, timeout=3)
        try:
            value: int = await conn.fetchval(
                "SELECT xact_commit + xact_rollback FROM pg_stat_database"
                " WHERE datname = current_database()"
            )
        finally:
            await conn.close()
        return value

    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
    try:
        info: dict[str, Any] = client.info()
    finally:
        client.close()
    return {
        "pg_transactions": float(asyncio.run(transactions())),
        "pg_cpu_s": postgres_cpu_seconds(),
        "redis_commands": float(info["total_commands_processed"]),
        "redis_cpu_s": float(info["used_cpu_user"]) + float(info["used_cpu_sys"]),
    }


def store_cost(before: dict[str, float], after: dict[str, float], requests: int) -> dict[str, Any]:
    """The shared store's work per request over a run (its flushes settled after it)."""
    n = max(1, requests)
    delta = {k: after[k] - before[k] for k in before}
    return {
        "requests": requests,
        "pg_transactions_per_1k": 1000 * delta["pg_transactions"] / n,
        "redis_commands_per_1k": 1000 * delta["redis_commands"] / n,
        "store_cpu_us_per_request": 1e6 * (delta["pg_cpu_s"] + delta["redis_cpu_s"]) / n,
        **delta,
    }


def drop_pg_schema(schema: str, orgs: Sequence[str]) -> None:
    """The bench's own schema and Redis keys (``gw:{<org>}:*``), and nothing else."""
    with contextlib.suppress(Exception):
        asyncio.run(_pg_execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    with contextlib.suppress(Exception):
        import redis

        client = redis.Redis.from_url(REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
        try:
            for org in orgs:
                doomed = list(client.scan_iter(match=f"gw:{{{org}}}:*", count=1000))[:100_000]
                if doomed:
                    client.delete(*doomed)
        finally:
            client.close()


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


@dataclass
class Bench:
    opts: Options
    children: Children
    workdir: Path
    use_wrk: bool
    http_impl: str
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    key_secret: str = field(default_factory=lambda: secrets.token_hex(32))
    rows: list[dict[str, Any]] = field(default_factory=list)
    exactness: list[dict[str, Any]] = field(default_factory=list)
    p99_added: list[dict[str, Any]] = field(default_factory=list)
    upstream_port: int = 0
    upstream_kind: str = ""

    @property
    def upstream_url(self) -> str:
        return f"http://{HOST}:{self.upstream_port}"

    def rps(self, target: str, load: Load) -> float | None:
        for row in self.rows:
            if row["target"] == target and _load_of(row) == load and row["status"] == "ok":
                value: float | None = row["req_per_s"]
                return value
        return None

    def spec(
        self, port: int, load: Load, keys: list[KeyShare], rate: float | None = None
    ) -> LoadSpec:
        o = self.opts
        return LoadSpec(
            port=port,
            concurrency=o.concurrency,
            seconds=o.seconds,
            warmup=o.warmup,
            size=load.size,
            body=load.body,
            rate=rate,
            keys=keys,
        )

    # targets

    def run_targets(self) -> None:
        unreachable = None if self.opts.quick else pg_redis_unreachable()
        for target in TARGETS:
            status = self.skip_reason(target, unreachable)
            if status is not None:
                for load in self.opts.loads:
                    self.rows.append(_row(target, load, status))
                continue
            done: set[Load] = set()
            try:
                with self.server(target) as (port, gateway):
                    for load in self.opts.loads:
                        self.measure(target, port, gateway, load)
                        done.add(load)
            except RuntimeError as exc:
                print(f"bench: {target.id}: {exc}", file=sys.stderr)
                for load in self.opts.loads:
                    if load not in done:
                        self.rows.append(_row(target, load, f"failed: {str(exc)[:200]}"))

    def skip_reason(self, target: Target, unreachable: str | None) -> str | None:
        if self.opts.targets is not None and target.id not in self.opts.targets:
            return "skipped (--targets)"
        if target.id == "nginx-proxy" and nginx_path() is None:
            return "not installed"
        if target.id in SHARED_STORE and self.opts.quick:
            return "skipped (--quick)"
        if target.id == "gates-on-before" and self.opts.baseline_src is None:
            return "skipped (no --baseline-src)"
        if target.id in SHARED_STORE and unreachable:
            return f"not reachable ({unreachable})"
        return None

    @contextlib.contextmanager
    def server(self, target: Target) -> Iterator[tuple[int, Gateway | None]]:
        children = self.children
        if target.id == "direct":
            yield self.upstream_port, None
            return
        schema = None
        if target.id == "nginx-proxy":
            child = start_nginx(children, "nginx-proxy", self.workdir, self.upstream_port)
            gateway = None
        elif target.id in ("starlette-httpx", "asgi-aiohttp"):
            child = start_proxy(children, target.id, self.upstream_port, self.http_impl)
            gateway = None
        else:
            store = f"sqlite://{self.workdir / (target.id + '.db')}"
            redis_url = REDIS_URL if target.id == "gates-on-pg-redis" else None
            if target.id in SHARED_STORE:
                schema = f"bench_{uuid.uuid4().hex[:12]}"
                store = f"{PG_URL}?schema={schema}"
            gateway = start_gateway(
                children,
                target.id,
                upstream_url=self.upstream_url,
                store_url=store,
                data_dir=self.workdir,
                token=self.token,
                key_secret=self.key_secret,
                gates=target.id != "gates-off",
                workers=SHARED_STORE.get(target.id, 1),
                redis_url=redis_url,
                source=self.opts.baseline_src if target.id == "gates-on-before" else None,
            )
            child = gateway.child
        try:
            yield child.port, gateway
        finally:
            children.stop(child)
            if schema is not None:
                drop_pg_schema(schema, gateway.orgs if gateway else [])

    def measure(self, target: Target, port: int, gateway: Gateway | None, load: Load) -> None:
        # Over more than one worker, a worker refused while another still holds the small org's
        # last quota answers 429 quota_held_elsewhere: a retry, never counted.
        expect = (200, 402, 429) if SHARED_STORE.get(target.id, 1) > 1 else (200, 402)
        keys = [
            KeyShare("main", "igk_unused_main", weight=MAIN_WEIGHT),
            KeyShare("exact", "igk_unused_exact", weight=EXACT_WEIGHT, measured_only=True),
        ]
        exact_org = None
        limit = 0
        if gateway is not None and target.id in GATES_ON:
            limit = self.exact_limit(load)
            main_org = gateway.create_org(f"bench-main-{load.size}-{load.format}", BIG_LIMITS)
            if target.id == "gates-on-plan":
                # The small limit is the key's; its org and the main one are on the plan.
                exact_org = gateway.create_org(f"bench-exact-{load.size}-{load.format}", BIG_LIMITS)
                gateway.admin("PUT", "/admin/plans/bench", BENCH_PLAN)
                for org in (main_org, exact_org):
                    gateway.admin("PATCH", f"/admin/orgs/{org}", {"plan": "bench"})
                main_key = gateway.create_key(main_org, BIG_KEY_LIMITS)
                exact_key = gateway.create_key(exact_org, {"requests": limit, "items": 10**13})
            else:
                exact_org = gateway.create_org(
                    f"bench-exact-{load.size}-{load.format}", {"requests": limit}
                )
                main_key, exact_key = gateway.create_key(main_org), gateway.create_key(exact_org)
            keys = [
                KeyShare("main", main_key, weight=MAIN_WEIGHT),
                KeyShare(
                    "exact",
                    exact_key,
                    weight=EXACT_WEIGHT,
                    measured_only=True,
                    expect=expect,
                ),
            ]
        shared = target.id in SHARED_STORE
        before = store_counters() if shared else None
        result = measure(self.children, self.spec(port, load, keys), self.use_wrk)
        by_key = result.pop("by_key")
        row = _row(target, load, "ok", **result)
        row["refused_402"] = by_key["exact"].get("402", 0) if exact_org else 0
        self.rows.append(row)
        _progress(row)
        if gateway is not None and exact_org is not None:
            ok = by_key["exact"].get("200", 0)
            used = wait_for_usage(gateway, exact_org)
            check = {
                "target": target.id,
                "size": load.size,
                "format": load.format,
                "limit": limit,
                "usage_requests": used,
                "generator_200s": ok,
                "refused_402": by_key["exact"].get("402", 0),
                "held_elsewhere_429": by_key["exact"].get("429", 0),
                "passed": used == limit and ok == limit,
            }
            self.exactness.append(check)
            if before is not None:  # after wait_for_usage: the run's flushes are in
                row["store"] = store_cost(before, store_counters(), result["requests"])
            if target.id == "gates-on":
                self.rate_runs(port, keys[0], load)

    def exact_limit(self, load: Load) -> int:
        """Small enough that the small org's key crosses it in the first third of the run."""
        reference = self.rps("gates-on", load) or 0.5 * (self.rps("gates-off", load) or 400)
        share = EXACT_WEIGHT / (MAIN_WEIGHT + EXACT_WEIGHT)
        expected = share * reference * self.opts.seconds
        return int(max(20, min(EXACT_MAX_LIMIT, expected * 0.3)) // 10 * 10)

    def rate_runs(self, gateway_port: int, key: KeyShare, load: Load) -> None:
        max_rps = self.rps("gates-on", load)
        if not max_rps:
            return
        rate = max(1.0, max_rps / 2)
        runs = {}
        for name, port in (("direct", self.upstream_port), ("gateway", gateway_port)):
            result = measure(self.children, self.spec(port, load, [key], rate=rate), False)
            result.pop("by_key", None)
            runs[name] = result
        added = _sub(runs["gateway"]["p99_ms"], runs["direct"]["p99_ms"])
        entry = {"size": load.size, "format": load.format, "rate": rate, **runs}
        entry["p99_added_ms"] = added
        self.p99_added.append(entry)
        print(
            f"  rate {rate:.0f}/s {load}: p99 direct {_f(runs['direct']['p99_ms'], '.2f')} ms, "
            f"gateway {_f(runs['gateway']['p99_ms'], '.2f')} ms",
            flush=True,
        )

    # memory and cold keys

    def memory_and_cold(self) -> dict[str, Any]:
        total = self.opts.memory_keys + self.opts.cold_keys
        db = self.workdir / "memory.db"
        started = time.monotonic()
        keys = asyncio.run(seed_keys(db, self.key_secret, total, MEMORY_ORGS))
        seeded_s = time.monotonic() - started
        warm, cold = keys[: self.opts.memory_keys], keys[self.opts.memory_keys :]
        gateway = start_gateway(
            self.children,
            "memory",
            upstream_url=self.upstream_url,
            store_url=f"sqlite://{db}",
            data_dir=self.workdir,
            token=self.token,
            key_secret=self.key_secret,
        )
        body, _ = otlp_traces(MEMORY_BODY_BYTES)
        try:
            pid = gateway.child.proc.pid
            before = vm_status(pid)
            started = time.monotonic()
            statuses = asyncio.run(fire(gateway.port, warm, MEMORY_CONCURRENCY, body))
            drive_s = time.monotonic() - started
            after = vm_status(pid)
            memory: dict[str, Any] = {
                "keys": len(warm),
                "orgs": MEMORY_ORGS,
                "seed_seconds": seeded_s,
                "drive_seconds": drive_s,
                "concurrency": MEMORY_CONCURRENCY,
                "statuses": statuses,
                "rss_mb_at_start": before.get("VmRSS"),
                "rss_mb": after.get("VmRSS"),
                "peak_rss_mb": after.get("VmHWM"),
            }
            print(
                f"  memory: {len(warm)} keys in {drive_s:.1f}s, "
                f"RSS {_f(memory['rss_mb'], '.1f')} MB",
                flush=True,
            )
            reads_before = settled_metric(gateway, "gateway_routing_store_reads")
            started = time.monotonic()
            cold_statuses = asyncio.run(fire(gateway.port, cold, COLD_CONCURRENCY, body))
            cold_s = time.monotonic() - started
            reads_after = settled_metric(gateway, "gateway_routing_store_reads")
            delta = _sub(reads_after, reads_before)
            cold_result = {
                "keys": len(cold),
                "concurrency": COLD_CONCURRENCY,
                "seconds": cold_s,
                "statuses": cold_statuses,
                "store_reads_before": reads_before,
                "store_reads_after": reads_after,
                "store_reads_delta": None if delta is None else int(delta),
            }
        finally:
            self.children.stop(gateway.child)
        return {"memory": memory, "cold_keys": cold_result}


def _load_of(entry: dict[str, Any]) -> Load:
    return Load(entry["size"], entry.get("format", "protobuf"))


def _row(target: Target, load: Load, status: str, **numbers: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "target": target.id,
        "label": target.label,
        "size": load.size,
        "format": load.format,
        "status": status,
        "req_per_s": None,
        "p50_ms": None,
        "p99_ms": None,
        "errors": None,
    }
    row.update(numbers)
    return row


def _progress(row: dict[str, Any]) -> None:
    print(
        f"  {row['label']:<40} {_load_of(row)!s:>15} {_f(row['req_per_s'], '.0f'):>7} req/s "
        f"p99 {_f(row['p99_ms'], '.2f')} ms, errors {row['errors']}",
        flush=True,
    )


async def seed_keys(path: Path, key_secret: str, count: int, orgs: int) -> list[str]:
    """``count`` keys over ``orgs`` orgs written straight into the SQLite store, in batches."""
    from gateway.ingest.keys import KeyHasher, generate_key
    from gateway.store.records import new_id
    from gateway.store.sqlite import SQLiteStore
    from policies.model import Limits

    store = SQLiteStore(str(path))
    await store.open()
    try:
        limits = Limits.from_dict(BIG_LIMITS)
        org_ids = [(await store.create_org(f"memory-{i}", limits, None)).id for i in range(orgs)]
        hasher = KeyHasher(key_secret.encode())
        keys = [generate_key() for _ in range(count)]
        stamp = datetime.now(UTC).isoformat()
        for start in range(0, count, SEED_BATCH):
            rows = [
                (new_id("key"), org_ids[i % orgs], hasher(keys[i]), stamp)
                for i in range(start, min(count, start + SEED_BATCH))
            ]

            def insert(conn: Any, rows: list[tuple[str, str, bytes, str]] = rows) -> None:
                # One transaction per batch: create_key() commits (and audits) key by key.
                conn.executemany(
                    "INSERT INTO ingest_keys (id, org_id, key_hash, created_at) "
                    "VALUES (?, ?, ?, ?)",
                    rows,
                )

            await store._write(insert)
    finally:
        await store.close()
    return keys


def wait_for_usage(gateway: Gateway, org_id: str, timeout: float = 12.0) -> int:
    """The org's committed requests once they stop moving (flushes run every second)."""
    deadline = time.monotonic() + timeout
    time.sleep(1.2)
    last = gateway.requests_used(org_id)
    while time.monotonic() < deadline:
        time.sleep(1.2)
        now = gateway.requests_used(org_id)
        if now == last:
            return now
        last = now
    return last


def settled_metric(gateway: Gateway, name: str, timeout: float = 12.0) -> float | None:
    """A gauge updated every flush interval, read until two reads 1.2 s apart agree."""
    deadline = time.monotonic() + timeout
    time.sleep(1.2)
    last = gateway.metric(name)
    while time.monotonic() < deadline:
        time.sleep(1.2)
        now = gateway.metric(name)
        if now == last:
            return now
        last = now
    return last


# --------------------------------------------------------------------------------------------
# Ratios, verdicts, report
# --------------------------------------------------------------------------------------------


def _sub(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _f(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def ratios(bench: Bench) -> list[dict[str, Any]]:
    found = []
    for name, top, bottom, minimum, text in RATIOS:
        for load in bench.opts.loads:
            a, b = bench.rps(top, load), bench.rps(bottom, load)
            value = None if a is None or b is None or b == 0 else a / b
            found.append(
                {
                    "name": name,
                    "label": text,
                    "size": load.size,
                    "format": load.format,
                    "value": value,
                    "minimum": minimum,
                    "met": None if minimum is None or value is None else value >= minimum,
                }
            )
    return found


def verdicts(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target: met or missed, and by how much (None: not measured)."""
    found: list[dict[str, Any]] = []

    def add(what: str, value: float | None, limit: float, at_least: bool, unit: str) -> None:
        if value is None:
            found.append({"target": what, "met": None, "text": "not measured"})
            return
        margin = value - limit if at_least else limit - value
        sign = ">=" if at_least else "<="
        found.append(
            {
                "target": what,
                "value": value,
                "limit": limit,
                "met": margin >= 0,
                "margin": margin,
                "text": f"{'met' if margin >= 0 else 'missed'} by {abs(margin):.2f}{unit} "
                f"({value:.2f}{unit} vs {sign} {limit:g}{unit})",
            }
        )

    for ratio in report["ratios"]:
        if ratio["minimum"] is not None:
            what = f"{ratio['label']} >= {ratio['minimum']:g} @ {_load_of(ratio)}"
            add(what, ratio["value"], ratio["minimum"], True, "x")
    for entry in report["p99_added"]:
        what = (
            f"p99 added at {entry['rate']:.0f} req/s <= {P99_ADDED_MAX_MS:g} ms @ {_load_of(entry)}"
        )
        add(what, entry["p99_added_ms"], P99_ADDED_MAX_MS, False, " ms")
    for check in report["exactness"]:
        found.append(
            {
                "target": f"exactness {check['target']} @ {_load_of(check)}",
                "met": check["passed"],
                "text": f"{'passed' if check['passed'] else 'FAILED'}: limit {check['limit']}, "
                f"usage {check['usage_requests']}, 200s {check['generator_200s']}",
            }
        )
    memory = report.get("memory")
    if memory:
        add(
            f"RSS with {memory['keys']} keys <= {RSS_MAX_MB:g} MB",
            memory["rss_mb"],
            RSS_MAX_MB,
            False,
            " MB",
        )
    cold = report.get("cold_keys")
    if cold:
        delta = cold["store_reads_delta"]
        met = delta == cold["keys"]
        found.append(
            {
                "target": f"{cold['keys']} cold keys -> {cold['keys']} store reads",
                "met": None if delta is None else met,
                "text": "not measured"
                if delta is None
                else f"{'met' if met else 'missed'}: {delta} reads, off by {delta - cold['keys']}; "
                f"answers {cold['statuses']}",
            }
        )
    return found


def render(report: dict[str, Any]) -> str:
    cfg, machine = report["config"], report["machine"]
    lines = [
        f"ingest-gateway bench: {cfg['seconds']:g}s (+{cfg['warmup']:g}s warm-up) per run, "
        f"{cfg['concurrency']} connections, sizes {', '.join(map(str, cfg['sizes']))} B, "
        f"{' and '.join(cfg.get('formats', ['protobuf']))}",
        f"machine: {machine['nproc']} CPUs, {machine['cpu_model']}, Python {machine['python']}, "
        f"loadavg {machine['loadavg_1m_at_start']:.2f}; upstream: {cfg['upstream']}; "
        f"load: {cfg['load_generator']}",
        "",
        f"{'target':<40}{'body':>16}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}",
    ]
    for row in report["rows"]:
        tail = "" if row["status"] == "ok" else f"  {row['status']}"
        errors = "-" if row["errors"] is None else str(row["errors"])
        lines.append(
            f"{row['label']:<40}{_load_of(row)!s:>16}{_f(row['req_per_s'], '.0f'):>9}"
            f"{_f(row['p50_ms'], '.2f'):>9}{_f(row['p99_ms'], '.2f'):>9}{errors:>8}{tail}"
        )
    shared = [row for row in report["rows"] if row.get("store")]
    if shared:
        lines += [
            "",
            f"{'the shared store, per request':<40}{'body':>16}{'PG tx/1k':>10}"
            f"{'Redis cmd/1k':>13}{'store CPU us':>13}",
        ]
        for row in shared:
            cost = row["store"]
            lines.append(
                f"{row['label']:<40}{_load_of(row)!s:>16}{cost['pg_transactions_per_1k']:>10.2f}"
                f"{cost['redis_commands_per_1k']:>13.1f}{cost['store_cpu_us_per_request']:>13.1f}"
            )
    lines += ["", f"{'ratio (req/s)':<40}{'body':>16}{'value':>9}{'target':>9}"]
    for ratio in report["ratios"]:
        target = "-" if ratio["minimum"] is None else f">={ratio['minimum']:g}"
        lines.append(
            f"{ratio['label']:<40}{_load_of(ratio)!s:>16}{_f(ratio['value'], '.2f'):>9}{target:>9}"
        )
    if report["p99_added"]:
        lines += [
            "",
            f"{'open loop at half the gates-on max':<40}{'body':>16}{'req/s':>9}"
            f"{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}",
        ]
        for entry in report["p99_added"]:
            for name in ("direct", "gateway"):
                run = entry[name]
                lines.append(
                    f"{name:<40}{_load_of(entry)!s:>16}{entry['rate']:>9.0f}"
                    f"{_f(run['p50_ms'], '.2f'):>9}{_f(run['p99_ms'], '.2f'):>9}{run['errors']:>8}"
                )
            lines.append(
                f"{'p99 added':<40}{_load_of(entry)!s:>16}{'':>18}"
                f"{_f(entry['p99_added_ms'], '.2f'):>9}"
            )
    memory, cold = report.get("memory"), report.get("cold_keys")
    if memory:
        lines += [
            "",
            f"memory: {memory['keys']} keys ({memory['orgs']} orgs) driven at "
            f"{memory['concurrency']} in {memory['drive_seconds']:.1f}s {memory['statuses']}: "
            f"RSS {_f(memory['rss_mb'], '.1f')} MB (at start "
            f"{_f(memory['rss_mb_at_start'], '.1f')}, peak {_f(memory['peak_rss_mb'], '.1f')})",
        ]
    if cold:
        lines.append(
            f"cold keys: {cold['keys']} at once (concurrency {cold['concurrency']}) in "
            f"{cold['seconds']:.1f}s {cold['statuses']}: store reads +{cold['store_reads_delta']}"
        )
    lines += ["", "targets:"]
    for verdict in report["verdicts"]:
        mark = {True: "MET   ", False: "MISSED", None: "  -   "}[verdict["met"]]
        lines.append(f"  {mark} {verdict['target']}: {verdict['text']}")
    return "\n".join(lines)


def write_chart(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loads = sorted({_load_of(row) for row in report["rows"]}, key=lambda x: (x.format, x.size))
    shorts = {t.id: t.short for t in TARGETS}
    ids = [t.id for t in TARGETS]
    fig, ax = plt.subplots(figsize=(12, 5.5))
    width = 0.8 / len(loads)
    top = max((r["req_per_s"] or 0 for r in report["rows"]), default=0) or 1
    for j, load in enumerate(loads):
        xs, values, notes = [], [], []
        for i, target in enumerate(ids):
            row = next(r for r in report["rows"] if r["target"] == target and _load_of(r) == load)
            xs.append(i - 0.4 + width * (j + 0.5))
            values.append(row["req_per_s"] or 0)
            notes.append(row["status"])
        bars = ax.bar(xs, values, width * 0.95, label=str(load))
        for bar, value, note in zip(bars, values, notes, strict=True):
            text = f"{value:.0f}" if note == "ok" else note.split(" (")[0].split(":")[0]
            ax.text(
                bar.get_x() + bar.get_width() / 2,
                value + top * 0.01,
                text,
                ha="center",
                va="bottom",
                fontsize=7,
                rotation=90 if note != "ok" else 0,
            )
    ax.set_xticks(range(len(ids)), [shorts[i] for i in ids], fontsize=8)
    ax.set_ylabel("req/s (closed loop)")
    ax.set_ylim(0, top * 1.25)
    machine, cfg = report["machine"], report["config"]
    ax.set_title(
        f"ingest-gateway bench, {cfg['concurrency']} connections, {cfg['seconds']:g}s runs; "
        f"{machine['nproc']} CPUs {machine['cpu_model']}; {machine['date'][:10]}",
        fontsize=10,
    )
    ax.legend(title="body")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def machine_info(argv: Sequence[str]) -> dict[str, Any]:
    model = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "cpu_model": model or platform.processor() or "unknown",
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command_line": shlex.join(["python", "-m", "loadtest.bench", *argv]),
        "loadavg_1m_at_start": os.getloadavg()[0],
    }


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str] = {}
    for dist in ("ingest-gateway", "uvicorn", "starlette", "httpx", "aiohttp", "httptools"):
        with contextlib.suppress(PackageNotFoundError):
            found[dist] = version(dist)
    return found


def run(opts: Options) -> dict[str, Any]:
    machine = machine_info(opts.argv)
    use_wrk = opts.loadgen != "python" and wrk_path() is not None
    if opts.loadgen == "wrk" and not use_wrk:
        raise RuntimeError("--loadgen wrk: wrk is not on PATH")
    workdir = Path(tempfile.mkdtemp(prefix="gw-bench-"))
    bench = Bench(opts, Children(), workdir, use_wrk, pick_http_impl())
    extra: dict[str, Any] = {}
    try:
        if nginx_path() is not None:
            upstream = start_nginx(bench.children, "upstream", workdir, None)
            bench.upstream_kind = "nginx (return 200)"
        else:
            upstream = start_python_upstream(bench.children)
            bench.upstream_kind = "python asyncio server (nginx not on PATH)"
        bench.upstream_port = upstream.port
        bench.run_targets()
        try:
            extra = bench.memory_and_cold()
        except RuntimeError as exc:
            print(f"bench: memory: {exc}", file=sys.stderr)
            extra = {"memory": None, "cold_keys": None, "memory_error": str(exc)[:500]}
    finally:
        bench.children.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    report: dict[str, Any] = {
        "machine": machine,
        "config": {
            "seconds": opts.seconds,
            "warmup": opts.warmup,
            "concurrency": opts.concurrency,
            "sizes": opts.sizes,
            "formats": opts.formats,
            "quick": opts.quick,
            "upstream": bench.upstream_kind,
            "load_generator": "wrk (closed loop), python aiohttp (open loop)"
            if use_wrk
            else "python aiohttp in a child process"
            + (" (wrk not on PATH)" if opts.loadgen == "auto" else ""),
            "uvicorn_http": bench.http_impl,
            "exact_share": EXACT_WEIGHT / (MAIN_WEIGHT + EXACT_WEIGHT),
            "memory_keys": opts.memory_keys,
            "cold_keys": opts.cold_keys,
            "versions": _versions(),
        },
        "rows": bench.rows,
        "ratios": ratios(bench),
        "p99_added": bench.p99_added,
        "exactness": bench.exactness,
        **extra,
    }
    report["verdicts"] = verdicts(report)
    return report


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.bench",
        description="The gateway against direct, nginx and Python proxies (127.0.0.1 only).",
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per run")
    parser.add_argument("--concurrency", type=int, default=32, help="keep-alive connections")
    parser.add_argument("--sizes", default="2048,65536", help="request body bytes, comma-separated")
    parser.add_argument(
        "--formats", default="protobuf,json", help="OTLP encodings: protobuf, json or both"
    )
    parser.add_argument("--quick", action="store_true", help="1 s runs, one size, few keys")
    parser.add_argument(
        "--targets", help="only these target ids, comma-separated (default: every target)"
    )
    parser.add_argument(
        "--out", type=Path, default=REPO_ROOT / "reports" / "bench", help="writes OUT.json, OUT.png"
    )
    parser.add_argument(
        "--loadgen",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="closed-loop load generator (auto: wrk when on PATH)",
    )
    parser.add_argument("--memory-keys", type=int, help="keys cached for the RSS reading")
    parser.add_argument("--cold-keys", type=int, help="distinct keys fired cold at once")
    parser.add_argument(
        "--baseline-src",
        type=Path,
        help="a source tree of an earlier gateway, measured as 'gateway before' in the same run",
    )
    return parser


def options(argv: list[str]) -> Options:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        parser.error("--sizes takes whole numbers separated by commas")
    if not sizes or not all(160 <= s <= 16 * MB for s in sizes):
        parser.error("--sizes must be between 160 B and 16 MiB")
    known = {t.id for t in TARGETS}
    targets = None if args.targets is None else [t.strip() for t in args.targets.split(",")]
    if targets is not None and not set(targets) <= known:
        parser.error(f"--targets: unknown {sorted(set(targets) - known)}; known {sorted(known)}")
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    if not formats or not set(formats) <= {"protobuf", "json"}:
        parser.error("--formats takes protobuf, json or both, separated by commas")
    if not 0 < args.seconds <= 300:
        parser.error("--seconds must be in (0, 300]")
    if not 1 <= args.concurrency <= 1000:
        parser.error("--concurrency must be in [1, 1000]")
    memory_keys = args.memory_keys or (1_000 if args.quick else 100_000)
    cold_keys = args.cold_keys or (500 if args.quick else 10_000)
    if not (1 <= memory_keys <= 1_000_000 and 1 <= cold_keys <= 100_000):
        parser.error("--memory-keys must be in [1, 1e6] and --cold-keys in [1, 1e5]")
    seconds, warmup = (1.0, 0.5) if args.quick else (args.seconds, 1.0)
    return Options(
        seconds=seconds,
        warmup=warmup,
        concurrency=args.concurrency,
        sizes=sizes[:1] if args.quick else sizes,
        formats=list(dict.fromkeys(formats)),
        targets=targets,
        quick=args.quick,
        out=args.out,
        memory_keys=memory_keys,
        cold_keys=cold_keys,
        loadgen=args.loadgen,
        argv=argv,
        baseline_src=_source_tree(parser, args.baseline_src),
    )


def _source_tree(parser: argparse.ArgumentParser, path: Path | None) -> Path | None:
    if path is None:
        return None
    if not (path / "gateway" / "cli.py").is_file():
        parser.error(f"--baseline-src {path}: no gateway/cli.py there")
    return path.resolve()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    opts = options(argv)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        report = run(opts)
    except KeyboardInterrupt:
        print("bench: interrupted; every child process stopped", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    print()
    print(render(report))
    json_path, png_path = Path(f"{opts.out}.json"), Path(f"{opts.out}.png")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    write_chart(report, png_path)
    print(f"wrote {json_path} and {png_path}")
    failed_rows = [r for r in report["rows"] if r["status"].startswith("failed")]
    inexact = [c for c in report["exactness"] if not c["passed"]]
    if inexact or not report["exactness"]:
        print("bench: exactness check failed", file=sys.stderr)
        return 1
    if failed_rows or report.get("memory_error"):
        print(f"bench: {len(failed_rows)} runs failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
