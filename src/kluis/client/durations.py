"""Disappearing-timer durations as people type and read them: ``off``, ``30s``, ``5m``, ``1h30m``, ``4w``."""

from __future__ import annotations

import re

from kluis.client.content import MAX_TIMER, MIN_TIMER

DEFAULT_TIMER = 30
"""Seconds; new conversations disappear by default, so forgetting to turn it on leaves nothing behind."""

_UNITS = (("w", 7 * 86400), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
# Units in descending order, each at most once; ASCII digits only (``\d`` and ``int()`` would also
# take other scripts' digits and underscores).
_DURATION = re.compile(r"(?:([0-9]+)w)?(?:([0-9]+)d)?(?:([0-9]+)h)?(?:([0-9]+)m)?(?:([0-9]+)s)?", re.ASCII)
_BARE = re.compile(r"[0-9]+", re.ASCII)
# "4w" spelled in seconds is 7 digits; anything much longer is a typo, and bounding the input keeps
# int() away from huge digit strings.
_MAX_INPUT = 32
_RANGE = "use 'off' or a duration from 5s to 4w, e.g. 30s, 5m, 2h, 1d, 1h30m"


def parse_timer(text: str) -> int:
    """The timer in seconds (0 = off) for ``text``, case-insensitive, spaces ignored.

    Accepts ``off``, a bare number of seconds, or numbers with units w/d/h/m/s in that order
    (``1h30m``). The result is 0 or MIN_TIMER..MAX_TIMER; a duration of zero (``0``, ``0s``) is off.

    Raises:
        ValueError: unparseable, or a duration outside 5s..4w; the message names the allowed range.
    """
    compact = "".join(text.split()).lower()
    if compact == "off":
        return 0
    if not compact or len(compact) > _MAX_INPUT:
        raise ValueError(f"cannot read the timer: {_RANGE}")
    if _BARE.fullmatch(compact):
        seconds = int(compact)
    else:
        match = _DURATION.fullmatch(compact)
        if match is None or not any(match.groups()):
            raise ValueError(f"cannot read the timer: {_RANGE}")
        seconds = sum(
            int(value) * factor
            for value, (_, factor) in zip(match.groups(), _UNITS, strict=True)
            if value is not None
        )
    if seconds != 0 and not MIN_TIMER <= seconds <= MAX_TIMER:
        raise ValueError(f"timer out of range: {_RANGE}")
    return seconds


def format_timer(seconds: int) -> str:
    """``off`` for 0, else the exact duration with the largest units first (``1h30m``, ``4w``, ``45s``).

    Raises:
        ValueError: ``seconds`` is negative.
    """
    if seconds < 0:
        raise ValueError("a timer is never negative")
    if seconds == 0:
        return "off"
    parts = []
    rest = seconds
    for unit, factor in _UNITS:
        count, rest = divmod(rest, factor)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


__all__ = ["DEFAULT_TIMER", "format_timer", "parse_timer"]
