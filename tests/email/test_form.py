"""The form by mail, pure: numbering, reading `N. answer` replies, digests, commands, rendering."""

from __future__ import annotations

import email
import email.policy
import json
from typing import Any

import pytest

from bot.engine import Engine
from bot.i18n import LANGUAGES
from bot.language import Detection
from handlers.email.channel import decode_raw, encode_raw, reply_subject
from handlers.email.parsing import parse_message
from handlers.email.render import (
    Doc,
    Entry,
    Field,
    Para,
    build_message,
    encode_words,
    render_html,
    render_text,
)
from tests.conftest import NOW
from tests.email.mailform import MailForm, MailOut

# The questionnaire's numbers, as printed in every form (see docs/email.md).
N = {"R1_name": 1, "R2_email": 2, "R3_org": 3, "R4_orgtype": 4, "R4_orgtype_other": 5,
     "R5_country": 6, "S1_any_activity": 7, "A1_title": 8, "A2_kind": 9, "A3_role": 10,
     "A4_scope": 11, "A5_countries": 12, "A6_status": 13, "A7_start": 14, "A8_end": 15,
     "A9_areas": 16, "A10_modality": 18, "A12_trained": 22, "A14_budget": 25,
     "A15_summary": 26, "A17_more": 28, "N1_assessed": 29, "N2_has_needs": 30,
     "N3_need_areas": 31, "N4_top3": 33, "C1_consent": 39, "C2_comments": 40}

# Everything required, for an NGO that reports no activity and no needs.
SHORT_RUN = "\n".join(["1. Amina Diallo", "2. amina@example.org", "3. Green Action",
                       "4. 5", "7. No", "29. No", "30. 3", "39. Yes"])


@pytest.fixture(scope="module")
def form(engine: Engine) -> MailForm:
    return MailForm(engine)


def french() -> Detection:
    return Detection("fr", True, False, 60, "langdetect")


class Respondent:
    """Someone writing to the form; the state goes through JSON between mails."""

    def __init__(self, form: MailForm, lang: str | None = None) -> None:
        self.form = form
        self.state = form.engine.new_state(ref="CB-TEST234", language=lang)
        self.mails: list[MailOut] = []
        self.events: list[dict[str, Any]] = []

    def send(self, text: str, **kw: Any) -> list[MailOut]:
        kw.setdefault("detection", None)
        mt = self.form.handle(self.state, text, NOW, kw.pop("detection"), **kw)
        self.state = json.loads(json.dumps(mt.turn.state))
        self.mails, self.events = mt.mails, mt.turn.events
        return mt.mails

    @property
    def doc(self) -> Doc:
        assert len(self.mails) == 1, self.mails
        return self.mails[0].doc

    @property
    def text(self) -> str:
        return render_text(self.doc)

    def blocks(self, kind: type) -> list:
        return [b for b in self.doc.blocks if isinstance(b, kind)]

    def entries_after(self, heading_start: str) -> list[Entry]:
        out: list[Entry] = []
        seen = False
        for block in self.doc.blocks:
            if seen and isinstance(block, Entry):
                out.append(block)
            elif seen and not isinstance(block, Entry):
                break
            if getattr(block, "text", "").startswith(heading_start):
                seen = True
        return out

    @property
    def answers(self) -> dict[str, Any]:
        return self.state["answers"]


def started(form: MailForm, lang: str = "en") -> Respondent:
    r = Respondent(form, lang)
    r.send("Hello")
    return r


# -- numbering -----------------------------------------------------------------------------------


def test_every_question_has_a_stable_number(form: MailForm) -> None:
    numbers = {fq.question.id: fq.number for fq in form.layout.items}
    assert {q: numbers[q] for q in N} == N
    assert len(numbers) == 40
    assert form.layout.label("A1_title", 0) == "8"
    assert form.layout.label("A1_title", 1) == "2.8"
    assert form.layout.label("R1_name", None) == "1"


def test_the_form_prints_each_number_once_with_its_options(form: MailForm) -> None:
    r = Respondent(form, "en")
    r.send("Hello")
    fields = r.blocks(Field)
    assert [f.label for f in fields] == [str(n) for n in range(1, 41)]
    orgtype = fields[3]
    assert orgtype.mark == "*" and orgtype.options[0] == ("1", "Government of a Party to the "
                                                                "Cartagena Protocol")
    text = r.text
    assert "   (1) Government of a Party to the Cartagena Protocol" in text
    assert "5. If you chose “Other” in question 4, please specify." in text
    assert "Only if your answer to question 7 is “Yes”." in text
    assert "[ Activity 1 ]" in text
    assert "“2.8. …”" in text  # how to add Activity 2
    assert "SUBMIT" in text and "language: fr" in text


