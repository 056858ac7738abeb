"""The relay's TLS identity: key and certificate on first start, pinning, and the loopback rule."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import ssl
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from kluis.server.tls import (
    FingerprintError,
    ListenAddressError,
    TlsSetupError,
    certificate_fingerprint,
    check_listen,
    client_ssl,
    ensure_tls_files,
    parse_fingerprint,
    server_ssl_context,
    tls_paths,
)

TIMEOUT = 10


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


class TestFirstStart:
    def test_creates_key_and_certificate_with_private_modes(self, tmp_path: Path) -> None:
        key_path, cert_path = ensure_tls_files(tmp_path / "data")
        assert (key_path, cert_path) == tls_paths(tmp_path / "data")
        assert mode(key_path) == 0o600
        assert mode(key_path.parent) == 0o700
        assert mode(cert_path) == 0o644
        assert sorted(p.name for p in key_path.parent.iterdir()) == ["cert.pem", "key.pem"]  # no temp files
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        assert key.curve.name == "secp256r1"

    def test_certificate_is_self_signed_long_lived_and_names_no_host(self, tmp_path: Path) -> None:
        _, cert_path = ensure_tls_files(tmp_path)
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        assert cert.subject == cert.issuer
        assert cert.subject.rfc4514_string() == "CN=kluis relay"
        assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days > 99 * 365
        with pytest.raises(x509.ExtensionNotFound):
            cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        cert.verify_directly_issued_by(cert)

    def test_second_start_reuses_the_files(self, tmp_path: Path) -> None:
        first = certificate_fingerprint(tmp_path)
        key_path, cert_path = tls_paths(tmp_path)
        key_bytes, cert_bytes = key_path.read_bytes(), cert_path.read_bytes()
        assert certificate_fingerprint(tmp_path) == first
        server_ssl_context(tmp_path)
        assert key_path.read_bytes() == key_bytes
        assert cert_path.read_bytes() == cert_bytes

    def test_fingerprint_is_sha256_of_the_certificate_der_in_lowercase_hex(self, tmp_path: Path) -> None:
        fingerprint = certificate_fingerprint(tmp_path)
        _, cert_path = tls_paths(tmp_path)
        der = x509.load_pem_x509_certificate(cert_path.read_bytes()).public_bytes(serialization.Encoding.DER)
        assert fingerprint == hashlib.sha256(der).hexdigest()
        assert len(fingerprint) == 64
        assert fingerprint == fingerprint.lower()

    def test_key_without_certificate_gets_one(self, tmp_path: Path) -> None:
        key_path, cert_path = ensure_tls_files(tmp_path)
        key_bytes = key_path.read_bytes()
        cert_path.unlink()
        ensure_tls_files(tmp_path)
        assert key_path.read_bytes() == key_bytes
        assert cert_path.exists()

    def test_certificate_without_key_is_refused(self, tmp_path: Path) -> None:
        key_path, _ = ensure_tls_files(tmp_path)
        key_path.unlink()
        with pytest.raises(TlsSetupError, match="key"):
            ensure_tls_files(tmp_path)

    def test_key_readable_by_others_is_refused(self, tmp_path: Path) -> None:
        key_path, _ = ensure_tls_files(tmp_path)
        key_path.chmod(0o644)
        with pytest.raises(TlsSetupError, match="chmod 600"):
            ensure_tls_files(tmp_path)

    def test_mismatched_pair_is_refused(self, tmp_path: Path) -> None:
        _, cert_a = ensure_tls_files(tmp_path / "a")
        ensure_tls_files(tmp_path / "b")
        _, cert_b = tls_paths(tmp_path / "b")
        cert_b.write_bytes(cert_a.read_bytes())
        with pytest.raises(TlsSetupError, match="does not belong"):
            ensure_tls_files(tmp_path / "b")

    @pytest.mark.parametrize("which", ["key", "cert"])
    def test_garbage_files_are_refused(self, tmp_path: Path, which: str) -> None:
        key_path, cert_path = ensure_tls_files(tmp_path)
        (key_path if which == "key" else cert_path).write_bytes(b"not pem")
        with pytest.raises(TlsSetupError, match="is not a PEM"):
            ensure_tls_files(tmp_path)

    def test_unwritable_directory_is_one_clear_error(self, tmp_path: Path) -> None:
        (tmp_path / "tls").write_text("a file where the directory should be")
        with pytest.raises(TlsSetupError, match="cannot set up TLS"):
            ensure_tls_files(tmp_path)


DIGEST = bytes(range(32))
HEX = DIGEST.hex()
COLONS = ":".join(HEX[i : i + 2] for i in range(0, 64, 2)).upper()


class TestFingerprintText:
    @pytest.mark.parametrize(
        "text",
        [
            HEX,
            HEX.upper(),
            f"  {HEX}\n",
            f"sha256:{HEX}",
            COLONS,
            "SHA256 Fingerprint=" + COLONS,
        ],
    )
    def test_accepted_forms(self, text: str) -> None:
        assert parse_fingerprint(text) == DIGEST

    @pytest.mark.parametrize(
        "text",
        [
            "",
            HEX[:-2],
            HEX + "00",
            HEX[:-1] + "g",
            "sha1:" + HEX[:40],
            "0" * 63 + ":",
            HEX[:62] + ":0f",
            "é" * 64,
        ],
    )
    def test_rejected_forms(self, text: str) -> None:
        with pytest.raises(FingerprintError):
            parse_fingerprint(text)

    def test_client_ssl_needs_32_bytes(self) -> None:
        assert isinstance(client_ssl(DIGEST), aiohttp.Fingerprint)
        with pytest.raises(FingerprintError):
            client_ssl(DIGEST[:20])


async def hello(_: web.Request) -> web.Response:
    return web.Response(text="hello")


@asynccontextmanager
async def tls_server(data_dir: Path) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ssl_context(data_dir))
        await site.start()
        host, port = runner.addresses[0][:2]
        yield f"https://{host}:{port}/"
    finally:
        await runner.cleanup()


async def fetch(url: str, ssl_arg: Any) -> str:
    timeout = aiohttp.ClientTimeout(total=TIMEOUT)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(url, ssl=ssl_arg) as response,
    ):
        return await response.text()


class TestPinnedConnection:
    def test_right_pin_connects_wrong_pin_fails(self, tmp_path: Path) -> None:
        async def scenario() -> None:
            pin = parse_fingerprint(certificate_fingerprint(tmp_path))
            async with tls_server(tmp_path) as url:
                assert await fetch(url, client_ssl(pin)) == "hello"
                wrong = bytes([pin[0] ^ 1]) + pin[1:]
                with pytest.raises(aiohttp.ServerFingerprintMismatch):
                    await fetch(url, client_ssl(wrong))
                # Without the pin, ordinary CA verification rejects the self-signed certificate.
                with pytest.raises(aiohttp.ClientConnectorCertificateError):
                    await fetch(url, True)

        asyncio.run(asyncio.wait_for(scenario(), TIMEOUT))

    def test_tls_below_1_3_is_refused(self, tmp_path: Path) -> None:
        async def scenario() -> None:
            old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            old.check_hostname = False
            old.verify_mode = ssl.CERT_NONE
            old.maximum_version = ssl.TLSVersion.TLSv1_2
            async with tls_server(tmp_path) as url:
                with pytest.raises(aiohttp.ClientConnectorError):
                    await fetch(url, old)
                old.maximum_version = ssl.TLSVersion.TLSv1_3  # the same client, allowed 1.3, gets in
                assert await fetch(url, old) == "hello"

        asyncio.run(asyncio.wait_for(scenario(), TIMEOUT))


class TestCheckListen:
    @pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "localhost"])
    def test_loopback_is_accepted(self, host: str) -> None:
        check_listen(host, insecure_loopback=True)

    @pytest.mark.parametrize(
        "host", ["", "0.0.0.0", "::", "10.0.0.1", "192.168.1.2", "2001:db8::1", "::ffff:8.8.8.8"]
    )
    def test_other_addresses_are_refused(self, host: str) -> None:
        with pytest.raises(ListenAddressError, match="--insecure-loopback"):
            check_listen(host, insecure_loopback=True)

    def test_any_address_is_fine_with_tls(self) -> None:
        check_listen("0.0.0.0", insecure_loopback=False)

    def test_name_resolving_to_a_public_address_is_refused(self, monkeypatch: pytest.MonkeyPatch) -> None:
        def resolve(host: str, *args: object, **kwargs: object) -> list[tuple[Any, ...]]:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.215.14", 0))]

        monkeypatch.setattr(socket, "getaddrinfo", resolve)
        with pytest.raises(ListenAddressError, match="non-loopback"):
            check_listen("relay.example.com", insecure_loopback=True)

    def test_name_resolving_partly_to_loopback_is_refused(self, monkeypatch: pytest.MonkeyPatch) -> None:
        def resolve(host: str, *args: object, **kwargs: object) -> list[tuple[Any, ...]]:
            return [
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 0)),
                (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("2001:db8::1", 0, 0, 0)),
            ]

        monkeypatch.setattr(socket, "getaddrinfo", resolve)
        with pytest.raises(ListenAddressError):
            check_listen("sneaky", insecure_loopback=True)

    def test_unresolvable_name_is_refused(self, monkeypatch: pytest.MonkeyPatch) -> None:
        def resolve(host: str, *args: object, **kwargs: object) -> list[tuple[Any, ...]]:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

        monkeypatch.setattr(socket, "getaddrinfo", resolve)
        with pytest.raises(ListenAddressError, match="does not resolve"):
            check_listen("nowhere.invalid", insecure_loopback=True)
