"""``kluis admin codes create`` (Click's CliRunner) and the code format of kluis.server.codes."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from kluis.cli.main import cli
from kluis.server.codes import hash_code, is_well_formed, new_code
from kluis.server.storage import database_path, open_storage

CODE = re.compile(r"^KLUIS(-[A-Z2-7]{4}){8}$")


def _redeem(data: Path, code: str) -> int | None:
    async def main() -> int | None:
        s = await open_storage(database_path(data), fsync=False)
        try:
            return await s.codes.redeem(hash_code(code))
        finally:
            await s.close()

    return asyncio.run(main())


def test_create_json_stores_only_hashes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    result = CliRunner().invoke(
        cli, ["admin", "--data", str(data), "codes", "create", "--days", "30", "--count", "5", "--json"]
    )
    assert result.exit_code == 0, result.output
    codes = json.loads(result.output)
    assert len(codes) == len(set(codes)) == 5
    assert all(CODE.match(c) for c in codes)
    assert database_path(data).exists()
    files = b"".join(p.read_bytes() for p in data.iterdir())
    for code in codes:
        for form in (code, code.replace("-", ""), code.split("-", 1)[1].replace("-", "")):
            assert form.encode() not in files
        assert hash_code(code) in files
    # redeemable once, also as a person might type it
    sloppy = codes[0].lower().replace("-", " ").replace("o", "0")
    assert _redeem(data, sloppy) == 30
    assert _redeem(data, codes[0]) is None
    assert _redeem(data, codes[1]) == 30


def test_create_plain_output_and_env(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["admin", "codes", "create", "--days", "7"], env={"KLUIS_DATA": str(tmp_path)}
    )
    assert result.exit_code == 0, result.output
    [code] = result.output.split()
    assert CODE.match(code)
    assert _redeem(tmp_path, code) == 7


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--days", "0"], "--days"),
        (["--days", "3661"], "--days"),
        (["--days", "30", "--count", "0"], "--count"),
        (["--days", "30", "--count", "10001"], "--count"),
        (["--days", "x"], "--days"),
        ([], "--days"),
    ],
)
def test_bad_parameters(tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["admin", "--data", str(tmp_path), "codes", "create", *args])
    assert result.exit_code == 2
    assert message in result.output
    assert not database_path(tmp_path).exists()


def test_data_dir_required() -> None:
    result = CliRunner().invoke(cli, ["admin", "codes", "create", "--days", "1"], env={"KLUIS_DATA": None})
    assert result.exit_code == 2
    assert "--data" in result.output


def test_storage_error_is_a_click_error(tmp_path: Path) -> None:
    database_path(tmp_path).write_bytes(b"not a database at all, not even close" * 100)
    result = CliRunner().invoke(cli, ["admin", "--data", str(tmp_path), "codes", "create", "--days", "1"])
    assert result.exit_code == 1
    assert "Error:" in result.output


def test_code_format_and_normalisation() -> None:
    code = new_code()
    assert CODE.match(code)
    assert is_well_formed(code)
    body = code.removeprefix("KLUIS-")
    variants = [code.lower(), body, body.replace("-", ""), f"  {code.replace('-', ' ')} "]
    assert {hash_code(v) for v in variants} == {hash_code(code)}
    assert len(hash_code(code)) == 32
    # malformed text hashes to something no code hashes to, and never raises
    for bad in ("", "KLUIS-", code[:-1], code + "A", code.replace(code[-1], "9"), "ü" * 32):
        assert not is_well_formed(bad)
        assert hash_code(bad) != hash_code(code)
        assert len(hash_code(bad)) == 32
