"""`capbot stats` and a reporting round: the figures of a seeded round, in total, by country
and by organization type (SQLite and PostgreSQL)."""

from __future__ import annotations

from sqlalchemy import insert

from reports.stats import collect_stats, format_stats
from storage.models import events
from testkit.round_seed import Person, seed_round
from tests.test_reminders import DEADLINE, NOW, reminders_for, situations

COLUMNS = ("invited", "opened", "in_progress", "submitted", "opted_out", "undeliverable",
           "reminders")


def figures(entry: dict) -> tuple[int, ...]:
    return tuple(entry[c] for c in COLUMNS)


async def test_the_round_in_total_by_country_and_by_organization_type(
        make_app, database_url, engine) -> None:
    app = await make_app(database_url)
    people = situations(engine)
    for p in people:
        p.org_type = "PARTY_GOV" if p.country == "KEN" else None
    seeded = await seed_round(app.database, people, deadline=DEADLINE)
    await seed_round(app.database, [Person("other@example.org", "en", "KEN")],
                     deadline=None, questionnaire="another_questionnaire")  # not counted
    async with app.db.begin() as conn:
        await conn.execute(insert(events).values(
            respondent_id=seeded.respondents["chat@example.org"], submission_id=None,
            type="link_refused", created_at=NOW,
            data={"type": "link_refused", "channel": "telegram", "chat_id": "999",
                  "invitation": seeded.invitations["chat@example.org"]}))
    stats = await collect_stats(app.database, app.questionnaire, app.translations)
    [round_] = stats["rounds"]
    assert round_["deadline"] == "2027-10-01"
    # invited, opened, in progress, submitted, opted out, undeliverable, reminders sent
    assert figures(round_["totals"]) == (12, 4, 3, 1, 1, 1, 5)
    by_country = {e["code"]: e for e in round_["by_country"]}
    assert figures(by_country["KEN"]) == (7, 1, 0, 1, 1, 1, 4)
    assert figures(by_country["FRA"]) == (2, 2, 2, 0, 0, 0, 0)
    assert by_country["KEN"]["labels"]["en"] == "Kenya"
    assert by_country["RUS"]["labels"]["fr"] == "Fédération de Russie"
    assert by_country["EGY"]["labels"]["ar"] == "مصر"
    by_org = {e["code"]: e for e in round_["by_org_type"]}
    assert figures(by_org["PARTY_GOV"]) == figures(by_country["KEN"])
    assert by_org["PARTY_GOV"]["labels"]["en"]
    assert figures(by_org["(none)"])[0] == 5

    report = await reminders_for(app).run()
    after = await collect_stats(app.database, app.questionnaire, app.translations)
    assert after["rounds"][0]["totals"]["reminders"] == 5 + len(report.queued)

    text = format_stats(after, "fr")
    assert "Round" in text and "deadline 2027-10-01" in text
    assert "Fédération de Russie" in text and "Kenya" in text
    assert "999" in text  # the refused invitation link, with its chat
