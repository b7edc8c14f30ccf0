"""YAML loading for data files written by people: YAML 1.2 booleans, errors that name the file."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml


class DataFileError(Exception):
    """A questionnaire or locale file is missing, unreadable or invalid."""

    def __init__(self, path: Path | str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem


class _Loader(yaml.SafeLoader):
    """SafeLoader where only true/false are booleans, so option codes YES/NO/ON stay strings."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def load_yaml(path: Path) -> Any:
    """Read one YAML document; any failure becomes a DataFileError naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataFileError(path, "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataFileError(path, f"cannot read: {exc}") from None
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        raise DataFileError(path, f"invalid YAML: {exc}") from None
