"""Server configuration: defaults, TOML file, environment, command line, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from kluis.server.config import (
    ENV_PREFIX,
    LARGEST_ENVELOPE,
    ConfigError,
    ServerConfig,
    derived_frame_bytes,
    load_config,
)

DATA = Path(__file__).parent / "data" / "server_config"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)


def load(config_file: Path | None = None, **overrides: object) -> ServerConfig:
    return load_config(config_file, {"data_dir": Path("/srv/kluis"), **overrides})


def test_defaults() -> None:
    config = load()
    assert (config.host, config.port) == ("127.0.0.1", 8443)
    assert config.insecure_loopback is False
    assert config.fsync is False
    assert config.retention_days == 7
    assert config.max_envelope_bytes == 140_000
    assert config.max_envelopes_per_frame == 32
    assert config.max_frame_bytes == derived_frame_bytes(140_000, 32)
    assert config.send_burst >= config.max_envelopes_per_frame


def test_largest_envelope_matches_the_protocol() -> None:
    assert LARGEST_ENVELOPE == 132_213


def test_every_field_has_a_docstring() -> None:
    for name, field in ServerConfig.model_fields.items():
        assert field.description, name


def test_precedence_file_then_environment_then_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load(DATA / "good.toml").retention_days == 3
    monkeypatch.setenv("KLUIS_SERVER_RETENTION_DAYS", "5")
    config = load(DATA / "good.toml")
    assert (config.retention_days, config.port, config.fsync) == (5, 9000, True)
    assert load(DATA / "good.toml", retention_days=9).retention_days == 9


def test_environment_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KLUIS_SERVER_FSYNC", "true")
    monkeypatch.setenv("KLUIS_SERVER_DATA_DIR", "/var/lib/kluis")
    config = load_config(None, {})
    assert config.fsync is True
    assert config.data_dir == Path("/var/lib/kluis")


def test_max_frame_bytes_set_by_hand_is_bounded() -> None:
    assert load(max_frame_bytes=1_000_000).max_frame_bytes == 1_000_000
    with pytest.raises(ConfigError, match="max_frame_bytes must be at least"):
        load(max_frame_bytes=1000)
    with pytest.raises(ConfigError, match="max_frame_bytes"):
        load(max_frame_bytes=1 << 30)


def test_config_is_immutable() -> None:
    config = load()
    with pytest.raises(ValueError, match="frozen"):
        config.port = 1


@pytest.mark.parametrize(
    ("config_file", "overrides", "message"),
    [
        ("missing.toml", {}, "cannot read config file"),
        ("not_toml.toml", {}, "is not valid TOML"),
        ("unknown_key.toml", {}, "unknown setting(s): retenton_days"),
        ("out_of_range.toml", {}, "invalid configuration: port: Input should be less than or equal to 65535"),
        (None, {"max_envelope_bytes": 100_000}, "max_envelope_bytes: Input should be greater than or equal"),
        (None, {"send_burst": 4}, "send_burst must be at least max_envelopes_per_frame"),
        (None, {"retention_days": 0}, "retention_days"),
        (None, {"log_level": "LOUD"}, "log_level"),
        (None, {"sqlite_cache_mib": 0}, "sqlite_cache_mib: Input should be greater than or equal to 1"),
        (None, {"sqlite_cache_mib": "lots"}, "sqlite_cache_mib"),
        (None, {"receipt_wait_s": -0.01}, "receipt_wait_s: Input should be greater than or equal to 0"),
        (None, {"receipt_wait_s": 60}, "receipt_wait_s: Input should be less than or equal to 10"),
        (None, {"no_such": 1}, "unknown setting(s): no_such"),
    ],
)
def test_errors_are_one_line(config_file: str | None, overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(DATA / config_file if config_file else None, **overrides)
    text = str(caught.value)
    assert message in text
    assert "\n" not in text
    assert "pydantic.dev" not in text


def test_unknown_environment_variable_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KLUIS_SERVER_RETENTON_DAYS", "3")
    with pytest.raises(ConfigError, match="KLUIS_SERVER_RETENTON_DAYS"):
        load()


def test_bad_environment_value_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KLUIS_SERVER_PORT", "eighty")
    with pytest.raises(ConfigError, match=r"^invalid configuration: port: ") as caught:
        load()
    assert "\n" not in str(caught.value)


def test_data_dir_is_required() -> None:
    with pytest.raises(ConfigError, match="data_dir: Field required"):
        load_config(None, {})
