"""A throwaway PostgreSQL cluster in a temp dir, for tests and benchmark scripts."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from typing import Any

from testkit.ports import LOOPBACK, free_port
from testkit.process import ServerError, live_servers, tail, which


class Postgres:
    """A throwaway PostgreSQL cluster (trust auth, fsync off) in a temp dir.

    Usage: ``pg = Postgres(); pg.start(); pg.create_database("x"); pg.url("x"); pg.stop()``.
    As root it runs as the `postgres` system user (via runuser).
    """

    def __init__(
        self, *, host: str = LOOPBACK, user: str = "postgres", durable_commits: bool = False
    ) -> None:
        self.host = host
        self.user = user
        # False: synchronous_commit=off, fast, but a crash (`restart("immediate")`) loses the
        # last commits a client was told were done; True: PostgreSQL's default, as deployed.
        self.durable_commits = durable_commits
        self.port = 0
        self.directory = ""
        self.data_dir = ""
        self.log_path = ""
        self.bindir = self.find_bindir() or ""
        self.startup_seconds = 0.0
        self.initdb_seconds = 0.0
        self._running = False
        self._opts = ""
        self._root = os.geteuid() == 0

    @staticmethod
    def find_bindir() -> str | None:
        """The newest /usr/lib/postgresql/*/bin that has initdb (or PATH's), else None."""

        def version(path: str) -> tuple[int, ...]:
            v = path.split("/")[-2]
            return tuple(int(p) for p in v.split(".") if p.isdigit())

        dirs = [
            d
            for d in glob.glob("/usr/lib/postgresql/*/bin")
            if os.access(os.path.join(d, "initdb"), os.X_OK)
        ]
        if dirs:
            return max(dirs, key=version)
        initdb = shutil.which("initdb")
        return os.path.dirname(initdb) if initdb else None

    @property
    def major_version(self) -> int:
        """Major version from the bin dir path (/usr/lib/postgresql/15/bin -> 15), else 0."""
        part = self.bindir.rstrip("/").split("/")[-2] if self.bindir.count("/") >= 2 else ""
        return int(part) if part.isdigit() else 0

    @classmethod
    def missing(cls) -> str | None:
        """None when PostgreSQL can run here, else a reason naming what to install."""
        bindir = cls.find_bindir()
        if bindir is None:
            return "PostgreSQL is not installed (apt-get install postgresql)"
        for prog in ("pg_ctl", "postgres", "psql"):
            if not os.access(os.path.join(bindir, prog), os.X_OK):
                return f"PostgreSQL in {bindir} lacks {prog} (apt-get install postgresql)"
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                return "running as root but there is no 'postgres' system user"
            if which("runuser") is None:
                return "running as root but runuser is missing (util-linux)"
        return None

    def _run_as_owner(self, args: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        cmd = ["runuser", "-u", "postgres", "--", *args] if self._root else args
        env = {**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
        env.pop("PGDATA", None)
        return subprocess.run(
            cmd, capture_output=True, text=True, check=False, cwd=self.directory, env=env, **kw
        )

    def start(self, timeout: float = 60.0) -> Postgres:
        """initdb + start the cluster; raise ServerError with the log tail on failure."""
        reason = self.missing()
        if reason:
            raise ServerError(reason)
        if self._running:
            raise ServerError("PostgreSQL already started")
        t0 = time.monotonic()
        self.directory = tempfile.mkdtemp(prefix="capbot-pg-")
        self.data_dir = os.path.join(self.directory, "data")
        self.log_path = os.path.join(self.directory, "postgres.log")
        if self._root:
            pg = pwd.getpwnam("postgres")
            os.chown(self.directory, pg.pw_uid, pg.pw_gid)
        os.chmod(self.directory, 0o700)
        bin_ = self.bindir
        proc = self._run_as_owner(
            [f"{bin_}/initdb", "-D", self.data_dir, "-U", self.user, "-A", "trust",
             "-E", "UTF8", "--locale=C.UTF-8", "--no-sync", "--no-instructions"],
            timeout=timeout,
        )  # fmt: skip
        if proc.returncode != 0:
            self._remove_dir()
            raise ServerError(f"initdb failed: {proc.stdout}\n{proc.stderr}")
        self.initdb_seconds = time.monotonic() - t0
        error = ""
        for _attempt in range(3):
            self.port = free_port(self.host)
            opts = (
                f"-p {self.port} -k {self.directory} -c listen_addresses={self.host} "
                "-c fsync=off -c full_page_writes=off -c max_connections=200"
                + ("" if self.durable_commits else " -c synchronous_commit=off")
            )
            proc = self._run_as_owner(
                [f"{bin_}/pg_ctl", "-D", self.data_dir, "-l", self.log_path, "-w",
                 "-t", str(int(timeout)), "-o", opts, "start"],
                timeout=timeout + 10,
            )  # fmt: skip
            if proc.returncode == 0:
                self._opts = opts
                self._running = True
                live_servers.add(self)
                self.startup_seconds = time.monotonic() - t0
                return self
            error = f"pg_ctl start failed: {proc.stdout}\n{proc.stderr}\n{tail(self.log_path)}"
            if "already in use" not in error:
                break
        self._remove_dir()
        raise ServerError(error)

    def restart(self, mode: str = "fast", down: float = 0.0, timeout: float = 60.0) -> None:
        """Stop the server and start it again on the same port and data, as an operator's
        restart or a crash would: `mode` "fast" (sessions terminated, clean shutdown) or
        "immediate" (no checkpoint: recovery from the WAL at start); down `down` seconds."""
        if not self._running:
            raise ServerError("PostgreSQL is not running")
        proc = self._run_as_owner(
            [f"{self.bindir}/pg_ctl", "-D", self.data_dir, "-m", mode, "-w", "stop"],
            timeout=timeout,
        )
        if proc.returncode != 0:
            raise ServerError(f"pg_ctl stop failed: {proc.stdout}\n{proc.stderr}")
        time.sleep(down)
        proc = self._run_as_owner(
            [f"{self.bindir}/pg_ctl", "-D", self.data_dir, "-l", self.log_path, "-w",
             "-t", str(int(timeout)), "-o", self._opts, "start"],
            timeout=timeout + 10,
        )  # fmt: skip
        if proc.returncode != 0:
            raise ServerError(
                f"pg_ctl start failed: {proc.stdout}\n{proc.stderr}\n{tail(self.log_path)}"
            )

    def _remove_dir(self) -> None:
        if self.directory and not os.environ.get("CAPBOT_KEEP_SERVER_DIRS"):
            shutil.rmtree(self.directory, ignore_errors=True)

    def stop(self) -> None:
        """Stop immediately (no checkpoint) and remove the cluster. Idempotent."""
        live_servers.discard(self)
        if self._running:
            self._running = False
            proc = self._run_as_owner(
                [f"{self.bindir}/pg_ctl", "-D", self.data_dir, "-m", "immediate", "-w", "stop"],
                timeout=60,
            )
            if proc.returncode != 0:
                self._kill_postmaster()
        self._remove_dir()

    def _kill_postmaster(self) -> None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(os.path.join(self.data_dir, "postmaster.pid")) as f:
                pid = int(f.readline())
            os.kill(pid, signal.SIGKILL)

    def __enter__(self) -> Postgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server log."""
        return tail(self.log_path, lines)

    def url(self, dbname: str = "postgres") -> str:
        """SQLAlchemy async URL: postgresql+asyncpg://postgres@127.0.0.1:PORT/dbname."""
        return f"postgresql+asyncpg://{self.user}@{self.host}:{self.port}/{dbname}"

    def dsn(self, dbname: str = "postgres") -> str:
        """libpq/asyncpg DSN: postgresql://postgres@127.0.0.1:PORT/dbname."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{dbname}"

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        """Run SQL through psql (as the superuser, over TCP); return its output."""
        proc = subprocess.run(
            [f"{self.bindir}/psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
             "-h", self.host, "-p", str(self.port), "-U", self.user, "-d", dbname, "-c", sql],
            capture_output=True, text=True, check=False, timeout=120,
        )  # fmt: skip
        if proc.returncode != 0:
            raise ServerError(f"psql failed for {sql!r}: {proc.stderr.strip()}")
        return proc.stdout

    @staticmethod
    def _ident(name: str) -> str:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", name):
            raise ValueError(f"unsupported database name {name!r}")
        return f'"{name}"'

    def create_database(self, name: str, template: str | None = None) -> str:
        """CREATE DATABASE `name` (optionally from `template`); return its SQLAlchemy URL."""
        sql = f"CREATE DATABASE {self._ident(name)}"
        if template:
            sql += f" TEMPLATE {self._ident(template)}"
        if self.major_version >= 15:
            sql += " STRATEGY FILE_COPY"  # ~55 ms instead of ~75 ms with fsync off
        self.psql(sql)
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """DROP DATABASE IF EXISTS `name`, terminating its connections."""
        self.psql(f"DROP DATABASE IF EXISTS {self._ident(name)} WITH (FORCE)")


# --------------------------------------------------------------------------- SMTP capture
