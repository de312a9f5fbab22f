"""Flow logs and rule counters (SEMANTICS.md section 7; the choices where it is silent are in the README).

Every test writes out the expected records (as dicts with the FlowRecord field names) and
asserts that BOTH the reference (``naive_flow_log`` over the check events of
``tests/naive.py``) and the engine (``engine.flow_log.records()``, 1 and 2 threads) give
exactly those, with the same ``aws``/``jsonl`` lines, the same ``skipped_packets`` and the
same rule counters.

The world: i-a (10.0.0.1, account 111122223333, group sg-a) and i-b (10.0.0.2, account
000000000000, group sg-b); 192.0.2.9 is outside.  Times: seconds after ``T`` (a multiple
of 60 s, so window boundaries fall on T + 60 k).
"""
from __future__ import annotations

import dataclasses
import json


from fastsg import World

try:
    from naive import (NaiveState, naive_aws_lines, naive_classify, naive_flow_log,
                       naive_jsonl_lines, naive_rule_counters, packets_from_batch)
    from strategies import batch_from_packet_dicts, engine_class, result_tuples
except ImportError:                                     # tests/ imported as a package
    from tests.naive import (NaiveState, naive_aws_lines, naive_classify, naive_flow_log,
                             naive_jsonl_lines, naive_rule_counters, packets_from_batch)
    from tests.strategies import batch_from_packet_dicts, engine_class, result_tuples

Engine = engine_class()

SEC = 10**9
T_S = 1_700_000_040                 # = 28333334 * 60: a window boundary for interval 60
T = T_S * SEC
A_IP, B_IP, EXT = "10.0.0.1", "10.0.0.2", "192.0.2.9"
ACC_A, ACC_B = "111122223333", "000000000000"
TCP, UDP, ICMP, GRE = 6, 17, 1, 47
SYN, ACK = 0x02, 0x10
REASONS = ("default", "conntrack", "conntrack-related", "conntrack-full")
RULE_IDS = ("web", "ssh-deny", "telnet-rej", "dns-log", "gre-deny-log", "sg-a:eg:0",
            "sg-a:eg:1", "b-web", "b-no-udp", "b-out")


def world(drops=True, accepts=False, interval=60, max_records=1000000, capacity=1000):
    return World.from_dict({
        "version": 1, "region": "us-east-1",
        "conntrack": {"tcp_timeout": 5, "udp_timeout": 2, "udp_stream_timeout": 4,
                      "icmp_timeout": 1, "other_timeout": 3, "capacity": capacity},
        "logging": {"drops": drops, "accepts": accepts, "aggregation_interval": interval,
                    "max_records": max_records},
        "security_groups": [
            {"id": "sg-a", "name": "a", "owner": ACC_A, "ingress": [
                {"id": "web", "protocol": "tcp", "ports": 80, "cidr": "0.0.0.0/0"},
                {"id": "ssh-deny", "protocol": "tcp", "ports": 22, "cidr": "0.0.0.0/0",
                 "action": "deny"},
                {"id": "telnet-rej", "protocol": "tcp", "ports": 23, "cidr": "0.0.0.0/0",
                 "action": "reject"},
                {"id": "dns-log", "protocol": "udp", "ports": 53, "cidr": "0.0.0.0/0",
                 "log": True},
                {"id": "gre-deny-log", "protocol": 47, "cidr": "0.0.0.0/0", "action": "deny",
                 "log": True}]},
            {"id": "sg-b", "name": "b",
             "ingress": [{"id": "b-web", "protocol": "tcp", "ports": 80, "cidr": "10.0.0.0/8"}],
             "egress": [{"id": "b-no-udp", "protocol": "udp", "cidr": "192.0.2.0/24",
                         "action": "deny"},
                        {"id": "b-out", "protocol": "all", "cidr": "0.0.0.0/0"}]}],
        "instances": [
            {"id": "i-a", "private_ip": A_IP, "private_ipv6": "2001:db8::a", "owner": ACC_A,
             "groups": ["sg-a"]},
            {"id": "i-b", "private_ip": B_IP, "groups": ["sg-b"]}]})


