"""Certificates for the security tests: the test CA of scripts/make-test-ca.sh and client TLS contexts."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

from gateway.config import SiteFile
from simulators.example_site import example_site

REPO = Path(__file__).resolve().parents[2]
MAKE_TEST_CA = REPO / "scripts" / "make-test-ca.sh"
SITE_ID = "site-001"  # examples/site.toml; the example ACL has a block for its gateway


def make_test_ca(out: Path) -> Path:
    subprocess.run(["bash", str(MAKE_TEST_CA), str(out), SITE_ID], check=True, capture_output=True)
    return out


def client_tls(certs: Path, name: str | None, ca: str = "ca") -> ssl.SSLContext:
    """A client's TLS context: trusts `ca`, presents certificate `name` (None: no certificate)."""
    ctx = ssl.create_default_context(cafile=str(certs / f"{ca}.crt"))
    if name is not None:
        ctx.load_cert_chain(str(certs / f"{name}.crt"), str(certs / f"{name}.key"))
    return ctx


def tls_site(certs: Path, broker_url: str) -> SiteFile:
    """The example site, its gateway on `broker_url` (mqtts://) with its certificate from `certs`."""
    site = example_site()
    site.mqtt = site.mqtt.model_copy(update={"broker": broker_url, "ca_file": certs / "ca.crt",
                                             "cert_file": certs / f"gateway-{SITE_ID}.crt",
                                             "key_file": certs / f"gateway-{SITE_ID}.key"})
    return site
