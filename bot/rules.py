"""The one evaluator of a questionnaire's conditions: which questions apply, which are required.

Two-valued for a conversation (`slots`, `is_required`: an unanswered question makes a test
false), three-valued for the mail form (`applies`, `holds`, `required`: True, False, or None
for "not known yet", when the answer it depends on may still come). Inside a repeated
section a condition reads that instance's answer, else the one outside it; instance k+1
exists while the section's "more" question says YES.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bot.questionnaire import Condition, Question, Questionnaire, Section

Tri = bool | None  # True, False, or None: not known yet


@dataclass(frozen=True, slots=True, eq=False)  # identity: slots come from one cached list
class Slot:
    key: str  # "R1_name" or "A1_title@0" inside the repeated section
    question: Question
    repeat: int | None


def slot_key(qid: str, repeat: int | None) -> str:
    return qid if repeat is None else f"{qid}@{repeat}"


def split_slot(key: str) -> tuple[str, int | None]:
    qid, _, rep = key.partition("@")
    return qid, (int(rep) if rep else None)


def value_getter(answers: dict[str, Any], repeat: int | None) -> Callable[[str], Any]:
    """`value_of(question_id)` as conditions read it: the instance's answer, else the top one."""
    def value_of(qid: str) -> Any:
        if repeat is not None:
            v = answers.get(f"{qid}@{repeat}")
            if v is not None:
                return v
        return answers.get(qid)
    return value_of


class Rules:
    """Applicability and requiredness for one questionnaire; holds only caches."""

    def __init__(self, questionnaire: Questionnaire) -> None:
        self.qn = questionnaire
        self.triggers = frozenset(
            ref for sec in questionnaire.sections
            for cond in [sec.ask_if, *(q.ask_if for q in sec.questions)] if cond
            for ref in cond.questions()) | {
            sec.more_question for sec in questionnaire.sections if sec.more_question}
        # Every answer slot a condition can look at (repeat instances spelled out).
        repeated = {q.id for sec in questionnaire.sections if sec.repeat_max > 1
                    for q in sec.questions}
        max_repeat = max(sec.repeat_max for sec in questionnaire.sections)
        self._trigger_keys = tuple(sorted(
            slot_key(qid, r) for qid in self.triggers
            for r in (range(max_repeat) if qid in repeated else (None,))))
        self._slot_cache: dict[tuple, list[Slot]] = {}

    # -- two-valued: the conversation ----------------------------------------------------------

    def slots(self, answers: dict[str, Any]) -> list[Slot]:
        """Questions that apply given the answers so far, in order, repeat instances expanded.

        Only answers to questions that conditions look at can change the list, so it is
        memoized on those values: most turns reuse a list computed before.
        """
        key = tuple([tuple(v) if type(v) is list else v
                     for v in map(answers.get, self._trigger_keys)])
        found = self._slot_cache.get(key)
        if found is None:
            if len(self._slot_cache) > 20_000:
                self._slot_cache.clear()
            found = self._slot_cache[key] = self._compute_slots(answers)
        return found

    def _compute_slots(self, answers: dict[str, Any]) -> list[Slot]:
        out: list[Slot] = []
        top = answers.get
        for section in self.qn.sections:
            if section.ask_if and not section.ask_if.holds(top):
                continue
            if section.repeat_max == 1:
                for q in section.questions:
                    if q.ask_if is None or q.ask_if.holds(top):
                        out.append(Slot(q.id, q, None))
                continue
            repeat = 0
            while True:
                value_of = value_getter(answers, repeat)
                last = repeat + 1 >= section.repeat_max
                for q in section.questions:
                    if q.id == section.more_question and last:
                        continue
                    if q.ask_if is None or q.ask_if.holds(value_of):
                        out.append(Slot(f"{q.id}@{repeat}", q, repeat))
                if last or answers.get(f"{section.more_question}@{repeat}") != "YES":
                    break
                repeat += 1
        return out

    def is_required(self, slot: Slot, answers: dict[str, Any]) -> bool:
        q = slot.question
        if q.required:
            return True
        return bool(q.required_if and q.required_if.holds(value_getter(answers, slot.repeat)))

    def missing(self, answers: dict[str, Any]) -> tuple[list[Slot], list[Slot]]:
        """Required questions still without an answer, and optional ones never answered."""
        required, optional = [], []
        for slot in self.slots(answers):
            if answers.get(slot.key) is not None:
                continue
            if self.is_required(slot, answers):
                required.append(slot)
            elif slot.key not in answers:
                optional.append(slot)
        return required, optional

    # -- three-valued: the mail form -----------------------------------------------------------

    def applies(self, qid: str, rep: int | None, answers: dict[str, Any],
                memo: dict[str, Tri]) -> Tri:
        """True: the question applies; False: it cannot, given the answers; None: not known
        yet (it depends on a question that is not answered)."""
        key = slot_key(qid, rep)
        if key in memo:
            return memo[key]
        section = self.qn.sections_by_question[qid]
        q = self.qn.questions[qid]
        result: Tri = True
        if rep is not None and rep > 0:
            chain = [answers.get(slot_key(section.more_question, j)) for j in range(rep)]
            if any(v is not None and v != "YES" for v in chain):
                result = False
            elif any(v is None for v in chain):
                result = None
        if section.more_question == qid and rep == section.repeat_max - 1:
            result = False
        if result is not False and section.ask_if is not None:
            result = _and(result, self.holds(section.ask_if, None, answers, memo))
        if result is not False and q.ask_if is not None:
            result = _and(result, self.holds(q.ask_if, rep, answers, memo))
        memo[key] = result
        return result

    def section_applies(self, section: Section, answers: dict[str, Any],
                        memo: dict[str, Tri]) -> Tri:
        return True if section.ask_if is None else self.holds(section.ask_if, None, answers,
                                                               memo)

    def holds(self, cond: Condition, rep: int | None, answers: dict[str, Any],
              memo: dict[str, Tri]) -> Tri:
        if cond.all is not None:
            parts = [self.holds(c, rep, answers, memo) for c in cond.all]
            return False if False in parts else (True if all(parts) else None)
        if cond.any is not None:
            parts = [self.holds(c, rep, answers, memo) for c in cond.any]
            return True if True in parts else (False if all(p is False for p in parts) else None)
        if cond.not_ is not None:
            inner = self.holds(cond.not_, rep, answers, memo)
            return None if inner is None else not inner
        qid = cond.question
        assert qid is not None
        ref_rep = rep if self.qn.sections_by_question[qid].repeat_max > 1 else None
        known = slot_key(qid, ref_rep) in answers or qid in answers
        if not known and self.applies(qid, ref_rep, answers, memo) is not False:
            return None
        return cond.holds(value_getter(answers, rep))

    def required(self, q: Question, rep: int | None, answers: dict[str, Any],
                 memo: dict[str, Tri]) -> Tri:
        if q.required:
            return True
        if q.required_if is None:
            return False
        return self.holds(q.required_if, rep, answers, memo)


def _and(a: Tri, b: Tri) -> Tri:
    if a is False or b is False:
        return False
    return None if a is None or b is None else True


__all__ = ["Rules", "Slot", "Tri", "slot_key", "split_slot", "value_getter"]
