"""PostgreSQL advisory locks: a session lock held on its own connection, and the key of a name.

A session-level advisory lock lives exactly as long as the server session that took it: it is
released when the holder unlocks it, closes the connection, or the connection dies (process
killed, network cut, server restarted, backend terminated). So the holder keeps its own
connection, outside the pool (a pooled connection handed back would keep the lock), in
autocommit (no transaction left open for hours), and asks the server now and then whether the
session is still there: when that check fails or does not answer in time, the lock must be
taken as lost. A transaction-pooling proxy (PgBouncer in transaction mode) cannot carry
session locks: point CAPBOT_DATABASE_URL at PostgreSQL or at a session-mode pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

logger = logging.getLogger(__name__)


def advisory_key(name: str) -> int:
    """A stable signed 64-bit key for a name (the same in every replica and every version)."""
    digest = hashlib.blake2b(f"capbot:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def lock_for_transaction(conn: Connection, name: str) -> bool:
    """Take the transaction-level advisory lock on `name` (released at commit or rollback),
    waiting while another session holds it; True if it had to wait. Nothing on SQLite, where
    one writer at a time is the rule anyway."""
    if conn.dialect.name != "postgresql":
        return False
    key = {"key": advisory_key(name)}
    if conn.execute(text("SELECT pg_try_advisory_xact_lock(:key)"), key).scalar():
        return False
    logger.info("waiting for the %r lock (another process holds it)", name)
    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), key)
    return True


def lock_engine(url: str) -> AsyncEngine:
    """An engine without a pool: each lock's connection is its own, and closing it ends the
    session (and so releases the lock) for sure."""
    return create_async_engine(url, poolclass=NullPool)


class SessionLock:
    """`await try_acquire()`, then `await alive()` every few seconds, `await release()`.

    Every call is bounded by `timeout`: a connection that stops answering counts as lost.
    """

    def __init__(self, engine: AsyncEngine, name: str, *, timeout: float = 2.0) -> None:
        self.engine = engine
        self.name = name
        self.key = advisory_key(name)
        self.timeout = timeout
        self._conn: AsyncConnection | None = None

    @property
    def held(self) -> bool:
        return self._conn is not None

    async def try_acquire(self) -> bool:
        """True when this session now holds the lock; False when another session does.
        Raises when the database cannot be reached."""
        if self._conn is not None:
            return True
        async with asyncio.timeout(self.timeout * 3):  # connecting may take a little longer
            conn = await self.engine.connect()
        try:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            async with asyncio.timeout(self.timeout):
                got = (await conn.execute(text("SELECT pg_try_advisory_lock(:key)"),
                                          {"key": self.key})).scalar()
        except BaseException:
            await _discard(conn)
            raise
        if not got:
            await _discard(conn)
            return False
        self._conn = conn
        return True

    async def alive(self) -> bool:
        """True when the session holding the lock answered within the timeout; False (and
        the connection dropped) otherwise: from then on the lock may be someone else's."""
        conn = self._conn
        if conn is None:
            return False
        try:
            async with asyncio.timeout(self.timeout):
                await conn.execute(text("SELECT 1"))
        except Exception as exc:
            logger.warning("advisory lock %r: the database connection is gone (%s)", self.name,
                           exc or type(exc).__name__)
            self._conn = None
            await _discard(conn)
            return False
        return True

    async def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            async with asyncio.timeout(self.timeout):
                await conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": self.key})
        except Exception:  # closing the connection releases it too
            pass
        await _discard(conn)


async def _discard(conn: AsyncConnection) -> None:
    """Close the connection; if the close itself hangs or fails, drop it unceremoniously."""
    try:
        async with asyncio.timeout(2.0):
            await conn.close()
    except Exception:
        with contextlib.suppress(Exception):
            await conn.invalidate()
