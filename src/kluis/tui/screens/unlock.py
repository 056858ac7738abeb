"""The first screen: the passphrase (or the duress passphrase, which nothing here tells apart)."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.containers import Center, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Input, Static


class UnlockScreen(Screen[None]):
    """Asks for the passphrase; the app does the unlocking and calls :meth:`busy` / :meth:`fail`."""

    class Submitted(Message):
        def __init__(self, passphrase: str) -> None:
            super().__init__()
            self.passphrase = passphrase

    def compose(self) -> ComposeResult:
        with Center(), Vertical(id="unlock", classes="box"):
            yield Static("Kluis", classes="title")
            yield Static("Passphrase:")
            yield Input(password=True, id="passphrase")
            yield Static("", id="unlock-status")
        yield Footer()

    @on(Input.Submitted, "#passphrase")
    def _submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if event.value:
            self.post_message(self.Submitted(event.value))

    def busy(self) -> None:
        field = self.query_one("#passphrase", Input)
        field.value = ""
        field.disabled = True
        self.status = "Unlocking…"

    def fail(self, message: str) -> None:
        field = self.query_one("#passphrase", Input)
        field.disabled = False
        field.focus()
        self.status = message

    @property
    def status(self) -> str:
        return str(self.query_one("#unlock-status", Static).content)

    @status.setter
    def status(self, text: str) -> None:
        self.query_one("#unlock-status", Static).update(text)


class NoProfileScreen(Screen[None]):
    """What a device without a profile shows; also what follows the panic key or duress passphrase."""

    def compose(self) -> ComposeResult:
        with Center(), Vertical(id="no-profile", classes="box"):
            yield Static("Kluis", classes="title")
            yield Static(
                "There is no profile on this device.\n\n"
                "Create one with `kluis init`, then start `kluis chat` again.",
                id="no-profile-text",
            )
        yield Footer()


__all__ = ["NoProfileScreen", "UnlockScreen"]
