"""The main screen: conversations on the left, the open conversation and the composer on the right.

Display and timers: the SDK starts a received message's timer when :meth:`Client.take_new` hands
it out. The screen takes the open conversation's new messages only (``take_new(name)``), when it is
opened or gets new messages while open; other conversations keep theirs unread, timers not started.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer, Input, Static

from kluis.client.client import Client, ContactInfo, Event
from kluis.client.errors import ClientError
from kluis.tui.format import conversation_title
from kluis.tui.screens.dialog import error_text
from kluis.tui.screens.invites import AcceptScreen, InviteScreen
from kluis.tui.screens.safety import SafetyNumberScreen
from kluis.tui.screens.settings import DuressScreen, TimerScreen
from kluis.tui.widgets.contacts import ContactList
from kluis.tui.widgets.conversation import ConversationView

TICK = 1.0
"""Seconds between countdown updates (and removal of expired messages from the screen)."""
NO_CONVERSATION = "Choose a conversation on the left (Enter), or add a contact: F2 invite, F3 accept."
NO_CONTACTS = "No contacts yet: F2 makes an invite, F3 accepts one."


class MainScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("f2", "invite", "Invite"),
        Binding("f3", "accept", "Accept"),
        Binding("f4", "safety", "Safety"),
        Binding("f5", "timer", "Timer"),
        Binding("f6", "duress", "Duress"),
    ]

    def __init__(self, client: Client) -> None:
        super().__init__()
        self.client = client
        self.open_name: str | None = None
        self._unsubscribe: list[Callable[[], None]] = []
        self._refresh_scheduled = False

    def compose(self) -> ComposeResult:
        with Horizontal(id="main"):
            yield ContactList(id="contacts")
            with Vertical(id="chat"):
                yield Static(NO_CONVERSATION, id="hint")
                yield ConversationView(id="conversation")
                yield Input(placeholder="Message (Enter sends)", id="composer", disabled=True)
        yield Footer()

    async def on_mount(self) -> None:
        self._unsubscribe.append(self.client.subscribe(self._on_event))
        self.query_one("#chat").border_title = "Kluis"
        # Through the message queue, so a tick never interleaves with a refresh.
        self.set_interval(TICK, lambda: self.call_later(self._tick))
        await self.refresh_all()
        self.query_one(ContactList).focus()

    def on_unmount(self) -> None:
        self.detach()

    def detach(self) -> None:
        """Stops listening to the client (before it closes, or when the profile is erased)."""
        while self._unsubscribe:
            self._unsubscribe.pop()()

    # -- keeping up with the client -------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        """The SDK's listener (called inside its code): only schedules a refresh."""
        del event  # every event leads to the same refresh; several are coalesced into one
        if not self._refresh_scheduled:
            self._refresh_scheduled = True
            self.call_later(self.refresh_all)

    async def refresh_all(self) -> None:
        self._refresh_scheduled = False
        if not self._unsubscribe:
            return  # detached: the client may be closed
        now = time.time()
        contacts = self.client.contacts()
        info = self._info(contacts, self.open_name)
        if info is not None and info.unread:
            self._take_new()
            contacts = self.client.contacts()
            info = self._info(contacts, self.open_name)
        self._show_contacts(contacts, now)
        if info is not None:
            await self.query_one(ConversationView).show(self.client.history(info.name), now)
            self.query_one("#chat").border_title = conversation_title(info)

    def _take_new(self) -> None:
        if self.open_name is not None:
            self.client.take_new(self.open_name)

    def _show_contacts(self, contacts: list[ContactInfo], now: float) -> None:
        unread = Counter({c.name: c.unread for c in contacts if c.unread})
        self.query_one(ContactList).show(contacts, unread)
        if self.open_name is None:
            self.query_one("#hint", Static).update(NO_CONVERSATION if contacts else NO_CONTACTS)

    @staticmethod
    def _info(contacts: list[ContactInfo], name: str | None) -> ContactInfo | None:
        return next((c for c in contacts if c.name == name), None)

    async def _tick(self) -> None:
        if not self._unsubscribe:
            return
        now = time.time()
        if await self.query_one(ConversationView).tick(now):
            # Gone from the screen; the SDK deletes them too (run() does only while connected).
            self.client.expire()

    # -- the conversation -----------------------------------------------------------------------

    @on(ContactList.Opened)
    async def open_conversation(self, event: ContactList.Opened) -> None:
        self.open_name = event.name
        self.query_one("#hint").display = False
        await self.query_one(ConversationView).clear()
        composer = self.query_one("#composer", Input)
        composer.disabled = False
        composer.placeholder = f"Message to {event.name} (Enter sends)"
        await self.refresh_all()
        composer.focus()

    @on(Input.Submitted, "#composer")
    def _composer_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        text = event.value.strip()
        if not text or self.open_name is None:
            return
        event.input.value = ""
        self._send(self.open_name, text)

    @work(group="send")
    async def _send(self, name: str, text: str) -> None:
        before = self._outgoing(name)
        try:
            await self.client.send(name, text)
        except (ClientError, ValueError) as error:
            title = error.title if isinstance(error, ClientError) else "Not sent"
            self.notify(error_text(error), title=title, severity="error", timeout=8)
            # Refused before it was stored (e.g. a contact known to be revoked): give the text back.
            # A message the server refused stays in the conversation, marked failed.
            composer = self.query_one("#composer", Input)
            if not self._outgoing(name) - before and not composer.value:
                composer.value = text

    def _outgoing(self, name: str) -> set[str]:
        try:
            return {m.id for m in self.client.history(name) if m.direction == "out"}
        except ClientError:
            return set()

    # -- dialogs --------------------------------------------------------------------------------

    def _need_conversation(self) -> str | None:
        if self.open_name is None:
            self.notify("Open a conversation first.", severity="warning")
        return self.open_name

    async def action_invite(self) -> None:
        await self.app.push_screen(InviteScreen(self.client), self._after_dialog)

    async def action_accept(self) -> None:
        await self.app.push_screen(AcceptScreen(self.client), self._after_dialog)

    async def action_safety(self) -> None:
        name = self._need_conversation()
        if name is not None:
            await self.app.push_screen(SafetyNumberScreen(self.client, name), self._after_verify)

    async def action_timer(self) -> None:
        await self.app.push_screen(TimerScreen(self.client, self.open_name), self._after_dialog)

    async def action_duress(self) -> None:
        await self.app.push_screen(DuressScreen(self.client), self._after_duress)

    async def _after_dialog(self, done: bool | None) -> None:
        del done
        await self.refresh_all()

    async def _after_verify(self, done: bool | None) -> None:
        if done:
            self.notify(f"{self.open_name} is verified.")
        await self.refresh_all()

    def _after_duress(self, done: bool | None) -> None:
        if done:
            self.notify("Duress passphrase set.")


__all__ = ["MainScreen"]
