"""The 2030.5 utility-server simulator, driven as a client would over real mutual TLS (aiohttp, the test PKI).

Every body it serves is checked here again with the XSDs (independently of its own check), and every
client body the tests send is built with envoy-schema, the way the gateway's client builds its own.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from envoy_schema.server.schema.csip_aus.connection_point import (
    ConnectionPointRequest,
    ConnectionPointResponse,
)
from envoy_schema.server.schema.sep2 import der, end_device, metering, metering_mirror, response
from envoy_schema.server.schema.sep2.base import BaseXmlModelWithNS
from envoy_schema.server.schema.sep2.der_control_types import ActivePower
from envoy_schema.server.schema.sep2.device_capability import DeviceCapabilityResponse
from envoy_schema.server.schema.sep2.function_set_assignments import FunctionSetAssignmentsListResponse
from envoy_schema.server.schema.sep2.time import TimeResponse
from envoy_schema.server.schema.sep2.types import DateTimeIntervalType

from simulators import sep2_xsd
from simulators.sep2_certs import Pki, cert_der, lfdi, make_pki, sfdi
from simulators.sep2_server import CONTENT_TYPE, Sep2Server


def client_context(ca: Path, cert: Path | None, key: Path | None,
                   ciphers: str = "ECDHE-ECDSA-AES128-CCM8") -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(ciphers)
    ctx.load_verify_locations(cafile=ca)
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


class Client:
    """A bare 2030.5 client: one TLS session, bodies as envoy models, every served body XSD-checked."""

    def __init__(self, server: Sep2Server, ctx: ssl.SSLContext) -> None:
        self.server = server
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx))

    async def call(self, method: str, path: str, body: BaseXmlModelWithNS | bytes | None = None) -> Answer:
        data = body if isinstance(body, bytes | None) else body.to_xml(exclude_none=True)
        if isinstance(body, BaseXmlModelWithNS):
            assert isinstance(data, bytes)
            sep2_xsd.validate(data)  # what a test sends as "valid" is valid
        async with self.session.request(method, self.server.url + path, data=data,
                                        headers={"Content-Type": CONTENT_TYPE}) as resp:
            raw = await resp.read()
            if raw:
                assert resp.content_type == CONTENT_TYPE
                sep2_xsd.validate(raw)
            return Answer(resp.status, dict(resp.headers), raw)

    async def get(self, path: str, model: type[BaseXmlModelWithNS]) -> BaseXmlModelWithNS:
        answer = await self.call("GET", path)
        assert answer.status == 200, (path, answer)
        return model.from_xml(answer.body)

    async def close(self) -> None:
        await self.session.close()


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


@pytest_asyncio.fixture
async def server(pki: Pki) -> AsyncIterator[Sep2Server]:
    async with Sep2Server(pki) as s:
        yield s
        assert [e for e in s.errors if e.side == "server"] == []  # never a body the simulator's XSDs reject


@pytest_asyncio.fixture
async def client(server: Sep2Server, pki: Pki) -> AsyncIterator[Client]:
    c = Client(server, client_context(pki.ca_cert, pki.client_cert, pki.client_key))
    yield c
    await c.close()


def end_device_body(pki: Pki) -> end_device.EndDeviceRequest:
    return end_device.EndDeviceRequest(lFDI=pki.client_lfdi, sFDI=pki.client_sfdi, changedTime=1_700_000_000)


async def registered(client: Client, pki: Pki) -> str:
    answer = await client.call("POST", "/edev", end_device_body(pki))
    assert answer.status == 201
    return answer.headers["Location"]


def der_capability() -> der.DERCapability:
    return der.DERCapability(modesSupported="00500088", rtgMaxW=ActivePower(multiplier=3, value=250),
                             type_=der.DERType.PHOTOVOLTAIC_SYSTEM, doeModesSupported="03")


def mirror_usage_point(pki: Pki, post_rate: int = 300) -> metering_mirror.MirrorUsagePointRequest:
    reading_type = metering.ReadingType(kind=37, dataQualifier=2, uom=38, powerOfTenMultiplier=0,
                                        intervalLength=post_rate, flowDirection=1)
    mmr = metering_mirror.MirrorMeterReading(mRID="A1" * 16, description="site W", readingType=reading_type)
    return metering_mirror.MirrorUsagePointRequest(
        mRID=pki.client_lfdi[:22] + "0003" + "0000BEEF"[:6], roleFlags="03", serviceCategoryKind=0, status=1,
        deviceLFDI=pki.client_lfdi, postRate=post_rate, mirrorMeterReadings=[mmr])


def reading(value: int, start: int) -> metering_mirror.MirrorMeterReadingRequest:
    return metering_mirror.MirrorMeterReadingRequest(
        mRID="A1" * 16, mirrorReadingSets=[metering_mirror.MirrorReadingSet(
            mRID="B2" * 16, timePeriod=DateTimeIntervalType(start=start, duration=60),
            readings=[metering.Reading(value=value, localID="01")])])


# ---- identity and TLS -------------------------------------------------------------------------------------

def test_lfdi_and_sfdi_follow_2030_5(pki: Pki) -> None:
    """LFDI: first 40 hex of SHA-256(DER); SFDI: first 36 bits in decimal + a check digit (sum ≡ 0 mod 10).
    2030.5 §6.3.3's worked example: LFDI 3E4F45AB31EDFE5B67E343E5E4562E31984E23E5 → SFDI 167261211391."""
    assert sfdi("3E4F45AB31EDFE5B67E343E5E4562E31984E23E5") == 167261211391
    digits = str(pki.client_sfdi)
    assert sum(map(int, digits)) % 10 == 0 and int(digits[:-1]) == int(pki.client_lfdi[:9], 16)
    fingerprint = x509.load_pem_x509_certificate(pki.client_cert.read_bytes()).fingerprint(hashes.SHA256())
    assert pki.client_lfdi == lfdi(cert_der(pki.client_cert)) == fingerprint.hex()[:40].upper()
    assert pki.client_lfdi != pki.other_lfdi


