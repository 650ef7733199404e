"""A simulated LDC SCADA master (dnp3py): what an LDC operator does to a DER site over DNP3, on the
AN2018-001 / IEEE 1815.2 points of the gateway's outstation (PROTOCOL §9, device_profiles/scada_dnp3.toml).

    async with ScadaMaster.for_site(site) as scada:
        await scada.set_limit(25.0)     # AO88 = 250 (25.0 % of the export cap), then BO17 ON
        await scada.trip()              # BO5 OFF: connect switch open
        p_kw = (await scada.poll()).analog_inputs[537] / 10

Commands are select-before-operate unless built with `select_before_operate=False`; one that the
gateway does not answer SUCCESS raises ScadaError.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from gateway.config import SiteFile
from simulators.dnp3_stack import Control, MasterClient

BO_STOP, BO_CONNECT, BO_LIMIT = 2, 5, 17
AO_LIMIT = 88  # 0.1 % of the site's export cap


class ScadaError(Exception):
    """The gateway refused a SCADA command (a status other than SUCCESS)."""


class ScadaMaster:
    def __init__(self, host: str, port: int, *, address: int = 1, outstation_address: int = 10,
                 select_before_operate: bool = True) -> None:
        self.client = MasterClient(host, port, address=address, outstation_address=outstation_address)
        self.sbo = select_before_operate
        self._open = False

    @classmethod
    def for_site(cls, site: SiteFile, **options: Any) -> ScadaMaster:
        s = site.scada
        return cls(s.host, s.port, address=s.master_address, outstation_address=s.outstation_address,
                   **options)

    async def open(self) -> None:
        """Connect, unless connected already."""
        if not self._open:
            await self.client.__aenter__()
            self._open = True

    async def close(self) -> None:
        if self._open:
            self._open = False
            await self.client.__aexit__(None, None, None)

    async def __aenter__(self) -> ScadaMaster:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def poll(self) -> Any:
        """An integrity poll; the values (binary_inputs, analog_inputs, ... by index, raw)."""
        await self.client.integrity_poll()
        return self.client.values

    async def _command(self, *controls: Control) -> None:
        await self.open()
        c = self.client
        statuses = await (c.select_and_operate(controls) if self.sbo else c.direct_operate(controls))
        if statuses != ["SUCCESS"] * len(controls):
            raise ScadaError(f"{controls}: {statuses}")

    async def set_limit(self, pct_of_export_cap: float) -> None:
        """Export limit at the PCC: AO88 (0.1 %), then BO17 ON."""
        await self._command(Control(AO_LIMIT, value=round(pct_of_export_cap * 10)))
        await self._command(Control(BO_LIMIT, on=True))

    async def clear_limit(self) -> None:
        await self._command(Control(BO_LIMIT, on=False))

    async def trip(self) -> None:
        """Open the site's connect switch (BO5 OFF): every device disconnects."""
        await self._command(Control(BO_CONNECT, on=False))

    async def close_switch(self) -> None:
        await self._command(Control(BO_CONNECT, on=True))

    async def stop(self) -> None:
        """Cease to energize (BO2 ON)."""
        await self._command(Control(BO_STOP, on=True))

    async def release_stop(self) -> None:
        await self._command(Control(BO_STOP, on=False))


Action = Callable[[], Awaitable[None]]


def scenario_actions(site: SiteFile, limit_pct: float = 25.0) -> tuple[ScadaMaster, dict[str, Action]]:
    """The SCADA actions a scenario can name (examples/demo_scenario.toml), on one master connection:
    opened by the first action, closed by the caller (`await master.close()`)."""
    scada = ScadaMaster.for_site(site)
    return scada, {
        "scada_set_limit": lambda: scada.set_limit(limit_pct),
        "scada_clear_limit": scada.clear_limit,
        "scada_trip": scada.trip,
        "scada_close_switch": scada.close_switch,
    }
