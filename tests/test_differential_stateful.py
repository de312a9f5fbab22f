"""Differential tests for stateful tracking (section 4) and flow logs (section 7): the
engine must give EXACTLY the reference's verdict and deciding rules per packet, the same
flow records and lines, and the same rule counters, for random worlds and stateful traffic
(replies, ICMP errors quoting earlier flows, RSTs, fragments, expiry, out-of-order stamps,
tiny capacities): 1 and 2 threads, whole batches and the same packets split over several
``classify`` calls, and replays with timeline events.

Naive-only self-checks come first: they run without an engine.
"""
from __future__ import annotations

import dataclasses

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from fastsg import World

try:
    from naive import (ACCEPT, NaiveState, is_live, naive_aws_lines,
                       naive_classify, naive_flow_log, naive_jsonl_lines, naive_replay,
                       naive_rule_counters, owner_of, packets_from_batch)
    from strategies import (SETTINGS, assert_same, batch_from_packet_dicts, engine_class,
                            result_tuples, scaled, timeline_worlds, tracked_engine,
                            tracking_batches, tracking_world_dicts)
except ImportError:                                     # tests/ imported as a package
    from tests.naive import (ACCEPT, NaiveState, is_live,
                             naive_aws_lines, naive_classify, naive_flow_log,
                             naive_jsonl_lines, naive_replay, naive_rule_counters, owner_of,
                             packets_from_batch)
    from tests.strategies import (SETTINGS, assert_same, batch_from_packet_dicts, engine_class,
                                  result_tuples, scaled, timeline_worlds, tracked_engine,
                                  tracking_batches, tracking_world_dicts)

Engine = engine_class()
needs_engine = pytest.mark.skipif(Engine is None, reason="fastsg.Engine not available yet")

n = scaled          # max_examples scaled by FASTSG_TEST_SCALE
TRACK_REASONS = ("conntrack", "conntrack-related", "conntrack-full")


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------
def naive_run(world, batch, stateful=True):
    state = NaiveState(stateful=stateful)
    results = naive_classify(world, packets_from_batch(batch), state)
    return [r.as_tuple() for r in results], state


def assert_same_log(engine, world, state, what=""):
    """Flow records, lines, skipped packets and rule counters of the engine == reference.
    Counters: every current rule id and reason (zeros included), and a rule revoked after
    it decided events keeps its hits (nothing is lost; the counters add up to the events)."""
    records = naive_flow_log(world, state.events)
    log = engine.flow_log
    got = [dataclasses.asdict(r) for r in log.records()]
    if got != records:
        diff = next(i for i, (a, b) in enumerate(zip(got + [None] * len(records),
                                                     records + [None] * len(got))) if a != b)
        raise AssertionError(f"{what}: flow records differ first at {diff} "
                             f"({len(got)} vs {len(records)} records):\n"
                             f"  engine    {got[diff] if diff < len(got) else None}\n"
                             f"  reference {records[diff] if diff < len(records) else None}")
    assert log.lines("aws") == naive_aws_lines(records), f"{what}: aws lines"
    assert log.lines("jsonl") == naive_jsonl_lines(records), f"{what}: jsonl lines"
    assert len(log) == len(records)
    assert log.skipped_packets == sum(r["packets"] for r in records
                                      if r["log_status"] == "SKIPDATA"), f"{what}: skipped"
    assert engine.rule_counters() == naive_rule_counters(world, state.events), \
        f"{what}: rule counters"


def assert_instances(result, world, batch, what=""):
    """Result.src_instance/dst_instance name the running owner of each address (-1: none)."""
    ids = result.instance_ids
    for i, p in enumerate(packets_from_batch(batch)):
        want_s = want_d = None
        if p.status == "ip":
            s, d = owner_of(world, p.src), owner_of(world, p.dst)
            want_s, want_d = (s.id if s else None), (d.id if d else None)
        got_s = ids[result.src_instance[i]] if result.src_instance[i] >= 0 else None
        got_d = ids[result.dst_instance[i]] if result.dst_instance[i] >= 0 else None
        assert (got_s, got_d) == (want_s, want_d), f"{what}: packet {i} instances"


def cuts_of(data, size):
    """Sorted cut points 0 < ... < size splitting a batch into 1-5 pieces (some empty)."""
    inner = data.draw(st.lists(st.integers(0, size), max_size=4), label="cuts")
    return [0, *sorted(inner), size]


