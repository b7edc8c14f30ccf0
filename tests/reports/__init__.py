"""Tests of the reports package (export, statistics) and the questionnaire roles it reads."""
