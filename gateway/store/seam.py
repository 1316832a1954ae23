"""The transaction seam the shared SQL runs over, and the few things each dialect says.

A step is a generator: it yields the statements it needs, built with ``execute`` (its row
count comes back), ``rows`` (every row) and ``value`` (the first column of the first row,
or None), and receives their results. So one algorithm runs synchronously on SQLite's
worker thread (one job, one transaction) and awaited on an asyncpg connection. Steps write
``?`` placeholders; PostgreSQL's seam numbers them ($1, $2, ...) once per statement
(``numbered``); SQLite's drops row locks (``FOR UPDATE``), its ``BEGIN IMMEDIATE`` holding
the whole database. Columns are read by position, booleans through ``bool()``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any, Generic, Literal, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Query:
    """One statement of a step, and which result it wants back."""

    want: Literal["count", "rows", "value"]
    sql: str
    args: tuple[Any, ...]


Step = Generator[Query, Any, T]


def execute(sql: str, *args: Any) -> Step[int]:
    count: int = yield Query("count", sql, args)
    return count


def rows(sql: str, *args: Any) -> Step[list[Sequence[Any]]]:
    found: list[Sequence[Any]] = yield Query("rows", sql, args)
    return found


def value(sql: str, *args: Any) -> Step[Any]:
    return (yield Query("value", sql, args))


@dataclass(frozen=True, slots=True)
class Done(Generic[T]):
    """A step that has finished, with what it returns."""

    value: T


def advance(step: Step[T], result: Any) -> Query | Done[T]:
    """Send ``result`` (None at first) and get the step's next statement, or its end."""
    try:
        return step.send(result)
    except StopIteration as done:
        return Done(done.value)


@lru_cache(maxsize=512)
def numbered(sql: str) -> str:
    """``?`` placeholders as PostgreSQL's ``$1, $2, ...``, in order."""
    counter = iter(range(1, 10_000))
    return re.sub(r"\?", lambda _: f"${next(counter)}", sql)


@dataclass(frozen=True, slots=True)
class Dialect:
    """What differs between the SQL backends beyond placeholders and row locks."""

    #: A time as a parameter (aware UTC datetime for PostgreSQL, ISO text for SQLite).
    stamp: Callable[[datetime | None], Any]
    #: A time column back as an aware datetime.
    moment: Callable[[Any], datetime | None]
    #: The column that orders webhook events received at the same moment.
    event_order: str
    #: A transaction lock on one billing customer, taking (provider, customer), or None.
    lock_customer: str | None = None
