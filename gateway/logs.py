"""Logs an operator can search: ``GATEWAY_LOG_FORMAT=json`` writes one JSON object a line.

Each line has ``time`` (UTC, ISO 8601 to the millisecond), ``level``, ``logger`` and
``message``; ``org_id`` where the line concerns one org (passed as ``extra``, the org a
request was authorized for, or the org of an admin path); ``request_id`` for lines written
while serving a request (its ``X-Request-Id`` when that is a plain token, else one made up
at its first line); ``exception`` with a traceback. No message carries a key, token,
signature or body; what looks like a credential is masked all the same, last, before the
line is written.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import sys
import time
from contextvars import ContextVar
from typing import Any

from gateway.errors import ConfigError
from gateway.types import ASGIApp, Receive, Scope, Send

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
#: The scope of the request being served, for the lines it causes (tasks it starts inherit it).
_REQUEST: ContextVar[Scope | None] = ContextVar("gateway_request", default=None)
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_ORG_PATH = re.compile(r"/admin/orgs/([A-Za-z0-9_-]{1,64})")
# Ingest keys, provider secrets (Stripe, Svix, Paddle) wherever they start, bearer and basic
# credentials (URL-encoded too), webhook signatures (Stripe v0/v1, Svix v1/v1a, Paddle h1)
# and the user:password of a URL. Masking too much is harmless; too little is not.
_CREDENTIAL = re.compile(
    r"(?i)(?:igk_|whsec_|sk_(?:live|test)_|rk_(?:live|test)_|pdl_)[A-Za-z0-9_\-+/=.]+"
    r"|(?i:bearer|basic)(?:\s+|%20|\+)[A-Za-z0-9._~+/=%\-]+"
    r"|\b(?:v0|v1a?|h1)[,=][A-Za-z0-9+/=]{16,}"
    r"|(?<=://)[^:/@\s]*:[^@\s]+(?=@)"
)


def mask(text: str) -> str:
    return _CREDENTIAL.sub("[masked]", text)


class RequestContext:
    """ASGI middleware: remembers the request being served for the log lines it causes."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        token = _REQUEST.set(scope)
        try:
            await self.app(scope, receive, send)
        finally:
            _REQUEST.reset(token)


def _request_id(scope: Scope) -> str:
    found: str | None = scope.get("gateway.request_id")
    if found is None:
        sent = next((v for n, v in scope.get("headers", ()) if n == b"x-request-id"), b"")
        text = sent.decode("latin-1")
        found = text if _REQUEST_ID.fullmatch(text) else secrets.token_hex(8)
        scope["gateway.request_id"] = found
    return found


def _org_of(record: logging.LogRecord, scope: Scope | None) -> str | None:
    org: Any = getattr(record, "org_id", None)
    if org is None and scope is not None:
        routing = scope.get("gateway.routing")  # set once a request's key is authorized
        org = getattr(routing, "org_id", None)
        if org is None and (match := _ORG_PATH.match(scope.get("path", ""))):
            org = match.group(1)
    return None if org is None else str(org)


class JsonFormatter(logging.Formatter):
    """One JSON object a line, with the request and org the line concerns."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        entry: dict[str, Any] = {
            "time": f"{stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": mask(record.getMessage()),
        }
        scope = _REQUEST.get()
        org = _org_of(record, scope)
        if org is not None:
            entry["org_id"] = org
        if scope is not None:
            entry["request_id"] = mask(_request_id(scope))
        if record.exc_info:
            entry["exception"] = mask(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


class MaskingFormatter(logging.Formatter):
    """The text format, with credentials masked like the JSON one."""

    def format(self, record: logging.LogRecord) -> str:
        return mask(super().format(record))


def configure(level: str, fmt: str) -> None:
    """The root logger's one handler (stderr) in ``fmt``; uvicorn's loggers write through it."""
    if fmt not in FORMATS:
        raise ConfigError(f"GATEWAY_LOG_FORMAT must be one of {', '.join(FORMATS)}, not {fmt!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else MaskingFormatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
