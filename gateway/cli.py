"""``ingest-gateway``: serve, quickstart, and the admin operations against the store."""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import tomllib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from gateway.admin.orgs import OrgAdmin, key_json, org_json
from gateway.admin.origins import UpstreamAllowlist
from gateway.billing.reconciler import reconcile
from gateway.errors import BadRequest, ConfigError, NotFound, StoreError
from gateway.ingest.keys import KeyHasher
from gateway.limits.invalidation import open_invalidation
from gateway.logs import configure as configure_logging
from gateway.settings import Settings
from gateway.store import open_store
from policies.entitlements import Plan


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", dest="store_url", help="store URL (GATEWAY_STORE_URL)")
    p.add_argument("--redis", dest="redis_url", help="Redis URL for counters (GATEWAY_REDIS_URL)")
    p.add_argument("--data-dir", type=Path, help="data folder (GATEWAY_DATA_DIR)")


def _serve_flags(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("--host", help="ingest listener address (GATEWAY_HOST)")
    p.add_argument("--port", type=int, help="ingest listener port (GATEWAY_PORT)")
    p.add_argument("--admin-host", help="admin listener address (GATEWAY_ADMIN_HOST)")
    p.add_argument("--admin-port", type=int, help="admin listener port (GATEWAY_ADMIN_PORT)")
    p.add_argument(
        "--upstream", dest="upstream_url", help="default upstream (GATEWAY_UPSTREAM_URL)"
    )
    p.add_argument("--shadow", action="store_true", default=None, help="GATEWAY_SHADOW")
    p.add_argument(
        "--strict-limits", action="store_true", default=None, help="GATEWAY_STRICT_LIMITS"
    )
    p.add_argument(
        "--no-gates",
        dest="gates",
        action="store_false",
        default=None,
        help="forward without any gate, to measure their cost (GATEWAY_GATES=false)",
    )
    p.add_argument(
        "--workers", type=int, help="worker processes sharing the ports (GATEWAY_WORKERS)"
    )
    p.add_argument("--log-level", help="GATEWAY_LOG_LEVEL")


def _limit_flags(p: argparse.ArgumentParser) -> None:
    for name in ("requests", "bytes", "items", "rate-requests", "rate-bytes"):
        p.add_argument(f"--{name}", type=int, help=f"{name} limit (absent = unlimited)")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="ingest-gateway", description=__doc__)
    sub = top.add_subparsers(dest="command", required=True)
    _serve_flags(sub.add_parser("serve", help="start the ingest and admin listeners"))
    _serve_flags(sub.add_parser("quickstart", help="demo org and key, then serve"))
    _common(sub.add_parser("migrate", help="apply the store's schema migrations (idempotent)"))
    rec = sub.add_parser("reconcile", help="apply the billing suspension policy once")
    _common(rec)
    rec.add_argument("--now", help="the clock, ISO 8601 (default: now), to test or replay a day")

    orgs = sub.add_parser("orgs", help="manage orgs").add_subparsers(dest="action", required=True)
    create = orgs.add_parser("create")
    _common(create)
    create.add_argument("--name", required=True)
    create.add_argument("--upstream")
    create.add_argument("--shadow", action="store_true")
    _limit_flags(create)
    update = orgs.add_parser("update")
    _common(update)
    update.add_argument("org_id")
    update.add_argument("--name")
    update.add_argument("--upstream")
    _limit_flags(update)

    keys = sub.add_parser("keys", help="manage ingest keys").add_subparsers(
        dest="action", required=True
    )
    kc = keys.add_parser("create")
    _common(kc)
    kc.add_argument("org_id")
    kc.add_argument("--name", default="")
    for meter in ("requests", "bytes", "items"):
        kc.add_argument(f"--{meter}", type=int, help=f"the key's own {meter} limit per period")
    kc.add_argument(
        "--limit",
        action="append",
        default=[],
        metavar="METER=N",
        help="a limit on any meter, e.g. traces.items=1000000 (repeatable)",
    )
    kr = keys.add_parser("revoke")
    _common(kr)
    kr.add_argument("key_id")

    plans = sub.add_parser("plans", help="the plan catalog").add_subparsers(
        dest="action", required=True
    )
    _common(plans.add_parser("list"))
    pa = plans.add_parser("apply", help="make the catalog match a TOML file ([plans.NAME])")
    _common(pa)
    pa.add_argument("file", type=Path)

    usage = sub.add_parser("usage", help="an org's usage this period")
    _common(usage)
    usage.add_argument("org_id")
    suspend = sub.add_parser("suspend", help="suspend an org (or lift it with --lift)")
    _common(suspend)
    suspend.add_argument("org_id")
    suspend.add_argument("--reason", default="manual")
    suspend.add_argument("--lift", action="store_true")
    return top