# -- reading replies -----------------------------------------------------------------------------


@pytest.mark.parametrize(("line", "label", "text"), [
    ("1. Maria", "1", "Maria"),
    ("2) Ministerio", "2", "Ministerio"),
    ("3: 1", "3", "1"),
    ("4 - 2", "4", "2"),
    ("  12. ke, ug", "12", "ke, ug"),
    ("5、张伟", "5", "张伟"),
    ("６．是", "6", "是"),
    ("١. نعم", "1", "نعم"),
    ("\u200f٢: وزارة البيئة", "2", "وزارة البيئة"),
    ("1.张伟", "1", "张伟"),
    ("2.8. Second workshop", "2.8", "Second workshop"),
    ("2.8 Second workshop", "2.8", "Second workshop"),
    ("1.8. First workshop", "1.8", "First workshop"),
])
def test_answer_lines(form: MailForm, line: str, label: str, text: str) -> None:
    read = form.read(line)
    assert [(a.label, a.lines[0]) for a in read.answers] == [(label, text)]


@pytest.mark.parametrize("line", ["3.5 hectares were restored", "2023-05", "4.2",
                                  "    4. 2", "\t4. 2", "> 4. 2", "(1) Government", "Hello",
                                  "Please SUBMIT it"])
def test_lines_that_are_not_answers(form: MailForm, line: str) -> None:
    read = form.read(line)
    assert read.answers == () and read.commands == {}


def test_long_answers_continue_until_a_blank_line(form: MailForm) -> None:
    read = form.read("26. We trained inspectors.\nThen we wrote a guide.\n\nRegards,\nAmina")
    assert read.answers[0].lines == ("We trained inspectors.", "Then we wrote a guide.")


@pytest.mark.parametrize(("line", "command"), [
    ("SUBMIT", ("submit", "")), ("envoyer", ("submit", "")), ("¡ENVIAR!", ("submit", "")),
    ("ОТПРАВИТЬ", ("submit", "")), ("提交", ("submit", "")), ("إرسال", ("submit", "")),
    ("status", ("status", "")), ("Estado", ("status", "")), ("状态", ("status", "")),
    ("cancel", ("cancel", "")), ("annuler", ("cancel", "")), ("отмена", ("cancel", "")),
    ("language: fr", ("language", "fr")), ("langue : français", ("language", "fr")),
    ("idioma: español", ("language", "es")), ("язык: русский", ("language", "ru")),
    ("语言：中文", ("language", "zh")), ("اللغة: العربية", ("language", "ar")),
    ("/language en", ("language", "en")), ("RECTIFIER", ("amend", "")),
])
def test_commands(form: MailForm, line: str, command: tuple[str, str]) -> None:
    assert form.read(f"Hello,\n\n{line}\n\nRegards").commands == dict([command])


def test_a_command_in_the_subject_counts_when_the_body_has_none(form: MailForm) -> None:
    assert form.read("", "Re: ENVIAR [ref:abcdefghabcdefghabcdefghabcd]").commands == {
        "submit": ""}
    assert form.read("1. x", "SUBMIT").commands == {}


# -- the conversation ----------------------------------------------------------------------------


def test_first_mail_gets_the_form_in_the_detected_language(form: MailForm) -> None:
    r = Respondent(form)
    r.send("Bonjour, je voudrais remplir le questionnaire sur les capacités.",
           detection=french(), hint="en")
    assert r.state["lang"] == "fr" and r.state["phase"] == "asking"
    assert r.doc.kind == "form" and r.doc.language == "fr"
    assert "Comment répondre" in r.text and "ENVOYER" in r.text
    assert {"type": "started", "language": "fr"} in r.events


def test_an_unsure_language_puts_the_other_languages_first(form: MailForm) -> None:
    r = Respondent(form)
    r.send("Hi", hint="es")
    assert r.state["lang"] == "es"
    first = r.doc.blocks[0]
    assert isinstance(first, Para) and "language: en" in first.text and "язык: ru" in first.text


