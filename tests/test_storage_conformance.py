"""One conformance suite, run against every storage backend (STYLE.md §3; aiohttp's parser tests).

Each test builds its scenario in ``body(storage)``; the fixture runs it against the in-memory
reference store, SQLite in a temporary directory and PostgreSQL (a fresh database of the test run's
throwaway cluster, tests/pg_support.py).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kluis.server.storage import (
    Account,
    AccountId,
    AlreadyExists,
    DirectoryEntry,
    MailboxItem,
    Storage,
    UnknownAccount,
)
from tests.storage_support import BACKENDS, Body, account, envelope, run_with, storage_url

UNKNOWN = AccountId(b"\xff" * 16)


@pytest.fixture(params=BACKENDS)
def run(request: pytest.FixtureRequest, tmp_path: Path) -> object:
    url = storage_url(request.param, tmp_path, request)
    return lambda body: run_with(url, body)


def _run(run: object, body: Body) -> None:
    assert callable(run)
    run(body)


async def _with_keys(s: Storage, a: Account, *, one_time: int = 3, kem: int = 2) -> None:
    await s.accounts.create(a)
    d = s.directory
    await d.set_signed_prekey(a.account_id, b"spk")
    await d.set_last_resort_kem(a.account_id, b"last-resort")
    await d.set_envelope_keys(a.account_id, [b"env-current", b"env-grace"])
    await d.add_one_time_prekeys(a.account_id, [(i, b"otk%d" % i) for i in range(one_time, 0, -1)])
    await d.add_kem_prekeys(a.account_id, [(i, b"kem%d" % i) for i in range(1, kem + 1)])


class TestCodes:
    def test_redeem_once(self, run: object) -> None:
        async def body(s: Storage) -> None:
            await s.codes.add_codes([b"a" * 32, b"b" * 32], 30)
            await s.codes.add_codes([b"a" * 32], 99)  # present: keeps the first value
            assert await s.codes.redeem(b"a" * 32) == 30
            assert await s.codes.redeem(b"a" * 32) is None
            assert await s.codes.redeem(b"c" * 32) is None
            assert await s.codes.redeem(b"b" * 32) == 30

        _run(run, body)

    def test_concurrent_redeem_exactly_one_wins(self, run: object) -> None:
        async def body(s: Storage) -> None:
            await s.codes.add_codes([b"x" * 32], 7)
            results = await asyncio.gather(*(s.codes.redeem(b"x" * 32) for _ in range(8)))
            assert results.count(7) == 1
            assert results.count(None) == 7

        _run(run, body)


class TestAccounts:
    def test_create_get_duplicate(self, run: object) -> None:
        async def body(s: Storage) -> None:
            a = account(1)
            assert await s.accounts.get(a.account_id) is None
            await s.accounts.create(a)
            assert await s.accounts.get(a.account_id) == a
            with pytest.raises(AlreadyExists):
                await s.accounts.create(account(1, expires_day=1))
            assert await s.accounts.get(a.account_id) == a

        _run(run, body)

    def test_extend_from_today_or_expiry(self, run: object) -> None:
        async def body(s: Storage) -> None:
            a = account(1, expires_day=100)
            await s.accounts.create(a)
            assert await s.accounts.extend(a.account_id, 30, today=90) == 130  # still running: add on
            assert await s.accounts.extend(a.account_id, 10, today=200) == 210  # lapsed: from today
            got = await s.accounts.get(a.account_id)
            assert got is not None
            assert got.expires_day == 210
            with pytest.raises(UnknownAccount):
                await s.accounts.extend(UNKNOWN, 1, 1)

        _run(run, body)

    def test_revoke_deletes_keys_and_mailbox(self, run: object) -> None:
        async def body(s: Storage) -> None:
            a, b = account(1), account(2)
            await _with_keys(s, a)
            await _with_keys(s, b)
            await s.mailbox.append(
                [envelope(a.account_id, i) for i in range(3)] + [envelope(b.account_id, 9)]
            )
            await s.accounts.revoke(a.account_id, b"statement")
            got = await s.accounts.get(a.account_id)
            assert got is not None
            assert got.revoked
            assert got.revocation == b"statement"
            assert await s.directory.take_bundle(a.account_id) is None
            assert await s.directory.counts(a.account_id) == (0, 0)
            assert await s.directory.envelope_keys(a.account_id) == []
            assert await s.mailbox.count(a.account_id) == 0
            assert await s.mailbox.fetch(a.account_id, 0, 10) == []
            # the other account is untouched
            assert await s.mailbox.count(b.account_id) == 1
            assert await s.directory.counts(b.account_id) == (3, 2)
            with pytest.raises(UnknownAccount):
                await s.accounts.revoke(UNKNOWN, b"x")

        _run(run, body)


class TestDirectory:
    def test_take_bundle_lowest_first_then_last_resort(self, run: object) -> None:
        async def body(s: Storage) -> None:
            a = account(1)
            await _with_keys(s, a, one_time=2, kem=1)
            assert await s.directory.counts(a.account_id) == (2, 1)
            first = await s.directory.take_bundle(a.account_id)
            assert first == DirectoryEntry(
                signed_prekey=b"spk",
                kem_prekey=b"kem1",
                kem_is_last_resort=False,
                one_time_prekey=b"otk1",
                envelope_key=b"env-current",
                one_time_left=1,
                kem_one_time_left=0,
            )
            second = await s.directory.take_bundle(a.account_id)
            assert second is not None
            assert (second.one_time_prekey, second.kem_prekey, second.kem_is_last_resort) == (
                b"otk2",
                b"last-resort",
                True,
            )
            third = await s.directory.take_bundle(a.account_id)
            assert third is not None
            assert third.one_time_prekey is None
            assert third.kem_is_last_resort
            assert (third.one_time_left, third.kem_one_time_left) == (0, 0)

        _run(run, body)

    def test_duplicates_ignored_and_keys_replaced(self, run: object) -> None:
        async def body(s: Storage) -> None:
            a = account(1)
            await _with_keys(s, a, one_time=2, kem=2)
            await s.directory.add_one_time_prekeys(a.account_id, [(1, b"other"), (5, b"otk5")])
            await s.directory.add_kem_prekeys(a.account_id, [(2, b"other")])
            assert await s.directory.counts(a.account_id) == (3, 2)
            await s.directory.set_signed_prekey(a.account_id, b"spk2")
            await s.directory.set_envelope_keys(a.account_id, [b"e3", b"e2", b"e1"])
            assert await s.directory.envelope_keys(a.account_id) == [b"e3", b"e2", b"e1"]
            entry = await s.directory.take_bundle(a.account_id)
            assert entry is not None
            assert (entry.signed_prekey, entry.one_time_prekey, entry.envelope_key) == (
                b"spk2",
                b"otk1",
                b"e3",
            )

        _run(run, body)

    def test_incomplete_directory_hands_out_nothing(self, run: object) -> None:
        async def body(s: Storage) -> None:
            a = account(1)
            await s.accounts.create(a)
            d = s.directory
            await d.add_one_time_prekeys(a.account_id, [(1, b"otk1")])
            assert await d.take_bundle(a.account_id) is None
            await d.set_signed_prekey(a.account_id, b"spk")
            await d.set_last_resort_kem(a.account_id, b"lr")
            assert await d.take_bundle(a.account_id) is None  # no envelope key yet
            assert await d.counts(a.account_id) == (1, 0)  # nothing consumed
            assert await d.take_bundle(UNKNOWN) is None
            assert await d.counts(UNKNOWN) == (0, 0)

        _run(run, body)

    def test_writes_to_unknown_account_fail(self, run: object) -> None:
        async def body(s: Storage) -> None:
            d = s.directory
            for call in (
                d.set_signed_prekey(UNKNOWN, b"x"),
                d.set_last_resort_kem(UNKNOWN, b"x"),
                d.add_one_time_prekeys(UNKNOWN, [(1, b"x")]),
                d.add_kem_prekeys(UNKNOWN, [(1, b"x")]),
                d.set_envelope_keys(UNKNOWN, [b"x"]),
            ):
                with pytest.raises(UnknownAccount):
                    await call

        _run(run, body)

    def test_concurrent_fetchers_never_share_a_one_time_key(self, run: object) -> None:
        async def body(s: Storage) -> None:
            a = account(1)
            await _with_keys(s, a, one_time=30, kem=20)
            entries = await asyncio.gather(*(s.directory.take_bundle(a.account_id) for _ in range(40)))
            taken = [e for e in entries if e is not None]
            assert len(taken) == 40
            otks = [e.one_time_prekey for e in taken if e.one_time_prekey is not None]
            kems = [e.kem_prekey for e in taken if not e.kem_is_last_resort]
            assert len(otks) == len(set(otks)) == 30
            assert len(kems) == len(set(kems)) == 20
            assert sum(e.kem_is_last_resort for e in taken) == 20
            # each fetch saw the stock one lower than the one before
            assert sorted(e.one_time_left for e in taken) == [0] * 11 + list(range(1, 30))
            assert await s.directory.counts(a.account_id) == (0, 0)

        _run(run, body)


class TestMailbox:
    def test_append_fetch_in_order(self, run: object) -> None:
        async def body(s: Storage) -> None:
            a, b = account(1), account(2)
            await s.accounts.create(a)
            await s.accounts.create(b)
            envs = [envelope(a.account_id, i) for i in range(5)]
            stored = await s.mailbox.append([*envs[:3], envelope(b.account_id, 0), *envs[3:]])
            seqs = [seq for seq, new in stored]
            assert all(new for _, new in stored)
            a_seqs = seqs[:3] + seqs[4:]
            assert a_seqs == sorted(a_seqs)
            assert len(set(a_seqs)) == 5
            items = await s.mailbox.fetch(a.account_id, 0, 100)
            assert items == [
                MailboxItem(q, e.envelope_id, e.ciphertext) for q, e in zip(a_seqs, envs, strict=True)
            ]
            assert await s.mailbox.fetch(a.account_id, a_seqs[1], 2) == items[2:4]
            assert await s.mailbox.fetch(a.account_id, a_seqs[-1], 10) == []
            assert await s.mailbox.count(a.account_id) == 5
            assert await s.mailbox.count(b.account_id) == 1
            later = await s.mailbox.append([envelope(a.account_id, 99)])
            assert later[0][0] > a_seqs[-1]

        _run(run, body)

    def test_resend_is_stored_once(self, run: object) -> None:
        async def body(s: Storage) -> None:
            a = account(1)
            await s.accounts.create(a)
            e = envelope(a.account_id, 1)
            [(seq, new)] = await s.mailbox.append([e])
            assert new
            resent, fresh = await s.mailbox.append([e, envelope(a.account_id, 2)])
            assert resent == (seq, False)
            assert fresh[1]
            assert fresh[0] > seq
            again = await s.mailbox.append([e])
            assert again == [(seq, False)]
            # a duplicate inside one call, and concurrent resends in one loop pass
            e3 = envelope(a.account_id, 3)
            first, dup = await s.mailbox.append([e3, e3])
            assert first[1]
            assert dup == (first[0], False)
            results = await asyncio.gather(*(s.mailbox.append([envelope(a.account_id, 4)]) for _ in range(5)))
            flags = [r[0][1] for r in results]
            assert flags.count(True) == 1
            assert len({r[0][0] for r in results}) == 1
            assert await s.mailbox.count(a.account_id) == 4  # envelopes 1, 2, 3, 4

        _run(run, body)

    def test_delete_and_expire(self, run: object) -> None:
        async def body(s: Storage) -> None:
            a, b = account(1), account(2)
            await s.accounts.create(a)
            await s.accounts.create(b)
            stored = await s.mailbox.append(
                [envelope(a.account_id, i, expiry_day=100 + i) for i in range(4)]
                + [envelope(b.account_id, 0, expiry_day=100)]
            )
            a_seqs = [seq for seq, _ in stored[:4]]
            assert await s.mailbox.delete(a.account_id, [a_seqs[0], a_seqs[0], 10_000]) == 1
            assert await s.mailbox.delete(a.account_id, []) == 0
            assert await s.mailbox.expire(today=102) == 2  # a's day 101 and b's day 100; day 102 stays
            remaining = [i.seq for i in await s.mailbox.fetch(a.account_id, 0, 10)]
            assert remaining == a_seqs[2:]
            assert await s.mailbox.expire(today=102) == 0
            assert await s.mailbox.expire(today=1_000) == 2
            assert await s.mailbox.count(a.account_id) == 0

        _run(run, body)

    def test_delete_matching_envelope_ids(self, run: object) -> None:
        """A receipt that names a seq and its envelope id deletes that envelope only (relay nodes that
        share a database may give a new envelope a seq just deleted)."""

        async def body(s: Storage) -> None:
            a = account(1)
            await s.accounts.create(a)
            first, second = envelope(a.account_id, 1), envelope(a.account_id, 2)
            (seq1, _), (seq2, _) = await s.mailbox.append([first, second])
            assert (
                await s.mailbox.delete(a.account_id, [seq1, seq2], [second.envelope_id, second.envelope_id])
                == 1
            )
            assert [i.seq for i in await s.mailbox.fetch(a.account_id, 0, 10)] == [seq1]
            assert await s.mailbox.delete(a.account_id, [seq1], [first.envelope_id]) == 1
            assert await s.mailbox.count(a.account_id) == 0

        _run(run, body)

    def test_discard_deletes_with_the_next_group_commit(self, run: object) -> None:
        """A receipt's delete, which nobody awaits: it commits with whatever the group commit holds
        next (here an append, awaited), and names seqs that may be gone already or twice."""

        async def body(s: Storage) -> None:
            a, b = account(1), account(2)
            await s.accounts.create(a)
            await s.accounts.create(b)
            stored = await s.mailbox.append([envelope(a.account_id, i) for i in range(4)])
            seqs = [seq for seq, _ in stored]
            s.mailbox.discard(a.account_id, [seqs[0], seqs[0], 10_000])
            s.mailbox.discard(a.account_id, [seqs[2]])
            s.mailbox.discard(a.account_id, [])
            await s.mailbox.append([envelope(b.account_id, 9)])  # committed with (or after) them
            assert [i.seq for i in await s.mailbox.fetch(a.account_id, 0, 10)] == [seqs[1], seqs[3]]
            assert await s.mailbox.count(b.account_id) == 1
            await s.close()
            s.mailbox.discard(a.account_id, [seqs[1]])  # once closed: nothing, and no exception

        _run(run, body)

    def test_discard_of_runs_with_gaps_deletes_exactly_those_seqs(self, run: object) -> None:
        """SQLite deletes runs of consecutive seqs as ranges: the seqs between runs must stay."""

        async def body(s: Storage) -> None:
            a = account(1)
            await s.accounts.create(a)
            seqs = [seq for seq, _ in await s.mailbox.append([envelope(a.account_id, i) for i in range(8)])]
            s.mailbox.discard(a.account_id, [seqs[6], seqs[0], seqs[3], seqs[2]])  # unordered, gaps
            await s.mailbox.append([envelope(a.account_id, 9)])
            left = [i.seq for i in await s.mailbox.fetch(a.account_id, 0, 20)]
            assert left[:4] == [seqs[1], seqs[4], seqs[5], seqs[7]]
            assert len(left) == 5

        _run(run, body)

    def test_append_to_unknown_account_stores_nothing(self, run: object) -> None:
        async def body(s: Storage) -> None:
            a = account(1)
            await s.accounts.create(a)
            with pytest.raises(UnknownAccount):
                await s.mailbox.append([envelope(a.account_id, 1), envelope(UNKNOWN, 1)])
            assert await s.mailbox.count(a.account_id) == 0
            assert await s.mailbox.append([]) == []

        _run(run, body)

    def test_many_concurrent_appends(self, run: object) -> None:
        async def body(s: Storage) -> None:
            a = account(1)
            await s.accounts.create(a)
            results = await asyncio.gather(
                *(s.mailbox.append([envelope(a.account_id, i)]) for i in range(50))
            )
            seqs = [r[0][0] for r in results]
            assert len(set(seqs)) == 50
            assert all(r[0][1] for r in results)
            assert [i.seq for i in await s.mailbox.fetch(a.account_id, 0, 100)] == sorted(seqs)
            assert await s.mailbox.delete(a.account_id, seqs[:25]) == 25
            deleted = await asyncio.gather(*(s.mailbox.delete(a.account_id, [q]) for q in seqs[20:30]))
            assert sum(deleted) == 5
            assert await s.mailbox.count(a.account_id) == 20

        _run(run, body)