def _limits(args: argparse.Namespace) -> dict[str, int]:
    names = ("requests", "bytes", "items", "rate_requests", "rate_bytes")
    return {n: v for n in names if (v := getattr(args, n, None)) is not None}


async def _with_orgs(settings: Settings, work: Callable[[OrgAdmin], Awaitable[Any]]) -> Any:
    store = open_store(settings.store_url)
    invalidation = open_invalidation(settings.store_url, settings.redis_url)
    await store.open()
    try:
        allowlist = UpstreamAllowlist(settings.upstream_allowlist, settings.upstream_url)
        hasher = KeyHasher(settings.key_secret_bytes())
        orgs = OrgAdmin(store, hasher, invalidation.publish, allowlist)
        return await work(orgs)
    finally:
        await invalidation.close()
        await store.close()


async def _reconcile(settings: Settings, now_text: str | None) -> dict[str, Any]:
    now = datetime.now(UTC)
    if now_text:
        try:
            now = datetime.fromisoformat(now_text.replace("Z", "+00:00"))
        except ValueError as exc:
            raise BadRequest("--now must be an ISO 8601 date and time") from exc
        if now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
    store = open_store(settings.store_url)
    invalidation = open_invalidation(settings.store_url, settings.redis_url)
    await store.open()
    try:
        grace = timedelta(seconds=settings.suspension_grace)
        changed = await reconcile(store, now, grace, invalidation.publish)
    finally:
        await invalidation.close()
        await store.close()
    return {"now": now.isoformat(), "changed": changed}


async def _migrate(settings: Settings) -> dict[str, Any]:
    if settings.store_url.startswith(("postgresql://", "postgres://")):
        from gateway.store.postgres import migrate

        return {"applied": await migrate(settings.store_url)}
    store = open_store(settings.store_url)
    await store.open()  # the embedded stores migrate themselves on open
    await store.close()
    return {"applied": []}


async def _admin(args: argparse.Namespace, settings: Settings) -> Any:
    if args.command == "orgs" and args.action == "create":
        body: dict[str, Any] = {"name": args.name, "limits": _limits(args), "shadow": args.shadow}
        if args.upstream:
            body["upstream"] = args.upstream
        return await _with_orgs(settings, lambda c: _org(c.create_org(body)))
    if args.command == "orgs":
        patch: dict[str, Any] = {"limits": _limits(args)}
        if args.name:
            patch["name"] = args.name
        if args.upstream:
            patch["upstream"] = args.upstream
        return await _with_orgs(settings, lambda c: _org(c.update_org(args.org_id, patch)))
    if args.command == "keys" and args.action == "create":
        limits = {m: getattr(args, m) for m in ("requests", "bytes", "items")}
        limits = {m: v for m, v in limits.items() if v is not None} | _meter_limits(args.limit)

        async def create(c: OrgAdmin) -> dict[str, Any]:
            record, key = await c.create_key(args.org_id, {"name": args.name, "limits": limits})
            return {**key_json(record), "key": key}

        return await _with_orgs(settings, create)
    if args.command == "keys":

        async def revoke(c: OrgAdmin) -> dict[str, str]:
            await c.revoke_key(args.key_id)
            return {"revoked": args.key_id}

        return await _with_orgs(settings, revoke)
    if args.command == "plans" and args.action == "list":
        return await _with_orgs(settings, lambda c: _plan_list(c.store.list_plans()))
    if args.command == "plans":
        wanted = _plans_file(args.file)
        return await _with_orgs(settings, lambda c: c.apply_plans(wanted))
    if args.command == "usage":

        async def usage(c: OrgAdmin) -> dict[str, Any]:
            # The org's billing period, as the admin API reports it.
            return await c.usage(args.org_id, await c.period(args.org_id, datetime.now(UTC)))

        return await _with_orgs(settings, usage)
    if args.command == "suspend":
        body = {"suspended": not args.lift, "reason": args.reason}
        return await _with_orgs(settings, lambda c: _org(c.set_suspension(args.org_id, body)))
    raise AssertionError(args.command)


