"""The server-wide bound on envelope bytes received and not yet durable.

Each connection already bounds its own frames in flight (``max_in_flight``), but a count of frames
is not a count of bytes: a few senders of large envelopes, faster than the disk, would otherwise have
the server hold everything they sent until it is written. Past the budget, connections with a frame to
store stop reading (their clients feel TCP's push-back) until stores finish and give bytes back.
"""

from __future__ import annotations

import asyncio


class UnstoredBudget:
    """Bytes taken by frames handed to storage and not yet answered, against a limit."""

    __slots__ = ("_waiters", "limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._waiters: list[asyncio.Future[None]] = []

    @property
    def full(self) -> bool:
        return self.used >= self.limit

    def take(self, size: int) -> None:
        """Counts a frame being stored; it may pass the limit (one frame is always admitted, so a
        frame larger than the whole budget still gets through when the budget is empty)."""
        self.used += size

    def give(self, size: int) -> None:
        """A frame is answered: its bytes come back; everyone waiting for room is woken (each
        checks again, so no wake-up is lost and none holds the others up)."""
        self.used -= size
        if self._waiters and self.used < self.limit:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def wait(self, room: asyncio.Future[None]) -> None:
        """Resolves ``room`` once the budget has room again."""
        self._waiters.append(room)


__all__ = ["UnstoredBudget"]
