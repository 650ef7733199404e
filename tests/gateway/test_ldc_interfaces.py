"""One LDC is one role, whichever interface its instructions come by (`[ldc]` of the site file): what
each interface may say, and a site with two that carry a default envelope refused unless the file says
which one is authoritative."""

from __future__ import annotations

import tomllib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest

from gateway.config import SiteFileError, parse_site
from gateway.core.model import Cancel, DefaultEnvelope, Envelope, Invalid, Limits
from gateway.north import authority
from simulators.example_site import EXAMPLE_SITE
from tests.support.rig import Rig

NOW = datetime(2026, 12, 7, 12, tzinfo=UTC)


def _site(**sections: dict) -> dict:
    data = tomllib.loads(EXAMPLE_SITE.read_text())
    data.update(sections)
    return data


SEP2 = {"enabled": True, "ca": "ca.pem", "cert": "site.pem", "key": "site.key"}


def test_two_ldc_interfaces_with_a_default_envelope_are_refused_unless_the_file_says_which_counts() -> None:
    with pytest.raises(SiteFileError, match=r'\[ldc\] default_envelope = "sep2"'):
        parse_site(_site(sep2=SEP2))
    assert parse_site(_site(sep2=SEP2, ldc={"default_envelope": "sep2"})).ldc_interfaces == \
        ("mqtt", "scada", "sep2")
    assert parse_site(_site(sep2=SEP2, ldc={"interfaces": ["sep2", "scada"]})).ldc_interfaces == \
        ("sep2", "scada")
    with pytest.raises(SiteFileError, match=r"lists 'sep2' but \[sep2\] is not enabled"):
        parse_site(_site(ldc={"interfaces": ["mqtt", "sep2"]}))
    with pytest.raises(SiteFileError, match="not one of the interfaces that carry a default envelope"):
        parse_site(_site(ldc={"default_envelope": "scada"}))
    with pytest.raises(SiteFileError, match=r"\[sep2\] is enabled but ca, cert, key is not set"):
        parse_site(_site(sep2={"enabled": True}, ldc={"default_envelope": "sep2"}))


def _envelope(msg_id: str, replaces: str | None = None) -> Envelope:
    return Envelope(id=msg_id, issuer="ldc", issued_at=NOW, start=NOW, end=NOW + timedelta(hours=1),
                    limits=Limits(export_limit_kw=10.0), reason="feeder", replaces=replaces)


def _refusal(msg: object) -> str:
    assert isinstance(msg, Invalid) and msg.reason == "UNAUTHORIZED", msg
    return msg.detail


def test_tdc_04_what_each_interface_may_say_for_the_ldc() -> None:
    both = ("mqtt", "sep2")
    env = _envelope("env-1")
    assert authority.check(env, "mqtt", both, "sep2") is env  # limits come by any listed interface
    assert "not by MQTT" in _refusal(authority.check(env, "mqtt", ("sep2",), None))
    default = DefaultEnvelope(id="d-1", issuer="ldc", issued_at=NOW, limits=Limits(export_limit_kw=5.0))
    assert "default envelope comes by IEEE 2030.5" in _refusal(authority.check(default, "mqtt", both, "sep2"))
    assert authority.check(default, "sep2", both, "sep2") is default
    # what 2030.5 put in force only 2030.5 can cancel or replace, and no other may use its ids
    cancel = Cancel(id="c-1", issuer="ldc", issued_at=NOW, ref="sep2:AB12:export")
    refused = _refusal(authority.check(cancel, "mqtt", both, None))
    assert "belongs to the LDC's IEEE 2030.5 interface" in refused
    assert authority.check(cancel, "sep2", both, None) is cancel
    _refusal(authority.check(_envelope("env-2", replaces="sep2:AB12:export"), "scada", both, None))
    _refusal(authority.check(_envelope("sep2:forged"), "mqtt", both, None))


@pytest.mark.asyncio
async def test_tdc_04_an_ldc_instruction_by_an_unlisted_interface_is_unauthorized_and_changes_nothing(
        make_rig: Callable[..., Awaitable[Rig]]) -> None:
    rig = await make_rig(sections={"ldc": {"interfaces": ["scada"]}})
    before = rig.sim.meter_p_kw
    mark = await rig.send("ldc", "envelope", "env-mqtt", start=0, end=600, export_limit_kw=5.0,
                          reason="thermal")
    rejected = await rig.response("env-mqtt", "rejected", start=mark)
    assert rejected["reason"] == "UNAUTHORIZED"
    assert "[ldc] interfaces" in rejected["detail"]
    t = await rig.telemetry(start=mark)
    assert t["effective"]["export_limit_kw"] > 5.0 and "env-mqtt" not in t["effective"]["binding"]
    assert before > 5.0 and rig.sim.meter_p_kw > 5.0
