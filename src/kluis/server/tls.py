"""The relay's TLS identity: a key made on first start, a self-signed certificate, and its pin.

No certificate authority vouches for a Kluis relay. The server makes an ECDSA P-256 key and a
self-signed certificate the first time it starts (in ``DATA_DIR/tls/``) and reuses them afterwards.
Clients learn the certificate's SHA-256 fingerprint out of band (in invites and provisioning) and
accept no other certificate, so a CA that issues a certificate for the server's name cannot stand in
for it. The certificate names no host: the pin, not the name, is what clients check.

Fingerprint format: the SHA-256 of the certificate's DER encoding as 64 lowercase hexadecimal digits,
no separators, e.g. ``3f1c...9a``. It is the same digest ``openssl x509 -noout -fingerprint -sha256``
prints (upper case with colons); :func:`parse_fingerprint` accepts that form too, and ``sha256:``
in front.

Errors::

    TlsSetupError              the key or certificate files cannot be used (message names the file)
    FingerprintError           text that is not a SHA-256 fingerprint (a ValueError)
    ListenAddressError         --insecure-loopback with an address that is not loopback (a ValueError)

This module keeps the private key in ``DATA_DIR/tls/key.pem``. It is the only server secret that gives
anything away if stolen: with it, someone who also diverts the server's traffic can impersonate the
relay to clients (and still reads nothing, since envelopes are end-to-end encrypted).
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import socket
import ssl
import stat
from pathlib import Path

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

TLS_DIR = "tls"
KEY_FILE = "key.pem"
CERT_FILE = "cert.pem"
SUBJECT_CN = "kluis relay"
# The pin is what clients trust, not the validity period: a certificate that expired would strand
# every client holding its fingerprint, so it is made to outlive the deployment.
VALIDITY = datetime.timedelta(days=100 * 365)
FINGERPRINT_BYTES = 32


class TlsSetupError(Exception):
    """The TLS key or certificate in the data directory cannot be used."""


class FingerprintError(ValueError):
    """Text given as a certificate fingerprint is not one."""


class ListenAddressError(ValueError):
    """The listen address is not allowed in the requested mode."""


def tls_paths(data_dir: Path) -> tuple[Path, Path]:
    """The (key, certificate) paths under ``data_dir``."""
    directory = data_dir / TLS_DIR
    return directory / KEY_FILE, directory / CERT_FILE


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(path: Path, data: bytes, mode: int) -> bool:
    """Write ``data`` to ``path`` atomically with ``mode``, unless ``path`` already exists.

    The bytes go to a temporary file (created with ``mode``, so the key is never readable by others,
    not even for a moment), are fsynced, and are then hard-linked into place: a link never replaces an
    existing file, so two servers starting at once on the same directory agree on one key. Returns
    False if ``path`` existed.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        _fsync_directory(path.parent)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def _new_certificate(key: ec.EllipticCurvePrivateKey) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SUBJECT_CN)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))  # tolerate clients whose clock is behind
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM)


