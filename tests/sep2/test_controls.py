"""gateway/north/sep2/controls.py: envoy-schema's DERControl and DefaultDERControl → the plain types of
gateway/north/sep2/model.py, from the XML a server sends (parsed by the codec)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.north.sep2 import codec
from gateway.north.sep2.codec import Sep2Error, parse
from gateway.north.sep2.controls import control, default_control
from gateway.north.sep2.model import ACTIVE, SCHEDULED, Control, DefaultControl

FIXTURES = Path(__file__).resolve().parent / "fixtures"
ENVOY_DERC = (FIXTURES / "envoy_derc.xml").read_bytes()
ENVOY_DDERC = (FIXTURES / "envoy_dderc.xml").read_bytes()
PROGRAM = "50000000000000000000000100000000"


def _control(doc: bytes, primacy: int = 1) -> Control:
    return control(parse(codec.DERControl, doc), PROGRAM, primacy)


def _with_base(base: bytes, doc: bytes = ENVOY_DERC) -> bytes:
    """The envoy control with its DERControlBase's content replaced by `base`."""
    return re.sub(rb"<DERControlBase>.*</DERControlBase>", b"<DERControlBase>" + base + b"</DERControlBase>",
                  doc, flags=re.S)


def _limit(name: str, value: int, multiplier: int = 0) -> bytes:
    return (b"<csipaus:%s><multiplier>%d</multiplier><value>%d</value></csipaus:%s>"
            % (name.encode(), multiplier, value, name.encode()))


def test_gen_01_envoys_control_as_the_schedule_sees_it() -> None:
    c = _control(ENVOY_DERC, primacy=2)
    assert c == Control(
        mrid="30000000000000000000000100000000", program=PROGRAM, primacy=2, creation=1796614294,
        start=1796614414, duration=600, values={"import": 5000.0, "export": 1500.0}, status=SCHEDULED,
        randomize_start=30, ramp_s=None, reply_to="/edev/1/rsps/site_control/rsp", response_required=3,
        href="/edev/1/derp/1/derc/1", unsupported=())
    assert c.end == 1796615014


def test_all_24_controls_of_a_list_with_envoys_multiplier() -> None:
    dercl = parse(codec.DERControlList, (FIXTURES / "dercl_two.xml").read_bytes())
    first, second = (control(d, PROGRAM, 1) for d in dercl.DERControl)
    assert first.values == {"export": 1500.0} and first.status == ACTIVE  # 15 × 10²
    assert second.values == {"connect": False} and second.ramp_s == 2.5  # rampTms 250 hundredths of s
    assert (second.response_required, second.randomize_start) == (1, 0)


def test_loa_every_csip_aus_limit_and_switch_maps_to_its_quantity() -> None:
    base = (b"<opModConnect>true</opModConnect><opModEnergize>false</opModEnergize>"
            + _limit("opModImpLimW", 70) + _limit("opModExpLimW", 15, 3) + _limit("opModGenLimW", 20, 3)
            + _limit("opModLoadLimW", 12345, -1))
    c = _control(_with_base(base))
    assert c.values == {"export": 15000.0, "import": 70.0, "generation": 20000.0,
                        "load": pytest.approx(1234.5), "connect": True, "energize": False}
    assert c.unsupported == ()


def test_fields_the_gateway_does_not_carry_out_are_listed_never_dropped() -> None:
    base = (b"<opModFixedW>5000</opModFixedW><opModMaxLimW>8000</opModMaxLimW>"
            b"<opModTargetW><multiplier>0</multiplier><value>300</value></opModTargetW>"
            b'<opModVoltVar href="/derp/1/dc/1"/>' + _limit("opModExpLimW", 1000))
    c = _control(_with_base(base))
    assert c.values == {"export": 1000.0}
    assert c.unsupported == ("opModFixedW", "opModMaxLimW", "opModTargetW", "opModVoltVar")


def test_response_required_absent_is_none_asked() -> None:
    doc = ENVOY_DERC.replace(b' responseRequired="03"', b"")
    c = _control(doc.replace(b' replyTo="/edev/1/rsps/site_control/rsp"', b""))
    assert (c.response_required, c.reply_to) == (0, None)


@pytest.mark.parametrize(("wire", "bits"), [("03", 3), ("01", 1), ("00", 0), ("0c", 12)])
def test_response_required_is_hex_on_the_wire(wire: str, bits: int) -> None:
    doc = ENVOY_DERC.replace(b'responseRequired="03"', b'responseRequired="%s"' % wire.encode())
    assert _control(doc).response_required == bits


def test_negative_limit_is_refused_never_read_as_no_limit() -> None:
    with pytest.raises(Sep2Error) as err:
        _control(_with_base(_limit("opModExpLimW", -1500)))
    assert err.value.resource == "DERControl 30000000000000000000000100000000"
    assert err.value.element == "DERControlBase/opModExpLimW" and "negative" in err.value.problem


def test_all_24_multiplier_outside_the_standard_names_the_control() -> None:
    with pytest.raises(Sep2Error) as err:
        _control(_with_base(_limit("opModImpLimW", 1, 12)))
    assert err.value.element == "DERControlBase/opModImpLimW/multiplier"
    assert str(err.value).startswith("2030.5 DERControl 30000000000000000000000100000000:")


@pytest.mark.parametrize(("old", "new", "element"), [
    (b"<randomizeStart>30</randomizeStart>", b"<randomizeStart>4000</randomizeStart>", "randomizeStart"),
    (b"<currentStatus>0</currentStatus>", b"<currentStatus>9</currentStatus>", "EventStatus/currentStatus"),
    (b"<duration>600</duration>", b"<duration>-600</duration>", "interval/duration"),
    (b"<DERControlBase>", b"<DERControlBase><rampTms>-5</rampTms>", "DERControlBase/rampTms"),
])
def test_out_of_range_values_are_refused(old: bytes, new: bytes, element: str) -> None:
    with pytest.raises(Sep2Error) as err:
        _control(ENVOY_DERC.replace(old, new))
    assert err.value.element == element and "outside" in err.value.problem


def test_control_with_no_interval_is_refused() -> None:
    with pytest.raises(Sep2Error, match="interval"):
        _control(re.sub(rb"<interval>.*</interval>", b"", ENVOY_DERC, flags=re.S))


def test_all_23_envoys_default_control_of_zero_watts() -> None:
    d = default_control(parse(codec.DefaultDERControl, ENVOY_DDERC), PROGRAM, 1)
    assert d == DefaultControl(mrid="40000000000000000000000100000000", program=PROGRAM, primacy=1,
                               values={"import": 0.0, "export": 0.0}, set_grad_w=27, unsupported=())


def test_default_control_lists_what_it_does_not_carry_out() -> None:
    doc = _with_base(_limit("opModExpLimW", 5, 3) + b"<opModFixedW>10</opModFixedW><rampTms>100</rampTms>",
                     ENVOY_DDERC).replace(b"<setGradW>", b"<setESDelay>300</setESDelay><setGradW>")
    d = default_control(parse(codec.DefaultDERControl, doc), PROGRAM, 1)
    assert d.values == {"export": 5000.0}
    assert d.unsupported == ("opModFixedW", "rampTms", "setESDelay")


def test_default_control_negative_limit_is_refused() -> None:
    with pytest.raises(Sep2Error) as err:
        default_control(parse(codec.DefaultDERControl, _with_base(_limit("opModImpLimW", -1), ENVOY_DDERC)),
                        PROGRAM, 1)
    assert err.value.resource.startswith("DefaultDERControl ") and err.value.element.endswith("opModImpLimW")
