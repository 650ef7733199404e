"""Communication supervision, fail-safe, status and restart at the core (TDC-17, TDC-18, TDC-19)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from gateway.core.engine import Engine
from tests.core.script import PARAMS, Site, message


def run(site: Site, seconds: int, heartbeat_from: tuple[str, ...] = ()) -> None:
    """One cycle per second; the listed roles send a heartbeat every 30 s."""
    for s in range(seconds):
        if s % 30 == 0:
            for role in heartbeat_from:
                site.send("heartbeat", "hb", issuer=role)
        site.cycle()


def test_tdc_17_ldc_link_lost_envelopes_run_to_their_end_then_the_default_envelope_applies() -> None:
    site = Site(keep_alive=False)
    site.send("envelope", "e1", export_limit_kw=100.0, end=200)
    run(site, 89, heartbeat_from=("ieso",))
    assert site.engine.status(site.now).comms == {"ieso": "ok", "ldc": "ok"}
    c = site.cycle()  # 90 s without a word from the LDC
    assert site.engine.status(site.now).comms == {"ieso": "ok", "ldc": "lost"}
    assert c.mode == "failsafe"
    assert (c.decision.export_limit_kw, c.decision.export_binding) == (100.0, "envelope:e1")
    run(site, 110, heartbeat_from=("ieso",))
    c = site.last
    assert site.statuses("e1")[-1] == "completed"
    assert c.mode == "failsafe"
    assert (c.decision.export_limit_kw, c.decision.export_binding) == (50.0, "default_envelope")
    assert site.pcc_kw == pytest.approx(50.0)
    assert site.engine.status(site.now).mode == "failsafe"

    site.send("heartbeat", "hb", issuer="ldc")  # any valid message is a sign of life
    c = site.cycle()
    assert (c.mode, c.decision.export_binding) == ("normal", "connection_agreement")


def test_tdc_17_the_ldc_default_envelope_replaces_the_configured_one_and_overrides_stay() -> None:
    site = Site(keep_alive=False)
    site.send("default_envelope", "de1", export_limit_kw=20.0)
    out = site.send("default_envelope", "de2", export_limit_kw=30.0, import_limit_kw=10.0)
    assert [(o.ref, o.status) for o in out] == [("de2", "received"), ("de2", "accepted"),
                                                ("de1", "superseded")]
    site.settle()
    site.send("override", "h1", action="hold")  # at 240 kW
    run(site, 100)
    d = site.last.decision
    assert (d.export_limit_kw, d.export_binding, d.import_limit_kw) == (30.0, "default_envelope", 10.0)
    assert site.last.mode == "overridden"  # an override outranks the fail-safe
    assert "h1" in site.engine.status(site.now).active


def test_tdc_17_an_outage_in_force_counts_as_a_received_envelope() -> None:
    site = Site(keep_alive=False)
    site.send("outage", "out1", export_limit_kw=80.0, import_limit_kw=400.0)
    run(site, 100)
    assert (site.last.decision.export_limit_kw, site.last.decision.export_binding) == (80.0, "outage:out1")


def test_tdc_18_market_link_lost_the_dispatch_runs_to_its_end_then_the_default_mode() -> None:
    site = Site(keep_alive=False)
    site.send("dispatch", "d1", target_kw=100.0, end=200)
    run(site, 150, heartbeat_from=("ldc",))
    assert site.engine.status(site.now).comms == {"ieso": "lost", "ldc": "ok"}
    assert (site.last.mode, site.last.serving[0].ref) == ("normal", "d1")
    assert site.pcc_kw == pytest.approx(100.0)
    run(site, 60, heartbeat_from=("ldc",))
    assert site.statuses("d1")[-1] == "completed"
    assert (site.last.serving, site.last.decision.binding) == ([], "default_mode")


def test_the_comms_clock_starts_when_the_engine_is_created() -> None:
    site = Site(keep_alive=False)
    site.advance(89)
    assert site.engine.status(site.now).comms == {"ieso": "ok", "ldc": "ok"}
    site.advance(1)
    assert site.engine.status(site.now).comms == {"ieso": "lost", "ldc": "lost"}


def test_a_rejected_but_valid_message_is_a_sign_of_life() -> None:
    site = Site(keep_alive=False)
    site.advance(80)
    site.send("dispatch", "d1", target_kw=10.0, start=-100, end=-10)  # EXPIRED
    site.advance(20)
    assert site.engine.status(site.now).comms["ieso"] == "ok"


def test_mode_precedence_overridden_then_failsafe_then_constrained() -> None:
    site = Site(keep_alive=False)
    site.send("envelope", "e1", export_limit_kw=100.0, end=1000)
    assert site.cycle().mode == "constrained"
    run(site, 95)
    assert site.last.mode == "failsafe"
    site.send("override", "o1", action="cease_to_energize")
    assert site.cycle().mode == "overridden"


def test_status_lists_the_instructions_in_force() -> None:
    site = Site()
    site.send("envelope", "e1", export_limit_kw=100.0)
    site.send("envelope", "e2", export_limit_kw=100.0, start=60)
    site.send("dispatch", "d1", target_kw=50.0)
    site.send("default_envelope", "de1", export_limit_kw=0.0)
    info = site.engine.status(site.now)
    assert (info.active, info.mode) == (("e1", "d1"), "normal")
    site.cycle()
    assert site.engine.status(site.now).mode == "normal"


def test_tdc_19_restart_restores_limits_before_any_write_and_answers_nothing_twice_as_new() -> None:
    site = Site()
    site.send("envelope", "e1", export_limit_kw=80.0)
    site.send("override", "h1", action="hold", start=5)
    dispatch = message("dispatch", "d1", site.now, target_kw=200.0)
    first = site.receive(dispatch)
    site.send("default_envelope", "de1", export_limit_kw=5.0)
    site.settle(10)
    snapshot = json.loads(json.dumps(site.engine.snapshot()))  # what SQLite stores: plain JSON

    restarted = Engine(PARAMS, site.now)
    restarted.restore(snapshot)
    # all that persists comes back (what belongs to the process, e.g. its monotonic times, does not)
    assert restarted.snapshot() == site.engine.snapshot()
    site.engine = restarted
    c = site.cycle()
    assert (c.decision.export_limit_kw, c.decision.export_binding) == (80.0, "envelope:e1")
    assert site.pcc_kw == pytest.approx(80.0)
    assert not any(o.status == "started" for o in c.outbound if hasattr(o, "status"))
    again = site.receive(dispatch)
    assert [(o.status, o.accepted_kw) for o in again] == [("received", None), (first[1].status, 80.0)]
    assert restarted.state.store.records["ldc"]["h1"].hold_kw == pytest.approx(80.0)


def test_restore_rejects_an_unknown_snapshot_format() -> None:
    engine = Engine(PARAMS, Site().now)
    with pytest.raises(ValueError, match="format"):
        engine.restore({"format": 99, "state": {}})


def test_seen_ids_are_forgotten_a_day_after_their_instruction_ended() -> None:
    site = Site()
    site.send("dispatch", "d1", target_kw=10.0, end=60)
    site.cycle(61)
    assert "d1" in site.engine.state.store.seen["ieso"]
    site.cycle(24 * 3600 + 1)
    assert "d1" not in site.engine.state.store.seen["ieso"]


def test_site_params_are_checked() -> None:
    with pytest.raises(ValueError, match="dual_participation_priority"):
        replace(PARAMS, dual_participation_priority="market")
    with pytest.raises(ValueError, match="default_mode"):
        replace(PARAMS, default_mode="self_consumption")
