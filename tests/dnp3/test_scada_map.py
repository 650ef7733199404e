"""The pure part of LDC SCADA (PROTOCOL §9): point list, command checks, the LDC messages commands become,
point values; and the core's sign-of-life hook."""

from __future__ import annotations

import csv
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.config import DeviceConfig
from gateway.core import report
from gateway.core.engine import Engine
from gateway.core.model import Cancel, Envelope, Limits, MeterReading, Override, SiteParams
from gateway.north.scada_map import (
    OPEN_ENDED,
    Facts,
    InForce,
    Operated,
    ScadaState,
    check,
    load_point_list,
    messages,
    values,
)
from gateway.protocol.codec import decode_inbound

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
CAP = 300.0
POINTS = load_point_list()
AN2018 = Path(__file__).resolve().parents[3] / "shared" / "reference" / "an2018"


def _operate(state: ScadaState, op: Operated, in_force: InForce | None = None) -> list:
    return messages(POINTS, state, op, in_force or InForce(), CAP, NOW)


@pytest.mark.skipif(not AN2018.is_dir(), reason="shared/reference/an2018 is not beside the repository")
def test_profile_points_carry_the_an2018_names_at_their_indices() -> None:
    tables = {"binary_outputs": "binary_outputs.csv", "analog_outputs": "analog_outputs.csv",
              "binary_inputs": "binary_inputs.csv", "analog_inputs": "analog_inputs.csv"}
    for kind, file in tables.items():
        with (AN2018 / file).open(encoding="utf-8") as f:
            names = {int(row["index"]): row["name"] for row in csv.DictReader(f)}
        for p in getattr(POINTS, kind):
            if p.an2018:
                assert names[p.index] == p.name, (kind, p.index)
            else:
                assert p.index > max(names), (kind, p.index)  # extensions never take a profile index


def test_point_list_has_the_section_9_points() -> None:
    assert {p.index: p.role for p in POINTS.binary_outputs} == {2: "stop", 5: "connect", 17: "limit_enable"}
    assert {p.index for p in POINTS.analog_outputs} == {88}
    ai = {p.index: p.quantity for p in POINTS.analog_inputs}
    assert ai[149] == "limit_setpoint" and ai[537] == "site_p_kw"


@pytest.mark.parametrize(("op", "status"), [
    (Operated(17, on=True), "SUCCESS"), (Operated(5, on=False), "SUCCESS"), (Operated(2, on=True), "SUCCESS"),
    (Operated(3, on=True), "NOT_SUPPORTED"), (Operated(17, on=None), "NOT_SUPPORTED"),
    (Operated(88, value=0), "SUCCESS"), (Operated(88, value=1000), "SUCCESS"),
    (Operated(88, value=1001), "OUT_OF_RANGE"), (Operated(88, value=-1), "OUT_OF_RANGE"),
    (Operated(88, value=float("nan")), "OUT_OF_RANGE"), (Operated(87, value=5), "NOT_SUPPORTED"),
])
def test_commands_are_checked_before_anything_happens(op: Operated, status: str) -> None:
    assert check(POINTS, op) == status


def test_bo17_on_is_an_ldc_envelope_at_ao88_of_the_export_cap() -> None:
    state = ScadaState(setpoint=1000)
    assert _operate(state, Operated(88, value=250)) == []  # BO17 is OFF: only remembered
    [env] = _operate(state, Operated(17, on=True))
    assert isinstance(env, Envelope)
    assert env.id.startswith("scada-limit-") and env.issuer == "ldc" and env.reason == "other"
    assert env.limits == Limits(export_limit_kw=75.0)
    assert env.start == NOW and env.end == NOW + OPEN_ENDED and env.replaces is None
    # the codec built it from the wire JSON: raw payload and digest as for an MQTT message
    assert decode_inbound("ldc", "envelope", env.raw) == env


