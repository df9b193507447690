"""A real PostgreSQL server for the tests: initdb and pg_ctl into a temporary folder, TCP on 127.0.0.1 only.

As root (CI), the server runs as the unprivileged ``postgres`` user that Debian's package creates,
since PostgreSQL refuses to run as root. Under ``CI=true`` a missing PostgreSQL fails the tests
that need it; elsewhere they are skipped.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

PG_BINDIRS = [Path(f"/usr/lib/postgresql/{v}/bin") for v in (17, 16, 15, 14)]


@dataclass(frozen=True)
class PostgresServer:
    """A running server: ``url(dbname)`` connects as the superuser without a password (trust on loopback)."""

    host: str
    port: int
    user: str
    bindir: Path

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{dbname}"

    def create_database(self, name: str) -> str:
        """Create an empty database and return its URL."""
        self._run("createdb", "-h", self.host, "-p", str(self.port), "-U", self.user, name)
        return self.url(name)

    def fresh_database(self, name: str) -> str:
        """CREATE DATABASE (from template0, UTF-8) and return its URL: quicker than createdb's process."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0 ENCODING UTF8')
        return self.url(name)

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run([str(self.bindir / tool), *args], check=True, capture_output=True, timeout=30)


def find_bindir() -> Path | None:
    """Return the folder of initdb/pg_ctl, or None when PostgreSQL is not installed."""
    for bindir in PG_BINDIRS:
        if (bindir / "initdb").exists():
            return bindir
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_server_user() -> tuple[list[str], str]:
    """Return the command prefix that runs a tool as a non-root user, and that user's name."""
    if os.geteuid() != 0:
        return [], pwd.getpwuid(os.geteuid()).pw_name
    return ["runuser", "-u", "postgres", "--"], "postgres"


@contextlib.contextmanager
def running_server(settings: Mapping[str, str] | None = None) -> Iterator[PostgresServer]:
    """Start a fresh cluster on a free port; stop it and remove its files afterwards.

    ``settings`` adds server settings (``{"shared_preload_libraries": "pg_stat_statements"}``
    for a benchmark that shows where the server's time goes).
    """
    bindir = find_bindir()
    if bindir is None:
        if os.environ.get("CI") == "true":
            pytest.fail("PostgreSQL is not installed (.ci/run installs it from .ci/apt-packages)")
        pytest.skip("PostgreSQL is not installed")
    prefix, user = _as_server_user()
    root = Path(tempfile.mkdtemp(prefix="newsletter-pg-"))
    data = root / "data"
    if prefix:
        shutil.chown(root, user="postgres", group="postgres")
    port = _free_port()
    subprocess.run(
        [*prefix, str(bindir / "initdb"), "-D", str(data), "-U", user, "--auth=trust", "-E", "UTF8", "--no-sync"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    options = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories='' -c fsync=off -c max_connections=100"
    options += "".join(f" -c {name}={value}" for name, value in (settings or {}).items())
    subprocess.run(
        [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "-t", "60", "start"],
        check=True, capture_output=True, timeout=90,
    )  # fmt: skip
    try:
        _wait_for(port)
        yield PostgresServer("127.0.0.1", port, user, bindir)
    finally:
        subprocess.run(
            [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
            capture_output=True, timeout=60,
        )  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


def _wait_for(port: int, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