def pkt(src, dst, proto=TCP, sport=40000, dport=80, t=0.0, ns=0, flags=SYN, icmp_type=0,
        ident=None, wirelen=64):
    p = {"src": src, "dst": dst, "proto": proto, "sport": 0, "dport": 0,
         "icmp_type": icmp_type, "icmp_code": 0, "icmp_id": 0, "tcp_flags": 0, "frag": 0,
         "emb_valid": 0, "emb_proto": 0, "emb_src": None, "emb_dst": None, "emb_sport": 0,
         "emb_dport": 0, "status": 0, "ts": T + round(t * SEC) + ns, "wirelen": wirelen}
    if proto in (TCP, UDP):
        p["sport"], p["dport"] = sport, dport
        if proto == TCP:
            p["tcp_flags"] = flags
    if ident is not None:
        p["sport"] = p["dport"] = p["icmp_id"] = ident
    return p


def rec(instance, direction, src, dst, sport, dport, action, rule, proto=TCP, packets=1,
        nbytes=64, start=T_S, end=None, window_start=T_S, account=None):
    return {"window_start": window_start,
            "account": account or (ACC_A if instance == "i-a" else ACC_B),
            "instance": instance, "direction": direction, "protocol": proto,
            "srcaddr": src, "dstaddr": dst, "srcport": sport, "dstport": dport,
            "packets": packets, "bytes": nbytes, "start": start,
            "end": start if end is None else end, "action": action, "rule": rule,
            "log_status": "OK"}


def skip(instance, packets, nbytes, start=T_S, end=None, window_start=T_S):
    return {"window_start": window_start, "account": ACC_A if instance == "i-a" else ACC_B,
            "instance": instance, "direction": None, "protocol": None, "srcaddr": None,
            "dstaddr": None, "srcport": None, "dstport": None, "packets": packets,
            "bytes": nbytes, "start": start, "end": start if end is None else end,
            "action": None, "rule": None, "log_status": "SKIPDATA"}


