import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.services import stop_throwaways

TESTS = Path(__file__).parent
# The suites that start gateway processes, marked by folder so they can be selected or left out.
_FOLDER_MARKS = {name: getattr(pytest.mark, name) for name in ("e2e", "multi", "reliability")}
# Elsewhere, a test is e2e when it or one of its fixtures starts a process.
_STARTS_A_PROCESS = ("start_gateway(", "Popen(", "subprocess.run(")


@functools.cache
def _starts_a_process(func: Callable[..., Any]) -> bool:
    try:
        source = inspect.getsource(func)
    except (OSError, TypeError):
        return False
    return any(call in source for call in _STARTS_A_PROCESS)


def _mark_for(item: pytest.Item) -> pytest.MarkDecorator | None:
    parts = item.path.relative_to(TESTS).parts
    mark = _FOLDER_MARKS.get(parts[0]) if len(parts) > 1 else None
    if mark is not None or item.get_closest_marker("smoke") is not None:
        return mark
    if not isinstance(item, pytest.Function):
        return None
    funcs = [item.function]
    for defs in item._fixtureinfo.name2fixturedefs.values():
        funcs += [d.func for d in defs]
    return pytest.mark.e2e if any(map(_starts_a_process, funcs)) else None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        mark = _mark_for(item)
        if mark is not None:
            item.add_marker(mark)


def pytest_sessionfinish() -> None:
    stop_throwaways()
