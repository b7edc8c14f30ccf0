"""The last resort for a message the database refused: an append-only file replayed at start.

The file is allocated ahead (posix_fallocate), so appending a record still works when the
disk is full: the blocks are already ours. Records are JSON lines; the unused tail is zero
bytes. Each append is fsynced before the respondent is told the message was kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)
RESERVE = 1 << 20  # 1 MiB: a few thousand short messages


class Spool:
    def __init__(self, path: Path, reserve: int = RESERVE) -> None:
        self.path = path
        self._base = path
        self.reserve = reserve
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._end = 0

    def open(self) -> None:
        """Open and allocate the reserve (at start, while there is room); never raises.

        A process holds its spool locked. When another live process (a second replica in
        the same directory) holds it, this one uses a file of its own, `<path>.<pid>`.
        """
        fd = None
        for path in (self._base, self._base.with_name(f"{self._base.name}.{os.getpid()}")):
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = _open_locked(path)
            except OSError as exc:
                logger.warning("spool %s cannot be opened (%s): a message the database "
                               "refuses will be lost", path, exc)
                return
            if fd is not None:
                self.path = path
                break
        if fd is None:
            return
        self._fd = fd
        self._end = _data_end(fd)
        try:
            if os.fstat(fd).st_size < self._end + self.reserve:
                os.posix_fallocate(fd, 0, self._end + self.reserve)
        except OSError as exc:
            logger.warning("spool %s: cannot reserve space (%s)", self.path, exc)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def append(self, record: dict[str, Any]) -> bool:
        """Write one record durably; False when even that failed."""
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8", "replace")
        with self._lock:
            if self._fd is None:
                return False
            try:
                if os.fstat(self._fd).st_size < self._end + len(line):
                    os.posix_fallocate(self._fd, 0, self._end + len(line) + self.reserve)
                os.pwrite(self._fd, line, self._end)
                os.fsync(self._fd)
            except OSError as exc:
                logger.error("spool %s: cannot keep a message (%s)", self.path, exc)
                return False
            self._end += len(line)
            return True

    async def append_async(self, record: dict[str, Any]) -> bool:
        return await asyncio.to_thread(self.append, record)

    def records(self) -> list[dict[str, Any]]:
        with self._lock:
            if self._fd is None:
                return []
            data = os.pread(self._fd, self._end, 0)
        found = []
        for line in data.splitlines():
            with contextlib.suppress(ValueError):  # a torn last line from a crash mid-write
                found.append(json.loads(line))
        return found

    def clear(self) -> None:
        """Forget the records (after they are in the database); keep the reserve."""
        with self._lock:
            if self._fd is None:
                return
            os.pwrite(self._fd, b"\0" * self._end, 0)
            os.fsync(self._fd)
            self._end = 0

    async def replay(self, keep: Callable[[dict[str, Any]], Any]) -> int:
        """Hand every record to `keep` (an async function storing it); then clear the file.

        Also takes over the files of processes that died holding a spool of their own.
        A crash in between replays them again, which `keep` must tolerate (it inserts with
        the message's channel id, so a second insert is a no-op).
        """
        records = self.records()
        orphans = []
        for other in self._base.parent.glob(f"{self._base.name}.*"):
            if other == self.path or not other.suffix[1:].isdigit():  # only <path>.<pid>
                continue
            with contextlib.suppress(OSError):
                fd = _open_locked(other)
                if fd is not None:
                    orphans.append((other, fd))
                    records += [json.loads(line) for line in
                                os.pread(fd, _data_end(fd), 0).splitlines() if line.strip()]
        for record in records:
            await keep(record)
        if records:
            await asyncio.to_thread(self.clear)
            logger.warning("spool %s: %d messages the database had refused are now stored",
                           self.path, len(records))
        for other, fd in orphans:
            other.unlink(missing_ok=True)
            os.close(fd)
        return len(records)


def _open_locked(path: Path) -> int | None:
    """The file, opened and locked for this process; None when another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _data_end(fd: int) -> int:
    """Length of the records: the file up to the first zero byte."""
    size = os.fstat(fd).st_size
    chunk, offset = 1 << 16, 0
    while offset < size:
        data = os.pread(fd, min(chunk, size - offset), offset)
        zero = data.find(b"\0")
        if zero >= 0:
            return offset + zero
        offset += len(data)
    return size
