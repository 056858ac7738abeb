"""The conversation list (left pane): one row per contact with its markers and unread count."""

from __future__ import annotations

from collections.abc import Mapping

from textual import on
from textual.message import Message
from textual.widgets import OptionList
from textual.widgets.option_list import Option

from kluis.client.client import ContactInfo
from kluis.tui.format import contact_prompt


class ContactList(OptionList):
    """Contacts by name; Enter (or a click) opens the conversation."""

    class Opened(Message):
        """The user chose a conversation."""

        def __init__(self, name: str) -> None:
            super().__init__()
            self.name = name

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.border_title = "Conversations"
        self._names: list[str] = []
        self.rows: dict[str, str] = {}
        """Each contact's row as plain text (tests and screen readers read this)."""

    def show(self, contacts: list[ContactInfo], unread: Mapping[str, int]) -> None:
        """Redraws the rows; keeps the highlighted contact highlighted."""
        names = [c.name for c in contacts]
        prompts = {c.name: contact_prompt(c, unread.get(c.name, 0)) for c in contacts}
        if names == self._names:
            for name, prompt in prompts.items():
                if self.rows.get(name) != prompt.plain:
                    self.replace_option_prompt(name, prompt)
        else:
            highlighted = self.highlighted_name
            self.set_options(Option(prompts[name], id=name) for name in names)
            if highlighted in names:
                self.highlighted = names.index(highlighted)
            elif names:
                self.highlighted = 0
            self._names = names
        self.rows = {name: prompt.plain for name, prompt in prompts.items()}

    @property
    def highlighted_name(self) -> str | None:
        if self.highlighted is None or not 0 <= self.highlighted < len(self._names):
            return None
        return self._names[self.highlighted]

    @on(OptionList.OptionSelected)
    def _selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        if event.option.id is not None:
            self.post_message(self.Opened(event.option.id))


__all__ = ["ContactList"]
