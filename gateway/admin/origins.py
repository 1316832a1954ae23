"""Upstream origins: what an org's own upstream may be, and where the allowlist lets it point."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from gateway.errors import BadOrigin, BadRequest, ConfigError

_DEFAULT_PORTS = {"http": 80, "https": 443}
# Dot-separated labels of letters, digits, "-" and "_" (container names), none empty.
_HOST = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*")


@dataclass(frozen=True, slots=True)
class Origin:
    """Where an upstream is: scheme, lowercase host and port (the scheme's default if none)."""

    scheme: str
    host: str  # an IPv6 address keeps its brackets
    port: int
    explicit_port: bool = field(default=False, compare=False)

    @property
    def url(self) -> str:
        """The form stored: the port only when it was given."""
        port = f":{self.port}" if self.explicit_port else ""
        return f"{self.scheme}://{self.host}{port}"


def parse_origin(raw: str, what: str = "upstream") -> Origin:
    """``http(s)://host[:port]`` and nothing else: a lone trailing "/" is dropped; a path,
    query, fragment, user name, whitespace, control or non-ASCII character is refused."""
    if any(c.isspace() or not c.isprintable() for c in raw):
        raise BadOrigin(f"{what} must not contain whitespace or control characters")
    if not raw.isascii():
        raise BadOrigin(f"{what} must be ASCII (an internationalised host in its xn-- form)")
    scheme, sep, rest = raw.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in _DEFAULT_PORTS:
        raise BadOrigin(f"{what} must be an http:// or https:// URL")
    authority, tail = _cut(rest, "/?#")
    if "@" in authority:
        raise BadOrigin(f"{what} must not contain a user name or password")
    host, port_text = _host_and_port(authority, what)
    if tail not in ("", "/"):
        path, after = _cut(tail, "?#")
        if path not in ("", "/"):
            part = "a path"
        else:
            part = "a query" if after.startswith("?") else "a fragment"
        raise BadOrigin(f"{what} must be an origin (scheme://host[:port]) without {part}")
    if port_text is None:
        return Origin(scheme, host, _DEFAULT_PORTS[scheme])
    if not (port_text.isdigit() and len(port_text) <= 5 and 1 <= int(port_text) <= 65535):
        raise BadOrigin(f"{what} must have a port from 1 to 65535")
    return Origin(scheme, host, int(port_text), explicit_port=True)


def _cut(text: str, stops: str) -> tuple[str, str]:
    """``text`` split before the first of ``stops``."""
    at = min((i for i in map(text.find, stops) if i >= 0), default=len(text))
    return text[:at], text[at:]


def _host_and_port(authority: str, what: str) -> tuple[str, str | None]:
    """The host, validated and lowercased, and the port's text (None when absent)."""
    if authority.startswith("["):
        inside, bracket, after = authority[1:].partition("]")
        try:
            address = ipaddress.IPv6Address(inside)
        except ValueError:
            address = None
        if address is None or not bracket or (after and not after.startswith(":")):
            raise BadOrigin(f"{what} has an invalid host")
        return f"[{address.compressed}]", after[1:] if after else None
    host, colon, port_text = authority.partition(":")
    host = host.lower()
    if not host:
        raise BadOrigin(f"{what} must name a host")
    if not _HOST.fullmatch(host):
        raise BadOrigin(f"{what} has an invalid host")
    return host, port_text if colon else None


def _default_origin(url: str) -> Origin | None:
    """The default upstream's origin; the operator's URL may have a path."""
    try:
        parts = urlsplit(url)
        port = parts.port
        host = (parts.hostname or "").lower()
        if ":" in host:
            host = f"[{ipaddress.IPv6Address(host).compressed}]"
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not host:
        return None
    return Origin(scheme, host, port or _DEFAULT_PORTS[scheme])


class UpstreamAllowlist:
    """Where an org's own upstream may point: no SSRF through the admin API.

    Entries (``GATEWAY_UPSTREAM_ALLOWLIST``, comma-separated):

    - an origin, ``https://collector.internal:4318``: that scheme, host and port; without a
      port, the scheme's default (``https://collector.internal`` allows ``:443``, not
      ``:8443``);
    - a host, ``collector.internal``: that host on any port, over http or https;
    - ``*.suffix``: every subdomain of ``suffix`` at any depth (``a.suffix``,
      ``a.b.suffix``), not ``suffix`` itself (list it as a host as well for that).

    The default upstream's origin is always allowed; with no entries, nothing else is. A
    malformed entry is a ``ConfigError`` at start-up rather than an entry that never matches.
    """

    def __init__(self, raw: str = "", default: str | None = None) -> None:
        origins: set[Origin] = set()
        hosts: set[str] = set()
        suffixes: set[str] = set()
        entries = [e.strip() for e in raw.split(",") if e.strip()]
        for number, entry in enumerate(entries, 1):
            what = f"GATEWAY_UPSTREAM_ALLOWLIST entry #{number}"
            try:
                if "://" in entry:
                    origins.add(parse_origin(entry, what))
                elif entry.startswith("*."):
                    suffixes.add("." + _bare_host(entry[2:], what))
                else:
                    hosts.add(_bare_host(entry, what))
            except BadOrigin as exc:
                raise ConfigError(str(exc)) from exc
        self.default = _default_origin(default) if default else None
        self.origins = frozenset(origins)
        self.hosts = frozenset(hosts)
        self.suffixes = tuple(sorted(suffixes))

    def allows(self, origin: Origin) -> bool:
        return (
            origin == self.default
            or origin in self.origins
            or origin.host in self.hosts
            or origin.host.endswith(self.suffixes)
        )


def _bare_host(text: str, what: str) -> str:
    host, port = _host_and_port(text.lower(), what)
    if port is not None:
        raise BadOrigin(f"{what}: a host has no port (write scheme://host:port for one)")
    return host


def checked_upstream(raw: object, allowlist: UpstreamAllowlist) -> str | None:
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise BadRequest("upstream must be a string or null")
    try:
        origin = parse_origin(raw)
    except BadOrigin as exc:
        raise BadRequest(str(exc)) from exc
    if not allowlist.allows(origin):
        raise BadRequest("upstream is not allowed by GATEWAY_UPSTREAM_ALLOWLIST")
    return origin.url


def checked_notify_url(raw: object, allowlist: UpstreamAllowlist) -> str | None:
    """An http(s) URL whose origin the upstream allowlist admits (SSRF: the gateway POSTs
    there), with a path and query but no fragment or user name; null: GATEWAY_NOTIFY_URL."""
    if raw is None:
        return None
    if not isinstance(raw, str) or len(raw) > 2048:
        raise BadRequest("notify_url must be a URL of at most 2048 characters, or null")
    scheme, sep, rest = raw.partition("://")
    cut = min((i for i in map(rest.find, "/?#") if i >= 0), default=len(rest))
    tail = rest[cut:]
    if "#" in tail or any(c.isspace() or not c.isprintable() for c in tail) or not tail.isascii():
        raise BadRequest("notify_url must not have a fragment, whitespace or control characters")
    try:
        origin = parse_origin(f"{scheme}{sep}{rest[:cut]}", "notify_url")
    except BadOrigin as exc:
        raise BadRequest(str(exc)) from exc
    if not allowlist.allows(origin):
        raise BadRequest("notify_url is not allowed by GATEWAY_UPSTREAM_ALLOWLIST")
    return origin.url + (tail if tail.startswith("/") else "/" + tail if tail else "")
