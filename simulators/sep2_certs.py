"""A throwaway PKI for the 2030.5 server simulator and its clients: test CA, server, devices, a stranger.

Every key is ECDSA P-256 and every certificate is signed ecdsa-with-SHA256, as CSIP requires. The
device certificates carry no 2030.5 policy OIDs: the simulator, like envoy behind its TLS proxy,
identifies a client only by the LFDI of its certificate (2030.5 §6.3.4: the first 160 bits of the
SHA-256 of the DER certificate) and its SFDI (§6.3.3: the first 36 bits of the LFDI in decimal, plus a
check digit). This module is also the simulator's independent reading of those two rules, so it does
not import the gateway's own.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Long enough that a test which moves the gateway's clock a day or a year never sees an expired chain.
VALIDITY = dt.timedelta(days=3650)


@dataclass(frozen=True)
class ServerTls:
    """What the server needs to listen: its certificate and key, and the CA its clients must chain to."""

    ca_cert: Path
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    """PEM files written by `make_pki`, by role."""

    directory: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path  # SAN localhost and 127.0.0.1
    server_key: Path
    client_cert: Path  # the gateway's device certificate
    client_key: Path
    other_cert: Path  # another device under the same CA
    other_key: Path
    foreign_ca_cert: Path  # a CA the server does not trust
    foreign_cert: Path  # a device certificate from that CA: must be refused
    foreign_key: Path

    @property
    def server_tls(self) -> ServerTls:
        return ServerTls(self.ca_cert, self.server_cert, self.server_key)

    @property
    def client_lfdi(self) -> str:
        return lfdi(cert_der(self.client_cert))

    @property
    def client_sfdi(self) -> int:
        return sfdi(self.client_lfdi)

    @property
    def other_lfdi(self) -> str:
        return lfdi(cert_der(self.other_cert))


def lfdi(der: bytes) -> str:
    """The LFDI of a DER-encoded certificate: 40 upper-case hex digits."""
    return hashlib.sha256(der).hexdigest()[:40].upper()


def sfdi(lfdi_hex: str) -> int:
    """The SFDI of an LFDI: its first 36 bits in decimal, then the check digit that makes the sum of all its
    digits ≡ 0 (mod 10)."""
    head = int(lfdi_hex[:9], 16)
    check = -sum(int(d) for d in str(head)) % 10
    return head * 10 + check


def cert_der(pem_path: Path) -> bytes:
    return x509.load_pem_x509_certificate(pem_path.read_bytes()).public_bytes(serialization.Encoding.DER)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "der-gateway test PKI"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(directory: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)


def _key_usage(**allowed: bool) -> x509.KeyUsage:
    usages = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
              "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only")
    return x509.KeyUsage(**{u: allowed.get(u, False) for u in usages})


def _ca(common_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(_name(common_name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return cert, key


def _leaf(common_name: str, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, *,
          server: bool) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(ca.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + VALIDITY)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(_key_usage(digital_signature=True, key_agreement=True), critical=True)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                              critical=False))
    if server:
        builder = (builder
                   .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                               x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                  critical=False)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False))
    else:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                                        critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def load_pki(directory: Path) -> Pki:
    """The Pki `make_pki` wrote into `directory` earlier (its files by their fixed names)."""
    names = {"ca_cert": "ca.crt", "ca_key": "ca.key", "server_cert": "server.crt", "server_key": "server.key",
             "client_cert": "client.crt", "client_key": "client.key", "other_cert": "other.crt",
             "other_key": "other.key", "foreign_ca_cert": "foreign-ca.crt", "foreign_cert": "foreign.crt",
             "foreign_key": "foreign.key"}
    missing = [n for n in names.values() if not (directory / n).exists()]
    if missing:
        raise FileNotFoundError(f"{directory} is not a PKI written by make_pki: {', '.join(missing)} missing")
    return Pki(directory=directory, **{field: directory / name for field, name in names.items()})


def make_pki(directory: Path) -> Pki:
    """Write a fresh test PKI into `directory` (created if missing) and return where each file is."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = _ca("der-gateway test 2030.5 CA")
    foreign_ca, foreign_ca_key = _ca("some other CA")
    _write(directory, "ca", ca, ca_key)
    _write(directory, "server", *_leaf("localhost", ca, ca_key, server=True))
    _write(directory, "client", *_leaf("der-gateway device", ca, ca_key, server=False))
    _write(directory, "other", *_leaf("another device", ca, ca_key, server=False))
    _write(directory, "foreign-ca", foreign_ca, foreign_ca_key)
    _write(directory, "foreign", *_leaf("device of another CA", foreign_ca, foreign_ca_key, server=False))
    return load_pki(directory)
