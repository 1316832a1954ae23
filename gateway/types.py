"""The ASGI types, written once (as Starlette's ``types.py``) and used instead of ``Any``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
#: Reads a whole request body under a size limit and a deadline (``BodyDeadlines.read``).
ReadBody = Callable[[Receive, int, int | None], Awaitable[bytes]]