# ---------------------------------------------------------------------------------------
# the reference alone (runs without an engine)
# ---------------------------------------------------------------------------------------
@settings(max_examples=n(80), **SETTINGS)
@given(data=st.data())
def test_reference_tracking_invariants(data):
    """Tracking only ever changes a packet through a conntrack reason: a packet whose
    checks were all decided by rules/default has its stateless result; tables never hold
    more live flows than the capacity; split calls on one state == one call."""
    world = World.from_dict(data.draw(tracking_world_dicts(), label="world"))
    batch = data.draw(tracking_batches(world), label="batch")
    stateless, _ = naive_run(world, batch, stateful=False)
    packets = packets_from_batch(batch)
    state = NaiveState(stateful=True)
    stateful = []
    capacity = world.conntrack["capacity"]
    for i, p in enumerate(packets):
        stateful.append(naive_classify(world, [p], state)[0].as_tuple())
        for iid, table in state.tables.items():
            live = sum(1 for k, e in table.items() if is_live(e, k[0], state.now, world.conntrack))
            assert live <= capacity, f"packet {i}: {iid} holds {live} live flows"
    for a, b in zip(stateful, stateless):
        if a[1] not in TRACK_REASONS and a[2] not in TRACK_REASONS:
            assert a == b
        if "conntrack-full" in (a[1], a[2]):
            assert a[0] == "DROP"
    whole, _ = naive_run(world, batch)
    assert stateful == whole
    for v, e, g in whole:
        for rule in (e, g):
            if rule in TRACK_REASONS:
                event(rule)


@settings(max_examples=n(80), **SETTINGS)
@given(data=st.data())
def test_reference_flow_log_invariants(data):
    world = World.from_dict(data.draw(tracking_world_dicts(), label="world"))
    batch = data.draw(tracking_batches(world), label="batch")
    _, state = naive_run(world, batch)
    records = naive_flow_log(world, state.events)
    lg = world.logging
    logged = [e for e in state.events
              if (e.action != ACCEPT and lg["drops"]) or (e.action == ACCEPT and lg["accepts"])
              or e.rule_log]
    assert sum(r["packets"] for r in records) == len(logged)
    assert sum(r["bytes"] for r in records) == sum(e.wirelen for e in logged)
    assert sum(1 for r in records if r["log_status"] == "OK") <= lg["max_records"]
    windows = [r["window_start"] for r in records]
    assert windows == sorted(windows)
    for r in records:
        assert r["start"] <= r["end"]
        assert r["window_start"] <= r["start"] < r["window_start"] + lg["aggregation_interval"]
        if r["log_status"] == "OK":
            assert r["protocol"] in (6, 17) or (r["srcport"], r["dstport"]) == (0, 0)
    counters = naive_rule_counters(world, state.events)
    assert sum(p for p, _ in counters.values()) == len(state.events)
    assert len(naive_aws_lines(records)) == len(naive_jsonl_lines(records)) == len(records)
    if any(r["log_status"] == "SKIPDATA" for r in records):
        event("SKIPDATA")


@settings(max_examples=n(40), **SETTINGS)
@given(scenario=timeline_worlds())
def test_reference_replay_runs(scenario):
    d, packets = scenario
    world = World.from_dict(d)
    batch = batch_from_packet_dicts(packets)
    live = []
    res = naive_replay(world, packets_from_batch(batch), NaiveState(stateful=True), live=live)
    assert len(res) == len(batch)
    assert world.pending_events() == world.timeline          # the caller's world untouched
    event(f"timeline events: {min(len(d['timeline']), 3)}")


# ---------------------------------------------------------------------------------------
# engine == reference
# ---------------------------------------------------------------------------------------
@needs_engine
@settings(max_examples=n(100), **SETTINGS)
@given(data=st.data())
def test_stateful_engine_equals_reference(data):
    world = World.from_dict(data.draw(tracking_world_dicts(), label="world"))
    batch = data.draw(tracking_batches(world), label="batch")
    expected, state = naive_run(world, batch)
    for threads, rules_first in ((1, True), (1, False), (2, True), (2, False)):
        engine = tracked_engine(world, threads, rules_first)
        result = engine.classify(batch)
        what = f"threads={threads} rules_first={rules_first}"
        assert_same(result_tuples(result), expected, batch, what)
        assert_same_log(engine, world, state, what)
        if threads == 1:
            assert_instances(result, world, batch, what)
    for v, e, g in expected:
        for rule in (e, g):
            if rule in TRACK_REASONS:
                event(rule)


