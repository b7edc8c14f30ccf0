"""Reminders of a reporting round: who is reminded, where, when, in which words; and that no
run, crash or second run ever reminds anyone twice (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import functools
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import func, select

from bot import reminders as rules
from bot.i18n import LANGUAGES, long_date
from bot.messages import Inbound
from bot.reminders import Candidate, Policy
from bot.reminding import Reminders
from storage.models import events, invitations, outbox
from testkit.round_seed import Person, seed_round

DEADLINE = date(2027, 10, 1)
# 12:00 UTC: afternoon in Nairobi, Paris and Moscow; 21:00 in Tokyo (quiet hours 20-08).
NOW = datetime(2027, 9, 20, 12, 0, tzinfo=UTC)


def progressed(engine, lang: str = "fr", answers: int = 0) -> dict:
    """A conversation started in `lang` and `answers` questions into it (the real engine)."""
    state = engine.new_state(ref="CB-TEST" + lang.upper() + str(answers), language=lang,
                             explicit=True)
    turn = engine.handle(state, Inbound("console", "u", "m0", kind="start"), NOW)
    state = turn.state
    for n in range(answers):
        slot = state["slot"]
        question = engine.qn.questions[slot.split("@")[0]]
        text = {"text": "Amina Diallo", "email": "amina@example.org"}.get(question.type,
                                                                         "/skip")
        inbound = Inbound("console", "u", f"m{n + 1}", text=text)
        state = engine.handle(state, inbound, NOW).state
    return state


# -- the rules, pure -------------------------------------------------------------------------


@pytest.mark.parametrize(("country", "zone"), [
    ("KEN", "Africa/Nairobi"), ("FRA", "Europe/Paris"), ("RUS", "Europe/Moscow"),
    ("USA", "America/New_York"), ("BRA", "America/Sao_Paulo"), ("CAN", "America/Toronto"),
    ("AUS", "Australia/Sydney"), ("CHN", "Asia/Shanghai"), ("eu", "Europe/Brussels"),
    ("ke", "Africa/Nairobi"), (None, "UTC"), ("XYZ", "UTC"), ("", "UTC")])
def test_time_zone_from_the_country(country, zone) -> None:
    assert rules.time_zone(country).key == zone


def test_quiet_hours_wrap_around_midnight() -> None:
    night = Policy(quiet_start=20, quiet_end=8)
    at = functools.partial(datetime, 2027, 9, 20, tzinfo=UTC)
    assert [night.quiet(at(h, m)) for h, m in ((19, 59), (20, 0), (23, 0), (0, 0), (7, 59),
                                               (8, 0), (12, 0))] == [
        False, True, True, True, True, False, False]
    assert Policy(quiet_start=1, quiet_end=5).quiet(at(3)) is True
    assert Policy(quiet_start=1, quiet_end=5).quiet(at(5)) is False
    assert not any(Policy(quiet_start=0, quiet_end=0).quiet(at(h)) for h in range(24))
    with pytest.raises(ValueError, match="20-08"):
        rules.parse_quiet_hours("8pm-8am")


def _candidate(**changes) -> Candidate:
    base = {"invitation_id": 1, "respondent_id": 1, "round_id": 1, "deadline": DEADLINE,
            "invitation_status": "sent", "language": "fr", "email": "a@example.org",
            "reminders_sent": 0, "last_reminder_at": None,
            "invited_at": NOW - timedelta(days=30), "opted_out_at": None,
            "submitted": False, "state": {}, "country": "FRA", "last_channel": None,
            "addresses": {}}
    return Candidate(**{**base, **changes})


@pytest.mark.parametrize(("changes", "reason"), [
    ({}, None),
    ({"submitted": True}, rules.SUBMITTED),
    ({"state": {"phase": "done"}}, rules.SUBMITTED),
    ({"opted_out_at": NOW}, rules.OPTED_OUT),
    ({"invitation_status": "undeliverable"}, rules.UNDELIVERABLE),
    ({"invitation_status": "pending"}, rules.NOT_INVITED),
    ({"deadline": None}, rules.NO_DEADLINE),
    ({"deadline": date(2027, 9, 19)}, rules.PAST_DEADLINE),
    ({"deadline": date(2027, 9, 20)}, None),  # the deadline day itself still counts
    ({"reminders_sent": 3, "last_reminder_at": NOW - timedelta(days=30)}, rules.MAX_REACHED),
    ({"reminders_sent": 1, "last_reminder_at": NOW - timedelta(days=6, hours=23)},
     rules.TOO_SOON),
    ({"reminders_sent": 1, "last_reminder_at": NOW - timedelta(days=7)}, None),
    # The first reminder waits the interval after the invitation, not after nothing.
    ({"invited_at": NOW - timedelta(days=6, hours=23)}, rules.TOO_SOON),
    ({"invited_at": NOW - timedelta(days=7)}, None),
    ({"invited_at": NOW - timedelta(days=40), "reminders_sent": 1,
      "last_reminder_at": NOW - timedelta(days=2)}, rules.TOO_SOON),
    ({"country": "JPN"}, rules.QUIET_HOURS),
    ({"email": "", "addresses": {}}, rules.NO_ADDRESS),
])
def test_who_is_due(changes, reason) -> None:
    assert rules.why_not(_candidate(**changes), Policy(), NOW) == reason


def test_the_channel_answered_on_last_else_email() -> None:
    tg = {"telegram": ("5001", False), "email": ("a@example.org", False)}
    assert rules.channel_for(_candidate(last_channel="telegram", addresses=tg)) == (
        "telegram", "5001")
    assert rules.channel_for(_candidate(last_channel="email", addresses=tg)) == (
        "email", "a@example.org")
    blocked = {**tg, "telegram": ("5001", True)}
    assert rules.channel_for(_candidate(last_channel="telegram", addresses=blocked)) == (
        "email", "a@example.org")
    # invited by mail, never answered: the invitation's address
    assert rules.channel_for(_candidate()) == ("email", "a@example.org")
    bounced = {"email": ("a@example.org", True)}
    assert rules.channel_for(_candidate(addresses=bounced)) is None


# 1 October 2027 as UN documents in each language write it.
UN_DATES = {"ar": "1 تشرين الأول/أكتوبر 2027", "en": "1 October 2027",
            "es": "1 de octubre de 2027", "fr": "1er octobre 2027", "ru": "1 октября 2027 года",
            "zh": "2027年10月1日"}


def test_dates_as_un_documents_write_them() -> None:
    assert {lang: long_date(DEADLINE, lang) for lang in LANGUAGES} == UN_DATES
    assert long_date(date(2027, 6, 15), "fr") == "15 juin 2027"
    assert long_date(date(2027, 6, 15), "ar") == "15 حزيران/يونيه 2027"
    assert long_date(date(2027, 12, 31), "en") == "31 December 2027"


@pytest.mark.parametrize("lang", LANGUAGES)
def test_what_is_left_and_the_deadline_in_each_language(content, lang) -> None:
    _, _, tr = content
    when = UN_DATES[lang]
    four = rules.reminder_text(tr, lang, left=4, deadline=DEADLINE, started=True)
    one = rules.reminder_text(tr, lang, left=1, deadline=DEADLINE, started=False)
    assert when in four and when in one
    assert "4" in four
    assert four.splitlines()[0] == tr.t(lang, "lead_started", "remind")
    assert one.splitlines()[0] == tr.t(lang, "lead_new", "remind")
    assert four != one
    assert when in rules.subject(tr, lang, DEADLINE)


def test_english_and_plural_forms_read_right(content) -> None:
    _, _, tr = content

    def left(lang: str, n: int) -> str:
        return rules.reminder_text(tr, lang, left=n, deadline=DEADLINE,
                                   started=True).splitlines()[1]

    assert left("en", 4) == "4 questions left; the deadline is 1 October 2027."
    assert left("en", 1).startswith("1 question left;")
    # French typography: a narrow no-break space (U+202F) before the semicolon.
    assert left("fr", 4) == "Il reste 4 questions\u202f; la date limite est le 1er octobre 2027."
    assert left("ru", 2).startswith("Осталось 2 вопроса;")
    assert left("ru", 5).startswith("Осталось 5 вопросов;")
    assert left("ru", 21).startswith("Остался 21 вопрос;")
    assert "سؤالان" in left("ar", 2)
    assert left("zh", 4).startswith("还剩") and "2027年10月1日" in left("zh", 4)
    assert left("es", 1).startswith("Queda 1 pregunta;")


def test_questions_left_counts_what_still_applies(engine) -> None:
    fresh = progressed(engine, answers=0)
    after_two = progressed(engine, answers=2)
    total = rules.questions_left(engine.rules, {"answers": {}})
    assert rules.questions_left(engine.rules, fresh) == total >= 5
    assert len(after_two["answers"]) == 2
    assert rules.questions_left(engine.rules, after_two) == total - 2


# -- runs on the database ------------------------------------------------------------------


def situations(engine) -> list[Person]:
    started_fr = progressed(engine, "fr", answers=2)
    started_ru = progressed(engine, "ru", answers=1)
    long_ago = NOW - timedelta(days=8)
    return [
        Person("new@example.org", "es", "KEN"),
        Person("chat@example.org", "ru", "RUS", state=started_ru, last_channel="telegram",
               telegram="5001", submission="draft"),
        Person("mail@example.org", "fr", "FRA", state=started_fr, last_channel="email",
               submission="draft"),
        Person("blocked@example.org", "fr", "FRA", state={**started_fr, "ref": "CB-BLOCKED"},
               last_channel="telegram",
               telegram="5002", telegram_unreachable=True, submission="draft"),
        Person("again@example.org", "ar", "EGY", reminders_sent=1, last_reminder_at=long_ago),
        Person("done@example.org", "en", "KEN",
               state={**started_fr, "phase": "done", "ref": "CB-DONE"}, submission="submitted"),
        Person("stop@example.org", "en", "KEN", opted_out=True),
        Person("bounced@example.org", "en", "KEN", status="undeliverable"),
        Person("enough@example.org", "en", "KEN", reminders_sent=3, last_reminder_at=long_ago),
        Person("soon@example.org", "en", "KEN", reminders_sent=1,
               last_reminder_at=NOW - timedelta(days=2)),
        Person("night@example.org", "zh", "JPN"),
        Person("waiting@example.org", "en", "KEN", status="pending"),
    ]


DUE = {"new@example.org": ("email", "new@example.org", "es", 1),
       "chat@example.org": ("telegram", "5001", "ru", 1),
       "mail@example.org": ("email", "mail@example.org", "fr", 1),
       "blocked@example.org": ("email", "blocked@example.org", "fr", 1),
       "again@example.org": ("email", "again@example.org", "ar", 2)}


def reminders_for(app, now: datetime = NOW, **policy) -> Reminders:
    return Reminders(app.database, app.engines, app.questionnaire.id, app.translations,
                     Policy(**policy), clock=lambda: now)


async def counts(app) -> tuple[int, int, int]:
    async with app.db.connect() as conn:
        return (await conn.scalar(select(func.count()).select_from(outbox)),
                await conn.scalar(select(func.count()).select_from(events)),
                await conn.scalar(select(func.sum(invitations.c.reminders_sent))))


async def outbox_rows(app) -> list:
    async with app.db.connect() as conn:
        return list(await conn.execute(select(outbox).order_by(outbox.c.id)))


async def test_only_those_due_are_reminded_where_and_in_their_language(
        make_app, database_url, engine) -> None:
    app = await make_app(database_url)
    seeded = await seed_round(app.database, situations(engine), deadline=DEADLINE)
    await seed_round(app.database, [Person("late@example.org", "en", "KEN")],
                     deadline=date(2027, 9, 1))  # an earlier round: its deadline passed
    report = await reminders_for(app).run()
    assert report.skipped == {"submitted": 1, "opted_out": 1, "undeliverable": 1,
                              "max_reached": 1, "too_soon": 1, "quiet_hours": 1,
                              "not_invited": 1, "past_deadline": 1}
    by_rid = {rid: email for email, rid in seeded.respondents.items()}
    rows = await outbox_rows(app)
    got = {by_rid[r.respondent_id]: (r.channel, r.address, r.payload["language"],
                                     r.payload["reminder"]["number"]) for r in rows}
    assert got == DUE
    assert all(r.status == "pending" for r in rows)
    chat = next(r for r in rows if r.channel == "telegram")
    left = rules.questions_left(engine.rules, progressed(engine, "ru", answers=1))
    assert f"Осталось {left} вопрос" in chat.payload["text"]
    assert chat.payload["slot"] and chat.payload["choices"] is not None  # the next question
    mail = next(r for r in rows if r.address == "mail@example.org")
    assert mail.payload["ref"] == "CB-TESTFR2"  # the draft's reply token
    assert mail.payload["form"]["remaining"] is True
    assert "Il reste" in mail.payload["lead"]["paragraphs"][0]
    new = next(r for r in rows if r.address == "new@example.org")
    assert new.payload["ref"] is None and "Rappel" not in new.payload["lead"]["subject"]
    async with app.db.connect() as conn:
        counted = dict((await conn.execute(select(invitations.c.email,
                                                  invitations.c.reminders_sent))).all())
        logged = list(await conn.execute(select(events).where(events.c.type == "reminder")))
    assert {e: counted[e] for e in DUE} == {e: d[3] for e, d in DUE.items()}
    assert counted["enough@example.org"] == 3 and counted["soon@example.org"] == 1
    assert sorted(e.data["outbox"] for e in logged) == [r.id for r in rows]


async def test_a_second_run_and_a_restart_remind_nobody_twice(make_app, database_url,
                                                               engine) -> None:
    app = await make_app(database_url)
    await seed_round(app.database, situations(engine), deadline=DEADLINE)
    first = await reminders_for(app).run()  # queued, never sent: as if it crashed here
    assert len(first.queued) == len(DUE)
    before = await counts(app)
    again = await reminders_for(app, NOW + timedelta(minutes=5)).run()
    assert again.queued == [] and again.skipped["too_soon"] == len(DUE) + 1
    # A new process on the same database, a day later.
    reopened = await make_app(database_url)
    later = await reminders_for(reopened, NOW + timedelta(days=1)).run()
    assert later.queued == [] and await counts(app) == before
    # A week later each gets the next one, once.
    week = await reminders_for(reopened, NOW + timedelta(days=7, hours=1)).run()
    assert {p.candidate.email for p in week.queued} >= set(DUE) - {"again@example.org"}


async def test_two_runs_at_once_remind_each_person_once(make_app, database_url,
                                                        engine) -> None:
    app = await make_app(database_url)
    await seed_round(app.database, situations(engine), deadline=DEADLINE)
    a, b = await asyncio.gather(reminders_for(app).run(), reminders_for(app).run())
    assert len(a.queued) + len(b.queued) == len(DUE)
    assert a.lost_race + b.lost_race == len(DUE)
    assert len(await outbox_rows(app)) == len(DUE)


async def test_dry_run_writes_nothing(make_app, database_url, engine) -> None:
    app = await make_app(database_url)
    await seed_round(app.database, situations(engine), deadline=DEADLINE)
    before = await counts(app)
    report = await reminders_for(app).run(dry_run=True)
    assert {p.candidate.email for p in report.queued} == set(DUE)
    assert report.outbox == [] and await counts(app) == before


async def test_at_most_n_reminders_at_least_d_days_apart(make_app, sqlite_url) -> None:
    app = await make_app(sqlite_url)
    await seed_round(app.database, [Person("p@example.org", "en", "KEN")],
                     deadline=date(2027, 12, 31))
    sent = []
    for day in range(0, 40):
        moment = NOW + timedelta(days=day)
        report = await reminders_for(app, moment, max_reminders=3,
                                     interval=timedelta(days=10)).run()
        sent += [moment for _ in report.queued]
    assert sent == [NOW, NOW + timedelta(days=10), NOW + timedelta(days=20)]
