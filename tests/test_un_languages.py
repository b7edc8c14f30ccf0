"""Issue 10: country names from UNTERM, texts that match behaviour, right-to-left display."""

from __future__ import annotations

import json
import re

import pytest
from bidi import get_base_level, get_display

from bot.answers import AnswerError, AnswerParser
from bot.countries import EU, country_table
from bot.engine import Engine
from bot.i18n import LANGUAGES, LRI, PDI, Translations
from bot.language import detection_to_json, get_detector
from tests.conftest import NOW
from tests.email.mailform import MailForm
from tests.test_engine import PROFILE, Chat, answer_all

# -- country names ------------------------------------------------------------------------------


def test_the_choosable_list_is_un_states_observers_and_the_eu() -> None:
    table = country_table()
    assert len(table.countries) == 198  # 193 Members, 2 observer States, Cook Islands, Niue, EU
    assert {"va", "ps", EU, "ck", "nu"} <= set(table.countries)
    assert "tw" not in table and "xk" not in table  # not States in UN usage
    assert table.name("en", EU) == "European Union" and table.name("zh", EU) == "欧洲联盟"


def test_names_shown_are_the_un_short_names(content) -> None:
    _, _, tr = content
    assert "مولدوفا" in tr.country_name("ar", "md") and "المالديف" not in tr.country_name("ar",
                                                                                         "md")
    assert tr.country_name("ar", "sy") == "الجمهورية العربية السورية"
    assert tr.country_name("fr", "ru") == "Fédération de Russie"
    assert tr.country_name("es", "ci") == "Côte d’Ivoire"
    assert tr.country_name("ru", "us") == "Соединенные Штаты Америки"
    assert tr.country_name("zh", "bo") == "多民族玻利维亚国"
    arabic = tr.country_names("ar")
    assert not [name for name in arabic.values() if re.search("[A-Za-z]", name)]


def test_every_unterm_name_in_every_language_is_its_own_country() -> None:
    table = country_table()
    for country in table.countries.values():
        names = [*country.short.values(), *([country.formal] if country.formal else [])]
        for name in names:
            for lang in LANGUAGES:
                assert table.lookup(name, lang).code == country.code, (name, lang)


@pytest.mark.parametrize(("typed", "lang", "code"), [
    ("Россия", "ru", "ru"), ("Российская Федерация", "ru", "ru"), ("Rusia", "es", "ru"),
    ("Federación de Rusia", "es", "ru"), ("سوريا", "ar", "sy"),
    ("الجمهورية العربية السورية", "ar", "sy"), ("俄罗斯", "zh", "ru"), ("俄罗斯联邦", "zh", "ru"),
    ("Kyrgyzstan", "ru", "kg"), ("Кыргызстан", "ru", "kg"), ("Côte d'Ivoire", "fr", "ci"),
    ("Cote d'Ivoire", "en", "ci"), ("Ivory Coast", "en", "ci"), ("cote divoire", "en", "ci"),
    ("США", "ru", "us"), ("Республика Молдова", "ru", "md"), ("République de Corée", "fr", "kr"),
    ("إيران", "ar", "ir"), ("المملكة العربية السعودية", "ar", "sa"), ("فلسطين", "ar", "ps"),
    ("中华人民共和国", "zh", "cn"), ("大韩民国", "zh", "kr"), ("玻利维亚", "zh", "bo"),
    ("KEN", "en", "ke"), ("ke", "zh", "ke"), ("Union européenne", "fr", EU), ("EU", "en", EU),
])
def test_country_answers_accept_what_people_type(typed: str, lang: str, code: str) -> None:
    assert country_table().lookup(typed, lang).code == code


def test_ambiguous_or_misspelt_names_offer_the_closest_countries() -> None:
    table = country_table()
    assert set(table.lookup("Korea", "en").candidates) == {"kr", "kp"}
    assert table.lookup("Kirgizstan", "en").candidates[0] == "kg"
    assert table.lookup("Atlantis", "en").code is None


def test_chat_offers_countries_as_choices_and_accepts_one(engine: Engine) -> None:
    chat = Chat(engine, "en")
    chat.start()
    chat.state["answers"].update({k: v for k, v in PROFILE.items() if k != "R5_country"})
    chat.state["answers"]["R4_orgtype"] = "PARTY_GOV"
    chat.state.update(phase="asking", slot="R5_country")
    chat.say("Korea")
    assert "Republic of Korea" in chat.texts()
    assert {c.code for c in chat.last.choices} == {"kr", "kp"}
    chat.press("kr", for_slot="R5_country")
    assert chat.state["answers"]["R5_country"] == "kr" and "offered" not in chat.state
    # A typed number picks among the offered countries too (console and e-mail users).
    chat.say("/back")
    chat.say("Kirgizstan")
    assert chat.last.choices[0].code == "kg"
    chat.say("1")
    assert chat.state["answers"]["R5_country"] == "kg"


