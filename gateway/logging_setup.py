"""Logs of `der-gateway run`, on stdout: JSON lines for machines (journald, log shippers), text for people.

Under systemd the default is JSON: systemd sets INVOCATION_ID (and JOURNAL_STREAM when stdout goes to
the journal) for the services it starts, so the unit file needs no flag, and a person running the
gateway in a terminal gets text.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime

FORMATS = ("json", "text")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonLines(logging.Formatter):
    """One JSON object a line: ts (UTC, RFC 3339), level, logger, msg, and exc when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def default_format() -> str:
    return "json" if os.environ.get("INVOCATION_ID") or os.environ.get("JOURNAL_STREAM") else "text"


def configure(level: str, fmt: str | None = None) -> None:
    """Every log record of the process to stdout, in `fmt` (default: see `default_format`)."""
    handler = logging.StreamHandler(sys.stdout)
    json_lines = (fmt or default_format()) == "json"
    handler.setFormatter(JsonLines() if json_lines else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
