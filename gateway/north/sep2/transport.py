"""HTTP to the 2030.5 server: one aiohttp session over mutual TLS, 2030.5 resources in and out.

Every body is parsed and emitted by `codec` (the namespace guard included). A 429 is `Throttled` with
the server's Retry-After; a 5xx, a refused connection or a timeout is `Unreachable`; any other status is
`Refused`: the caller backs off and keeps following the schedule it has.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar
from urllib.parse import urljoin, urlsplit

import aiohttp

from gateway.north.sep2 import codec

log = logging.getLogger(__name__)
M = TypeVar("M")
CONTENT_TYPE = "application/sep+xml"
PAGE = 50  # list items asked for per request (the `l` query parameter)


class ServerError(Exception):
    """An exchange with the 2030.5 server that did not succeed."""


class Throttled(ServerError):
    def __init__(self, href: str, retry_after_s: float | None) -> None:
        super().__init__(f"{href}: 429 Too Many Requests (Retry-After: {retry_after_s})")
        self.retry_after_s = retry_after_s


class Unreachable(ServerError):
    """5xx, a refused connection, a TLS failure or a timeout."""


class Refused(ServerError):
    def __init__(self, method: str, href: str, status: int, body: str) -> None:
        super().__init__(f"{method} {href}: HTTP {status} {body[:200]}")
        self.status = status


def retry_after(value: str | None) -> float | None:
    """Retry-After in seconds: delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None


class Server:
    def __init__(self, url: str, ssl_context: ssl.SSLContext, timeout_s: float,
                 on_exchange: Callable[[], None]) -> None:
        parts = urlsplit(url)
        self.base = f"{parts.scheme}://{parts.netloc}"
        self.dcap_href = parts.path or "/dcap"
        self._ssl = ssl_context
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._on_exchange = on_exchange  # every answer from the server: the LDC link is alive
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Server:
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self._ssl, limit=1),
                                              timeout=self._timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def _request(self, method: str, href: str, body: bytes | None = None,
                       params: dict[str, int] | None = None) -> tuple[int, bytes, str | None]:
        assert self._session is not None
        headers = {"Accept": CONTENT_TYPE}
        if body is not None:
            headers["Content-Type"] = CONTENT_TYPE
        try:
            async with self._session.request(method, urljoin(self.base, href), data=body, params=params,
                                             headers=headers) as resp:
                data = await resp.read()
                status, location, after = resp.status, resp.headers.get("Location"), \
                    resp.headers.get("Retry-After")
        except (aiohttp.ClientError, TimeoutError, ssl.SSLError, OSError) as err:
            raise Unreachable(f"{method} {href}: {type(err).__name__}: {err}") from err
        self._on_exchange()
        if status == 429:
            raise Throttled(href, retry_after(after))
        if status >= 500:
            raise Unreachable(f"{method} {href}: HTTP {status}")
        if status >= 300:
            raise Refused(method, href, status, data.decode("utf-8", "replace"))
        return status, data, location

    async def get(self, model: type[M], href: str, params: dict[str, int] | None = None) -> M:
        _, data, _ = await self._request("GET", href, params=params)
        return codec.parse(model, data)

    async def get_list(self, model: type[M], href: str,
                       items: Callable[[M], list[Any] | None]) -> tuple[M, list]:
        """A paged list, whole: the first page (with the list's pollRate) and every item of every page."""
        first = page = await self.get(model, href, params={"s": 0, "l": PAGE})
        got: list = list(items(page) or [])
        while got and len(got) < page.all_:  # type: ignore[attr-defined]
            page = await self.get(model, href, params={"s": len(got), "l": PAGE})
            more = items(page) or []
            if not more:
                break
            got.extend(more)
        return first, got

    async def put(self, href: str, obj: object) -> None:
        await self._request("PUT", href, codec.emit(obj))

    async def post(self, href: str, obj: object) -> str | None:
        """POST; the Location of what it created, if the server says."""
        _, _, location = await self._request("POST", href, codec.emit(obj))
        return location
