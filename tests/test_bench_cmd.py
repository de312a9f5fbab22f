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
    assert "pending" in result.stderr
    data = json.loads(out.read_text())
    assert {"cpu_model", "cores", "python", "numpy", "numba"} <= set(data["machine"])
    status = {s["name"]: s["status"] for s in data["scenarios"]}
    assert status == {"rules": "ok", "order": "ok", "updates": "ok", "capture": "ok",
                      "logging": "pending", "state": "pending"}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    _check_measurements(data["measurements"])


def _check_measurements(ms):
    """Every measurement carries the fields the JSON promises; medians sit in their spread."""
    for m in ms:
        assert {"scenario", "engine", "metric", "params", "median_s", "min_s", "max_s",
                "ratio_to_baseline", "threads", "rules", "status"} <= set(m)
        if m["status"] == "pending":
            assert m["median_s"] is None and m["scenario"] in ("logging", "state")
            continue
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


def test_bench_json_to_stdout_is_machine_output():
    result = _invoke(["--quick", "--scenario", "logging", "--scenario", "state", "--json", "-"])
    data = json.loads(result.stdout)
    assert [s["status"] for s in data["scenarios"]] == ["pending", "pending"]


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
    quick = B.make_plan(B.Settings(quick=True))
    assert quick.rule_sizes == (100, 1000) and quick.update_sizes == (1000,)
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
    verdicts = Engine(world).classify(batch).verdict
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
    same, ours, matched = B._compare_acl(Engine(world).classify(batch), world, theirs)
    assert same and ours == matched and 0 < matched < len(batch)
    assert np.all(theirs < len(rules))
