"""Settings dialogs: the disappearing timers, and the duress passphrase."""

from __future__ import annotations

import asyncio
import os

from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Button, Input, Label, Static

from kluis.client.client import Client
from kluis.client.durations import format_timer, parse_timer
from kluis.client.panic import PanicInfo
from kluis.client.profile import set_duress
from kluis.tui.screens.dialog import Dialog


class TimerScreen(Dialog):
    """The open conversation's timer (sent to the contact too) and the default for new ones."""

    AUTO_FOCUS = "Input"

    def __init__(self, client: Client, name: str | None) -> None:
        super().__init__()
        self.client = client
        self.contact = name
        info = next((c for c in client.contacts() if c.name == name), None)
        self.current = info.timer if info is not None else None
        self.default = client.me.settings.default_timer

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static("Disappearing messages", classes="title")
            with VerticalScroll(classes="body"):
                if self.contact is not None and self.current is not None:
                    yield Label(f"This conversation, with {self.contact} (they see the change):")
                    yield Input(format_timer(self.current), id="timer-conversation")
                yield Label("Default for new conversations:")
                yield Input(format_timer(self.default), id="timer-default")
                yield Static("off, or 5s to 4w: e.g. 30s, 5m, 2h, 1d, 1h30m", classes="help")
            yield self.error_line()
            with Horizontal(classes="buttons"):
                yield Button("Save", id="save", variant="primary")
                yield Button("Cancel", id="cancel")

    @on(Button.Pressed, "#save")
    @on(Input.Submitted)
    @work(exclusive=True)
    async def _save(self) -> None:
        if await self.attempt(self._apply):
            self.finish(True)

    async def _apply(self) -> None:
        # Both are parsed before either is applied, so a typo in one changes nothing.
        default = parse_timer(self.query_one("#timer-default", Input).value)
        conversation = None
        if self.contact is not None and self.current is not None:
            conversation = parse_timer(self.query_one("#timer-conversation", Input).value)
        if default != self.default:
            self.client.set_default_timer(default)
            self.default = default
        if self.contact is not None and conversation is not None and conversation != self.current:
            await self.client.set_timer(self.contact, conversation)
            self.current = conversation

    @on(Button.Pressed, "#cancel")
    def _cancel(self) -> None:
        self.finish(False)


class DuressScreen(Dialog):
    """Sets (or replaces) the duress passphrase; needs the normal passphrase."""

    AUTO_FOCUS = "#duress-passphrase"

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static("Duress passphrase", classes="title")
            with VerticalScroll(classes="body"):
                yield Static(
                    "Typed instead of your passphrase, it erases this profile at once and revokes "
                    "the account; Kluis then looks as if it was never set up.",
                    classes="help",
                )
                yield Label("Your passphrase:")
                yield Input(password=True, id="duress-passphrase")
                yield Label("Duress passphrase:")
                yield Input(password=True, id="duress-new")
                yield Label("Duress passphrase again:")
                yield Input(password=True, id="duress-confirm")
            yield self.error_line()
            with Horizontal(classes="buttons"):
                yield Button("Save", id="save", variant="primary")
                yield Button("Cancel", id="cancel")

    def __init__(self, client: Client) -> None:
        super().__init__()
        self.client = client

    @on(Button.Pressed, "#save")
    @on(Input.Submitted, "#duress-confirm")
    @work(exclusive=True)
    async def _save(self) -> None:
        self.query_one("#save", Button).disabled = True
        try:
            done = await self.attempt(self._apply)
        finally:
            self.query_one("#save", Button).disabled = False
        if done:
            self.finish(True)

    @on(Input.Submitted, "#duress-passphrase, #duress-new")
    def _next(self) -> None:
        self.focus_next()

    async def _apply(self) -> None:
        passphrase = self.query_one("#duress-passphrase", Input).value
        duress = self.query_one("#duress-new", Input).value
        if duress != self.query_one("#duress-confirm", Input).value:
            raise ValueError("the two duress passphrases differ")
        me = self.client.me
        info = PanicInfo(me.server_url, me.fingerprint, self.client.revocation_statement().to_bytes())
        # Argon2id runs several times here; set_duress touches only the key-slot and panic files
        # (no database connection), so it can leave the event loop.
        await asyncio.to_thread(set_duress, self.client.profile, passphrase, duress, info, os.urandom)
        for field in self.query(Input):
            field.value = ""

    @on(Button.Pressed, "#cancel")
    def _cancel(self) -> None:
        self.finish(False)


__all__ = ["DuressScreen", "TimerScreen"]
