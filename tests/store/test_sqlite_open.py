"""Workers opening one fresh SQLite file at once: the switch to WAL waits, never fails.

Regression: with two workers starting on a new data folder, one exited on "database is
locked" from ``PRAGMA journal_mode=WAL`` (the switch does not wait on busy_timeout).
"""

from __future__ import annotations

import threading
from pathlib import Path

from gateway.store.sqlite import _connect


def test_three_connections_opening_a_fresh_file_at_once_all_succeed(tmp_path: Path) -> None:
    errors: list[BaseException] = []

    def open_one(path: str) -> None:
        try:
            _connect(path).close()
        except BaseException as exc:  # any failure is the finding
            errors.append(exc)

    for attempt in range(100):
        path = str(tmp_path / f"fresh-{attempt}.db")
        threads = [threading.Thread(target=open_one, args=(path,)) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []
