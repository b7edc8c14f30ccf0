"""Fetches Telegram updates (long polling or webhook) and confirms each only once it is kept.

PTB's Updater confirms a getUpdates batch (the next call's `offset`) as soon as it has fetched
it, and its webhook server answers 200 as soon as the update is queued: a crash in between
loses updates Telegram will never deliver again. Here an update is confirmed only after its
handler returned, that is after its turn, or its "kept, not processed" record, is committed.

Long polling: Telegram's offset confirms every update below it, so the offset stays at the
oldest update still being handled; getUpdates then hands the unconfirmed ones out again and
they are skipped. The window of updates in progress is thus one getUpdates `limit` (100) from
the oldest unfinished one. After a crash Telegram redelivers from there; what was committed
already is recognised by the inbound log's unique key and not answered twice.

Webhook: the delivery's HTTP answer waits for the handler: 200 once kept, 500 if it could not
be kept (Telegram delivers it again later).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta

from aiohttp import web
from telegram import Bot, Update
from telegram.error import Conflict, InvalidToken, RetryAfter, TelegramError, TimedOut

from handlers.telegram.request import call_json, retry_after_seconds

logger = logging.getLogger(__name__)

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
# (the update, or None if PTB cannot read it; the JSON Telegram sent): returns once the
# update is kept, raises if it could not be.
Handle = Callable[[Update | None, dict], Awaitable[None]]


class UpdateLedger:
    """The updates fetched and not yet confirmed, in update_id order, and the offset that
    confirms exactly those already kept."""

    _OPEN, _KEPT, _RETRY = 0, 1, 2

    def __init__(self) -> None:
        self._state: dict[int, int] = {}  # update_id -> _OPEN | _KEPT | _RETRY; ascending
        self._next = 0  # one past the highest update_id admitted

    def admit(self, update_id: int) -> bool:
        """True if this update is to be handled now: new, or handed out again for a retry."""
        state = self._state.get(update_id)
        if state == self._RETRY:
            self._state[update_id] = self._OPEN
            return True
        if state is not None or update_id < self._next:
            return False  # in hand, kept, or confirmed already
        self._state[update_id] = self._OPEN
        self._next = update_id + 1
        return True

    def kept(self, update_id: int) -> None:
        if update_id in self._state:
            self._state[update_id] = self._KEPT
        while self._state:  # the kept prefix is confirmed by the next offset
            first = next(iter(self._state))
            if self._state[first] != self._KEPT:
                break
            del self._state[first]

    def release(self, update_id: int) -> None:
        """Not kept after all: handle it again when getUpdates hands it out again."""
        if self._state.get(update_id) == self._OPEN:
            self._state[update_id] = self._RETRY

    def in_hand(self, update_id: int) -> bool:
        return self._state.get(update_id) == self._OPEN

    @property
    def unconfirmed(self) -> int:
        """Updates fetched that the offset cannot confirm yet (being handled, or to retry)."""
        return sum(1 for state in self._state.values() if state != self._KEPT)

    @property
    def offset(self) -> int:
        """getUpdates' offset: the oldest update not yet kept, else one past the newest."""
        return next(iter(self._state), self._next)