@pytest.mark.asyncio
async def test_all_01_mtls_identifies_the_client_by_its_certificate(server: Sep2Server, client: Client,
                                                                    pki: Pki) -> None:
    dcap = await client.get("/dcap", DeviceCapabilityResponse)
    assert dcap.pollRate == 300 and dcap.TimeLink.href == "/tm"
    (request,) = server.requests
    assert request.lfdi == pki.client_lfdi and request.cipher == "ECDHE-ECDSA-AES128-CCM8"


@pytest.mark.asyncio
@pytest.mark.parametrize("who", ["no client certificate", "a certificate of another CA"])
async def test_all_01_refused_in_the_handshake(server: Sep2Server, pki: Pki, who: str) -> None:
    cert, key = (None, None) if who == "no client certificate" else (pki.foreign_cert, pki.foreign_key)
    stranger = Client(server, client_context(pki.ca_cert, cert, key))
    try:
        with pytest.raises(aiohttp.ClientError):
            await stranger.call("GET", "/dcap")
    finally:
        await stranger.close()
    assert server.requests == []


@pytest.mark.asyncio
async def test_only_tls_1_2_with_the_csip_suites(server: Sep2Server, pki: Pki) -> None:
    """GCM is the second CSIP suite; a client offering neither (CBC) is refused."""
    gcm = Client(server, client_context(pki.ca_cert, pki.client_cert, pki.client_key,
                                        ciphers="ECDHE-ECDSA-AES128-GCM-SHA256"))
    cbc = Client(server, client_context(pki.ca_cert, pki.client_cert, pki.client_key,
                                        ciphers="ECDHE-ECDSA-AES128-SHA256"))
    try:
        assert (await gcm.call("GET", "/tm")).status == 200
        assert server.requests[-1].cipher == "ECDHE-ECDSA-AES128-GCM-SHA256"
        with pytest.raises(aiohttp.ClientError):
            await cbc.call("GET", "/tm")
    finally:
        await gcm.close()
        await cbc.close()


