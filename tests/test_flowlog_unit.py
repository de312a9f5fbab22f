"""``fastsg.flowlog`` on hand-made ``Result`` objects (no engine): the events, what is logged,
record keys, windows, max_records / SKIPDATA, output order, the aws and jsonl lines, the
rule counters; and the whole of it against a plain Python reading of the contract on random
results."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from fastsg import PacketBatch, Result, World
from fastsg.flowlog import FlowLog, FlowRecord, RuleCounters

A, D, R, U, M = 0, 1, 2, 3, 4          # fastsg.Verdict values
REASONS = ("default", "conntrack", "conntrack-related", "conntrack-full")
RULES = ("r-web", "r-ssh", "r-log", "r-deny", "sg-a:eg:0", "sg-a:eg:1")
NAMES = REASONS + RULES
IDX = {n: i for i, n in enumerate(NAMES)}
S = 10**9
T0 = 1_700_000_040 * S                  # a multiple of 60 s: window boundaries fall on it


def make_world(**logging) -> World:
    return World.from_dict({
        "version": 1, "logging": logging,
        "security_groups": [{"id": "sg-a", "name": "a", "ingress": [
            {"id": "r-web", "protocol": "tcp", "ports": 80, "cidr": "0.0.0.0/0"},
            {"id": "r-ssh", "protocol": "tcp", "ports": 22, "cidr": "0.0.0.0/0"},
            {"id": "r-log", "protocol": "tcp", "ports": 443, "cidr": "0.0.0.0/0", "log": True},
            {"id": "r-deny", "protocol": "udp", "cidr": "0.0.0.0/0", "action": "deny"}]}],
        "instances": [
            {"id": "i-1", "private_ip": "10.0.0.1", "private_ipv6": "2001:db8::1",
             "groups": ["sg-a"], "owner": "111122223333"},
            {"id": "i-2", "private_ip": "10.0.0.2", "groups": ["sg-a"], "owner": "444455556666"},
            {"id": "i-3", "private_ip": "10.0.0.3", "groups": ["sg-a"]}]})


INSTANCES = ("i-1", "i-2", "i-3")
ADDR = {"10.0.0.1": 0, "2001:db8::1": 0, "10.0.0.2": 1, "10.0.0.3": 2}


def pkt(src, dst, verdict, egress=None, ingress=None, *, proto=6, sport=40000, dport=80,
        t=0.0, wirelen=100):
    """One packet row: addresses, verdict and rule names (None: no check); ``t`` seconds
    after T0."""
    return dict(src=src, dst=dst, verdict=verdict, egress=egress, ingress=ingress, proto=proto,
                sport=sport, dport=dport, ts=T0 + int(round(t * S)), wirelen=wirelen)


def batch_result(rows, names=NAMES, instance_ids=INSTANCES, inst_index=None):
    """(PacketBatch, Result) for ``rows`` of ``pkt``: instances from the addresses."""
    inst_index = inst_index or {a: instance_ids.index(INSTANCES[i]) for a, i in ADDR.items()}
    index = {n: i for i, n in enumerate(names)}
    batch = PacketBatch.from_arrays(
        [r["src"] for r in rows], [r["dst"] for r in rows], [r["proto"] for r in rows],
        sport=[r["sport"] for r in rows], dport=[r["dport"] for r in rows],
        ts=np.array([r["ts"] for r in rows], np.int64), wirelen=[r["wirelen"] for r in rows])
    res = Result(
        np.array([r["verdict"] for r in rows], np.uint8),
        np.array([index[r["egress"]] if r["egress"] else -1 for r in rows], np.int32),
        np.array([index[r["ingress"]] if r["ingress"] else -1 for r in rows], np.int32),
        names, 0,
        np.array([inst_index.get(r["src"], -1) for r in rows], np.int32),
        np.array([inst_index.get(r["dst"], -1) for r in rows], np.int32),
        instance_ids)
    return batch, res


def log_of(world, *row_batches) -> FlowLog:
    log = FlowLog(world)
    for rows in row_batches:
        log.add(*batch_result(rows))
    log.check()
    return log


OUT = "198.51.100.7"        # an address no instance owns


# ---------------------------------------------------------------------------------------
# events and what is logged
# ---------------------------------------------------------------------------------------
def test_drops_only_logs_the_refusing_check():
    w = make_world()
    log = log_of(w, [
        pkt("10.0.0.1", "10.0.0.2", A, "sg-a:eg:0", "r-web"),          # accepted: nothing
        pkt("10.0.0.1", "10.0.0.2", D, "sg-a:eg:0", "default", dport=81, t=1),
        pkt(OUT, "10.0.0.2", R, None, "r-deny", proto=17, dport=53, t=2),
        pkt("10.0.0.3", OUT, D, "default", None, t=3)])
    assert log.lines("aws") == [
        "2 444455556666 i-2 10.0.0.1 10.0.0.2 40000 81 6 1 100 1700000041 1700000041 REJECT OK",
        "2 444455556666 i-2 198.51.100.7 10.0.0.2 40000 53 17 1 100 1700000042 1700000042 REJECT OK",
        "2 000000000000 i-3 10.0.0.3 198.51.100.7 40000 80 6 1 100 1700000043 1700000043 REJECT OK"]
    recs = log.records()
    assert [(r.direction, r.action, r.rule) for r in recs] == [
        ("ingress", "DROP", "default"), ("ingress", "REJECT", "r-deny"), ("egress", "DROP", "default")]
    assert log.logged_events == 3 and log.skipped_packets == 0 and len(log) == 3


@pytest.mark.parametrize("n", [1, 7, 8, 9, 15, 16, 17, 24])
def test_drop_scan_finds_every_refused_packet_around_8_packet_words(n):
    # with no rule logging, refused packets are found 8 verdicts at a time: refused ones
    # first, last and on both sides of every word boundary, each logged once, in order
    w = World.from_dict({
        "version": 1,
        "security_groups": [{"id": "sg-a", "name": "a", "ingress": [
            {"id": "r-web", "protocol": "tcp", "ports": 80, "cidr": "0.0.0.0/0"}]}],
        "instances": [{"id": "i-2", "private_ip": "10.0.0.2", "groups": ["sg-a"]}]})
    refused = sorted({0, 7, 8, 15, 16, n - 1} & set(range(n)))
    rows = [pkt(OUT, "10.0.0.2", D, None, "default", dport=1000 + i, t=i) if i in refused
            else pkt(OUT, "10.0.0.2", A, None, "r-web", t=i) for i in range(n)]
    batch, res = batch_result(rows, instance_ids=("i-2",), inst_index={"10.0.0.2": 0})
    log = FlowLog(w)
    log.add(batch, res)
    log.check()
    assert [r.dstport for r in log.records()] == [1000 + i for i in refused]
    assert log.logged_events == len(refused)


def test_accepts_log_both_checks_egress_first():
    log = log_of(make_world(accepts=True, drops=False), [
        pkt("10.0.0.1", "10.0.0.2", A, "sg-a:eg:0", "r-web"),
        pkt("10.0.0.1", "10.0.0.2", D, "sg-a:eg:0", "default", dport=81)])
    recs = log.records()
    # the refused packet's egress check accepted it: its egress event is an ACCEPT
    assert [(r.instance, r.direction, r.action, r.rule, r.dstport) for r in recs] == [
        ("i-1", "egress", "ACCEPT", "sg-a:eg:0", 80), ("i-2", "ingress", "ACCEPT", "r-web", 80),
        ("i-1", "egress", "ACCEPT", "sg-a:eg:0", 81)]


def test_log_true_rule_logs_whatever_the_settings():
    w = make_world(drops=False, accepts=False)
    log = log_of(w, [
        pkt(OUT, "10.0.0.2", A, None, "r-log", dport=443),
        pkt(OUT, "10.0.0.2", A, None, "r-web"),
        pkt(OUT, "10.0.0.2", D, None, "default", dport=9)])
    assert [(r.rule, r.action) for r in log.records()] == [("r-log", "ACCEPT")]


def test_reasons_never_log_and_nothing_without_checks():
    w = make_world(drops=False, accepts=False)
    log = log_of(w, [pkt(OUT, "10.0.0.2", A, None, "conntrack"),
                     pkt(OUT, "10.0.0.2", D, None, "conntrack-full"),
                     pkt(OUT, OUT, U), pkt(OUT, OUT, M)])
    assert len(log) == 0 and log.logged_events == 0
    log = log_of(make_world(accepts=True), [pkt(OUT, OUT, U), pkt(OUT, OUT, M)])
    assert len(log) == 0


def test_settings_and_log_flags_are_read_live():
    w = make_world(drops=False)
    log = FlowLog(w)
    log.add(*batch_result([pkt(OUT, "10.0.0.2", D, None, "default", t=0)]))
    w.logging["drops"] = True
    log.add(*batch_result([pkt(OUT, "10.0.0.2", D, None, "default", t=1)]))
    # a rule authorized later with log: true is logged from the next batch on
    w.authorize("sg-a", "ingress", {"id": "r-new", "protocol": "tcp", "ports": 8080,
                                    "cidr": "0.0.0.0/0", "log": True})
    names = NAMES + ("r-new",)
    log.add(*batch_result([pkt(OUT, "10.0.0.2", A, None, "r-new", dport=8080, t=2)], names=names))
    w.revoke("sg-a", "ingress", rule_id="r-log")
    log.add(*batch_result([pkt(OUT, "10.0.0.2", A, None, "r-log", dport=443, t=3)], names=names))
    assert [(r.start - T0 // S, r.rule) for r in log.records()] == [(1, "default"), (2, "r-new")]


# ---------------------------------------------------------------------------------------
# keys, windows, records
# ---------------------------------------------------------------------------------------
def test_aggregation_key_and_times():
    w = make_world(accepts=True, drops=True)
    rows = [pkt(OUT, "10.0.0.2", A, None, "r-web", t=0.9, wirelen=60),
            pkt(OUT, "10.0.0.2", A, None, "r-web", t=5.5, wirelen=1500),
            pkt(OUT, "10.0.0.2", A, None, "r-web", t=3.2, wirelen=40),       # out of order
            pkt(OUT, "10.0.0.2", A, None, "r-web", sport=40001, t=1),         # other port
            pkt(OUT, "10.0.0.2", D, None, "default", t=2),                    # other action
            pkt(OUT, "10.0.0.1", A, None, "r-web", t=2)]                      # other instance
    recs = log_of(w, rows).records()
    assert [(r.instance, r.srcport, r.action, r.packets, r.bytes, r.start - T0 // S,
             r.end - T0 // S) for r in recs] == [
        ("i-2", 40000, "ACCEPT", 3, 1600, 0, 5), ("i-2", 40001, "ACCEPT", 1, 100, 1, 1),
        ("i-2", 40000, "DROP", 1, 100, 2, 2), ("i-1", 40000, "ACCEPT", 1, 100, 2, 2)]


def test_ports_only_for_tcp_and_udp():
    w = make_world(accepts=True)
    log = log_of(w, [
        pkt(OUT, "10.0.0.2", A, None, "r-web", proto=1, sport=77, dport=77),     # icmp echo id
        pkt(OUT, "10.0.0.2", A, None, "r-web", proto=47, sport=0, dport=0),
        pkt(OUT, "10.0.0.2", A, None, "r-web", proto=17, sport=5353, dport=53),
        pkt("2001:db8::99", "2001:db8::1", A, None, "r-web", proto=58, sport=9, dport=9)])
    assert [(r.protocol, r.srcport, r.dstport, r.srcaddr, r.dstaddr) for r in log.records()] == [
        (1, 0, 0, OUT, "10.0.0.2"), (47, 0, 0, OUT, "10.0.0.2"), (17, 5353, 53, OUT, "10.0.0.2"),
        (58, 0, 0, "2001:db8::99", "2001:db8::1")]


def test_ipv4_and_ipv4_mapped_ipv6_are_different_keys():
    w = make_world(accepts=True)
    rows = [pkt("::a00:5", "2001:db8::1", A, None, "r-web"),
            pkt("0.0.0.0", "10.0.0.1", A, None, "r-web")]
    # same hi/lo bits for the IPv6 "::a00:5" and IPv4 "10.0.0.5": ipver tells them apart
    rows.append(pkt("10.0.0.5", "10.0.0.1", A, None, "r-web"))
    recs = [r for r in log_of(w, rows).records()]
    assert [r.srcaddr for r in recs] == ["::a00:5", "0.0.0.0", "10.0.0.5"]


def test_window_boundaries_use_integer_nanoseconds():
    w = make_world(accepts=True, aggregation_interval=60)
    base = T0 + 60 * S
    rows = [dict(pkt(OUT, "10.0.0.2", A, None, "r-web"), ts=base - 1),
            dict(pkt(OUT, "10.0.0.2", A, None, "r-web"), ts=base),
            dict(pkt(OUT, "10.0.0.2", A, None, "r-web"), ts=base + 60 * S - 1)]
    recs = log_of(w, rows).records()
    assert [(r.window_start, r.packets, r.start, r.end) for r in recs] == [
        (T0 // S, 1, base // S - 1, base // S - 1), (base // S, 2, base // S, base // S + 59)]
    assert all(type(r.window_start) is int for r in recs)


def test_fractional_interval_window_start():
    """World files hold whole seconds; a float set through the API still windows exactly."""
    w = make_world(accepts=True)
    w.logging["aggregation_interval"] = 0.5
    rows = [pkt(OUT, "10.0.0.2", A, None, "r-web", t=0.25),
            pkt(OUT, "10.0.0.2", A, None, "r-web", t=0.75),
            pkt(OUT, "10.0.0.2", A, None, "r-web", t=1.0)]
    recs = log_of(w, rows).records()
    k = T0 // (S // 2)
    assert [r.window_start for r in recs] == [k * 0.5, (k + 1) * 0.5, (k + 2) * 0.5]
    assert [type(r.window_start) for r in recs] == [int, float, int]
    lines = log_of(w, rows).lines("jsonl")
    assert [json.loads(x)["window_start"] for x in lines] == [k // 2, k / 2 + 0.5, k // 2 + 1]
    assert lines[1].startswith('{"window_start":1700000040.5,')


def test_max_records_and_skipdata():
    w = make_world(accepts=True, max_records=2)
    rows = [pkt(OUT, "10.0.0.2", A, None, "r-web", dport=80, t=0),        # record 1
            pkt(OUT, "10.0.0.2", A, None, "r-web", dport=81, t=1),        # record 2
            pkt(OUT, "10.0.0.2", A, None, "r-web", dport=82, t=2, wirelen=7),   # skipped (i-2)
            pkt(OUT, "10.0.0.2", A, None, "r-web", dport=80, t=3),        # aggregates
            pkt(OUT, "10.0.0.1", A, None, "r-web", dport=83, t=4),        # skipped (i-1)
            pkt(OUT, "10.0.0.2", A, None, "r-web", dport=84, t=5, wirelen=9)]   # skipped (i-2)
    log = log_of(w, rows[:3], rows[3:])
    assert log.lines("aws") == [
        "2 444455556666 i-2 198.51.100.7 10.0.0.2 40000 80 6 2 200 1700000040 1700000043 ACCEPT OK",
        "2 444455556666 i-2 198.51.100.7 10.0.0.2 40000 81 6 1 100 1700000041 1700000041 ACCEPT OK",
        "2 444455556666 i-2 - - - - - 2 16 1700000042 1700000045 - SKIPDATA",
        "2 111122223333 i-1 - - - - - 1 100 1700000044 1700000044 - SKIPDATA"]
    assert log.skipped_packets == 3 and log.logged_events == 6 and len(log) == 4
    assert log.totals() == {"records": 4, "ok_records": 2, "skipdata_records": 2,
                            "logged_events": 6, "ok_packets": 3, "skipped_packets": 3}
    skip = json.loads(log.lines("jsonl")[2])
    assert skip == {"window_start": T0 // S, "account": "444455556666", "instance": "i-2",
                    "direction": None, "protocol": None, "srcaddr": None, "dstaddr": None,
                    "srcport": None, "dstport": None, "packets": 2, "bytes": 16,
                    "start": T0 // S + 2, "end": T0 // S + 5, "action": None, "rule": None,
                    "log_status": "SKIPDATA"}


def test_skipdata_per_window_and_zero_max_records():
    w = make_world(accepts=True, max_records=0)
    rows = [pkt(OUT, "10.0.0.2", A, None, "r-web", t=59), pkt(OUT, "10.0.0.2", A, None, "r-web", t=61),
            pkt(OUT, "10.0.0.2", A, None, "r-web", t=62)]
    recs = log_of(w, rows).records()
    assert [(r.log_status, r.window_start - T0 // S, r.packets) for r in recs] == [
        ("SKIPDATA", 0, 1), ("SKIPDATA", 60, 2)]


def test_output_order_window_then_first_event_across_batches():
    w = make_world(accepts=True, aggregation_interval=10)
    b1 = [pkt(OUT, "10.0.0.2", A, None, "r-web", dport=1, t=15),     # window 1
          pkt(OUT, "10.0.0.2", A, None, "r-web", dport=2, t=5)]      # window 0 (ts went back)
    b2 = [pkt(OUT, "10.0.0.2", A, None, "r-web", dport=3, t=1),      # window 0, later event
          pkt(OUT, "10.0.0.2", A, None, "r-web", dport=1, t=2),      # window 0: a new record
          pkt("10.0.0.1", "10.0.0.2", A, "sg-a:eg:0", "r-web", dport=4, t=16)]
    recs = log_of(w, b1, b2).records()
    assert [(r.window_start - T0 // S, r.dstport, r.direction) for r in recs] == [
        (0, 2, "ingress"), (0, 3, "ingress"), (0, 1, "ingress"),
        (10, 1, "ingress"), (10, 4, "egress"), (10, 4, "ingress")]


# ---------------------------------------------------------------------------------------
# formats and writing
# ---------------------------------------------------------------------------------------
def test_formats_byte_exact(tmp_path):
    w = make_world(accepts=True)
    log = log_of(w, [pkt("2001:db8:0:0::7", "2001:db8::1", D, None, "r-deny", proto=17,
                         sport=5, dport=53, t=1.5, wirelen=1234),
                     pkt("10.0.0.1", "10.0.0.2", A, "sg-a:eg:0", "r-web", t=2)])
    aws = ("2 111122223333 i-1 2001:db8::7 2001:db8::1 5 53 17 1 1234 1700000041 1700000041 REJECT OK\n"
           "2 111122223333 i-1 10.0.0.1 10.0.0.2 40000 80 6 1 100 1700000042 1700000042 ACCEPT OK\n"
           "2 444455556666 i-2 10.0.0.1 10.0.0.2 40000 80 6 1 100 1700000042 1700000042 ACCEPT OK\n")
    jsonl = (
        '{"window_start":1700000040,"account":"111122223333","instance":"i-1","direction":"ingress",'
        '"protocol":17,"srcaddr":"2001:db8::7","dstaddr":"2001:db8::1","srcport":5,"dstport":53,'
        '"packets":1,"bytes":1234,"start":1700000041,"end":1700000041,"action":"DROP",'
        '"rule":"r-deny","log_status":"OK"}\n'
        '{"window_start":1700000040,"account":"111122223333","instance":"i-1","direction":"egress",'
        '"protocol":6,"srcaddr":"10.0.0.1","dstaddr":"10.0.0.2","srcport":40000,"dstport":80,'
        '"packets":1,"bytes":100,"start":1700000042,"end":1700000042,"action":"ACCEPT",'
        '"rule":"sg-a:eg:0","log_status":"OK"}\n'
        '{"window_start":1700000040,"account":"444455556666","instance":"i-2","direction":"ingress",'
        '"protocol":6,"srcaddr":"10.0.0.1","dstaddr":"10.0.0.2","srcport":40000,"dstport":80,'
        '"packets":1,"bytes":100,"start":1700000042,"end":1700000042,"action":"ACCEPT",'
        '"rule":"r-web","log_status":"OK"}\n')
    assert log.write(tmp_path / "f.log", "aws") == 3
    assert (tmp_path / "f.log").read_bytes() == aws.encode()
    log.write(tmp_path / "f.jsonl", "jsonl")
    assert (tmp_path / "f.jsonl").read_bytes() == jsonl.encode()
    assert "\n".join(log.lines("aws")) + "\n" == aws
    assert sorted(os.listdir(tmp_path)) == ["f.jsonl", "f.log"]      # no temporary files left
    with pytest.raises(ValueError, match="unknown flow-log format"):
        log.lines("csv")
    r = log.records()[0]
    assert isinstance(r, FlowRecord) and list(r.__dataclass_fields__) == [
        "window_start", "account", "instance", "direction", "protocol", "srcaddr", "dstaddr",
        "srcport", "dstport", "packets", "bytes", "start", "end", "action", "rule", "log_status"]
    with pytest.raises(Exception):
        r.packets = 5                               # frozen


def test_empty_log_writes_an_empty_file(tmp_path):
    log = FlowLog(make_world())
    assert log.write(tmp_path / "e.log") == 0 and (tmp_path / "e.log").read_bytes() == b""


def test_write_failure_leaves_nothing(tmp_path):
    log = log_of(make_world(), [pkt(OUT, "10.0.0.2", D, None, "default")])
    with pytest.raises(OSError):
        log.write(tmp_path / "missing-dir" / "f.log")
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------------------
# bad input and stable indexes
# ---------------------------------------------------------------------------------------
def test_mismatched_lengths_and_missing_instances():
    log = FlowLog(make_world())
    batch, res = batch_result([pkt(OUT, "10.0.0.2", D, None, "default")] * 2)
    with pytest.raises(ValueError, match="batch of 1 packets"):
        log.add(batch.take(slice(0, 1)), res)
    with pytest.raises(ValueError, match="batch of 1 packets"):
        RuleCounters().add(batch.take(slice(0, 1)), res)
    bad = Result(res.verdict, res.egress_rule, res.ingress_rule, res.rule_names, 0,
                 res.src_instance, np.full(2, -1, np.int32), res.instance_ids)
    with pytest.raises(RuntimeError, match="without an instance"):
        log.add(batch, bad)
    with pytest.raises(ValueError, match="no src_instance"):
        log.add(batch, Result(res.verdict, res.egress_rule, res.ingress_rule, res.rule_names))


def test_engine_indexes_may_change_between_results():
    """Instance and rule indexes are per Result; records key on the ids."""
    w = make_world(accepts=True)
    log = FlowLog(w)
    log.add(*batch_result([pkt(OUT, "10.0.0.2", A, None, "r-web", t=0)]))
    other_names = REASONS + ("r-ssh", "r-web") + RULES
    ids = ("i-3", "i-2", "i-1")
    log.add(*batch_result([pkt(OUT, "10.0.0.2", A, None, "r-web", t=1)], names=other_names,
                          instance_ids=ids))
    recs = log.records()
    assert [(r.instance, r.rule, r.packets) for r in recs] == [("i-2", "r-web", 2)]


# ---------------------------------------------------------------------------------------
# rule counters
# ---------------------------------------------------------------------------------------
def test_rule_counters_count_every_event():
    w = make_world()
    rc = RuleCounters()
    rows = [pkt("10.0.0.1", "10.0.0.2", A, "sg-a:eg:0", "r-web", wirelen=10),
            pkt("10.0.0.1", "10.0.0.2", D, "sg-a:eg:0", "default", wirelen=20),
            pkt("10.0.0.3", OUT, D, "default", None, wirelen=40),
            pkt(OUT, OUT, U, wirelen=1000), pkt(OUT, OUT, M, wirelen=1000)]
    rc.add(*batch_result(rows))
    rc.add(*batch_result(rows[:1]))
    assert rc.as_dict(w) == {"default": (2, 60), "conntrack": (0, 0), "conntrack-related": (0, 0),
                             "conntrack-full": (0, 0), "r-web": (2, 20), "r-ssh": (0, 0),
                             "r-log": (0, 0), "r-deny": (0, 0), "sg-a:eg:0": (3, 40),
                             "sg-a:eg:1": (0, 0)}
    assert rc.events == 7 and rc.packets.sum() == 7 and rc.bytes.sum() == 120


def test_rule_counters_world_rules_and_revoked_hits():
    w = make_world()
    rc = RuleCounters()
    rc.add(*batch_result([pkt(OUT, "10.0.0.2", A, None, "r-ssh", dport=22)]))
    w.revoke("sg-a", "ingress", rule_id="r-ssh")
    w.revoke("sg-a", "ingress", rule_id="r-web")
    w.authorize("sg-a", "ingress", {"id": "r-late", "protocol": "tcp", "ports": 9, "cidr": "0.0.0.0/0"})
    d = rc.as_dict(w)
    assert d["r-ssh"] == (1, 100)           # revoked, but its hit stays counted
    assert "r-web" not in d                 # revoked and never hit
    assert d["r-late"] == (0, 0)            # not yet seen by any result
    assert set(REASONS) <= set(d)


def random_checks(n: int, rules: int, seed: int):
    """(batch, result, egress rules, ingress rules, wire lengths) of ``n`` packets whose
    checks name random rules among the reasons and ``rules`` more (-1: no check)."""
    rng = np.random.default_rng(seed)
    names = REASONS + tuple(f"r{i}" for i in range(rules))
    e = rng.integers(-1, len(names), n).astype(np.int32)
    g = rng.integers(-1, len(names), n).astype(np.int32)
    wl = rng.integers(40, 9000, n)
    batch = PacketBatch.from_arrays(np.zeros(n, np.uint32), np.zeros(n, np.uint32),
                                    np.full(n, 6), wirelen=wl)
    return batch, Result(np.zeros(n, np.uint8), e, g, names, 0), e, g, wl


def test_rule_counters_large_batch_and_growth():
    batch, res, e, g, wl = random_checks(200_000, 300, seed=5)
    names = res.rule_names
    rc = RuleCounters()
    rc.add(batch.take(slice(0, 10)), Result(res.verdict[:10], e[:10] % 4, g[:10] % 4, REASONS, 0))
    rc.add(batch, res)
    exp_p = np.zeros(len(names), np.int64)
    exp_b = np.zeros(len(names), np.int64)
    for col in (e, g):
        ok = col >= 0
        np.add.at(exp_p, col[ok], 1)
        np.add.at(exp_b, col[ok], wl[ok])
    for col in (e[:10] % 4, g[:10] % 4):
        np.add.at(exp_p, col, 1)
        np.add.at(exp_b, col, wl[:10])
    assert rc.packets.tolist() == exp_p.tolist() and rc.bytes.tolist() == exp_b.tolist()


@pytest.mark.parametrize("n", [0, 1, 2, 4_815, 4_816, 4_817, 50_001])
def test_rule_counters_split_over_threads_count_the_same(n):
    # 300 names: 301 counters; a batch of 2 threads * 8 * 301 = 4,816 packets or more is
    # split over the threads (sizes below, at and past that)
    import numba
    batch, res, e, g, wl = random_checks(n, 296, seed=n)
    one, two = RuleCounters(), RuleCounters()
    one.add(batch, res)
    previous = numba.get_num_threads()
    numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    try:
        two.add(batch, res, threads=2)
        two.add(batch, res, threads=2)          # counts add up across calls
    finally:
        numba.set_num_threads(previous)
    assert (two.packets == 2 * one.packets).all() and (two.bytes == 2 * one.bytes).all()
    assert one.packets.sum() == int((e >= 0).sum() + (g >= 0).sum())


@pytest.mark.parametrize("n", [0, 1, 63, 64, 65, 4_815, 4_816, 4_817, 50_001])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("drops,accepts", [(True, False), (False, False), (True, True)])
def test_counter_marks_select_the_same_events(n, threads, drops, accepts):
    # the counters pass marks the blocks where a logged rule decided; the log's selection
    # with the marks must pick exactly the events it picks reading every rule again
    import numba
    from fastsg.flowlog import FLAG_BLOCK, _select_events
    batch, res, e, g, wl = random_checks(n, 296, seed=n + 7)
    rng = np.random.default_rng(n)
    verdict = np.where(rng.random(n) < 0.02, rng.integers(1, 5, n), 0).astype(np.uint8)
    log_rule = np.zeros(len(res.rule_names) + 1, np.uint8)
    log_rule[rng.choice(len(log_rule) - 1, 3, replace=False) + 1] = 1
    res = Result(verdict, e, g, res.rule_names, 0)
    previous = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        flags = RuleCounters().add(batch, res, threads=threads, log_rule=log_rule)
    finally:
        numba.set_num_threads(previous)
    assert len(flags) == (n + FLAG_BLOCK - 1) // FLAG_BLOCK
    words = verdict[:n // 8 * 8].view(np.uint64)
    picked = []
    for marks in (flags, np.zeros(0, np.uint8)):
        pkt, d = np.empty(2 * n, np.int64), np.empty(2 * n, np.uint8)
        k = _select_events(verdict, words, e, g, log_rule, drops, accepts, marks, pkt, d)
        picked.append((pkt[:k].tolist(), d[:k].tolist()))
    assert picked[0] == picked[1]
    logged = (log_rule[e + 1] | log_rule[g + 1]) != 0
    assert flags.tolist() == [int(logged[b:b + FLAG_BLOCK].any()) for b in range(0, n, FLAG_BLOCK)]


# ---------------------------------------------------------------------------------------
# against a plain reading of the contract, on random results
# ---------------------------------------------------------------------------------------
def reference_lines(world, batches, fmt):
    """The contract's flow log, one event at a time."""
    lg = world.logging
    interval_ns = int(round(lg["aggregation_interval"] * 1e9))
    log_ids = {r.id for g in world.groups.values() for r in g.ingress + g.egress if r.log}
    recs, skips, seq = {}, {}, 0
    for batch, res in batches:
        for i in range(len(res.verdict)):
            v = int(res.verdict[i])
            events = []
            if res.egress_rule[i] >= 0:
                act = 0 if (res.ingress_rule[i] >= 0 or v == 0) else v
                events.append(("egress", res.src_instance[i], res.egress_rule[i], act))
            if res.ingress_rule[i] >= 0:
                events.append(("ingress", res.dst_instance[i], res.ingress_rule[i], v))
            for direction, inst, rule, act in events:
                rule = res.rule_names[rule]
                if not ((act != 0 and lg["drops"]) or (act == 0 and lg["accepts"])
                        or rule in log_ids):
                    continue
                seq += 1
                ts = int(batch.ts[i])
                iid = res.instance_ids[inst]
                proto = int(batch.proto[i])
                ports = ((int(batch.sport[i]), int(batch.dport[i])) if proto in (6, 17)
                         else (0, 0))
                key = (ts // interval_ns, iid, direction, proto, str(batch.address(i, "src")),
                       str(batch.address(i, "dst")), *ports, act, rule)
                if key not in recs and len(recs) >= lg["max_records"]:
                    rec = skips.setdefault((key[0], iid), [0, 0, ts, ts, seq])
                else:
                    rec = recs.setdefault(key, [0, 0, ts, ts, seq])
                rec[0] += 1
                rec[1] += int(batch.wirelen[i])
                rec[2], rec[3] = min(rec[2], ts), max(rec[3], ts)
    owner = {i.id: i.owner for i in world.instances.values()}

    def start(win):
        ws = win * lg["aggregation_interval"]
        return int(ws) if ws == int(ws) else ws
    out = []
    for key, (p, b, t0, t1, s) in recs.items():
        win, iid, direction, proto, src, dst, sp, dp, act, rule = key
        out.append(((win, s), FlowRecord(
            start(win), owner[iid], iid, direction, proto, src, dst, sp, dp,
            p, b, t0 // S, t1 // S, ("ACCEPT", "DROP", "REJECT")[act], rule, "OK")))
    for (win, iid), (p, b, t0, t1, s) in skips.items():
        out.append(((win, s), FlowRecord(start(win), owner[iid], iid,
                                         None, None, None, None, None, None, p, b, t0 // S,
                                         t1 // S, None, None, "SKIPDATA")))
    out.sort(key=lambda t: t[0])
    return [r.aws_line() if fmt == "aws" else r.jsonl_line() for _, r in out]


def random_batch(rng, n, t_start):
    addrs = list(ADDR) + [OUT, "203.0.113.9", "2001:db8::77"]
    rows = []
    for _ in range(n):
        src, dst = rng.choice(addrs, 2)
        while (":" in src) != (":" in dst):
            dst = rng.choice(addrs)
        has_e, has_g = src in ADDR, dst in ADDR
        v = int(rng.choice([A, A, A, D, R])) if (has_e or has_g) else int(rng.choice([U, M]))
        e = g = None
        if has_e:
            e = str(rng.choice(NAMES))
            if v != A and has_g and rng.random() < 0.5:
                pass                                    # refused at ingress
            elif v != A:
                has_g = False                           # refused at egress
        if has_g:
            g = str(rng.choice(NAMES))
        if e is None and g is None and v in (A, D, R):
            v = U
        t_start += float(rng.exponential(7))
        rows.append(pkt(src, dst, v, e, g, proto=int(rng.choice([6, 17, 1, 58, 47])),
                        sport=int(rng.integers(0, 3)), dport=int(rng.integers(0, 3)),
                        t=t_start, wirelen=int(rng.integers(40, 1500))))
    return rows, t_start


@pytest.mark.parametrize("seed", range(6))
def test_against_reference(seed):
    rng = np.random.default_rng(seed)
    settings = [dict(), dict(accepts=True), dict(accepts=True, drops=False),
                dict(drops=False), dict(accepts=True, max_records=7),
                dict(max_records=3, aggregation_interval=7)][seed]
    w = make_world(**settings)
    batches, t = [], 0.0
    for n in (0, 1, 17, 60, 3):
        rows, t = random_batch(rng, n, t)
        batches.append(batch_result(rows) if rows else None)
    batches = [b for b in batches if b is not None]
    log = FlowLog(w)
    for b in batches:
        log.add(*b)
    log.check()
    for fmt in ("aws", "jsonl"):
        assert log.lines(fmt) == reference_lines(w, batches, fmt)
    t = log.totals()
    assert t["ok_packets"] + t["skipped_packets"] == t["logged_events"]


@pytest.mark.parametrize("settings", [dict(accepts=True), dict(accepts=True, max_records=700),
                                      dict(aggregation_interval=600)])
def test_records_index_grows_across_batches(settings):
    """Thousands of records over several batches: the records' hash index is rebuilt
    larger several times (64 slots at first, kept at most half full) while batches keep
    adding to records made by earlier ones, and max_records may be reached mid-batch."""
    rng = np.random.default_rng(7)
    w = make_world(**settings)
    batches, t = [], 0.0
    for n in (40, 500, 1500, 3000, 1200):
        rows, t = random_batch(rng, n, t)
        batches.append(batch_result(rows))
        t -= 2500.0                     # revisit earlier windows: their records take events
    log = FlowLog(w)
    for b in batches:
        log.add(*b)
    log.check()
    assert len(log) > 500
    for fmt in ("aws", "jsonl"):
        assert log.lines(fmt) == reference_lines(w, batches, fmt)
