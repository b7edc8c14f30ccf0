"""Building the mail documents: the whole form, a digest, a receipt, a notice (pure).

The engine's form replies say what to show (`Reply.extra["form"]`: the kind of mail, notes,
the neutral outcome of the reply's entries, the report's state); this module turns that
into a `Doc` of blocks, and handlers/email/render.py makes text and HTML of the Doc. The
numbers are the questionnaire's (bot.questionnaire.Numbering); which questions apply, and
which are required, comes from bot.rules (three-valued: "not known yet" prints the
condition in words).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from bot.questionnaire import Condition, Question, Section
from bot.rules import Slot, Tri, slot_key, split_slot, value_getter

from .render import Block, Doc, Entry, Example, Field, Heading, Para

if TYPE_CHECKING:
    from bot.engine import Engine

_UNSET: Any = object()

# -- the renderer ----------------------------------------------------------------------------


class FormRenderer:
    """Mail documents for one questionnaire: pure, holds only caches."""

    def __init__(self, engine: Engine) -> None:
        self.qn = engine.qn
        self.tr = engine.tr
        self.rules = engine.rules
        self.display = engine.display
        self.numbering = engine.numbering
        self._field_cache: dict[tuple, Field] = {}
        self._static_cache: dict[tuple, Any] = {}

    def render(self, view: dict[str, Any]) -> Doc:
        """The mail for one engine form reply (its `extra["form"]`)."""
        st = view["state"]
        outcome = view.get("outcome") or {}
        recorded = [self._recorded(st, r) for r in outcome.get("recorded", ())]
        rejected = [self._rejected(st, r) for r in outcome.get("rejected", ())]
        notes = [self._note(st, code, values) for code, values in view.get("notes", ())]
        show = view["show"]
        if show == "notice":
            if view["notice"] == "cancelled":
                doc = self._notice(st, "mail_cancelled", word=self._status_word(st["lang"]))
            else:
                doc = self._notice(st, "mail_already_submitted", ref=st["ref"],
                                   word=self._amend_word(st["lang"]))
            if view.get("results") and (recorded or rejected):
                doc.blocks[:0] = self._results(st, recorded, rejected)
        elif show == "receipt":
            doc = self.receipt_doc(st)
        elif show == "form":
            doc = self.form_doc(st, notes=notes, offer_languages=view.get("offer_languages", True),
                                offers_first=view.get("offers_first", False),
                                remaining=view.get("remaining", False))
        else:
            doc = self._digest(st, notes, recorded, rejected,
                               [self._slot(k) for k in outcome.get("missing", ())],
                               [self._slot(k) for k in outcome.get("optional_left", ())],
                               found_nothing=view.get("found_nothing", False),
                               offer_languages=view.get("offer_languages", False))
        if view.get("delegate_ack"):
            doc.blocks.insert(0, Para(self._t(st, "mail_delegate_ack", ref=st["ref"])))
        return doc

    def receipt_doc(self, st: dict[str, Any]) -> Doc:
        doc = Doc("receipt", st["lang"], self._subject(st))
        doc.blocks.append(Para(self._t(st, "submitted", ref=st["ref"], version=st["version"]),
                               "strong"))
        doc.blocks.append(Para(self._t(st, "mail_receipt_copy")))
        doc.blocks += self._answer_blocks(st)
        doc.footer = self._t(st, "mail_footer")
        return doc

    def _slot(self, key: str) -> Slot:
        qid, rep = split_slot(key)
        return Slot(key, self.qn.questions[qid], rep)

    def _recorded(self, st: dict[str, Any], r: dict[str, Any]) -> Entry:
        slot = self._slot(r["slot"])
        lang, q = st["lang"], slot.question
        note = ""
        if "previous" in r:
            note = self._t(st, "mail_changed",
                           value=self.display.display_value(lang, q, r["previous"]))
        return Entry(self.numbering.label(q.id, slot.repeat),
                     self.prompt(lang, slot, st["answers"]),
                     self.display.display_value(lang, q, r["value"]), note)

    def _rejected(self, st: dict[str, Any], r: dict[str, Any]) -> Entry:
        if r["slot"] is None:
            return Entry(r["label"], "", r["text"], self._t(st, "mail_no_question",
                                                              n=r["label"]))
        slot = self._slot(r["slot"])
        note = r["error"] if r["reason"] == "invalid" else self._t(st, "mail_not_applicable")
        return Entry(r["label"], self.prompt(st["lang"], slot, st["answers"]), r["text"], note)

    def _note(self, st: dict[str, Any], code: str, values: dict[str, Any]) -> Para:
        lang = st["lang"]
        if code == "language_set":
            return Para(self._t(st, "mail_language_set",
                                language=self.tr.language_name(values["language"])))
        if code == "complete":
            return Para(self._t(st, "mail_complete", word=self.tr.raw(lang, "submit_word")),
                        "strong")
        key, style = {"delegate_owner_only": ("mail_delegate_owner_only", "note"),
                      "welcome_back": ("welcome_back", ""),
                      "continued": ("mail_continued", "strong"),
                      "amend_started": ("amend_started", ""),
                      "not_sent_errors": ("mail_not_sent_errors", "strong"),
                      "not_sent_missing": ("mail_not_sent_missing", "strong"),
                      "delegate_notice": ("mail_delegate_notice", "")}[code]
        if code == "delegate_notice":
            values = {**values, "ref": st["ref"]}
        return Para(self._t(st, key, **values), style)

    def form_doc(self, st: dict[str, Any], *, notes: list[Block] | None = None,
                 offer_languages: bool = True, offers_first: bool = False,
                 remaining: bool = False) -> Doc:
        """The whole form in the respondent's language, with the answers given so far;
        `remaining`: only the questions not answered yet (a draft going on by mail)."""
        lang, answers = st["lang"], st["answers"]
        doc = Doc("form", lang, self._subject(st))
        blocks = doc.blocks
        if offers_first:
            blocks += self._language_offers(lang)
        blocks += notes or []
        blocks.append(Heading(self.tr.raw(lang, "title", self.qn.id), 1))
        blocks.append(Para(self._t(st, "mail_ref", ref=st["ref"]), "strong"))
        if not answers:
            blocks.append(Para(self._t(st, "welcome")))
        blocks += self._instructions(st)
        memo: dict[str, Tri] = {}
        current_section = None
        for fq in self.numbering.items:
            if fq.repeated:
                if fq.section is current_section:
                    continue
                current_section = fq.section
                blocks += self._repeat_blocks(st, fq.section, memo, remaining)
                continue
            if fq.section is not current_section:
                current_section = fq.section
                blocks.append(Heading(self.tr.section_title(lang, self.qn, fq.section.id)))
            applies = self.rules.applies(fq.question.id, None, answers, memo)
            if applies is not False and not (remaining and fq.question.id in answers):
                blocks.append(self._field(st, Slot(fq.question.id, fq.question, None), applies,
                                          memo))
        if offer_languages and not offers_first:
            blocks += self._language_offers(lang)
        doc.footer = self._t(st, "mail_footer")
        return doc

    def _repeat_blocks(self, st: dict[str, Any], section: Section,
                       memo: dict[str, Tri], remaining: bool = False) -> list[Block]:
        lang, answers = st["lang"], st["answers"]
        items = [fq for fq in self.numbering.items if fq.section is section]
        first = items[0]
        applies = self.rules.section_applies(section, answers, memo)
        if applies is False:
            return []
        out: list[Block] = [Heading(self.tr.section_title(lang, self.qn, section.id))]
        if section.ask_if is not None and applies is None:
            out.append(Para(self._describe(st, section.ask_if, None), "note"))
        rep = 0
        while True:
            out.append(Heading(self.tr.t(lang, "activity_label", n=rep + 1), 3))
            if rep:
                out.append(Para(self._t(st, "mail_activity_prefix", prefix=f"{rep + 1}.",
                                        example=f"{rep + 1}.{first.number}."), "note"))
            for fq in items:
                applies = self.rules.applies(fq.question.id, rep, answers, memo)
                key = slot_key(fq.question.id, rep)
                if applies is not False and not (remaining and key in answers):
                    out.append(self._field(st, Slot(key, fq.question, rep), applies, memo))
            more = section.more_question
            if rep + 1 >= section.repeat_max or answers.get(slot_key(more, rep)) != "YES":
                break
            rep += 1
        if rep + 1 < section.repeat_max and section.more_question:
            yes = self.tr.option_label(lang, self.qn, self.qn.questions[section.more_question],
                                       "YES")
            out.append(Para(self._t(
                st, "mail_activity_add", n=self.numbering.label(section.more_question, rep),
                yes=self._quote(lang, yes), example=f"{rep + 2}.{first.number}. …",
                max=section.repeat_max), "note"))
        return out

    def _field(self, st: dict[str, Any], slot: Slot, applies: bool | None,
               memo: dict[str, Tri]) -> Field:
        lang, answers = st["lang"], st["answers"]
        q = slot.question
        required = self.rules.required(q, slot.repeat, answers, memo)
        options_key = None
        depends_on = q.other_of or q.options_from
        if depends_on:  # the prompt or the options shown depend on that answer
            parent_value = value_getter(answers, slot.repeat)(depends_on)
            options_key = tuple(parent_value) if isinstance(parent_value, list) \
                else parent_value
        key = (lang, slot.key, applies, required, options_key)
        found = self._field_cache.get(key)
        if found is None:
            if len(self._field_cache) > 50_000:
                self._field_cache.clear()
            found = self._field_cache[key] = self._build_field(st, slot, applies, required)
        value = answers.get(slot.key, _UNSET)
        if value is not _UNSET:
            current = self._t(st, "mail_current",
                              value=self.display.display_value(lang, q, value))
            found = dataclasses.replace(found, current=current)
        return found

    def _build_field(self, st: dict[str, Any], slot: Slot, applies: bool | None,
                     required: bool | None) -> Field:
        lang, answers = st["lang"], st["answers"]
        q = slot.question
        notes: list[str] = []
        if applies is None and q.ask_if is not None and not q.other_of:
            notes.append(self._describe(st, q.ask_if, slot.repeat))
        if required is None and q.required_if is not None:
            notes.append(self._describe(st, q.required_if, slot.repeat, "mail_required_if"))
        notes += self.display.answer_hints(lang, q, self._format_hint(lang, q))
        options: tuple[tuple[str, str], ...] = ()
        if q.type in ("single_choice", "multi_choice"):
            source = q.options
            chosen = None
            if q.options_from:
                source = self.qn.questions[q.options_from].options
                chosen = value_getter(answers, slot.repeat)(q.options_from)
                notes.insert(0, self._t(st, "mail_choose_from",
                                        n=self.numbering.label(q.options_from, slot.repeat)))
            # Numbers of the full list (they never move); only what can be chosen is shown.
            options = tuple((str(i), self.tr.option_label(lang, self.qn, q, o.code))
                            for i, o in enumerate(source, start=1)
                            if not chosen or o.code in chosen)
        if required is True and (applies is True or not q.other_of):
            mark = "*"
        elif required is False:
            mark = self._t(st, "mail_optional")
        else:
            mark = ""
        return Field(self.numbering.label(q.id, slot.repeat), self.prompt(lang, slot, answers),
                     mark, tuple(notes), options)

    def _format_hint(self, lang: str, q: Question) -> str:
        if q.type == "multi_choice":
            return self.tr.t(lang, "mail_hint_multi")
        key = {"single_choice": "hint_single"}.get(q.type, f"hint_{q.type}")
        return self.tr.t(lang, key)

    def prompt(self, lang: str, slot: Slot, answers: dict[str, Any]) -> str:
        q = slot.question
        if not q.other_of:
            return self.tr.question_prompt(lang, self.qn, q)
        parent = self.qn.questions[q.other_of]
        value = value_getter(answers, slot.repeat)(q.other_of)
        free = [o.code for o in parent.options if o.free_text]
        chosen = [c for c in (value if isinstance(value, list) else [value]) if c in free]
        labels = [self._quote(lang, self.tr.option_label(lang, self.qn, parent, c))
                  for c in (chosen or free)]
        return self.tr.t(lang, "mail_specify_other", option=self._or_list(lang, labels),
                         n=self.numbering.label(q.other_of, slot.repeat))

    def _describe(self, st: dict[str, Any], cond: Condition, rep: int | None,
                  key_if: str = "mail_only_if") -> str:
        """A condition in words: "Only if your answer to question 7 is “Yes”."."""
        lang = st["lang"]
        if cond.all is not None and all(c.question for c in cond.all):
            return " ".join(self._describe(st, c, rep, key_if) for c in cond.all)
        if not cond.question:
            refs = sorted({self.numbering.label(r, rep if self.numbering.by_qid[r].repeated
                                                else None) for r in cond.questions()})
            return self._t(st, "mail_depends", numbers=", ".join(refs))
        ref = self.numbering.by_qid[cond.question]
        n = self.numbering.label(cond.question, rep if ref.repeated else None)
        if cond.count_gt is not None:
            return self.tr.tn(lang, "mail_more_than", cond.count_gt, n=n)
        positive = cond.equals if cond.equals is not None else (cond.in_ or cond.any_of)
        negative = cond.not_equals if cond.not_equals is not None else cond.not_in
        if positive is not None:
            key, codes = key_if, positive
        elif negative is not None and key_if == "mail_only_if":
            key, codes = "mail_unless", negative
        else:
            return self._t(st, "mail_depends", numbers=n)
        codes = [codes] if isinstance(codes, str) else list(codes)
        values = self._or_list(lang, [self._quote(lang, self._value_label(lang, ref.question, c))
                                      for c in codes])
        return self._t(st, key, n=n, values=values)

    def _value_label(self, lang: str, q: Question, code: str) -> str:
        if q.type in ("single_choice", "multi_choice", "yes_no"):
            try:
                return self.tr.option_label(lang, self.qn, q, code)
            except KeyError:
                return code
        return code

    def _instructions(self, st: dict[str, Any]) -> list[Block]:
        lang = st["lang"]
        key = ("instructions", lang)
        found = self._static_cache.get(key)
        if found is None:
            words = {"submit_word": self.tr.raw(lang, "submit_word"),
                     "status": self._status_word(lang),
                     "cancel": self.tr.raw(lang, "mail_word_cancel"),
                     "language": self.tr.raw(lang, "mail_word_language")}
            single = next(fq.number for fq in self.numbering.items
                          if fq.question.type == "single_choice")
            multi = next(fq.number for fq in self.numbering.items
                         if fq.question.type == "multi_choice" and not fq.question.options_from)
            example = self.tr.raw(lang, "mail_example_name")
            sep = self.tr.raw(lang, "mail_list_sep")
            found = [Heading(self.tr.t(lang, "mail_how_title")),
                     Para(self.tr.t(lang, "mail_how")),
                     Example(self._example_lines(lang, ((1, example), (single, "2"),
                                                        (multi, sep.join(("1", "3")))))),
                     Para(self.tr.t(lang, "mail_how_options")),
                     Para(self.tr.t(lang, "mail_how_required")),
                     Para(self.tr.t(lang, "mail_how_confirm", word=words["submit_word"])),
                     Para(self.tr.t(lang, "mail_how_commands", status=words["status"],
                                    cancel=words["cancel"], language=words["language"]))]
            self._static_cache[key] = found
        return list(found)

    def _example_lines(self, lang: str, lines: Iterable[tuple[int, str]]) -> tuple[str, ...]:
        """"N. answer" lines; in Arabic each stays a right-to-left line with "N." intact."""
        return tuple(f"{self.tr.line_start(lang)}{self.tr.ltr(lang, f'{n}.')} {answer}"
                     for n, answer in lines)

    def _language_offers(self, lang: str) -> list[Block]:
        key = ("offers", lang)
        found = self._static_cache.get(key)
        if found is None:
            lines = [self.tr.t(other, "mail_language_offer",
                               command=f"{self.tr.raw(other, 'mail_word_language')}: {other}")
                     for other in self.tr.languages if other != lang]
            found = self._static_cache[key] = [Para("\n".join(lines), "note")]
        return list(found)

    def _digest(self, st: dict[str, Any], notes: list[Block], recorded: list[Entry],
                rejected: list[Entry], missing: list[Slot], optional_left: list[Slot], *,
                found_nothing: bool, offer_languages: bool = False) -> Doc:
        lang = st["lang"]
        complete = not missing
        doc = Doc("review" if complete else "digest", lang, self._subject(st))
        blocks = doc.blocks
        blocks += notes
        if found_nothing:
            blocks.append(Para(self._t(st, "mail_no_answers",
                                       example=f"1. {self.tr.raw(lang, 'mail_example_name')}")))
        blocks += self._results(st, recorded, rejected)
        if complete and st["phase"] in ("review", "asking"):
            blocks.append(Para(self._t(st, "mail_complete",
                                       word=self.tr.raw(lang, "submit_word")), "strong"))
            blocks += self._answer_blocks(st)
        elif not complete:
            blocks.append(Heading(self.tr.tn(lang, "mail_missing", len(missing))))
            memo: dict[str, Tri] = {}
            section_seen = None
            for slot in missing:
                header = (slot.question.section, slot.repeat)
                if header != section_seen:
                    section_seen = header
                    title = self.tr.section_title(lang, self.qn, slot.question.section)
                    if slot.repeat is not None:
                        title += " · " + self.tr.t(lang, "activity_label", n=slot.repeat + 1)
                    blocks.append(Heading(title, 3))
                blocks.append(self._field(st, slot, True, memo))
            if optional_left:
                numbers = ", ".join(self.numbering.label(s.question.id, s.repeat)
                                    for s in optional_left)
                blocks.append(Para(self._t(st, "mail_optional_left", numbers=numbers,
                                           word=self._status_word(lang)), "note"))
        if offer_languages:
            blocks += self._language_offers(lang)
        doc.footer = self._t(st, "mail_footer")
        return doc

    def _results(self, st: dict[str, Any], recorded: list[Entry],
                 rejected: list[Entry]) -> list[Block]:
        lang = st["lang"]
        out: list[Block] = []
        if recorded:
            out.append(Heading(self.tr.tn(lang, "mail_recorded", len(recorded))))
            out += recorded
        if rejected:
            out.append(Heading(self.tr.tn(lang, "mail_rejected", len(rejected))))
            out += rejected
        return out

    def _answer_blocks(self, st: dict[str, Any]) -> list[Block]:
        lang, answers = st["lang"], st["answers"]
        out: list[Block] = [Heading(self.tr.t(lang, "mail_answers_title"))]
        section_seen = None
        for slot in self.rules.slots(answers):
            if slot.key not in answers:
                continue
            header = (slot.question.section, slot.repeat)
            if header != section_seen:
                section_seen = header
                title = self.tr.section_title(lang, self.qn, slot.question.section)
                if slot.repeat is not None:
                    title += " · " + self.tr.t(lang, "activity_label", n=slot.repeat + 1)
                out.append(Heading(title, 3))
            out.append(Entry(self.numbering.label(slot.question.id, slot.repeat),
                             self.prompt(lang, slot, answers),
                             self.display.display_value(lang, slot.question, answers[slot.key])))
        return out

    def notice_doc(self, lang: str, key: str, **values: Any) -> Doc:
        """A one-paragraph notice outside any report (message too large, bad reference)."""
        doc = Doc("notice", lang, self.tr.raw(lang, "title", self.qn.id))
        doc.blocks.append(Para(self.tr.t(lang, key, **values)))
        doc.footer = self.tr.t(lang, "mail_footer")
        return doc

    def verify_doc(self, state: dict[str, Any]) -> Doc:
        """The answer to a mail from a report owner's address that could not be shown to be
        theirs (no reply token): nothing changed; reply to this mail (it carries a fresh
        token) to go on. It quotes nothing of that mail, and has the report's own subject."""
        st = {**state, "lang": state.get("lang") or "en"}
        doc = self._notice(st, "mail_verify", ref=st["ref"])
        doc.kind = "verify"
        return doc

    def _notice(self, st: dict[str, Any], key: str, **values: Any) -> Doc:
        doc = Doc("notice", st["lang"] or "en", self._subject(st))
        doc.blocks.append(Para(self._t(st, key, **values)))
        doc.footer = self._t(st, "mail_footer")
        return doc

    # -- small helpers -------------------------------------------------------------------------

    def _subject(self, st: dict[str, Any]) -> str:
        lang = st["lang"] or "en"
        return self.tr.t(lang, "mail_subject", title=self.tr.raw(lang, "title", self.qn.id),
                         ref=st["ref"])

    def _t(self, st: dict[str, Any], key: str, **values: Any) -> str:
        return self.tr.t(st["lang"] or "en", key, **values)

    def _status_word(self, lang: str) -> str:
        return self.tr.raw(lang, "mail_word_status")

    def _amend_word(self, lang: str) -> str:
        return self.tr.raw(lang, "amend_button").upper()

    def _quote(self, lang: str, text: str) -> str:
        return self.tr.t(lang, "mail_quote", text=text)

    def _or_list(self, lang: str, items: list[str]) -> str:
        if len(items) < 2:
            return items[0] if items else ""
        sep = self.tr.raw(lang, "mail_list_sep")
        return self.tr.t(lang, "mail_list_or", items=sep.join(items[:-1]), last=items[-1])


__all__ = ["FormRenderer"]
