"""Fuzz target: invite URIs and bodies; an accepted input must serialize back to itself.

A first byte ``B`` feeds the rest to ``Invite.from_bytes``; any other input is read as text twice,
as latin-1 and as UTF-8 with replacement characters, and fed to ``Invite.from_uri``.
"""

from __future__ import annotations

import contextlib

from kluis.client.invite import URI_PREFIX, InvalidInvite, Invite

EXPECTED = (InvalidInvite,)


def _uri(text: str) -> None:
    invite = Invite.from_uri(text)
    # from_uri accepts surrounding whitespace and any case of the prefix; nothing else varies.
    if invite.to_uri() != URI_PREFIX + text.strip()[len(URI_PREFIX) :]:
        raise AssertionError("from_uri accepted a text that does not serialize back to itself")


def target(data: bytes) -> None:
    if data[:1] == b"B":
        if Invite.from_bytes(data[1:]).to_bytes() != data[1:]:
            raise AssertionError("from_bytes accepted bytes that do not serialize back to themselves")
        return
    # Both readings run; a refusal of the first must not hide a bug the second finds.
    with contextlib.suppress(InvalidInvite):
        _uri(data.decode("latin-1"))
    _uri(data.decode("utf-8", "replace"))