# ---- the walk ---------------------------------------------------------------------------------------------

@pytest.mark.asyncio
async def test_all_02_the_walk_of_a_device_client(server: Sep2Server, client: Client, pki: Pki) -> None:
    """dcap → tm → edev POST → edev/1 → rg → cp → fsa → derp → derc/dderc → der → dercap/derg/ders PUT →
    mup POST → readings POST → rsp POST, as envoy v1.5.0 answered each; every body XSD-valid both ways."""
    now = server.now()
    server.set_default(1, export_w=5000, import_w=5000, set_grad_w=27)
    mrid = server.add_control(1, now + 120, 600, export_w=1500, import_w=5000, randomize_start=30)

    dcap = await client.get("/dcap", DeviceCapabilityResponse)
    assert (dcap.EndDeviceListLink.href, dcap.MirrorUsagePointListLink.href) == ("/edev", "/mup")
    tm = await client.get(dcap.TimeLink.href, TimeResponse)
    assert abs(tm.currentTime - now) <= 2 and tm.quality == 4
    empty = await client.get("/edev", end_device.EndDeviceListResponse)
    assert (empty.all_, empty.EndDevice) == (0, None)

    assert await registered(client, pki) == "/edev/1"
    edevs = await client.get("/edev", end_device.EndDeviceListResponse)
    assert edevs.pollRate == 300 and edevs.all_ == 1
    edev = edevs.EndDevice[0]
    assert (edev.lFDI, edev.sFDI) == (pki.client_lfdi, pki.client_sfdi)
    assert (edev.DERListLink.href, edev.FunctionSetAssignmentsListLink.href, edev.RegistrationLink.href,
            edev.ConnectionPointLink.href) == ("/edev/1/der", "/edev/1/fsa", "/edev/1/rg", "/edev/1/cp")
    assert (await client.get(edev.RegistrationLink.href, end_device.RegistrationResponse)).pIN == 111115

    assert not (await client.get("/edev/1/cp", ConnectionPointResponse)).id  # none yet: served empty
    assert (await client.call("PUT", "/edev/1/cp", ConnectionPointRequest(id="NMI-0001"))).status == 201
    assert (await client.get("/edev/1/cp", ConnectionPointResponse)).id == "NMI-0001"

    fsas = await client.get(edev.FunctionSetAssignmentsListLink.href, FunctionSetAssignmentsListResponse)
    assert fsas.pollRate == 300
    derp_list = fsas.FunctionSetAssignments[0].DERProgramListLink.href
    derps = await client.get(derp_list, der.DERProgramListResponse)
    assert derps.pollRate == 60
    program = derps.DERProgram[0]
    assert program.primacy == 1 and program.DERControlListLink.href == "/edev/1/derp/1/derc"
    dderc = await client.get(program.DefaultDERControlLink.href, der.DefaultDERControl)
    assert dderc.DERControlBase_.opModExpLimW.value == 5000 and dderc.setGradW == 27
    dercs = await client.get(program.DERControlListLink.href + "?s=0&l=10", der.DERControlListResponse)
    (control,) = dercs.DERControl
    assert control.mRID == mrid
    assert (control.replyTo, control.responseRequired) == ("/edev/1/rsps/site_control/rsp", "03")
    assert control.DERControlBase_.opModExpLimW == ActivePower(multiplier=0, value=1500)
    assert (control.interval.start, control.interval.duration) == (now + 120, 600)
    assert (control.randomizeStart, control.EventStatus_.currentStatus) == (30, 0)

    ders = await client.get(edev.DERListLink.href, der.DERListResponse)
    assert ders.pollRate == 60
    links = ders.DER_[0]
    assert (await client.call("PUT", links.DERCapabilityLink.href, der_capability())).status == 204
    settings = der.DERSettings(setGradW=27, setMaxW=ActivePower(multiplier=3, value=250), updatedTime=now,
                               doeModesEnabled="03")
    assert (await client.call("PUT", links.DERSettingsLink.href, settings)).status == 204
    connected = der.ConnectStatusTypeValue(dateTime=now, value="01")
    status = der.DERStatus(readingTime=now, genConnectStatus=connected)
    assert (await client.call("PUT", links.DERStatusLink.href, status)).status == 204
    assert [len(server.der_puts[k]) for k in ("dercap", "derg", "ders", "dera")] == [1, 1, 1, 0]
    assert server.der_puts["derg"][0].body.setGradW == 27
    assert (await client.get(links.DERCapabilityLink.href, der.DERCapability)).doeModesSupported == "03"

    created = await client.call("POST", dcap.MirrorUsagePointListLink.href, mirror_usage_point(pki))
    assert created.status == 201 and created.headers["Location"] == "/mup/2"
    assert (await client.call("POST", "/mup/2", reading(-1450, now - now % 60))).status == 201
    assert server.readings[0].mup == 2
    assert server.readings[0].body.mirrorReadingSets[0].readings[0].value == -1450

    answer = await client.call("POST", control.replyTo, response.DERControlResponse(
        createdDateTime=now, endDeviceLFDI=pki.client_lfdi, status=1, subject=mrid))
    assert answer.status == 201 and answer.headers["Location"].startswith(control.replyTo + "/")
    assert [(r.subject, r.status) for r in server.responses] == [(mrid, 1)]
    listed = await client.get(control.replyTo, response.ResponseListResponse)
    assert listed.all_ == 1 and listed.Response_[0].status == 1

    assert server.errors == []
    assert all(r.status < 400 for r in server.requests), server.requests


