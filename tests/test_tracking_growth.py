"""Tracking tables that grow mid-batch: partitions rehashed into bigger space while the walk
goes on, the arena enlarged when its free space runs out, several shards at once.  The
results must still be exactly the naive reference's, whatever the threads and batch cuts."""
from __future__ import annotations

import numpy as np
import pytest

from fastsg import Engine, World
from fastsg.generate import generate_traffic, generate_world

try:
    from naive import NaiveState, naive_classify, packets_from_batch
except ImportError:                                     # tests/ imported as a package
    from tests.naive import NaiveState, naive_classify, packets_from_batch


def _tuples(result):
    return [result.row(i) for i in range(len(result))]


@pytest.fixture(scope="module")
def case():
    d = generate_world(300, 6, 12, deny_share=0.2, seed=11)
    d["conntrack"] = {"tcp_timeout": 30, "udp_timeout": 2, "udp_stream_timeout": 5,
                      "icmp_timeout": 1, "other_timeout": 3, "capacity": 400}
    world = World.from_dict(d)
    batch = generate_traffic(world, 6000, flows=2500, seed=12, calibrate=False,
                             rate_pps=2000.0)
    state = NaiveState(stateful=True)
    expected = [r.as_tuple() for r in naive_classify(world, packets_from_batch(batch), state)]
    return world, batch, expected


@pytest.mark.parametrize("threads", [1, 2])
def test_growing_tables_equal_reference(case, threads):
    world, batch, expected = case
    engine = Engine(world, threads=threads)
    got = _tuples(engine.classify(batch))
    assert got == expected
    stats = engine.tracking_stats()
    assert stats["partition_grows"] > 0            # the tables did grow during the batch
    reasons = {r for _, e, g in expected for r in (e, g)}
    assert {"conntrack", "conntrack-full"} <= reasons


@pytest.mark.parametrize("cuts", [(1,), (2999, 3000, 3001), tuple(range(500, 6000, 500))])
def test_growing_tables_over_split_calls(case, cuts):
    world, batch, expected = case
    engine = Engine(world, threads=2)
    got = []
    edges = [0, *cuts, len(batch)]
    for a, b in zip(edges, edges[1:]):
        got += _tuples(engine.classify(batch.take(slice(a, b))))
    assert got == expected


def test_reset_tracking_starts_a_new_stream(case):
    world, batch, expected = case
    engine = Engine(world, threads=1)
    first = _tuples(engine.classify(batch))
    engine.reset_tracking()
    assert engine.tracking_stats()["flows"] == 0
    assert _tuples(engine.classify(batch)) == first == expected


def test_tracking_memory_is_reported(case):
    world, batch, _ = case
    engine = Engine(world, threads=1)
    engine.classify(batch)
    stats = engine.tracking_stats()
    assert stats["flows"] > 0 and stats["table_bytes"] >= 32 * stats["flows"]
    assert stats["bytes_per_flow"] == stats["table_bytes"] / stats["flows"]
    assert stats["arena_bytes"] >= stats["table_bytes"]
    assert Engine(world, stateful=False).tracking_stats() == {}


def test_arena_running_out_mid_batch_resumes_exactly(case, monkeypatch):
    """Give every shard almost no free space: each growth stops the walk, the wrapper
    enlarges the arena and resumes; nothing is lost or judged twice."""
    import fastsg.tracking as tracking
    world, batch, expected = case
    real = tracking.Tracker._free_space
    calls = []

    def stingy(self, nshards, need):
        lo, hi = real(self, nshards, need)
        calls.append(need)
        return lo, np.minimum(hi, lo + max(need, 1))
    monkeypatch.setattr(tracking.Tracker, "_free_space", stingy)
    for threads in (1, 2):
        engine = Engine(world, threads=threads)
        assert _tuples(engine.classify(batch)) == expected
    assert len(calls) > 4                              # the walk did stop and resume


