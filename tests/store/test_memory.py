"""What the store's work for each cycle leaves behind and what it costs stay the same all day.

`der-gateway run` collects cycles once a minute (gateway/cli.py): whatever a cycle or an instruction leaves
in a reference cycle stays allocated until then, a minute of it, and the memory it took is fragmented
after (benchmarks/fuzz_soak.py grew the gateway by 74 MiB in 1,000 cases when the split of each engine
snapshot was held in one). And a cycle's snapshot and state write do not grow with the ids seen in the
last 24 h (TDC-06): a busy day has thousands, and the day soak's cycle time grew with them. The work is
counted in function calls (sys.setprofile), not timed: the same on any machine."""

from __future__ import annotations

import gc
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from gateway.core.engine import Engine
from gateway.journal import Journal
from gateway.store import Store
from gateway.store.health import StoreHealth
from gateway.store.state import split
from gateway.store.writer import InlineWriter, StoreWriter
from tests.store.test_state_and_writer import NOW, cancel, dispatch, engine_with


@contextmanager
def collector_off() -> Iterator[Callable[[], int]]:
    """Inside: the cycle collector does not run; the callable says how many objects only it would free
    of what was made since the block started."""
    gc.collect()
    gc.disable()
    try:
        yield gc.collect
    finally:
        gc.enable()


def test_splitting_a_snapshot_leaves_no_reference_cycle() -> None:
    snap = engine_with(50).snapshot()
    with collector_off() as cyclic:
        for _ in range(3):
            split(snap)
        assert cyclic() == 0


def test_journalling_cycles_and_instructions_leaves_no_reference_cycle(tmp_path: Path) -> None:
    store = Store(tmp_path / "gw.sqlite", 100)
    journal = Journal(store, InlineWriter(store, StoreHealth(store.path)))
    engine = engine_with(20)
    journal.restore(engine)
    journal.cycle(engine.cycle(NOW, None, []), [], engine, [])  # what is made once is made
    with collector_off() as cyclic:
        for i in range(5):
            at = NOW + timedelta(seconds=i + 1)
            msg = dispatch(f"d-{i}", 10.0 + i, at) if i % 2 else cancel(f"c-{i}", f"e-{i}")
            engine.receive(msg, at)
            journal.instruction(msg, "mqtt", [], engine, at)
            journal.cycle(engine.cycle(at, None, []), [], engine, [{"event": "test"}])
        assert cyclic() == 0
    store.close()


def engine_having_seen(n: int) -> Engine:
    """Five envelopes in force and n dispatches that have ended: n seen ids, kept 24 h."""
    engine = engine_with(5)
    store = engine.state.store
    for i in range(n):
        engine.receive(dispatch(f"d-{i}", 10.0), NOW)
        store.drop(store.records["ieso"][f"d-{i}"], NOW)
    return engine


def calls(work: Callable[[], object]) -> int:
    """How many functions `work` calls, Python's and C's."""
    count = 0

    def profile(_frame: object, event: str, _arg: object) -> None:
        nonlocal count
        count += event in ("call", "c_call")

    sys.setprofile(profile)
    try:
        work()
    finally:
        sys.setprofile(None)
    return count


def lines(work: Callable[[], object]) -> int:
    """How many lines of Python `work` runs."""
    count = 0

    def trace(_frame: object, event: str, _arg: object) -> Callable[..., object]:
        nonlocal count
        count += event == "line"
        return trace

    sys.settrace(trace)
    try:
        work()
    finally:
        sys.settrace(None)
    return count


def cycle_calls(tmp_path: Path, seen: int) -> int:
    """The calls of a journalled cycle (the engine's snapshot and its changed parts written), in which
    nothing but the time changed, on an engine that has seen `seen` ids."""
    store = Store(tmp_path / f"gw-{seen}.sqlite", 100)
    journal = Journal(store, InlineWriter(store, StoreHealth(store.path)))
    engine = engine_having_seen(seen)
    journal.restore(engine)
    counts = []
    for i in range(3):  # the first writes everything
        cycle = engine.cycle(NOW + timedelta(seconds=i + 1), None, [])
        counts.append(calls(lambda cycle=cycle: journal.cycle(cycle, [], engine, [])))
    store.close()
    return counts[-1]


