"""`capbot db upgrade` with replicas: several processes migrating one fresh PostgreSQL at once
take turns on an advisory lock; one migrates, the others find the schema at head."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

ROOT = Path(__file__).resolve().parents[1]


def _upgrade(url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bot", "db", "upgrade"], cwd=cwd, text=True,
                          capture_output=True, timeout=120,
                          env={**os.environ, "CAPBOT_DATABASE_URL": url,
                               "PYTHONPATH": str(ROOT), "CAPBOT_LOG_LEVEL": "INFO"})


async def test_three_replicas_upgrading_at_once_migrate_once(postgres_url: str,
                                                             tmp_path: Path) -> None:
    done = await asyncio.gather(*(asyncio.to_thread(_upgrade, postgres_url, tmp_path)
                                  for _ in range(3)))
    for proc in done:
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "database is at the latest schema" in proc.stderr
    engine = create_async_engine(postgres_url)
    try:
        async with engine.connect() as conn:
            versions = (await conn.execute(text("SELECT version_num FROM alembic_version"))
                        ).scalars().all()
            locks = (await conn.execute(text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"))).scalar()
    finally:
        await engine.dispose()
    assert len(versions) == 1 and locks == 0
