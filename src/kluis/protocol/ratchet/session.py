"""The Double Ratchet session: spec §3 (Double Ratchet) without header encryption (§4).

State names follow spec §3.2: DHs (own ratchet key pair), DHr (remote ratchet public key), RK, CKs, CKr,
Ns, Nr, PN, MKSKIPPED.

One deliberate reordering of §3.5 DHRatchet: the spec generates the new DHs and derives the new sending
chain as soon as a message with a new DHr arrives. Here ``decrypt`` does only the receiving half (RK, CKr)
and leaves CKs empty; the next ``encrypt`` generates DHs from its ``rng`` and derives RK, CKs. The sequence
of root-chain inputs, keys and headers is exactly the spec's (an honest peer cannot send a newer DHr before
it has seen our new DHs), so we interoperate byte for byte, while ``decrypt`` needs no randomness and a
fresh private key lives only from the moment it is used.

``decrypt`` is transactional (STYLE.md §2, "Save state only after success"): every key is derived into
locals, and the session is changed only after the AEAD accepted the message. A forged, replayed or
over-the-bounds message raises and leaves ``serialize()`` byte-identical.
"""

from __future__ import annotations

from itertools import islice

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from kluis.protocol.errors import (
    DecodeError,
    DecodeReason,
    DecryptionError,
    DuplicateMessage,
    LocalProtocolError,
    TooManySkipped,
)
from kluis.protocol.ratchet.aead import DEFAULT_AEAD, RatchetAead
from kluis.protocol.ratchet.constants import (
    HEADER_LEN,
    KEY_LEN,
    MAX_AD_LEN,
    MAX_COUNTER,
    MAX_MESSAGE_LEN,
    MAX_OLD_CHAINS,
    MAX_SKIP,
    MAX_SKIPPED_KEYS,
    MESSAGE_VERSION,
    MIN_CIPHERTEXT_LEN,
)
from kluis.protocol.ratchet.header import HEADER, split_message
from kluis.protocol.ratchet.kdf import derive_chain, kdf_ck, kdf_rk
from kluis.protocol.ratchet.serialize import StateFields, decode_state, encode_state
from kluis.protocol.rng import Rng

_MAX_PLAINTEXT = MAX_MESSAGE_LEN - HEADER_LEN - MIN_CIPHERTEXT_LEN
_pack_header = HEADER.pack


def _public_key(data: bytes) -> X25519PublicKey:
    if len(data) != KEY_LEN:
        raise DecodeError("ratchet public key", DecodeReason.BAD_KEY)
    return X25519PublicKey.from_public_bytes(data)


