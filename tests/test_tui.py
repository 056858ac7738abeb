"""The terminal app (`kluis chat`) driven with Textual's pilot against a real relay and the real SDK.

Every wait is bounded (:func:`until`). Profiles use cheap Argon2id parameters so unlocking is instant.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
from textual.pilot import Pilot
from textual.widgets import Input, Static, TextArea

from kluis.client import keyslots
from kluis.client.client import Client, ContactInfo, Message
from kluis.client.errors import ContactRevoked
from kluis.client.invite import Invite
from kluis.client.keyslots import Argon2Params
from kluis.client.panic import PanicInfo
from kluis.client.profile import set_duress
from kluis.client.transport import RelayClientError
from kluis.tui.app import KluisApp
from kluis.tui.format import contact_prompt, countdown, message_line
from kluis.tui.screens.invites import AcceptScreen, InviteScreen
from kluis.tui.screens.main import MainScreen
from kluis.tui.screens.safety import SafetyNumberScreen
from kluis.tui.screens.settings import DuressScreen, TimerScreen
from kluis.tui.screens.unlock import NoProfileScreen, UnlockScreen
from kluis.tui.widgets.contacts import ContactList
from kluis.tui.widgets.conversation import ConversationView
from tests.server_support import Server, add_codes, running_server

CHEAP = Argon2Params(memory_kib=8, iterations=1, lanes=1)
SIZE = (80, 24)
COUNTDOWN = re.compile(r"\b\d+s$")


async def until(pilot: Pilot[None], condition: Callable[[], object], what: str, timeout: float = 5.0) -> None:
    """Lets the app (and the relay, in the same loop) run until ``condition()`` holds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.05)


async def type_text(pilot: Pilot[None], text: str) -> None:
    await pilot.press(*("space" if ch == " " else ch for ch in text))


async def new_client(server: Server, directory: Path, passphrase: str, code: str) -> Client:
    return await Client.create(directory, passphrase, server.url, code, None, argon2=CHEAP)


T = TypeVar("T")


def screen_of(app: KluisApp, kind: type[T]) -> T:
    screen = app.screen
    assert isinstance(screen, kind), f"expected {kind.__name__}, got {type(screen).__name__}"
    return screen


def screenshot(app: KluisApp) -> str:
    """The screen as SVG, without the per-export id Rich derives from it."""
    return re.sub(r"terminal-\d+", "terminal", app.export_screenshot())


def notifications(app: KluisApp) -> list[str]:
    return [n.message for n in app._notifications]


# -- formatting ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (-3, "0s"),
        (0.2, "1s"),
        (29.4, "30s"),
        (59, "59s"),
        (60, "1m00s"),
        (305, "5m05s"),
        (3600, "1h00m"),
        (5400, "1h30m"),
        (86400, "1d0h"),
        (4 * 7 * 86400, "28d0h"),
    ],
)
def test_countdown(seconds: float, text: str) -> None:
    assert countdown(seconds) == text


def message(**changes: object) -> Message:
    fields: dict[str, object] = {
        "contact": "bob",
        "direction": "out",
        "kind": "text",
        "id": "00",
        "text": "hi",
        "sent_at": 1_000.0,
        "timer": 30,
        "state": "sent",
        "expires_at": 1_030.0,
    }
    fields.update(changes)
    return Message(**fields)  # type: ignore[arg-type]


def test_message_line_marks_and_countdown() -> None:
    assert message_line(message(), 1_001.0).plain.endswith("You: hi  ✓  29s")
    assert "✓✓" in message_line(message(state="delivered"), 1_001.0).plain
    assert "…" in message_line(message(state="queued"), 1_001.0).plain
    assert "✗" in message_line(message(state="failed"), 1_001.0).plain
    incoming = message_line(message(direction="in", state="received", expires_at=None), 1_001.0).plain
    assert incoming.endswith("bob: hi  30s once read")
    untimed = message_line(message(timer=0, expires_at=None, state="delivered"), 1_001.0).plain
    assert untimed.endswith("You: hi  ✓✓")
    assert (
        "You set disappearing messages: 5m"
        in message_line(message(kind="timer", text="disappearing messages: 5m"), 1_001.0).plain
    )