def test_ao88_while_limited_replaces_the_scada_envelope_and_bo17_off_cancels_it() -> None:
    state = ScadaState(setpoint=500)
    [first] = _operate(state, Operated(17, on=True))
    [second] = _operate(state, Operated(88, value=100), InForce(limit=[first.id]))
    assert isinstance(second, Envelope) and second.replaces == first.id
    assert second.limits.export_limit_kw == 30.0 and second.id != first.id
    [cancel] = _operate(state, Operated(17, on=False), InForce(limit=[second.id]))
    assert isinstance(cancel, Cancel) and cancel.ref == second.id
    assert _operate(state, Operated(17, on=False)) == []  # nothing in force: nothing to cancel


def test_bo2_is_cease_to_energize_and_bo5_open_is_disconnect() -> None:
    state = ScadaState(setpoint=1000)
    [stop] = _operate(state, Operated(2, on=True))
    assert isinstance(stop, Override) and stop.action == "cease_to_energize" and stop.end is None
    assert _operate(state, Operated(2, on=True), InForce(stop=[stop.id])) == []  # already stopped
    [release] = _operate(state, Operated(2, on=False), InForce(stop=[stop.id]))
    assert isinstance(release, Cancel) and release.ref == stop.id
    [trip] = _operate(state, Operated(5, on=False))
    assert isinstance(trip, Override) and trip.action == "disconnect" and trip.id.startswith("scada-trip-")
    [close] = _operate(state, Operated(5, on=True), InForce(trip=[trip.id]))
    assert isinstance(close, Cancel) and close.ref == trip.id


def test_ids_are_unique_even_within_one_millisecond() -> None:
    state = ScadaState(setpoint=1000)
    ids = [_operate(state, Operated(2, on=True))[0].id for _ in range(3)]
    assert len(set(ids)) == 3
    assert InForce.of(["env-1", *ids]).stop == ids


def test_points_carry_the_cycle_telemetry_scaled() -> None:
    engine = Engine(SiteParams("s", "r", CAP, 400.0, Limits(export_limit_kw=50.0)), NOW)
    meter = MeterReading(p_kw=123.45, q_kvar=-6.7, v_pu=1.012, hz=59.98, online=True, stale=False)
    cycle = engine.cycle(NOW, meter, [])
    t = report.telemetry("s", 1, NOW, cycle, meter, [])
    facts = Facts(comms={"ldc": "ok", "ieso": "lost"}, in_force=InForce(limit=["scada-limit-1"]),
                  setpoint=250, devices_online=1, devices_total=2, rated_kw=0.0, available_kw=0.0,
                  export_binding=cycle.decision.export_binding, import_binding=cycle.decision.import_binding)
    v = values(POINTS, t, facts)
    ai, bi = v.analog_inputs, v.binary_inputs
    assert ai[537] == 1234 and ai[541] == -67 and ai[536] == 59980 and ai[1009] == 1012
    assert ai[149] == 250 and v.analog_outputs[88] == 250
    assert ai[1010] == CAP * 10 and ai[1011] == POINTS.enums["source"]["connection_agreement"]
    assert ai[1016] == POINTS.enums["mode"][cycle.mode] and ai[28] == 2 and ai[1017] == 1
    assert bi[69] and v.binary_outputs[17] and bi[23] and not bi[15]
    assert bi[0] and bi[329] and not bi[330]


def test_tdc_17_a_scada_request_is_a_sign_of_life_of_the_ldc() -> None:
    params = SiteParams("s", "r", CAP, 400.0, Limits(export_limit_kw=50.0), comms_timeout_s=90)
    engine = Engine(params, NOW)
    later = NOW + timedelta(seconds=120)
    assert engine.status(later).comms["ldc"] == "lost"
    engine.heard("ldc", later)
    assert engine.status(later).comms == {"ieso": "lost", "ldc": "ok"}


def test_site_file_dnp3_fields_are_validated() -> None:
    dev = DeviceConfig(id="d", kind="pv", protocol="dnp3", port=20001, outstation_address=1024)
    assert dev.profile == "dnp3" and dev.master_address == 1  # device_profiles/dnp3_inverter.toml
    with pytest.raises(ValueError, match="kind 'pv'"):
        DeviceConfig(id="b", kind="battery", protocol="dnp3", port=20001)
    with pytest.raises(ValueError):
        DeviceConfig(id="d", kind="pv", protocol="dnp3", port=20001, outstation_address=0xFFF0)
