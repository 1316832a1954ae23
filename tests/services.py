"""Real PostgreSQL and Redis servers for the tests that claim to test those backends.

The machine's own servers (127.0.0.1:5432, 127.0.0.1:6379) are used when they answer;
otherwise throwaway ones are started from the installed binaries. Under CI (``CI=true``)
a backend that cannot be had fails the test, never skips it. Fault tests that stop a
server always get a throwaway one of their own.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

PG_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)), None)
IN_CI = os.environ.get("CI", "").lower() == "true"


def unavailable(what: str) -> None:
    if IN_CI:
        pytest.fail(f"{what} is required under CI and could not be reached or started")
    pytest.skip(f"{what} not available")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(port: int, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if port_open(port):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {seconds} s")


def _as_postgres(args: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *args]
    return args


@dataclass
class ThrowawayPostgres:
    """A PostgreSQL cluster of our own in a temporary folder, which a test may stop and start."""

    port: int
    folder: Path

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @classmethod
    def create(cls) -> ThrowawayPostgres:
        if PG_BIN is None:
            raise RuntimeError("no PostgreSQL binaries under /usr/lib/postgresql")
        folder = Path(tempfile.mkdtemp(prefix="gw-pg-"))
        if os.geteuid() == 0:
            shutil.chown(folder, "postgres", "postgres")
        data = folder / "data"
        initdb = [str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"]
        subprocess.run(
            _as_postgres([*initdb, "--no-sync"]),
            check=True,
            capture_output=True,
        )
        server = cls(free_port(), folder)
        server.start()
        return server

    def start(self) -> None:
        assert PG_BIN is not None
        subprocess.run(
            _as_postgres(
                [
                    str(PG_BIN / "pg_ctl"),
                    "-D",
                    str(self.folder / "data"),
                    "-w",
                    "-l",
                    str(self.folder / "log"),
                    "-o",
                    f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off",
                    "start",
                ]
            ),
            check=True,
            capture_output=True,
        )
        _wait(self.port)

    def stop(self, mode: str = "fast") -> None:
        assert PG_BIN is not None
        subprocess.run(
            _as_postgres(
                [str(PG_BIN / "pg_ctl"), "-D", str(self.folder / "data"), "-w", "-m", mode, "stop"]
            ),
            check=False,
            capture_output=True,
        )

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)


@dataclass
class ThrowawayRedis:
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @classmethod
    def create(cls) -> ThrowawayRedis:
        server = cls(free_port())
        server.start()
        return server

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait(self.port)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

    destroy = stop


def _cluster_ports(count: int) -> list[int]:
    """Ports whose cluster bus (port + 10000) is free too, both under the kernel's ephemeral
    range (32768 and up), where an outgoing connection may hold a port nothing listens on."""
    ports: list[int] = []
    for port in range(10000 + (os.getpid() * 7) % 12000, 22700):
        if len(ports) == count:
            break
        if not port_open(port) and not port_open(port + 10000):
            ports.append(port)
    return ports


@dataclass
class ThrowawayRedisCluster:
    """Three Redis masters on loopback joined into a cluster (no replicas), in a folder of
    their own; a master can be killed and started again (it rejoins with its slots, empty)."""

    ports: list[int]
    folder: Path
    processes: dict[int, subprocess.Popen[bytes]]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    @classmethod
    def create(cls, masters: int = 3) -> ThrowawayRedisCluster:
        if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
            raise RuntimeError("redis-server and redis-cli are not installed")
        try:
            return cls._create(masters)
        except (RuntimeError, OSError, subprocess.SubprocessError):
            return cls._create(masters)  # once more, on other ports

    @classmethod
    def _create(cls, masters: int) -> ThrowawayRedisCluster:
        cluster = cls(_cluster_ports(masters), Path(tempfile.mkdtemp(prefix="gw-rc-")), {})
        try:
            for port in cluster.ports:
                cluster.start(port)
            nodes = [f"127.0.0.1:{port}" for port in cluster.ports]
            subprocess.run(
                ["redis-cli", "--cluster", "create", *nodes, "--cluster-replicas", "0",
                 "--cluster-yes"],
                check=True, capture_output=True, timeout=60,
            )  # fmt: skip
            cluster.wait_ok()
        except BaseException:
            cluster.destroy()
            raise
        return cluster

    def start(self, port: int) -> None:
        self.processes[port] = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(self.folder),
             "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf",
             "--cluster-node-timeout", "1000", "--cluster-require-full-coverage", "no",
             "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        _wait(port)

    def kill(self, port: int) -> None:
        process = self.processes.pop(port, None)
        if process is not None:
            process.kill()
            process.wait(timeout=10)

    def wait_ok(self, seconds: float = 30.0) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            answers = [
                subprocess.run(["redis-cli", "-p", str(port), "cluster", "info"],
                               capture_output=True, text=True, timeout=5).stdout
                for port in self.processes
            ]  # fmt: skip
            if all("cluster_state:ok" in answer for answer in answers):
                return
            time.sleep(0.2)
        raise RuntimeError(f"the Redis Cluster on {self.ports} is not ok after {seconds} s")

    def destroy(self) -> None:
        for port in list(self.processes):
            self.kill(port)
        shutil.rmtree(self.folder, ignore_errors=True)


_shared: dict[str, str] = {}
_throwaways: list[ThrowawayPostgres | ThrowawayRedis | ThrowawayRedisCluster] = []


def redis_cluster_url() -> str:
    """A three-master Redis Cluster on loopback, started once for the session."""
    if "cluster" not in _shared:
        try:
            cluster = ThrowawayRedisCluster.create()
        except (RuntimeError, OSError, subprocess.SubprocessError):
            unavailable("a Redis Cluster (redis-server --cluster-enabled)")
        _throwaways.append(cluster)
        _shared["cluster"] = cluster.url
    return _shared["cluster"]


def postgres_url() -> str:
    """A reachable PostgreSQL server for contract tests (the machine's, else a throwaway)."""
    if "pg" not in _shared:
        if port_open(5432):
            _shared["pg"] = os.environ.get(
                "GATEWAY_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
            )
        else:
            try:
                server = ThrowawayPostgres.create()
            except (RuntimeError, OSError, subprocess.CalledProcessError):
                unavailable("PostgreSQL")
            _throwaways.append(server)
            _shared["pg"] = server.url
    return _shared["pg"]


def redis_url() -> str:
    if "redis" not in _shared:
        if port_open(6379):
            _shared["redis"] = os.environ.get("GATEWAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
        else:
            try:
                server = ThrowawayRedis.create()
            except (RuntimeError, OSError):
                unavailable("Redis")
            _throwaways.append(server)
            _shared["redis"] = server.url
    return _shared["redis"]


def unique_name(prefix: str) -> str:
    """A schema or key prefix no other test uses, so tests never see each other's rows."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def stop_throwaways() -> None:
    while _throwaways:
        _throwaways.pop().destroy()
