"""Faults of what a simulated device does and says, as opposed to how it answers on the wire.

The comms faults (`silent`, `exception`, `slow`, `reboot`) live with the transport
(`simulators.modbus_server`, `simulators.dnp3_stack`); the faults here leave the comms alone:

- stuck: the device answers every request and accepts every write (which reads back as written), but
  its output no longer follows: the physics keeps the controls in force when the fault was set, whatever
  is written after (a PV stays at the limit it had, a battery at its setpoint, a disconnect is not
  carried out). A real inverter does this when its firmware hangs in a mode, or another master holds it.
- nan: the measurements (power, voltage, frequency, state of charge…) read as "no number": NaN where the
  type can carry it (float32 registers of a vendor map), else the closest a device gets: SunSpec's
  not-implemented sentinel on points that must be implemented (701 `W`…), the type's largest value on a
  vendor integer register (a saturated or never-written register), a DNP3 analog flagged OVER_RANGE at
  2^31 - 1 (IEEE 1815's over-range convention).
- bad_sf: every scale factor reads `sf` (default 0x7FFF, 32767; 100 or -100 also seen on broken maps),
  outside SunSpec's -10…10: 10^32767 overflows a float, 10^-32767 is 0 (a division by zero on writes).
- garbage: the measurements read random words of their type, a new draw on every read.

Only what goes out on the wire is changed: the device's own registers, controls and physics are left as
they are, so the device is itself again the moment the fault is cleared. A device has one fault at a
time: setting any mode replaces the one before, `none` clears it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

BehaviourMode = Literal["none", "stuck", "nan", "bad_sf", "garbage"]
WIRE_FAULTS = frozenset({"nan", "bad_sf", "garbage"})  # what the device says, not what it does
BAD_SF = 0x7FFF


def check_mode(mode: str, modes: Sequence[str], what: str) -> None:
    """ValueError naming the modes `what` (a kind of device) has, if `mode` is not one of them."""
    if mode not in modes:
        raise ValueError(f"unknown fault mode {mode!r} for {what}; one of {', '.join(modes)}")


def check_bad_sf(sf: int) -> int:
    """`sf` for the bad_sf fault: an int16 outside -10…10 that is not the not-implemented -32768."""
    if not -0x7FFF <= sf <= 0x7FFF or -10 <= sf <= 10:
        raise ValueError(f"sf {sf}: a bad scale factor is outside -10…10 and within ±32767")
    return sf


def splice(regs: list[int], address: int, start: int, words: Sequence[int]) -> None:
    """Put `words` (a point's registers, the first at `start`) over the part of `regs` (read from
    `address`) that they cover."""
    lo, hi = max(start, address), min(start + len(words), address + len(regs))
    if lo < hi:
        regs[lo - address : hi - address] = words[lo - start : hi - start]
