"""A scripted respondent used by benchmarks and tests: one full questionnaire, one activity."""

from __future__ import annotations

# (kind, value): "text" lines are typed, "choice" lines are button presses with stable codes.
FULL_RUN_EN: list[tuple[str, str]] = [
    ("text", "Maria Lopez"), ("text", "maria@example.org"), ("text", "Ministry of Environment"),
    ("choice", "PARTY_GOV"), ("text", "Kenya"), ("choice", "YES"),
    ("text", "Workshop on risk assessment"), ("choice", "PROJECT"), ("text", "1, 3"),
    ("choice", "NATIONAL"), ("text", "Kenya, Uganda"), ("choice", "COMPLETED"),
    ("text", "2023-05"), ("text", "2023-11"), ("text", "3, 4"), ("choice", "TRAINING_WORKSHOP"),
    ("choice", "DONE"), ("text", "/skip"), ("text", "25"), ("text", "2, 3"),
    ("text", "15000 USD"), ("text", "Trained 25 risk assessors."), ("text", "/skip"),
    ("choice", "NO"), ("choice", "YES"), ("choice", "YES_SOME"), ("text", "1, 3"),
    ("text", "/skip"), ("text", "/skip"), ("choice", "YES"), ("choice", "YES"), ("text", "/skip"),
    ("choice", "SUBMIT"),
]