class RatchetSession:
    """One party's Double Ratchet state. Create with :meth:`initiator` or :meth:`responder`."""

    __slots__ = (
        "_ad",
        "_aead",
        "_ckr",
        "_cks",
        "_dhr",
        "_dhr_key",
        "_dhs",
        "_dhs_pub",
        "_nr",
        "_ns",
        "_nskipped",
        "_pn",
        "_rk",
        "_skipped",
    )

    def __init__(self, fields: StateFields, aead: RatchetAead) -> None:
        """Internal: use :meth:`initiator`, :meth:`responder` or :meth:`deserialize`."""
        self._aead = aead
        self._ad = fields.ad
        self._rk = fields.rk
        self._dhs = X25519PrivateKey.from_private_bytes(fields.dhs_private)
        self._dhs_pub = self._dhs.public_key().public_bytes_raw()
        self._dhr = fields.dhr
        self._dhr_key = None if fields.dhr is None else X25519PublicKey.from_public_bytes(fields.dhr)
        self._cks = fields.cks
        self._ns = fields.ns
        self._pn = fields.pn
        self._ckr = fields.ckr
        self._nr = fields.nr
        # MKSKIPPED (§3.2) grouped by chain: remote ratchet key -> {N: message key}. Insertion order is age
        # order (chains oldest first, keys in derivation order), which is what eviction relies on. A chain
        # stays listed when its keys run out, so a replay on it is recognised as DuplicateMessage.
        self._skipped = fields.skipped
        self._nskipped = sum(len(keys) for keys in fields.skipped.values())

    # -- §3.3 Initialization -------------------------------------------------------------------------

    @classmethod
    def initiator(
        cls,
        shared_secret: bytes,
        remote_ratchet_public: bytes,
        associated_data: bytes,
        rng: Rng,
        *,
        aead: RatchetAead = DEFAULT_AEAD,
    ) -> RatchetSession:
        """Alice's session (§3.3 RatchetInitAlice), from the handshake's secret and Bob's signed prekey.

        Raises:
            LocalProtocolError: the shared secret is not 32 bytes or the AD is over MAX_AD_LEN.
            DecodeError: ``remote_ratchet_public`` is not a usable X25519 public key (BAD_KEY).
        """
        _check_inputs(shared_secret, associated_data)
        remote = _public_key(remote_ratchet_public)
        dhs = X25519PrivateKey.from_private_bytes(rng(KEY_LEN))
        try:
            dh_out = dhs.exchange(remote)
        except ValueError:  # a low-order point: the shared secret would be all zeros
            raise DecodeError("ratchet public key", DecodeReason.BAD_KEY) from None
        rk, cks = kdf_rk(shared_secret, dh_out)
        fields = StateFields(
            associated_data, rk, dhs.private_bytes_raw(), bytes(remote_ratchet_public), cks, 0, 0, None, 0, {}
        )
        return cls(fields, aead)

    @classmethod
    def responder(
        cls,
        shared_secret: bytes,
        own_ratchet_private: bytes,
        associated_data: bytes,
        *,
        aead: RatchetAead = DEFAULT_AEAD,
    ) -> RatchetSession:
        """Bob's session (§3.3 RatchetInitBob), keyed by his signed prekey. It can send after it received.

        Raises:
            LocalProtocolError: a key or the secret is not 32 bytes, or the AD is over MAX_AD_LEN.
        """
        _check_inputs(shared_secret, associated_data)
        if len(own_ratchet_private) != KEY_LEN:
            raise LocalProtocolError("ratchet private key must be 32 bytes")
        fields = StateFields(
            associated_data, bytes(shared_secret), bytes(own_ratchet_private), None, None, 0, 0, None, 0, {}
        )
        return cls(fields, aead)

    # -- §3.4 Encrypting messages ----------------------------------------------------------------------

    def encrypt(self, plaintext: bytes, rng: Rng) -> bytes:
        """Encrypts one message; returns its wire bytes (see header.py). ``rng`` is drawn from only when a
        new ratchet key pair is due (the first message after receiving a new remote ratchet key).

        Raises:
            LocalProtocolError: a responder that has received nothing yet, or a plaintext over the bound.
        """
        if len(plaintext) > _MAX_PLAINTEXT:
            raise LocalProtocolError("plaintext too long for a ratchet message")
        cks = self._cks
        if cks is None:
            cks = self._ratchet_sending(rng)
        n = self._ns
        if n >= MAX_COUNTER:
            raise LocalProtocolError("sending chain exhausted")
        # CKs, mk = KDF_CK(CKs); the chain advances before the ciphertext leaves, so mk is used once.
        mk, self._cks = kdf_ck(cks)
        self._ns = n + 1
        header = _pack_header(MESSAGE_VERSION, self._dhs_pub, self._pn, n)
        aead = self._aead
        return header + aead.encrypt(mk, plaintext, aead.ad_layout(self._ad, header))

    def _ratchet_sending(self, rng: Rng) -> bytes:
        """§3.5 DHRatchet, second half (deferred to here, see the module docstring):
        DHs = GENERATE_DH(); RK, CKs = KDF_RK(RK, DH(DHs, DHr))."""
        remote = self._dhr_key
        if remote is None:
            raise LocalProtocolError("a responder can send only after receiving a message")
        dhs = X25519PrivateKey.from_private_bytes(rng(KEY_LEN))
        self._rk, cks = kdf_rk(self._rk, dhs.exchange(remote))
        self._dhs = dhs
        self._dhs_pub = dhs.public_key().public_bytes_raw()
        self._cks = cks
        return cks

    # -- §3.5 Decrypting messages ----------------------------------------------------------------------

    def decrypt(self, message: bytes) -> bytes:
        """Authenticates and decrypts one ratchet message; on any error the session is unchanged.

        Raises:
            DecodeError, UnsupportedVersion: malformed bytes.
            DecryptionError: authentication failed (forged, corrupted, not for this session, or from a
                receiving chain older than MAX_OLD_CHAINS, which is no longer recognised).
            DuplicateMessage: its key was already used (replay), or was evicted by MAX_SKIPPED_KEYS.
            TooManySkipped: it would skip more than MAX_SKIP keys in one chain.
        """
        message = bytes(message)
        dh, pn, n, ciphertext = split_message(message)
        aead = self._aead
        ad = aead.ad_layout(self._ad, message[:HEADER_LEN])
        if dh == self._dhr:
            ckr = self._ckr
            if ckr is None:  # we never received on our first remote key: nobody could have encrypted this
                raise DecryptionError("ratchet message")
            nr = self._nr
            if n < nr:  # TrySkippedMessageKeys, else a replay
                return self._decrypt_skipped(dh, n, ciphertext, ad)
            skip = n - nr
            if skip > MAX_SKIP:
                raise TooManySkipped(skip, MAX_SKIP)
            skipped: list[tuple[int, bytes]] = []
            if skip:
                skipped, ckr = derive_chain(ckr, nr, n)
            mk, next_ck = kdf_ck(ckr)
            plaintext = aead.decrypt(mk, ciphertext, ad)
            self._ckr = next_ck
            self._nr = n + 1
            if skip:
                self._store(dh, skipped)
                self._evict()
            return plaintext
        if dh in self._skipped:  # a previous receiving chain
            return self._decrypt_skipped(dh, n, ciphertext, ad)
        return self._decrypt_new_chain(dh, pn, n, ciphertext, ad)

    def _decrypt_skipped(self, dh: bytes, n: int, ciphertext: bytes, ad: bytes) -> bytes:
        # §3.5 TrySkippedMessageKeys. A counter below the chain position without a stored key was used.
        keys = self._skipped.get(dh)
        mk = None if keys is None else keys.get(n)
        if keys is None or mk is None:
            raise DuplicateMessage(n)
        plaintext = self._aead.decrypt(mk, ciphertext, ad)
        del keys[n]  # §3.5: "deletes the message key"
        self._nskipped -= 1
        return plaintext

    def _decrypt_new_chain(self, dh: bytes, pn: int, n: int, ciphertext: bytes, ad: bytes) -> bytes:
        # §3.5 SkipMessageKeys(state, header.pn) then DHRatchet, all into locals first.
        old_keys: list[tuple[int, bytes]] = []
        if self._ckr is not None and pn > self._nr:
            if pn - self._nr > MAX_SKIP:
                raise TooManySkipped(pn - self._nr, MAX_SKIP)
            old_keys, _ = derive_chain(self._ckr, self._nr, pn)
        if n > MAX_SKIP:
            raise TooManySkipped(n, MAX_SKIP)
        remote = X25519PublicKey.from_public_bytes(dh)
        try:
            dh_out = self._dhs.exchange(remote)
        except ValueError:  # low-order point: cannot come from an honest peer
            raise DecryptionError("ratchet message") from None
        # RK, CKr = KDF_RK(RK, DH(DHs, DHr)); a forged DHr stops at the AEAD below, RK untouched.
        rk, ckr = kdf_rk(self._rk, dh_out)
        new_keys: list[tuple[int, bytes]] = []
        if n:
            new_keys, ckr = derive_chain(ckr, 0, n)
        mk, next_ck = kdf_ck(ckr)
        plaintext = self._aead.decrypt(mk, ciphertext, ad)
        # Authenticated: commit. PN = Ns; Ns = Nr = 0; the sending chain waits for the next encrypt.
        if old_keys:
            assert self._dhr is not None
            self._store(self._dhr, old_keys)
        self._pn = self._ns
        self._ns = 0
        self._cks = None
        self._rk = rk
        self._dhr = dh
        self._dhr_key = remote
        self._ckr = next_ck
        self._nr = n + 1
        self._skipped[dh] = {}
        self._store(dh, new_keys)
        self._evict()
        return plaintext

    def _store(self, dh: bytes, keys: list[tuple[int, bytes]]) -> None:
        self._skipped.setdefault(dh, {}).update(keys)
        self._nskipped += len(keys)

    def _evict(self) -> None:
        """Applies MAX_OLD_CHAINS, then MAX_SKIPPED_KEYS, dropping the oldest first (constants.py)."""
        skipped = self._skipped
        while len(skipped) > MAX_OLD_CHAINS + 1:
            self._nskipped -= len(skipped.pop(next(iter(skipped))))
        excess = self._nskipped - MAX_SKIPPED_KEYS
        if excess <= 0:
            return
        self._nskipped -= excess
        for dh, keys in skipped.items():
            if len(keys) <= excess:
                excess -= len(keys)
                keys.clear()
            else:
                skipped[dh] = dict(islice(keys.items(), excess, None))
                break

    # -- state -----------------------------------------------------------------------------------------

    @property
    def skipped_key_count(self) -> int:
        """How many skipped message keys are stored (at most MAX_SKIPPED_KEYS)."""
        return self._nskipped

    @property
    def receiving_chain_count(self) -> int:
        """Receiving chains remembered, the current one included (at most MAX_OLD_CHAINS + 1)."""
        return len(self._skipped)

    def serialize(self) -> bytes:
        """The whole state, skipped keys and AD included, in the versioned form of serialize.py.

        Secret: it holds every key of the session. Store it encrypted, and never restore an older copy
        after encrypting with a newer one (the AEAD nonce is fixed; aead.py).
        """
        return encode_state(self._fields())

    def _fields(self) -> StateFields:
        return StateFields(
            self._ad,
            self._rk,
            self._dhs.private_bytes_raw(),
            self._dhr,
            self._cks,
            self._ns,
            self._pn,
            self._ckr,
            self._nr,
            self._skipped,
        )

    @classmethod
    def deserialize(cls, data: bytes, *, aead: RatchetAead = DEFAULT_AEAD) -> RatchetSession:
        """Restores a session from :meth:`serialize` output.

        Raises:
            UnsupportedVersion: an unknown state version.
            DecodeError: truncated, trailing or inconsistent bytes.
        """
        return cls(decode_state(bytes(data)), aead)

    def __repr__(self) -> str:
        return "RatchetSession(..)"


def _check_inputs(shared_secret: bytes, associated_data: bytes) -> None:
    if len(shared_secret) != KEY_LEN:
        raise LocalProtocolError("shared secret must be 32 bytes")
    if len(associated_data) > MAX_AD_LEN:
        raise LocalProtocolError("associated data too long")


__all__ = ["RatchetSession"]
