"""The deployment files hang together: what compose points at exists and is writable.

There is no Docker engine here, so the compose file is checked as data: every default
upstream names a service of the file, every mounted config file exists, and every volume
the gateway writes to is a folder the image creates for its own user.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
DOCKERFILE = DEPLOY.parent / "Dockerfile"


def compose() -> dict[str, Any]:
    loaded = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def _default(value: str) -> str:
    """``${NAME:-default}`` -> default (what ``docker compose config`` would substitute)."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def test_the_default_upstream_is_a_service_of_the_file() -> None:
    services = compose()["services"]
    assert isinstance(services, dict)
    upstream = _default(services["gateway"]["environment"]["GATEWAY_UPSTREAM_URL"])
    host = urlsplit(upstream).hostname
    assert host in services, f"{upstream} names no service"
    collector = yaml.safe_load((DEPLOY / "collector.yaml").read_text())
    endpoint = collector["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
    assert endpoint.endswith(f":{urlsplit(upstream).port}")
    assert set(collector["service"]["pipelines"]) == {"traces", "logs", "metrics"}


def test_every_mounted_file_exists() -> None:
    for name, service in compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (DEPLOY / source).is_file(), f"{name} mounts a missing {source}"


def test_the_gateway_volumes_are_folders_the_image_gives_its_user() -> None:
    # A named volume takes the image's folder and its owner on first mount; a folder the image
    # lacks comes up owned by root, and the spool could not be written.
    dockerfile = DOCKERFILE.read_text()
    user = re.search(r"^USER (\S+)", dockerfile, re.M)
    assert user is not None
    created = re.search(r"mkdir -p ([^&\n]+)", dockerfile)
    owned = re.search(rf"chown -R {user.group(1)} (\S+)", dockerfile)
    assert created is not None and owned is not None
    folders = created.group(1).split()
    for volume in compose()["services"]["gateway"]["volumes"]:
        target = volume.split(":")[1]
        assert target in folders, f"{target} is not created by the image"
        assert target.startswith(owned.group(1).rstrip("/") + "/") or target == owned.group(1)
