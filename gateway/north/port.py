"""The one shape of a north interface: what it may use of the gateway (`Port`), and what the gateway asks
of it (`NorthInterface`).

MQTT's LDC and IESO topics, the LDC's DNP3 SCADA and the LDC's IEEE 2030.5 server are adapters of this
shape: each turns protocol input into core instructions (`Port.submit`, the one path of every
instruction: authority, decision, journal, answers) and the core's outcomes (each cycle's decision,
the status) into protocol output. None imports `gateway.app.Gateway` or reads its internals, so an
interface is tested, replaced or added without touching the control loop.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from gateway.config import SiteFile
from gateway.core.engine import Cycle, StatusInfo
from gateway.core.model import DeviceReading, Inbound, Instruction, Invalid, MeterReading, Role
from gateway.core.outbound import Outbound, Telemetry
from gateway.journal import Encoded
from gateway.store.outbox import Outbox


class NotJournalled(Exception):
    """An instruction whose journal entry failed for a reason other than a full store (a bug): it is
    neither answered nor, over MQTT, acknowledged to the broker, which delivers it again (see MqttLink)."""


@dataclass(frozen=True)
class Devices:
    """The site's devices as the pollers see them, for an interface's counts and ratings."""

    online: int
    total: int


@dataclass(frozen=True)
class CycleView:
    """One control cycle as an interface sees it: the decision and the readings it was made on."""

    cycle: Cycle
    meter: MeterReading | None
    devices: list[DeviceReading]


class Port(Protocol):
    site: SiteFile

    async def submit(self, msg: Inbound | Invalid, source: str) -> list[Outbound]:
        """Decide an instruction, journal it, answer it, wake a cycle (see Gateway.submit)."""
        ...

    def heard(self, role: Role) -> None:
        """A valid exchange with the role's peer: its link is ok (PROTOCOL §6)."""
        ...

    def info(self) -> StatusInfo:
        """Mode, comms, the instructions in force and the core's alarms, now."""
        ...

    def live(self, role: Role) -> Mapping[str, Instruction]:
        """The role's instructions the core holds (in force or scheduled), by id."""
        ...

    def devices(self) -> Devices:
        ...

    def alarms(self, info: StatusInfo) -> tuple[str, ...]:
        """Everything an operator must see: the core's, the gateway's, every interface's."""
        ...

    def telemetry(self, seq: int, now: datetime) -> Telemetry | None:
        """The site as of the last cycle (None before the first)."""
        ...

    # an interface's own state across a restart (the 2030.5 Responses posted and still to post), by key
    def load_state(self, key: str) -> Any | None:
        """What `save_state` last wrote under `key`, in this run or an earlier one; None: nothing."""
        ...

    async def save_state(self, key: str, value: Any) -> bool:
        """`value` (JSON-able; the caller does not change it afterwards) on disk under `key`: True once it
        is there, False when the store could not take it (the store's own alarm says why)."""
        ...

    # the store's telemetry outbox (TDC-21): written before it is published, marked sent once acknowledged
    @property
    def outbox(self) -> Outbox:
        ...

    async def store_telemetry(self, seq: int, payload: bytes) -> bool:
        ...

    async def telemetry_sent(self, seq: int) -> bool:
        ...


class NorthInterface(Protocol):
    def services(self) -> dict[str, Callable[[], Coroutine[Any, Any, None]]]:
        """The interface's long-running tasks by name, each supervised by the gateway (restarted with
        backoff if it fails, counted in /metrics)."""
        ...

    def on_cycle(self, view: CycleView) -> None:
        """After every control cycle: the interface's points, reports, events."""
        ...

    def on_outbound(self, encoded: list[Encoded]) -> None:
        """Every batch of the core's answers (to an instruction, from a cycle), once journalled, in order."""
        ...

    def alarms(self) -> tuple[str, ...]:
        """What an operator must see in status and on the page (e.g. a server that refuses the site)."""
        ...