@pytest.mark.asyncio
async def test_all_01_out_of_band_registration_only(pki: Pki) -> None:
    """Registration disabled in band: the pre-registered device sees /edev/1; another is refused (403)."""
    async with Sep2Server(pki, allow_registration=False) as server:
        server.register(pki.client_lfdi)
        device = Client(server, client_context(pki.ca_cert, pki.client_cert, pki.client_key))
        other = Client(server, client_context(pki.ca_cert, pki.other_cert, pki.other_key))
        try:
            edevs = await device.get("/edev", end_device.EndDeviceListResponse)
            assert edevs.EndDevice[0].href == "/edev/1"
            body = end_device.EndDeviceRequest(lFDI=pki.other_lfdi, sFDI=sfdi(pki.other_lfdi), changedTime=1)
            assert (await other.call("POST", "/edev", body)).status == 403
            assert (await other.get("/edev", end_device.EndDeviceListResponse)).all_ == 0
        finally:
            await device.close()
            await other.close()


@pytest.mark.asyncio
async def test_end_device_with_another_s_identity_is_refused(server: Sep2Server, client: Client,
                                                             pki: Pki) -> None:
    body = end_device.EndDeviceRequest(lFDI=pki.other_lfdi, sFDI=sfdi(pki.other_lfdi), changedTime=1)
    assert (await client.call("POST", "/edev", body)).status == 403
    wrong_sfdi = end_device.EndDeviceRequest(lFDI=pki.client_lfdi, sFDI=pki.client_sfdi + 1, changedTime=1)
    assert (await client.call("POST", "/edev", wrong_sfdi)).status == 403
    assert [e.message.split(" are ")[1] for e in server.errors] == ["not those of the client certificate "
                                                                    f"(lFDI {pki.client_lfdi}, sFDI "
                                                                    f"{pki.client_sfdi})"] * 2
    assert (await client.call("GET", "/edev/1")).status == 404


