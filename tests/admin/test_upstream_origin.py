"""An org's upstream is an origin, and the allowlist's rules, through the admin API and the CLI.

``upstream`` is ``http(s)://host[:port]``: nothing the proxy would append a route to, no
credentials, nothing a parser downstream could read differently. The allowlist matches an
origin without a port on the scheme's default port, a host on any port, ``*.suffix`` on
every subdomain (not the suffix itself), and always the default upstream's origin.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from gateway.admin.app import build_admin_app
from gateway.admin.origins import UpstreamAllowlist
from gateway.cli import main
from gateway.errors import ConfigError
from gateway.runtime import Runtime
from gateway.settings import Settings
from gateway.store.memory import MemoryStore

TOKEN = "admin-token-for-tests"
ALLOWLIST = (
    "10.0.0.1, *.ingest.example, https://backend.example:8443, https://collector.internal,"
    " [fd00::1]"
)
DEFAULT = "http://collector:4318/otlp"  # the operator's own URL may have a path


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        data_dir=tmp_path,
        key_secret="k" * 32,
        admin_token=TOKEN,
        upstream_url=DEFAULT,
        upstream_allowlist=ALLOWLIST,
    )
    runtime = Runtime(settings, store=MemoryStore(), spool_dir=None)
    await runtime.start()
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=build_admin_app(runtime)),
        base_url="http://admin",
        headers={"authorization": f"Bearer {TOKEN}"},
    ) as admin:
        yield admin
    await runtime.close()


async def create(client: httpx.AsyncClient, upstream: object) -> httpx.Response:
    return await client.post("/admin/orgs", json={"name": "acme", "upstream": upstream})


REFUSED = {
    "a path": ["http://10.0.0.1/v1", "http://10.0.0.1:4318/v1/traces", "http://10.0.0.1//"],
    "a query": ["http://10.0.0.1?x=1", "http://10.0.0.1?", "http://10.0.0.1/?a"],
    "a fragment": ["http://10.0.0.1#x", "http://10.0.0.1#", "http://evil.example#@10.0.0.1"],
    "user name or password": [
        "http://user:pass@10.0.0.1",
        "http://user@10.0.0.1",
        "http://@10.0.0.1",
        "http://10.0.0.1\\@evil.example",
    ],
    "whitespace or control characters": [
        "http://10.0.0.1 ",
        " http://10.0.0.1",
        "http://10.0.\t0.1",
        "http://10.0.0.1\n",
        "http://10.0.0.1\r",
        "http://10.0.0.1\x00",
        "http://10.0.0.1\x7f",
        "http://10.0.0.1\u00a0",
        "http://10.0.0.1\u200b",
        "http://10.0.0.1\u2028",
    ],
    "ASCII": ["http://\u00e9.ingest.example", "http://eu.ingest.exampl\u0435"],
    "http:// or https://": [
        "ftp://10.0.0.1",
        "file:///etc/passwd",
        "gopher://10.0.0.1",
        "10.0.0.1",
    ],
    "port from 1 to 65535": [
        "http://10.0.0.1:",
        "http://10.0.0.1:0",
        "http://10.0.0.1:65536",
        "http://10.0.0.1:4318x",
        "http://10.0.0.1:-1",
    ],
    "name a host": ["http://", "http://:4318"],
    "invalid host": ["http://a..ingest.example", "http://x.ingest.example.", "http://[fd00::1"],
}
REFUSALS = [(reason, url) for reason, urls in REFUSED.items() for url in urls]


@pytest.mark.parametrize(("reason", "upstream"), REFUSALS)
async def test_an_upstream_that_is_not_an_origin_gets_400_naming_why(
    client: httpx.AsyncClient, reason: str, upstream: str
) -> None:
    created = await create(client, upstream)
    assert created.status_code == 400, created.text
    assert created.json()["error"] == "bad_request"
    assert reason in created.json()["message"]

    org = (await create(client, None)).json()
    patched = await client.patch(f"/admin/orgs/{org['id']}", json={"upstream": upstream})
    assert (patched.status_code, patched.json()["message"]) == (400, created.json()["message"])
    assert (await client.get(f"/admin/orgs/{org['id']}")).json()["upstream"] is None


async def test_a_message_never_echoes_the_upstream(client: httpx.AsyncClient) -> None:
    response = await create(client, "http://admin:s3cret@10.0.0.1/path")
    assert response.status_code == 400
    assert "s3cret" not in response.text and "admin" not in response.json()["message"]


MATCHES = {
    # an origin without a port: the scheme's default port only
    "https://collector.internal": "https://collector.internal",
    "https://collector.internal:443": "https://collector.internal:443",
    # an origin with a port: that port only
    "https://backend.example:8443": "https://backend.example:8443",
    # a host: any port, either scheme
    "http://10.0.0.1": "http://10.0.0.1",
    "https://10.0.0.1:9999": "https://10.0.0.1:9999",
    "http://[FD00:0::1]:4318": "http://[fd00::1]:4318",
    # *.suffix: every subdomain, at any depth
    "https://eu.ingest.example": "https://eu.ingest.example",
    "https://a.b.c.ingest.example:4318": "https://a.b.c.ingest.example:4318",
    # the default upstream's origin, whatever its path
    "http://collector:4318": "http://collector:4318",
    # a lone trailing "/" is dropped; scheme and host are lowercased
    "HTTPS://EU.Ingest.Example/": "https://eu.ingest.example",
    "http://10.0.0.1:04318/": "http://10.0.0.1:4318",
}


@pytest.mark.parametrize(("upstream", "stored"), list(MATCHES.items()))
async def test_allowlisted_origins_pass_and_are_stored_normalised(
    client: httpx.AsyncClient, upstream: str, stored: str
) -> None:
    created = await create(client, upstream)
    assert created.status_code == 201, created.text
    assert created.json()["upstream"] == stored


MISSES = [
    "https://collector.internal:8443",  # not the default port of the entry's scheme
    "http://collector.internal",  # another scheme
    "http://collector.internal:443",
    "https://backend.example",  # 443, not the entry's 8443
    "http://backend.example:8443",
    "https://ingest.example",  # *.suffix is not the suffix itself
    "https://evilingest.example",
    "https://ingest.example.evil.example",
    "http://collector",  # the default upstream is on 4318
    "https://collector:4318",
    "http://10.0.0.10",
    "http://[fd00::2]",
    "http://169.254.169.254",
]


@pytest.mark.parametrize("upstream", MISSES)
async def test_origins_outside_the_allowlist_are_refused(
    client: httpx.AsyncClient, upstream: str
) -> None:
    created = await create(client, upstream)
    assert (created.status_code, created.json()["error"]) == (400, "bad_request")
    assert "GATEWAY_UPSTREAM_ALLOWLIST" in created.json()["message"]


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        ("https://collector.internal/v1", "without a path"),
        ("collector.internal:4318", "a host has no port"),
        ("*.", "name a host"),
        ("https://*.ingest.example", "invalid host"),
        ("https://ops:hunter2@collector.internal", "user name or password"),
    ],
)
def test_a_malformed_allowlist_entry_is_a_config_error(entry: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why) as info:
        UpstreamAllowlist(f"10.0.0.1, {entry}")
    assert "entry #2" in str(info.value) and "hunter2" not in str(info.value)


def test_the_cli_refuses_what_the_admin_api_refuses(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GATEWAY_STORE_URL", raising=False)
    monkeypatch.setenv("GATEWAY_UPSTREAM_ALLOWLIST", ALLOWLIST)
    store = ["--store", f"sqlite:///{tmp_path}/gw.db", "--data-dir", str(tmp_path)]
    assert main(["orgs", "create", "--name", "a", "--upstream", "http://10.0.0.1/v1", *store]) == 2
    assert "upstream must be an origin (scheme://host[:port]) without a path" in (
        capsys.readouterr().err
    )
    assert main(["orgs", "create", "--name", "a", "--upstream", "http://10.0.0.1/", *store]) == 0
    org = json.loads(capsys.readouterr().out)
    assert org["upstream"] == "http://10.0.0.1"
    code = main(["orgs", "update", org["id"], "--upstream", "https://ingest.example", *store])
    assert code == 2 and "GATEWAY_UPSTREAM_ALLOWLIST" in capsys.readouterr().err
