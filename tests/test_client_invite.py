"""Single-use contact invites (kluis.client.invite), PROTOCOL.md §10.2."""

from __future__ import annotations

import base64

import pytest
import segno
from hypothesis import given
from hypothesis import strategies as st

from kluis.client.errors import ProfileError
from kluis.client.invite import MAX_URI_LEN, URI_PREFIX, InvalidInvite, Invite, check_server
from kluis.protocol.keys import IdentityKeyPair, IdentityPublicKey
from kluis.protocol.rng import DeterministicRng

IDENTITY = IdentityKeyPair.generate(DeterministicRng(b"invite/identity")).public
FP = bytes(range(100, 132))
ACCOUNT = b"A" * 16
TOKEN = bytes(range(32))
INVITE_ID = b"I" * 16


def make(url: str = "wss://relay.example:8443", fingerprint: bytes | None = FP) -> Invite:
    return Invite(url, fingerprint, ACCOUNT, IDENTITY, TOKEN, INVITE_ID)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def refused(text: str) -> InvalidInvite:
    with pytest.raises(InvalidInvite) as info:
        Invite.from_uri(text)
    return info.value


hosts = st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,20}){0,3}", fullmatch=True)
servers = st.one_of(
    st.tuples(
        st.builds(lambda h, p: f"wss://{h}:{p}", hosts, st.integers(1, 65535)),
        st.binary(min_size=32, max_size=32),
    ),
    st.tuples(
        st.builds(lambda p: f"ws://127.0.0.1:{p}", st.integers(1, 65535)),
        st.none(),
    ),
)


class TestRoundTrip:
    @given(
        servers,
        st.binary(min_size=16, max_size=16),
        st.binary(min_size=32, max_size=32),
        st.binary(min_size=16, max_size=16),
    )
    def test_any_invite_round_trips(
        self, server: tuple[str, bytes | None], account: bytes, token: bytes, invite_id: bytes
    ) -> None:
        invite = Invite(server[0], server[1], account, IDENTITY, token, invite_id)
        uri = invite.to_uri()
        assert uri.startswith(URI_PREFIX)
        assert len(uri) <= MAX_URI_LEN
        assert Invite.from_uri(uri) == invite

    def test_whitespace_and_scheme_case(self) -> None:
        uri = make().to_uri()
        assert Invite.from_uri(f"  \n{uri}\t\r\n") == make()
        assert Invite.from_uri("KLUIS:Invite/" + uri.removeprefix(URI_PREFIX)) == make()

    def test_layout(self) -> None:
        body = make().to_bytes()
        url = b"wss://relay.example:8443"
        expected = (
            b"\x01"
            + len(url).to_bytes(2, "big")
            + url
            + b"\x20"
            + FP
            + ACCOUNT
            + IDENTITY.to_bytes()
            + TOKEN
            + INVITE_ID
        )
        assert body == expected
        assert make().to_uri() == URI_PREFIX + b64(expected)
        assert "=" not in make().to_uri()

    def test_loopback_without_fingerprint(self) -> None:
        for url in ("ws://127.0.0.1:8080", "ws://localhost:1", "ws://[::1]:9", "ws://127.8.9.10"):
            invite = make(url, None)
            assert Invite.from_uri(invite.to_uri()) == invite
            assert invite.to_bytes()[3 + len(url)] == 0  # fp_len

    def test_longest_url(self) -> None:
        url = "wss://" + "a" * 249
        assert len(url) == 255
        assert Invite.from_uri(make(url).to_uri()).server_url == url


