"""Shared pytest configuration: test-server fixtures, and the app built on a chosen database."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bot.app import App, build_app, load_content
from bot.config import load_settings
from bot.engine import Engine
from bot.i18n import Translations
from bot.questionnaire import Questionnaire

pytest_plugins = ["testkit.fixtures"]

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="session")
def content() -> tuple[dict[str, Questionnaire], Questionnaire, Translations]:
    """The shipped questionnaires and catalogs, loaded and validated once."""
    return load_content(load_settings())


@pytest.fixture(scope="session")
def engine(content) -> Engine:
    _, questionnaire, translations = content
    return Engine(questionnaire, translations)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'capbot.db'}"


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Storage tests run on the embedded SQLite and on a real PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'capbot.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
async def make_app(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Callable]:
    """Build apps (the real composition root) and close them after the test."""
    apps: list[App] = []
    spools = tmp_path_factory.mktemp("spool")

    async def factory(database_url: str, **settings) -> App:
        # One spool per database, as in production: an app reopened on it replays it.
        key = hashlib.sha256(database_url.encode()).hexdigest()[:12]
        settings.setdefault("spool_path", spools / f"{key}.spool")
        app = await build_app(load_settings(database_url=database_url, **settings))
        apps.append(app)
        return app

    yield factory
    for app in apps:
        await app.close()