class Logged:
    """The reference and the engines (1 and 2 threads, stateful) over the same world."""

    def __init__(self, w, stateful=True, pieces=1):
        self.world = w
        self.stateful = stateful
        self.pieces = pieces
        self.state = NaiveState(stateful=stateful)

    def run(self, packets):
        """Classify ``packets``; returns the reference's records (after checking the
        engine gives the same records, lines, skipped count and counters)."""
        batch = batch_from_packet_dicts(packets)
        verdicts = [r.as_tuple() for r in naive_classify(self.world, packets_from_batch(batch),
                                                         self.state)]
        records = naive_flow_log(self.world, self.state.events)
        counters = naive_rule_counters(self.world, self.state.events)
        self.records, self.counters, self.verdicts = records, counters, verdicts
        self._engines(batch, verdicts, records, counters)
        return records

    def _engines(self, batch, verdicts, records, counters):
        assert Engine is not None, "fastsg.Engine not importable"
        for threads in (1, 2):
            engine = Engine(self.world, stateful=self.stateful, threads=threads)
            got = []
            n = len(batch)
            cuts = sorted({0, n, *[(n * k) // self.pieces for k in range(1, self.pieces)]})
            for a, b in zip(cuts, cuts[1:]):
                got += result_tuples(engine.classify(batch.take(slice(a, b))))
            what = f"engine (threads={threads})"
            assert got == verdicts, f"{what}: verdicts"
            log = engine.flow_log
            assert [dataclasses.asdict(r) for r in log.records()] == records, f"{what}: records"
            assert log.lines("aws") == naive_aws_lines(records), f"{what}: aws lines"
            assert log.lines("jsonl") == naive_jsonl_lines(records), f"{what}: jsonl lines"
            assert len(log) == len(records), f"{what}: len(flow_log)"
            assert log.skipped_packets == sum(r["packets"] for r in records
                                              if r["log_status"] == "SKIPDATA")
            assert engine.rule_counters() == counters, f"{what}: rule counters"


def check(w, packets, expected, **kw):
    """The reference first (a wrong expectation is told apart from an engine bug), then
    the engines against the reference."""
    state = NaiveState(stateful=kw.get("stateful", True))
    naive_classify(w, packets_from_batch(batch_from_packet_dicts(packets)), state)
    assert naive_flow_log(w, state.events) == expected, "reference (naive) disagrees with the spec"
    both = Logged(w, **kw)
    assert both.run(packets) == expected
    return both


# =======================================================================================
# events: which checks are logged
# =======================================================================================
def test_two_events_for_a_packet_passing_egress_and_ingress():
    check(world(drops=False, accepts=True), [pkt(A_IP, B_IP, t=1)],
          [rec("i-a", "egress", A_IP, B_IP, 40000, 80, "ACCEPT", "sg-a:eg:0", start=T_S + 1),
           rec("i-b", "ingress", A_IP, B_IP, 40000, 80, "ACCEPT", "b-web", start=T_S + 1)])


def test_one_event_for_a_packet_refused_at_egress():
    check(world(drops=True, accepts=True), [pkt(B_IP, EXT, UDP, dport=53)],
          [rec("i-b", "egress", B_IP, EXT, 40000, 53, "DROP", "b-no-udp", proto=UDP)])


def test_refused_at_ingress_two_events_egress_accept_then_drop():
    p = [pkt(B_IP, A_IP, dport=22)]
    eg = rec("i-b", "egress", B_IP, A_IP, 40000, 22, "ACCEPT", "b-out")
    ing = rec("i-a", "ingress", B_IP, A_IP, 40000, 22, "DROP", "ssh-deny")
    check(world(drops=True, accepts=True), p, [eg, ing])
    check(world(drops=True, accepts=False), p, [ing])
    check(world(drops=False, accepts=True), p, [eg])
    check(world(drops=False, accepts=False), p, [])


def test_log_true_rules_are_logged_whatever_the_defaults():
    packets = [pkt(EXT, A_IP, UDP, dport=53), pkt(EXT, A_IP, dport=80),
               pkt(EXT, A_IP, GRE), pkt(EXT, A_IP, dport=22), pkt(EXT, A_IP, dport=9)]
    check(world(drops=False, accepts=False), packets,
          [rec("i-a", "ingress", EXT, A_IP, 40000, 53, "ACCEPT", "dns-log", proto=UDP),
           rec("i-a", "ingress", EXT, A_IP, 0, 0, "DROP", "gre-deny-log", proto=GRE)])


def test_drops_cover_drop_reject_and_reasons():
    packets = [pkt(EXT, A_IP, dport=23), pkt(EXT, A_IP, dport=9), pkt(EXT, A_IP, dport=80)]
    check(world(drops=True, accepts=False), packets,
          [rec("i-a", "ingress", EXT, A_IP, 40000, 23, "REJECT", "telnet-rej"),
           rec("i-a", "ingress", EXT, A_IP, 40000, 9, "DROP", "default")])


def test_conntrack_reasons_are_deciding_rules_of_records():
    syn = pkt(EXT, A_IP, sport=1, dport=80, t=0)
    back = pkt(A_IP, EXT, sport=80, dport=1, t=1, flags=ACK)
    full = pkt(EXT, A_IP, sport=2, dport=80, t=2)
    check(world(drops=True, accepts=True, capacity=1), [syn, back, full],
          [rec("i-a", "ingress", EXT, A_IP, 1, 80, "ACCEPT", "web"),
           rec("i-a", "egress", A_IP, EXT, 80, 1, "ACCEPT", "conntrack", start=T_S + 1),
           rec("i-a", "ingress", EXT, A_IP, 2, 80, "DROP", "conntrack-full", start=T_S + 2)])


# =======================================================================================
# aggregation: keys, windows, times, bytes
# =======================================================================================
def test_events_of_one_key_aggregate_packets_bytes_start_end():
    packets = [pkt(EXT, A_IP, dport=22, t=1.25, wirelen=1500),
               pkt(EXT, A_IP, dport=22, t=3.999999999, wirelen=9001),
               pkt(EXT, A_IP, dport=22, t=2, wirelen=40)]
    check(world(), packets,
          [rec("i-a", "ingress", EXT, A_IP, 40000, 22, "DROP", "ssh-deny", packets=3,
               nbytes=10541, start=T_S + 1, end=T_S + 3)])


def test_start_end_are_floored_to_whole_seconds():
    check(world(), [pkt(EXT, A_IP, dport=22, t=0, ns=SEC - 1),
                    pkt(EXT, A_IP, dport=22, t=5, ns=SEC - 1)],
          [rec("i-a", "ingress", EXT, A_IP, 40000, 22, "DROP", "ssh-deny", packets=2,
               nbytes=128, start=T_S, end=T_S + 5)])


def test_window_boundaries():
    packets = [pkt(EXT, A_IP, dport=22, t=-1, ns=SEC - 1),     # T - 1 ns: the window before
               pkt(EXT, A_IP, dport=22, t=0),                  # T: the window at T
               pkt(EXT, A_IP, dport=22, t=59, ns=SEC - 1),     # still the window at T
               pkt(EXT, A_IP, dport=22, t=60)]                 # the next one
    check(world(), packets,
          [rec("i-a", "ingress", EXT, A_IP, 40000, 22, "DROP", "ssh-deny",
               start=T_S - 1, window_start=T_S - 60),
           rec("i-a", "ingress", EXT, A_IP, 40000, 22, "DROP", "ssh-deny", packets=2,
               nbytes=128, start=T_S, end=T_S + 59),
           rec("i-a", "ingress", EXT, A_IP, 40000, 22, "DROP", "ssh-deny",
               start=T_S + 60, window_start=T_S + 60)])


def test_window_of_an_interval_not_dividing_the_minute():
    # interval 7: window k holds [7k, 7k + 7) seconds
    k = T_S // 7
    base = (7 * k - T_S) * SEC
    check(world(interval=7), [pkt(EXT, A_IP, dport=22, t=0, ns=base + 7 * SEC - 1),
                              pkt(EXT, A_IP, dport=22, t=0, ns=base + 7 * SEC)],
          [rec("i-a", "ingress", EXT, A_IP, 40000, 22, "DROP", "ssh-deny",
               start=7 * k + 6, window_start=7 * k),
           rec("i-a", "ingress", EXT, A_IP, 40000, 22, "DROP", "ssh-deny",
               start=7 * k + 7, window_start=7 * k + 7)])


def test_every_key_field_separates_records():
    packets = [pkt(EXT, A_IP, dport=22, sport=1),
               pkt(EXT, A_IP, dport=22, sport=2),                 # another source port
               pkt(EXT, A_IP, dport=23, sport=1),                 # another port, action, rule
               pkt("192.0.2.8", A_IP, dport=22, sport=1),         # another address
               pkt(EXT, A_IP, UDP, dport=22, sport=1)]            # another protocol (default)
    check(world(), packets,
          [rec("i-a", "ingress", EXT, A_IP, 1, 22, "DROP", "ssh-deny"),
           rec("i-a", "ingress", EXT, A_IP, 2, 22, "DROP", "ssh-deny"),
           rec("i-a", "ingress", EXT, A_IP, 1, 23, "REJECT", "telnet-rej"),
           rec("i-a", "ingress", "192.0.2.8", A_IP, 1, 22, "DROP", "ssh-deny"),
           rec("i-a", "ingress", EXT, A_IP, 1, 22, "DROP", "default", proto=UDP)])


def test_ports_are_zero_for_protocols_without_ports():
    packets = [pkt(EXT, A_IP, ICMP, icmp_type=8, ident=7), pkt(EXT, A_IP, GRE)]
    check(world(), packets,
          [rec("i-a", "ingress", EXT, A_IP, 0, 0, "DROP", "default", proto=ICMP),
           rec("i-a", "ingress", EXT, A_IP, 0, 0, "DROP", "gre-deny-log", proto=GRE)])


def test_ipv6_addresses_in_their_short_form():
    check(world(), [pkt("2001:0db8:0000:0000:0000:0000:0000:0099", "2001:db8::a", dport=22)],
          [rec("i-a", "ingress", "2001:db8::99", "2001:db8::a", 40000, 22, "DROP", "default")])


# =======================================================================================
# line formats
# =======================================================================================
def test_aws_and_jsonl_lines():
    both = check(world(accepts=True), [pkt(EXT, A_IP, dport=22, t=1, wirelen=100),
                                       pkt(EXT, A_IP, dport=23, t=2, wirelen=60),
                                       pkt(EXT, A_IP, dport=80, t=3, wirelen=1500)],
                 [rec("i-a", "ingress", EXT, A_IP, 40000, 22, "DROP", "ssh-deny",
                      nbytes=100, start=T_S + 1),
                  rec("i-a", "ingress", EXT, A_IP, 40000, 23, "REJECT", "telnet-rej",
                      nbytes=60, start=T_S + 2),
                  rec("i-a", "ingress", EXT, A_IP, 40000, 80, "ACCEPT", "web",
                      nbytes=1500, start=T_S + 3)])
    t = T_S
    assert naive_aws_lines(both.records) == [
        f"2 111122223333 i-a 192.0.2.9 10.0.0.1 40000 22 6 1 100 {t + 1} {t + 1} REJECT OK",
        f"2 111122223333 i-a 192.0.2.9 10.0.0.1 40000 23 6 1 60 {t + 2} {t + 2} REJECT OK",
        f"2 111122223333 i-a 192.0.2.9 10.0.0.1 40000 80 6 1 1500 {t + 3} {t + 3} ACCEPT OK"]
    first = naive_jsonl_lines(both.records)[0]
    assert first == (
        '{"window_start":%d,"account":"111122223333","instance":"i-a","direction":"ingress",'
        '"protocol":6,"srcaddr":"192.0.2.9","dstaddr":"10.0.0.1","srcport":40000,'
        '"dstport":22,"packets":1,"bytes":100,"start":%d,"end":%d,"action":"DROP",'
        '"rule":"ssh-deny","log_status":"OK"}' % (t, t + 1, t + 1))
    assert list(json.loads(first)) == list(rec("i-a", "ingress", EXT, A_IP, 0, 0, "", ""))


def test_write_files(tmp_path):
    w = world(accepts=True)
    packets = [pkt(EXT, A_IP, dport=22), pkt(A_IP, EXT, dport=443, t=1)]
    both = check(w, packets,
                 [rec("i-a", "ingress", EXT, A_IP, 40000, 22, "DROP", "ssh-deny"),
                  rec("i-a", "egress", A_IP, EXT, 40000, 443, "ACCEPT", "sg-a:eg:0",
                      start=T_S + 1)])
    engine = Engine(w, stateful=True, threads=1)
    engine.classify(batch_from_packet_dicts(packets))
    for fmt, lines in (("aws", naive_aws_lines(both.records)),
                       ("jsonl", naive_jsonl_lines(both.records))):
        path = tmp_path / f"log.{fmt}"
        engine.flow_log.write(path, fmt)
        assert path.read_text() == "".join(line + "\n" for line in lines)
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".") or
                p.name.endswith(".tmp")] == []             # no temporary file left behind


# =======================================================================================
# max_records and SKIPDATA
# =======================================================================================
def test_skipdata_past_max_records():
    packets = [pkt(EXT, A_IP, dport=22, sport=1, t=1),      # OK record 1
               pkt(EXT, A_IP, dport=22, sport=2, t=2),      # OK record 2 (the limit)
               pkt(EXT, A_IP, dport=22, sport=3, t=3, wirelen=100),   # skipped (i-a)
               pkt(EXT, A_IP, dport=22, sport=1, t=4),      # an existing record: aggregates
               pkt(EXT, A_IP, dport=22, sport=4, t=5, wirelen=200),   # skipped (i-a)
               pkt(B_IP, EXT, UDP, dport=53, t=6)]          # skipped (i-b): its own SKIPDATA
    both = check(world(max_records=2), packets,
                 [rec("i-a", "ingress", EXT, A_IP, 1, 22, "DROP", "ssh-deny", packets=2,
                      nbytes=128, start=T_S + 1, end=T_S + 4),
                  rec("i-a", "ingress", EXT, A_IP, 2, 22, "DROP", "ssh-deny", start=T_S + 2),
                  skip("i-a", 2, 300, start=T_S + 3, end=T_S + 5),
                  skip("i-b", 1, 64, start=T_S + 6)])
    assert naive_aws_lines(both.records)[2:] == [
        f"2 111122223333 i-a - - - - - 2 300 {T_S + 3} {T_S + 5} - SKIPDATA",
        f"2 000000000000 i-b - - - - - 1 64 {T_S + 6} {T_S + 6} - SKIPDATA"]
    assert naive_jsonl_lines(both.records)[3] == (
        '{"window_start":%d,"account":"000000000000","instance":"i-b","direction":null,'
        '"protocol":null,"srcaddr":null,"dstaddr":null,"srcport":null,"dstport":null,'
        '"packets":1,"bytes":64,"start":%d,"end":%d,"action":null,"rule":null,'
        '"log_status":"SKIPDATA"}' % (T_S, T_S + 6, T_S + 6))


def test_skipdata_per_window_and_the_limit_is_for_the_life_of_the_log():
    packets = [pkt(EXT, A_IP, dport=22, sport=1, t=1),
               pkt(EXT, A_IP, dport=22, sport=1, t=61),     # same key, next window: new record
               pkt(EXT, A_IP, dport=22, sport=1, t=62)]
    check(world(max_records=1), packets,
          [rec("i-a", "ingress", EXT, A_IP, 1, 22, "DROP", "ssh-deny", start=T_S + 1),
           skip("i-a", 2, 128, start=T_S + 61, end=T_S + 62, window_start=T_S + 60)])


def test_max_records_zero_logs_only_skipdata():
    check(world(max_records=0, accepts=True), [pkt(A_IP, B_IP, t=1)],
          [skip("i-a", 1, 64, start=T_S + 1), skip("i-b", 1, 64, start=T_S + 1)])


def test_unlogged_events_do_not_use_up_max_records():
    check(world(max_records=1, drops=True, accepts=False),
          [pkt(EXT, A_IP, dport=80), pkt(EXT, A_IP, dport=22)],
          [rec("i-a", "ingress", EXT, A_IP, 40000, 22, "DROP", "ssh-deny")])


# =======================================================================================
# order
# =======================================================================================
def test_records_in_window_order_then_first_event():
    packets = [pkt(EXT, A_IP, dport=22, sport=1, t=61),     # window T + 60, first event
               pkt(EXT, A_IP, dport=22, sport=2, t=5),      # window T (captured later)
               pkt(EXT, A_IP, dport=22, sport=3, t=62),
               pkt(EXT, A_IP, dport=22, sport=4, t=1),
               pkt(EXT, A_IP, dport=22, sport=2, t=2)]
    check(world(), packets,
          [rec("i-a", "ingress", EXT, A_IP, 2, 22, "DROP", "ssh-deny", packets=2, nbytes=128,
               start=T_S + 2, end=T_S + 5),
           rec("i-a", "ingress", EXT, A_IP, 4, 22, "DROP", "ssh-deny", start=T_S + 1),
           rec("i-a", "ingress", EXT, A_IP, 1, 22, "DROP", "ssh-deny", start=T_S + 61,
               window_start=T_S + 60),
           rec("i-a", "ingress", EXT, A_IP, 3, 22, "DROP", "ssh-deny", start=T_S + 62,
               window_start=T_S + 60)])


def test_egress_event_before_ingress_event_of_one_packet():
    # the egress record is created first even though another instance's record exists
    check(world(accepts=True), [pkt(EXT, B_IP, t=0), pkt(A_IP, B_IP, t=1)],
          [rec("i-b", "ingress", EXT, B_IP, 40000, 80, "DROP", "default"),
           rec("i-a", "egress", A_IP, B_IP, 40000, 80, "ACCEPT", "sg-a:eg:0", start=T_S + 1),
           rec("i-b", "ingress", A_IP, B_IP, 40000, 80, "ACCEPT", "b-web", start=T_S + 1)])


def test_records_continue_across_classify_calls():
    packets = [pkt(EXT, A_IP, dport=22, sport=k % 3, t=k) for k in range(9)]
    expected = [rec("i-a", "ingress", EXT, A_IP, s, 22, "DROP", "ssh-deny", packets=3,
                    nbytes=192, start=T_S + s, end=T_S + 6 + s) for s in range(3)]
    check(world(), packets, expected, pieces=4)


def test_stateless_engine_logs_too():
    check(world(accepts=True), [pkt(EXT, A_IP, dport=80), pkt(A_IP, EXT, sport=80, dport=40000)],
          [rec("i-a", "ingress", EXT, A_IP, 40000, 80, "ACCEPT", "web"),
           rec("i-a", "egress", A_IP, EXT, 80, 40000, "ACCEPT", "sg-a:eg:0")],
          stateful=False)


# =======================================================================================
# rule counters
# =======================================================================================
def test_rule_counters_every_rule_and_reason_zeros_included():
    both = Logged(world(drops=False, accepts=False, capacity=1))
    both.run([pkt(EXT, A_IP, dport=80, sport=1, wirelen=100),           # web
              pkt(A_IP, EXT, sport=80, dport=1, wirelen=200, flags=ACK),  # conntrack
              pkt(EXT, A_IP, dport=80, sport=2, wirelen=300),            # conntrack-full
              pkt(B_IP, A_IP, dport=22, wirelen=400),                    # b-out, ssh-deny
              pkt(EXT, A_IP, ICMP, icmp_type=3, wirelen=50)])            # default
    expected = {name: (0, 0) for name in RULE_IDS + REASONS}
    expected.update({"web": (1, 100), "conntrack": (1, 200), "conntrack-full": (1, 300),
                     "b-out": (1, 400), "ssh-deny": (1, 400), "default": (1, 50)})
    assert both.counters == expected
    assert both.records == []                   # nothing logged: counters are kept anyway


def test_rule_counters_without_flow_log():
    w = world()
    assert Engine is not None
    engine = Engine(w, stateful=True, threads=1, flow_log=False)
    assert engine.flow_log is None
    packets = [pkt(EXT, A_IP, dport=22, wirelen=70), pkt(EXT, A_IP, dport=22, wirelen=30)]
    engine.classify(batch_from_packet_dicts(packets))
    state = NaiveState(stateful=True)
    naive_classify(w, packets_from_batch(batch_from_packet_dicts(packets)), state)
    expected = {name: (0, 0) for name in RULE_IDS + REASONS}
    expected["ssh-deny"] = (2, 100)
    assert naive_rule_counters(w, state.events) == expected
    assert engine.rule_counters() == expected


def test_rule_counters_follow_new_rules():
    w = world()
    both = Logged(w)
    both.run([pkt(EXT, A_IP, dport=22)])
    w.authorize("sg-a", "ingress", {"id": "new", "protocol": "tcp", "ports": 8080,
                                    "cidr": "0.0.0.0/0"})
    assert Engine is not None
    engine = Engine(w, stateful=True, threads=1)
    engine.classify(batch_from_packet_dicts([pkt(EXT, A_IP, dport=22)]))
    counters = engine.rule_counters()
    assert counters["new"] == (0, 0) and counters["ssh-deny"] == (1, 64)
    assert set(counters) == set(RULE_IDS + REASONS + ("new",))
