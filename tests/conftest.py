from pathlib import Path

import pytest

from tests.services import stop_throwaways

TESTS = Path(__file__).parent
# The suites that start gateway processes, marked by folder so they can be selected or left out.
_FOLDER_MARKS = {name: getattr(pytest.mark, name) for name in ("e2e", "multi", "reliability")}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = item.path.relative_to(TESTS).parts
        mark = _FOLDER_MARKS.get(parts[0]) if len(parts) > 1 else None
        if mark is not None:
            item.add_marker(mark)


def pytest_sessionfinish() -> None:
    stop_throwaways()