def test_partial_answers_in_any_order_get_a_digest(form: MailForm) -> None:
    r = started(form)
    r.send("Hello,\n\n4. 5\n1. Amina Diallo\n7. yes\n10. 1, 3\n\nRegards,\nAmina")
    assert r.answers["R1_name"] == "Amina Diallo"
    assert r.answers["R4_orgtype"] == "NGO"
    assert r.answers["S1_any_activity"] == "YES"
    assert r.answers["A3_role@0"] == ["IMPLEMENTING", "COLLABORATING"]
    assert [e["slot"] for e in r.events if e["type"] == "answer"] == [
        "R1_name", "R4_orgtype", "S1_any_activity", "A3_role@0"]
    assert r.doc.kind == "digest" and r.state["phase"] == "asking"
    assert [e.label for e in r.entries_after("I recorded 4 answers")] == ["1", "4", "7", "10"]
    text = r.text
    assert "Still to answer:" in text
    assert "8. What is the title of the activity or project? *" in text  # now applicable
    assert r.state["slot"] == "R2_email"


def test_a_correction_says_what_it_replaced(form: MailForm) -> None:
    r = started(form)
    r.send("1. Amina Dialo")
    r.send("1. Amina Diallo")
    assert r.answers["R1_name"] == "Amina Diallo"
    (entry,) = r.entries_after("I recorded")
    assert entry.value == "Amina Diallo" and entry.note == "previously: Amina Dialo"


def test_invalid_unknown_and_inapplicable_answers_are_explained(form: MailForm) -> None:
    r = started(form)
    r.send("7. No\n2. not-an-address\n99. hello\n8. A workshop\n3. Green Action")
    assert r.answers == {"S1_any_activity": "NO", "R3_org": "Green Action"}
    rejected = {e.label: e for e in r.entries_after("3 answers could not be accepted")}
    assert rejected["2"].note.startswith("Please type a valid e-mail address")
    assert rejected["2"].value == "not-an-address"
    assert rejected["99"].note == "There is no question 99 in this form."
    assert rejected["8"].note == "This question does not apply, given your other answers."
    assert {"type": "invalid", "slot": "R2_email", "reason": "error_email"} in r.events


def test_answers_for_activity_two_open_its_block(form: MailForm) -> None:
    r = started(form)
    r.send("7. Yes\n8. First workshop\n2.8. Second workshop\n2.9. 2")
    assert r.answers["A17_more@0"] == "YES"  # implied by writing Activity 2
    assert r.answers["A1_title@1"] == "Second workshop"
    assert r.answers["A2_kind@1"] == "PROJECT"
    labels = [e.label for e in r.entries_after("I recorded")]
    assert labels == ["7", "8", "28", "2.8", "2.9"]
    r.send("28. No\n3.8. Third")
    assert "A1_title@2" not in r.answers
    assert [e.label for e in r.entries_after("1 answer could not")] == ["3.8"]


def test_no_activity_block_opens_when_there_are_no_activities(form: MailForm) -> None:
    r = started(form)
    r.send("7. No\n2.8. Second workshop")
    assert r.answers == {"S1_any_activity": "NO"}


def test_activity_blocks_print_with_their_prefix(form: MailForm) -> None:
    r = started(form)
    r.send("7. Yes\n28. Yes")
    r.send("status")
    labels = [f.label for f in r.blocks(Field)]
    assert "2.8" in labels and "2.28" in labels and "3.8" not in labels
    assert "“3.8. …”" in r.text


def test_top_priorities_use_the_numbers_of_the_full_list(form: MailForm) -> None:
    r = started(form)
    r.send("30. 1\n31. 1, 3, 4, 5")
    (field,) = [f for f in r.blocks(Field) if f.label == "33"]
    assert [n for n, _ in field.options] == ["1", "3", "4", "5"]
    r.send("33. 3, 5")
    assert r.answers["N4_top3"] == ["RISK_ASSESSMENT", "PUBLIC_AWARENESS"]
    r.send("33. 2")
    (entry,) = r.entries_after("1 answer could not")
    assert "is not among your answers to question 31" in entry.note


def test_a_dash_clears_optional_questions_only(form: MailForm) -> None:
    r = started(form)
    r.send("40. -\n1. -")
    assert r.answers == {"C2_comments": None}
    (entry,) = r.entries_after("1 answer could not")
    assert entry.label == "1" and "cannot be skipped" in entry.note


def test_a_copied_question_line_keeps_only_the_answer(form: MailForm) -> None:
    r = started(form)
    r.send("1. What is your full name? * Amina Diallo\n3. What is the name of your organization,"
           " ministry or agency? *\n\n2. What is your e-mail address, so that the Secretariat "
           "can follow up with you? *\namina@example.org\n\n40. Is there anything else you "
           "would like to tell the Secretariat? (optional)\n   Type your answer (a short "
           "paragraph).\nNo, thank you.")
    assert r.answers == {"R1_name": "Amina Diallo", "R2_email": "amina@example.org",
                         "C2_comments": "No, thank you."}


