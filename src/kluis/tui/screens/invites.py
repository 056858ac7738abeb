"""Adding contacts: making an invite (link and QR code) and accepting one."""

from __future__ import annotations

from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Button, Input, Label, Static, TextArea

from kluis.client.client import Client
from kluis.client.invite import Invite
from kluis.tui.screens.dialog import Dialog


class InviteScreen(Dialog):
    """Asks for the new contact's name, then shows the single-use invite as a link and a QR code."""

    AUTO_FOCUS = "#invite-name"

    def __init__(self, client: Client) -> None:
        super().__init__()
        self.client = client
        self.invite: Invite | None = None

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog tall"):
            yield Static("Invite a contact", classes="title")
            with VerticalScroll(classes="body"):
                with Vertical(id="invite-ask"):
                    yield Label("Name for the new contact (only you see it):")
                    yield Input(id="invite-name")
                with Vertical(id="invite-show"):
                    yield Static("", id="invite-help", classes="help")
                    yield TextArea("", id="invite-uri", read_only=True, soft_wrap=True)
                    yield Static("", id="invite-qr", classes="qr")
            yield self.error_line()
            with Horizontal(classes="buttons"):
                yield Button("Create", id="create", variant="primary")
                yield Button("Close", id="close")

    def on_mount(self) -> None:
        self.query_one("#invite-show").display = False

    @on(Button.Pressed, "#create")
    @on(Input.Submitted, "#invite-name")
    async def _create(self) -> None:
        name = self.query_one("#invite-name", Input).value

        async def make() -> None:
            self.invite = self.client.invite(name)

        if not await self.attempt(make) or self.invite is None:
            return
        self.query_one("#invite-help", Static).update(
            f"Show this code to {name.strip()}, or send the link over a channel you trust. "
            "It works once; whoever uses it becomes the contact you named."
        )
        self.query_one("#invite-uri", TextArea).load_text(self.invite.to_uri())
        self.query_one("#invite-qr", Static).update(self.invite.qr_text().rstrip("\n"))
        self.query_one("#invite-ask").display = False
        self.query_one("#invite-show").display = True
        self.query_one("#create", Button).display = False
        self.query_one("#close", Button).focus()

    @on(Button.Pressed, "#close")
    def _close(self) -> None:
        self.finish(self.invite is not None)


class AcceptScreen(Dialog):
    """Takes a pasted invite link and the name to give its sender, and introduces us to them."""

    AUTO_FOCUS = "#accept-uri"

    def __init__(self, client: Client) -> None:
        super().__init__()
        self.client = client

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static("Accept an invite", classes="title")
            with VerticalScroll(classes="body"):
                yield Label("Invite link:")
                yield Input(placeholder="kluis:invite/…", id="accept-uri")
                yield Label("Name for this contact (only you see it):")
                yield Input(id="accept-name")
            yield self.error_line()
            with Horizontal(classes="buttons"):
                yield Button("Accept", id="accept", variant="primary")
                yield Button("Cancel", id="cancel")

    @on(Input.Submitted, "#accept-uri")
    def _next(self) -> None:
        self.focus_next()

    @on(Button.Pressed, "#accept")
    @on(Input.Submitted, "#accept-name")
    @work(exclusive=True)
    async def _accept(self) -> None:
        uri = self.query_one("#accept-uri", Input).value
        name = self.query_one("#accept-name", Input).value

        async def accept() -> None:
            await self.client.accept(Invite.from_uri(uri), name)

        button = self.query_one("#accept", Button)
        button.disabled = True
        try:
            done = await self.attempt(accept)
        finally:
            button.disabled = False
        if done:
            self.finish(True)

    @on(Button.Pressed, "#cancel")
    def _cancel(self) -> None:
        self.finish(False)


__all__ = ["AcceptScreen", "InviteScreen"]
