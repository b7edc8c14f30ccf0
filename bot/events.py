"""Typed engine events: what a turn did, with the JSON shapes the audit log has always stored.

Every event is a frozen dataclass with `to_json()` (exactly the dict the service persists)
and `Event.from_json()` (the way back). For the code that still reads events as dicts
(`ev["type"]`, `"data": ev`), each event is also a read-only dict of its JSON; that bridge
goes once every consumer calls `to_json()`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar


class Event(dict):
    """Base of the typed events; `type` is the JSON tag."""

    type: ClassVar[str]
    _json_names: ClassVar[dict[str, str]] = {}  # field -> JSON key, where they differ
    _by_type: ClassVar[dict[str, type[Event]]] = {}

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if "type" in cls.__dict__:
            Event._by_type[cls.type] = cls

    def __post_init__(self) -> None:
        dict.update(self, self.to_json())

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            out[self._json_names.get(f.name, f.name)] = getattr(self, f.name)
        return out

    @staticmethod
    def from_json(data: dict[str, Any]) -> Event:
        cls = Event._by_type[data["type"]]
        names = {v: k for k, v in cls._json_names.items()}
        return cls(**{names.get(k, k): v for k, v in data.items() if k != "type"})

    def _readonly(self, *args: Any, **kw: Any) -> None:
        raise TypeError(f"{type(self).__name__} events are immutable")

    __setitem__ = __delitem__ = update = pop = popitem = clear = setdefault = _readonly  # type: ignore[assignment]
    __hash__ = None  # type: ignore[assignment]


_event = dataclass(frozen=True, eq=False)


@_event
class AnswerRecorded(Event):
    type: ClassVar[str] = "answer"
    slot: str
    question: str
    repeat: int | None
    value: Any


@_event
class AnswerRemoved(Event):
    """An answer dropped at submission because its question no longer applies."""

    type: ClassVar[str] = "answer_removed"
    slot: str
    question: str
    repeat: int | None


@_event
class Started(Event):
    type: ClassVar[str] = "started"
    language: str | None


@_event
class LanguageChanged(Event):
    type: ClassVar[str] = "language"
    language: str
    explicit: bool


@_event
class Submitted(Event):
    type: ClassVar[str] = "submitted"
    ref: str
    version: int


@_event
class Amended(Event):
    """A submitted report reopened as a new version."""

    type: ClassVar[str] = "amend"
    ref: str
    version: int


@_event
class Cancelled(Event):
    type: ClassVar[str] = "cancelled"


@_event
class Resumed(Event):
    type: ClassVar[str] = "resumed"


@_event
class Invalid(Event):
    """An answer refused by its question's validation (reason: the catalog key)."""

    type: ClassVar[str] = "invalid"
    slot: str
    reason: str


@_event
class Stale(Event):
    """A button pressed under an earlier question."""

    type: ClassVar[str] = "stale"
    _json_names: ClassVar[dict[str, str]] = {"for_slot": "for"}
    pressed: str | None
    for_slot: str | None


@_event
class Delegated(Event):
    """Someone other than the report's owner answered for them (email)."""

    type: ClassVar[str] = "delegate"
    address: str
    ref: str


@_event
class OptedOut(Event):
    """The respondent asked for no more messages from us (reminders); /start undoes it."""

    type: ClassVar[str] = "opted_out"


@_event
class EmailRequested(Event):
    """The respondent asked, from chat, for the remaining questions by email at `address`."""

    type: ClassVar[str] = "email_requested"
    address: str


__all__ = ["Amended", "AnswerRecorded", "AnswerRemoved", "Cancelled", "Delegated",
           "EmailRequested", "Event", "Invalid", "LanguageChanged", "OptedOut", "Resumed",
           "Stale", "Started", "Submitted"]
