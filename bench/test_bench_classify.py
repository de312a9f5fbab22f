"""Classification throughput, and the linear-scan baseline.

    pytest bench/test_bench_classify.py --benchmark-only

group ``classify-<N>-rules``: ``engine.classify`` of the same generated traffic (10% deny
world, flow locality) with 1 and 2 threads under each combining order; ``extra_info``
carries Mpps.  group ``miss-groups-<N>-rules``: one thread, the flow cache's misses
evaluated one packet at a time against in groups (``Engine.miss_groups``; the engine picks
groups from 4 MiB of tables, about 30k rules).  group ``linear-10k``: the iptables-model linear scan (every rule of every
policy) and the per-policy chain on a sample, next to fastsg on the same sample.
"""
from __future__ import annotations

import pytest

from fastsg import benchmark as B
from fastsg.compile.linear import build_linear
from benchutil import bench_rules, size_id

CLASSIFY_RULES = bench_rules((1000, 10_000, 100_000))
PACKETS = 200_000
ORDERS = ("allow,deny", "deny,allow", "priority")
LINEAR_RULES = 10_000
LINEAR_SAMPLE = 2_000


def _mpps(benchmark, packets):
    return packets / benchmark.stats.stats.median / 1e6


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("threads", [1, 2], ids=lambda t: f"{t}-thr")
@pytest.mark.parametrize("rules", CLASSIFY_RULES, ids=size_id)
def test_classify(benchmark, worlds, rules, threads, order):
    engine = worlds.case(rules, order).engine
    batch = worlds.traffic(rules, PACKETS)
    engine.classify(batch.take(slice(0, 1000)), threads=threads)        # warm this thread count
    benchmark.group = f"classify-{size_id(rules)}"
    result = benchmark.pedantic(engine.classify, args=(batch,), kwargs={"threads": threads},
                                rounds=5, iterations=1)
    benchmark.extra_info.update(rules=engine.refresh().rules, threads=threads, order=order,
                                packets=PACKETS, mpps=round(_mpps(benchmark, PACKETS), 3),
                                verdicts=result.counts())


@pytest.mark.parametrize("grouped", [False, True], ids=lambda g: "grouped" if g else "one-by-one")
@pytest.mark.parametrize("rules", bench_rules((10_000, 100_000)), ids=size_id)
def test_miss_groups(benchmark, worlds, rules, grouped):
    engine = worlds.case(rules).engine
    batch = worlds.traffic(rules, PACKETS)
    auto = engine.miss_groups
    engine.miss_groups = grouped
    try:
        engine.classify(batch.take(slice(0, 1000)), threads=1)
        benchmark.group = f"miss-groups-{size_id(rules)}"
        benchmark.pedantic(engine.classify, args=(batch,), kwargs={"threads": 1}, rounds=7,
                           iterations=1)
    finally:
        engine.miss_groups = auto
    benchmark.extra_info.update(rules=engine.refresh().rules, grouped=grouped, packets=PACKETS,
                                mpps=round(_mpps(benchmark, PACKETS), 3))


@pytest.fixture(scope="module")
def linear_10k(worlds):
    case = worlds.case(LINEAR_RULES)
    sample = worlds.traffic(LINEAR_RULES, PACKETS).take(slice(0, LINEAR_SAMPLE))
    return case, build_linear(case.engine._compiler), sample


@pytest.mark.parametrize("engine_name", ["fastsg", "linear-chain", "linear-scan"])
def test_linear_baseline_10k(benchmark, linear_10k, engine_name):
    case, linear, sample = linear_10k
    benchmark.group = "linear-10k-rules"
    if engine_name == "fastsg":
        fn, args, kwargs = case.engine.classify, (sample,), {"threads": 1}
    else:
        fn = B.linear_classify
        args, kwargs = (case.engine, linear, sample, engine_name == "linear-scan"), {}
    with B._Threads(1):
        out = fn(*args, **kwargs)           # warm, and checked below
        benchmark.pedantic(fn, args=args, kwargs=kwargs, rounds=3, iterations=1)
    if engine_name != "fastsg":
        assert B.same_as_fastsg(case.engine.classify(sample), *out)
    benchmark.extra_info.update(rules=case.engine.refresh().rules, packets=LINEAR_SAMPLE,
                                mpps=round(_mpps(benchmark, LINEAR_SAMPLE), 4))
