"""Accuracy and speed of bot.language on the corpus: python -m benchmarks.language_accuracy."""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from bot.language import LANGUAGES, LanguageDetector
from testkit.language_accuracy import BANDS, CORPUS, Result, band, evaluate, load_corpus


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
