"""Writes the CSV export to a directory or one zip, atomically (UTF-8 with a BOM, CRLF)."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import logging
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from bot.i18n import Translations
from bot.questionnaire import Questionnaire
from reports.codebook import DATA_TABLES
from reports.export import TABLES, ExportBatch, Exporter
from reports.options import ExportOptionError, ExportOptions
from storage.reads import DatabaseLike, reading_connection

logger = logging.getLogger(__name__)

# Excel wants the BOM to read UTF-8, and CRLF; csv quotes fields with separators, quotes or
# line breaks (QUOTE_MINIMAL), which Excel, pandas and the csv module all read back.
BOM = "\ufeff".encode()
LINE_END = "\r\n"
# Level 1 deflate: CSV still shrinks ~6x, at a fraction of the default level's CPU time.
ZIP_LEVEL = 1
_COPY_CHUNK = 1 << 20


@dataclass
class ExportSummary:
    """What was written: the path (None for a buffer) and the data rows of each file."""

    path: str | None
    questionnaire: str
    rows: dict[str, int] = field(default_factory=dict)
    bytes: int = 0

    @property
    def submissions(self) -> int:
        return self.rows.get("submissions", 0)

    @property
    def activities(self) -> int:
        return self.rows.get("activities", 0)

    @property
    def answers(self) -> int:
        return self.rows.get("answers", 0)

    def describe(self) -> str:
        parts = [f"{self.rows[t]} {t if t != 'codebook' else 'codebook rows'}"
                 for t in TABLES if t in self.rows]
        return f"wrote {self.path or 'buffer'} ({self.questionnaire}): " + ", ".join(parts)


class CsvStream:
    """CSV rows into a binary stream as Excel wants them: UTF-8 with a BOM, CRLF, minimal
    quoting. Each batch is formatted in memory and encoded once (faster than row by row)."""

    def __init__(self, binary: IO[bytes], header: Sequence[str]) -> None:
        self.binary = binary
        self.rows = 0  # data rows written, header excluded
        self._buffer = io.StringIO()
        self._writer = csv.writer(self._buffer, lineterminator=LINE_END)
        self._writer.writerow(header)
        self._flush(BOM)

    def write(self, rows: list[Sequence[Any]]) -> None:
        self._writer.writerows(rows)
        self.rows += len(rows)
        self._flush()

    def _flush(self, prefix: bytes = b"") -> None:
        buffer = self._buffer
        self.binary.write(prefix + buffer.getvalue().encode("utf-8", errors="replace"))
        buffer.seek(0)
        buffer.truncate()


def _write_batch(writers: dict[str, CsvStream], batch: ExportBatch) -> None:
    for table, writer in writers.items():
        rows = batch.rows(table)
        if rows:
            writer.write(rows)


async def _write_tables(db: DatabaseLike, exporter: Exporter, streams: dict[str, IO[bytes]],
                        counts: dict[str, int]) -> None:
    """Header + rows of each data table into its binary stream, in one pass over the data."""
    writers = {table: CsvStream(stream, exporter.header(table))
               for table, stream in streams.items()}
    async with reading_connection(db) as conn:
        async for batch in exporter.batches(conn, list(streams)):
            # File writes (and zip compression) off the event loop.
            await asyncio.to_thread(_write_batch, writers, batch)
    counts.update({table: writer.rows for table, writer in writers.items()})


def _write_codebook(exporter: Exporter, stream: IO[bytes], counts: dict[str, int]) -> None:
    writer = CsvStream(stream, exporter.header("codebook"))
    writer.write(list(exporter.codebook_rows()))  # a few hundred rows
    counts["codebook"] = writer.rows


def _check_tables(tables: Iterable[str]) -> tuple[str, ...]:
    chosen = tuple(t for t in TABLES if t in set(tables))
    unknown = set(tables) - set(TABLES)
    if unknown or not chosen:
        raise ValueError(f"tables must be among {TABLES}, got {sorted(set(tables))}")
    return chosen


# -- zip ----------------------------------------------------------------------------------------


async def _write_zip(db: DatabaseLike, exporter: Exporter, fh: IO[bytes],
                     tables: tuple[str, ...], spool_dir: str | None) -> dict[str, int]:
    """A zip holds one open entry at a time: answers.csv (the big one) streams straight into
    the zip; submissions.csv and activities.csv go to unlinked temporary files first (on disk,
    never in memory) and are copied in after the pass."""
    counts: dict[str, int] = {}
    data = [t for t in DATA_TABLES if t in tables]
    with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED,
                         compresslevel=ZIP_LEVEL) as zf:
        if data:
            direct = "answers" if "answers" in data else data[0]
            spooled = [t for t in data if t != direct]
            with contextlib.ExitStack() as stack:
                entry = stack.enter_context(zf.open(f"{direct}.csv", "w", force_zip64=True))
                spools = {t: stack.enter_context(tempfile.TemporaryFile(dir=spool_dir))
                          for t in spooled}
                await _write_tables(db, exporter, {direct: entry, **spools}, counts)
                entry.close()
                for table in spooled:
                    await asyncio.to_thread(_copy_into_zip, zf, f"{table}.csv", spools[table])
        if "codebook" in tables:
            def codebook() -> None:
                with zf.open("codebook.csv", "w", force_zip64=True) as entry:
                    _write_codebook(exporter, entry, counts)
            await asyncio.to_thread(codebook)
    return counts


def _copy_into_zip(zf: zipfile.ZipFile, name: str, spool: IO[bytes]) -> None:
    spool.flush()
    spool.seek(0)
    with zf.open(name, "w", force_zip64=True) as entry:
        shutil.copyfileobj(spool, entry, _COPY_CHUNK)


def _temp_beside(target: Path) -> Path:
    """A temporary file next to `target` (same file system: the rename is atomic)."""
    try:
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.",
                                    suffix=".part")
    except OSError as exc:
        raise ExportOptionError("--out", f"cannot write in {target.parent}: "
                                f"{exc.strerror or exc}") from None
    os.close(fd)
    return Path(name)


def check_destination(out: str | os.PathLike[str]) -> tuple[str, Path]:
    """('zip' | 'dir', path) for an --out value, or ExportOptionError naming --out."""
    path = Path(out)
    if str(out).strip() == "":
        raise ExportOptionError("--out", "empty path")
    if path.suffix.lower() == ".zip":
        if path.is_dir():
            raise ExportOptionError("--out", f"{path} is a directory")
        if not path.parent.is_dir():
            raise ExportOptionError("--out", f"directory {path.parent} does not exist")
        return "zip", path
    if path.exists() and not path.is_dir():
        raise ExportOptionError("--out", f"{path} exists and is not a directory "
                                "(give a directory, or a path ending in .zip)")
    return "dir", path


async def export_zip(db: DatabaseLike, questionnaires: dict[str, Questionnaire],
                     translations: Translations, options: ExportOptions,
                     dest: str | os.PathLike[str] | IO[bytes], *,
                     tables: Iterable[str] = TABLES) -> ExportSummary:
    """Write the export as one zip to a path (atomically: temporary name, then rename) or to a
    writable binary file object such as io.BytesIO (e.g. to send it as a document)."""
    chosen = _check_tables(tables)
    qn = options.pick_questionnaire(questionnaires)
    exporter = Exporter(qn, translations, options)
    if not isinstance(dest, (str, os.PathLike)):
        counts = await _write_zip(db, exporter, dest, chosen, None)
        return ExportSummary(None, qn.id, counts, dest.tell() if dest.seekable() else 0)
    _kind, target = check_destination(dest)
    if _kind != "zip":
        raise ExportOptionError("--out", f"{target} does not end in .zip")
    tmp = await asyncio.to_thread(_temp_beside, target)
    try:
        fh = await asyncio.to_thread(tmp.open, "wb")
        try:
            counts = await _write_zip(db, exporter, fh, chosen, str(target.parent))
        finally:
            await asyncio.to_thread(_sync_close, fh)
        size = await asyncio.to_thread(_publish, {tmp: target})
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return ExportSummary(str(target), qn.id, counts, size)


async def export_dir(db: DatabaseLike, questionnaires: dict[str, Questionnaire],
                     translations: Translations, options: ExportOptions,
                     dest: str | os.PathLike[str], *,
                     tables: Iterable[str] = TABLES) -> ExportSummary:
    """Write <table>.csv files into a directory (created if needed). Each file is written under
    a temporary name and renamed only when every file is complete."""
    chosen = _check_tables(tables)
    qn = options.pick_questionnaire(questionnaires)
    exporter = Exporter(qn, translations, options)
    _kind, target = check_destination(dest)
    if _kind != "dir":
        raise ExportOptionError("--out", f"{target} ends in .zip; use export_zip")
    await asyncio.to_thread(_make_dir, target)
    temps: dict[str, Path] = {}
    counts: dict[str, int] = {}
    files: dict[str, IO[bytes]] = {}
    try:
        for table in chosen:
            temps[table] = await asyncio.to_thread(_temp_beside, target / f"{table}.csv")
            files[table] = await asyncio.to_thread(temps[table].open, "wb")
        try:
            streams = {t: f for t, f in files.items() if t != "codebook"}
            if streams:
                await _write_tables(db, exporter, streams, counts)
            if "codebook" in files:
                await asyncio.to_thread(_write_codebook, exporter, files["codebook"], counts)
        finally:
            for fh in files.values():
                await asyncio.to_thread(_sync_close, fh)
        size = await asyncio.to_thread(
            _publish, {tmp: target / f"{table}.csv" for table, tmp in temps.items()})
    except BaseException:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
        raise
    return ExportSummary(str(target), qn.id, counts, size)


def _make_dir(target: Path) -> None:
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportOptionError("--out", f"cannot create directory {target}: "
                                f"{exc.strerror or exc}") from None


def _sync_close(fh: IO[bytes]) -> None:
    """Flush to disk, then close: the rename that follows must not expose a partial file."""
    if not fh.closed:
        fh.flush()
        os.fsync(fh.fileno())
        fh.close()


def _publish(renames: dict[Path, Path]) -> int:
    """Give every complete temporary file its final name; returns the total size."""
    size = 0
    for tmp, final in renames.items():
        os.replace(tmp, final)
        size += final.stat().st_size
    return size


async def export_to(db: DatabaseLike, questionnaires: dict[str, Questionnaire],
                    translations: Translations, options: ExportOptions,
                    out: str | os.PathLike[str], *,
                    tables: Iterable[str] = TABLES) -> ExportSummary:
    """`--out` semantics: a path ending in .zip gets one zip, anything else is a directory."""
    kind, _path = check_destination(out)
    writer = export_zip if kind == "zip" else export_dir
    return await writer(db, questionnaires, translations, options, out, tables=tables)
