"""QR codes for the terminal (invites, safety numbers): segno's compact writer, Unicode half blocks.

segno draws light modules as blocks and dark ones as blanks, with no escape codes, which reads
correctly on the usual light-on-dark terminal and prints the same in a file or a TUI widget.
"""

from __future__ import annotations

import io

import segno


def qr_text(data: str | bytes) -> str:
    """``data`` as a QR code (error correction M) in half-block characters."""
    out = io.StringIO()
    segno.make_qr(data, error="m").terminal(out=out, compact=True)
    return out.getvalue()


__all__ = ["qr_text"]
