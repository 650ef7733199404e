"""Dataclass state ⇄ JSON-able dicts, so the engine's state can be persisted and restored.

Driven by the type hints, so a new field needs no serialiser code. A union of dataclasses is told apart
by its `type` field (every inbound message has one). Missing keys take the field's default, so a
snapshot written by an older version still restores. A field made with `transient()` is not persisted:
it belongs to the running process (a monotonic time, say), and a restored state has its default.
"""

from __future__ import annotations

import base64
import dataclasses
import types
import typing
from datetime import datetime
from typing import Any


def transient(**kwargs: Any) -> Any:
    """A dataclass field that is not persisted (`dataclasses.field` arguments: a default is required)."""
    return dataclasses.field(metadata={"transient": True}, **kwargs)


JSON_CACHE = "_jsonable"  # where an instance of a `json_once` class keeps its JSON-able form once made


class KeptDict(dict):
    """A dict of values never changed in place (frozen: a seen id, replaced when it changes) whose
    JSON-able form is kept, and made again only for the keys set or deleted since the last time it was
    asked for (`to_jsonable`). While nothing changed, the form is the very same object,
    so that the engine's snapshot and the store (StateStore.save_engine) skip all of it at once: the ids
    seen in the last 24 h, thousands on a busy day, cost a control cycle nothing while no instruction
    comes. A form once given out is never changed (a snapshot is kept, and read on the store's thread):
    a change makes a new one (`update` and `clear` make the whole form again)."""

    __slots__ = ("_changed", "_form", "_given")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._changed: set[Any] | None = None  # None: every key
        self._form: dict[str, Any] = {}  # the form as it stands, changed in place
        self._given: dict[str, Any] | None = None  # a copy of it, given out and never changed

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        self._touch(key)

    def __delitem__(self, key: Any) -> None:
        super().__delitem__(key)
        self._touch(key)

    def pop(self, key: Any, *default: Any) -> Any:
        out = super().pop(key, *default)
        self._touch(key)
        return out

    def setdefault(self, key: Any, default: Any = None) -> Any:
        out = super().setdefault(key, default)
        self._touch(key)
        return out

    def update(self, *args: Any, **kwargs: Any) -> None:
        super().update(*args, **kwargs)
        self._touch_all()

    def popitem(self) -> tuple[Any, Any]:
        out = super().popitem()
        self._touch(out[0])
        return out

    def clear(self) -> None:
        super().clear()
        self._touch_all()

    def __ior__(self, other: Any) -> KeptDict:
        self.update(other)
        return self

    def __reduce__(self) -> tuple[Any, ...]:  # a copy or a pickle starts with every key to make
        return (type(self), (dict(self),))

    def _touch(self, key: Any) -> None:
        if self._changed is not None:
            self._changed.add(key)
        self._given = None

    def _touch_all(self) -> None:
        self._changed, self._given = None, None

    def jsonable(self) -> dict[str, Any]:
        if self._given is None:
            if self._changed is None:
                self._form = {str(k): to_jsonable(v) for k, v in self.items()}
            else:
                for key in self._changed:
                    if key in self:
                        self._form[str(key)] = to_jsonable(self[key])
                    else:
                        self._form.pop(str(key), None)
            self._changed, self._given = set(), dict(self._form)
        return self._given


def to_jsonable(obj: Any) -> Any:
    """The JSON-able form of `obj`. Do not change what it returns: the form of an instance of a frozen
    dataclass that says `json_once: ClassVar[bool] = True` (none of its fields can change, all the way
    down: an inbound message, a seen id) is made once and kept on the instance, so that the engine's
    snapshot each cycle costs nothing for the thousands of them that stay as they were, and the store
    knows such a part unchanged by identity (StateStore.save_engine)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        once = getattr(obj, "json_once", False)
        if once and JSON_CACHE in obj.__dict__:
            return obj.__dict__[JSON_CACHE]
        out = {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)
               if not f.metadata.get("transient")}
        if once:
            obj.__dict__[JSON_CACHE] = out  # past the frozen __setattr__: not a field, compares as none
        return out
    if isinstance(obj, datetime):
        return obj.isoformat()
    if isinstance(obj, bytes):
        return base64.b64encode(obj).decode("ascii")
    if isinstance(obj, list | tuple):
        return [to_jsonable(x) for x in obj]
    if isinstance(obj, KeptDict):
        return obj.jsonable()
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    return obj


def from_jsonable(tp: Any, data: Any) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if data is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return from_jsonable(options[0], data)
        for option in options:
            if option.__dataclass_fields__["type"].default == data["type"]:
                return from_jsonable(option, data)
        raise ValueError(f"no {tp} has type {data['type']!r}")
    if origin is tuple:
        return tuple(from_jsonable(args[0], x) for x in data)
    if origin is list:
        return [from_jsonable(args[0], x) for x in data]
    if origin is dict:
        return {k: from_jsonable(args[1], v) for k, v in data.items()}
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        return tp(**{f.name: from_jsonable(hints[f.name], data[f.name])
                     for f in dataclasses.fields(tp) if f.init and f.name in data})
    if tp is datetime:
        return datetime.fromisoformat(data)
    if tp is bytes:
        return base64.b64decode(data)
    if tp is float:
        return float(data)
    return data  # str, int, bool, Literal