def test_multi_country_keeps_names_with_and(content) -> None:
    _, qn, tr = content
    parser = AnswerParser(tr)
    q = qn.questions["A5_countries"]
    parse = parser._parse_multi_country
    assert parse(text="Kenya, Trinidad and Tobago", lang="en") == ["ke", "tt"]
    assert parse(text="Kenya and Uganda", lang="en") == ["ke", "ug"]
    with pytest.raises(AnswerError) as err:
        parse(text="Kenya, Korea", lang="en")
    assert err.value.key == "error_country_choices" and q.type == "multi_country"


# -- texts that match behaviour -----------------------------------------------------------------


def _strings(tr: Translations, lang: str) -> dict[str, str]:
    out = {}
    for domain in ("ui", "cpb_cb_survey"):
        for key, text in tr._catalogs[(lang, domain)].messages.items():
            for form in (text.values() if isinstance(text, dict) else [text]):
                out[f"{domain}:{key}"] = out.get(f"{domain}:{key}", "") + str(form)
    return out


@pytest.mark.parametrize("lang", LANGUAGES)
def test_no_catalog_says_done_where_a_localized_word_exists(content, lang: str) -> None:
    _, _, tr = content
    done = tr.raw(lang, "done_button")
    offenders = [key for key, text in _strings(tr, lang).items()
                 if re.search(r"\bDONE\b", text) and done != "DONE"]
    assert not offenders
    assert done in tr.raw(lang, "hint_multi") and done in tr.raw(lang, "selected_so_far")


@pytest.mark.parametrize("word", ["تم", "完成", "Готово", "Listo", "Terminé", "Done"])
def test_the_localized_done_word_finishes_a_selection(engine: Engine, word: str) -> None:
    lang = {"تم": "ar", "完成": "zh", "Готово": "ru", "Listo": "es", "Terminé": "fr"}.get(word,
                                                                                         "en")
    chat = Chat(engine, lang)
    chat.start()
    chat.state["answers"].update(PROFILE, S1_any_activity="YES")
    chat.state["answers"].update({"A1_title@0": "t", "A2_kind@0": "PROJECT"})
    chat.state.update(phase="asking", slot="A3_role@0")
    chat.say("1")
    chat.say(word)
    assert chat.state["answers"]["A3_role@0"] == ["IMPLEMENTING"]


def test_chinese_limit_is_in_characters(engine: Engine) -> None:
    chat = Chat(engine, "zh")
    chat.start()
    chat.state["answers"].update(PROFILE, S1_any_activity="YES")
    chat.state.update(phase="asking", slot="A15_summary@0")
    chat.say("/help")
    assert "最多300个字" in chat.texts()
    chat.say("生物安全能力建设" * 30)  # 240 characters, about 120 words
    assert chat.state["answers"]["A15_summary@0"].startswith("生物安全")
    chat.state.update(phase="asking", slot="A15_summary@0")
    chat.say("生" * 301)
    assert "300个字" in chat.texts() and chat.state["answers"]["A15_summary@0"] != "生" * 301


@pytest.mark.parametrize("line", ["1。王芳", "1．王芳", "1、王芳", "1：王芳", "١. نعم",
                                  "１．王芳"])
def test_the_mail_form_reads_each_keyboards_separator(engine: Engine, line: str) -> None:
    read = MailForm(engine).read(line)
    assert [(a.number, a.lines[0]) for a in read.answers] == [(1, line[2:].strip())]


@pytest.mark.parametrize(("lang", "option_sep", "country_sep"), [
    ("ar", "؛ ", "، "), ("zh", "；", "、"), ("en", "; ", ", ")])
def test_lists_are_joined_with_the_languages_separator(engine: Engine, lang: str,
                                                       option_sep: str, country_sep: str) -> None:
    q = engine.qn.questions
    roles = engine.display_value(lang, q["A3_role"], ["IMPLEMENTING", "COLLABORATING"])
    assert option_sep in roles
    countries = engine.display_value(lang, q["A5_countries"], ["ke", "ug"])
    assert countries == country_sep.join([engine.tr.country_name(lang, "ke"),
                                          engine.tr.country_name(lang, "ug")])


# -- progress -----------------------------------------------------------------------------------


