"""Two services (two replicas) on one real PostgreSQL: a Telegram update delivered to both is
processed once, whichever gets it; two messages of one respondent on two replicas run one
after the other (the respondent's row lock), never both from the same state."""

from __future__ import annotations

import asyncio
import itertools

from sqlalchemy import func, select

from bot.messages import Inbound
from storage.models import answers, inbound_messages, outbox, submissions
from testkit.conversation import FULL_RUN_EN

RESPONDENTS = 6
_updates = itertools.count(1000)


def update(user: str, kind: str, value: str) -> Inbound:
    """One Telegram update as the channel hands it to the service (`<bot>:<update_id>`)."""
    mid = f"42:{next(_updates)}"
    if kind == "choice":
        return Inbound("telegram", user, mid, kind="choice", choice=value, raw=value)
    return Inbound("telegram", user, mid, kind=kind, text=value, raw=value)  # type: ignore[arg-type]


async def two_replicas(make_app, postgres_url, tmp_path):
    a = await make_app(postgres_url, spool_path=tmp_path / "a.spool")
    b = await make_app(postgres_url, spool_path=tmp_path / "b.spool")
    return a, b


async def count(app, stmt) -> int:
    async with app.db.connect() as conn:
        return (await conn.execute(stmt)).scalar_one()


async def test_an_update_delivered_to_both_replicas_is_processed_once(
        make_app, postgres_url, tmp_path) -> None:
    a, b = await two_replicas(make_app, postgres_url, tmp_path)

    async def respondent(n: int) -> list[int]:
        user = f"{500 + n}"
        outbox_ids: list[int] = []
        first = update(user, "start", "/start")
        steps = [(first, "en"), *((update(user, k, v), None) for k, v in FULL_RUN_EN)]
        for i, (message, language) in enumerate(steps):
            extra = {"language": language, "explicit_language": True} if language else {}
            # Telegram redelivers to whichever replica the proxy picks: both, at once, and
            # in alternating order.
            first_app, second_app = (a, b) if (i + n) % 2 else (b, a)
            results = await asyncio.gather(first_app.service.handle(message, **extra),
                                           second_app.service.handle(message, **extra))
            kept = [r for r in results if not r.duplicate]
            assert len(kept) == 1, (message, results)
            assert not kept[0].failed
            outbox_ids += kept[0].outbox_ids
        return outbox_ids

    outboxes = await asyncio.gather(*(respondent(n) for n in range(RESPONDENTS)))
    steps = 1 + len(FULL_RUN_EN)
    assert await count(a, select(func.count()).select_from(inbound_messages)) \
        == RESPONDENTS * steps
    assert await count(a, select(func.count()).select_from(inbound_messages).where(
        inbound_messages.c.status != "processed")) == 0
    assert await count(a, select(func.count()).select_from(submissions).where(
        submissions.c.status == "submitted")) == RESPONDENTS
    # The outbox holds exactly the replies of the turns that were kept: none twice.
    ids = [i for ids in outboxes for i in ids]
    assert await count(a, select(func.count()).select_from(outbox)) == len(ids) == len(set(ids))
    per_respondent = await count(a, select(func.count()).select_from(answers)) / RESPONDENTS
    assert per_respondent == int(per_respondent)  # everyone's answers alike: none doubled


async def test_two_messages_of_one_respondent_on_two_replicas_run_in_turn(
        make_app, postgres_url, tmp_path) -> None:
    a, b = await two_replicas(make_app, postgres_url, tmp_path)
    for n in range(8):
        user = f"{900 + n}"
        await a.service.handle(update(user, "start", "/start"), language="en",
                               explicit_language=True)
        # The name question is open. Two texts at once, on two replicas: serialized, the
        # first answers the name and the second is read as the email address (and refused);
        # from the same state, both would answer the name and one answer would be lost.
        results = await asyncio.gather(
            a.service.handle(update(user, "text", "Maria Lopez")),
            b.service.handle(update(user, "text", "Maria Lopez")))
        errors = [r for r in results if any(reply.kind == "error" for reply in r.replies)]
        assert len(errors) == 1, [[reply.kind for reply in r.replies] for r in results]
        states = [r.state for r in results]
        assert states[0] is not None and states[1] is not None
        assert "maria@example.org" not in str(states)
    assert await count(a, select(func.count()).select_from(inbound_messages).where(
        inbound_messages.c.status == "processed")) == 8 * 3
