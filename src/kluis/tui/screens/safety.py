"""The safety-number dialog: the digits and QR code both sides compare, and "mark verified"."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Button, Static

from kluis.client.client import Client
from kluis.client.qr import qr_text
from kluis.tui.screens.dialog import Dialog

GROUPS_PER_LINE = 3


class SafetyNumberScreen(Dialog):
    """Shows the safety number with one contact. Dismissed with True once marked verified."""

    AUTO_FOCUS = "Button"

    def __init__(self, client: Client, name: str) -> None:
        super().__init__()
        self.client = client
        self.contact = name
        self.number = client.safety_number(name)
        info = next((c for c in client.contacts() if c.name == name), None)
        self.verified = info is not None and info.verified

    def compose(self) -> ComposeResult:
        groups = self.number.display().split()
        lines = [" ".join(groups[i : i + GROUPS_PER_LINE]) for i in range(0, len(groups), GROUPS_PER_LINE)]
        with Vertical(classes="dialog tall"):
            yield Static(f"Safety number with {self.contact}", classes="title")
            with VerticalScroll(classes="body"):
                yield Static(
                    f"Compare these digits with {self.contact}'s screen, in person or on a call you "
                    "trust, or scan the code. If they match, mark the contact verified.",
                    classes="help",
                )
                with Horizontal(classes="safety"):
                    yield Static("\n".join(lines), id="safety-digits")
                    yield Static(qr_text(self.number.qr_payload()), id="safety-qr", classes="qr")
            yield self.error_line()
            with Horizontal(classes="buttons"):
                label = "Verified ✓" if self.verified else "Mark verified"
                yield Button(label, id="verify", variant="success", disabled=self.verified)
                yield Button("Close", id="close")

    @on(Button.Pressed, "#verify")
    async def _verify(self) -> None:
        async def mark() -> None:
            self.client.mark_verified(self.contact)

        if await self.attempt(mark):
            self.finish(True)

    @on(Button.Pressed, "#close")
    def _close(self) -> None:
        self.finish(False)


__all__ = ["SafetyNumberScreen"]
