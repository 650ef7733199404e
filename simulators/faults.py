"""Faults of what a simulated device does, as opposed to how it answers on the wire.

The comms faults (`silent`, `exception`, `slow`, `reboot`) live with the transport
(`simulators.modbus_server`, `simulators.dnp3_stack`); the faults here leave the comms alone:

- stuck: the device answers every request and accepts every write (which reads back as written), but
  its output no longer follows: the physics keeps the controls in force when the fault was set, whatever
  is written after (a PV stays at the limit it had, a battery at its setpoint, a disconnect is not
  carried out). A real inverter does this when its firmware hangs in a mode, or another master holds it.

A device has one fault at a time: setting any mode replaces the one before, `none` clears both kinds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

BehaviourMode = Literal["none", "stuck"]


def check_mode(mode: str, modes: Sequence[str], what: str) -> None:
    """ValueError naming the modes `what` (a kind of device) has, if `mode` is not one of them."""
    if mode not in modes:
        raise ValueError(f"unknown fault mode {mode!r} for {what}; one of {', '.join(modes)}")
