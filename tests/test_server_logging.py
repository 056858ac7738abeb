"""Server logging: one redacted line per event; no access log."""

from __future__ import annotations

import base64
import io
import logging
import random
from collections.abc import Iterator

import pytest

from kluis.server.logging import REDACTED, configure_logging, redact

RNG = random.Random(20240601)  # fixed seed: the redaction heuristics are checked on the same blobs every run
SECRETS = [RNG.randbytes(n) for n in (16, 17, 24, 32, 48, 64) for _ in range(40)]


def encodings(blob: bytes) -> list[str]:
    return [
        blob.hex(),
        blob.hex().upper(),
        base64.b64encode(blob).decode(),
        base64.b64encode(blob).decode().rstrip("="),
        base64.urlsafe_b64encode(blob).decode().rstrip("="),
        base64.b32encode(blob).decode().rstrip("=").lower(),
        base64.b32encode(blob).decode().rstrip("="),
    ]


@pytest.mark.parametrize("blob", SECRETS[::10], ids=lambda b: f"{len(b)}B")
def test_blobs_of_16_bytes_or_more_are_redacted_in_every_encoding(blob: bytes) -> None:
    for text in encodings(blob):
        out = redact(f"account {text} sent")
        assert text not in out, text
        assert out == f"account {REDACTED} sent"


def test_no_blob_of_the_sample_escapes() -> None:
    escaped = [text for blob in SECRETS for text in encodings(blob) if text in redact(f"x={text}.")]
    assert escaped == []


def test_bytes_reprs_are_redacted() -> None:
    blob = bytes(range(200, 232))
    assert redact(f"KeyError: {blob!r}") == f"KeyError: b'{REDACTED}'"
    assert redact("got b'ok'") == "got b'ok'"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Error handling request from 203.0.113.7", "Error handling request from [ip]"),
        ("peer ::1 closed", "peer [ip] closed"),
        ("peer 2001:db8::42 closed", "peer [ip] closed"),
        ("peer fe80:0:0:0:1:2:3:4 closed", "peer [ip] closed"),
        ("listening on 127.0.0.1:8443", "listening on [ip]:8443"),
    ],
)
def test_ip_addresses_are_redacted(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "commit of 32 envelopes took 0.4 ms at 12:30:45",
        "File /work/main/src/kluis/server/storage/sqlite.py, line 120, in run_interaction",
        "aiohttp.ServerFingerprintMismatch: ServerDisconnectedError in handshake_timeout_exceeded",
        "ConnectionResetError: Cannot write to closing transport",
        "kluis 0.1.0 on Python 3.11.7 with aiohttp 3.14",
        "SQLite synchronous=NORMAL journal_mode=WAL",
        "max_envelopes_per_frame_exceeded_for_this_connection",
    ],
)
def test_ordinary_text_is_kept(text: str) -> None:
    assert redact(text) == text


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = configure_logging("DEBUG", stream)
    try:
        yield stream
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger("aiohttp.access").disabled = False


def test_configured_handler_redacts_args_and_tracebacks_in_one_line(captured: io.StringIO) -> None:
    token = bytes(range(32)).hex()
    log = logging.getLogger("kluis.server.test")
    log.info("account %s connected from %s", token, "198.51.100.9")
    try:
        raise KeyError(bytes(range(100, 132)))
    except KeyError:
        log.exception("lookup failed for %s", token)
    lines = captured.getvalue().splitlines()
    assert len(lines) == 2
    assert "INFO kluis.server.test: account [redacted] connected from [ip]" in lines[0]
    assert "Traceback" in lines[1]
    assert token not in captured.getvalue()
    assert "\\x64" not in captured.getvalue()


def test_other_libraries_records_are_redacted_too(captured: io.StringIO) -> None:
    logging.getLogger("aiohttp.server").error("Error handling request from %s", "192.0.2.1")
    assert "[ip]" in captured.getvalue()
    assert "192.0.2.1" not in captured.getvalue()


def test_access_log_is_disabled_and_level_applies(captured: io.StringIO) -> None:
    logging.getLogger("aiohttp.access").info('192.0.2.1 "GET /healthz" 200')
    assert captured.getvalue() == ""
    configure_logging("WARNING", captured)
    logging.getLogger("kluis").info("quiet")
    logging.getLogger("kluis").warning("loud")
    assert captured.getvalue().count("\n") == 1
    assert sum(h.get_name() == "kluis.server" for h in logging.getLogger().handlers) == 1
