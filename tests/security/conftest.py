"""A TLS broker running the shipped examples/mosquitto/ configuration and ACL, certificates made by
scripts/make-test-ca.sh, and the example site's gateway connected to it with its own certificate.

The rig's peer speaks with the LDC's certificate; `market` is a second peer with the market side's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from gateway.north.mqtt import MqttPeer
from simulators.mosquitto import Mosquitto
from tests.security.tls import client_tls, make_test_ca, tls_site
from tests.support.rig import Rig


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_test_ca(tmp_path_factory.mktemp("test-ca"))


@pytest.fixture
def tls_broker(tmp_path: Path, certs: Path):
    m = Mosquitto(tmp_path, tls_dir=certs)
    m.start()
    yield m
    m.stop()


@pytest_asyncio.fixture
async def rig(tls_broker: Mosquitto, certs: Path) -> AsyncIterator[Rig]:
    """The gateway on TLS with its certificate; the rig's peer is the LDC."""
    r = Rig(tls_site(certs, tls_broker.url), tls_broker.url)
    r.peer = MqttPeer(tls_broker.url, tls_context=client_tls(certs, "ldc"))
    await r.start()
    yield r
    await r.stop()


@pytest_asyncio.fixture
async def market(rig: Rig, tls_broker: Mosquitto, certs: Path) -> AsyncIterator[MqttPeer]:
    """The market side, with its certificate, reading every gateway topic the ACL lets it read."""
    async with MqttPeer(tls_broker.url, tls_context=client_tls(certs, "ieso")) as peer:
        await peer.subscribe(rig.prefix + "gateway/#")
        yield peer
