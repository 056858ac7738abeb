"""Errors of the relay service, each with the HTTP status a route maps it to (h11's
``error_status_hint``). Messages are safe to show a client: no ids, keys or addresses.

    RelayError
    ├── BadRequest            malformed or out-of-bounds input (400)
    ├── TooLarge              a request body over the limit (413)
    ├── CodeInvalid           unknown or already redeemed activation code (403)
    ├── Rejected              unknown account or wrong delivery token, one error for both (403)
    ├── AuthFailed            the identity signature did not verify (401)
    ├── SubscriptionExpired   the account may receive but not send until it redeems a code (402)
    ├── Revoked               the account was revoked; carries the signed statement (410)
    ├── NoBundle              the account has not uploaded its keys yet (404)
    └── Unavailable           storage failed; nothing was changed, try again (503)

FanOutError is not a RelayError: it stops a node from starting and is shown to the operator only.
It lives here rather than in fanout.py so that ``kluis server`` can catch it without importing the
Redis client (a quarter of a second of every start) when no Redis is configured.
"""

from __future__ import annotations


class RelayError(Exception):
    status = 500
    code = "internal"


class BadRequest(RelayError):
    status = 400
    code = "bad_request"


class TooLarge(RelayError):
    status = 413
    code = "too_large"

    def __init__(self) -> None:
        super().__init__("body too large")


class CodeInvalid(RelayError):
    status = 403
    code = "code_invalid"

    def __init__(self) -> None:
        super().__init__("activation code unknown or already used")


class Rejected(RelayError):
    status = 403
    code = "rejected"

    def __init__(self) -> None:
        super().__init__("unknown account or wrong delivery token")


class AuthFailed(RelayError):
    status = 401
    code = "auth_failed"

    def __init__(self) -> None:
        super().__init__("authentication failed")


class SubscriptionExpired(RelayError):
    status = 402
    code = "subscription_expired"

    def __init__(self) -> None:
        super().__init__(
            "subscription expired: this account can receive but not send until it redeems a code"
        )


class Revoked(RelayError):
    status = 410
    code = "revoked"

    def __init__(self, statement: bytes | None) -> None:
        super().__init__("account revoked")
        self.statement = statement


class NoBundle(RelayError):
    status = 404
    code = "no_bundle"

    def __init__(self) -> None:
        super().__init__("the account has published no keys yet")


class Unavailable(RelayError):
    status = 503
    code = "unavailable"

    def __init__(self) -> None:
        super().__init__("storage unavailable; nothing was changed, try again")


class FanOutError(Exception):
    """The fan-out cannot start (the message is one line for the operator)."""
