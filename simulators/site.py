"""The whole simulated site: every device of a site file on its Modbus port, physics stepped in real time.

    sim = SiteSimulator(load_site("examples/site.toml"))
    await sim.start()              # returns once every port (and the control socket) listens
    sim.devices["pv1"].p_kw        # each device: p_kw, q_kvar, soc_pct, connected, active_limit_pct,
    sim.devices["pv1"].set_fault("silent")   # fault, set_fault(mode, **opts), state()
    sim.set_irradiance(0.5); sim.set_load(100.0); sim.meter_p_kw
    await sim.stop()

The site's uncontrolled load is `load_kw + load_variation_kw · sin(2π t / load_period_s)`; the PCC
meter reads Σ DER output − load, positive = export to the grid. Devices that share a (host, port) are
served by one Modbus endpoint, each under its own unit id.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Iterator
from typing import Any

from gateway.config import DeviceConfig, SiteFile
from simulators.battery import Battery
from simulators.control import ControlServer
from simulators.device import SunSpecDevice
from simulators.dnp3_der import Dnp3PvInverter
from simulators.inverter import PvInverter
from simulators.meter import PccMeter
from simulators.modbus_server import ModbusEndpoint
from simulators.physics import STEP_S
from simulators.vendor import VendorDevice

LOAD_Q_RATIO = 0.2  # the site load's reactive power per kW (cos φ ≈ 0.98 lagging)
MAX_CATCH_UP_STEPS = 20  # after a stall, run at most this many steps at once, then drop the rest
STEP_CHUNK = 100  # devices stepped between two turns of the event loop


class SiteSimulator:
    def __init__(self, site: SiteFile) -> None:
        self.site = site
        sim = site.simulator
        self.irradiance_pu = sim.irradiance_pu
        self.load_base_kw = sim.load_kw
        self._t0 = time.monotonic()
        self.devices: dict[str, SunSpecDevice | Dnp3PvInverter | VendorDevice] = {}
        self.dnp3: list[Dnp3PvInverter] = []  # each on its own dnp3py outstation, not on a Modbus endpoint
        max_kw = sum(d.sim.rated_kw for d in site.controllable) + sim.load_kw + sim.load_variation_kw
        for cfg in site.devices:
            if cfg.protocol == "dnp3":
                self.dnp3.append(Dnp3PvInverter(cfg, self.irradiance_pu))
                self.devices[cfg.id] = self.dnp3[-1]
            elif cfg.protocol == "modbus":  # no SunSpec: laid out from its vendor profile
                self.devices[cfg.id] = VendorDevice(cfg, irradiance_pu=self.irradiance_pu, max_kw=max_kw)
            elif cfg.kind == "pv":
                self.devices[cfg.id] = PvInverter(cfg, self.irradiance_pu)
            elif cfg.kind == "battery":
                self.devices[cfg.id] = Battery(cfg)
        meter = self.devices.get(site.meter.id)
        self.meter: PccMeter | VendorDevice = meter if isinstance(meter, VendorDevice) else PccMeter(
            site.meter, max_kw)
        self.devices[site.meter.id] = self.meter
        self._endpoints: dict[tuple[str, ...], ModbusEndpoint] = {}
        for cfg in site.devices:
            dev = self.devices[cfg.id]
            if isinstance(dev, SunSpecDevice | VendorDevice):
                dev.attach(self._endpoint_for(cfg))
        self._control = ControlServer(self, sim.control_port) if sim.control_port else None
        self._task: asyncio.Task[None] | None = None
        self._step_meter(time.monotonic())

    def _endpoint_for(self, cfg: DeviceConfig) -> ModbusEndpoint:
        """The endpoint of the device's bus: a TCP port (Modbus TCP, or RTU frames as behind a
        TCP-to-RTU converter), or the simulator's end of a serial line (`sim.serial_port`)."""
        key = cfg.bus_key
        if key not in self._endpoints:
            serial = None
            if cfg.serial is not None:
                if cfg.sim.serial_port is None:
                    raise ValueError(f"{cfg.id}: sim.serial_port is needed to simulate an RTU device")
                serial = cfg.serial.model_copy(update={"port": cfg.sim.serial_port})
            self._endpoints[key] = ModbusEndpoint(
                cfg.host, cfg.port or 0, rtu=cfg.transport != "tcp", serial=serial
            )
        return self._endpoints[key]

    # --- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Serve every device and the control socket; returns once all of them listen."""
        try:
            for ep in self._endpoints.values():
                await ep.start()
            for dnp3 in self.dnp3:
                await dnp3.start()
            if self._control is not None:
                await self._control.start()
        except BaseException:
            await self.stop()
            raise
        self._task = asyncio.get_running_loop().create_task(self._run(), name="site-physics")

    async def stop(self) -> None:
        """Stop the physics, close every port and connection. Safe to call twice."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._control is not None:
            await self._control.stop()
        for ep in self._endpoints.values():
            await ep.stop()
        for dnp3 in self.dnp3:
            await dnp3.stop()

    async def __aenter__(self) -> SiteSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- site inputs --------------------------------------------------------------------------------

    def set_irradiance(self, pu: float) -> None:
        if not 0.0 <= pu <= 1.2:
            raise ValueError("irradiance must be within 0..1.2 pu")
        self.irradiance_pu = pu

    def set_load(self, kw: float) -> None:
        """The base of the site load (the configured variation keeps swinging around it)."""
        if kw < 0:
            raise ValueError("load must be ≥ 0 kW")
        self.load_base_kw = kw

    @property
    def load_kw(self) -> float:
        sim = self.site.simulator
        phase = 2.0 * math.pi * (time.monotonic() - self._t0) / sim.load_period_s
        return max(0.0, self.load_base_kw + sim.load_variation_kw * math.sin(phase))

    @property
    def meter_p_kw(self) -> float:
        """Net power at the PCC as the meter reads it (positive = export)."""
        return self.meter.p_kw

    @property
    def der_p_kw(self) -> float:
        return sum(d.p_kw for d in self.devices.values() if d is not self.meter)

    # --- physics ------------------------------------------------------------------------------------

    async def _run(self) -> None:
        next_step = time.monotonic()
        while True:
            now = time.monotonic()
            steps = 0
            while next_step <= now and steps < MAX_CATCH_UP_STEPS:
                # a thousand devices take tens of ms a step: let the Modbus requests in between chunks
                for _ in self._step_devices(now):
                    await asyncio.sleep(0)
                self._step_meter(now)
                next_step += STEP_S
                steps += 1
            if next_step <= now:  # a long stall: do not replay it
                next_step = now + STEP_S
            await asyncio.sleep(max(0.0, next_step - time.monotonic()))

    def step(self, now: float) -> None:
        """One physics step of `STEP_S` for every device, then the meter."""
        for _ in self._step_devices(now):
            pass
        self._step_meter(now)

    def _step_devices(self, now: float) -> Iterator[None]:
        """Step every device but the meter, pausing (yielding) after each STEP_CHUNK of them."""
        for i, dev in enumerate(self.devices.values(), 1):
            if isinstance(dev, PvInverter | Dnp3PvInverter | VendorDevice):
                dev.irradiance_pu = self.irradiance_pu
            if dev is not self.meter:
                dev.step(now)
            if i % STEP_CHUNK == 0:
                yield

    def _step_meter(self, now: float) -> None:
        load = self.load_kw
        ders = [d for d in self.devices.values() if d is not self.meter]
        p = sum(d.p_kw for d in ders) - load
        q = sum(d.q_kvar for d in ders) - LOAD_Q_RATIO * load
        self.meter.update(p, q)
        self.meter.step(now)

    def site_state(self) -> dict[str, Any]:
        """The site as a whole: what the control socket's `site` command shows."""
        return {
            "irradiance_pu": self.irradiance_pu,
            "load_kw": round(self.load_kw, 3),
            "der_p_kw": round(self.der_p_kw, 3),
            "meter_p_kw": round(self.meter_p_kw, 3),
        }

    def state(self) -> dict[str, Any]:
        """Everything the live table and the control socket's `state` command show."""
        return {**self.site_state(), "devices": {name: dev.state() for name, dev in self.devices.items()}}