class Poller:
    """Long polling with the offset advanced only past handled updates."""

    def __init__(self, bot: Bot, handle: Handle, *, timeout: float = 10.0,
                 allowed_updates: Sequence[str] = (), limit: int = 100,
                 retry_delay: float = 1.0, max_retry_delay: float = 30.0) -> None:
        self.bot = bot
        self.handle = handle
        self.timeout = timeout
        self.allowed_updates = list(allowed_updates)
        self.limit = limit
        self.retry_delay, self.max_retry_delay = retry_delay, max_retry_delay
        self.ledger = UpdateLedger()
        self._progress = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._handlers: set[asyncio.Task] = set()
        self._failures: dict[int, int] = {}  # update_id -> failed attempts to keep it

    async def start(self) -> None:
        await self.bot.delete_webhook()  # getUpdates answers 409 while a webhook is set
        self._task = asyncio.create_task(self._run(), name="telegram-poller")

    async def stop(self, grace: float = 5.0) -> None:
        """Stop fetching, let the updates in hand finish, confirm those kept."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=grace)
        with contextlib.suppress(Exception):  # only saves redeliveries after a clean stop
            await self.bot.get_updates(offset=self.ledger.offset or None, limit=1,
                                       timeout=timedelta(0))

    async def _run(self) -> None:
        failures = 0
        while True:
            if self.ledger.unconfirmed and not self._progress.is_set():
                # Telegram answers at once while updates are unconfirmed: wait until the offset
                # can move, or a moment for other chats' new updates.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._progress.wait(), 0.1)
            self._progress.clear()
            busy = self.ledger.unconfirmed > 0
            try:
                updates = await self._get_updates(0 if busy else self.timeout)
            except TimedOut:
                continue
            except RetryAfter as exc:
                await asyncio.sleep(retry_after_seconds(exc))
                continue
            except (Conflict, InvalidToken, TelegramError) as exc:
                failures += 1
                delay = min(self.max_retry_delay, self.retry_delay * 2 ** (failures - 1))
                level = logging.ERROR if isinstance(exc, InvalidToken) else logging.WARNING
                logger.log(level, "telegram: getUpdates failed (%s); retrying in %.0fs", exc,
                           delay)
                await asyncio.sleep(delay)
                continue
            failures = 0
            for data in updates:
                update_id = data.get("update_id") if isinstance(data, dict) else None
                if isinstance(update_id, int) and self.ledger.admit(update_id):
                    task = asyncio.create_task(self._handle(update_id, data))
                    self._handlers.add(task)
                    task.add_done_callback(self._handlers.discard)

    async def _get_updates(self, wait: float) -> list:
        """The updates from the offset on, as JSON (those still unconfirmed come again): only
        the updates seen for the first time become PTB objects, and an update PTB cannot read
        is still kept, raw."""
        api_kwargs: dict = {"limit": self.limit, "timeout": int(wait),
                            "allowed_updates": self.allowed_updates}
        if self.ledger.offset:
            api_kwargs["offset"] = self.ledger.offset
        read_timeout = (self.bot.request.read_timeout or 0) + wait  # as get_updates does
        result = await call_json(self.bot, "getUpdates", api_kwargs, read_timeout=read_timeout)
        return result if isinstance(result, list) else []

    async def _handle(self, update_id: int, data: dict) -> None:
        offset = self.ledger.offset
        try:
            await self.handle(read_update(data, self.bot), data)
        except Exception:
            # Not kept (the database refused even the record): hold the offset here and let
            # Telegram hand it out again after a pause.
            tries = self._failures[update_id] = self._failures.get(update_id, 0) + 1
            delay = min(self.max_retry_delay, self.retry_delay * 2 ** (tries - 1))
            logger.exception("telegram: update %s could not be kept; retry %d in %.0fs",
                             update_id, tries, delay)
            await asyncio.sleep(delay)
            self.ledger.release(update_id)
        else:
            self._failures.pop(update_id, None)
            self.ledger.kept(update_id)
        finally:
            if self.ledger.offset != offset or not self.ledger.in_hand(update_id):
                # Something to confirm or to fetch again: worth a getUpdates now (a re-poll
                # for nothing would parse the unconfirmed updates all over again).
                self._progress.set()


class WebhookServer:
    """Telegram's deliveries on `listen:port/path`: the secret header checked (403), the
    answer sent once the update is kept (200) or could not be (500)."""

    def __init__(self, bot: Bot, handle: Handle, *, url: str, listen: str, port: int,
                 path: str, secret: str, allowed_updates: Sequence[str] = (),
                 max_connections: int = 40) -> None:
        self.bot = bot
        self.handle = handle
        self.url = url
        self.listen, self.port = listen, port
        self.path = "/" + path.lstrip("/")
        self.secret = secret
        self.allowed_updates = list(allowed_updates)
        self.max_connections = max_connections
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application(client_max_size=2 * 2**20)
        app.router.add_post(self.path, self._deliver)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.listen, self.port).start()
        await self.bot.set_webhook(self.url, secret_token=self.secret,
                                   allowed_updates=self.allowed_updates,
                                   max_connections=self.max_connections)

    async def stop(self) -> None:
        """Stop listening; deliveries in progress finish first (aiohttp's shutdown)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _deliver(self, request: web.Request) -> web.Response:
        given = request.headers.get(SECRET_HEADER, "")
        if not hmac.compare_digest(given.encode(), self.secret.encode()):
            return web.Response(status=403, text="wrong secret token")
        body = await request.read()
        try:
            data = json.loads(body.decode("utf-8"))
        except ValueError:
            data = None
        if not isinstance(data, dict) or not isinstance(data.get("update_id"), int):
            logger.warning("telegram: webhook delivery is not an update (%d bytes)", len(body))
            return web.Response(status=400, text="not an update")
        update_id = data["update_id"]
        try:
            # Shielded: if Telegram gives up on the connection, the update is still finished.
            await asyncio.shield(self.handle(read_update(data, self.bot), data))
        except Exception:
            logger.exception("telegram: update %s could not be kept; Telegram will deliver it "
                             "again", update_id)
            return web.Response(status=500, text="not kept")
        return web.Response(text="ok")




def read_update(data: dict, bot: Bot) -> Update | None:
    """PTB's Update, or None when PTB cannot read it (kept raw by the handler all the same)."""
    try:
        return Update.de_json(data, bot)
    except Exception:
        logger.exception("telegram: PTB cannot read update %s", data.get("update_id"))
        return None
