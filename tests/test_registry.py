"""Append-only name registries: an index never changes meaning, whatever order and
repetition the names come in."""
from __future__ import annotations

from fastsg.registry import MappedRegistry, NameRegistry


def test_mapped_registry_fresh_grown_and_reordered_names():
    r = MappedRegistry()
    assert r.map(("a", "b", "c")).tolist() == [0, 1, 2]            # fresh, distinct
    assert r.map(("a", "b", "c", "d")).tolist() == [0, 1, 2, 3]    # grown
    assert r.map(("d", "e", "a")).tolist() == [3, 4, 0]            # another caller's order
    assert r.names == ["a", "b", "c", "d", "e"]
    assert r.get("b") == 1 and r.get("f") == 5


def test_mapped_registry_repeated_names_get_one_index():
    r = MappedRegistry()
    assert r.map(("x", "y", "x", "z", "y")).tolist() == [0, 1, 0, 2, 1]
    assert r.names == ["x", "y", "z"] and r.index == {"x": 0, "y": 1, "z": 2}
    assert r.map(()).tolist() == []


def test_mapped_registry_after_single_gets_and_same_tuple_cached():
    r = MappedRegistry(["q"])
    names = ("p", "q")
    first = r.map(names)
    assert first.tolist() == [1, 0]
    assert r.map(names) is first                                    # same tuple: no work
    assert NameRegistry(["a", "a", "b"]).names == ["a", "b"]