class TestRejects:
    def test_not_an_invite(self) -> None:
        for text in ("", "hello", "kluis:contact/AAAA", "https://example.com", URI_PREFIX[:-1]):
            assert refused(text).detail == "not an invite link"

    def test_empty_body(self) -> None:
        assert refused(URI_PREFIX).detail == "damaged or incomplete"

    def test_every_truncation(self) -> None:
        uri = make().to_uri()
        for n in range(len(URI_PREFIX), len(uri)):
            refused(uri[:n])
        body = make().to_bytes()
        for n in range(len(body)):
            with pytest.raises(InvalidInvite):
                Invite.from_bytes(body[:n])

    def test_trailing_bytes(self) -> None:
        body = make().to_bytes()
        assert refused(URI_PREFIX + b64(body + b"\0")).detail == "damaged or incomplete"

    @pytest.mark.parametrize(
        "mangle",
        [
            lambda p: p + "=",  # padding is not written, so not read
            lambda p: p + "==",
            lambda p: p[:10] + "+" + p[11:],  # the standard alphabet, not base64url
            lambda p: p[:10] + "/" + p[11:],
            lambda p: p[:10] + " " + p[11:],
            lambda p: p[:10] + "é" + p[11:],
            lambda p: p + "A",  # one character more: a length no base64 text has
        ],
    )
    def test_base64_must_be_exact(self, mangle: object) -> None:
        assert callable(mangle)
        refused(URI_PREFIX + mangle(make().to_uri().removeprefix(URI_PREFIX)))

    def test_non_canonical_last_character(self) -> None:
        payload = make().to_uri().removeprefix(URI_PREFIX)
        assert len(payload) % 4 in (2, 3)  # some low bits of the last character are unused
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        flipped = payload[:-1] + alphabet[alphabet.index(payload[-1]) ^ 1]
        assert base64.urlsafe_b64decode(flipped + "=" * (-len(flipped) % 4)) == make().to_bytes()
        refused(URI_PREFIX + flipped)

    def test_too_long_is_refused_before_decoding(self) -> None:
        assert refused(URI_PREFIX + "A" * MAX_URI_LEN).detail == "too long"
        with pytest.raises(InvalidInvite, match="too long"):
            Invite.from_bytes(b"\x01" * 10_000)

    def test_newer_version(self) -> None:
        body = make().to_bytes()
        assert refused(URI_PREFIX + b64(b"\x02" + body[1:])).detail == "made by a newer version of Kluis"

    def test_identity_binding_must_verify(self) -> None:
        body = bytearray(make().to_bytes())
        start = 1 + 2 + len("wss://relay.example:8443") + 1 + 32 + 16
        body[start + IdentityPublicKey.ENCODED_LEN - 1] ^= 1  # last byte of the binding signature
        assert refused(URI_PREFIX + b64(bytes(body))).detail == "the identity key does not verify"

    def test_fingerprint_length(self) -> None:
        body = make().to_bytes()
        at = 3 + len("wss://relay.example:8443")
        bad = body[:at] + b"\x10" + body[at + 1 : at + 1 + 16] + body[at + 1 + 32 :]
        assert refused(URI_PREFIX + b64(bad)).detail == "bad server fingerprint"

    @pytest.mark.parametrize(
        ("url", "fingerprint"),
        [
            ("wss://relay.example", None),  # TLS without a pin
            ("ws://127.0.0.1:8080", FP),  # a pin without TLS
            ("ws://relay.example:8080", None),  # no TLS off loopback
            ("ws://10.0.0.1:8080", None),
            ("https://relay.example", FP),
            ("WSS://relay.example", FP),
            ("wss://", FP),
            ("wss://user@relay.example", FP),
            ("wss://trusted.example:443@evil.example", FP),
            ("wss://relay.example/?x=1", FP),
            ("wss://relay.example/#x", FP),
            ("wss://relay.example:99999", FP),
            ("wss://relay.example:port", FP),
            ("wss://relay example", FP),
            ("wss://relay.example\x1b[2J", FP),
            ("wss://" + "a" * 250, FP),
        ],
    )
    def test_bad_server(self, url: str, fingerprint: bytes | None) -> None:
        with pytest.raises(ValueError):  # noqa: PT011 - the message is checked in check_server's tests
            check_server(url, fingerprint)
        with pytest.raises(ValueError):  # noqa: PT011
            make(url, fingerprint)
        # The same address in a well-formed body.
        raw = url.encode("latin-1")
        fp = fingerprint or b""
        body = (
            b"\x01"
            + len(raw).to_bytes(2, "big")
            + raw
            + bytes([len(fp)])
            + fp
            + ACCOUNT
            + IDENTITY.to_bytes()
            + TOKEN
            + INVITE_ID
        )
        assert refused(URI_PREFIX + b64(body)).detail in (
            "bad server address",
            "damaged or incomplete",
            "too long",
        )

    def test_non_ascii_url_in_body(self) -> None:
        body = make().to_bytes()
        bad = body[:10] + b"\xc3" + body[11:]
        assert refused(URI_PREFIX + b64(bad)).detail == "damaged or incomplete"

    @pytest.mark.parametrize(
        ("field", "value"),
        [("account", b"x" * 15), ("token", b"x" * 31), ("invite_id", b"x" * 17)],
    )
    def test_field_lengths_on_construction(self, field: str, value: bytes) -> None:
        fields = {"account": ACCOUNT, "token": TOKEN, "invite_id": INVITE_ID, field: value}
        with pytest.raises(ValueError, match="bytes"):
            Invite("wss://relay.example", FP, identity=IDENTITY, **fields)

    def test_errors_are_typed_and_never_quote_input(self) -> None:
        secret_payload = make().to_uri().removeprefix(URI_PREFIX)
        for text in (
            "kluis:invite/" + secret_payload[:-7],
            "kluis:invite/" + secret_payload + "AAAA",
            "not-an-invite " + secret_payload,
            "kluis:invite/" + secret_payload[:40] + "!" + secret_payload[41:],
        ):
            error = refused(text)
            assert isinstance(error, ProfileError)
            assert error.title == "Invalid invite"
            message = str(error)
            assert message.startswith("not a valid Kluis invite: ")
            assert secret_payload[:12] not in message
            assert TOKEN.hex()[:16] not in message


class TestServerCheck:
    def test_messages(self) -> None:
        with pytest.raises(ValueError, match="fingerprint"):
            check_server("wss://relay.example", None)
        with pytest.raises(ValueError, match="loopback"):
            check_server("ws://relay.example", None)
        with pytest.raises(ValueError, match="start with ws:// or wss://"):
            check_server("http://relay.example", None)
        with pytest.raises(ValueError, match=r"1\.\.255"):
            check_server("", None)
        with pytest.raises(ValueError, match="printable ASCII"):
            check_server("wss://relay.exämple", FP)

    def test_paths_are_allowed(self) -> None:
        check_server("wss://relay.example/kluis", FP)
        check_server("wss://[2001:db8::1]:443/", FP)


class TestDisplay:
    def test_repr_hides_everything(self) -> None:
        invite = make()
        assert repr(invite) == "Invite(..)"
        assert str(invite) == "Invite(..)"

    def test_qr_text(self) -> None:
        invite = make()
        text = invite.qr_text()
        assert "\x1b" not in text
        assert set(text) <= {" ", "\u2580", "\u2584", "\u2588", "\n"}
        qr = segno.make_qr(invite.to_uri(), error="m")
        assert qr.error == "M"
        width = qr.symbol_size()[0]  # with the 4-module quiet zone
        lines = text.splitlines()
        assert {len(line) for line in lines} == {width}
        assert len(lines) == (width + 1) // 2
