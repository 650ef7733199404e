"""Small helpers of the web tests."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tests.support.rig import Rig

T = TypeVar("T")


def base_url(rig: Rig) -> str:
    return f"http://127.0.0.1:{rig.site.web.port}"


async def until(probe: Callable[[], Awaitable[T]], pred: Callable[[T], bool], what: str,
                timeout: float = 20.0) -> T:
    """`await probe()` until `pred` holds for its value; TimeoutError with the last value otherwise."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await probe()
        if pred(value):
            return value
        if loop.time() > deadline:
            raise TimeoutError(f"{what}: still {value!r} after {timeout} s")
        await asyncio.sleep(0.25)