def _load_key(key_path: Path) -> ec.EllipticCurvePrivateKey:
    mode = key_path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise TlsSetupError(f"{key_path} is readable by other users; chmod 600 it")
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except ValueError:
        raise TlsSetupError(f"{key_path} is not a PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TlsSetupError(f"{key_path} is not an EC private key")
    return key


def ensure_tls_files(data_dir: Path) -> tuple[Path, Path]:
    """Create the TLS key and certificate in ``data_dir/tls/`` if absent; return (key, cert) paths.

    The first start makes a P-256 key (mode 0600) and a self-signed certificate (mode 0644); later
    starts check that they still belong together and reuse them, so the fingerprint never changes.
    A key without a certificate (a crash between the two writes on first start) gets one; a
    certificate without its key is an error, since silently replacing it would break every pin.

    Raises:
        TlsSetupError: the files exist but cannot be used (unreadable, wrong type, not a pair, the key
            readable by others), or a certificate exists without its key.
    """
    key_path, cert_path = tls_paths(data_dir)
    try:
        key_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not key_path.exists():
            if cert_path.exists():
                raise TlsSetupError(f"{cert_path} exists but its key {key_path} is missing")
            key = ec.generate_private_key(ec.SECP256R1())
            pem = key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            _publish(key_path, pem, 0o600)
        key = _load_key(key_path)
        if not cert_path.exists():
            _publish(cert_path, _new_certificate(key), 0o644)
        certificate = _load_certificate(cert_path)
    except OSError as exc:
        raise TlsSetupError(f"cannot set up TLS in {key_path.parent}: {exc.strerror or exc}") from None
    if certificate.public_key() != key.public_key():
        raise TlsSetupError(f"{cert_path} does not belong to the key {key_path}")
    return key_path, cert_path


def _load_certificate(cert_path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(cert_path.read_bytes())
    except ValueError:
        raise TlsSetupError(f"{cert_path} is not a PEM certificate") from None


def server_ssl_context(data_dir: Path) -> ssl.SSLContext:
    """A server-side TLS 1.3-only context with the relay's key and certificate (created if absent).

    Raises:
        TlsSetupError: see :func:`ensure_tls_files`.
    """
    key_path, cert_path = ensure_tls_files(data_dir)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    try:
        context.load_cert_chain(cert_path, key_path)
    except (OSError, ssl.SSLError) as exc:
        raise TlsSetupError(f"cannot load the TLS key and certificate: {exc}") from None
    return context


def certificate_digest(data_dir: Path) -> bytes:
    """The 32-byte SHA-256 of the relay certificate's DER encoding (created if absent)."""
    _, cert_path = ensure_tls_files(data_dir)
    der = _load_certificate(cert_path).public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).digest()


def format_fingerprint(digest: bytes) -> str:
    """A digest in the canonical text form: 64 lowercase hex digits."""
    if len(digest) != FINGERPRINT_BYTES:
        raise FingerprintError(f"a fingerprint is {FINGERPRINT_BYTES} bytes, not {len(digest)}")
    return digest.hex()


def certificate_fingerprint(data_dir: Path) -> str:
    """The relay's pin as clients are given it: SHA-256 of the certificate DER, 64 lowercase hex digits.

    Raises:
        TlsSetupError: see :func:`ensure_tls_files`.
    """
    return format_fingerprint(certificate_digest(data_dir))


def parse_fingerprint(text: str) -> bytes:
    """The 32-byte digest from a fingerprint in text form.

    Accepts the canonical form (64 hex digits), either case, with colons between byte pairs (as
    ``openssl x509 -fingerprint`` prints) and with a ``sha256:`` or ``SHA256 Fingerprint=`` prefix.
    Surrounding whitespace is ignored.

    Raises:
        FingerprintError: anything else (wrong length, non-hex characters, another hash).
    """
    value = text.strip()
    lowered = value.lower()
    for prefix in ("sha256 fingerprint=", "sha256:"):
        if lowered.startswith(prefix):
            value = value[len(prefix) :]
            break
    if ":" in value:
        pairs = value.split(":")
        if not all(len(pair) == 2 for pair in pairs):
            raise FingerprintError("a fingerprint with colons must have two hex digits between them")
        value = "".join(pairs)
    if len(value) != 2 * FINGERPRINT_BYTES:
        raise FingerprintError(f"a SHA-256 fingerprint is {2 * FINGERPRINT_BYTES} hex digits")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise FingerprintError("a fingerprint contains only hex digits 0-9 and a-f") from None


def client_ssl(fingerprint: bytes) -> aiohttp.Fingerprint:
    """The ``ssl=`` argument that makes an aiohttp client accept only the pinned certificate.

    aiohttp then skips CA and hostname verification and compares the SHA-256 of the server's
    certificate DER with ``fingerprint``, raising ``aiohttp.ServerFingerprintMismatch`` on a mismatch.

    Raises:
        FingerprintError: ``fingerprint`` is not 32 bytes.
    """
    if len(fingerprint) != FINGERPRINT_BYTES:
        raise FingerprintError(f"a fingerprint is {FINGERPRINT_BYTES} bytes, not {len(fingerprint)}")
    return aiohttp.Fingerprint(fingerprint)


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def check_listen(host: str, insecure_loopback: bool) -> None:
    """Refuse to serve without TLS on anything but a loopback address.

    With TLS every address is allowed. With ``insecure_loopback`` the host must be a loopback address
    (127.0.0.0/8 or ::1) or a name that resolves only to loopback addresses (``localhost``).

    Raises:
        ListenAddressError: ``insecure_loopback`` with a non-loopback address, a wildcard address (""
            or 0.0.0.0 or ::), or a name that does not resolve or resolves to anything but loopback.
    """
    if not insecure_loopback:
        return
    refusal = f"--insecure-loopback serves without TLS and only on a loopback address, not {host!r}"
    if not host:
        raise ListenAddressError(refusal)
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        pass  # a name: resolved below
    else:
        if _is_loopback(host):
            return
        raise ListenAddressError(refusal)
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        raise ListenAddressError(f"{refusal} (the name does not resolve)") from None
    addresses = {str(info[4][0]) for info in infos}
    if not addresses or not all(_is_loopback(address) for address in addresses):
        raise ListenAddressError(f"{refusal} (it resolves to a non-loopback address)")
