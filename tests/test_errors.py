"""Every exception the gateway defines sits in the one tree that gateway/errors.py draws."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from types import ModuleType

import gateway
import policies
from gateway import errors
from gateway.errors import Conflict, CustomerTaken, GatewayError, NotFound


def _defined_exceptions(package: ModuleType = gateway) -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == module.__name__
            ):
                found[f"{module.__name__}.{name}"] = value
    return found


def test_every_exception_defined_in_gateway_is_a_gateway_error_of_errors_py() -> None:
    defined = _defined_exceptions()
    assert defined, "the walk found nothing"
    outside = {name for name, cls in defined.items() if not issubclass(cls, GatewayError)}
    assert outside == set()
    assert {cls.__module__ for cls in defined.values()} == {"gateway.errors"}


def test_the_docstring_draws_every_class_and_only_classes_that_exist() -> None:
    doc = errors.__doc__ or ""
    tree = r"^(?:[│ ]*[├└]── )?(GatewayError|(?<=── )\w+|policies\.\S+)"
    drawn = set(re.findall(tree, doc, re.MULTILINE))
    defined = {name.removeprefix("gateway.errors.") for name in _defined_exceptions()}
    assert defined <= drawn
    # policies import nothing from gateway: their exceptions are ValueErrors drawn beside it.
    from_policies = _defined_exceptions(policies)
    outside = drawn - defined
    assert all(name.startswith("policies.") for name in outside)
    assert {name.rpartition(".")[2] for name in outside} == {
        cls.__name__ for cls in from_policies.values()
    }
    assert {"MalformedEvent", "EntitlementError"} <= {c.__name__ for c in from_policies.values()}
    for cls in from_policies.values():
        assert issubclass(cls, ValueError) and not issubclass(cls, GatewayError)


def test_the_moved_classes_keep_their_old_import_paths_and_meaning() -> None:
    from gateway.store.base import CustomerTaken as from_store

    assert from_store is CustomerTaken
    assert issubclass(CustomerTaken, Conflict)
    assert issubclass(NotFound, LookupError)  # callers that caught LookupError still do
    assert str(CustomerTaken("stripe", "cus_1")) == "stripe customer cus_1 belongs to another org"
