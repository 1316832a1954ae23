"""Every exception the gateway defines sits in the one tree that gateway/errors.py draws."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re

import gateway
from gateway import errors
from gateway.errors import Conflict, CustomerTaken, GatewayError, NotFound
from policies.billing import MalformedEvent


def _defined_exceptions() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(gateway.__path__, "gateway."):
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
    assert drawn - defined == {"policies.billing.MalformedEvent"}
    # policies import nothing from gateway: its one exception stays a ValueError of its own.
    assert issubclass(MalformedEvent, ValueError) and not issubclass(MalformedEvent, GatewayError)


def test_the_moved_classes_keep_their_old_import_paths_and_meaning() -> None:
    from gateway.store.base import CustomerTaken as from_store

    assert from_store is CustomerTaken
    assert issubclass(CustomerTaken, Conflict)
    assert issubclass(NotFound, LookupError)  # callers that caught LookupError still do
    assert str(CustomerTaken("stripe", "cus_1")) == "stripe customer cus_1 belongs to another org"