def test_tdc_06_a_cycle_costs_the_store_no_more_with_thousands_of_seen_ids(tmp_path: Path) -> None:
    few, many = cycle_calls(tmp_path, 10), cycle_calls(tmp_path, 2000)
    assert many <= few + 20, (few, many)


def test_tdc_06_a_decision_costs_no_more_with_thousands_of_seen_ids() -> None:
    # the ids seen are forgotten 24 h after their instruction ends (Store.prune, every cycle): a cycle looks
    # at those due, not at all of them. Counted in lines run: a loop over the ids inside one call is not
    # seen by a count of calls
    def decision_lines(seen: int) -> int:
        engine = engine_having_seen(seen)
        counts = [lines(lambda i=i: engine.cycle(NOW + timedelta(seconds=i + 1), None, [])) for i in range(3)]
        return counts[-1]

    few, many = decision_lines(10), decision_lines(4000)
    assert many <= few + 20, (few, many)


def test_tdc_06_a_seen_id_is_forgotten_at_its_time_and_not_before_even_after_a_restart() -> None:
    engine = engine_having_seen(3)
    store = engine.state.store
    kept = store.seen["ieso"]["d-1"]
    assert kept.keep_until is not None
    # it came again: kept an hour longer
    store.remember("ieso", "d-1", replace(kept, keep_until=kept.keep_until + timedelta(hours=1)))
    restored = Engine(engine.params, NOW)
    restored.restore(engine.snapshot())
    for e in (engine, restored):
        e.state.store.prune(kept.keep_until + timedelta(seconds=1))
        assert set(e.state.store.seen["ieso"]) == {"d-1"}
        e.state.store.prune(kept.keep_until + timedelta(hours=1, seconds=1))
        assert set(e.state.store.seen["ieso"]) == set()


def test_tdc_06_an_instruction_writes_its_own_seen_id_and_record_not_the_others(tmp_path: Path) -> None:
    store = Store(tmp_path / "gw.sqlite", 100)
    engine = engine_having_seen(2000)
    with store.transaction():
        store.state.save_engine(engine.snapshot())
    engine.receive(dispatch("d-new", 20.0), NOW)
    with store.transaction():
        written = store.state.save_engine(engine.snapshot())
    assert 0 < written < 3000  # its record (with its payload) and its seen id, of ~400 KB of state
    store.close()
    # and after a restart, the parts on disk are known: nothing is written again, and the state is whole
    store = Store(tmp_path / "gw.sqlite", 100)
    restored = Engine(engine.params, NOW)
    restored.restore(store.state.load_engine())
    assert restored.snapshot() == engine.snapshot()
    with store.transaction():
        assert store.state.save_engine(restored.snapshot()) == 0
    restored.state.store.drop(restored.state.store.records["ieso"]["d-new"], NOW)
    with store.transaction():
        assert 0 < store.state.save_engine(restored.snapshot()) < 1000
    assert store.state.load_engine() == restored.snapshot()
    store.close()


def test_the_writer_says_how_many_jobs_wait_for_it(tmp_path: Path) -> None:
    writer = StoreWriter(lambda: Store(tmp_path / "gw.sqlite", 100), StoreHealth(tmp_path / "gw.sqlite"))
    running, release = threading.Event(), threading.Event()

    def hold(_: Store) -> None:
        running.set()
        release.wait(10)

    first = writer.submit(hold)
    assert running.wait(10)
    later = [writer.submit(lambda _: None) for _ in range(3)]
    assert writer.queued == 3  # the one running is not waiting
    release.set()
    assert first.result(10) and all(f.result(10) for f in later)
    assert writer.queued == 0
    writer.close()
