"""Connection tracking and flow-log costs.

    pytest bench/test_bench_state.py --benchmark-only

group ``state``:

* ``test_tracking``: ``classify`` of the same generated (stateful) traffic at 10k rules on
  one thread, stateless vs stateful; each stateful round is a fresh stream
  (``reset_tracking``, so the table grows from empty, like a replay of the capture).
* ``test_live_table``: steady-state classify of packets of random flows of a table holding
  ``FASTSG_BENCH_FLOWS`` (default 1 M) live flows at one instance, one thread (target
  >= 8 Mpps, <= 64 B per flow); ``test_live_table_insert``: the pass inserting them.
* ``test_flow_log``: classify at a 1% drop rate with the flow log off vs on (the world's
  settings: drops logged), stateless, fresh engines; on with one log kept across rounds
  (steady state, the target: <= 10% slower) and with a new log each round.

Warm-up stays out of the timings: ``conftest.warm_kernels`` (stateless kernels) and
``warm_features`` below (tracking and flow-log kernels) run before any benchmark, and each
benchmark's inputs and engines are built, and run once, in untimed fixtures.
``extra_info`` carries Mpps and what the targets are judged on.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from fastsg import Engine, World
from fastsg import benchmark as B
from fastsg.config import max_threads
from benchutil import bench_rules, size_id

STATE_RULES = bench_rules((10_000,))
PACKETS = 200_000
LIVE_FLOWS = int(os.environ.get("FASTSG_BENCH_FLOWS", 1_000_000))
LIVE_PACKETS = 1_000_000
LOG_DROPS = 0.01


def _mpps(benchmark, packets):
    return packets / benchmark.stats.stats.median / 1e6


@pytest.fixture(scope="module", autouse=True)
def warm_features(warm_kernels):
    """JIT / cache-load the tracking and flow-log kernels before this module's timings."""
    B.warm_up_features(max_threads())


@pytest.fixture(scope="module")
def stateful_traffic(worlds):
    """{rules: (batch, generator details)}: stateful traffic (replies, 10% refused)."""
    return {r: B.feature_traffic(worlds.world(r), PACKETS, 0, stateful=True) for r in STATE_RULES}


@pytest.mark.parametrize("mode", ["stateless", "stateful"])
@pytest.mark.parametrize("rules", STATE_RULES, ids=size_id)
def test_tracking(benchmark, worlds, stateful_traffic, rules, mode):
    world = worlds.world(rules)
    batch, details = stateful_traffic[rules]
    engine = Engine(world, stateful=mode == "stateful", flow_log=False)
    B.fresh_stream(engine, batch.take(slice(0, 1000)), 1)        # warm these tables
    benchmark.group = "state"
    result = benchmark.pedantic(B.fresh_stream, args=(engine, batch, 1), rounds=5, iterations=1)
    counts = result.counts()
    benchmark.extra_info.update(rules=engine.refresh().rules, threads=1, mode=mode,
                                packets=PACKETS, mpps=round(_mpps(benchmark, PACKETS), 3),
                                verdicts=counts, refused_share=round(B.refused_share(counts), 4),
                                predicted_drop_share=details.get("predicted_drop_share"),
                                flows_tracked=engine.tracking_stats().get("flows", 0))


@pytest.fixture(scope="module")
def live_table():
    """(world, insert batch, steady batch, engine holding LIVE_FLOWS live flows)."""
    world = World.from_dict(B.live_table_world(LIVE_FLOWS, seed=1))
    insert, steady = B.live_flow_batches(world, LIVE_FLOWS, LIVE_PACKETS, seed=0)
    engine = Engine(world, stateful=True, flow_log=False)
    inserted = engine.classify(insert, threads=1)
    assert inserted.counts()["ACCEPT"] == LIVE_FLOWS
    engine.classify(steady, threads=1)                      # the first steady call, untimed
    return world, insert, steady, engine


def test_live_table(benchmark, live_table):
    _, _, steady, engine = live_table
    benchmark.group = "state"
    result = benchmark.pedantic(engine.classify, args=(steady,), kwargs={"threads": 1},
                                rounds=5, iterations=1)
    stats = engine.tracking_stats()
    assert stats["flows"] == stats["live_flows"] == LIVE_FLOWS
    ct = result.rule_names.index("conntrack")
    assert np.all((result.egress_rule == ct) | (result.ingress_rule == ct))
    mpps = _mpps(benchmark, LIVE_PACKETS)
    benchmark.extra_info.update(flows=LIVE_FLOWS, packets=LIVE_PACKETS, threads=1,
                                mpps=round(mpps, 3), mpps_target=B.LIVE_MPPS_TARGET,
                                bytes_per_flow=round(stats["bytes_per_flow"], 1),
                                bytes_per_flow_target=B.BYTES_PER_FLOW_TARGET,
                                arena_bytes_per_flow=round(stats["arena_bytes"] / LIVE_FLOWS, 1),
                                tracking=stats)


def test_live_table_insert(benchmark, live_table):
    world, insert, _, _ = live_table
    engine = Engine(world, stateful=True, flow_log=False)  # its own table: the live one stays
    B.fresh_stream(engine, insert.take(slice(0, 1000)), 1)
    benchmark.group = "state"
    benchmark.pedantic(B.fresh_stream, args=(engine, insert, 1), rounds=3, iterations=1)
    stats = engine.tracking_stats()
    assert stats["flows"] == LIVE_FLOWS
    benchmark.extra_info.update(flows=LIVE_FLOWS, packets=LIVE_FLOWS, threads=1,
                                mpps=round(_mpps(benchmark, LIVE_FLOWS), 3),
                                bytes_per_flow=round(stats["bytes_per_flow"], 1),
                                partition_grows=stats["partition_grows"])


@pytest.fixture(scope="module")
def log_traffic(worlds):
    """{rules: (batch, details)}: stateless traffic with ~1% of the packets refused."""
    return {r: B.feature_traffic(worlds.world(r), PACKETS, 0, stateful=False,
                                 drop_share=LOG_DROPS) for r in STATE_RULES}


@pytest.mark.parametrize("flow_log", ["off", "on-kept-log", "on-new-log"])
@pytest.mark.parametrize("rules", STATE_RULES, ids=size_id)
def test_flow_log(benchmark, worlds, log_traffic, rules, flow_log):
    """on-kept-log: one log across rounds (a long stream's steady state: events aggregate
    into records it holds; the target is judged on it); on-new-log: a new log per round
    (every record created, plus the log's per-stream setup)."""
    from fastsg.flowlog import FlowLog
    world = worlds.world(rules)
    batch, details = log_traffic[rules]
    engine = Engine(world, stateful=False, flow_log=False if flow_log == "off" else None)
    kept = FlowLog(world) if flow_log == "on-kept-log" else None
    B.fresh_stream(engine, batch.take(slice(0, 1000)), 1)        # warm these tables
    B.fresh_stream(engine, batch, 1, log=kept)                   # the kept log's records
    benchmark.group = "state"
    result = benchmark.pedantic(B.fresh_stream, args=(engine, batch, 1), kwargs={"log": kept},
                                rounds=5, iterations=1)
    counts = result.counts()
    log = engine.flow_log
    benchmark.extra_info.update(rules=engine.refresh().rules, threads=1, flow_log=flow_log,
                                drop_share=LOG_DROPS, packets=PACKETS,
                                refused_share=round(B.refused_share(counts), 4),
                                mpps=round(_mpps(benchmark, PACKETS), 3),
                                records=len(log) if log is not None else 0,
                                logged_events=log.logged_events if log is not None else 0)
