"""A serial line in software: two pseudo-terminals joined by Debian's `socat`, what one end writes the
other reads. The gateway opens one end as its RS-485 port, the simulator serves the devices of the line
on the other: the whole Modbus RTU stack (pyserial, framing, CRC, timing) runs as on a real line.

    async with PtyPair(tmp_path / "bus1") as line:
        line.gateway_end, line.device_end      # paths of the two ends (symlinks socat made)

socat is asked for raw ends without echo, and it keeps running when either end is closed and opened
again (the gateway reopens its port after a silent spell; a simulated reboot closes the other end).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from pathlib import Path


class PtyPair:
    """Two linked pseudo-terminals, at `<stem>.gw` (the gateway's end) and `<stem>.dev` (the devices')."""

    def __init__(self, stem: Path | str) -> None:
        stem = Path(stem)
        self.gateway_end = str(stem.with_name(stem.name + ".gw"))
        self.device_end = str(stem.with_name(stem.name + ".dev"))
        self._proc: asyncio.subprocess.Process | None = None

    async def start(self, timeout_s: float = 5.0) -> None:
        """Start socat; returns once both ends exist (RuntimeError if socat is missing or fails)."""
        socat = shutil.which("socat")
        if socat is None:
            raise RuntimeError("socat is not installed (apt-get install socat; scripts/setup.sh does it)")
        for end in (self.gateway_end, self.device_end):
            Path(end).unlink(missing_ok=True)  # a link left by a killed run would hide the new one
        ends = [f"pty,raw,echo=0,link={end}" for end in (self.gateway_end, self.device_end)]
        self._proc = await asyncio.create_subprocess_exec(
            socat, *ends, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        deadline = time.monotonic() + timeout_s
        while not (Path(self.gateway_end).exists() and Path(self.device_end).exists()):
            if self._proc.returncode is not None or time.monotonic() > deadline:
                err = b""
                if self._proc.stderr is not None and self._proc.returncode is not None:
                    err = await self._proc.stderr.read()
                await self.stop()
                raise RuntimeError(f"socat did not make the pty pair: {err.decode(errors='replace').strip()}")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        """Stop socat (by its pid) and wait for it; the ends disappear with it."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 5.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        for end in (self.gateway_end, self.device_end):
            Path(end).unlink(missing_ok=True)

    async def __aenter__(self) -> PtyPair:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
