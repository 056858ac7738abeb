"""Signal's Double Ratchet (revision 4), without header encryption: the ratchet message later travels
inside a sealed HPKE envelope, which hides the header from the server.

Modules: ``constants`` (bounds, each with its reason), ``kdf`` (KDF_RK, KDF_CK), ``aead`` (pluggable
AEAD and AD layout), ``header`` (wire format), ``serialize`` (state format), ``session`` (the state object).
The byte-level specification is docs/PROTOCOL.md §6.
"""

from __future__ import annotations

from kluis.protocol.ratchet.aead import DEFAULT_AEAD, AesGcmAead, RatchetAead, concat_ad_layout
from kluis.protocol.ratchet.header import RatchetMessage, parse_message
from kluis.protocol.ratchet.session import RatchetSession

__all__ = [
    "DEFAULT_AEAD",
    "AesGcmAead",
    "RatchetAead",
    "RatchetMessage",
    "RatchetSession",
    "concat_ad_layout",
    "parse_message",
]
