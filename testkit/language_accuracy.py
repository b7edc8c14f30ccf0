"""Scoring bot.language on the labelled corpus (tests/fixtures/language/corpus.jsonl): load it,
band texts by length, judge each detection. Used by tests/test_language.py and
benchmarks/language_accuracy.py."""
from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bot.language import LANGUAGES, Detection, LanguageDetector

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "fixtures" / "language" / "corpus.jsonl"
BANDS = ("<20", "20-39", "40+")


def load_corpus(path: Path = CORPUS) -> list[dict]:
    """Records {"id", "label" (one of the six, "other" or null), "source", "kind", "text",
    optional "known_error" (why the policy gets it wrong)}."""
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def band(letters: int) -> str:
    return BANDS[0] if letters < 20 else BANDS[1] if letters < 40 else BANDS[2]


def is_correct(label: str | None, d: Detection) -> bool:
    """Six languages: the right language, not flagged "other". "other": flagged. None: no
    confident answer."""
    if label in LANGUAGES:
        return d.language == label and not d.other
    if label == "other":
        return d.other
    return not d.confident and (d.letters > 0 or d.language is None)


def is_wrong_switch(label: str | None, d: Detection) -> bool:
    """A confident answer the caller would act on that is wrong for this text."""
    if not d.confident:
        return False
    if label in LANGUAGES:
        return d.language != label or d.other
    if label == "other":
        return not d.other
    return True


@dataclass
class Result:
    record: dict
    detection: Detection

    @property
    def correct(self) -> bool:
        return is_correct(self.record["label"], self.detection)

    @property
    def wrong_switch(self) -> bool:
        return is_wrong_switch(self.record["label"], self.detection)


@dataclass
class Report:
    results: list[Result] = field(default_factory=list)

    def six(self, *, min_letters: int = 0) -> list[Result]:
        return [
            r
            for r in self.results
            if r.record["label"] in LANGUAGES and r.detection.letters >= min_letters
        ]

    def accuracy(self, results: Sequence[Result]) -> float:
        return sum(r.correct for r in results) / len(results) if results else float("nan")

    def wrong_switches(self, *, include_known: bool = True) -> list[Result]:
        return [
            r
            for r in self.results
            if r.wrong_switch and (include_known or not r.record.get("known_error"))
        ]


def evaluate(detector: LanguageDetector, records: Iterable[dict]) -> Report:
    report = Report()
    for record in records:
        report.results.append(Result(record, detector.detect(record["text"])))
    return report
