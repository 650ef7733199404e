"""State that survives a restart: the decision core's snapshot, written incrementally, and small
key-value entries (the last setpoints, the telemetry seq).

The engine's snapshot is split into parts, a row each: one per instruction record and per seen id
(`state.store.records.<role>.<id>`, `state.store.seen.<role>.<id>`), one per other field of the state and
of its store. A save writes only the parts whose JSON changed (compared by a 16-byte digest) and deletes
those that are gone; a restore reassembles them. Only the path down to `records` and `seen` is known
here, so a field the core adds is simply one more part; a snapshot of another shape is kept whole.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from typing import Any

PartPath = tuple[str, ...]
# The dicts that are split into a part per entry ("*": any key). Every other value is one part.
SPLIT: tuple[PartPath, ...] = ((), ("state",), ("state", "store"), ("state", "store", "records"),
                           ("state", "store", "records", "*"), ("state", "store", "seen"),
                           ("state", "store", "seen", "*"))
LEGACY_KEY = "engine"  # the whole snapshot as one row of `state`, as older versions wrote it


def _split_here(path: PartPath) -> bool:
    return any(len(p) == len(path) and all(a in ("*", b) for a, b in zip(p, path, strict=True))
               for p in SPLIT)


def split(snapshot: dict[str, Any]) -> dict[PartPath, Any]:
    """The parts of a snapshot, by path. A dict that is split leaves an empty dict at its own path, so
    that an empty one (no records from a role) comes back too."""
    parts: dict[PartPath, Any] = {}
    # An explicit stack, not a nested recursive function: one refers to itself through its closure, a
    # reference cycle that holds every part of the snapshot until the cycle collector runs (once a minute
    # in `der-gateway run`): a minute of snapshots, megabytes each, and the memory fragmented after.
    todo: list[tuple[PartPath, Any]] = [((), snapshot)]
    while todo:
        path, value = todo.pop()
        if isinstance(value, dict) and _split_here(path):
            parts[path] = {}
            todo.extend(((*path, key), child) for key, child in value.items())
        else:
            parts[path] = value
    return parts


def assemble(parts: dict[PartPath, Any]) -> dict[str, Any]:
    root: dict[str, Any] = {}
    for path in sorted(parts, key=len):
        if not path:
            continue
        node = root
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = parts[path]
    return root


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


class StateStore:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self._on_disk: dict[str, bytes] | None = None  # the engine parts as committed: path → digest
        self._pending: dict[str, bytes] | None = None  # as the open transaction leaves them
        self._legacy_gone = False  # the one-row snapshot of older versions has been deleted
        # Each part's value as last saved, with its key and digest: a value that is the very same object
        # this time (a seen id's, a message's: made once, serde.to_jsonable) is not encoded again, so a
        # cycle costs nothing for the thousands of parts that did not change.
        self._known: dict[PartPath, tuple[Any, str, bytes]] = {}

    # ---- key-value ----------------------------------------------------------------------------------
    def save(self, key: str, value: Any) -> None:
        self.conn.execute("INSERT OR REPLACE INTO state (key, value) VALUES (?, ?)",
                          (key, json.dumps(value, sort_keys=True, default=str)))

    def load(self, key: str) -> Any | None:
        row = self.conn.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    # ---- the engine's snapshot -------------------------------------------------------------------------
    def save_engine(self, snapshot: dict[str, Any]) -> int:
        """Write the parts that changed since the last save, delete those that are gone (call inside
        `Store.transaction`); returns the bytes of JSON written."""
        on_disk = self._committed()
        digests: dict[str, bytes] = {}
        changed: list[tuple[str, str]] = []
        known: dict[PartPath, tuple[Any, str, bytes]] = {}
        for path, value in split(snapshot).items():
            last = self._known.get(path)
            if last is not None and last[0] is value:  # the same unchangeable object (serde.to_jsonable)
                key, digest = last[1], last[2]
                text = None
            else:
                key, text = json.dumps(list(path)), json.dumps(value, sort_keys=True)
                digest = _digest(text)
            known[path] = (value, key, digest)
            digests[key] = digest
            if on_disk.get(key) != digest:
                changed.append((key, json.dumps(value, sort_keys=True) if text is None else text))
        self._known = known
        gone = [(path,) for path in on_disk if path not in digests]
        if changed:
            self.conn.executemany("INSERT OR REPLACE INTO engine_parts (path, value) VALUES (?, ?)", changed)
        if gone:
            self.conn.executemany("DELETE FROM engine_parts WHERE path = ?", gone)
        if not self._legacy_gone:
            self.conn.execute("DELETE FROM state WHERE key = ?", (LEGACY_KEY,))
        self._pending = digests
        return sum(len(text) for _, text in changed)

    def load_engine(self) -> dict[str, Any] | None:
        parts = {tuple(json.loads(path)): json.loads(value)
                 for path, value in self.conn.execute("SELECT path, value FROM engine_parts")}
        if parts:
            return assemble(parts)
        return self.load(LEGACY_KEY)

    def committed(self) -> None:
        """The transaction that saved was committed (see Store.transaction)."""
        if self._pending is not None:
            self._on_disk, self._pending, self._legacy_gone = self._pending, None, True

    def rolled_back(self) -> None:
        self._pending = None

    def _committed(self) -> dict[str, bytes]:
        if self._on_disk is None:
            self._on_disk = {path: _digest(value)
                             for path, value in self.conn.execute("SELECT path, value FROM engine_parts")}
        return self._on_disk