@pytest.mark.parametrize("lang", LANGUAGES)
def test_the_form_sent_back_unquoted_records_nothing(form: MailForm, lang: str) -> None:
    """A client that does not quote: the form's own lines must not become answers."""
    r = started(form, lang)
    form_text = r.text
    r.send(form_text)
    assert r.answers == {}
    assert not [e for e in r.events if e["type"] in ("answer", "invalid")]


def test_submit_needs_every_required_answer_then_sends_a_receipt(form: MailForm) -> None:
    r = started(form)
    r.send("SUBMIT")
    assert r.state["phase"] == "asking"
    assert "has not been sent yet" in r.text
    r.send(SHORT_RUN)
    assert r.state["phase"] == "review" and r.doc.kind == "review"
    assert "reply with the single word SUBMIT" in r.text
    assert r.state["slot"] is None
    r.send("status")
    assert r.doc.kind == "form" and "reply with the single word SUBMIT" in r.text
    r.send("Thanks!\n\nSUBMIT\n")
    assert r.state["phase"] == "done" and r.doc.kind == "receipt"
    assert {"type": "submitted", "ref": "CB-TEST234", "version": 1} in r.events
    assert "Reference number: CB-TEST234" in r.text
    assert "1. What is your full name?\n   → Amina Diallo" in r.text


def test_submit_in_the_same_mail_as_a_bad_answer_waits(form: MailForm) -> None:
    r = started(form)
    r.send(SHORT_RUN + "\n99. nobody\nSUBMIT")
    assert r.state["phase"] == "review"
    assert "could not be accepted" in r.text


def test_submit_prunes_answers_that_no_longer_apply(form: MailForm) -> None:
    r = started(form)
    r.send("7. Yes\n8. A workshop")
    r.send(SHORT_RUN + "\nSUBMIT")  # 7 changed to No
    assert r.state["phase"] == "done"
    assert "A1_title@0" not in r.answers
    assert {"type": "answer_removed", "slot": "A1_title@0", "question": "A1_title",
            "repeat": 0} in r.events


def test_after_submission_amend_opens_a_new_version(form: MailForm) -> None:
    r = started(form)
    r.send(SHORT_RUN + "\nSUBMIT")
    r.send("1. Amina D.")
    assert r.answers["R1_name"] == "Amina Diallo"  # submitted reports do not change
    assert "has already been submitted" in r.text and "AMEND" in r.text
    r.send("AMEND\n1. Amina D.")
    assert r.state["version"] == 2 and r.state["phase"] == "review"
    assert {"type": "amend", "ref": "CB-TEST234", "version": 2} in r.events
    assert r.answers["R1_name"] == "Amina D."


def test_language_change_sends_the_form_again_with_the_answers(form: MailForm) -> None:
    r = started(form)
    r.send("1. Amina Diallo")
    r.send("language: es")
    assert r.state["lang"] == "es" and r.state["lang_explicit"] is True
    assert {"type": "language", "language": "es", "explicit": True} in r.events
    assert r.doc.kind == "form" and r.doc.language == "es"
    assert "Respuesta actual: Amina Diallo" in r.text


def test_cancel_pauses_and_the_next_mail_resumes(form: MailForm) -> None:
    r = started(form)
    r.send("1. Amina Diallo\ncancel")
    assert r.state["phase"] == "cancelled" and r.state["resume"] == "asking"
    assert "paused" in r.text and "I recorded 1 answer" in r.text
    r.send("cancel")
    assert r.state["phase"] == "cancelled"
    r.send("2. amina@example.org")
    assert r.state["phase"] == "asking"
    assert {"type": "resumed"} in r.events
    assert r.answers["R2_email"] == "amina@example.org"


def test_status_resends_the_form_with_current_answers(form: MailForm) -> None:
    r = started(form)
    r.send("1. Amina Diallo")
    r.send("status")
    assert r.doc.kind == "form"
    assert "   → Current answer: Amina Diallo" in r.text


def test_no_answers_found_says_how_to_answer(form: MailForm) -> None:
    r = started(form)
    r.send("Thank you, I will reply next week.")
    assert "I found no answers in your message" in r.text and r.answers == {}


def test_a_delegate_answers_and_the_owner_is_told(form: MailForm) -> None:
    r = started(form)
    mails = r.send("3. Green Action\nSUBMIT", delegate="pedro@example.org")
    assert r.answers == {"R3_org": "Green Action"}
    assert {"type": "delegate", "address": "pedro@example.org", "ref": "CB-TEST234"} in \
        r.events
    to_delegate, to_owner = mails
    assert to_delegate.to == "pedro@example.org" and to_delegate.reply
    assert to_owner.to is None and not to_owner.reply
    assert "on behalf of" in render_text(to_delegate.doc)
    assert "Only the person to whom the questionnaire was sent" in render_text(to_delegate.doc)
    assert "pedro@example.org has answered on your behalf" in render_text(to_owner.doc)
    assert r.state["phase"] == "asking"


