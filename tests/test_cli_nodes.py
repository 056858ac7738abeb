"""The settings for several relay nodes: ``kluis server --redis`` (with its checks, in the configuration
model, the environment and the TOML file) and ``kluis admin --database`` (activation codes for a
service on PostgreSQL), and the send-pass secret nodes starting at once agree on."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import types
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from kluis.cli.main import cli
from kluis.server.codes import hash_code
from kluis.server.config import ENV_PREFIX, ConfigError, ServerConfig, load_config
from kluis.server.runner import SECRET_FILE, load_secret
from kluis.server.storage import open_storage

PG = "postgresql://kluis@db.internal/kluis"
REDIS = "redis://10.0.0.5:6379/0"


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch) -> list[ServerConfig]:
    """Stands in for kluis.server.runner (as tests/test_cli_server.py does)."""
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    seen: list[ServerConfig] = []
    fake = types.ModuleType("kluis.server.runner")

    def run(config: ServerConfig, on_ready: Callable[[str, str | None], None]) -> None:
        seen.append(config)

    fake.run = run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "kluis.server.runner", fake)
    return seen


def server(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, ["server", *args], env=env)


class TestRedisSetting:
    def test_option_environment_and_file(self, tmp_path: Path, runs: list[ServerConfig]) -> None:
        assert server("--data", str(tmp_path), "--database", PG, "--redis", REDIS).exit_code == 0
        assert (runs[-1].database, runs[-1].redis) == (PG, REDIS)
        env = {"KLUIS_SERVER_DATABASE": PG, "KLUIS_SERVER_REDIS": "unix:///run/redis/redis.sock"}
        assert server("--data", str(tmp_path), env=env).exit_code == 0
        assert runs[-1].redis == "unix:///run/redis/redis.sock"
        toml = tmp_path / "server.toml"
        toml.write_text(f'database = "{PG}"\nredis = "rediss://redis.internal:6380/0"\n')
        assert server("--data", str(tmp_path), "--config", str(toml)).exit_code == 0
        assert runs[-1].redis == "rediss://redis.internal:6380/0"
        assert "--redis" in server("--help").output

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (("--redis", REDIS), "redis needs a PostgreSQL database"),
            (("--database", PG, "--redis", "http://:secret@10.0.0.5:6379"), "redis://"),
        ],
    )
    def test_refused(
        self, tmp_path: Path, runs: list[ServerConfig], args: tuple[str, ...], message: str
    ) -> None:
        result = server("--data", str(tmp_path), *args)
        assert result.exit_code != 0
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1
        assert lines[0].startswith("Error: ")
        assert message in lines[0]
        assert "secret" not in result.stderr  # a URL may carry a password: never echoed
        assert runs == []

    def test_model(self) -> None:
        assert load_config(None, {"data_dir": Path("/srv"), "database": PG}).redis == ""
        with pytest.raises(ConfigError, match="redis needs a PostgreSQL database"):
            load_config(None, {"data_dir": Path("/srv"), "redis": REDIS})


def test_nodes_starting_at_once_agree_on_one_send_pass_secret(tmp_path: Path) -> None:
    secrets: list[bytes] = []
    start = threading.Barrier(8)

    def node() -> None:
        start.wait()
        secrets.append(load_secret(tmp_path))

    threads = [threading.Thread(target=node) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(secrets) == 8
    assert len(set(secrets)) == 1
    assert len(secrets[0]) == 32
    assert sorted(p.name for p in tmp_path.iterdir()) == [SECRET_FILE]  # no temporary file left
    assert (tmp_path / SECRET_FILE).stat().st_mode & 0o777 == 0o600


class TestAdminDatabase:
    def _redeem(self, url: str, code: str) -> int | None:
        async def main() -> int | None:
            s = await open_storage(url, fsync=False)
            try:
                return await s.codes.redeem(hash_code(code))
            finally:
                await s.close()

        return asyncio.run(main())

    def test_codes_go_to_postgresql(self, tmp_path: Path, postgres_url: str) -> None:
        args = [
            "admin",
            "--database",
            postgres_url,
            "codes",
            "create",
            "--days",
            "7",
            "--count",
            "2",
            "--json",
        ]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
        codes = json.loads(result.output)
        assert [self._redeem(postgres_url, c) for c in codes] == [7, 7]
        # The server's own variable works too, and --data is then not needed (nor created).
        env = {"KLUIS_SERVER_DATABASE": postgres_url}
        result = CliRunner().invoke(cli, ["admin", "codes", "create", "--days", "3"], env=env)
        assert result.exit_code == 0, result.output
        assert self._redeem(postgres_url, result.output.strip()) == 3
        assert list(tmp_path.iterdir()) == []

    def test_needs_data_or_database(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("KLUIS_SERVER_DATABASE", raising=False)
        monkeypatch.delenv("KLUIS_DATA", raising=False)
        result = CliRunner().invoke(cli, ["admin", "codes", "create", "--days", "3"])
        assert result.exit_code == 2
        assert "--data DIR" in result.stderr
        bad = CliRunner().invoke(
            cli, ["admin", "--database", "mysql://u:hunter2@h/d", "codes", "create", "--days", "3"]
        )
        assert bad.exit_code == 2
        assert "postgresql://" in bad.stderr
        assert "hunter2" not in bad.stderr

    def test_unreachable_database_is_one_line(self) -> None:
        url = "postgresql://kluis:hunter2@127.0.0.1:1/kluis?connect_timeout=2"
        result = CliRunner().invoke(cli, ["admin", "--database", url, "codes", "create", "--days", "3"])
        assert result.exit_code == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1
        assert lines[0].startswith("Error: ")
        assert "hunter2" not in result.stderr
