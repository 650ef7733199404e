"""The gateway's own TLS files ([mqtt] ca_file, cert_file, key_file) are checked once, at start: a key that
others can read, or a file that is missing or unusable, stops `der-gateway run` with exit code 2 and a
message naming the file and the fix, before any connection is tried."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.config import MqttSection, SiteFile, TlsFileError
from gateway.north.mqtt import KeyFileError, MqttLink
from simulators.mosquitto import free_port
from tests.security.tls import SITE_ID

GATEWAY = f"gateway-{SITE_ID}"


def tls_files(certs: Path, dest: Path, key_mode: int = 0o600) -> dict[str, str]:
    """A copy of the gateway's certificate and key in `dest`, the key with `key_mode`."""
    dest.mkdir(exist_ok=True)
    for ext in ("crt", "key"):
        shutil.copy(certs / f"{GATEWAY}.{ext}", dest / f"{GATEWAY}.{ext}")
    (dest / f"{GATEWAY}.key").chmod(key_mode)
    return {"ca_file": str(certs / "ca.crt"), "cert_file": str(dest / f"{GATEWAY}.crt"),
            "key_file": str(dest / f"{GATEWAY}.key")}


def test_a_key_file_readable_by_others_stops_der_gateway_run(
        certs: Path, tmp_path: Path, make_site: Callable[..., tuple[SiteFile, Path]]) -> None:
    mqtt = {"broker": f"mqtts://127.0.0.1:{free_port()}", **tls_files(certs, tmp_path / "tls", 0o644)}
    _, site_file = make_site(mqtt=mqtt, store={"path": str(tmp_path / "gateway.sqlite")})
    proc = subprocess.run([sys.executable, "-m", "gateway.cli", "run", "--site", str(site_file)],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    key = mqtt["key_file"]
    assert f"error: [mqtt] key_file {key}: the private key is readable by group or others" in proc.stderr
    assert f"run: chmod 600 {key}" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


async def _noop() -> None:
    return None


def link(mqtt: dict[str, str]) -> MqttLink:
    cfg = MqttSection.model_validate({"broker": "mqtts://127.0.0.1:8883", **mqtt})
    return MqttLink(cfg, SITE_ID, lambda _m: _noop(), lambda: None, offline_payload=lambda: b"{}")


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_a_key_file_readable_by_group_or_others_is_refused(certs: Path, tmp_path: Path, mode: int) -> None:
    files = tls_files(certs, tmp_path, mode)
    with pytest.raises(KeyFileError, match=f"chmod 600 {files['key_file']}"):
        link(files)


def test_a_key_file_of_mode_600_is_used(certs: Path, tmp_path: Path) -> None:
    link(tls_files(certs, tmp_path))  # no error: the context is built and kept for every connection


@pytest.mark.parametrize(("problem", "expected"), [
    ("missing cert_file", r"\[mqtt\] cert_file .*/nope\.crt: no such file"),
    ("missing ca_file", r"\[mqtt\] ca_file .*/nope\.crt: no such file"),
    ("key_file is a directory", r"\[mqtt\] key_file .*: cannot be read"),
    ("cert_file without key_file", r"cert_file and key_file go together"),
    ("key of another certificate", r"cert_file .* with key_file .*: cannot be loaded .*the key must be"),
    ("ca_file is not a certificate", r"\[mqtt\] ca_file .*: no usable PEM CA certificate"),
])
def test_a_missing_or_unusable_tls_file_is_a_clear_error(certs: Path, tmp_path: Path, problem: str,
                                                         expected: str) -> None:
    files = tls_files(certs, tmp_path)
    match problem:
        case "missing cert_file":
            files["cert_file"] = str(tmp_path / "nope.crt")
        case "missing ca_file":
            files["ca_file"] = str(tmp_path / "nope.crt")
        case "key_file is a directory":
            files["key_file"] = str(tmp_path)
        case "cert_file without key_file":
            del files["key_file"]
        case "key of another certificate":
            files["cert_file"] = str(certs / "ldc.crt")
        case "ca_file is not a certificate":
            files["ca_file"] = files["key_file"]
    with pytest.raises(TlsFileError, match=expected):
        link(files)