@pytest.mark.parametrize("lang", LANGUAGES)
def test_a_whole_run_in_each_language(form: MailForm, lang: str) -> None:
    """Options by number, code and localized label; yes/no in the language."""
    tr = form.tr
    yes = tr.option_label(lang, form.qn, form.qn.questions["S1_any_activity"], "YES")
    no = tr.option_label(lang, form.qn, form.qn.questions["S1_any_activity"], "NO")
    ngo = tr.option_label(lang, form.qn, form.qn.questions["R4_orgtype"], "NGO")
    r = started(form, lang)
    r.send(f"1. Name\n2. a@example.org\n3. Org\n4. {ngo}\n7. {yes}\n8. T\n9. PROJECT\n"
           f"10. 1\n11. 1\n13. 4\n14. 2023-05\n15. 2023-11\n16. 3, 4\n18. 9\n28. {no}\n"
           f"29. {no}\n30. 3\n39. {yes}")
    assert not r.entries_after("1 answer could not"), r.text
    assert r.state["phase"] == "review", r.text
    r.send(tr.raw(lang, "submit_word"))
    assert r.state["phase"] == "done"
    assert r.answers["A4_scope@0"] == "GLOBAL" and r.answers["R4_orgtype"] == "NGO"


# -- rendering -----------------------------------------------------------------------------------


def test_html_alternative_is_escaped_and_right_to_left_for_arabic(form: MailForm) -> None:
    r = started(form, "ar")
    html = render_html(r.doc)
    assert 'dir="rtl"' in html and 'lang="ar"' in html
    r = started(form)
    r.send("1. <b>Amina</b> & co")
    html = render_html(r.doc)
    assert "&lt;b&gt;Amina&lt;/b&gt; &amp; co" in html and "<b>Amina</b>" not in html


def test_built_messages_are_marked_threaded_and_never_answered(form: MailForm) -> None:
    subject = "Re: Cuestionario sobre creación de capacidad [ref:abcdefghabcdefghabcdefghabcd]"
    data = build_message(from_addr="Capbot <bot@example.org>", to="maria@example.es",
                         subject=subject, text="Hola\n1. x", html_body="<p>Hola</p>",
                         message_id="<capbot.1@example.org>", reply_to="bot+tok@example.org",
                         in_reply_to="<m1@example.es>",
                         references=["<m0@example.es>", "<m1@example.es>"], language="es")
    assert all(len(line) <= 78 for line in data.split(b"\r\n") if not line.startswith(b" "))
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert msg["Subject"] == subject
    assert msg["Auto-Submitted"] == "auto-replied" and msg["X-Capbot"] == "1"
    assert msg["In-Reply-To"] == "<m1@example.es>"
    assert msg["References"] == "<m0@example.es> <m1@example.es>"
    # Text parts travel with canonical CRLF line ends (RFC 2046).
    assert msg.get_body(("plain",)).get_content() == "Hola\r\n1. x"
    assert msg.get_body(("html",)).get_content().strip() == "<p>Hola</p>"
    parsed = parse_message(data)
    assert parsed.classification.kind == "own_mail" and not parsed.can_reply


def test_encoded_words_never_split_a_character() -> None:
    words = encode_words("استبيان بشأن بناء القدرات " * 4 + "生物安全能力建设调查问卷")
    assert all(len(w) <= 75 for w in words)
    from email.header import decode_header, make_header

    assert str(make_header(decode_header(" ".join(words)))).endswith("调查问卷")


def test_reply_subjects() -> None:
    assert reply_subject("Questionnaire", "T") == "Re: Questionnaire"
    assert reply_subject("RE: Re: Questionnaire [ref:abc]", "T") == "Re: Questionnaire"
    assert reply_subject("回复：问卷", "T") == "Re: 问卷"
    assert reply_subject("", "T") == "T"


@pytest.mark.parametrize("raw", [b"From: a@b\r\n\r\nplain", "From: é\r\n\r\nü".encode(),
                                 b"From: x\r\n\r\n\xe9t\xe9", b"a\x00b",
                                 b"=?capbot-base64?=\nnot really"])
def test_raw_mail_is_stored_as_text_without_loss(raw: bytes) -> None:
    stored = encode_raw(raw)
    assert "\x00" not in stored
    stored.encode("utf-8")  # storable in any text column
    assert decode_raw(stored) == raw
