"""Named bounds and constants of the Double Ratchet, each with the reason for its value.

Signal's Double Ratchet specification (revision 4, 2025; the 2016 revision 1 reads the same on these
points) leaves these choices to the application. STYLE.md §2: "Name every bound and say why".
"""

from __future__ import annotations

from typing import Final

MESSAGE_VERSION: Final = 1
"""First byte of every ratchet message. A receiver rejects any other value with UnsupportedVersion, so a
later wire change (e.g. header encryption, spec §4) can be introduced under a new number."""

STATE_VERSION: Final = 1
"""First byte of a serialized session. Independent of MESSAGE_VERSION: storage and wire evolve apart."""

KEY_LEN: Final = 32
"""X25519 public/private keys, root keys, chain keys and message keys are all 32 bytes."""

HEADER_LEN: Final = 1 + KEY_LEN + 4 + 4
"""version u8, DH ratchet public key (32), PN u32, N u32: 41 bytes, fixed, so that the default AD layout
``AD || header`` parses uniquely from its end."""

MIN_CIPHERTEXT_LEN: Final = 16
"""Every AEAD we accept appends a tag of at least 16 bytes (AES-GCM: exactly 16). Anything shorter is
malformed and is rejected by the parser before any key is derived."""

MAX_MESSAGE_LEN: Final = 1 << 20
"""1 MiB. Plaintexts are padded to size buckets (DESIGN.md) far below this; attachments travel encrypted
out of band. The bound keeps a hostile peer from making the receiver authenticate huge blobs."""

MAX_AD_LEN: Final = 1024
"""The associated data comes from the PQXDH handshake (two encoded identity keys plus context, well under
a kilobyte). Bounded so that a corrupted serialized state cannot claim a giant field."""

ROOT_KDF_INFO: Final = b"Kluis DoubleRatchet v1 root"
"""HKDF info of KDF_RK (spec §5.2: "an application-specific byte sequence distinct from other uses of
HKDF in the application")."""

CHAIN_MESSAGE_CONSTANT: Final = b"\x01"
CHAIN_NEXT_CONSTANT: Final = b"\x02"
"""KDF_CK inputs, exactly the spec's recommendation (§5.2): HMAC-SHA256(ck, 0x01) is the message key,
HMAC-SHA256(ck, 0x02) the next chain key."""

MAX_SKIP: Final = 2000
"""Spec §3.2 MAX_SKIP: the most message keys one message may make us derive and store in a single chain
(its N minus our Nr, or the header's PN minus our Nr when the sender ratcheted). Exactly MAX_SKIP is
accepted, MAX_SKIP + 1 raises TooManySkipped.

"High enough to tolerate routine lost or delayed messages, but low enough that a malicious sender can't
trigger excessive recipient computation" (§3.5). 2000 equals libsignal's MAX_MESSAGE_KEYS (what it stores
per chain); libsignal lets a sender jump 25000 (MAX_FORWARD_JUMPS) but then keeps only 2000 of the keys,
so the other 23000 HMAC pairs are work spent on keys thrown away. A jump of 2000 costs about 4000 HMACs
(~4 ms): cheap enough that a forged header cannot stall us, large enough for a phone that was offline
through a busy group conversation."""

MAX_SKIPPED_KEYS: Final = 2000
"""Total skipped message keys stored across all receiving chains of a session.

When a successful message would push the store over this bound, the OLDEST keys are evicted (and the
messages they belong to become undecryptable, reported as DuplicateMessage) instead of the message being
rejected. Rejecting would wedge the session for good: keys of messages that were lost forever (a relay
expired them) would fill the store and every later gap would be refused. Evicting oldest-first drops the
keys least likely to still be needed, and spec §3.5 notes that deleting skipped keys after some time or
count is expected. It is at least MAX_SKIP, so one accepted jump always fits. libsignal stores 2000 per
chain; vodozemac 40 per chain over 5 chains. 2000 x (4 + 32) bytes bounds a serialized session at ~72 KB."""

MAX_OLD_CHAINS: Final = 5
"""Previous receiving chains whose keys (and replay markers) are remembered, besides the current one.

A message from an older chain than this is refused: its ratchet key is no longer known, so it is
treated like an unknown (new) ratchet key and fails authentication (DecryptionError), state unchanged.
Honest peers only leave a chain behind once a round trip happened, so a chain five ratchet steps old
means five round trips overtook the message; libsignal (MAX_RECEIVER_CHAINS) and vodozemac both keep 5.
Older chains are evicted oldest first together with their skipped keys, which also limits how long a
stolen state can read delayed messages (spec §3.5 and §6.5 on deleting skipped message keys)."""

MAX_COUNTER: Final = 0xFFFF_FFFF
"""N and PN are u32 on the wire. A sending chain that reaches this many messages must ratchet first; in
practice a DH step happens on every reply, so this is never reached."""
