"""Supervision of the gateway's long-running tasks (the control loop, each device's writer, the MQTT link,
telemetry, status, the optional faces): a task that fails is logged, counted and restarted after a capped
backoff, and raised as an alarm in `status` while it keeps failing. Nothing one of them does ends the
process: before, the tasks were joined so that the first exception stopped the gateway, and systemd
restarted it into the same exception.

A task is a coroutine function that runs forever; one that returns is restarted too (it should not).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 30.0
HEALTHY_S = 60.0  # a task that ran this long before it failed starts its backoff afresh
ALARM_S = 600.0  # a failure is shown in `status` this long after it happened
STOP_S = 5.0  # a task still running this long after it was cancelled is cancelled again

TaskFactory = Callable[[], Coroutine[Any, Any, None]]


@dataclass
class Failure:
    count: int = 0
    last_error: str = ""
    at: float = 0.0  # time.monotonic() of the last failure


class Supervisor:
    def __init__(self) -> None:
        self.failures: dict[str, Failure] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}

    def spawn(self, name: str, factory: TaskFactory) -> asyncio.Task[None]:
        task = asyncio.create_task(self._keep(name, factory), name=name)
        self.tasks[name] = task
        return task

    async def _keep(self, name: str, factory: TaskFactory) -> None:
        delay = BACKOFF_START_S
        while True:
            started = time.monotonic()
            try:
                await factory()
                error = "it returned"
                log.error("task %s returned; it runs for as long as the gateway does: restarting", name)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # the point of a supervisor: whatever it was, the rest goes on
                error = f"{type(err).__name__}: {err}"
                log.exception("task %s failed; restarting in %.1f s", name, delay)
            task = asyncio.current_task()
            if task is not None and task.cancelling():  # stopped, and the task swallowed the cancellation
                raise asyncio.CancelledError
            now = time.monotonic()
            if now - started >= HEALTHY_S:
                delay = BACKOFF_START_S
            failure = self.failures.setdefault(name, Failure())
            failure.count, failure.last_error, failure.at = failure.count + 1, error[:200], now
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX_S)

    def alarms(self) -> tuple[str, ...]:
        now = time.monotonic()
        return tuple(f"task {name} failed {f.count} time{'s' if f.count > 1 else ''} and was restarted "
                     f"(last: {f.last_error})"
                     for name, f in sorted(self.failures.items()) if now - f.at < ALARM_S)

    async def stop(self) -> None:
        """Cancel every task and wait for them to end. One still running `STOP_S` later swallowed its
        cancellation (a bug, or a library's: cpython gh-86296): it is logged and cancelled again, so the
        gateway's stop always ends."""
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        while pending := (await asyncio.wait(tasks, timeout=STOP_S))[1]:
            log.error("task%s %s still running %.0f s after being stopped: cancelling again",
                      "s" if len(pending) > 1 else "", ", ".join(sorted(t.get_name() for t in pending)),
                      STOP_S)
            for task in pending:
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # all ended: collects their outcomes
