"""Server logging: one line per event on stderr, nothing that identifies anyone.

What the server never logs: account ids, keys, delivery tokens, activation codes, envelope ids or
contents, IP addresses. The code logs events and counts, not values; as defence in depth, the
:class:`RedactingFilter` on the handler rewrites anything that still looks like one of those:

- a run of 32 or more hex digits (16 bytes or more) -> ``[redacted]``;
- a base64 or base64url run of 22 characters or more (16 bytes or more) that looks random (mixed case
  with digits, or a balanced mix of upper and lower case, or ``+``/``=``), and a run of letters and
  digits in one case (base32) of that length -> ``[redacted]``; words, ``snake_case``, paths and
  ``CamelCaseNames`` stay;
- a ``bytes`` repr of 16 characters or more (``b'\\x8f...'``, as tracebacks print keys) -> ``b'[redacted]'``;
- IPv4 and IPv6 addresses -> ``[ip]`` (aiohttp logs "Error handling request from <address>").

aiohttp's access log (one line per request with the client's address) is switched off twice: the app
runner is built with ``access_log=None`` (the runner's job) and :func:`configure_logging` disables the
``aiohttp.access`` logger.

This module is ``kluis.server.logging``; with absolute imports (the only kind this project uses), its
own ``import logging`` is the standard library's.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Final, TextIO

REDACTED: Final = "[redacted]"
REDACTED_IP: Final = "[ip]"
FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LINE_BREAK: Final = " | "

_BYTES_REPR = re.compile(r"""b'(?:[^'\\]|\\.){16,}'|b"(?:[^"\\]|\\.){16,}\"""")
_HEX = re.compile(r"(?<![0-9A-Za-z])(?:0x)?[0-9A-Fa-f]{32,}(?![0-9A-Za-z])")
_TOKEN = re.compile(r"(?<![A-Za-z0-9+/_-])[A-Za-z0-9+/_-]{22,}={0,2}")
_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")


def _looks_random(token: str) -> bool:
    """A base64/base64url/base32 run that is more likely a key, token or id than a word or a path."""
    upper = sum(c.isupper() for c in token)
    lower = sum(c.islower() for c in token)
    digits = sum(c.isdigit() for c in token)
    if token.endswith("=") or "+" in token:
        return True
    if upper and lower:
        # Random base64 is about half upper case; CamelCaseIdentifiers have few capitals and no digits.
        return digits > 0 or 0.25 <= upper / (upper + lower) <= 0.75
    # One case, letters and digits only (base32): no word is that long; snake_case and paths have _ or /.
    return token.isalnum()


def _token(match: re.Match[str]) -> str:
    return REDACTED if _looks_random(match.group()) else match.group()


def _ipv6(match: re.Match[str]) -> str:
    text = match.group()
    return REDACTED_IP if "::" in text or text.count(":") == 7 else text


def redact(text: str) -> str:
    """``text`` with long hex/base64 blobs, long bytes reprs and IP addresses replaced."""
    text = _BYTES_REPR.sub(f"b'{REDACTED}'", text)
    text = _HEX.sub(REDACTED, text)
    text = _TOKEN.sub(_token, text)
    text = _IPV4.sub(REDACTED_IP, text)
    return _IPV6.sub(_ipv6, text)


class RedactingFilter(logging.Filter):
    """Rewrites each record's message, traceback and stack with :func:`redact`; drops nothing.

    Attach it to a handler (not a logger), so it also sees records propagated from other libraries.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


class OneLineFormatter(logging.Formatter):
    """One event, one line: line breaks (in tracebacks, say) become ``" | "``."""

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\r\n", "\n").replace("\n", LINE_BREAK)


_HANDLER_NAME: Final = "kluis.server"


def configure_logging(level: str = "INFO", stream: TextIO | None = None) -> logging.Handler:
    """Send all logging to ``stream`` (stderr) at ``level``, one redacted line per event.

    Replaces a handler installed by an earlier call (tests, restarts in one process) and leaves
    handlers of others alone. Returns the handler.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler.get_name() == _HANDLER_NAME:
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(OneLineFormatter(FORMAT))
    handler.addFilter(RedactingFilter())
    root.addHandler(handler)
    root.setLevel(level)
    # One line per request with the client's address: never, even if a runner forgets access_log=None.
    logging.getLogger("aiohttp.access").disabled = True
    return handler
