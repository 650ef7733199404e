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
