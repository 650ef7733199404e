"""CSIP-AUS ALL-03, Connection Point registration: after in-band registration and the Registration PIN,
the client puts the site's connection point (`[sep2] connection_point_id`: the NMI in Australia, the
LDC's connection or meter point id in Ontario) to its EndDevice's ConnectionPointLink, before it reads the
programs; again only when the server's differs. Against the utility-server simulator over mutual TLS,
every body checked against the CSIP-AUS 1.2 XSDs."""

from __future__ import annotations

import tomllib
from collections.abc import Awaitable, Callable

import pytest

from gateway.config import SiteFileError, parse_site
from simulators.example_site import EXAMPLE_SITE
from simulators.sep2_certs import Pki
from simulators.sep2_server import Sep2Server
from tests.gateway import test_sep2_gateway as sep2_site
from tests.support.rig import Rig

pki, server = sep2_site.pki, sep2_site.server  # fixtures: the test PKI, the utility-server simulator

NMI = "4102345678"


def first(srv: Sep2Server, method: str, path: str) -> int:
    """The index of the first request of `method` on `path`."""
    return next(i for i, r in enumerate(srv.requests) if (r.method, r.path) == (method, path))


@pytest.mark.asyncio
async def test_all_03_registers_in_band_then_puts_its_connection_point_before_reading_the_programs(
        make_rig: Callable[..., Awaitable[Rig]], pki: Pki, server: Sep2Server) -> None:
    await make_rig(sections=sep2_site.sep2_sections(pki, server, pin=111115, connection_point_id=NMI))
    await server.wait_for(lambda: server.connection_point(pki.client_lfdi) == NMI, timeout=15)
    await server.wait_for(lambda: server.requested("GET", "/edev/1/fsa"), timeout=10)
    # DeviceCapability → Time → EndDeviceList → EndDevice (POSTed) → Registration → ConnectionPoint → FSA
    order = [first(server, "GET", "/dcap"), first(server, "GET", "/tm"), first(server, "POST", "/edev"),
             first(server, "GET", "/edev/1/rg"), first(server, "GET", "/edev/1/cp"),
             first(server, "PUT", "/edev/1/cp"), first(server, "GET", "/edev/1/fsa")]
    assert order == sorted(order)
    # the walk repeats (pollRate 1 s) and reads the server's each time; the same id is not put again
    await server.wait_for(lambda: len(server.requested("GET", "/edev/1/cp")) >= 4, timeout=15)
    assert len(server.requested("PUT", "/edev/1/cp")) == 1
    assert server.connection_points[0].xml.count(f"<csipaus:connectionPointId>{NMI}<".encode()) == 1

    server.set_connection_point(pki.client_lfdi, "4109999999")  # the utility's record changed
    await server.wait_for(lambda: server.connection_point(pki.client_lfdi) == NMI, timeout=15)
    assert len(server.requested("PUT", "/edev/1/cp")) == 2
    assert not server.errors  # every body valid against the CSIP-AUS 1.2 XSDs


@pytest.mark.asyncio
async def test_all_03_a_connection_point_the_server_refuses_is_an_alarm_and_its_controls_still_apply(
        make_rig: Callable[..., Awaitable[Rig]], pki: Pki, server: Sep2Server) -> None:
    server.fail(422, prefix="/edev/1/cp")  # envoy: "Invalid ConnectionPoint.id format."
    rig = await make_rig(sections=sep2_site.sep2_sections(pki, server, connection_point_id=NMI))
    status = await rig.wait_status(lambda s: any("refused the ConnectionPoint" in a for a in s["alarms"]),
                                   timeout=15)
    assert any(NMI in a and "422" in a for a in status["alarms"])
    mrid = server.add_control(1, server.now() - 1, 120, export_w=40_000)
    await rig.telemetry(lambda t: f"sep2:{mrid}" in t["effective"]["binding"], timeout=20)
    await rig.wait_meter(lambda p: p <= 40.5, timeout=20)
    server.clear_faults()  # the id is taken: the alarm goes
    await server.wait_for(lambda: server.connection_point(pki.client_lfdi) == NMI, timeout=15)
    await rig.wait_status(lambda s: not any("ConnectionPoint" in a for a in s["alarms"]), timeout=15)


@pytest.mark.parametrize("bad", ["", "4102 345678", "N" * 33, "NMI\t1", "NMI-é"])
def test_all_03_a_connection_point_id_no_server_can_take_is_refused_naming_the_file_and_the_field(
        bad: str) -> None:
    data = tomllib.loads(EXAMPLE_SITE.read_text())
    data["sep2"] = {"enabled": True, "ca": "ca.pem", "cert": "site.pem", "key": "site.key",
                    "connection_point_id": bad}
    data["ldc"] = {"default_envelope": "sep2"}
    with pytest.raises(SiteFileError) as err:
        parse_site(data, "/etc/der-gateway/site.toml")
    assert str(err.value).startswith("/etc/der-gateway/site.toml: 1 problem(s)")
    assert "sep2.connection_point_id" in str(err.value) and "1 to 32 printable ASCII" in str(err.value)
    data["sep2"]["connection_point_id"] = NMI
    assert parse_site(data).sep2.connection_point_id == NMI
