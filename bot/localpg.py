"""A throwaway PostgreSQL server on a free loopback port, from Debian's ``postgresql`` binaries.

For the tests, the benchmarks and the HA demo: the same server the bot runs against in production,
started in seconds in a folder of its own and stopped (process group, SIGTERM then SIGKILL) like the
other processes of :mod:`bot.localstack`. ``serve`` never imports this module.

Why not ``pg_ctl``: the server runs in the foreground as the harness's child, so it is stopped with
the rest of a test run's processes whatever happens. ``initdb`` and ``postgres`` refuse to run as
root, so as root they run as the ``postgres`` user (created by the Debian package), and the folder is
made under ``/tmp`` and handed to that user: a pytest temp folder under ``/tmp/pytest-of-root`` is
not reachable by it. The unix socket lives in the same folder, so no system path is touched.
Durability is off (``fsync=off``): the data is thrown away at the end.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bot import localstack

SUPERUSER = "postgres"


def pg_bin_dir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` with a server in it (or one on PATH)."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/postgres"),
        key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0,
    )
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("postgres")
    return Path(on_path).parent if on_path else None


def missing_reason() -> str | None:
    """Why no server can be started here, or None when it can."""
    bindir = pg_bin_dir()
    if bindir is None or not (bindir / "initdb").exists():
        return "PostgreSQL is not installed: run `make install` (apt-get install postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SUPERUSER)
        except KeyError:
            return "running as root and there is no `postgres` user to run the server as"
    return None


def _run_as() -> dict[str, Any]:
    """Popen arguments that drop root to the ``postgres`` user (nothing when not root)."""
    if os.geteuid() != 0:
        return {}
    pw = pwd.getpwnam(SUPERUSER)
    return {
        "user": pw.pw_uid,
        "group": pw.pw_gid,
        "extra_groups": [],
        "env": {**os.environ, "HOME": pw.pw_dir},
    }


class PostgresServer(localstack.Process):
    """``postgres`` in ``workdir`` (None: a new folder under /tmp, removed by :meth:`cleanup`).

    ``url`` is a libpq URL for the superuser over TCP (trust authentication on loopback);
    :meth:`create_database` gives each test a database of its own.
    """

    name = "postgres"
    package = "postgresql"
    start_timeout = 60.0

    def __init__(self, workdir: Path | None = None, *, settings: dict[str, str] | None = None) -> None:
        self._own_dir = workdir is None
        super().__init__(Path(tempfile.mkdtemp(prefix="bot-pg-")) if workdir is None else workdir)
        bindir = pg_bin_dir()
        if bindir is None:
            raise RuntimeError(missing_reason() or "PostgreSQL is not installed")
        self.bindir = bindir
        self.binary = str(bindir / "postgres")
        self.settings = {
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "200",
            "shared_buffers": "64MB",
            **(settings or {}),
        }

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def url(self) -> str:
        return self.database_url("postgres")

    def database_url(self, database: str) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _chown(self) -> None:
        if os.geteuid() == 0:
            pw = pwd.getpwnam(SUPERUSER)
            os.chown(self.workdir, pw.pw_uid, pw.pw_gid)
            os.chmod(self.workdir, 0o700)

    def prepare(self) -> None:
        """``initdb`` once (as the ``postgres`` user when root); later starts reuse the data."""
        self._chown()
        if (self.data_dir / "PG_VERSION").exists():
            return
        out = subprocess.run(  # noqa: S603 - fixed argv
            [
                str(self.bindir / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            cwd=self.workdir,
            **_run_as(),
        )
        if out.returncode != 0:
            raise RuntimeError(f"initdb failed in {self.data_dir}:\n{out.stdout}\n{out.stderr}")

    def args(self) -> list[str]:
        extra = [x for k, v in self.settings.items() for x in ("-c", f"{k}={v}")]
        return [
            "-D",
            str(self.data_dir),
            "-p",
            str(self.port),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"unix_socket_directories={self.workdir}",
            *extra,
        ]

    def ready(self) -> bool:
        out = subprocess.run(  # noqa: S603 - fixed argv
            [str(self.bindir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port), "-t", "1"],
            capture_output=True,
            timeout=5,
            check=False,
        )
        return out.returncode == 0

    def start(self) -> PostgresServer:
        """Start as the ``postgres`` user when root; one retry on another port if this one was taken."""
        for attempt in (1, 2):
            try:
                self._spawn()
                return self
            except RuntimeError as exc:
                if attempt == 1 and "address already in use" in str(exc).lower():
                    self.port = localstack.free_port()
                    continue
                raise
        raise AssertionError("unreachable")

    def _spawn(self) -> None:
        self.prepare()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
                [self.binary, *self.args()],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,
                **_run_as(),
            )
        localstack._LIVE.add(self)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if not self.running:
                break
            if self.ready():
                return
            time.sleep(0.05)
        tail = self.log_tail()
        self.stop()
        raise RuntimeError(f"postgres did not become ready on {self.address}; log {self.log_path}:\n{tail}")

    def stop(self) -> None:
        """Fast shutdown (SIGINT to the postmaster: sessions are ended, the data stays consistent),
        then the base class's SIGTERM/SIGKILL of the process group for whatever is left. SIGTERM
        to every process at once, the base class's way, makes PostgreSQL wait out the 10 s."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        super().stop()

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL with ``psql`` (for set-up: databases, roles); raises with psql's message."""
        out = subprocess.run(  # noqa: S603 - fixed argv
            [
                str(self.bindir / "psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                self.database_url(database),
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if out.returncode != 0:
            raise RuntimeError(f"psql failed: {out.stderr.strip()}")
        return out.stdout.strip()

    def create_database(self, name: str) -> str:
        """A new empty database; returns its URL."""
        self.psql(f'CREATE DATABASE "{name}"')
        return self.database_url(name)

    def drop_database(self, name: str) -> None:
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def cleanup(self) -> None:
        """Stop the server and remove its folder when this harness made it."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)
