"""``fastsg bench`` smoke tests at tiny sizes (the whole file runs in well under 30 s), and the
translations the peer comparisons rely on (BPF filter, ClassBench rules), checked against
the real tools when they are installed."""
from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from click.testing import CliRunner

from fastsg import Engine, Verdict, World
from fastsg import benchmark as B
from fastsg.cli.bench_cmd import bench

TINY = ["--quick", "--rules", "100,300", "--packets", "3000", "--repeats", "2"]
LOCAL = ("rules", "order", "updates", "capture", "logging", "state")


def _invoke(args):
    result = CliRunner().invoke(bench, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def test_bench_tiny_run_writes_json_and_plot(tmp_path):
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    result = _invoke(TINY + [f"--scenario={s}" for s in LOCAL] + ["--json", str(out), "--plot", str(png)])
    assert result.stdout == ""                       # human output is on stderr only
    assert "rules: fastsg vs rule count" in result.stderr
    assert "state: stateless vs stateful" in result.stderr
    assert "live flows at one instance" in result.stderr
    assert "logging: flow log cost" in result.stderr
    assert "pending" not in result.stderr
    data = json.loads(out.read_text())
    assert {"cpu_model", "cores", "python", "numpy", "numba"} <= set(data["machine"])
    status = {s["name"]: s["status"] for s in data["scenarios"]}
    assert status == {name: "ok" for name in LOCAL}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    _check_measurements(data["measurements"])


def _check_measurements(ms):
    """Every measurement carries the fields the JSON promises; medians sit in their spread."""
    for m in ms:
        assert {"scenario", "engine", "metric", "params", "median_s", "min_s", "max_s",
                "ratio_to_baseline", "threads", "rules", "status"} <= set(m)
        if m["scenario"] in ("logging", "state"):
            assert m["status"] == "ok"
        if m["status"] != "ok":
            continue
        assert m["min_s"] <= m["median_s"] <= m["max_s"]
        if m["packets"]:
            assert m["mpps_min"] <= m["mpps"] <= m["mpps_max"]
    fast = [m for m in ms if m["scenario"] == "rules" and m["engine"] == "fastsg"
            and m["metric"] == "classify" and m["threads"] == 1]
    assert [m["params"]["world"]["rules"] for m in fast] == [100, 300]
    for m in fast:
        assert m["repeats"] == 2
        assert {"linear-scan", "linear-chain"} <= set(m["ratio_to_baseline"])
        if B.load_python_reference() is not None:
            assert B.PYTHON_REFERENCE in m["ratio_to_baseline"]
    checked = [m for m in ms if "verified_same_verdicts" in m["extra"]]
    assert checked and all(m["extra"]["verified_same_verdicts"] for m in checked)
    kinds = {m["metric"] for m in ms if m["scenario"] == "updates"}
    assert kinds == {"full-compile", *B.UPDATE_KINDS}
    _check_state(ms)
    _check_logging(ms)


def _check_state(ms):
    """Stateless and stateful on the same packets per thread count, the cost ratio, 1 = 2
    threads verified; the live table: insert pass, steady state with every flow kept."""
    state = [m for m in ms if m["scenario"] == "state"]
    cls = [m for m in state if m["metric"] == "classify"]
    assert {(m["params"]["mode"], m["threads"]) for m in cls} >= {("stateless", 1), ("stateful", 1)}
    assert {m["params"]["world"]["rules"] for m in cls} == {300}     # the largest --rules size
    for m in (x for x in cls if x["params"]["mode"] == "stateful"):
        sl = next(x for x in cls if x["params"]["mode"] == "stateless" and x["threads"] == m["threads"])
        assert m["packets"] == sl["packets"] == 3000
        # timed round-robin: the median over rounds of that round's time ratio
        paired = 1 / np.median(np.array(sl["samples_s"]) / np.array(m["samples_s"]))
        assert m["extra"]["cost_ratio"] == pytest.approx(paired)
        assert m["ratio_to_baseline"]["stateless"] == pytest.approx(1 / m["extra"]["cost_ratio"])
        assert m["extra"]["verified_same_verdicts"] is True
        assert 1 in m["extra"]["verified_threads"]
        assert m["extra"]["meets_target"] is None                  # 300 rules: not judged
        assert m["extra"]["tracking"]["flows"] > 0
    cont = {m["params"]["mode"]: m for m in state if m["metric"] == "classify-continued"}
    assert set(cont) == {"stateless", "stateful"}
    sl, sf = cont["stateless"], cont["stateful"]
    assert sl["packets"] == sf["packets"] == 3000 and sf["threads"] == sl["threads"] == 1
    assert sf["params"]["stream"] == "continued"
    paired = 1 / np.median(np.array(sl["samples_s"]) / np.array(sf["samples_s"]))
    assert sf["extra"]["cost_ratio"] == pytest.approx(paired)
    # the first half's flows are held, and the second half brings new ones
    assert sf["extra"]["tracking"]["flows"] > sf["extra"]["new_flows"] > 0
    (ins,) = [m for m in state if m["metric"] == "live-insert"]
    flows = ins["params"]["flows"]
    assert ins["params"]["scaled_down"] and ins["extra"]["all_inserted"]
    assert ins["packets"] == flows and ins["extra"]["verdicts"]["ACCEPT"] == flows
    live = {m["params"]["mode"]: m for m in state if m["metric"] == "live-classify"}
    assert set(live) == {"stateful", "stateless"}
    sf = live["stateful"]
    assert sf["threads"] == 1 and sf["extra"]["accepted_by_conntrack"] == 1.0
    assert sf["extra"]["tracking"]["flows"] == sf["extra"]["tracking"]["live_flows"] == flows
    assert sf["extra"]["table_unchanged"] and 0 < sf["extra"]["bytes_per_flow"] < 1000
    assert sf["extra"]["meets_mpps_target"] is None                 # scaled down: not judged


def _check_logging(ms):
    """Off and on per drop share and mode, on the same packets; records produced only on."""
    log = [m for m in ms if m["scenario"] == "logging"]
    cells = {(m["params"]["drop_share"], m["params"]["mode"], m["params"]["flow_log"]): m for m in log}
    assert set(cells) == {(d, mode, f) for d in B.LOG_DROP_SHARES for mode in B.LOG_MODES
                          for f in ("off", "new-log", "kept-log")}
    for (drop, mode, flog), m in cells.items():
        assert m["threads"] == 1 and m["packets"] == 3000
        if flog == "off":
            continue
        off = cells[drop, mode, "off"]
        assert m["extra"]["verified_same_verdicts"] is True
        paired = 1 / np.median(np.array(off["samples_s"]) / np.array(m["samples_s"]))
        assert m["extra"]["cost_ratio"] == pytest.approx(paired)
        assert m["extra"]["records"] > 0 and m["extra"]["logged_events"] > 0
        judged = drop == B.LOG_TARGET_DROPS and flog == "kept-log"
        assert ("meets_target" in m["extra"]) == judged
    # drops are logged (the world default): 50% drops log far more events than 1%
    for mode in B.LOG_MODES:
        assert (cells[0.5, mode, "new-log"]["extra"]["logged_events"]
                > 5 * cells[0.01, mode, "new-log"]["extra"]["logged_events"])


def test_bench_json_to_stdout_is_machine_output():
    result = _invoke(TINY + ["--scenario", "logging", "--scenario", "state", "--json", "-"])
    data = json.loads(result.stdout)
    assert [s["status"] for s in data["scenarios"]] == ["ok", "ok"]
    assert {m["scenario"] for m in data["measurements"]} == {"logging", "state"}


def test_bench_is_registered_in_the_cli():
    from fastsg.cli.main import main
    assert "bench" in main.commands


def test_bench_rejects_bad_sizes():
    result = CliRunner().invoke(bench, ["--rules", "10,abc"])
    assert result.exit_code == 2 and "not a size" in result.output


def test_parse_sizes_and_plans():
    assert B.parse_sizes("100, 1k,10000,0.1M") == (100, 1000, 10_000, 100_000)
    full = B.make_plan(B.Settings())
    assert full.rule_sizes == (100, 1000, 10_000, 100_000)       # the 100k point is in the default
    assert full.update_sizes == (1000, 10_000, 100_000)
    assert full.scenarios == B.SCENARIOS
    assert full.state_rules == full.logging_rules == 10_000 and full.live_flows == 1_000_000
    quick = B.make_plan(B.Settings(quick=True))
    assert quick.rule_sizes == (100, 1000) and quick.update_sizes == (1000,)
    assert quick.state_rules == 1000 and quick.live_flows == 50_000
    with pytest.raises(ValueError):
        B.make_plan(B.Settings(scenarios=("nope",)))


def test_peers_skip_cleanly_without_the_tools(monkeypatch):
    monkeypatch.setattr(B.shutil, "which", lambda name: None)
    plan = B.make_plan(B.Settings(quick=True, scenarios=("peers",)))
    report = B.run(plan)
    (peers,) = report.scenarios
    assert peers.status == "ok"
    assert {m.engine: m.status for m in peers.measurements} == {"tcpdump": "skipped",
                                                               "dpdk-acl": "skipped"}


def test_classbench_rules_are_well_formed():
    world = World.from_dict(B.single_instance_world(40, seed=3, five_tuple_only=True))
    lines, x = B.classbench_rules(world)
    assert 0 < len(lines) <= 40
    pattern = re.compile(r"^@\d+\.\d+\.\d+\.\d+/\d+ \d+\.\d+\.\d+\.\d+/32 0 : 65535 \d+ : \d+ "
                         r"(0/0x00|\d+/0xff)$")
    assert all(pattern.match(line) for line in lines), lines[:3]
    trace = B.classbench_trace(B.acl_trace_batch(world, 500, seed=3))
    assert trace and all(len(t.split()) == 5 for t in trace)


def _peer_inputs(tmp_path, rules):
    world = World.from_dict(B.single_instance_world(rules, seed=5))
    batch = B._peer_traffic(world, 3000, seed=5)
    verdicts = Engine(world, stateful=False, flow_log=False).classify(batch).verdict
    return world, batch, verdicts


@pytest.mark.skipif(shutil.which("tcpdump") is None, reason="tcpdump not installed")
def test_bpf_filter_accepts_what_fastsg_accepts(tmp_path):
    from fastsg.capture import read_capture
    from fastsg.packet_build import write_capture
    world, batch, verdicts = _peer_inputs(tmp_path, 30)
    accepted = int((verdicts == Verdict.ACCEPT).sum())
    assert 0 < accepted < len(batch)                 # both outcomes occur
    pcap, out = tmp_path / "in.pcap", tmp_path / "out.pcap"
    write_capture(pcap, batch)
    subprocess.run(["tcpdump", "-r", str(pcap), "-w", str(out), B.bpf_filter(world)],
                   check=True, capture_output=True)
    assert len(read_capture(out)) == accepted


@pytest.mark.skipif(shutil.which("dpdk-test-acl") is None, reason="dpdk-test-acl not installed")
def test_dpdk_acl_picks_the_same_rule_per_packet(tmp_path):
    world = World.from_dict(B.single_instance_world(200, seed=7, five_tuple_only=True))
    rules, _ = B.classbench_rules(world)
    batch = B.acl_trace_batch(world, 3000, seed=7)
    (tmp_path / "r").write_text("\n".join(rules) + "\n")
    (tmp_path / "t").write_text("\n".join(B.classbench_trace(batch)) + "\n")
    cmd = [shutil.which("dpdk-test-acl"), "--no-pci", "--no-huge", "-l", "0", "-m", "512",
           "--", f"--rulesf={tmp_path / 'r'}", f"--tracef={tmp_path / 't'}",
           f"--rulenum={len(rules) + 1}", f"--tracenum={len(batch)}"]
    theirs = B._dpdk_results(cmd, len(batch))
    same, ours, matched = B._compare_acl(Engine(world, stateful=False, flow_log=False).classify(batch), world, theirs)
    assert same and ours == matched and 0 < matched < len(batch)
    assert np.all(theirs < len(rules))


def test_live_table_inputs_open_distinct_flows_that_stay_live():
    world = World.from_dict(B.live_table_world(2000, seed=1))
    insert, steady = B.live_flow_batches(world, 2000, 1500, seed=2)
    keys = set(zip(insert.src_lo.tolist(), insert.sport.tolist()))
    assert len(keys) == 2000 and len(steady) == 1500
    assert np.all(np.diff(insert.ts) > 0) and steady.ts.min() > insert.ts.max()
    engine = Engine(world, stateful=True, flow_log=False)
    assert (engine.classify(insert).verdict == Verdict.ACCEPT).all()
    assert engine.tracking_stats()["flows"] == 2000
    result = engine.classify(steady)
    ct = result.rule_names.index("conntrack")
    assert np.all((result.egress_rule == ct) | (result.ingress_rule == ct))
    assert engine.tracking_stats()["flows"] == 2000
    # the rules admit both directions too: the stateless baseline reaches the same verdicts
    stateless = Engine(world, stateful=False, flow_log=False).classify(steady)
    assert (stateless.verdict == Verdict.ACCEPT).all()
    assert not np.any((stateless.egress_rule == ct) | (stateless.ingress_rule == ct))


def test_fresh_stream_repeats_the_same_work():
    case = B.build_case(60, seed=4)
    batch, details = B.feature_traffic(case.world, 2000, 1, stateful=True, drop_share=0.3)
    assert details["flows"] > 0
    engine = Engine(case.world, stateful=True, flow_log=None)
    first = B.fresh_stream(engine, batch)
    records = len(engine.flow_log)
    again = B.fresh_stream(engine, batch, threads=2)
    assert B.same_results(first, again) and len(engine.flow_log) == records > 0
    # a kept log: the second call's events aggregate into the records of the first
    from fastsg.flowlog import FlowLog
    kept = FlowLog(case.world)
    B.fresh_stream(engine, batch, log=kept)
    events = kept.logged_events
    B.fresh_stream(engine, batch, log=kept)
    assert engine.flow_log is kept and len(kept) == records
    assert kept.logged_events == 2 * events > 0


def test_paired_speedup_cancels_a_slow_spell_shared_by_both():
    from fastsg.benchmark import Measurement, paired_speedup
    # every round, m takes half the time of base; round 2 is a slow spell for both
    base = Measurement("x", "a", "t", [2.0, 2.0, 8.0, 2.0, 2.0])
    m = Measurement("x", "b", "t", [1.0, 1.0, 4.0, 1.0, 1.0])
    assert paired_speedup(m, base) == 2.0
    # rounds that do not line up: median vs median
    assert paired_speedup(Measurement("x", "b", "t", [1.0, 1.0]), base) == base.median / 1.0


def test_time_interleaved_runs_setup_untimed_before_every_call(monkeypatch):
    """Round-robin samples; a key's setup runs before each of its calls and its time is
    left out."""
    clock = {"t": 0.0}
    monkeypatch.setattr(B.time, "perf_counter", lambda: clock["t"])
    log = []

    def step(name, seconds):
        def run():
            log.append(name)
            clock["t"] += seconds
        return run
    samples = B.time_interleaved({"a": step("a", 1.0), "b": step("b", 2.0)}, 3,
                                 setup={"b": step("prep", 10.0)})
    assert samples == {"a": [1.0] * 3, "b": [2.0] * 3}
    assert log == ["a", "prep", "b"] * 3