def test_contact_markers() -> None:
    def info(**changes: bool) -> ContactInfo:
        flags = {"verified": False, "identity_changed": False, "revoked": False} | changes
        return ContactInfo("bob", 30, unread=0, **flags)

    assert contact_prompt(info(), 0).plain == "  bob"
    assert contact_prompt(info(), 3).plain == "  bob (3)"
    assert contact_prompt(info(verified=True), 0).plain == "✓ bob"
    assert contact_prompt(info(verified=True, identity_changed=True), 0).plain == "! bob"
    assert contact_prompt(info(revoked=True), 0).plain == "✗ bob"


# -- a whole session ----------------------------------------------------------------------------


def test_chat_session(tmp_path: Path) -> None:
    asyncio.run(asyncio.wait_for(chat_session(tmp_path), 60))


async def chat_session(tmp_path: Path) -> None:
    async with running_server(tmp_path / "server") as server:
        codes = await add_codes(server.data_dir, 3)
        alice_dir = tmp_path / "alice"
        await (await new_client(server, alice_dir, "alice pass", codes[0])).close()
        bob = await new_client(server, tmp_path / "bob", "bob pass", codes[1])
        carol = await new_client(server, tmp_path / "carol", "carol pass", codes[2])
        app = KluisApp(alice_dir)
        try:
            async with app.run_test(size=SIZE, notifications=True) as pilot:
                await unlock(pilot, app)
                await add_contacts(pilot, app, bob, carol)
                await converse(pilot, app, bob, carol)
                await verify(pilot, app, bob)
                await disappear(pilot, app, bob)
                await revoked_contact(pilot, app, carol)
                await set_duress_passphrase(pilot, app, alice_dir)
                await panic(pilot, app, alice_dir, bob)
        finally:
            await app.aclose()
            await bob.close()
            await carol.close()


async def unlock(pilot: Pilot[None], app: KluisApp) -> None:
    screen = screen_of(app, UnlockScreen)
    await type_text(pilot, "not it")
    await pilot.press("enter")
    await until(pilot, lambda: screen.status == "wrong passphrase", "the wrong-passphrase message")
    assert app.screen is screen
    await type_text(pilot, "alice pass")
    await pilot.press("enter")
    await until(pilot, lambda: isinstance(app.screen, MainScreen), "the main screen")
    assert app.client is not None


async def add_contacts(pilot: Pilot[None], app: KluisApp, bob: Client, carol: Client) -> None:
    contacts = app.screen.query_one(ContactList)
    # F3: accept bob's invite (pasted link, chosen name).
    invite = bob.invite("alice")
    await pilot.press("f3")
    dialog = screen_of(app, AcceptScreen)
    dialog.query_one("#accept-uri", Input).value = invite.to_uri()
    dialog.query_one("#accept-name", Input).focus()
    await type_text(pilot, "bob")
    await pilot.press("enter")
    await until(pilot, lambda: isinstance(app.screen, MainScreen), "the accept dialog to close")
    await until(pilot, lambda: "bob" in contacts.rows, "bob in the list")
    await bob.sync()
    assert [c.name for c in bob.contacts()] == ["alice"]

    # F2: invite carol; she accepts with the link the dialog shows; she appears in the list.
    await pilot.press("f2")
    dialog2 = screen_of(app, InviteScreen)
    await type_text(pilot, "carol")
    await pilot.press("enter")
    uri_area = dialog2.query_one("#invite-uri", TextArea)
    await until(pilot, lambda: uri_area.text.startswith("kluis:invite/"), "the invite link")
    assert "█" in str(dialog2.query_one("#invite-qr", Static).content)
    await carol.accept(Invite.from_uri(uri_area.text), "alice")
    await pilot.press("escape")
    await until(pilot, lambda: "carol" in contacts.rows, "carol in the list")


