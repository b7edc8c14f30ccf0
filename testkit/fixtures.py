"""Pytest fixtures for the throwaway Dovecot, PostgreSQL and SMTP test servers."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from testkit.dovecot import Dovecot
from testkit.imap import ImapSettings
from testkit.postgres import Postgres
from testkit.process import skip_or_fail
from testkit.smtp import SmtpCapture

# Fixture name -> marker name, so that `-m "not dovecot"` deselects tests that need it.
_SERVER_MARKERS = {
    "dovecot": "dovecot",
    "imap_server": "dovecot",
    "postgres": "postgres",
    "postgres_url": "postgres",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses a server fixture with the server's marker."""
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        for fixture, marker in _SERVER_MARKERS.items():
            if fixture in names:
                item.add_marker(marker)


def _report_startup(config: pytest.Config, what: str, seconds: float) -> None:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and config.getoption("verbose") > 0:
        reporter.write_line(f"[{what} started in {seconds:.2f}s]")


@pytest.fixture(scope="session")
def dovecot(pytestconfig: pytest.Config) -> Iterator[Dovecot]:
    """One Dovecot for the whole session (skips locally / fails under CI=true if missing)."""
    reason = Dovecot.missing()
    if reason:
        skip_or_fail(reason)
    server = Dovecot()
    server.start()
    _report_startup(pytestconfig, "Dovecot", server.startup_seconds)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def imap_server(dovecot: Dovecot) -> ImapSettings:
    """Settings to reach Dovecot as the bot user; every user's mailboxes are emptied first."""
    dovecot.reset()
    return dovecot.settings()


@pytest.fixture(scope="session")
def postgres(pytestconfig: pytest.Config) -> Iterator[Postgres]:
    """One PostgreSQL cluster for the whole session (skip locally / fail under CI=true)."""
    reason = Postgres.missing()
    if reason:
        skip_or_fail(reason)
    server = Postgres()
    server.start()
    _report_startup(pytestconfig, "PostgreSQL", server.startup_seconds)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres: Postgres) -> Iterator[str]:
    """A fresh, empty database for this test: its postgresql+asyncpg:// URL. Dropped after."""
    name = f"test_{time.strftime('%H%M%S')}_{uuid.uuid4().hex[:10]}"
    url = postgres.create_database(name)
    try:
        yield url
    finally:
        postgres.drop_database(name)


@pytest.fixture
async def smtp_server() -> AsyncIterator[SmtpCapture]:
    """A plain (no TLS, no AUTH) SmtpCapture served on the test's event loop."""
    capture = SmtpCapture()
    await capture.start()
    try:
        yield capture
    finally:
        await capture.stop()


@pytest.fixture
async def smtp_server_factory() -> AsyncIterator[Callable[..., Awaitable[SmtpCapture]]]:
    """`await smtp_server_factory(starttls=True, auth={...})`: started SmtpCaptures with
    any SmtpCapture options, stopped after the test."""
    started: list[SmtpCapture] = []

    async def make(**options: Any) -> SmtpCapture:
        capture = SmtpCapture(**options)
        await capture.start()
        started.append(capture)
        return capture

    try:
        yield make
    finally:
        for capture in started:
            await capture.stop()
