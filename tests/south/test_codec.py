"""Pure pieces of the driver: backoff, read planning, point decoding with scale factors and sentinels."""

from __future__ import annotations

import random

import pytest

from gateway.south.backoff import Backoff
from gateway.south.modbus_client import MAX_READ_REGISTERS
from gateway.south.sunspec_device import Bound, Image, read_spans
from gateway.south.sunspec_models import encode, model_def

BASE = 40000


def bound(model_id: int, name: str, address_of_model: int = BASE) -> Bound:
    """A point of `model_id` placed at `address_of_model`, with its scale factor bound the same way."""
    pdef = model_def(model_id)[name]
    sf = bound(model_id, pdef.sf, address_of_model) if isinstance(pdef.sf, str) else pdef.sf
    return Bound(f"{model_id}.{name}", address_of_model + pdef.offset, pdef, sf)


def test_backoff_doubles_to_its_cap_with_jitter_and_resets() -> None:
    b = Backoff(initial_s=0.5, max_s=30.0, jitter=0.25, rng=random.Random(7))
    nominal = [0.5, 1, 2, 4, 8, 16, 30, 30]
    delays = [b.failed(now=100.0) for _ in nominal]
    for delay, n in zip(delays, nominal, strict=True):
        assert 0.75 * n <= delay <= n
    assert b.wait_s(now=100.0) == pytest.approx(delays[-1])
    assert b.wait_s(now=200.0) == 0.0
    b.succeeded()
    assert b.wait_s(now=100.0) == 0.0
    assert b.failed(now=0.0) <= 0.5


def test_read_plan_covers_values_and_their_scale_factors_within_125_registers() -> None:
    # 701 W (offset 10) and its W_SF (offset 116) fit one request; 704 two models further on does not.
    w = bound(701, "W")
    lim = bound(704, "WMaxLimPct", address_of_model=BASE + 300)
    spans = read_spans([w, lim, bound(701, "Hz")])
    assert spans == [(w.address, 116 - 10 + 1), (lim.address, 54 - 15 + 1)]
    assert all(count <= MAX_READ_REGISTERS for _, count in spans)
    covered = {a for start, count in spans for a in range(start, start + count)}
    assert {w.address, w.sf.address, lim.address, lim.sf.address} <= covered  # type: ignore[union-attr]


def test_image_applies_scale_factors_read_in_the_same_cycle_and_sentinels() -> None:
    w = bound(701, "W")
    regs = [0] * 130
    regs[10] = encode(w.pdef, -1234)[0]
    regs[116] = encode(w.sf.pdef, -1)[0]  # type: ignore[union-attr]
    image = Image([(BASE, regs)])
    assert image.value(w) == pytest.approx(-123.4)

    regs[116] = encode(w.sf.pdef, 2)[0]  # type: ignore[union-attr]  # the device changed its scale
    assert Image([(BASE, regs)]).value(w) == pytest.approx(-123400)

    regs[10] = encode(w.pdef, None)[0]  # 0x8000: not implemented
    assert Image([(BASE, regs)]).value(w) is None
    regs[10], regs[116] = 5, encode(w.sf.pdef, None)[0]  # type: ignore[union-attr]  # SF not implemented
    assert Image([(BASE, regs)]).value(w) is None
    with pytest.raises(KeyError, match="were not read"):
        Image([(BASE, regs[:20])]).value(w)