async def converse(pilot: Pilot[None], app: KluisApp, bob: Client, carol: Client) -> None:
    main = screen_of(app, MainScreen)
    contacts = main.query_one(ContactList)
    view = main.query_one(ConversationView)
    await bob.send("alice", "hello alice")
    await until(pilot, lambda: contacts.rows.get("bob") == "  bob (1)", "an unread count for bob")

    contacts.focus()
    contacts.highlighted = contacts.get_option_index("bob")
    await pilot.press("enter")
    await until(pilot, lambda: any("bob: hello alice" in line for line in view.lines), "bob's message")
    line = next(line for line in view.lines if "hello alice" in line)
    assert COUNTDOWN.search(line), line  # its 30 s timer started when it was shown
    assert contacts.rows["bob"] == "  bob"

    # carol writes while bob's conversation is open; then bob does. Showing bob's message takes
    # every unread message (Client.take_new), carol's too: her row must still say unread.
    await carol.send("alice", "psst")
    await until(pilot, lambda: contacts.rows.get("carol") == "  carol (1)", "an unread count for carol")
    await bob.send("alice", "are you in?")
    await until(pilot, lambda: any("bob: are you in?" in line for line in view.lines), "bob's second message")
    assert contacts.rows["carol"] == "  carol (1)"

    await type_text(pilot, "hi bob")
    await pilot.press("enter")
    await until(pilot, lambda: any("You: hi bob  ✓" in line for line in view.lines), "our reply, sent")
    await bob.sync()
    assert [m.text for m in bob.history("alice") if m.direction == "in"] == ["hi bob"]
    # bob's device confirmed it: delivered.
    await until(pilot, lambda: any("hi bob  ✓✓" in line for line in view.lines), "the delivery mark")


async def verify(pilot: Pilot[None], app: KluisApp, bob: Client) -> None:
    contacts = app.screen.query_one(ContactList)
    await pilot.press("f4")
    dialog = screen_of(app, SafetyNumberScreen)
    digits = str(dialog.query_one("#safety-digits", Static).content).split()
    assert "".join(digits) == bob.safety_number("alice").digits  # both sides see one number
    assert "█" in str(dialog.query_one("#safety-qr", Static).content)
    await pilot.click("#verify")
    await until(pilot, lambda: isinstance(app.screen, MainScreen), "the safety dialog to close")
    assert app.client is not None
    assert next(c for c in app.client.contacts() if c.name == "bob").verified
    await until(pilot, lambda: contacts.rows["bob"] == "✓ bob", "the verified marker")


async def disappear(pilot: Pilot[None], app: KluisApp, bob: Client) -> None:
    main = screen_of(app, MainScreen)
    view = main.query_one(ConversationView)
    await pilot.press("f5")
    dialog = screen_of(app, TimerScreen)
    field = dialog.query_one("#timer-conversation", Input)
    assert field.value == "30s"
    field.value = "nonsense"
    field.focus()
    await pilot.press("enter")
    await until(
        pilot, lambda: "cannot read the timer" in str(dialog.query_one(".error", Static).content), "error"
    )
    field.value = "5s"
    await pilot.press("enter")
    await until(pilot, lambda: isinstance(app.screen, MainScreen), "the timer dialog to close")
    assert app.client is not None
    assert next(c for c in app.client.contacts() if c.name == "bob").timer == 5
    await bob.sync()
    assert bob.contacts()[0].timer == 5

    main.query_one("#composer", Input).focus()
    await type_text(pilot, "gone soon")
    await pilot.press("enter")
    await until(pilot, lambda: any("gone soon" in line for line in view.lines), "the 5 s message")
    line = next(line for line in view.lines if "gone soon" in line)
    assert line.endswith(("5s", "4s")), line
    await until(pilot, lambda: not any("gone soon" in line for line in view.lines), "it to vanish", 7.0)
    assert all(m.text != "gone soon" for m in app.client.history("bob"))


async def revoked_contact(pilot: Pilot[None], app: KluisApp, carol: Client) -> None:
    main = screen_of(app, MainScreen)
    contacts = main.query_one(ContactList)
    view = main.query_one(ConversationView)
    await carol.revoke()
    contacts.focus()
    contacts.highlighted = contacts.get_option_index("carol")
    await pilot.press("enter")
    await until(pilot, lambda: any("carol: psst" in line for line in view.lines), "carol's message")
    assert contacts.rows["carol"] == "  carol"
    await type_text(pilot, "are you there")
    await pilot.press("enter")
    # The server refuses it: it stays in the conversation, failed, and carol is marked revoked.
    await until(pilot, lambda: any("are you there  ✗" in line for line in view.lines), "the failed mark")
    await until(pilot, lambda: contacts.rows["carol"] == "✗ carol", "the revoked marker")
    await until(pilot, lambda: any("revoked" in n for n in notifications(app)), "the ContactRevoked notice")
    composer = main.query_one("#composer", Input)
    assert composer.value == ""
    app.clear_notifications()
    # Now known to be revoked: refused before it is stored, and the text is given back.
    await type_text(pilot, "again")
    await pilot.press("enter")
    await until(pilot, lambda: any("revoked" in n for n in notifications(app)), "the second notice")
    assert composer.value == "again"
    assert not any("again" in line for line in view.lines)
    composer.value = ""
    app.clear_notifications()