@pytest.mark.parametrize("lang", ["en", "ar"])
def test_progress_only_moves_forward(engine: Engine, lang: str) -> None:
    chat = Chat(engine, lang)
    seen: list[tuple[int, int, int, int]] = []
    original = chat._turn

    def record(inbound, detection=None):
        replies = original(inbound, detection)
        for reply in replies:
            if reply.progress:
                numbers = [int(n) for n in re.findall(r"\d+", reply.progress)]
                part, parts, *rest = numbers
                activity = rest[0] if len(rest) == 3 else 0
                n, total = rest[-2:]
                seen.append((part, activity, n, total))
                assert parts == 5
        return replies

    chat._turn = record
    chat.start()
    answer_all(chat, activities=2, lang=lang)
    assert seen == sorted(seen)  # never backwards
    totals = {}
    for part, _, _, total in seen:
        assert totals.setdefault(part, total) == total  # a part's total never changes


# -- right-to-left ------------------------------------------------------------------------------


def _visual(text: str) -> str:
    return get_display(text, base_dir="R")


@pytest.mark.parametrize(("key", "values", "runs"), [
    ("optional_hint", {}, ["/skip"]),
    ("hint_date", {}, ["YYYY-MM-DD", "2024-03-15"]),
    ("error_date", {}, ["YYYY-MM-DD", "2024-03-15"]),
    ("hint_year_month", {}, ["YYYY-MM", "2023-05"]),
    ("error_year_month", {}, ["YYYY-MM", "2023-05"]),
    ("hint_url", {}, ["https://bch.cbd.int/"]),
    ("error_url", {}, ["https://bch.cbd.int/"]),
    ("hint_email", {}, ["name@example.org"]),
    ("language_set", {"language": "العربية"}, ["/language"]),
    ("cancelled", {}, ["/start"]),
    ("error_unknown_command", {"command": "/foo"},
     ["/foo", "/back", "/skip", "/review", "/language", "/help", "/cancel"]),
    ("telegram.edited_ignored", {}, ["/back", "/review"]),
    ("submitted", {"ref": "CB-WW733GY", "version": 2}, ["CB-WW733GY"]),
    ("already_submitted", {"ref": "CB-WW733GY"}, ["CB-WW733GY"]),
])
def test_arabic_messages_keep_embedded_runs_intact(content, key: str, values: dict,
                                                   runs: list[str]) -> None:
    _, _, tr = content
    text = tr.t("ar", key, **values)
    visual = _visual(text)
    for run in runs:
        assert run in visual, (key, run, visual)


def test_the_isolation_is_what_keeps_them_intact(content) -> None:
    _, _, tr = content
    bare = tr.raw("ar", "hint_date").replace(LRI, "").replace(PDI, "")
    assert "2024-03-15" not in _visual(bare)  # UAX #9 would show 15-03-2024
    assert "2024-03-15" in _visual(tr.raw("ar", "hint_date"))


def test_arabic_help_lines_stay_right_to_left(content) -> None:
    _, _, tr = content
    for line in tr.t("ar", "help").split("\n"):
        assert get_base_level(line) == 1, line
        command = re.search(r"/[a-z]+", line)
        if command:
            assert command.group(0) in _visual(line)


def test_arabic_mail_subject_keeps_rtl_direction(engine: Engine) -> None:
    form = MailForm(engine)
    state = engine.new_state(ref="CB-WW733GY", language="ar")
    subject = form.handle(state, "مرحبا", NOW, None).mails[0].doc.subject
    assert get_base_level(subject) == 1
    assert "CB-WW733GY" in _visual(subject)


def test_arabic_answer_examples_read_the_same_in_both_mail_parts(engine: Engine) -> None:
    form = MailForm(engine)
    state = engine.new_state(ref="CB-WW733GY", language="ar")
    doc = form.handle(state, "مرحبا", NOW, None).mails[0].doc
    example = next(b for b in doc.blocks if type(b).__name__ == "Example")
    for line in example.lines:
        assert get_base_level(line) == 1
        number = re.match(r"\W*(\d+\.)", line).group(1)
        assert number in _visual(line)
    assert form.read("\n".join(example.lines)).answers  # still read as answers


@pytest.mark.parametrize("pasted", [f"{LRI}/skip{PDI}", "\u200f/skip", "\u2068/skip\u2069 "])
def test_commands_pasted_with_direction_marks_still_work(engine: Engine, pasted: str) -> None:
    chat = Chat(engine, "ar")
    chat.start()
    chat.state["answers"].update({"R1_name": "a", "R2_email": "a@b.org", "R3_org": "o",
                                  "R4_orgtype": "NGO"})
    chat.state.update(phase="asking", slot="R5_country")
    chat.say(pasted)
    assert chat.state["answers"].get("R5_country", "x") is None  # skipped, not an answer


# -- detect-language ----------------------------------------------------------------------------


def test_detect_language_says_other_with_no_language() -> None:
    text = "Olá, gostaria de responder ao questionário sobre capacitação em biossegurança"
    data = detection_to_json(text, get_detector().detect(text))
    assert data["language"] is None and data["other"] is True
    assert data["reply_language"] == "en" and data["confident"] is False
    json.dumps(data)
