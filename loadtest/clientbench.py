"""Upstream-client benchmark: Starlette pass-through proxy on httpx vs aiohttp.

Run from the repository root::

    python -m loadtest.clientbench [--seconds 5] [--concurrency 32] [--size 2048]

Everything runs on 127.0.0.1 in child processes started (and always stopped) here, from
``loadtest.servers`` and ``loadtest.loadgen``:

* ``upstream``  - a raw ``asyncio.Protocol`` HTTP/1.1 server answering ``200`` with an empty
  body (keep-alive, Content-Length bodies);
* ``proxy-httpx`` / ``proxy-aiohttp`` - one uvicorn process each (1 worker, ``--loop asyncio``,
  ``--http httptools`` when installed, else ``h11``, ``--no-access-log``) serving a Starlette app
  whose only route, ``POST /v1/{signal}``, forwards the body to the upstream through one shared
  client created in the lifespan;
* ``loadgen`` - one aiohttp process per target holding exactly ``--concurrency`` keep-alive
  connections, each looping POSTs of ``--size`` bytes for 1 s warm-up + ``--seconds``.

Results are printed as a table and written to ``reports/clientbench.json``.
``python -m loadtest.bench`` measures the gateway itself against these and more.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import sys
import time
from pathlib import Path
from typing import Any

from loadtest.loadgen import LoadSpec, run_python
from loadtest.servers import (
    HOST,
    POOL_LIMIT,
    Children,
    pick_http_impl,
    start_proxy,
    start_python_upstream,
    upstream_stats,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "reports" / "clientbench.json"
PROXIES = {"proxy-httpx": "starlette-httpx", "proxy-aiohttp": "starlette-aiohttp"}


def _run_load(children: Children, port: int, args: argparse.Namespace) -> dict[str, Any]:
    spec = LoadSpec(
        port=port,
        concurrency=args.concurrency,
        seconds=args.seconds,
        warmup=args.warmup,
        size=args.size,
        body="pattern",
    )
    return run_python(children, spec)


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _render(report: dict[str, Any]) -> str:
    cfg = report["config"]
    lines = [
        f"clientbench: {cfg['seconds']:g}s (+{cfg['warmup']:g}s warm-up) x {cfg['concurrency']} "
        f"conns, {cfg['size']} B bodies; uvicorn --http {cfg['uvicorn_http']} --loop asyncio; "
        f"{cfg['cpus']} CPUs, loadavg {cfg['loadavg_1m_at_start']:.2f}",
        f"{'target':<16}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}",
    ]
    for row in report["results"]:
        lines.append(
            f"{row['target']:<16}{_fmt(row['req_per_s'], '.0f'):>10}"
            f"{_fmt(row['p50_ms'], '.2f'):>9}{_fmt(row['p99_ms'], '.2f'):>9}{row['errors']:>8}"
        )
    ratio = report["ratio_aiohttp_over_httpx"]
    lines.append(
        f"{'aiohttp/httpx':<16}{_fmt(ratio['req_per_s'], '.2f') + 'x':>10}"
        f"{_fmt(ratio['p50_ms'], '.2f') + 'x':>9}{_fmt(ratio['p99_ms'], '.2f') + 'x':>9}"
    )
    return "\n".join(lines)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str] = {"python": platform.python_version()}
    for dist in ("uvicorn", "starlette", "httpx", "httpcore", "aiohttp", "httptools", "h11"):
        with contextlib.suppress(PackageNotFoundError):
            found[dist] = version(dist)
    return found


def _bench(args: argparse.Namespace) -> dict[str, Any]:
    http_impl = pick_http_impl(args.http)
    children = Children()
    config = {
        "seconds": args.seconds,
        "warmup": args.warmup,
        "concurrency": args.concurrency,
        "size": args.size,
        "host": HOST,
        "uvicorn_http": http_impl,
        "uvicorn_loop": "asyncio",
        "pool_limit": POOL_LIMIT,
        "cpus": os.cpu_count(),
        "loadavg_1m_at_start": os.getloadavg()[0],
        "platform": platform.platform(),
        "versions": _versions(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    results: list[dict[str, Any]] = []
    try:
        upstream = start_python_upstream(children)
        targets = [("direct", upstream.port)]
        for target, kind in PROXIES.items():
            targets.append((target, start_proxy(children, kind, upstream.port, http_impl).port))
        for target, port in targets:
            before = upstream_stats(upstream.port)
            row = _run_load(children, port, args)
            after = upstream_stats(upstream.port)
            row.pop("by_key", None)
            row["upstream_connections"] = after["connections"] - before["connections"]
            row["upstream_requests"] = after["requests"] - before["requests"]
            results.append({"target": target, **row})
    finally:
        children.stop_all()

    by_target = {row["target"]: row for row in results}
    hx, ah = by_target["proxy-httpx"], by_target["proxy-aiohttp"]
    return {
        "config": config,
        "results": results,
        "ratio_aiohttp_over_httpx": {
            key: _ratio(ah[key], hx[key]) for key in ("req_per_s", "p50_ms", "p99_ms")
        },
    }


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _main_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.clientbench",
        description="Starlette pass-through proxy on httpx vs aiohttp (127.0.0.1 only).",
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per target")
    parser.add_argument("--concurrency", type=int, default=32, help="keep-alive connections")
    parser.add_argument("--size", type=int, default=2048, help="request body bytes")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    parser.add_argument(
        "--http",
        choices=("auto", "httptools", "h11"),
        default="auto",
        help="uvicorn HTTP implementation (auto: httptools if installed)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON report path")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = _main_parser()
    args = parser.parse_args(argv)
    if not 0 < args.seconds <= 300:
        parser.error("--seconds must be in (0, 300]")
    if not 0 <= args.warmup <= 60:
        parser.error("--warmup must be in [0, 60]")
    if not 1 <= args.concurrency <= 1000:
        parser.error("--concurrency must be in [1, 1000]")
    if not 0 <= args.size <= 64 * 1024 * 1024:
        parser.error("--size must be in [0, 64 MiB]")

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        report = _bench(args)
    except KeyboardInterrupt:
        print("clientbench: interrupted; child processes stopped", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        print(f"clientbench: {exc}", file=sys.stderr)
        return 1
    print(_render(report))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
