"""Hypothesis stateful test: the SQLite and PostgreSQL mailboxes against the in-memory reference, step
by step.

Rules append (fresh and resent envelopes, several per call and several calls in one loop pass, so the
group commit is exercised), fetch, delete (stored and unknown seqs) and expire; after every step both
stores must hold the same envelopes in the same order. Seqs are compared through the envelope ids
they belong to: a backend may leave gaps in its numbering (SQLite and PostgreSQL do after a resend).
The PostgreSQL machine reuses one database of the test run's cluster, emptied before each example.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import psycopg
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from kluis.server.storage import MailboxItem, Storage, StoredEnvelope, open_storage
from tests.storage_support import account

T = TypeVar("T")
RECIPIENTS = [account(1), account(2)]
recipient = st.integers(0, len(RECIPIENTS) - 1)
number = st.integers(0, 12)  # few ids: resends are frequent
day = st.integers(100, 106)


def _envelope(r: int, n: int, expiry: int) -> StoredEnvelope:
    # A resend carries the same id and bytes; its expiry may differ, the stored one stays.
    return StoredEnvelope(RECIPIENTS[r].account_id, n.to_bytes(16, "big"), b"ct%d" % n, expiry)


def _view(items: list[MailboxItem]) -> list[tuple[bytes, bytes]]:
    return [(i.envelope_id, i.ciphertext) for i in items]


class MailboxMachine(RuleBasedStateMachine):
    postgres_url: ClassVar[str | None] = None
    """Set: the machine compares PostgreSQL (this database) with the reference instead of SQLite."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.dir = tempfile.mkdtemp(prefix="kluis-stateful-")
        real = self.postgres_url or Path(self.dir) / "kluis.db"
        self.stores: list[Storage] = [
            self.run(open_storage("memory:", fsync=False)),
            self.run(open_storage(real, fsync=False)),
        ]
        if self.postgres_url is not None:  # the previous example's rows go
            with psycopg.connect(self.postgres_url, autocommit=True) as conn:
                conn.execute("TRUNCATE mailbox, accounts CASCADE")
        # per store: (recipient index, envelope id) -> seq it was stored under
        self.seqs: list[dict[tuple[int, bytes], int]] = [{}, {}]
        for s in self.stores:
            for a in RECIPIENTS:
                self.run(s.accounts.create(a))

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        for s in self.stores:
            self.run(s.close())
        self.loop.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule(
        calls=st.lists(
            st.lists(st.tuples(recipient, number, day), min_size=1, max_size=4), min_size=1, max_size=4
        )
    )
    def append(self, calls: list[list[tuple[int, int, int]]]) -> None:
        batches = [[_envelope(*spec) for spec in call] for call in calls]
        outcomes = []
        for i, s in enumerate(self.stores):
            # every call of this step in one loop pass
            results = self.run(self._gather(*(s.mailbox.append(b) for b in batches)))
            flags = []
            for call, result in zip(calls, results, strict=True):
                for (r, n, _), (seq, new) in zip(call, result, strict=True):
                    key = (r, n.to_bytes(16, "big"))
                    if new:
                        self.seqs[i][key] = seq
                    assert self.seqs[i][key] == seq
                    flags.append(new)
            outcomes.append(flags)
        assert outcomes[0] == outcomes[1]

    @staticmethod
    async def _gather(*coros: Coroutine[Any, Any, T]) -> list[T]:
        return list(await asyncio.gather(*coros))

    @rule(r=recipient, numbers=st.lists(number, max_size=5), unknown=st.booleans())
    def delete(self, r: int, numbers: list[int], unknown: bool) -> None:
        counts = []
        for i, s in enumerate(self.stores):
            seqs = [self.seqs[i].pop((r, n.to_bytes(16, "big")), -1) for n in numbers]
            seqs = [q for q in seqs if q >= 0] + ([10**9] if unknown else [])
            counts.append(self.run(s.mailbox.delete(RECIPIENTS[r].account_id, seqs)))
        assert counts[0] == counts[1]

    @rule(r=recipient, after=number, limit=st.integers(0, 5))
    def fetch(self, r: int, after: int, limit: int) -> None:
        views = []
        for i, s in enumerate(self.stores):
            after_seq = self.seqs[i].get((r, after.to_bytes(16, "big")), 0)
            views.append(_view(self.run(s.mailbox.fetch(RECIPIENTS[r].account_id, after_seq, limit))))
        assert views[0] == views[1]

    @rule(today=day)
    def expire(self, today: int) -> None:
        counts = [self.run(s.mailbox.expire(today)) for s in self.stores]
        assert counts[0] == counts[1]
        for i, s in enumerate(self.stores):
            stored = {
                (r, item.envelope_id)
                for r, a in enumerate(RECIPIENTS)
                for item in self.run(s.mailbox.fetch(a.account_id, 0, 1000))
            }
            self.seqs[i] = {k: v for k, v in self.seqs[i].items() if k in stored}

    @invariant()
    def same_mailboxes(self) -> None:
        for a in RECIPIENTS:
            model, real = (self.run(s.mailbox.fetch(a.account_id, 0, 1000)) for s in self.stores)
            assert _view(model) == _view(real)
            assert [i.seq for i in real] == sorted(i.seq for i in real)
            assert self.run(self.stores[1].mailbox.count(a.account_id)) == len(real)


MailboxMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestMailboxAgainstModel = MailboxMachine.TestCase


def test_postgres_mailbox_against_model(postgres_url: str) -> None:
    MailboxMachine.postgres_url = postgres_url
    try:
        run_state_machine_as_test(
            MailboxMachine,
            settings=settings(
                max_examples=30,
                stateful_step_count=20,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )
    finally:
        MailboxMachine.postgres_url = None