def test_shard_plan_one_walk_when_every_packet_links_one_component():
    """Packets between instances 0 and 1 (partitions 0 and 1) link them: one shard, walked
    in capture order (no plan); packets that stay within each instance give two shards."""
    from fastsg.tracking import Tracker
    own = np.array([0, 2, 0, 2, 0, 2], np.int32)            # inst * 2: 0, 1, 0, 1, ...
    order, start = Tracker.shard_plan(own, own, 2)
    assert start.tolist() == [0, 3, 6]
    assert sorted(order[:3].tolist() + order[3:].tolist()) == list(range(6))
    assert all(own[i] == own[order[0]] for i in order[:3])     # each shard: one instance
    assert list(order[:3]) == sorted(order[:3])                # capture order within
    linked = np.array([2, 0, 0, 2, 0, 2], np.int32)
    assert Tracker.shard_plan(own, linked, 2) is None
    assert Tracker.shard_plan(own, own, 1) is None
    assert Tracker.shard_plan(own[:0], own[:0], 2) is None



def _mapping_of(address: int) -> str | None:
    """The /proc/self/maps line of the mapping holding ``address`` (None off Linux)."""
    try:
        lines = open("/proc/self/maps").read().splitlines()
    except OSError:
        return None
    for line in lines:
        lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
        if lo <= address < hi:
            return line
    return None


def test_big_arena_is_zeroed_aligned_and_a_private_mapping():
    """A big arena must be a private anonymous mapping: a shared one (Python's mmap
    default) gets no transparent huge pages where shared memory has them off, and the
    steady-state walk over 1M flows measured 10% slower on it."""
    from fastsg.tracking import HUGE_ARENA_BYTES, SLOT_BYTES, SLOT_WORDS, _zeros_aligned

    rows = HUGE_ARENA_BYTES // SLOT_BYTES + 1
    arena = _zeros_aligned(rows)
    assert arena.shape == (rows, SLOT_WORDS) and arena.dtype == np.uint64
    assert arena.ctypes.data % 64 == 0 and not arena.any()
    arena[-1, -1] = 1                                   # writable
    line = _mapping_of(arena.ctypes.data)
    if line is None:
        pytest.skip("no /proc/self/maps here")
    assert line.split()[1].endswith("p"), line           # rw-p, not rw-s
    small = _zeros_aligned(3)
    assert small.ctypes.data % 64 == 0 and not small.any()


def test_rules_first_while_the_stream_opens_flows():
    """Without the walk's fast cache (big tables), the rules pass runs before the walk
    while the tables are empty or the last batch added many flows per packet; a batch of
    known flows is walked alone (a speed choice only: both ways give the reference's
    results, tested elsewhere)."""
    from fastsg.tracking import RULES_FIRST_NEW_FLOWS

    world = World.from_dict(generate_world(200, 5, 10, seed=3))
    batch = generate_traffic(world, 2000, flows=200, seed=4, calibrate=False)
    engine = Engine(world, threads=1)
    tracker = engine.tracker
    tracker.walk_caches = lambda: False             # as for tables too big for the cache
    assert tracker.rules_first(len(batch), 1) is True                  # empty tables
    first = engine.classify(batch)
    assert tracker.new_flow_share >= RULES_FIRST_NEW_FLOWS
    assert tracker.rules_first(len(batch), 1) is True                  # still opening flows
    again = engine.classify(batch)                                      # the same flows
    assert tracker.new_flow_share < RULES_FIRST_NEW_FLOWS
    assert tracker.rules_first(len(batch), 1) is False
    assert np.count_nonzero(again.egress_rule == 1) + np.count_nonzero(again.ingress_rule == 1) \
        > np.count_nonzero(first.egress_rule == 1) + np.count_nonzero(first.ingress_rule == 1)
    engine.reset_tracking()
    assert tracker.new_flow_share == 0.0 and tracker.rules_first(len(batch), 1) is True


def test_one_walk_with_the_fast_cache_evaluates_the_rules_itself():
    """With its fast cache, one walk (one thread, or one shard) evaluates the rules itself,
    however many flows the stream opens; several shards keep the pass first while the
    tables are empty."""
    world = World.from_dict(generate_world(200, 5, 10, seed=3))
    batch = generate_traffic(world, 2000, flows=200, seed=4, calibrate=False)
    engine = Engine(world, threads=1)
    tracker = engine.tracker
    assert tracker.walk_caches()
    assert tracker.rules_first(len(batch), 1) is False                 # empty tables
    assert tracker.rules_first(len(batch), 2, shards=1) is False
    assert tracker.rules_first(len(batch), 2, shards=2) is True
    engine.classify(batch)
    assert tracker.rules_first(len(batch), 1) is False                 # still opening flows
