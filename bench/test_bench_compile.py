"""Full compile and incremental update latency.

    pytest bench/test_bench_compile.py --benchmark-only

group ``compile``: ``Engine(world)`` (a fresh compiler, every policy) at 100 .. 100k rules.
group ``update-<N>k``: one World mutation + ``engine.refresh()`` (the tables the very next
classify uses), each kind paired with its inverse in the untimed setup so the world keeps
its size from round to round.
"""
from __future__ import annotations

import itertools

import pytest

from fastsg import Engine
from benchutil import bench_rules, size_id

COMPILE_RULES = bench_rules()
UPDATE_RULES = bench_rules((1000, 10_000, 100_000))
# fewer rounds where one compile takes seconds; the suite stays within ~2 minutes
ROUNDS = {100: 10, 1000: 5, 10_000: 3, 100_000: 2}
_serial = itertools.count()


@pytest.mark.parametrize("rules", COMPILE_RULES, ids=size_id)
def test_full_compile(benchmark, worlds, rules):
    world = worlds.world(rules)
    benchmark.group = "compile"
    engine = benchmark.pedantic(Engine, args=(world,), rounds=ROUNDS.get(rules, 3), iterations=1)
    compiled = engine.refresh()
    benchmark.extra_info.update(rules=compiled.rules, policies=compiled.policies,
                                table_bytes=compiled.nbytes)


def _busy_instance(world):
    limit = world.limits["groups_per_instance"]
    return next(i for i in world.instances.values() if i.running and 0 < len(i.groups) < limit)


def _pair(world, kind):
    """(do, undo) callables of a mutation kind and its inverse on a busy instance."""
    inst = _busy_instance(world)
    if kind in ("authorize", "revoke"):
        gid, added = inst.groups[0], []

        def add():
            rule = {"protocol": "tcp", "ports": 20000 + next(_serial) % 40000, "cidr": "198.51.100.9/32"}
            added.append(world.authorize(gid, "ingress", rule))

        def remove():
            world.revoke(gid, rule_id=added.pop().id)
        return (add, remove) if kind == "authorize" else (remove, add)
    if kind in ("attach", "detach"):
        gid = next(g.id for g in world.groups.values() if g.id not in inst.groups
                   and g.region == inst.region and g.owner == inst.owner)
        on, off = (lambda: world.attach(inst.id, gid)), (lambda: world.detach(inst.id, gid))
        return (on, off) if kind == "attach" else (off, on)
    launched = []

    def launch():
        k = next(_serial)
        launched.append(world.launch({"id": f"i-benchupd{k:08d}", "owner": inst.owner,
                                      "region": inst.region, "groups": list(inst.groups),
                                      "private_ip": f"100.66.{(k >> 8) & 255}.{k & 255}"}).id)

    def terminate():
        world.terminate(launched.pop())
    return (launch, terminate) if kind == "launch" else (terminate, launch)


@pytest.mark.parametrize("kind", ["authorize", "revoke", "attach", "detach", "launch", "terminate"])
@pytest.mark.parametrize("rules", UPDATE_RULES, ids=size_id)
def test_update_latency(benchmark, worlds, rules, kind):
    case = worlds.case(rules)
    world, engine = case.world, case.engine
    do, undo = _pair(world, kind)
    starts_undone = kind in ("revoke", "detach", "terminate")
    if starts_undone:
        undo()                  # e.g. revoke needs a rule to exist first
        engine.refresh()
    state = {"pending": False}

    def setup():
        # bring the world back (untimed) before each timed mutation
        if state["pending"]:
            undo()
            engine.refresh()
        state["pending"] = True

    def mutate_and_refresh():
        do()
        engine.refresh()

    benchmark.group = f"update-{size_id(rules)}"
    benchmark.pedantic(mutate_and_refresh, setup=setup, rounds=5, iterations=1)
    if state["pending"]:
        undo()
    if starts_undone:
        do()
    engine.refresh()
    benchmark.extra_info.update(rules=engine.refresh().rules, kind=kind)
