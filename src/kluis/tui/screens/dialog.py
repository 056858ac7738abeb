"""What every dialog shares: Escape closes it, and a failed action shows its one-line error inside it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import ClassVar

from textual.binding import Binding, BindingType
from textual.screen import ModalScreen
from textual.widgets import Static

from kluis.client.errors import ClientError, IdentityChanged, ProfileError

IDENTITY_CHANGED = (
    "the contact's identity key changed: compare the safety number (F4) and mark it verified before sending"
)
"""The SDK's wording names the CLI command; in the app the safety number is one key away."""


def error_text(error: Exception) -> str:
    """The one line a user sees for an SDK error (ClientError and ProfileError carry ``message``)."""
    if isinstance(error, IdentityChanged):
        return IDENTITY_CHANGED
    if isinstance(error, ClientError | ProfileError):
        return error.message
    return str(error)


class Dialog(ModalScreen[bool]):
    """A modal dialog; dismissed with True when its action was done, False when cancelled."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Close")]

    def error_line(self) -> Static:
        return Static("", classes="error")

    def action_cancel(self) -> None:
        self.finish(False)

    def finish(self, result: bool) -> None:
        """Dismisses the dialog. Never awaited: Textual refuses that from the dialog's own handlers."""
        _ = self.dismiss(result)

    def show_error(self, text: str) -> None:
        self.query_one(".error", Static).update(text)

    async def attempt(self, action: Callable[[], Awaitable[None]]) -> bool:
        """Runs ``action``; on a user-facing error shows it in the dialog and returns False."""
        self.show_error("")
        try:
            await action()
        except (ClientError, ProfileError, ValueError, OSError) as error:
            self.show_error(error_text(error))
            return False
        return True


__all__ = ["Dialog", "error_text"]
