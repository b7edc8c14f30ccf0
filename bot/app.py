"""Composition root: builds settings, questionnaires, catalogs, database and service once."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from bot.config import ConfigError, Settings
from bot.engine import Engine
from bot.i18n import Translations
from bot.language import LanguageDetector, get_detector
from bot.leaders import Leaders
from bot.questionnaire import Questionnaire, default_questionnaire, load_questionnaires
from bot.service import ConversationService
from bot.spool import Spool
from storage.db import Database, DatabaseUnavailable, check_connection, upgrade

logger = logging.getLogger(__name__)


@dataclass
class App:
    settings: Settings
    questionnaires: dict[str, Questionnaire]
    questionnaire: Questionnaire  # the default one for new respondents
    translations: Translations
    engines: dict[str, Engine]
    detector: LanguageDetector
    database: Database
    service: ConversationService
    leaders: Leaders  # singleton jobs (IMAP ingest, long polling, reminders): bot/leaders.py

    @property
    def db(self) -> AsyncEngine:
        return self.database.engine

    async def close(self) -> None:
        await self.leaders.close()
        await self.service.close()
        await self.database.dispose()
        if self.service.spool is not None:
            self.service.spool.close()


def load_content(settings: Settings) -> tuple[dict[str, Questionnaire], Questionnaire,
                                              Translations]:
    """Questionnaires and catalogs, validated; a DataFileError names the file and problem."""
    questionnaires = load_questionnaires(settings.questionnaires_dir)
    chosen = default_questionnaire(questionnaires, settings.questionnaire)
    questionnaires.setdefault(chosen.id, chosen)
    translations = Translations(settings.locales_dir, questionnaires.values())
    return questionnaires, chosen, translations


async def build_app(settings: Settings, *, migrate: bool = True) -> App:
    questionnaires, chosen, translations = load_content(settings)
    engines = {qid: Engine(q, translations) for qid, q in questionnaires.items()}
    database = Database(settings.database_url)
    try:
        if migrate:
            await upgrade(database.engine)
        else:
            await check_connection(database.engine)
    except DatabaseUnavailable as exc:
        await database.dispose()
        raise ConfigError(f"CAPBOT_DATABASE_URL: {exc}") from None
    detector = get_detector()
    spool = Spool(settings.spool_file)
    spool.open()
    service = ConversationService(database, engines, chosen.id, detector, spool=spool)
    try:
        await service.replay_spool()
    except Exception as exc:  # they stay in the spool for the next start
        logger.warning("messages in the spool %s could not be stored yet: %s", spool.path, exc)
    return App(settings, questionnaires, chosen, translations, engines, detector, database,
               service, Leaders(database, check=settings.leader_check_seconds))
