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
from dataclasses import dataclass
from typing import Any

PartPath = tuple[str, ...]
# The dicts that are split into a part per entry ("*": any key). Every other value is one part.
SPLIT: tuple[PartPath, ...] = ((), ("state",), ("state", "store"), ("state", "store", "records"),
                           ("state", "store", "records", "*"), ("state", "store", "seen"),
                           ("state", "store", "seen", "*"))
LEGACY_KEY = "engine"  # the whole snapshot as one row of `state`, as older versions wrote it


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


EMPTY_DIGEST = _digest("{}")


def _split_here(path: PartPath) -> bool:
    return any(len(p) == len(path) and all(a in ("*", b) for a, b in zip(p, path, strict=True))
               for p in SPLIT)


@dataclass(slots=True)
class _Part:
    """A part as last written (or as found on disk): what the next save compares with."""

    path: PartPath
    key: str  # its row's `path`: the JSON of `path`
    digest: bytes  # of its row's JSON
    value: Any = None  # the JSON-able value written; None when read from disk (then compared by digest)
    children: dict[str, _Part] | None = None  # a dict split into a part per entry


def _diff(path: PartPath, value: Any, last: _Part | None, changed: list[tuple[str, str]],
          gone: list[str]) -> _Part:
    """The part of `value` at `path`, against `last` (the part written there, None if none): the rows to
    write go to `changed` as (key, JSON), the keys of rows no longer in the snapshot to `gone`.

    A value that is the very object written last time is unchanged, and so is everything under it: a seen
    id's or a message's form made once, the seen ids' form while none changed (serde.to_jsonable,
    serde.KeptDict), so a cycle costs nothing for them."""
    if last is not None and last.value is value:
        return last
    key = last.key if last is not None else json.dumps(list(path))
    before = (last.children or {}) if last is not None else {}
    children = None
    if isinstance(value, dict) and _split_here(path):
        text, digest = "{}", EMPTY_DIGEST  # its own row: an empty dict (no records from a role) comes back
        children = {k: _diff((*path, k), v, before.get(k), changed, gone) for k, v in value.items()}
        gone.extend(k for name in before.keys() - children.keys() for k in _keys(before[name]))
    else:
        text = json.dumps(value, sort_keys=True)
        digest = _digest(text)
        gone.extend(k for child in before.values() for k in _keys(child))
    if last is None or last.digest != digest:
        changed.append((key, text))
    return _Part(path, key, digest, value, children)


def _keys(part: _Part) -> list[str]:
    """The rows of a part and of every part under it."""
    keys, todo = [], [part]
    while todo:
        p = todo.pop()
        keys.append(p.key)
        todo.extend((p.children or {}).values())
    return keys


def _on_disk(rows: list[tuple[str, str]]) -> _Part | None:
    """The parts as the rows on disk have them, compared by digest. A part whose parent has no row (none
    is written without one) gets one, written by the next save."""
    parts = {tuple(json.loads(key)): _Part(tuple(json.loads(key)), key, _digest(text)) for key, text in rows}
    for path in list(parts):
        while path:
            above = path[:-1]
            parent = parts.get(above)
            made = parent is None
            if parent is None:
                parent = parts[above] = _Part(above, json.dumps(list(above)), b"")
            if parent.children is None:
                parent.children = {}
            parent.children[path[-1]] = parts[path]
            if not made:
                break
            path = above
    return parts.get(())


def split(snapshot: dict[str, Any]) -> dict[PartPath, Any]:
    """The parts of a snapshot, by path, as they are written: a dict that is split leaves an empty dict at
    its own path, so that an empty one (no records from a role) comes back too."""
    parts: dict[PartPath, Any] = {}
    todo = [_diff((), snapshot, None, [], [])]
    while todo:
        part = todo.pop()
        parts[part.path] = {} if part.children is not None else part.value
        todo.extend((part.children or {}).values())
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




class StateStore:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self._saved: _Part | None = None  # the engine's parts as committed
        self._loaded = False  # `_saved` has been read from disk
        self._pending: _Part | None = None  # as the open transaction leaves them
        self._legacy_gone = False  # the one-row snapshot of older versions has been deleted

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
        if not self._loaded:
            self._saved = _on_disk(self.conn.execute("SELECT path, value FROM engine_parts").fetchall())
            self._loaded = True
        changed: list[tuple[str, str]] = []
        gone: list[str] = []
        self._pending = _diff((), snapshot, self._saved, changed, gone)
        if changed:
            self.conn.executemany("INSERT OR REPLACE INTO engine_parts (path, value) VALUES (?, ?)", changed)
        if gone:
            self.conn.executemany("DELETE FROM engine_parts WHERE path = ?", [(key,) for key in gone])
        if not self._legacy_gone:
            self.conn.execute("DELETE FROM state WHERE key = ?", (LEGACY_KEY,))
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
            self._saved, self._pending, self._legacy_gone = self._pending, None, True

    def rolled_back(self) -> None:
        self._pending = None
