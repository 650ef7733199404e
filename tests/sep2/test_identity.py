"""gateway/north/sep2/identity.py: LFDI/SFDI from the certificate, and the CSIP client TLS context
against a real TLS 1.2 server socket on loopback. The test makes its own throw-away CAs and
certificates with `cryptography`."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import ipaddress
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from gateway.config import SiteFileError, TlsFileError
from gateway.north.sep2 import identity
from gateway.north.sep2.identity import certificate_der, client_context, lfdi, sfdi, sfdi_from_lfdi

Key = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass
class Issued:
    cert: Path
    key: Path
    certificate: x509.Certificate


def _key(kind: str) -> Key:
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP384R1() if kind == "p384" else ec.SECP256R1())


def _write_key(path: Path, key: Key, password: bytes | None = None) -> Path:
    encryption = (serialization.BestAvailableEncryption(password) if password
                  else serialization.NoEncryption())
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       encryption))
    path.chmod(0o600)
    return path


class CA:
    """A throw-away certificate authority that issues P-256 (or other) certificates into `folder`."""

    def __init__(self, folder: Path, name: str) -> None:
        self.folder, self.key = folder, _key("p256")
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.certificate = (self._builder(subject, subject, self.key.public_key())
                            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                            .sign(self.key, hashes.SHA256()))
        self.path = folder / f"{name}.crt"
        self.path.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))

    @staticmethod
    def _builder(subject: x509.Name, issuer: x509.Name, public: object) -> x509.CertificateBuilder:
        now = dt.datetime.now(dt.UTC)
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
                .public_key(public).serial_number(x509.random_serial_number())  # type: ignore[arg-type]
                .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=2)))

    def issue(self, name: str, kind: str = "p256", san: str = "127.0.0.1") -> Issued:
        key = _key(kind)
        names = [x509.IPAddress(ipaddress.ip_address(san))]  # the test servers listen on loopback
        cert = (self._builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]),
                              self.certificate.subject, key.public_key())
                .add_extension(x509.SubjectAlternativeName(names), critical=False)
                .sign(self.key, hashes.SHA256()))
        path = self.folder / f"{name}.crt"
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return Issued(path, _write_key(self.folder / f"{name}.key", key), cert)


@pytest.fixture
def pki(tmp_path: Path) -> tuple[CA, Issued, Issued]:
    """The utility's CA, its server's certificate and the gateway's device certificate."""
    ca = CA(tmp_path, "utility-ca")
    return ca, ca.issue("server"), ca.issue("device")


# --- LFDI / SFDI -----------------------------------------------------------------------------------

def test_lfdi_is_the_first_160_bits_of_sha256_of_the_der_certificate(pki: tuple[CA, Issued, Issued]) -> None:
    _, _, device = pki
    der = subprocess.run(["openssl", "x509", "-in", str(device.cert), "-outform", "der"],
                         check=True, capture_output=True).stdout
    sha256sum = subprocess.run(["sha256sum"], input=der, check=True, capture_output=True).stdout.split()[0]
    assert certificate_der(device.cert) == der
    assert lfdi(der) == sha256sum[:40].decode().upper()
    assert len(lfdi(der)) == 40 and lfdi(der) == lfdi(der).upper()


def test_sfdi_the_standards_example() -> None:
    # IEEE 2030.5 §6.3.3: LFDI 3E4F45AB31EDFE5B67E343E5E4562E31984E23E5 → SFDI 167261211391
    assert sfdi_from_lfdi("3E4F45AB31EDFE5B67E343E5E4562E31984E23E5") == 167261211391


def test_sfdi_of_a_certificate_has_its_check_digit(pki: tuple[CA, Issued, Issued]) -> None:
    der = certificate_der(pki[2].cert)
    value = sfdi(der)
    assert value == sfdi_from_lfdi(lfdi(der))
    assert value // 10 == int(lfdi(der)[:9], 16) and sum(map(int, str(value))) % 10 == 0


def test_certificate_der_of_a_chain_file_is_the_devices_own(pki: tuple[CA, Issued, Issued]) -> None:
    ca, _, device = pki
    chain = device.cert.with_name("chain.pem")
    chain.write_bytes(device.cert.read_bytes() + ca.path.read_bytes())
    assert certificate_der(chain) == device.certificate.public_bytes(serialization.Encoding.DER)


# --- the TLS context against a real server --------------------------------------------------------

def _server_context(ca: CA, server: Issued, *, tls13_only: bool = False,
                    ciphers: str = identity.CIPHERS) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    if tls13_only:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    else:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers(ciphers)
    ctx.load_cert_chain(server.cert, server.key)
    ctx.load_verify_locations(ca.path)
    ctx.verify_mode = ssl.CERT_REQUIRED  # mutual TLS: the server asks for the device's certificate
    return ctx


async def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> tuple[tuple, bytes | None]:
    """Connect over loopback; the client's (cipher, version, bits) and the certificate the server saw."""
    seen: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ssl_object = writer.get_extra_info("ssl_object")
        if not seen.done():
            seen.set_result(ssl_object.getpeercert(binary_form=True))
        writer.close()

    server = await asyncio.start_server(on_client, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=client_ctx, server_hostname="127.0.0.1"), 10)
        cipher = writer.get_extra_info("cipher")
        writer.close()
        return cipher, await asyncio.wait_for(seen, 10)
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.asyncio
async def test_all_01_mutual_tls_1_2_negotiates_ccm8_and_presents_the_device(
        pki: tuple[CA, Issued, Issued]) -> None:
    ca, server, device = pki
    ctx = client_context(ca.path, device.cert, device.key)
    (name, version, _), presented = await _handshake(_server_context(ca, server), ctx)
    assert (name, version) == ("ECDHE-ECDSA-AES128-CCM8", "TLSv1.2")
    assert presented is not None and lfdi(presented) == lfdi(certificate_der(device.cert))