@pytest.mark.asyncio
async def test_another_device_sees_only_its_own_end_device(server: Sep2Server, client: Client,
                                                           pki: Pki) -> None:
    other = Client(server, client_context(pki.ca_cert, pki.other_cert, pki.other_key))
    try:
        assert await registered(client, pki) == "/edev/1"
        body = end_device.EndDeviceRequest(lFDI=pki.other_lfdi, sFDI=sfdi(pki.other_lfdi), changedTime=1)
        assert (await other.call("POST", "/edev", body)).headers["Location"] == "/edev/2"
        edevs = await other.get("/edev?l=10", end_device.EndDeviceListResponse)
        assert [(e.href, e.lFDI) for e in edevs.EndDevice] == [("/edev/2", pki.other_lfdi)]
        assert (await other.call("GET", "/edev/2/derp/1/derc")).status == 200
        assert (await other.call("GET", "/edev/1/derp/1/derc")).status == 404
        assert (await other.call("GET", "/edev/1")).status == 404
    finally:
        await other.close()


@pytest.mark.asyncio
async def test_all_04_pin_as_configured(server: Sep2Server, client: Client, pki: Pki) -> None:
    server.pin = 222220
    await registered(client, pki)
    assert (await client.get("/edev/1/rg", end_device.RegistrationResponse)).pIN == 222220


@pytest.mark.asyncio
async def test_unknown_path_404_and_wrong_method_405(server: Sep2Server, client: Client, pki: Pki) -> None:
    assert (await client.call("GET", "/nowhere")).status == 404
    assert (await client.call("DELETE", "/dcap")).status == 405
    assert (await client.call("GET", "/edev/1")).status == 404  # not registered yet
    await registered(client, pki)
    assert (await client.call("GET", "/edev/1/derp/9/derc")).status == 404
    assert [r.status for r in server.requests[:3]] == [404, 405, 404]


# ---- controls ---------------------------------------------------------------------------------------------

@pytest.mark.asyncio
async def test_derc_paging_with_s_and_l(server: Sep2Server, client: Client, pki: Pki) -> None:
    """`all` counts every listed control, `results` the page; `l` defaults to 1 as 2030.5 and envoy have it;
    events are ordered by start."""
    await registered(client, pki)
    now = server.now()
    mrids = [server.add_control(1, now + 100 * (4 - i), 60, export_w=1000 + i) for i in range(5)]
    by_start = list(reversed(mrids))
    first = await client.get("/edev/1/derp/1/derc", der.DERControlListResponse)
    assert (first.all_, first.results, [c.mRID for c in first.DERControl]) == (5, 1, by_start[:1])
    pages = []
    for s in (0, 2, 4):
        page = await client.get(f"/edev/1/derp/1/derc?s={s}&l=2", der.DERControlListResponse)
        assert page.all_ == 5
        pages += [c.mRID for c in page.DERControl]
    assert pages == by_start
    beyond = await client.get("/edev/1/derp/1/derc?s=9&l=2", der.DERControlListResponse)
    assert (beyond.all_, beyond.results, beyond.DERControl) == (5, 0, None)
    assert (await client.call("GET", "/edev/1/derp/1/derc?s=-1")).status == 400


@pytest.mark.asyncio
async def test_gen_10_programs_of_two_primacies_in_two_fsas(server: Sep2Server, client: Client,
                                                            pki: Pki) -> None:
    await registered(client, pki)
    second = server.add_program(primacy=0, fsa=2)
    fsas = await client.get("/edev/1/fsa?l=10", FunctionSetAssignmentsListResponse)
    assert [f.DERProgramListLink.href for f in fsas.FunctionSetAssignments] == ["/edev/1/fsa/1/derp",
                                                                               "/edev/1/fsa/2/derp"]
    progs = await client.get("/edev/1/fsa/2/derp?l=10", der.DERProgramListResponse)
    assert [(p.href, p.primacy) for p in progs.DERProgram] == [(f"/edev/1/derp/{second}", 0)]


