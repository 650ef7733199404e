"""Who the 2030.5 client is: its LFDI and SFDI (from its certificate, IEEE 2030.5 §6.3.4) and its TLS
context (CSIP: TLS 1.2, ECDSA P-256, ECDHE-ECDSA-AES128-CCM8 or -GCM-SHA256, the server verified).

Every problem with the `[sep2]` files is a TlsFileError (a SiteFileError: `der-gateway run` prints it
and stops) naming the field, the file and the fix, found at start rather than on every reconnect.
"""

from __future__ import annotations

import hashlib
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.config import TlsFileError

# CSIP / CSIP-AUS: the suites a 2030.5 server offers; CCM8 is the mandatory one
CIPHERS = "ECDHE-ECDSA-AES128-CCM8:ECDHE-ECDSA-AES128-GCM-SHA256"
_CURVE = "secp256r1"  # ECDSA P-256


def _read(field: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise TlsFileError(f"[sep2] {field} {_where(path)}: no such file") from None
    except OSError as err:  # a directory, no permission, …
        raise TlsFileError(f"[sep2] {field} {_where(path)}: cannot be read ({err.strerror})") from None


def _where(path: Path) -> str:
    """A relative path as written and where it was looked for (the working directory)."""
    return str(path) if path.is_absolute() else f"{path} ({path.resolve()})"


def _certificate(field: str, path: Path) -> x509.Certificate:
    """The first (the device's own) certificate of a PEM file; any further ones are its chain."""
    try:
        return x509.load_pem_x509_certificates(_read(field, path))[0]
    except ValueError as err:
        raise TlsFileError(f"[sep2] {field} {_where(path)}: no PEM certificate in it ({err}); give the "
                           "PEM file (-----BEGIN CERTIFICATE-----) the utility issued") from None


def _check_p256(field: str, path: Path, key: object, what: str) -> None:
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        if key.curve.name == _CURVE:
            return
        kind = f"an EC {key.curve.name} {what}"
    elif isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        kind = f"an RSA {key.key_size}-bit {what}"
    else:
        kind = f"a {what} of type {type(key).__name__}"
    raise TlsFileError(f"[sep2] {field} {_where(path)}: holds {kind}; IEEE 2030.5 / CSIP requires ECDSA "
                       "P-256 (secp256r1): have the utility's CA issue the device a P-256 certificate")


def certificate_der(pem_path: Path, field: str = "cert") -> bytes:
    """The DER encoding of the device certificate in `pem_path` (the LFDI is a hash of it)."""
    return _certificate(field, pem_path).public_bytes(serialization.Encoding.DER)


def lfdi(cert_der: bytes) -> str:
    """Long-form device identifier: the first 160 bits of SHA-256(certificate), 40 hex digits, upper case."""
    return hashlib.sha256(cert_der).hexdigest()[:40].upper()


def sfdi_from_lfdi(lfdi_hex: str) -> int:
    """Short-form device identifier: the LFDI's first 36 bits in decimal, then a check digit that makes
    the sum of all digits a multiple of 10."""
    left = int(lfdi_hex[:9], 16)
    check = -sum(int(d) for d in str(left)) % 10
    return left * 10 + check


def sfdi(cert_der: bytes) -> int:
    return sfdi_from_lfdi(lfdi(cert_der))


def client_context(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    """The TLS context of the client: TLS 1.2 only with the CSIP suites, the server's certificate
    verified against `ca` (host name included), the device's certificate and key presented."""
    _read("ca", ca)
    certificate = _certificate("cert", cert)
    _check_p256("cert", cert, certificate.public_key(), "certificate")
    key_pem = _read("key", key)
    if key.stat().st_mode & 0o077:
        raise TlsFileError(f"[sep2] key {_where(key)}: the private key is readable by group or others "
                           f"(mode {key.stat().st_mode & 0o777:o}); run: chmod 600 {key}")
    try:
        private = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:  # "Password was not given but private key is encrypted"
        raise TlsFileError(f"[sep2] key {_where(key)}: the private key is encrypted; the gateway starts "
                           "unattended, so give it unencrypted (openssl ec -in KEY -out KEY.plain) and "
                           "protect the file with chmod 600") from None
    except ValueError as err:
        raise TlsFileError(f"[sep2] key {_where(key)}: no PEM private key in it ({err})") from None
    _check_p256("key", key, private, "key")
    if private.public_key() != certificate.public_key():
        raise TlsFileError(f"[sep2] key {_where(key)}: is not the key of [sep2] cert {_where(cert)}; give "
                           "the key the certificate was issued for")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the server and its host name
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(CIPHERS)
    try:
        ctx.load_verify_locations(cafile=str(ca))
    except ssl.SSLError as err:
        raise TlsFileError(f"[sep2] ca {_where(ca)}: no usable PEM CA certificate in it ({err}); give the "
                           "utility's CA (or chain) that signed the server's certificate") from None
    ctx.load_cert_chain(str(cert), str(key))
    return ctx
