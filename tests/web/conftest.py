from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from gateway.config import WebSection
from simulators.example_site import example_site
from simulators.mosquitto import Mosquitto, free_port
from tests.support.rig import Rig
from tests.web.browser import Browser, Page, chromium_binary


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest_asyncio.fixture
async def web_rig(mosquitto: Mosquitto) -> AsyncIterator[Rig]:
    """The example site with its gateway serving the status page on a free loopback port."""
    site = example_site()
    site.web = WebSection(enabled=True, port=free_port())
    rig = Rig(site, mosquitto.url)
    await rig.start()
    try:
        yield rig
    finally:
        await rig.stop()


@pytest.fixture(scope="session")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    binary = chromium_binary()
    if binary is None:
        pytest.skip("chromium is not installed and cannot be installed here (not root): "
                    "run `sudo apt-get install chromium` or `make setup` as root")
    b = Browser(binary, tmp_path_factory.mktemp("browser"))
    yield b
    b.close()


@pytest_asyncio.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    async with aiohttp.ClientSession() as session:
        p = await browser.page(session)
        try:
            yield p
        finally:
            await p.close(browser, session)
