"""Questionnaire definitions (YAML), shipped as package data."""