async def set_duress_passphrase(pilot: Pilot[None], app: KluisApp, profile: Path) -> None:
    await pilot.press("f6")
    dialog = screen_of(app, DuressScreen)
    for selector, value in [
        ("#duress-passphrase", "alice pass"),
        ("#duress-new", "alice duress"),
        ("#duress-confirm", "alice duress!"),
    ]:
        dialog.query_one(selector, Input).value = value
    dialog.query_one("#duress-confirm", Input).focus()
    await pilot.press("enter")
    await until(pilot, lambda: "differ" in str(dialog.query_one(".error", Static).content), "the mismatch")
    dialog.query_one("#duress-confirm", Input).value = "alice duress"
    await pilot.click("#save")
    await until(pilot, lambda: isinstance(app.screen, MainScreen), "the duress dialog to close")
    # Read-only check (keyslots.unlock never erases): the duress passphrase now opens the duress slot.
    assert isinstance(keyslots.unlock(profile / "keyslots", "alice duress"), keyslots.Duress)


async def panic(pilot: Pilot[None], app: KluisApp, profile: Path, bob: Client) -> None:
    started = time.monotonic()
    await pilot.press("f12")
    await until(pilot, lambda: isinstance(app.screen, NoProfileScreen), "the fresh-install screen")
    assert not profile.exists()
    # Generous for a loaded CI machine; the erase itself is immediate (the revocation goes out in
    # the background with its own 2 s limit).
    assert time.monotonic() - started < 3.0
    assert app.client is None
    await app.wait_background()
    # The revocation reached the relay: bob's next message is refused.
    with pytest.raises(ContactRevoked):
        await bob.send("alice", "still there?")
    assert bob.contacts()[0].revoked


# -- duress passphrase, panic while locked, fresh install ------------------------------------


def test_duress_passphrase_looks_like_a_fresh_install(tmp_path: Path) -> None:
    asyncio.run(asyncio.wait_for(duress_session(tmp_path), 30))


async def duress_session(tmp_path: Path) -> None:
    async with running_server(tmp_path / "server") as server:
        (code,) = await add_codes(server.data_dir, 1)
        profile = tmp_path / "profile"
        client = await new_client(server, profile, "pass", code)
        me = client.me
        set_duress(
            client.profile,
            "pass",
            "duress",
            PanicInfo(me.server_url, me.fingerprint, client.revocation_statement().to_bytes()),
            os.urandom,
        )
        await client.close()
        # KLUIS_PASSPHRASE: the app unlocks at start, here with the duress passphrase.
        app = KluisApp(profile, "duress")
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: isinstance(app.screen, NoProfileScreen), "the fresh-install screen")
            assert not profile.exists()
            await app.wait_background()
            await pilot.pause(0.2)
            wiped = screenshot(app)
        with pytest.raises(RelayClientError) as refused:
            await server.http.bundle(me.account, me.token)
        assert refused.value.code == "revoked"

    fresh = KluisApp(tmp_path / "never-created")
    async with fresh.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: isinstance(fresh.screen, NoProfileScreen), "the fresh-install screen")
        await pilot.pause(0.2)
        assert screenshot(fresh) == wiped


def test_panic_key_on_the_unlock_screen(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_server(tmp_path / "server") as server:
            (code,) = await add_codes(server.data_dir, 1)
            profile = tmp_path / "profile"
            await (await new_client(server, profile, "pass", code)).close()
            app = KluisApp(profile)
            async with app.run_test(size=SIZE) as pilot:
                screen_of(app, UnlockScreen)
                await pilot.press("f12")
                await until(
                    pilot, lambda: isinstance(app.screen, NoProfileScreen), "the fresh-install screen"
                )
                assert not profile.exists()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_message_text_cannot_drive_the_terminal() -> None:
    from kluis.client.client import Message
    from kluis.tui.format import message_line

    hostile = "\x1b]0;pwned\x07\x1b[2Jhi\u202eevil"
    line = message_line(Message("bob\x1b[31m", "in", "text", "00", hostile, 0.0, 0, "received", None), 0.0)
    assert "\x1b" not in line.plain
    assert "\u202e" not in line.plain
    assert "hi" in line.plain
