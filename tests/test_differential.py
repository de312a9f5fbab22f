"""Differential tests: the engine must give EXACTLY the reference's verdict and both
deciding rules, for random worlds and packets (every order, 1 and 2 threads), for batches
spanning several blocks, and across random World-API mutations applied to a live Engine
(incremental updates).  Stateless mode: tracking (section 4) is not in the reference yet.
"""
from __future__ import annotations


import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from fastsg import World, WorldError
from fastsg.config import BLOCK_PACKETS

try:
    from naive import naive_classify, packets_from_batch
    from strategies import (ORDERS, SETTINGS, assert_same, dense_packet_batches,
                            dense_world_dicts, engine_class, mutations, packet_batches,
                            result_tuples, scaled, world_dicts)
except ImportError:                                     # tests/ imported as a package
    from tests.naive import naive_classify, packets_from_batch
    from tests.strategies import (ORDERS, SETTINGS, assert_same, dense_packet_batches,
                                  dense_world_dicts, engine_class, mutations, packet_batches,
                                  result_tuples, scaled, world_dicts)

Engine = engine_class()
needs_engine = pytest.mark.skipif(Engine is None, reason="fastsg.Engine not available yet")

n = scaled          # max_examples scaled by FASTSG_TEST_SCALE


def naive_tuples(world, batch):
    return [r.as_tuple() for r in naive_classify(world, packets_from_batch(batch))]


# ---------------------------------------------------------------------------------------
# the reference alone: sanity of the strategies (runs without an engine)
# ---------------------------------------------------------------------------------------
@settings(max_examples=n(60), **SETTINGS)
@given(data=st.data())
def test_generated_worlds_load_and_reference_runs(data):
    d = data.draw(world_dicts())
    world = World.from_dict(d)
    batch = data.draw(packet_batches(world))
    res = naive_tuples(world, batch)
    assert len(res) == len(batch)
    for verdict, _, _ in res:
        event(verdict)


# ---------------------------------------------------------------------------------------
# engine == reference
# ---------------------------------------------------------------------------------------
@needs_engine
@pytest.mark.parametrize("order", ORDERS)
@settings(max_examples=n(50), **SETTINGS)
@given(data=st.data())
def test_engine_equals_reference(order, data):
    world = World.from_dict(data.draw(world_dicts(order=order)))
    batch = data.draw(packet_batches(world, 0, 60))
    expected = naive_tuples(world, batch)
    for threads, grouped in ((1, None), (2, None), (1, True), (2, True)):
        engine = Engine(world, stateful=False, threads=threads)
        engine.miss_groups = grouped     # the big-table path, forced on these small worlds
        assert_same(result_tuples(engine.classify(batch)), expected, batch,
                    f"threads={threads} miss_groups={grouped}")


@needs_engine
@pytest.mark.parametrize("order", ORDERS)
@settings(max_examples=n(40), **SETTINGS)
@given(data=st.data())
def test_engine_equals_reference_dense(order, data):
    """Few wide overlapping rules, ties on priority, several groups per instance: the
    combining order decides most packets here."""
    world = World.from_dict(data.draw(dense_world_dicts(order=order)))
    batch = data.draw(dense_packet_batches(world, 1, 60))
    expected = naive_tuples(world, batch)
    for threads, grouped in ((1, None), (2, None), (1, True), (2, True)):
        engine = Engine(world, stateful=False, threads=threads)
        engine.miss_groups = grouped     # the big-table path, forced on these small worlds
        assert_same(result_tuples(engine.classify(batch)), expected, batch,
                    f"threads={threads} miss_groups={grouped}")


@needs_engine
@settings(max_examples=n(6), **SETTINGS)
@given(data=st.data())
def test_engine_equals_reference_across_blocks(data):
    """Batches longer than a block, split over threads: a stateless verdict depends on the
    packet alone, so the reference of the tiled batch is the tiled reference."""
    world = World.from_dict(data.draw(world_dicts()))
    base = data.draw(packet_batches(world, 1, 40))
    expected_base = naive_tuples(world, base)
    n = 2 * BLOCK_PACKETS + data.draw(st.integers(-3, 3))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    index = rng.integers(0, len(base), n)
    batch = base.take(index)
    expected = [expected_base[i] for i in index]
    for threads, grouped in ((1, None), (2, None), (1, True), (2, True)):
        engine = Engine(world, stateful=False, threads=threads)
        engine.miss_groups = grouped     # the big-table path, forced on these small worlds
        assert_same(result_tuples(engine.classify(batch)), expected, batch,
                    f"threads={threads} miss_groups={grouped}")


# ---------------------------------------------------------------------------------------
# incremental updates: mutations on the live world, the same Engine objects throughout
# ---------------------------------------------------------------------------------------
def snapshot(world):
    """Everything a refused mutation must leave unchanged."""
    groups = {gid: (tuple(r.id for r in g.ingress), tuple(r.id for r in g.egress))
              for gid, g in world.groups.items()}
    insts = {iid: (i.state, tuple(i.groups), i.private_ip, i.private_ipv6, i.public_ip, i.order)
             for iid, i in world.instances.items()}
    return groups, insts


def apply_mutation(world, name, kwargs):
    if name == "authorize":
        return world.authorize(kwargs["group"], kwargs["direction"], kwargs["rule"])
    if name == "revoke":
        return world.revoke(kwargs["group"], direction=kwargs["direction"],
                            rule_id=kwargs["rule_id"])
    if name == "attach":
        return world.attach(kwargs["instance"], kwargs["group"])
    if name == "detach":
        return world.detach(kwargs["instance"], kwargs["group"])
    if name == "launch":
        return world.launch(kwargs["instance_dict"])
    if name == "terminate":
        return world.terminate(kwargs["instance"])
    raise AssertionError(name)


def _mutation_run(data, engines_for):
    world = World.from_dict(data.draw(st.one_of(world_dicts(max_instances=5), dense_world_dicts()),
                                      label="world"))
    engines = engines_for(world)
    applied = 0
    for step in range(data.draw(st.integers(1, 10), label="steps")):
        if step:
            name, kwargs = data.draw(mutations(world), label="mutation")
            before = snapshot(world)
            try:
                apply_mutation(world, name, kwargs)
                applied += 1
                event(f"{name} applied")
            except WorldError:
                assert snapshot(world) == before, f"refused {name} changed the world"
                event(f"{name} refused")
        batch = data.draw(packet_batches(world, 1, 30), label="batch")
        expected = naive_tuples(world, batch)
        for label, engine in engines:
            assert_same(result_tuples(engine.classify(batch)), expected, batch,
                        f"step {step}, {label}")
    event(f"mutations applied: {min(applied, 5)}{'+' if applied >= 5 else ''}")


@needs_engine
@settings(max_examples=n(60), **SETTINGS)
@given(data=st.data())
def test_incremental_updates_equal_reference(data):
    _mutation_run(data, lambda w: [("threads=1", Engine(w, stateful=False, threads=1)),
                                   ("threads=2", Engine(w, stateful=False, threads=2))])


@settings(max_examples=n(30), **SETTINGS)
@given(data=st.data())
def test_mutation_sequences_reference_only(data):
    """The mutation strategy itself (and the reference on mutated worlds) without engine."""
    _mutation_run(data, lambda w: [])