@pytest.mark.asyncio
async def test_all_18_control_dropped_after_its_end_and_cancel_stays_listed(
        server: Sep2Server, client: Client, pki: Pki) -> None:
    await registered(client, pki)
    now = server.now()
    ending = server.add_control(1, now - 10, 60, export_w=0)
    cancelled = server.add_control(1, now + 30, 600, import_w=0)
    server.cancel(cancelled)
    listed = await client.get("/edev/1/derp/1/derc?l=10", der.DERControlListResponse)
    status = {c.mRID: (c.EventStatus_.currentStatus, c.version) for c in listed.DERControl}
    assert status == {ending: (1, 1), cancelled: (2, 2)}
    active = await client.get("/edev/1/derp/1/actderc?l=10", der.DERControlListResponse)
    assert [c.mRID for c in active.DERControl] == [ending]

    server.clock_offset_s = 61  # the server's clock past the first control's end
    listed = await client.get("/edev/1/derp/1/derc?l=10", der.DERControlListResponse)
    assert [c.mRID for c in listed.DERControl] == [cancelled]
    server.remove(cancelled)
    assert (await client.get("/edev/1/derp/1/derc?l=10", der.DERControlListResponse)).all_ == 0
    # a Response to a control that has gone is still a Response to a control this server sent
    body = response.DERControlResponse(endDeviceLFDI=pki.client_lfdi, status=3, subject=ending)
    assert (await client.call("POST", "/edev/1/rsps/site_control/rsp", body)).status == 201


@pytest.mark.asyncio
async def test_all_24_multiplier_encodes_limits_truncating(server: Sep2Server, client: Client,
                                                           pki: Pki) -> None:
    """envoy's site_control_pow10_encoding 2: 1550 W is served as 15 × 10² (1500 W, truncated)."""
    await registered(client, pki)
    server.multiplier = 2
    mrid = server.add_control(1, server.now(), 60, export_w=1550, generation_w=250_000)
    (control,) = (await client.get("/edev/1/derp/1/derc", der.DERControlListResponse)).DERControl
    assert control.mRID == mrid
    assert control.DERControlBase_.opModExpLimW == ActivePower(multiplier=2, value=15)
    assert control.DERControlBase_.opModGenLimW == ActivePower(multiplier=2, value=2500)
    with pytest.raises(ValueError, match="Int16"):  # 250 kW does not fit at 10⁰
        server.multiplier = 0
    with pytest.raises(ValueError, match=r"Int16.*multiplier to 3 or more"):
        server.add_control(1, server.now(), 60, export_w=5_000_000)


@pytest.mark.asyncio
async def test_all_20_poll_rates_as_set(server: Sep2Server, client: Client, pki: Pki) -> None:
    await registered(client, pki)
    for n, resource in enumerate(("dcap", "edevl", "fsal", "derpl", "derl"), start=1):
        server.set_poll_rate(resource, n)
    rates = [(await client.get(path, model)).pollRate for path, model in [
        ("/dcap", DeviceCapabilityResponse), ("/edev", end_device.EndDeviceListResponse),
        ("/edev/1/fsa", FunctionSetAssignmentsListResponse),
        ("/edev/1/fsa/1/derp", der.DERProgramListResponse),
        ("/edev/1/der", der.DERListResponse)]]
    assert rates == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="no pollRate on 'derc'"):
        server.set_poll_rate("derc", 1)


# ---- faults -----------------------------------------------------------------------------------------------

@pytest.mark.asyncio
async def test_all_30_server_answers_500_then_comes_back(server: Sep2Server, client: Client,
                                                         pki: Pki) -> None:
    await registered(client, pki)
    server.fail(500)
    assert (await client.call("GET", "/dcap")).status == 500
    assert (await client.call("GET", "/edev/1/derp/1/derc")).status == 500
    server.clear_faults()
    assert (await client.call("GET", "/edev/1/derp/1/derc")).status == 200
    server.fail(503, prefix="/edev/1/derp", count=1)  # only there, only once
    assert (await client.call("GET", "/dcap")).status == 200
    assert (await client.call("GET", "/edev/1/derp/1/derc")).status == 503
    assert (await client.call("GET", "/edev/1/derp/1/derc")).status == 200
    assert [r.status for r in server.requested("GET", "/edev/1/derp/1/derc")] == [500, 200, 503, 200]


