"""Accuracy and speed of bot.language on the corpus: python -m benchmarks.language_accuracy."""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
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


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:5.1f} % ({part}/{whole})" if whole else "    -"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--repeat", type=int, default=5, help="passes over the corpus for speed")
    parser.add_argument("--errors", action="store_true", help="list every incorrect answer")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    detector = LanguageDetector()
    load = time.perf_counter() - t0
    records = load_corpus(args.corpus)
    report = evaluate(detector, records)

    print(f"corpus: {args.corpus} ({len(records)} texts)")
    print("\naccuracy on the six languages (right language, not flagged other)")
    print(f"{'':6}" + "".join(f"{b:>22}" for b in (*BANDS, "all", "confident")))
    for lang in (*LANGUAGES, "all"):
        rows = [r for r in report.six() if lang == "all" or r.record["label"] == lang]
        cells = []
        for b in BANDS:
            sub = [r for r in rows if band(r.detection.letters) == b]
            cells.append(_pct(sum(r.correct for r in sub), len(sub)))
        cells.append(_pct(sum(r.correct for r in rows), len(rows)))
        confident = sum(r.detection.confident and r.correct for r in rows)
        cells.append(_pct(confident, len(rows)))
        print(f"{lang:6}" + "".join(f"{c:>22}" for c in cells))
    twenty = report.six(min_letters=20)
    print(
        f"\n20+ letters: {_pct(sum(r.correct for r in twenty), len(twenty))}"
        f"   (confident: {_pct(sum(r.detection.confident for r in twenty), len(twenty))})"
    )

    by_source: dict[str, list[Result]] = defaultdict(list)
    for r in report.results:
        if r.record["label"] not in LANGUAGES:
            by_source[f"{r.record['label'] or 'null'}:{r.record['source']}"].append(r)
    print("\nother languages / no language (correct = flagged other / not confident)")
    for key in sorted(by_source):
        rows = by_source[key]
        print(f"  {key:14} {_pct(sum(r.correct for r in rows), len(rows))}")

    wrong = report.wrong_switches()
    print(
        f"\nwrong confident answers: {len(wrong)} (known errors of the policy: "
        f"{sum(bool(r.record.get('known_error')) for r in wrong)})"
    )
    for r in wrong:
        d = r.detection
        print(
            f"  {r.record['id']:12} {d.language} other={d.other} letters={d.letters} "
            f"{r.record['text'][:50]!r}  [{r.record.get('known_error', 'NOT KNOWN')}]"
        )
    if args.errors:
        print("\nall incorrect answers")
        for r in report.results:
            if not r.correct:
                d = r.detection
                print(
                    f"  {r.record['id']:12} label={r.record['label']} -> {d.language} "
                    f"confident={d.confident} other={d.other} letters={d.letters} "
                    f"{d.method} {r.record['text'][:50]!r}"
                )

    texts = [r["text"] for r in records]
    print(f"\nspeed (profiles loaded in {load:.2f} s)")
    for name, sample in (
        ("all texts", texts),
        (
            "Latin 20+ letters",
            [
                r.record["text"]
                for r in report.results
                if r.detection.method == "langdetect" and r.detection.letters >= 20
            ],
        ),
        ("100,000-char text", ["Biosafety training for laboratory staff. " * 2500]),
    ):
        n = 0
        t0 = time.perf_counter()
        for _ in range(args.repeat):
            for text in sample:
                detector.detect(text)
                n += 1
        elapsed = time.perf_counter() - t0
        print(f"  {name:18} {n / elapsed:8.0f} detections/s  ({1000 * elapsed / n:.2f} ms each)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
