"""examples/echo_bot.py against a relay on loopback: the bot runs as a child process, a test client
accepts its invite, sends "ping" and gets "echo: ping" back; SIGTERM ends the bot cleanly."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

from kluis.client.client import Client
from kluis.client.invite import Invite
from kluis.client.keyslots import Argon2Params
from tests.server_support import add_codes, running_server

ROOT = Path(__file__).resolve().parents[1]
BOT = ROOT / "examples" / "echo_bot.py"
CHEAP = Argon2Params(memory_kib=8, iterations=1, lanes=1)
WAIT = 30.0


async def read_line(stream: asyncio.StreamReader, prefix: str) -> str:
    """The first line of the bot's output that starts with ``prefix`` (bounded wait)."""
    deadline = time.monotonic() + WAIT
    while True:
        line = await asyncio.wait_for(stream.readline(), max(0.1, deadline - time.monotonic()))
        assert line, f"the bot ended before printing {prefix!r}"
        if line.decode().startswith(prefix):
            return line.decode().strip()


def test_echo_bot_answers_ping(tmp_path: Path) -> None:
    async def scenario() -> None:
        codes = await add_codes(tmp_path / "server", 2)
        async with running_server(tmp_path / "server") as server:
            env = {**os.environ, "KLUIS_PASSPHRASE": "the bot's passphrase", "PYTHONPATH": str(ROOT / "src")}
            errors = (tmp_path / "bot.err").open("wb")
            bot = await asyncio.create_subprocess_exec(
                sys.executable,
                str(BOT),
                "--profile",
                str(tmp_path / "bot"),
                "--server",
                server.url,
                "--code",
                codes[0],
                "--light-kdf",
                "--invite",
                "tester",
                "--seconds",
                "120",
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=errors,
            )
            me: Client | None = None
            try:
                assert bot.stdout is not None
                invite = await read_line(bot.stdout, "kluis:invite/")
                await read_line(bot.stdout, "echo bot running")
                me = await Client.create(tmp_path / "me", "pw", server.url, codes[1], argon2=CHEAP)
                await me.accept(Invite.from_uri(invite), "bot")
                assert (await me.send("bot", "ping")).state == "sent"
                replies: list[str] = []
                deadline = time.monotonic() + WAIT
                while not replies and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                    replies = [m.text for m in me.take_new() if m.contact == "bot"]
                assert replies == ["echo: ping"]
                assert await read_line(bot.stdout, "answered") == "answered tester"
                # The bot confirmed our ping before answering it.
                assert [m.state for m in me.history("bot") if m.text == "ping"] == ["delivered"]
                # SIGTERM to the one process this test started, by its PID: a clean stop.
                os.kill(bot.pid, signal.SIGTERM)
                rest = await asyncio.wait_for(bot.stdout.read(), WAIT)
                assert await asyncio.wait_for(bot.wait(), WAIT) == 0
                assert b"echo bot stopped" in rest
                assert b"ping" not in rest  # the bot does not log what was said
            finally:
                if bot.returncode is None:
                    bot.kill()
                    await bot.wait()
                errors.close()
                if me is not None:
                    await me.close()
        assert (tmp_path / "bot.err").read_text() == ""

    asyncio.run(scenario())


def test_first_run_without_server_or_passphrase_fails_clearly(tmp_path: Path) -> None:
    async def scenario() -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        env.pop("KLUIS_PASSPHRASE", None)
        for extra, code, message in (
            ({}, 2, b"set KLUIS_PASSPHRASE"),
            ({"KLUIS_PASSPHRASE": "pw"}, 1, b"the first run needs --server and --code"),
        ):
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                str(BOT),
                "--profile",
                str(tmp_path / "bot"),
                env={**env, **extra},
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            _, err = await asyncio.wait_for(proc.communicate(), WAIT)
            assert proc.returncode == code
            assert message in err
        assert not (tmp_path / "bot").exists()

    asyncio.run(scenario())
