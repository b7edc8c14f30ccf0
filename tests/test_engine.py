"""Transcript tests of the pure engine: what the respondent sends, what the bot answers."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.engine import Engine, awaiting
from bot.i18n import LANGUAGES
from bot.language import Detection
from bot.messages import Inbound, Reply
from tests.conftest import NOW

# Answers of the "About you" section, for tests that start further on.
PROFILE = {"R1_name": "a", "R2_email": "a@b.org", "R3_org": "o", "R4_orgtype": "NGO",
           "R5_country": None}


class Chat:
    """A respondent talking to the engine; the state goes through JSON between turns."""

    def __init__(self, engine: Engine, lang: str | None = "en", **state_kw: Any) -> None:
        self.engine = engine
        self.state = engine.new_state(ref="CB-TEST234", language=lang, explicit=bool(lang),
                                      **state_kw)
        self.replies: list[Reply] = []
        self.events: list[dict] = []
        self.n = 0

    def _turn(self, inbound: Inbound, detection: Detection | None = None) -> list[Reply]:
        turn = self.engine.handle(self.state, inbound, NOW, detection)
        # Like goflow's runner: the state must survive serialization at every step.
        self.state = json.loads(json.dumps(turn.state))
        self.replies, self.events = turn.replies, turn.events
        return turn.replies

    def start(self, hint: str | None = None) -> list[Reply]:
        self.n += 1
        return self._turn(Inbound("test", "u", str(self.n), kind="start", text="/start",
                                  language_hint=hint))

    def say(self, text: str, detection: Detection | None = None) -> list[Reply]:
        self.n += 1
        return self._turn(Inbound("test", "u", str(self.n), kind="text", text=text), detection)

    def press(self, code: str, for_slot: str | None = None) -> list[Reply]:
        self.n += 1
        return self._turn(Inbound("test", "u", str(self.n), kind="choice", choice=code,
                                  for_slot=for_slot))

    @property
    def awaiting(self) -> str:
        return awaiting(self.state)

    @property
    def last(self) -> Reply:
        return self.replies[-1]

    def texts(self) -> str:
        return "\n".join(r.text for r in self.replies)


def answer_all(chat: Chat, *, activities: int = 1, lang: str = "en") -> None:
    """Walk the whole questionnaire using stable codes and plain text only."""
    kenya = chat.engine.tr.country_name(lang, "ke")
    uganda = chat.engine.tr.country_name(lang, "ug")
    steps = {
        "R1_name": ("text", "Amina Diallo"), "R2_email": ("text", "amina@example.org"),
        "R3_org": ("text", "Ministère de l'Environnement"), "R4_orgtype": ("choice", "PARTY_GOV"),
        "R5_country": ("text", kenya), "S1_any_activity": ("choice", "YES"),
        "A1_title": ("text", "Atelier"), "A2_kind": ("choice", "PROJECT"),
        "A3_role": ("text", "1, 3"), "A4_scope": ("choice", "NATIONAL"),
        "A5_countries": ("text", f"{kenya}, {uganda}"), "A6_status": ("choice", "COMPLETED"),
        "A7_start": ("text", "2023-05"), "A8_end": ("text", "2023-11"),
        "A9_areas": ("text", "3, 4"), "A10_modality": ("text", "1, 2"),
        "A11_audience": ("text", "/skip"), "A12_trained": ("text", "٢٥"),
        "A13_funding_type": ("text", "2, 3"), "A14_budget": ("text", "15000 USD"),
        "A15_summary": ("text", "25"), "A16_link": ("text", "/skip"),
        "N1_assessed": ("choice", "YES"), "N2_has_needs": ("choice", "YES_SOME"),
        "N3_need_areas": ("text", "1, 2, 3, 5"), "N4_top3": ("text", "1, 2"),
        "N5_train_audience": ("text", "/skip"), "N6_pref_modality": ("text", "/skip"),
        "N7_coord_mech": ("choice", "NO"), "C1_consent": ("choice", "YES"),
        "C2_comments": ("text", "/skip"),
    }
    done_activities = 0
    for _ in range(200):
        step = chat.awaiting
        if step == "review":
            return
        if step == "A17_more":
            done_activities += 1
            chat.press("YES" if done_activities < activities else "NO")
            continue
        kind, value = steps[step]
        chat.press(value) if kind == "choice" else chat.say(value)
        assert chat.last.kind != "error", (step, chat.texts())
    raise AssertionError("questionnaire did not reach the review")


@pytest.mark.parametrize("lang", LANGUAGES)
def test_full_questionnaire_in_each_language(engine: Engine, lang: str) -> None:
    chat = Chat(engine, lang)
    replies = chat.start()
    assert replies[0].language == lang
    assert chat.awaiting == "R1_name"
    answer_all(chat, activities=2, lang=lang)
    assert chat.last.kind == "review"
    assert [c.code for c in chat.last.choices] == ["SUBMIT"]
    answers = chat.state["answers"]
    assert answers["R5_country"] == "ke"
    assert answers["A5_countries@0"] == ["ke", "ug"]
    assert answers["A1_title@1"] == "Atelier"
    assert answers["A12_trained@0"] == 25  # Arabic-Indic digits accepted
    assert answers["A14_budget@0"] == {"amount": "15000", "currency": "USD"}
    assert answers["N4_top3"] == ["INSTITUTIONAL", "MAINSTREAMING"]
    chat.press("SUBMIT")
    assert chat.awaiting == "done"
    assert chat.last.kind == "receipt" and "CB-TEST234" in chat.last.text
    assert any(e["type"] == "submitted" for e in chat.events)


def test_language_menu_then_choice(engine: Engine) -> None:
    chat = Chat(engine, lang=None)
    replies = chat.start(hint="fr-CA")
    assert chat.awaiting == "language"
    menu = replies[-1]
    assert [c.code for c in menu.choices] == list(LANGUAGES)
    assert [c.code for c in menu.choices if c.selected] == ["fr"]
    assert menu.language == "fr"
    chat.press("ru")
    assert chat.state["lang"] == "ru" and chat.state["lang_explicit"]
    assert chat.awaiting == "R1_name"
    assert chat.last.language == "ru"


def test_confident_detection_sets_language_without_menu(engine: Engine) -> None:
    chat = Chat(engine, lang=None)
    detection = Detection("es", True, False, 60, "langdetect", ("es",))
    chat.say("Hola, quisiera responder al cuestionario sobre creación de capacidad", detection)
    assert chat.state["lang"] == "es" and not chat.state["lang_explicit"]
    assert chat.awaiting == "R1_name"


def test_unsure_or_foreign_text_gets_the_menu(engine: Engine) -> None:
    chat = Chat(engine, lang=None)
    chat.say("Olá, bom dia a todos vocês da secretaria", Detection("es", True, True, 40,
                                                                   "langdetect", ()))
    assert chat.awaiting == "language"
    assert chat.last.language == "en"
    chat.say("3")  # the menu is numbered: 3 = es
    assert chat.state["lang"] == "es"


def test_language_command_switches_and_resumes(engine: Engine) -> None:
    chat = Chat(engine)
    chat.start()
    chat.say("Amina")
    chat.say("/language")
    assert chat.awaiting == "language"
    chat.press("zh")
    assert chat.awaiting == "R2_email"
    assert chat.last.language == "zh"
    assert chat.state["answers"]["R1_name"] == "Amina"


def test_options_by_number_code_label_accent_insensitive(engine: Engine) -> None:
    for answer in ("2", "PROJECT", "project", "Projet"):
        chat = Chat(engine, "fr" if answer == "Projet" else "en")
        chat.start()
        chat.state["answers"].update({**PROFILE, "S1_any_activity": "YES",
                                      "A1_title@0": "t"})
        chat.say("/review")  # re-asks the current question after the summary
        chat.state["slot"] = "A2_kind@0"
        chat.say(answer)
        assert chat.state["answers"]["A2_kind@0"] == "PROJECT", answer
    chat = Chat(engine, "fr")
    chat.start()
    chat.state["answers"].update({"R1_name": "a", "R2_email": "a@b.org", "R3_org": "o"})
    chat.state["slot"] = "R4_orgtype"
    chat.say("organisation non gouvernementale ou de la societe civile")
    assert chat.state["answers"].get("R4_orgtype") == "NGO", chat.texts()


def test_multi_choice_one_at_a_time_then_done(engine: Engine) -> None:
    chat = Chat(engine)
    chat.start()
    chat.state["answers"].update({**PROFILE, "S1_any_activity": "YES",
                                  "A1_title@0": "t", "A2_kind@0": "PROJECT"})
    chat.state["slot"] = "A3_role@0"
    chat.press("IMPLEMENTING")
    assert chat.last.multi and [c.code for c in chat.last.choices if c.selected] == [
        "IMPLEMENTING"]
    chat.say("4")
    chat.press("IMPLEMENTING")  # toggles off
    chat.press("DONE")
    assert chat.state["answers"]["A3_role@0"] == ["FUNDING"]
    assert chat.awaiting == "A4_scope"


def test_required_multi_choice_needs_a_selection(engine: Engine) -> None:
    chat = Chat(engine)
    chat.start()
    chat.state["answers"].update({**PROFILE, "S1_any_activity": "YES",
                                  "A1_title@0": "t", "A2_kind@0": "PROJECT"})
    chat.state["slot"] = "A3_role@0"
    chat.press("DONE")
    assert chat.replies[0].kind == "error"
    assert chat.awaiting == "A3_role"


def test_back_skip_and_required(engine: Engine) -> None:
    chat = Chat(engine)
    chat.start()
    chat.say("/back")
    assert chat.replies[0].kind == "error" and chat.awaiting == "R1_name"
    chat.say("/skip")
    assert "cannot be skipped" in chat.replies[0].text
    chat.say("Amina")
    chat.say("/back")
    assert chat.awaiting == "R1_name"
    assert "→ Amina" in chat.last.text  # the current answer is shown
    chat.say("Amina Diallo")
    assert chat.awaiting == "R2_email"
    assert chat.state["answers"]["R1_name"] == "Amina Diallo"


def test_other_option_asks_to_specify(engine: Engine) -> None:
    chat = Chat(engine)
    chat.start()
    for text in ("Amina", "a@example.org", "Org"):
        chat.say(text)
    chat.press("OTHER")
    assert chat.awaiting == "R4_orgtype_other"
    assert "“Other”" in chat.last.text
    chat.say("Regional economic community")
    assert chat.state["answers"]["R4_orgtype_other"] == "Regional economic community"
    assert chat.awaiting == "R5_country"
    chat.say("/skip")  # optional for this organization type
    assert chat.awaiting == "S1_any_activity"


def test_skip_logic_no_activities(engine: Engine) -> None:
    chat = Chat(engine)
    chat.start()
    for text in ("Amina", "a@example.org", "Org"):
        chat.say(text)
    chat.press("NGO")
    chat.say("/skip")
    chat.press("NO")
    assert chat.awaiting == "N1_assessed"
    chat.press("NO")
    chat.press("NO")  # no needs: N3-N6 do not apply
    assert chat.awaiting == "C1_consent"  # N7 only for governments


def test_review_edit_and_submit(engine: Engine) -> None:
    chat = Chat(engine)
    chat.start()
    answer_all(chat)
    review = chat.last.text
    assert "1. What is your full name?" in review and "Amina Diallo" in review
    chat.say("edit 999")
    assert chat.replies[0].kind == "error" and "999" in chat.replies[0].text
    assert chat.awaiting == "review"
    chat.say("edit 1")
    assert chat.awaiting == "R1_name"
    chat.say("Amina D.")
    assert chat.awaiting == "review"
    assert "Amina D." in chat.last.text
    chat.say("hello")
    assert chat.replies[0].kind == "error" and chat.awaiting == "review"
    chat.say("submit")
    assert chat.awaiting == "done"


def test_edit_that_opens_new_questions_asks_them(engine: Engine) -> None:
    chat = Chat(engine)
    chat.start()
    for text in ("Amina", "a@example.org", "Org"):
        chat.say(text)
    chat.press("NGO")
    chat.say("/skip")
    chat.press("NO")
    for code in ("NO", "NO", "YES"):
        chat.press(code)
    chat.say("/skip")
    assert chat.awaiting == "review"
    items = chat.last.text
    number = next(line.split(".")[0] for line in items.splitlines()
                  if "capacities in biosafety" in line)
    chat.say(f"edit {number}")
    chat.press("YES")
    assert chat.awaiting == "A1_title"  # the activities section now applies


def test_amendment_opens_a_new_version(engine: Engine) -> None:
    chat = Chat(engine)
    chat.start()
    answer_all(chat)
    chat.press("SUBMIT")
    chat.say("anything")
    assert chat.last.choices[0].code == "AMEND"
    chat.press("AMEND")
    assert chat.state["version"] == 2
    assert chat.awaiting == "review"
    assert any(e["type"] == "amend" for e in chat.events)
    chat.press("SUBMIT")
    assert "version 2" in chat.last.text


def test_cancel_then_start_resumes(engine: Engine) -> None:
    chat = Chat(engine)
    chat.start()
    chat.say("Amina")
    chat.say("/cancel")
    assert chat.awaiting == "cancelled"
    chat.say("hello")
    assert chat.awaiting == "cancelled"
    chat.start()
    assert chat.awaiting == "R2_email"
    assert chat.state["answers"]["R1_name"] == "Amina"


def test_stale_button_press_records_nothing(engine: Engine) -> None:
    chat = Chat(engine)
    chat.start()
    for text in ("Amina", "a@example.org", "Org"):
        chat.say(text)
    chat.press("NGO", for_slot="R4_orgtype")
    assert chat.awaiting == "R5_country"
    chat.press("PARTY_GOV", for_slot="R4_orgtype")  # double press / old message
    assert chat.state["answers"]["R4_orgtype"] == "NGO"
    assert chat.replies[0].kind == "error"
    assert chat.last.question == "R5_country"
    assert chat.events == [{"type": "stale", "pressed": "PARTY_GOV", "for": "R4_orgtype"}]


@pytest.mark.parametrize("text", [
    "", "   ", "\x00\x01\x02", "\u200f\u200e", "x" * 100_000, "/frobnicate", "edit 999",
])
def test_bad_input_gets_a_clear_reply_and_keeps_the_question(engine: Engine, text: str) -> None:
    chat = Chat(engine)
    chat.start()
    chat.say(text)
    assert chat.replies[0].kind == "error", text[:20]
    assert chat.awaiting == "R1_name"
    assert "R1_name" not in chat.state["answers"]


@pytest.mark.parametrize(("question", "typed", "stored"), [
    ("A12_trained@0", "１２", 12),
    ("A12_trained@0", "about 1,500 people", 1500),
    ("A7_start@0", "٢٠٢٣-٠٥", "2023-05"),
    ("A7_start@0", "05/2023", "2023-05"),
    ("A7_start@0", "mai 2023", "2023-05"),
    ("A7_start@0", "2023年5月", "2023-05"),
    ("A14_budget@0", "1.234,50 EUR", {"amount": "1234.50", "currency": "EUR"}),
    ("A14_budget@0", "$ 20 000", {"amount": "20000", "currency": "USD"}),
    ("A16_link@0", "bch.cbd.int/database", "https://bch.cbd.int/database"),
    ("R2_email", "  Amina@Example.ORG ", "Amina@example.org"),
    ("R5_country", "Côte d’Ivoire", "ci"),
    ("R5_country", "KEN", "ke"),
])
def test_typed_values_are_normalized(engine: Engine, question: str, typed: str,
                                     stored: Any) -> None:
    chat = Chat(engine, "fr")
    chat.start()
    chat.state["answers"].update({"R1_name": "a", "R3_org": "o", "R4_orgtype": "PARTY_GOV",
                                  "S1_any_activity": "YES", "A1_title@0": "t",
                                  "A10_modality@0": ["TRAINING_WORKSHOP"]})
    if question != "R2_email":
        chat.state["answers"]["R2_email"] = "a@b.org"
    chat.state["slot"] = question
    chat.state["phase"] = "asking"
    chat.say(typed)
    assert chat.state["answers"].get(question) == stored, chat.texts()


@pytest.mark.parametrize(("question", "typed", "fragment"), [
    ("A12_trained@0", "-5", "0"),
    ("A12_trained@0", "a few", "25"),
    ("A7_start@0", "2023-13", "YYYY-MM"),
    ("A14_budget@0", "12 XYZ", "XYZ"),
    ("R2_email", "not-an-address", "name@example.org"),
    ("R5_country", "Atlantis", "Atlantis"),
])
def test_invalid_values_get_a_specific_message(engine: Engine, question: str, typed: str,
                                               fragment: str) -> None:
    chat = Chat(engine)
    chat.start()
    chat.state["answers"].update({"R1_name": "a", "R3_org": "o", "R4_orgtype": "PARTY_GOV",
                                  "S1_any_activity": "YES", "A1_title@0": "t",
                                  "A10_modality@0": ["TRAINING_WORKSHOP"]})
    if question != "R2_email":
        chat.state["answers"]["R2_email"] = "a@b.org"
    chat.state["slot"] = question
    chat.say(typed)
    assert chat.replies[0].kind == "error"
    assert fragment in chat.replies[0].text
    assert question not in chat.state["answers"]


def test_end_before_start_is_refused(engine: Engine) -> None:
    chat = Chat(engine)
    chat.start()
    chat.state["answers"].update({**PROFILE, "S1_any_activity": "YES",
                                  "A7_start@0": "2023-05", "A6_status@0": "COMPLETED"})
    chat.state["slot"] = "A8_end@0"
    chat.say("2023-04")
    assert chat.replies[0].kind == "error" and "2023-05" in chat.replies[0].text


def test_arabic_placeholders_are_isolated(engine: Engine) -> None:
    chat = Chat(engine, "ar")
    chat.start()
    assert "\u2068" in chat.last.progress and "\u2069" in chat.last.progress


def test_progress_counts_questions(engine: Engine) -> None:
    chat = Chat(engine)
    chat.start()
    assert chat.last.progress == "Part 1 of 5 · About you · question 1 of 5"
    chat.say("Amina")
    assert chat.last.progress == "Part 1 of 5 · About you · question 2 of 5"


def test_edit_without_a_space_in_chinese(engine: Engine) -> None:
    chat = Chat(engine, "zh")
    chat.start()
    answer_all(chat, lang="zh")
    chat.say("编辑1")
    assert chat.awaiting == "R1_name"


def test_chinese_word_limit_counts_characters() -> None:
    from bot.answers import count_words, length_limit, text_length

    assert count_words("生物安全能力建设") == 4  # about two characters a word
    assert count_words("Training on 生物安全") == 4
    assert text_length("生物安全能力建设", "zh") == 8  # in Chinese the limit is in 字
    assert text_length("Training on 生物安全", "zh") == 8
    assert length_limit(150, "zh") == 300 and length_limit(150, "fr") == 150


_COMMANDS = ["/back", "/skip", "/review", "/language", "/help", "/cancel", "/start", "/amend",
             "edit 1", "edit 0", "DONE", "SUBMIT", "yes", "1", "1, 2", "2023-05", "ar", "zh"]
_CODES = ["YES", "NO", "DONE", "SUBMIT", "AMEND", "PARTY_GOV", "OTHER", "fr", "ar", "XYZ", ""]


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(
    st.tuples(st.just("text"), st.text(max_size=60)),
    st.tuples(st.just("text"), st.sampled_from(_COMMANDS)),
    st.tuples(st.just("choice"), st.sampled_from(_CODES)),
), max_size=40), st.sampled_from([None, *LANGUAGES]))
def test_any_sequence_of_messages_keeps_the_conversation_usable(engine: Engine, steps,
                                                                lang) -> None:
    chat = Chat(engine, lang)
    chat.start()
    for kind, value in steps:
        replies = chat.press(value) if kind == "choice" else chat.say(value)
        assert replies, (kind, value)  # never silent
        assert all(r.text.strip() for r in replies)
        assert chat.awaiting in {*engine.qn.questions, "language", "review", "done",
                                 "cancelled"}
        for key in chat.state["answers"]:
            assert key.partition("@")[0] in engine.qn.questions
