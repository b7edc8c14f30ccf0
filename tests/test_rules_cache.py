"""The slot list is memoized on the answers that conditions look at: the cache must give
exactly what computing it afresh gives, for any answers."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.rules import Rules, split_slot


def _value(question) -> st.SearchStrategy:
    codes = [o.code for o in question.options] or ["YES", "NO", "x"]
    if question.type == "yes_no":  # mostly YES: what opens sections and repeat instances
        return st.sampled_from(["YES", "YES", "YES", "NO"])
    if question.type == "multi_choice":
        return st.lists(st.sampled_from(codes), unique=True, max_size=len(codes))
    return st.one_of(st.none(), st.sampled_from(codes), st.text(max_size=3))


@settings(max_examples=400, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_cached_slots_are_the_computed_ones(content, data) -> None:
    _, questionnaire, _ = content
    rules = _shared_rules(questionnaire)
    answers = {}
    for key in rules._trigger_keys:
        if data.draw(st.integers(0, 3)) > 0:
            answers[key] = data.draw(_value(questionnaire.questions[split_slot(key)[0]]))
    assert [s.key for s in rules.slots(answers)] == [
        s.key for s in rules._compute_slots(answers)]


_RULES: dict[str, Rules] = {}


def _shared_rules(questionnaire) -> Rules:
    """One instance across examples, so later examples hit what earlier ones cached."""
    return _RULES.setdefault(questionnaire.id, Rules(questionnaire))
