"""``kluis chat``: the Textual terminal app over the client SDK (kluis.client).

Layout (STYLE.md §8): ``app.py`` (the App, unlocking, the panic key, ``run_app``), ``screens/`` (one
module per screen or group of dialogs), ``widgets/`` (the conversation list and the conversation),
``format.py`` (how messages and contacts read), ``panic.py`` (the silent revocation), ``app.tcss``.
The package imports nothing at import time, so ``kluis`` starts without loading Textual.
"""