@needs_engine
@settings(max_examples=n(80), **SETTINGS)
@given(data=st.data())
def test_stateful_split_calls_equal_reference(data):
    """The same packets over several classify calls on one Engine: one stream."""
    world = World.from_dict(data.draw(tracking_world_dicts(), label="world"))
    batch = data.draw(tracking_batches(world, 1, 80), label="batch")
    expected, state = naive_run(world, batch)
    threads = data.draw(st.sampled_from((1, 2)), label="threads")
    flow_cache = data.draw(st.booleans(), label="flow_cache")
    rules_first = data.draw(st.sampled_from((None, True, False)), label="rules_first")
    engine = tracked_engine(world, threads, rules_first, flow_cache=flow_cache)
    engine.miss_groups = data.draw(st.sampled_from((None, True)), label="miss_groups")
    cuts = cuts_of(data, len(batch))
    got = []
    for a, b in zip(cuts, cuts[1:]):
        got += result_tuples(engine.classify(batch.take(slice(a, b))))
    what = f"threads={threads} cuts={cuts}"
    assert_same(got, expected, batch, what)
    assert_same_log(engine, world, state, what)
    event(f"pieces: {len(cuts) - 1}")


@needs_engine
@settings(max_examples=n(30), **SETTINGS)
@given(data=st.data())
def test_capacity_zero_equals_reference(data):
    """A table of capacity 0 (world files ask for >= 1; the semantics still hold)."""
    world = World.from_dict(data.draw(tracking_world_dicts(), label="world"))
    world.conntrack["capacity"] = 0
    batch = data.draw(tracking_batches(world), label="batch")
    expected, state = naive_run(world, batch)
    assert all(e != "conntrack" and g != "conntrack" for _, e, g in expected)
    for threads, rules_first in ((1, True), (1, False), (2, None)):
        engine = tracked_engine(world, threads, rules_first)
        assert_same(result_tuples(engine.classify(batch)), expected, batch, f"threads={threads}")
        assert_same_log(engine, world, state, f"threads={threads}")


@needs_engine
@settings(max_examples=n(40), **SETTINGS)
@given(data=st.data())
def test_stateless_engine_flow_log_equals_reference(data):
    world = World.from_dict(data.draw(tracking_world_dicts(), label="world"))
    batch = data.draw(tracking_batches(world), label="batch")
    expected, state = naive_run(world, batch, stateful=False)
    engine = Engine(world, stateful=False, threads=data.draw(st.sampled_from((1, 2))))
    assert_same(result_tuples(engine.classify(batch)), expected, batch, "stateless")
    assert_same_log(engine, world, state, "stateless")


# ---------------------------------------------------------------------------------------
# replay with timeline events
# ---------------------------------------------------------------------------------------
def engine_replay(world, batch, threads):
    """Drive one Engine the way replay does: each due timeline event is applied to the world
    (``world.apply_event``) before the first packet whose ts >= its time; the packets in
    between are classified in one call each."""
    engine = Engine(world, stateful=True, threads=threads)
    pending = world.pending_events()
    k = 0
    start = 0
    out = []
    ts = batch.ts.tolist()
    for i, t in enumerate(ts):
        if k < len(pending) and pending[k].at_ns <= t:
            out += result_tuples(engine.classify(batch.take(slice(start, i))))
            start = i
            while k < len(pending) and pending[k].at_ns <= t:
                world.apply_event(pending[k])
                k += 1
    out += result_tuples(engine.classify(batch.take(slice(start, len(ts)))))
    return engine, out


@needs_engine
@settings(max_examples=n(80), **SETTINGS)
@given(scenario=timeline_worlds(), threads=st.sampled_from((1, 2)))
def test_replay_with_timeline_equals_reference(scenario, threads):
    d, packets = scenario
    batch = batch_from_packet_dicts(packets)
    reference_world = World.from_dict(d)
    state = NaiveState(stateful=True)
    live = []
    expected = [r.as_tuple() for r in naive_replay(reference_world, packets_from_batch(batch),
                                                   state, live=live)]
    world = World.from_dict(d)
    engine, got = engine_replay(world, batch, threads)
    what = f"threads={threads}, timeline={[(e.at_ns, e.kind) for e in world.timeline]}"
    assert_same(got, expected, batch, what)
    assert_same_log(engine, live[0], state, what)
    kinds = {e.kind for e in world.timeline if e.index in world._applied}
    for kind in sorted(kinds):
        event(f"applied {kind}")
