"""``kluis chat``: the terminal app over the client SDK.

Screens, in the order a session meets them: :class:`UnlockScreen` (or :class:`NoProfileScreen` when
there is no profile), :class:`MainScreen` with its dialogs, and :class:`NoProfileScreen` again after
the panic key or the duress passphrase, identical to what a device that never had a profile shows.

Unlocking runs ``Client.open`` (one Argon2id derivation, about 0.4 s with the default cost) in a
worker thread, so the screen keeps painting "Unlocking…".
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, ClassVar

from textual import work
from textual.app import App
from textual.binding import Binding, BindingType
from textual.screen import Screen

from kluis.client.client import Client
from kluis.client.errors import ClientError, NoProfile, ProfileError
from kluis.client.panic import PanicInfo
from kluis.client.profile import KEYSLOTS_NAME, Wiped, erase
from kluis.tui.panic import DURESS_REVOKE_TIMEOUT, PANIC_REVOKE_TIMEOUT, send_revocation
from kluis.tui.screens.main import MainScreen
from kluis.tui.screens.unlock import NoProfileScreen, UnlockScreen

ClientFactory = Callable[[Path, str], Client | Wiped]
"""Opens a profile with a passphrase (``Client.open``; tests may pass their own)."""

PAINT_WAIT = 0.25
"""At most this long to let "Unlocking…" reach the screen before the loop blocks on Argon2id."""
CLOSE_TIMEOUT = 2.0
"""Seconds the client may take to close its connection when the app quits or the profile is erased."""


class KluisApp(App[None]):
    """The app for one profile directory.

    Args:
        profile_dir: the profile to open.
        passphrase: unlock with this at start (``KLUIS_PASSPHRASE``); None asks on the unlock screen.
        client_factory: how to open the profile (default ``Client.open``).
        client: an already open client (tests): no unlock screen.
    """

    CSS_PATH = "app.tcss"
    TITLE = "Kluis"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+q", "quit", "Quit", priority=True),
        Binding("f12", "panic", "PANIC", priority=True),
    ]

    def __init__(
        self,
        profile_dir: Path,
        passphrase: str | None = None,
        *,
        client_factory: ClientFactory | None = None,
        client: Client | None = None,
    ) -> None:
        super().__init__()
        self.profile_dir = profile_dir
        self._passphrase = passphrase
        self._factory: ClientFactory = client_factory or Client.open
        self.client: Client | None = client
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    # -- start and unlock -----------------------------------------------------------------------

    async def on_mount(self) -> None:
        if self.client is not None:
            await self._start(self.client)
        elif not self.has_profile():
            await self._show_only(NoProfileScreen())
        else:
            await self._show_only(UnlockScreen())
            passphrase, self._passphrase = self._passphrase, None
            if passphrase is not None:
                self._unlock(passphrase)

    def has_profile(self) -> bool:
        return (self.profile_dir / KEYSLOTS_NAME).exists()

    def on_unlock_screen_submitted(self, event: UnlockScreen.Submitted) -> None:
        self._unlock(event.passphrase)

    @work(exclusive=True, group="unlock")
    async def _unlock(self, passphrase: str) -> None:
        screen = self.screen
        if not isinstance(screen, UnlockScreen):
            return
        screen.busy()
        await self._painted()
        try:
            opened = await asyncio.to_thread(self._factory, self.profile_dir, passphrase)
        except NoProfile:
            await self._show_only(NoProfileScreen())
            return
        except (ClientError, ProfileError) as error:
            screen.fail(error.message)
            return
        except OSError as error:
            screen.fail(f"cannot open the profile: {error.strerror or error}")
            return
        del passphrase
        if isinstance(opened, Wiped):
            # The duress passphrase: the profile is already erased. Revoke quietly, look fresh.
            self._revoke_after_duress(opened.panic)
            await self._show_only(NoProfileScreen())
            return
        await self._start(opened)

    async def _painted(self) -> None:
        painted: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def done() -> None:
            if not painted.done():
                painted.set_result(None)

        self.call_after_refresh(done)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(painted, PAINT_WAIT)

    async def _start(self, client: Client) -> None:
        self.client = client
        self._stop = asyncio.Event()
        await self._show_only(MainScreen(client))
        self._run_client(client, self._stop)
        self.refresh_bindings()

    @work(group="client", exit_on_error=False)
    async def _run_client(self, client: Client, stop: asyncio.Event) -> None:
        """Stays connected: receives, sends what is queued, reconnects (Client.run)."""
        try:
            await client.run(stop=stop)
        except ClientError as error:
            if self.client is client:
                self.notify(error.message, title=error.title, severity="error", timeout=15)

    async def _show_only(self, screen: Screen[None]) -> None:
        """Replaces every screen (dialogs included) with ``screen``."""
        while len(self.screen_stack) > 1:
            await self.pop_screen()
        await self.push_screen(screen)
        self.refresh_bindings()

    # -- erasing --------------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "panic":
            # Hidden without a profile, as on a device that never had one.
            return self.client is not None or self.has_profile()
        return True

    async def action_panic(self) -> None:
        """Erases the profile at once, unasked; the revocation goes out beside it, best effort."""
        client, self.client = self.client, None
        if client is not None:
            me = client.me
            statement = client.revocation_statement().to_bytes()
            # Created now, first run at the next await: after the erase below.
            self._spawn(send_revocation(me.server_url, me.fingerprint, statement, PANIC_REVOKE_TIMEOUT))
            self._disconnect(client)
            client.profile.close()
        try:
            erase(self.profile_dir)
        except OSError as error:
            self.notify(f"the profile could not be erased: {error}", severity="error", timeout=30)
        await self._show_only(NoProfileScreen())
        if client is not None:
            self._spawn(_close_quietly(client))

    def _revoke_after_duress(self, panic: PanicInfo | None) -> None:
        if panic is not None:
            self._spawn(
                send_revocation(panic.server_url, panic.fingerprint, panic.statement, DURESS_REVOKE_TIMEOUT)
            )

    def _disconnect(self, client: Client) -> None:
        """Stops the connection and the screens' listeners; the client is not used after this."""
        del client
        self._stop.set()
        self.workers.cancel_group(self, "client")
        for screen in self.screen_stack:
            if isinstance(screen, MainScreen):
                screen.detach()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- quitting -------------------------------------------------------------------------------

    async def action_quit(self) -> None:
        await self.aclose()
        self.exit()

    async def aclose(self) -> None:
        """Closes the client and lets pending revocations finish (each bounded by its own timeout)."""
        client, self.client = self.client, None
        if client is not None:
            self._disconnect(client)
            await _close_quietly(client)
        await self.wait_background()

    async def wait_background(self) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=DURESS_REVOKE_TIMEOUT + CLOSE_TIMEOUT)


async def _close_quietly(client: Client) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(client.close(), CLOSE_TIMEOUT)


def run_app(profile_dir: Path, passphrase: str | None) -> None:
    """Runs ``kluis chat`` for ``profile_dir`` until the user quits.

    Args:
        profile_dir: the profile directory.
        passphrase: unlocks at start when given (``KLUIS_PASSPHRASE``); otherwise the app asks.
    """
    app = KluisApp(profile_dir, passphrase)

    async def main() -> None:
        try:
            await app.run_async()
        finally:
            await app.aclose()

    asyncio.run(main())


__all__ = ["ClientFactory", "KluisApp", "run_app"]
