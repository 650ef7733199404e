"""The store's work for each cycle and each instruction leaves nothing for the cycle collector.

`der-gateway run` collects cycles once a minute (gateway/cli.py): whatever a cycle or an instruction leaves
in a reference cycle stays allocated until then, a minute of it, and the memory it took is fragmented
after (benchmarks/fuzz_soak.py grew the gateway by 74 MiB in 1,000 cases when the split of each engine
snapshot was held in one)."""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

from gateway.journal import Journal
from gateway.store import Store
from gateway.store.health import StoreHealth
from gateway.store.state import split
from gateway.store.writer import InlineWriter
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