@pytest.mark.asyncio
async def test_server_certificate_from_another_ca_is_refused(pki: tuple[CA, Issued, Issued],
                                                             tmp_path: Path) -> None:
    ca, _, device = pki
    impostor = CA(tmp_path, "impostor-ca")
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        await _handshake(_server_context(ca, impostor.issue("fake-server")),
                         client_context(ca.path, device.cert, device.key))


@pytest.mark.asyncio
async def test_server_certificate_for_another_host_is_refused(pki: tuple[CA, Issued, Issued]) -> None:
    ca, _, device = pki
    with pytest.raises(ssl.SSLCertVerificationError, match="IP address mismatch"):
        await _handshake(_server_context(ca, ca.issue("elsewhere", san="192.0.2.7")),
                         client_context(ca.path, device.cert, device.key))


@pytest.mark.asyncio
@pytest.mark.parametrize("server", [{"tls13_only": True}, {"ciphers": "ECDHE-ECDSA-AES256-GCM-SHA384"}],
                         ids=["tls-1.3-only", "non-csip-suite"])
async def test_server_outside_csip_tls_is_refused(pki: tuple[CA, Issued, Issued], server: dict) -> None:
    ca, server_cert, device = pki
    # no common version or suite: the handshake fails (the server's alert, or its reset, first)
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        await _handshake(_server_context(ca, server_cert, **server),
                         client_context(ca.path, device.cert, device.key))


# --- bad files: each names the field, the file and the fix ---------------------------------------

def _refused(ca: Path, cert: Path, key: Path) -> str:
    with pytest.raises(TlsFileError) as err:
        client_context(ca, cert, key)
    assert isinstance(err.value, SiteFileError)  # `der-gateway run` prints it and stops
    return str(err.value)


def test_missing_files_are_named(pki: tuple[CA, Issued, Issued], tmp_path: Path) -> None:
    ca, _, device = pki
    nowhere = tmp_path / "nowhere.pem"
    assert _refused(nowhere, device.cert, device.key).startswith(f"[sep2] ca {nowhere}: no such file")
    assert _refused(ca.path, nowhere, device.key).startswith(f"[sep2] cert {nowhere}: no such file")
    assert _refused(ca.path, device.cert, nowhere).startswith(f"[sep2] key {nowhere}: no such file")
    assert "[sep2] cert" in _refused(ca.path, tmp_path, device.key)  # a directory
    assert "cannot be read" in _refused(ca.path, tmp_path, device.key)


def test_relative_path_says_where_it_was_looked_for(pki: tuple[CA, Issued, Issued]) -> None:
    ca, _, device = pki
    assert f"({Path('no-such.crt').resolve()})" in _refused(ca.path, Path("no-such.crt"), device.key)


def test_garbage_files_are_refused(pki: tuple[CA, Issued, Issued], tmp_path: Path) -> None:
    ca, _, device = pki
    junk = tmp_path / "junk.pem"
    junk.write_bytes(b"not a certificate\n")
    junk.chmod(0o600)
    assert "[sep2] ca" in (msg := _refused(junk, device.cert, device.key)) and "no usable PEM CA" in msg
    assert "[sep2] cert" in (msg := _refused(ca.path, junk, device.key)) and "no PEM certificate" in msg
    assert "[sep2] key" in (msg := _refused(ca.path, device.cert, junk)) and "no PEM private key" in msg


@pytest.mark.parametrize(("kind", "said"), [("rsa", "RSA 2048-bit certificate"),
                                            ("p384", "EC secp384r1 certificate")])
def test_certificate_that_is_not_ecdsa_p256_is_refused(pki: tuple[CA, Issued, Issued], kind: str,
                                                       said: str) -> None:
    ca = pki[0]
    other = ca.issue(f"device-{kind}", kind=kind)
    msg = _refused(ca.path, other.cert, other.key)
    assert msg.startswith("[sep2] cert") and said in msg and "ECDSA P-256 (secp256r1)" in msg


def test_key_that_is_not_the_certificates_is_refused(pki: tuple[CA, Issued, Issued]) -> None:
    ca, server, device = pki
    msg = _refused(ca.path, device.cert, server.key)
    assert msg.startswith("[sep2] key") and "is not the key of [sep2] cert" in msg


def test_key_readable_by_others_is_refused(pki: tuple[CA, Issued, Issued]) -> None:
    ca, _, device = pki
    device.key.chmod(0o644)
    assert f"run: chmod 600 {device.key}" in _refused(ca.path, device.cert, device.key)


def test_encrypted_key_is_refused_with_the_fix(pki: tuple[CA, Issued, Issued], tmp_path: Path) -> None:
    ca, _, device = pki
    plain = serialization.load_pem_private_key(device.key.read_bytes(), password=None)
    locked = _write_key(tmp_path / "locked.key", plain, password=b"secret")  # type: ignore[arg-type]
    msg = _refused(ca.path, device.cert, locked)
    assert msg.startswith("[sep2] key") and "encrypted" in msg and "openssl ec" in msg


def test_good_files_give_a_csip_context(pki: tuple[CA, Issued, Issued]) -> None:
    ca, _, device = pki
    ctx = client_context(ca.path, device.cert, device.key)
    assert ctx.minimum_version == ctx.maximum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    assert [c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"] == [
        "ECDHE-ECDSA-AES128-CCM8", "ECDHE-ECDSA-AES128-GCM-SHA256"]
    assert hashlib.sha256(certificate_der(device.cert)).hexdigest()[:40].upper() == lfdi(
        certificate_der(device.cert))
