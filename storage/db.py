"""Database engine set-up (SQLite pragmas, PostgreSQL) and migrations to the latest schema."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, ExceptionContext, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from storage.advisory import lock_for_transaction

logger = logging.getLogger(__name__)
T = TypeVar("T")
MIGRATION_LOCK = "migrations"  # the advisory lock `capbot db upgrade` holds while migrating
MIGRATIONS = Path(__file__).parent / "migrations"


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def create_engine(url: str) -> AsyncEngine:
    """An async engine; SQLite gets WAL and a durable commit for every acknowledged turn."""
    if is_sqlite(url):
        # One connection: SQLite has one writer at a time, and queueing turns on the pool is
        # far cheaper than several connections retrying on SQLITE_BUSY. Long readers (export)
        # open their own engine; WAL lets them read while turns commit.
        engine = create_async_engine(url, pool_size=1, max_overflow=0, pool_timeout=60,
                                     connect_args={"timeout": 30})
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    engine = create_async_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)
    event.listen(engine.sync_engine, "handle_error", _read_only_invalidates)
    return engine


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # FULL: a reply is only sent after its turn is on disk, even across a power loss.
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


# SQLSTATEs of a server going away or not there yet: connection exceptions (class 08),
# admin/crash shutdown and "cannot connect now" (57P01-57P03, a restart or a failover).
_DISCONNECT_STATES = ("08", "57P01", "57P02", "57P03")


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not e for e in seen):
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def is_read_only(exc: BaseException) -> bool:
    """True when a reachable PostgreSQL refused a write because the session is read-only
    (SQLSTATE 25006: `default_transaction_read_only`, a hot standby)."""
    return any(getattr(e, "sqlstate", None) == "25006" or "read-only transaction" in str(e)
               for e in _chain(exc))


def _read_only_invalidates(context: ExceptionContext) -> None:
    """A session opened while the database was read-only stays read-only after it is
    writable again (the setting is read when the session starts; a standby's sessions after
    a failover): count the refusal as a lost connection, so that SQLAlchemy drops the pool's
    connections and the next checkout connects afresh."""
    if is_read_only(context.original_exception):
        context.is_disconnect = True


def is_disconnect(exc: BaseException) -> bool:
    """True when `exc` says the database server could not be reached or dropped the
    connection (a restart, a failover, a network cut): worth trying again in a moment. Not for
    a refusal by a reachable server (a full disk, a read-only database, a constraint)."""
    if is_read_only(exc):
        return False
    for e in _chain(exc):
        if getattr(e, "connection_invalidated", False):  # SQLAlchemy saw it drop
            return True
        if isinstance(e, ConnectionError | TimeoutError):  # refused, reset, no answer
            return True
        state = getattr(e, "sqlstate", None) or getattr(e, "pgcode", None)
        if isinstance(state, str) and state.startswith(_DISCONNECT_STATES):
            return True
        if type(e).__name__ in ("ConnectionDoesNotExistError", "CannotConnectNowError"):
            return True  # asyncpg's, raised without a SQLSTATE
        if "connection was closed in the middle of operation" in str(e):
            return True
    return False


class DatabaseUnavailable(Exception):
    """The database cannot be reached or opened; the message says where and why."""


async def check_connection(engine: AsyncEngine, seconds: float = 15.0) -> None:
    where = engine.url.render_as_string(hide_password=True)
    try:
        async with asyncio.timeout(seconds), engine.connect():
            pass
    except Exception as exc:  # refused, unknown host, bad password, no such database, ...
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, TimeoutError):
            reason = f"no answer within {seconds:.0f} s"
        raise DatabaseUnavailable(f"cannot connect to {where} ({reason})") from None


async def upgrade(engine: AsyncEngine) -> None:
    """Bring the schema to the latest migration (idempotent; runs at every start-up)."""
    await check_connection(engine)
    url = engine.url.render_as_string(hide_password=False)

    def run(connection: Connection) -> None:
        # Replicas starting at once: one migrates, the others wait here, then find the schema
        # at head (PostgreSQL runs the DDL in this transaction; the lock ends at its commit).
        if lock_for_transaction(connection, MIGRATION_LOCK):
            logger.info("another process migrated the schema meanwhile; checking it")
        cfg = alembic_config(url)
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "head")

    async with engine.begin() as conn:
        await conn.run_sync(run)


class Database:
    """The async engine, plus the way turns are written: a transaction running sync Core code.

    On SQLite the turn transaction runs in one dedicated writer thread on the sqlite3 driver:
    aiosqlite costs ~0.4 ms per statement here (a thread hop per cursor call) against ~0.03 ms
    for the same statement in-thread, and SQLite has a single writer anyway. On PostgreSQL it
    runs through AsyncConnection.run_sync() on asyncpg, so several replicas and writers can
    work side by side with row locks.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = create_engine(url)
        self.is_sqlite = is_sqlite(url)
        self._sync: Engine | None = None
        self._executor: ThreadPoolExecutor | None = None
        if self.is_sqlite:
            sync_url = make_url(url).set(drivername="sqlite")
            self._sync = create_sync_engine(sync_url, pool_size=1, max_overflow=0,
                                            connect_args={"timeout": 30,
                                                          "check_same_thread": False})
            event.listen(self._sync, "connect", _sqlite_pragmas)
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    async def transaction(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn(conn, *args) in one transaction; committed when it returns."""
        if self._sync is not None:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, self._run_sync, fn, args)
        async with self.engine.begin() as conn:
            return await conn.run_sync(fn, *args)

    def _run_sync(self, fn: Callable[..., T], args: tuple) -> T:
        assert self._sync is not None
        with self._sync.begin() as conn:
            return fn(conn, *args)

    async def dispose(self) -> None:
        await self.engine.dispose()
        if self._sync is not None:
            self._sync.dispose()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
