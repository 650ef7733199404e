"""Logs on stdout: JSON lines under systemd (or with --log-format json), text for a person."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from gateway.logging_setup import configure, default_format


@pytest.fixture
def restore_logging() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield root
    root.handlers[:], root.level = handlers, level


def test_systemd_gets_json_and_a_terminal_gets_text(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INVOCATION_ID", raising=False)
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    assert default_format() == "text"
    monkeypatch.setenv("INVOCATION_ID", "5f0d3c0a9b8e4c2a")  # set by systemd for every service it starts
    assert default_format() == "json"


def test_a_json_line_carries_time_level_logger_message_and_traceback(
        restore_logging: logging.Logger, capsys: pytest.CaptureFixture[str]) -> None:
    configure("info", "json")
    log = logging.getLogger("gateway.test")
    log.debug("not at info")
    try:
        raise ValueError("bad register")
    except ValueError:
        log.exception("pv1: read failed: %s", "timeout")
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["level"] == "error" and entry["logger"] == "gateway.test"
    assert entry["msg"] == "pv1: read failed: timeout"
    assert entry["ts"].endswith("Z") and "ValueError: bad register" in entry["exc"]
