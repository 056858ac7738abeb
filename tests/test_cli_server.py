"""``kluis server``: options, configuration precedence, the startup line, one-line errors.

The relay itself (kluis.server.runner) is replaced by a recording stand-in: these tests check the
command, not the server.
"""

from __future__ import annotations

import os
import stat
import sys
import types
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from kluis.cli.main import cli
from kluis.cli.server import parse_listen
from kluis.server.config import ENV_PREFIX, ServerConfig
from kluis.server.tls import TlsSetupError, certificate_fingerprint

Behaviour = Callable[[ServerConfig, Callable[[str, str | None], None]], None]


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch) -> list[ServerConfig]:
    """Stand in for kluis.server.runner; returns the configs it was run with."""
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    seen: list[ServerConfig] = []
    fake = types.ModuleType("kluis.server.runner")

    def run(config: ServerConfig, on_ready: Callable[[str, str | None], None]) -> None:
        seen.append(config)
        behaviour = getattr(fake, "behaviour", None)
        if behaviour is not None:
            behaviour(config, on_ready)

    fake.run = run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "kluis.server.runner", fake)
    return seen


def set_behaviour(behaviour: Behaviour) -> None:
    sys.modules["kluis.server.runner"].behaviour = behaviour  # type: ignore[attr-defined]


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, ["server", *args], env=env)


def test_help_lists_the_options() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    for option in ("--data", "--listen", "--insecure-loopback", "--config", "--fsync"):
        assert option in result.output


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8443", ("127.0.0.1", 8443)),
        ("[::1]:8443", ("::1", 8443)),
        ("localhost:0", ("localhost", 0)),
        ("[::]:443", ("::", 443)),
    ],
)
def test_parse_listen(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize(
    "text", ["8443", ":8443", "::1:8443", "[::1]8443", "[::1]", "host:port", "host:-1", "[]:1"]
)
def test_parse_listen_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"HOST:PORT|\[ADDRESS\]:PORT|host is empty|port must be"):
        parse_listen(text)


def test_starts_with_defaults_and_announces_url_and_fingerprint(
    tmp_path: Path, runs: list[ServerConfig]
) -> None:
    def behaviour(config: ServerConfig, on_ready: Callable[[str, str | None], None]) -> None:
        on_ready(f"wss://{config.host}:{config.port}", certificate_fingerprint(config.data_dir))

    set_behaviour(behaviour)
    data = tmp_path / "data"
    result = invoke("--data", str(data))
    assert result.exit_code == 0, result.output
    [config] = runs
    assert (config.data_dir, config.host, config.port, config.fsync) == (data, "127.0.0.1", 8443, False)
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert result.stdout == ""
    assert result.stderr == (
        f"kluis relay listening on wss://127.0.0.1:8443 fingerprint {certificate_fingerprint(data)}\n"
    )


def test_options_override_file_and_environment(tmp_path: Path, runs: list[ServerConfig]) -> None:
    config_file = tmp_path / "server.toml"
    config_file.write_text('host = "127.0.0.2"\nport = 9000\nfsync = true\nretention_days = 2\n')
    env = {"KLUIS_SERVER_RETENTION_DAYS": "3", "KLUIS_SERVER_PORT": "9001"}
    assert invoke("--data", str(tmp_path), "--config", str(config_file), env=env).exit_code == 0
    assert (runs[-1].host, runs[-1].port, runs[-1].fsync, runs[-1].retention_days) == (
        "127.0.0.2",
        9001,
        True,
        3,
    )
    args = ("--data", str(tmp_path), "--config", str(config_file), "--listen", "[::1]:0", "--no-fsync")
    assert invoke(*args, env=env).exit_code == 0
    assert (runs[-1].host, runs[-1].port, runs[-1].fsync) == ("::1", 0, False)


def test_insecure_loopback_mode_is_announced(tmp_path: Path, runs: list[ServerConfig]) -> None:
    set_behaviour(lambda config, on_ready: on_ready(f"ws://localhost:{config.port}", None))
    result = invoke("--data", str(tmp_path), "--insecure-loopback", "--listen", "localhost:0")
    assert result.exit_code == 0, result.output
    assert runs[0].insecure_loopback is True
    assert result.stderr == "kluis relay listening on ws://localhost:0 (insecure, loopback only: tests)\n"


def one_line_error(result: Result) -> str:
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    return lines[0]


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (("--insecure-loopback", "--listen", "0.0.0.0:8080"), {}, "only on a loopback address"),
        (("--insecure-loopback", "--listen", "10.0.0.1:8080"), {}, "only on a loopback address"),
        (("--listen", "127.0.0.1:70000"), {}, "port: Input should be less than or equal to 65535"),
        ((), {"KLUIS_SERVER_RETENTION_DAYS": "0"}, "retention_days"),
        ((), {"KLUIS_SERVER_INSECURE_LOOPBACK": "1", "KLUIS_SERVER_HOST": "0.0.0.0"}, "loopback"),
        ((), {"KLUIS_SERVER_NOPE": "1"}, "unknown environment variable(s): KLUIS_SERVER_NOPE"),
        (("--config", "/nonexistent/server.toml"), {}, "cannot read config file"),
    ],
)
def test_bad_settings_are_one_line_errors(
    tmp_path: Path, runs: list[ServerConfig], args: tuple[str, ...], env: dict[str, str], message: str
) -> None:
    line = one_line_error(invoke("--data", str(tmp_path), *args, env=env))
    assert message in line
    assert runs == []


def test_bad_listen_is_a_usage_error(tmp_path: Path, runs: list[ServerConfig]) -> None:
    result = invoke("--data", str(tmp_path), "--listen", "::1:8443")
    assert result.exit_code == 2
    assert "[ADDRESS]:PORT" in result.stderr
    assert runs == []


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (TlsSetupError("tls/key.pem is readable by other users; chmod 600 it"), "chmod 600"),
        (OSError(98, "Address already in use"), "cannot serve on 127.0.0.1:8443: Address already in use"),
    ],
)
def test_startup_failures_are_one_line_errors(
    tmp_path: Path, runs: list[ServerConfig], error: Exception, message: str
) -> None:
    def behaviour(config: ServerConfig, on_ready: Callable[[str, str | None], None]) -> None:
        raise error

    set_behaviour(behaviour)
    assert message in one_line_error(invoke("--data", str(tmp_path)))
