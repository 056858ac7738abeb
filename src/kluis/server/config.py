"""Relay server configuration: one pydantic-settings model, every field documented (STYLE.md §4).

Values come from four places; a later one overrides an earlier one:

1. the defaults below;
2. a TOML file (``kluis server --config FILE``), keys named like the fields;
3. environment variables ``KLUIS_SERVER_<FIELD>`` (e.g. ``KLUIS_SERVER_RETENTION_DAYS=3``);
4. command-line options (``--data``, ``--database``, ``--listen``, ``--fsync`` ...), passed to
   :func:`load_config`.

Unknown keys, in the file or as ``KLUIS_SERVER_*`` variables, are errors rather than silently ignored:
a misspelt ``retenton_days`` would otherwise keep messages longer than the operator meant. Every
problem surfaces as one :class:`ConfigError` whose message is a single line.

docs/OPERATING.md carries a table generated from these fields (``tests/test_server_docs.py`` checks that
it matches), so a field's docstring is its documentation.
"""

from __future__ import annotations

import contextvars
import math
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from kluis.protocol.envelope import ENC_LEN, HEADER_LEN, TAG_LEN
from kluis.protocol.padding import ENVELOPE_MAX_BUCKET

ENV_PREFIX = "KLUIS_SERVER_"

LARGEST_ENVELOPE = HEADER_LEN + ENC_LEN + ENVELOPE_MAX_BUCKET + TAG_LEN
"""The largest sealed envelope the protocol produces (132,213 bytes): the 128 KiB padding bucket plus
the HPKE encapsulation, tag and header. ``max_envelope_bytes`` may not be set below it."""

FRAME_OVERHEAD_PER_ENVELOPE = 1024
"""Room per envelope in a frame for what travels beside it (recipient mailbox, delivery token, id)."""
FRAME_OVERHEAD = 4096
"""Room per frame for its own header."""
MAX_FRAME_BYTES_LIMIT = 64 * 1024 * 1024
"""No frame may be larger than this, whatever the configuration: it bounds what one read allocates."""

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]

# The TOML file's values for the model being built: a source below the environment (see
# ServerConfig.settings_customise_sources). A context variable rather than a class attribute, so two
# configurations loaded concurrently (tests) cannot see each other's file.
_FILE_VALUES: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "_FILE_VALUES", default=None
)


class ConfigError(Exception):
    """The configuration is unusable; the message is one line meant for the operator."""


def derived_frame_bytes(max_envelope_bytes: int, max_envelopes_per_frame: int) -> int:
    """The frame limit that fits ``max_envelopes_per_frame`` envelopes of the largest allowed size.

    Each envelope is counted as if base64-encoded (4/3 of its size), so the bound holds whether the
    frames carry envelopes as binary or as text, plus fixed room per envelope and per frame.
    """
    per_envelope = math.ceil(max_envelope_bytes * 4 / 3) + FRAME_OVERHEAD_PER_ENVELOPE
    return max_envelopes_per_frame * per_envelope + FRAME_OVERHEAD