@pytest.mark.asyncio
async def test_p_06_429_with_retry_after(server: Sep2Server, client: Client, pki: Pki) -> None:
    await registered(client, pki)
    server.throttle(1.5, prefix="/edev/1/derp/1/derc", count=2)
    for _ in range(2):
        answer = await client.call("GET", "/edev/1/derp/1/derc")
        assert answer.status == 429 and answer.headers["Retry-After"] == "2"
    assert (await client.call("GET", "/edev/1/derp/1/derc")).status == 200


# ---- reporting --------------------------------------------------------------------------------------------

@pytest.mark.asyncio
async def test_all_10_server_post_rate_replaces_the_client_s(server: Sep2Server, client: Client,
                                                              pki: Pki) -> None:
    await registered(client, pki)
    location = (await client.call("POST", "/mup", mirror_usage_point(pki, post_rate=300))).headers["Location"]
    assert location != "/mup/1"
    assert (await client.get(location, metering_mirror.MirrorUsagePoint)).postRate == 60
    server.set_post_rate(30)
    server.set_poll_rate("mupl", 5)
    mups = await client.get("/mup", metering_mirror.MirrorUsagePointListResponse)
    assert mups.pollRate == 5 and [m.postRate for m in mups.mirrorUsagePoints] == [30]
    # the same mRID again updates the same MirrorUsagePoint
    assert (await client.call("POST", "/mup", mirror_usage_point(pki))).headers["Location"] == location
    assert (await client.call("POST", "/mup/1", reading(1, 0))).status == 404
    assert len(server.mirror_usage_points) == 2 and server.readings == []


@pytest.mark.asyncio
async def test_xsd_invalid_client_body_is_400_and_recorded(server: Sep2Server, client: Client,
                                                           pki: Pki) -> None:
    await registered(client, pki)
    good = der.DERStatus(readingTime=1, genConnectStatus=der.ConnectStatusTypeValue(dateTime=1, value="01"))
    xml = good.to_xml(exclude_none=True)
    assert isinstance(xml, bytes)
    answer = await client.call("PUT", "/edev/1/der/1/ders",
                               xml.replace(b"<genConnectStatus>", b"<bogus/><genConnectStatus>"))
    assert answer.status == 400
    assert server.der_puts["ders"] == []
    (error,) = server.errors
    assert (error.side, error.method, error.path) == ("client", "PUT", "/edev/1/der/1/ders")
    assert "bogus" in error.message
    # a valid body of the wrong resource is refused too
    assert (await client.call("PUT", "/edev/1/der/1/dercap", good)).status == 400
    assert "takes a DERCapability, not a DERStatus" in server.errors[-1].message


@pytest.mark.asyncio
async def test_response_must_name_a_control_and_the_client(server: Sep2Server, client: Client,
                                                           pki: Pki) -> None:
    await registered(client, pki)
    body = response.DERControlResponse(endDeviceLFDI=pki.other_lfdi, status=1, subject="0" * 32)
    assert (await client.call("POST", "/edev/1/rsps/site_control/rsp", body)).status == 400
    assert "endDeviceLFDI" in server.errors[0].message and "subject" in server.errors[0].message
    assert server.responses == []


@pytest.mark.asyncio
async def test_wait_for_waits_for_the_request_and_names_the_last_ones_on_timeout(server: Sep2Server,
                                                                                  client: Client) -> None:
    task = asyncio.create_task(server.wait_for(lambda: server.requested("GET", "/tm"), timeout=5))
    await client.call("GET", "/tm")
    assert len(await task) == 1
    with pytest.raises(TimeoutError, match="GET /tm 200"):
        await server.wait_for(lambda: server.requested("GET", "/dcap"), timeout=0.2)


@pytest.mark.asyncio
async def test_time_with_a_skewed_clock(server: Sep2Server, client: Client) -> None:
    server.clock_offset_s = -3600
    tm = await client.get("/tm", TimeResponse)
    assert abs(tm.currentTime - (time.time() - 3600)) <= 2 and tm.tzOffset == 0 and tm.dstOffset == 0
