"""Flushes: the connections owing frames are written in one callback at the end of the loop pass."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import pytest

from kluis.server.ws import Connection, Flushes


class _Owing:
    """Stands in for a Connection: Flushes uses only its loop and flush()."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, log: list[str], name: str, fail: bool = False
    ) -> None:
        self.loop, self.log, self.name, self.fail = loop, log, name, fail

    def flush(self) -> None:
        self.log.append(self.name)
        if self.fail:
            raise RuntimeError("boom")


def _add(flushes: Flushes, owing: _Owing) -> None:
    flushes.add(cast(Connection, cast(Any, owing)))


def test_connections_are_flushed_once_in_order_after_the_pass() -> None:
    asyncio.run(_flushed_once_in_order())


async def _flushed_once_in_order() -> None:
    loop = asyncio.get_running_loop()
    log: list[str] = []
    flushes = Flushes()
    for name in "abc":
        _add(flushes, _Owing(loop, log, name))
    assert log == []  # nothing is written before the loop pass ends
    await asyncio.sleep(0)
    assert log == ["a", "b", "c"]
    await asyncio.sleep(0)
    assert log == ["a", "b", "c"]  # not twice


def test_a_connection_that_fails_leaves_the_others_written(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="kluis.server.ws"):
        asyncio.run(_one_fails())
    assert "writing a connection's frames failed" in caplog.text


async def _one_fails() -> None:
    loop = asyncio.get_running_loop()
    log: list[str] = []
    flushes = Flushes()
    _add(flushes, _Owing(loop, log, "a", fail=True))
    _add(flushes, _Owing(loop, log, "b"))
    await asyncio.sleep(0)
    assert log == ["a", "b"]
    _add(flushes, _Owing(loop, log, "c"))  # a later pass schedules itself again
    await asyncio.sleep(0)
    assert log == ["a", "b", "c"]
