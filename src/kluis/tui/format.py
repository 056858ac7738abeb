"""How messages and contacts read on screen: pure functions of SDK values and the time (no widgets)."""

from __future__ import annotations

import math
import time

from rich.text import Text

from kluis.client.client import ContactInfo, Message, MessageState
from kluis.client.display import printable
from kluis.client.durations import format_timer

STATE_MARKS: dict[MessageState, str] = {
    "queued": "…",
    "sent": "✓",
    "delivered": "✓✓",
    "failed": "✗",
    "received": "",
}
"""Our messages' delivery state: queued (not yet at the server), sent (stored by the server),
delivered (stored by the contact's device), failed (the server refused it, e.g. a revoked contact)."""

VERIFIED_MARK = "✓"
IDENTITY_CHANGED_MARK = "!"
REVOKED_MARK = "✗"


def countdown(seconds: float) -> str:
    """What is left of a timer, rounded up, in its two largest units: ``29s``, ``4m05s``, ``3d4h``."""
    left = max(0, math.ceil(seconds))
    if left < 60:
        return f"{left}s"
    if left < 3600:
        return f"{left // 60}m{left % 60:02d}s"
    if left < 86400:
        return f"{left // 3600}h{left % 3600 // 60:02d}m"
    return f"{left // 86400}d{left % 86400 // 3600}h"


def clock(timestamp: float, now: float) -> str:
    """``14:05`` for today, ``3 Mar 14:05`` for another day (local time)."""
    then, today = time.localtime(timestamp), time.localtime(now)
    if (then.tm_year, then.tm_yday) == (today.tm_year, today.tm_yday):
        return time.strftime("%H:%M", then)
    return f"{then.tm_mday} {time.strftime('%b %H:%M', then)}"


def timer_suffix(message: Message, now: float) -> str:
    """The live countdown (``29s``), the timer still to start for an unread message, or nothing."""
    if message.expires_at is not None:
        return countdown(message.expires_at - now)
    if message.timer:
        return f"{format_timer(message.timer)} once read"
    return ""


def message_line(message: Message, now: float) -> Text:
    """One message: time, who wrote it, the text, our delivery mark, the countdown."""
    line = Text()
    line.append(clock(message.sent_at, now), style="dim")
    line.append(" ")
    if message.kind == "timer":
        who = "You" if message.direction == "out" else message.contact
        line.append(f"{printable(who)} set {message.text}", style="italic dim")
    else:
        if message.direction == "out":
            line.append("You", style="bold green")
        else:
            line.append(printable(message.contact), style="bold cyan")
        line.append(": ")
        line.append(printable(message.text))
    mark = STATE_MARKS[message.state] if message.direction == "out" else ""
    if mark:
        line.append(f"  {mark}", style="bold red" if message.state == "failed" else "dim")
    suffix = timer_suffix(message, now)
    if suffix:
        line.append(f"  {suffix}", style="yellow")
    return line


def contact_prompt(info: ContactInfo, unread: int) -> Text:
    """A row of the conversation list: markers, the name, and the unread count."""
    line = Text()
    if info.revoked:
        line.append(f"{REVOKED_MARK} ", style="bold red")
    elif info.identity_changed:
        line.append(f"{IDENTITY_CHANGED_MARK} ", style="bold red")
    elif info.verified:
        line.append(f"{VERIFIED_MARK} ", style="bold green")
    else:
        line.append("  ")
    line.append(printable(info.name), style="strike dim" if info.revoked else "bold" if unread else "")
    if unread:
        line.append(f" ({unread})", style="bold yellow")
    return line


def conversation_title(info: ContactInfo) -> str:
    """The chat pane's title: the contact, its state in words, the conversation's timer."""
    if info.revoked:
        state = "REVOKED: messages can no longer reach it"
    elif info.identity_changed:
        state = "IDENTITY CHANGED: compare the safety number (F4)"
    elif info.verified:
        state = "verified"
    else:
        state = "not verified (F4)"
    return f"{info.name} · {state} · timer {format_timer(info.timer)}"


__all__ = [
    "STATE_MARKS",
    "clock",
    "contact_prompt",
    "conversation_title",
    "countdown",
    "message_line",
    "timer_suffix",
]
