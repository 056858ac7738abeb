"""The open conversation (right pane): its messages with delivery marks and live countdowns.

Rows are kept by message and updated in place, so the once-a-second tick that moves the countdowns
and drops expired messages does not rebuild the pane or lose the scroll position.
"""

from __future__ import annotations

from textual.containers import VerticalScroll
from textual.widgets import Static

from kluis.client.client import Message
from kluis.tui.format import message_line

RowKey = tuple[str, str]


def _key(message: Message) -> RowKey:
    return (message.direction, message.id)


class MessageRow(Static):
    """One message; re-rendered when its state changes and every second while its timer runs."""

    def __init__(self, message: Message, now: float) -> None:
        self.message = message
        line = message_line(message, now)
        self.plain = line.plain
        """The row as plain text (tests read it)."""
        super().__init__(line, classes=f"message {message.direction}")

    def show(self, message: Message, now: float) -> None:
        self.message = message
        line = message_line(message, now)
        if line.plain != self.plain:
            self.plain = line.plain
            self.update(line)


class ConversationView(VerticalScroll):
    """The messages of one conversation, oldest first, kept scrolled to the newest."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.rows: dict[RowKey, MessageRow] = {}

    async def clear(self) -> None:
        self.rows = {}
        await self.remove_children()

    async def show(self, messages: list[Message], now: float) -> None:
        """Brings the pane in line with ``messages`` (the SDK's history, oldest first)."""
        live = [m for m in messages if not _expired(m, now)]
        keys = {_key(m) for m in live}
        await self.remove_children([self.rows.pop(k) for k in list(self.rows) if k not in keys])
        new: list[MessageRow] = []
        for message in live:
            row = self.rows.get(_key(message))
            if row is None:
                row = MessageRow(message, now)
                self.rows[_key(message)] = row
                new.append(row)
            else:
                row.show(message, now)
        if new:
            # New messages always come last: the history is ordered by when they were stored.
            await self.mount_all(new)
            self.call_after_refresh(self.scroll_end, animate=False)

    async def tick(self, now: float) -> int:
        """Moves the countdowns and removes expired messages; returns how many were removed."""
        expired = [self.rows.pop(k) for k, row in list(self.rows.items()) if _expired(row.message, now)]
        await self.remove_children(expired)
        for row in self.rows.values():
            if row.message.expires_at is not None:
                row.show(row.message, now)
        return len(expired)

    @property
    def lines(self) -> list[str]:
        """Every row as plain text, oldest first (tests read it)."""
        return [row.plain for row in self.rows.values()]


def _expired(message: Message, now: float) -> bool:
    return message.expires_at is not None and message.expires_at <= now


__all__ = ["ConversationView", "MessageRow"]
