"""HTTP/1.1 over a raw socket, for requests an HTTP client would refuse to send."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Answer:
    """The first response on a connection, or ``status is None`` when it closed without one."""

    status: int | None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    raw: bytes = b""

    @property
    def closed_without_answer(self) -> bool:
        return self.status is None

    def describe(self) -> str:
        if self.status is None:
            return f"connection closed without a response ({self.raw[:80]!r})"
        return f"{self.status} {self.body[:120]!r}"


def request(
    host: str,
    port: int,
    data: bytes,
    *,
    then: bytes = b"",
    pause: float = 0.0,
    timeout: float = 10.0,
) -> Answer:
    """Send ``data`` (then ``then`` after ``pause`` s), read until the server closes or answers.

    Requests should carry ``Connection: close`` so the server ends the exchange; a send the
    server cut short (it answered early and closed) is not an error.
    """
    with socket.create_connection((host, port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
            if pause:
                time.sleep(pause)
            if then:
                sock.sendall(then)
        except (BrokenPipeError, ConnectionResetError):
            pass
        received = bytearray()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            received += chunk
            answer = parse(bytes(received))
            if answer.status is not None and _complete(answer, bytes(received)):
                return answer
    return parse(bytes(received))


def parse(raw: bytes) -> Answer:
    head, sep, rest = raw.partition(b"\r\n\r\n")
    if not sep or not head.startswith(b"HTTP/1."):
        return Answer(None, raw=raw)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = headers.get("content-length")
    body = rest[: int(length)] if length and length.isdigit() else rest
    return Answer(status, headers, body, raw)


def _complete(answer: Answer, raw: bytes) -> bool:
    length = answer.headers.get("content-length")
    if length is None or not length.isdigit():
        return False
    return len(raw.partition(b"\r\n\r\n")[2]) >= int(length)


def head(
    method: str, target: bytes, headers: list[tuple[str, str]] | list[tuple[bytes, bytes]]
) -> bytes:
    """A request head (request line and headers, blank line included), Connection: close."""
    lines = [method.encode() + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1"]
    lines.append(b"Connection: close")
    for name, value in headers:
        n = name.encode("latin-1") if isinstance(name, str) else name
        v = value.encode("latin-1") if isinstance(value, str) else value
        lines.append(n + b": " + v)
    return b"\r\n".join(lines) + b"\r\n\r\n"


def chunked(body: bytes, size: int = 4096) -> bytes:
    parts = [body[i : i + size] for i in range(0, len(body), size)]
    return b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in parts) + b"0\r\n\r\n"
