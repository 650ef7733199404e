"""serde.KeptDict: the JSON form of the seen ids, made again only for what changed, and never changed
once given out (a snapshot is kept for a rollback and read on the store's thread)."""

from __future__ import annotations

import copy
import pickle
from dataclasses import dataclass
from typing import ClassVar

from gateway.core.serde import KeptDict, to_jsonable


@dataclass(frozen=True)
class Entry:
    json_once: ClassVar[bool] = True
    n: int


def test_the_form_is_the_same_object_until_a_key_changes_and_a_given_form_never_changes() -> None:
    d = KeptDict(a=Entry(1), b=Entry(2))
    first = to_jsonable(d)
    assert first == {"a": {"n": 1}, "b": {"n": 2}}
    assert to_jsonable(d) is first  # nothing changed: the very same object
    d["c"] = Entry(3)
    del d["a"]
    second = to_jsonable(d)
    assert second == {"b": {"n": 2}, "c": {"n": 3}}
    assert first == {"a": {"n": 1}, "b": {"n": 2}}  # the form given out before is as it was
    assert second["b"] is first["b"]  # the entry that did not change is not made again
    d.pop("b")
    d.setdefault("e", Entry(5))
    assert to_jsonable(d) == {"c": {"n": 3}, "e": {"n": 5}}
    d.update(f=Entry(6))
    d |= {"g": Entry(7)}
    assert to_jsonable(d) == {"c": {"n": 3}, "e": {"n": 5}, "f": {"n": 6}, "g": {"n": 7}}
    d.popitem()
    d.clear()
    assert to_jsonable(d) == {}


def test_a_copy_or_a_pickle_is_a_kept_dict_with_its_whole_form() -> None:
    d = KeptDict(a=Entry(1))
    to_jsonable(d)
    for other in (copy.copy(d), copy.deepcopy(d), pickle.loads(pickle.dumps(d))):
        assert type(other) is KeptDict and to_jsonable(other) == {"a": {"n": 1}}
        other["b"] = Entry(2)
        assert to_jsonable(other) == {"a": {"n": 1}, "b": {"n": 2}}
    assert to_jsonable(d) == {"a": {"n": 1}}
