"""JSON accessors shared by the provider parsers: messages name our own field paths, never
payload values."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from policies.billing.model import MalformedEvent
from policies.model import Period

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Any length: an amount past the stores' range is refused and recorded, not malformed.
_DIGITS = re.compile(r"[0-9]{1,100}")


def obj(value: object, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise MalformedEvent(f"{path} is missing or not an object")
    return value


def opt_obj(value: object, path: str) -> Mapping[str, Any] | None:
    return None if value is None else obj(value, path)


def items(value: object, path: str) -> list[Mapping[str, Any]]:
    """A JSON array of objects; absent or null is empty."""
    if value is None:
        return []
    if not isinstance(value, list | tuple):
        raise MalformedEvent(f"{path} is not an array")
    return [obj(item, f"{path}[{i}]") for i, item in enumerate(value)]


def dig(obj: Mapping[str, Any], *keys: str) -> object:
    """A nested value, or None where any step is missing or not an object."""
    value: object = obj
    for key in keys:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def text(obj: Mapping[str, Any], key: str, path: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise MalformedEvent(f"{path} is missing or not a string")
    return value


def opt_text(obj: Mapping[str, Any], key: str, path: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise MalformedEvent(f"{path} is not a string")
    return value or None


def opt_flag(obj: Mapping[str, Any], key: str, path: str) -> bool | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, bool):
        raise MalformedEvent(f"{path} is not a boolean")
    return value


def amount(value: object, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise MalformedEvent(f"{path} is not a non-negative integer")
    return value


def opt_amount(obj: Mapping[str, Any], key: str, path: str) -> int | None:
    value = obj.get(key)
    return None if value is None else amount(value, path)


def amount_or_digits(value: object, path: str) -> int:
    """Stripe metadata and Paddle totals carry amounts as strings of digits."""
    if isinstance(value, str) and _DIGITS.fullmatch(value):
        return int(value)
    return amount(value, path)


def epoch(value: object, path: str, *, millis: bool = False) -> datetime:
    count = amount(value, path)
    try:
        return EPOCH + (timedelta(milliseconds=count) if millis else timedelta(seconds=count))
    except OverflowError:
        raise MalformedEvent(f"{path} is out of range") from None


def rfc3339(value: object, path: str) -> datetime:
    if not isinstance(value, str):
        raise MalformedEvent(f"{path} is missing or not a string")
    try:
        parsed = datetime.fromisoformat(value)
        if parsed.utcoffset() is None:
            raise ValueError
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        # ``from None``: the ValueError's own message would quote the value.
        raise MalformedEvent(f"{path} is not an RFC 3339 timestamp") from None


def _period(start: datetime, end: datetime, path: str) -> Period:
    if end < start:
        raise MalformedEvent(f"{path} ends before it starts")
    return Period(start, end)


def period_of(
    obj: Mapping[str, Any] | None,
    keys: tuple[str, str],
    path: str,
    read: Callable[[object, str], datetime],
) -> Period | None:
    """The period named by two keys of ``obj``: both absent is None, one absent is malformed."""
    if obj is None or (obj.get(keys[0]) is None and obj.get(keys[1]) is None):
        return None
    start = read(obj.get(keys[0]), f"{path}.{keys[0]}")
    return _period(start, read(obj.get(keys[1]), f"{path}.{keys[1]}"), path)
