"""The daily cap of replies per address: a loop guard against mail robots and forged mail.

At most `cap` replies go to one address per UTC day. Mail shown to be its sender's and the
notices to mail that was not are counted on two budgets, so that forged mail can neither use
up a person's replies nor flood them. The database is the count: the email channel reloads
an address's counts from today's outbox rows (every process's) before it decides, so the cap
holds across restarts and replicas; the counts here are a cache of those rows. Two replicas
answering the same address in the same instant can each send one more.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime

UNVERIFIED = "unverified"  # payload["cap"] of replies counted on the unverified budget


class ReplyBudget:
    """Replies sent to each address this UTC day."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.day = datetime.now(UTC).date()
        self.counts: dict[str, int] = defaultdict(int)
        self.refused: set[str] = set()  # addresses told about in the log today

    def _roll(self) -> None:
        today = datetime.now(UTC).date()
        if today != self.day:
            self.day, self.counts, self.refused = today, defaultdict(int), set()

    def first_refusal(self, address: str) -> bool:
        """True the first time today that address is over the cap (log it once, not per mail)."""
        self._roll()
        if address in self.refused:
            return False
        self.refused.add(address)
        return True

    def allows(self, address: str) -> bool:
        self._roll()
        return self.counts.get(address, 0) < self.cap

    def muted(self, addresses: Iterable[str]) -> frozenset[str]:
        """Those of the addresses that may get no more replies today."""
        return frozenset(a for a in addresses if not self.allows(a))

    def spend(self, addresses: Iterable[str]) -> None:
        self._roll()
        for address in addresses:
            self.counts[address] += 1


def start_of_day() -> datetime:
    """The start of this UTC day: the budgets count outbox rows created since then."""
    return datetime.combine(datetime.now(UTC).date(), datetime.min.time(), UTC)


__all__ = ["UNVERIFIED", "ReplyBudget", "start_of_day"]