class ServerConfig(BaseSettings):
    """Everything ``kluis server`` can be told. Durations are in seconds, sizes in bytes."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=True,
        validate_default=True,
    )

    data_dir: Path
    """Directory holding the database and the TLS key (``tls/``). Created on first start (mode 0700)."""

    database: str = ""
    """Where the relay stores accounts, keys and mailboxes: empty for SQLite in the data directory
    (``kluis.db``), or a PostgreSQL URL, ``postgresql://USER@HOST:PORT/DBNAME`` (libpq's syntax, e.g.
    ``?sslmode=verify-full``; keep passwords in ``~/.pgpass`` or ``PGPASSWORD`` rather than here). The
    data directory still holds the TLS key and the send-pass secret. See "PostgreSQL" below."""

    redis: str = ""
    """Redis URL (``redis://HOST:PORT/DB``, ``rediss://`` for TLS, ``unix:///PATH``) for fan-out between
    relay nodes: with it, several ``kluis server`` processes on one PostgreSQL ``database`` form one
    service (a recipient connected to one node gets envelopes accepted by another at once). Needs a
    PostgreSQL ``database``. Redis holds presence entries and transient notices only. See "Several
    nodes" below."""

    host: str = "127.0.0.1"
    """Address to listen on (an IP address or a name). ``--listen HOST:PORT`` sets host and port."""

    port: int = Field(default=8443, ge=0, le=65535)
    """TCP port to listen on; 0 picks a free port (tests)."""

    insecure_loopback: bool = False
    """Serve plain WebSocket without TLS, for tests only: refused unless the listen address is loopback."""

    log_level: LogLevel = "INFO"
    """Least severe log level written to stderr: DEBUG, INFO, WARNING or ERROR."""

    fsync: bool = False
    """False: commits survive a crash of the process (SQLite WAL, synchronous=NORMAL). True: they also
    survive power loss (synchronous=FULL, an fsync per commit), at some latency cost."""

    sqlite_cache_mib: int = Field(default=128, ge=1, le=65_536)
    """SQLite's page cache in MiB (taken only as pages are touched). Too small, and a relay with many
    connected mailboxes reads its account and mailbox pages back from the OS for every envelope."""

    receipt_wait_s: float = Field(default=0.05, ge=0, le=10)
    """SQLite: how long an envelope pushed to its connected recipient before it is written waits for
    that recipient's receipt. Receipted in time, it is never written to disk (and its sender is
    acknowledged without a commit); otherwise it is written then. Its sender's acknowledgement waits
    that long at most. 0: written at once (acknowledged after the commit), though still pushed first."""

    retention_days: int = Field(default=7, ge=1, le=365)
    """Days an undelivered envelope waits in a mailbox before it expires and is deleted."""

    max_envelope_bytes: int = Field(default=140_000, ge=LARGEST_ENVELOPE, le=1024 * 1024)
    """Largest envelope accepted. At least 132,213 bytes, the largest sealed envelope the protocol makes."""

    max_envelopes_per_frame: int = Field(default=32, ge=1, le=256)
    """Most envelopes one send frame may carry (several per frame is what makes sending cheap)."""

    max_frame_bytes: int = Field(default=0, ge=0, le=MAX_FRAME_BYTES_LIMIT)
    """Largest WebSocket message accepted. 0 derives it from the two limits above (about 6 MB by
    default); a value set by hand must leave room for one largest envelope and at most 64 MiB."""

    send_rate_per_s: float = Field(default=5000.0, gt=0, le=10_000_000)
    """Envelopes per second a connection may send over time (token bucket refill rate)."""

    send_burst: int = Field(default=10_000, ge=1, le=10_000_000)
    """Envelopes a connection may send at once (token bucket size); at least one full frame."""

    max_in_flight: int = Field(default=1024, ge=1, le=1_000_000)
    """SEND frames a connection may have unanswered (received, not yet durable). Beyond it the server
    stops reading from that connection. (What is pushed to a mailbox and not yet receipted has a
    window of its own: 512 envelopes or 8 MiB.)"""

    max_unstored_mib: int = Field(default=32, ge=1, le=65_536)
    """Envelope bytes the server holds received and not yet durable, over all connections. Beyond it,
    connections with envelopes to store stop being read until stores finish (max_in_flight bounds
    counts, not bytes: a few senders of large envelopes, faster than the disk, would otherwise be
    held in memory whole)."""

    idle_timeout_s: float = Field(default=120.0, gt=0, le=86_400)
    """A connection that sends no frame for this long is closed."""

    handshake_timeout_s: float = Field(default=10.0, gt=0, le=600)
    """A connection must finish the WebSocket upgrade and its hello or authentication within this."""

    write_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    """A client that leaves the server's send buffer full (over 256 KiB unread) for longer than this
    (it stopped reading) is cut off."""

    heartbeat_s: float = Field(default=30.0, gt=0, le=3600)
    """Heartbeat of mailbox streams: one silent for this long is pinged, and one that answers neither
    the ping nor anything else by the next beat (so within twice this) is disconnected."""

    max_connections: int = Field(default=10_000, ge=1, le=1_000_000)
    """Most simultaneous WebSocket connections; more are refused. Keep it below the open-file limit."""

    prekey_low_watermark: int = Field(default=10, ge=0, le=10_000)
    """When an account's stock of one-time prekeys falls below this, it is told to upload more."""

    shutdown_grace_s: float = Field(default=10.0, ge=0, le=600)
    """On SIGTERM/SIGINT: time allowed for in-flight work to finish before connections are cut."""

    @field_validator("database")
    @classmethod
    def _database_url(cls, value: str) -> str:
        # The message never repeats the value: a URL may carry a password.
        if value and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be empty (SQLite in the data directory) or a postgresql:// URL")
        return value

    @field_validator("redis")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be empty or a redis://, rediss:// or unix:// URL")
        return value

    @model_validator(mode="after")
    def _redis_needs_a_shared_database(self) -> ServerConfig:
        if self.redis and not self.database:
            # SQLite lives in one node's data directory: a second node could not share it.
            raise ValueError(
                "redis needs a PostgreSQL database (--database postgresql://...) shared by the nodes"
            )
        return self

    @model_validator(mode="after")
    def _limits_fit_together(self) -> ServerConfig:
        one_envelope = derived_frame_bytes(self.max_envelope_bytes, 1)
        if self.max_frame_bytes == 0:
            derived = derived_frame_bytes(self.max_envelope_bytes, self.max_envelopes_per_frame)
            # frozen=True: the model is immutable once built, so the derived value goes in here.
            object.__setattr__(self, "max_frame_bytes", min(derived, MAX_FRAME_BYTES_LIMIT))
        elif self.max_frame_bytes < one_envelope:
            raise ValueError(
                f"max_frame_bytes must be at least {one_envelope} (one envelope of max_envelope_bytes)"
            )
        if self.send_burst < self.max_envelopes_per_frame:
            raise ValueError("send_burst must be at least max_envelopes_per_frame, or no full frame passes")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # First wins: command line, then environment, then the TOML file. No .env or secrets dir.
        return init_settings, env_settings, InitSettingsSource(settings_cls, _FILE_VALUES.get() or {})


FIELD_NAMES = frozenset(ServerConfig.model_fields)


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            values = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    unknown = sorted(set(values) - FIELD_NAMES)
    if unknown:
        raise ConfigError(f"config file {path}: unknown setting(s): {', '.join(unknown)}")
    return values


def _check_environment() -> None:
    unknown = sorted(
        name
        for name in os.environ
        if name.upper().startswith(ENV_PREFIX) and name[len(ENV_PREFIX) :].lower() not in FIELD_NAMES
    )
    if unknown:
        raise ConfigError(f"unknown environment variable(s): {', '.join(unknown)}")


def _one_line(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(part) for part in error["loc"]) or "configuration"
        message = error["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}")
    return "invalid configuration: " + "; ".join(parts)


def load_config(config_file: Path | None, overrides: dict[str, object]) -> ServerConfig:
    """Build the server configuration from defaults, ``config_file``, the environment and ``overrides``.

    Args:
        config_file: a TOML file whose top-level keys are field names, or None.
        overrides: values from the command line (field name -> value); they win over everything.
            Pass only options the user actually gave, so the environment and the file still apply.

    Raises:
        ConfigError: the file is missing or malformed, a key or ``KLUIS_SERVER_*`` variable is unknown,
            or a value is out of range. The message is one line.
    """
    file_values = _read_file(config_file) if config_file is not None else {}
    _check_environment()
    unknown = sorted(set(overrides) - FIELD_NAMES)
    if unknown:
        # A caller bug rather than an operator mistake, but reported the same way.
        raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")
    token = _FILE_VALUES.set(file_values)
    try:
        return ServerConfig(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from None
    finally:
        _FILE_VALUES.reset(token)


def _default_text(name: str) -> str:
    field = ServerConfig.model_fields[name]
    if field.is_required():
        return "(required)"
    value = field.default
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def markdown_table() -> str:
    """The configuration reference of docs/OPERATING.md, generated from the fields (a test compares)."""
    rows = [
        "| setting (TOML key) | environment variable | default | meaning |",
        "| --- | --- | --- | --- |",
    ]
    for name, field in ServerConfig.model_fields.items():
        description = " ".join((field.description or "").split()).replace("|", "\\|")
        rows.append(f"| `{name}` | `{ENV_PREFIX}{name.upper()}` | `{_default_text(name)}` | {description} |")
    return "\n".join(rows)


if __name__ == "__main__":  # python -m kluis.server.config > table: regenerate the docs table
    print(markdown_table())
