"""QR codes for the terminal (invites, safety numbers), drawn with segno in half-block characters."""

from __future__ import annotations

import segno

_BLOCKS = {(True, True): "█", (True, False): "▀", (False, True): "▄", (False, False): " "}


def qr_text(data: str | bytes, *, border: int = 2) -> str:
    """The QR code of ``data`` as lines of half blocks (two modules per character), dark on light.

    No terminal escape codes: it prints the same in any terminal, file or TUI widget.
    """
    code = segno.make(data, error="m")
    rows = [[bool(v) for v in row] for row in code.matrix_iter(scale=1, border=border)]
    if len(rows) % 2:
        rows.append([False] * len(rows[0]))
    # Inverted (light modules drawn) so the code reads on a dark terminal background.
    lines = []
    for top, bottom in zip(rows[0::2], rows[1::2], strict=True):
        lines.append("".join(_BLOCKS[(not a, not b)] for a, b in zip(top, bottom, strict=True)))
    return "\n".join(lines)


__all__ = ["qr_text"]
