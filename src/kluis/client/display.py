"""Text from other people, made safe to show: they choose every character of a message (and the
name is ours, but a script may set it), and a terminal obeys control characters."""

from __future__ import annotations

REPLACEMENT = "\ufffd"


def printable(text: str) -> str:
    """``text`` with control and format characters (escape sequences that could rewrite the screen
    or the window title, bidirectional overrides that reorder what is shown) replaced by U+FFFD;
    newlines and tabs stay."""
    return "".join(ch if ch in "\n\t" or (ch.isprintable() and ch != "\x7f") else REPLACEMENT for ch in text)


__all__ = ["printable"]
