"""Shared fixtures of the pytest-benchmark suites (``pytest bench/ --benchmark-only``).

Worlds are generated the way ``fastsg bench`` generates them (``fastsg.benchmark``), once
per session, and every kernel is warmed up before the first timing so no benchmark pays
the JIT (or numba's on-disk cache load).  Sizes can be narrowed with the environment
variable ``FASTSG_BENCH_RULES`` (e.g. ``100,1k``) for a quick pass.
"""
from __future__ import annotations

import pytest

from fastsg import World
from fastsg import benchmark as B
from fastsg.config import max_threads


@pytest.fixture(scope="session", autouse=True)
def warm_kernels():
    """JIT / cache-load every timed kernel once, before any benchmark runs."""
    B.warm_up(max_threads())


class Worlds:
    """Session cache: generated world dicts, loaded ``Case``s (World + Engine) and traffic."""

    def __init__(self):
        self.dicts = {}
        self.cases = {}
        self.batches = {}

    def world_dict(self, rules: int, deny_share: float = 0.1) -> dict:
        from fastsg.generate import generate_world
        key = (rules, deny_share)
        if key not in self.dicts:
            self.dicts[key] = generate_world(**B.world_shape(rules), deny_share=deny_share, seed=0)
        return self.dicts[key]

    def case(self, rules: int, order: str = "allow,deny", deny_share: float = 0.1) -> B.Case:
        """The world compiled under ``order``; other orders reuse the allow,deny world as a
        copy (loading a 100k-rule world file takes seconds, copying it a fraction)."""
        key = (rules, order, deny_share)
        if key not in self.cases:
            if order == "allow,deny":
                self.cases[key] = B.build_case(rules, deny_share, order,
                                               world_dict=self.world_dict(rules, deny_share))
            else:
                base = self.case(rules, "allow,deny", deny_share).world
                self.cases[key] = B.build_case(rules, deny_share, order, world=base)
        return self.cases[key]

    def world(self, rules: int) -> World:
        return self.case(rules).world

    def traffic(self, rules: int, packets: int):
        """Traffic generated for the allow,deny world of that size (the rules are the same
        under every order, so one batch serves all three)."""
        key = (rules, packets)
        if key not in self.batches:
            self.batches[key] = B.traffic(self.world(rules), packets, seed=0)
        return self.batches[key]


@pytest.fixture(scope="session")
def worlds() -> Worlds:
    return Worlds()