async def _org(pending: Awaitable[Any]) -> dict[str, Any]:
    return org_json(await pending)


async def _plan_list(plans: Awaitable[list[Plan]]) -> dict[str, Any]:
    return {"plans": [plan.as_dict() for plan in await plans]}


def _plans_file(path: Path) -> dict[str, Any]:
    """``[plans.NAME]`` tables, each a plan body as the admin API takes it."""
    try:
        loaded = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise BadRequest(f"{path}: {exc}") from exc
    plans = loaded.get("plans", {})
    if not isinstance(plans, dict) or set(loaded) - {"plans"}:
        raise BadRequest(f"{path}: expected [plans.NAME] tables and nothing else")
    return plans


def _meter_limits(pairs: list[str]) -> dict[str, int]:
    limits: dict[str, int] = {}
    for pair in pairs:
        meter, sep, value = pair.partition("=")
        if not sep or not value.strip().isdigit():
            raise BadRequest(f"--limit {pair!r} is not METER=N")
        limits[meter.strip()] = int(value)
    return limits


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {
        k: v for k, v in vars(args).items() if k in Settings.__dataclass_fields__ and v is not None
    }
    return Settings.from_env(**overrides)


async def _quickstart(settings: Settings) -> None:
    token = settings.admin_token
    if not token:
        path = settings.data_dir / "admin-token"
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.write_text(secrets.token_urlsafe(24))
            path.chmod(0o600)
        token = path.read_text().strip()
        settings = settings.with_(admin_token=token)
    from gateway.server import check_admin_token, serve

    check_admin_token(settings)  # before the demo org is created

    async def demo(c: OrgAdmin) -> tuple[str, str]:
        org = await c.create_org({"name": "demo", "limits": {"requests": 100_000}})
        _record, key = await c.create_key(org.id)
        return org.id, key

    org_id, key = await _with_orgs(settings, demo)
    where = settings.upstream_url or f"the local sink in {settings.data_dir / 'sink'}"
    port, admin = settings.port, settings.admin_port
    print(
        f"""
Ingest gateway quickstart
  demo org:     {org_id}
  ingest key:   {key}   (shown once; create more with `ingest-gateway keys create {org_id}`)
  admin token:  kept in {settings.data_dir / "admin-token"} (set GATEWAY_ADMIN_TOKEN to choose one)
  forwarding:   {where}

Point an OpenTelemetry SDK at it:
  export OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:{port}
  export OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf
  export OTEL_EXPORTER_OTLP_HEADERS="Authorization=Bearer {key}"

Or an OpenTelemetry Collector (otlphttp exporter):
  exporters:
    otlphttp:
      endpoint: http://127.0.0.1:{port}
      headers: {{Authorization: "Bearer {key}"}}

Usage so far:  curl -H "Authorization: Bearer $(cat {settings.data_dir / "admin-token"})" \\
                 http://127.0.0.1:{admin}/admin/orgs/{org_id}/usage
""",
        flush=True,
    )
    await serve(settings)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings = _settings(args)
        configure_logging(settings.log_level, settings.log_format)
        if args.command == "serve":
            from gateway.server import run

            return run(settings)
        if args.command == "quickstart":
            asyncio.run(_quickstart(settings))
            return 0
        if args.command == "reconcile":
            print(json.dumps(asyncio.run(_reconcile(settings, args.now)), indent=2))
            return 0
        if args.command == "migrate":
            result: Any = asyncio.run(_migrate(settings))
            print(json.dumps(result))
            return 0
        result = asyncio.run(_admin(args, settings))
    except (ConfigError, BadRequest) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except NotFound as exc:
        print(f"error: not found: {exc}", file=sys.stderr)
        return 1
    except StoreError as exc:
        print(f"error: store unavailable: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
