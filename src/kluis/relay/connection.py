"""Connection states of the relay protocol and the one table of what the client may send in each.

Every connection starts with the server's CHALLENGE. The client then either authenticates as an
account (AUTH: a *mailbox* connection, which receives deliveries and manages its keys) or opens an
anonymous *sending* connection (OPEN_SEND with the day's send pass), which can only send. Sends never
travel on an authenticated connection, so the server cannot tie a send to an account (DESIGN.md,
"Sealed sender").
"""

from __future__ import annotations

import enum

from kluis.protocol.errors import RemoteProtocolError
from kluis.relay.frames import FrameType


class State(enum.Enum):
    AWAIT_HELLO = "await hello"
    MAILBOX = "mailbox"
    SENDING = "sending"
    CLOSED = "closed"


TRANSITIONS: dict[tuple[State, FrameType], State] = {
    (State.AWAIT_HELLO, FrameType.AUTH): State.MAILBOX,
    (State.AWAIT_HELLO, FrameType.OPEN_SEND): State.SENDING,
    (State.MAILBOX, FrameType.RECEIPT): State.MAILBOX,
    (State.MAILBOX, FrameType.UPLOAD_KEYS): State.MAILBOX,
    (State.MAILBOX, FrameType.GET_SEND_PASS): State.MAILBOX,
    (State.SENDING, FrameType.SEND): State.SENDING,
}
"""(state, frame the client sent) -> next state. Anything else is refused with FrameNotAllowed."""


class FrameNotAllowed(RemoteProtocolError):
    """The client sent a frame its connection's state does not allow."""

    def __init__(self, state: State, frame: FrameType) -> None:
        super().__init__(f"{frame.name} not allowed in state {state.value}")
        self.state = state
        self.frame = frame


def next_state(state: State, frame: FrameType) -> State:
    """Raises FrameNotAllowed unless the table allows ``frame`` in ``state``."""
    try:
        return TRANSITIONS[(state, frame)]
    except KeyError:
        raise FrameNotAllowed(state, frame) from None


__all__ = ["TRANSITIONS", "FrameNotAllowed", "State", "next_state"]
