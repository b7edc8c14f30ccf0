"""Stateful fuzzing of the engine (hypothesis): any mix of chat messages, button presses
(current, stale and forged), language switches, email form replies and channel switches.

After every step the engine must have answered, its state must survive JSON and be one the
engine can go on from, and every answer it recorded in that step must pass its question's
validation, checked here by an oracle written from the questionnaire, not by the engine's
parser. The engine is called directly: nothing catches its exceptions.

CAPBOT_FUZZ_EXAMPLES=N explores N new random runs (default: the same 60 runs of up to 40
steps every time).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from bot.answers import length_limit, text_length
from bot.app import load_content
from bot.config import load_settings
from bot.countries import country_table
from bot.engine import Engine, awaiting, awaiting_key
from bot.i18n import LANGUAGES
from bot.messages import Inbound, Reply
from bot.rules import split_slot
from handlers.email.form_render import FormRenderer
from handlers.email.render import render_text
from tests.conftest import NOW

EXAMPLES = int(os.environ.get("CAPBOT_FUZZ_EXAMPLES", "60"))

_, QUESTIONNAIRE, TRANSLATIONS = load_content(load_settings())
ENGINE = Engine(QUESTIONNAIRE, TRANSLATIONS)
MAIL = FormRenderer(ENGINE)
COUNTRIES = country_table()

# Answers people write, right and wrong, for every kind of question.
ANSWERS = ["Amina Diallo", "a@b.org", "not an email", "Ministry of Environment", "1", "2",
           "3", "1, 2", "1 2 3", "9", "0", "-1", "yes", "no", "oui", "нет", "是", "نعم",
           "Kenya", "KE", "KEN", "Kenya, Uganda", "Côte d'Ivoire", "Кения", "肯尼亚", "كينيا",
           "2023-05", "05/2023", "mai 2023", "2031-13", "12", "1 000", "1.5", "USD 5000",
           "€ 200", "5000 XYZ", "https://bch.cbd.int", "bch.cbd.int", "http://x", "skip",
           "word " * 400, "ok", "", " ", "\u202e\u0627\u200f", "🙂", "\x00", "Ⅻ", "١٢",
           "edit 1", "edit 99", "SUBMIT", "DONE", "valider", "/review", "/back"]
COMMANDS = ["/start", "/back", "/skip", "/review", "/language", "/help", "/cancel",
            "/amend", "/unknown", "/start payload", "/language fr", "/skip@capbot"]
CODES = ["YES", "NO", "DONE", "SUBMIT", "AMEND", "SKIP", "BACK", "PARTY_GOV", "OTHER", "NGO",
         "fr", "ar", "xx", "", "A" * 64, "|CODE", "\x00\xff", "1"]
FORM_COMMANDS = ["submit", "amend", "status", "cancel", "language"]


def _valid(question_id: str, repeat: int | None, value: Any, answers: dict[str, Any]) -> bool:
    """Whether a stored value is one the question accepts (written apart from the parser)."""
    q = QUESTIONNAIRE.questions[question_id]
    if value is None:  # skipped
        return not q.required
    kind = q.type
    if kind in ("text", "long_text"):
        if not isinstance(value, str) or not value.strip() or len(value) > q.max_length * 4:
            return False
        if q.max_words:
            return any(text_length(value, lang) <= length_limit(q.max_words, lang)
                       for lang in LANGUAGES)
        return True
    if kind == "email":
        return isinstance(value, str) and re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", value)
    if kind == "url":
        return isinstance(value, str) and re.match(r"https?://[^\s]+\.[^\s]+", value)
    if kind == "integer":
        return (isinstance(value, int) and (q.min is None or value >= q.min)
                and (q.max is None or value <= q.max))
    if kind == "money":
        return (isinstance(value, dict) and re.fullmatch(r"[A-Z]{3}", value["currency"])
                and (q.min is None or float(value["amount"]) >= q.min))
    if kind == "year_month":
        if not (isinstance(value, str) and re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])", value)):
            return False
        other = answers.get(q.not_before if repeat is None else f"{q.not_before}@{repeat}") \
            if q.not_before else None
        return not isinstance(other, str) or value >= other[:7]
    codes = _codes(q)
    if kind in ("yes_no", "single_choice"):
        return value in codes
    if kind == "multi_choice":
        return (isinstance(value, list) and value and len(set(value)) == len(value)
                and set(value) <= codes
                and (not q.max_select or len(value) <= q.max_select))
    if kind == "country":
        return isinstance(value, str) and _is_country(value)
    if kind == "multi_country":
        return isinstance(value, list) and value and all(_is_country(v) for v in value)
    raise AssertionError(f"no oracle for question type {kind}")


def _codes(q) -> set[str]:
    source = QUESTIONNAIRE.questions[q.options_from] if q.options_from else q
    return {o.code for o in source.options}


def _is_country(code: str) -> bool:
    return code in COUNTRIES


class Respondent(RuleBasedStateMachine):
    """One respondent, on chat and by email, in whatever order hypothesis picks."""

    def __init__(self) -> None:
        super().__init__()
        self.state = ENGINE.new_state(ref="CB-FUZZ234")
        self.n = 0
        self.channel = "telegram"
        self.last: list[Reply] = []
        self.turns = 0

    def _send(self, **fields: Any) -> None:
        self.n += 1
        inbound = Inbound(self.channel, "u", str(self.n), **fields)
        before = dict(self.state["answers"])
        turn = ENGINE.handle(self.state, inbound, NOW)
        self.turns += 1
        assert turn.replies, fields  # never silent
        for reply in turn.replies:  # chat replies are text; mail replies a form to render
            form = (reply.extra or {}).get("form")
            text = render_text(MAIL.render(form)) if form else reply.text
            assert text.strip(), (reply, fields)
        # goflow's rule: the state goes through JSON between turns
        encoded = json.dumps(turn.state, ensure_ascii=False)
        self.state = json.loads(encoded)
        assert self.state == turn.state
        for key, value in self.state["answers"].items():
            if key not in before or before[key] != value:
                qid, repeat = split_slot(key)
                assert _valid(qid, repeat, value, self.state["answers"]), (key, value, fields)
        self.last = turn.replies

    @rule(text=st.one_of(st.sampled_from(ANSWERS), st.sampled_from(COMMANDS),
                         st.text(max_size=80)))
    def say(self, text: str) -> None:
        self._send(kind="text", text=text)

    @rule(data=st.data())
    def press_a_button_shown(self, data) -> None:
        shown = [c.code for r in self.last for c in r.choices]
        if not shown:
            return
        self._send(kind="choice", choice=data.draw(st.sampled_from(shown)),
                   for_slot=awaiting_key(self.state))

    @rule(code=st.one_of(st.sampled_from(CODES), st.text(max_size=64)),
          slot=st.one_of(st.none(), st.sampled_from(["R1_name", "A1_title@3", "review",
                                                     "done", "language", "x" * 64])))
    def press_a_stale_or_forged_button(self, code: str, slot: str | None) -> None:
        self._send(kind="choice", choice=code, for_slot=slot)

    @rule(lang=st.sampled_from([*LANGUAGES, "xx"]))
    def switch_language(self, lang: str) -> None:
        self._send(kind="text", text="/language")
        self._send(kind="choice", choice=lang, for_slot="language")

    @rule(entries=st.lists(st.tuples(
              st.one_of(st.integers(0, 45).map(str), st.sampled_from(["2.8", "3.1", "x"])),
              st.one_of(st.sampled_from(ANSWERS), st.text(max_size=40))), max_size=12),
          commands=st.lists(st.tuples(st.sampled_from(FORM_COMMANDS),
                                      st.sampled_from(["", "fr", "zh", "xx"])), max_size=2))
    def reply_by_email(self, entries, commands) -> None:
        self._send(kind="form", text="", entries=tuple(entries), commands=tuple(commands))

    @rule(channel=st.sampled_from(["telegram", "email", "console"]))
    def switch_channel(self, channel: str) -> None:
        self.channel = channel

    @rule()
    def unsupported(self) -> None:
        self._send(kind="unsupported")

    @invariant()
    def the_state_is_one_the_engine_can_go_on_from(self) -> None:
        state = self.state
        assert state["phase"] in {"new", "language", "asking", "review", "done", "cancelled"}
        aside = (state.get("aside") or {}).get("kind")  # a side question (/email, /stop)
        assert awaiting(state) in {*QUESTIONNAIRE.questions, "start", "language", "review",
                                   "done", "cancelled", aside}
        if state["phase"] == "asking" and state.get("slot"):
            keys = {s.key for s in ENGINE.slots(state["answers"])}
            assert state["slot"] in keys, state["slot"]
        for key in state["answers"]:
            assert split_slot(key)[0] in QUESTIONNAIRE.questions
        assert state["lang"] in (None, *LANGUAGES)

    def teardown(self) -> None:
        Respondent.runs += 1
        Respondent.total_turns += self.turns


Respondent.runs = 0
Respondent.total_turns = 0

TestRespondent = Respondent.TestCase
# The suite's runs are the same every time (derandomized), so a red CI means a change broke
# something; setting CAPBOT_FUZZ_EXAMPLES explores new examples instead.
TestRespondent.settings = settings(max_examples=EXAMPLES, stateful_step_count=40,
                                   deadline=None, suppress_health_check=list(HealthCheck),
                                   derandomize="CAPBOT_FUZZ_EXAMPLES" not in os.environ)


def test_numbers_no_list_has_are_refused_politely() -> None:
    """Found by the fuzzer: "²" passes str.isdigit() but not int(); 5,000 digits neither."""
    for text in ("²", "9" * 5000):
        respondent = Respondent()
        respondent._send(kind="start", text="/start")
        respondent._send(kind="choice", choice="en", for_slot="language")
        for answer in ("Amina", "a@b.org", "Ministry", text):
            respondent._send(kind="text", text=answer)
        assert respondent.last[0].kind == "error"
        assert awaiting(respondent.state) == "R4_orgtype"


def test_the_fuzzer_ran_the_examples_it_reports() -> None:
    """Runs after TestRespondent (file order): the figure the note reports."""
    print(f"\nengine fuzz: {Respondent.runs} runs, {Respondent.total_turns} turns")
    assert Respondent.runs >= EXAMPLES * 0.5 and Respondent.total_turns > Respondent.runs


def test_only_separators_are_no_selection() -> None:
    """Found by the fuzzer: "31. ," in a mail recorded an empty list for a required
    multiple-choice question; in chat "," did the same."""
    respondent = Respondent()
    respondent._send(kind="form", text="", entries=(), commands=())
    respondent._send(kind="form", text="", entries=(("31", ","),), commands=())
    assert not any(v == [] for v in respondent.state["answers"].values())


def test_links_the_url_parser_refused_or_let_through() -> None:
    """Found by the fuzzer: "[" made urlsplit raise; "https://+¤R." was taken for a link."""
    from bot.answers import AnswerError, AnswerParser

    parser, q = AnswerParser(TRANSLATIONS), QUESTIONNAIRE.questions["A16_link"]
    for text in ("http://[x", "[", "https://+¤R.", "https://a..b", "https://-a.org"):
        try:
            value = parser.parse(QUESTIONNAIRE, q, text, "en", (), lambda _: None)
        except AnswerError as exc:
            assert exc.key == "error_url", text
        else:
            raise AssertionError(f"{text!r} accepted as {value!r}")
    for text in ("bch.cbd.int", "https://bch.cbd.int/en/", "http://例子.中国/x", "https://x.org."):
        assert parser.parse(QUESTIONNAIRE, q, text, "en", (), lambda _: None).startswith("http")
