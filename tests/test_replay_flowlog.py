"""``fastsg replay`` with flow logs (``--flow-log``, ``--log-format``), rule counters
(``--json``'s ``rule_counters``, ``--rule-stats``) and REJECT answers (``--responses``):
byte-exact flow logs on a hand-made capture, the reference (tests/naive.py) on generated
traffic, every field of the answers parsed back with scapy, and the counts adding up."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from scapy.all import IP, TCP, UDP, Ether, ICMP, IPv6, RawPcapReader, Raw, wrpcap

from fastsg import World
from fastsg import replay as R
from fastsg.capture import read_capture
from fastsg.generate import generate_traffic, generate_world
from fastsg.packet_build import write_capture

try:
    from test_cli import run, said
    from naive import (CheckEvent, NaiveState, naive_aws_lines, naive_flow_log,
                       naive_jsonl_lines, naive_replay, naive_rule_counters, owner_of,
                       packets_from_batch, rule_has_log)
except ImportError:                                     # tests/ imported as a package
    from tests.test_cli import run, said
    from tests.naive import (CheckEvent, NaiveState, naive_aws_lines, naive_flow_log,
                             naive_jsonl_lines, naive_replay, naive_rule_counters, owner_of,
                             packets_from_batch, rule_has_log)

T0 = 1_700_000_040                      # seconds; a multiple of 60 (window boundary)
OUT, OUT6 = "198.51.100.7", "2001:db8::99"
WEB, WEB6, DB = "10.0.0.1", "2001:db8::1", "10.0.0.2"
ETH = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


# ---------------------------------------------------------------------------------------
# a hand-made world and capture
# ---------------------------------------------------------------------------------------
WORLD = {
    "version": 1,
    "security_groups": [
        {"id": "sg-web", "name": "web", "owner": "111122223333", "ingress": [
            {"id": "r-http", "protocol": "tcp", "ports": 80, "cidr": "0.0.0.0/0"},
            {"id": "r-ssh-reject", "protocol": "tcp", "ports": 22, "cidr": "0.0.0.0/0",
             "action": "reject"},
            {"id": "r-udp-reject", "protocol": "udp", "cidr": "0.0.0.0/0", "action": "reject"},
            {"id": "r-udp6-reject", "protocol": "udp", "cidr": "::/0", "action": "reject"},
            {"id": "r-https-log", "protocol": "tcp", "ports": 443, "cidr": "0.0.0.0/0",
             "log": True}]},
        {"id": "sg-db", "name": "db", "owner": "444455556666", "ingress": [
            {"id": "r-db", "protocol": "tcp", "ports": 5432, "group": "sg-web"}]}],
    "instances": [
        {"id": "i-web", "private_ip": WEB, "private_ipv6": WEB6, "groups": ["sg-web"],
         "owner": "111122223333"},
        {"id": "i-db", "private_ip": DB, "groups": ["sg-db"], "owner": "444455556666"}]}

PAYLOAD6 = bytes(range(256)) * 6          # 1536 bytes: the ICMPv6 quote is cut at 1232


def hand_packets():
    """(scapy packet, seconds after T0) in capture order, with what they meet."""
    pk = [
        (IP(src=OUT, dst=WEB) / TCP(sport=40000, dport=80, flags="S", seq=1), 1.0),   # ACCEPT
        (IP(src=WEB, dst=OUT) / TCP(sport=80, dport=40000, flags="SA", seq=9, ack=2), 1.1),
        (IP(src=OUT, dst=WEB) / TCP(sport=40001, dport=22, flags="S", seq=1000), 2.0),  # REJECT
        (IP(src=OUT, dst=WEB) / TCP(sport=40002, dport=22, flags="PA", seq=5, ack=777)
         / Raw(b"hello"), 2.5),                                                        # REJECT
        (IP(src=OUT, dst=WEB, id=321) / UDP(sport=5353, dport=53) / Raw(b"q" * 20), 3.0),
        (IPv6(src=OUT6, dst=WEB6) / UDP(sport=5353, dport=53) / Raw(PAYLOAD6), 3.5),  # REJECT
        (IP(src=WEB, dst=DB) / TCP(sport=41000, dport=5432, flags="S", seq=7), 61.0),  # ACCEPT
        (IP(src=OUT, dst=DB) / TCP(sport=40003, dport=5432, flags="S", seq=3), 62.5),  # DROP
        (IP(src=OUT, dst=WEB) / TCP(sport=40004, dport=22, flags="F", seq=10)
         / Raw(b"bye"), 63.0),                                                         # REJECT
        (IP(src=OUT, dst=WEB) / TCP(sport=40005, dport=443, flags="S", seq=1), 64.0),  # log: true
        (IP(src=OUT, dst=WEB) / TCP(sport=40005, dport=443, flags="A", seq=2, ack=1), 64.9),
    ]
    return pk


@pytest.fixture(scope="module")
def hand(tmp_path_factory):
    d = tmp_path_factory.mktemp("hand")
    frames = []
    for p, t in hand_packets():
        f = ETH / p
        f.time = T0 + t
        frames.append(f)
    cap = d / "hand.pcap"
    wrpcap(str(cap), frames)
    w = d / "world.json"
    w.write_text(json.dumps(WORLD))
    return w, cap, [bytes(f) for f in frames]


def test_hand_flow_log_aws_byte_exact(hand, tmp_path):
    w, cap, frames = hand
    n = [len(f) for f in frames]
    for extra in ((), ("--stateless",)):
        out = tmp_path / "fl.log"
        r = run("replay", cap, "--world", w, "--flow-log", out, *extra)
        assert r.exit_code == 0, r.output
        expected = (
            f"2 111122223333 i-web {OUT} {WEB} 40001 22 6 1 {n[2]} {T0 + 2} {T0 + 2} REJECT OK\n"
            f"2 111122223333 i-web {OUT} {WEB} 40002 22 6 1 {n[3]} {T0 + 2} {T0 + 2} REJECT OK\n"
            f"2 111122223333 i-web {OUT} {WEB} 5353 53 17 1 {n[4]} {T0 + 3} {T0 + 3} REJECT OK\n"
            f"2 111122223333 i-web {OUT6} {WEB6} 5353 53 17 1 {n[5]} {T0 + 3} {T0 + 3} REJECT OK\n"
            f"2 444455556666 i-db {OUT} {DB} 40003 5432 6 1 {n[7]} {T0 + 62} {T0 + 62} REJECT OK\n"
            f"2 111122223333 i-web {OUT} {WEB} 40004 22 6 1 {n[8]} {T0 + 63} {T0 + 63} REJECT OK\n")
        if extra:       # stateless: the ACK of the https flow is judged (and logged) by r-https-log
            expected += (f"2 111122223333 i-web {OUT} {WEB} 40005 443 6 2 {n[9] + n[10]} "
                         f"{T0 + 64} {T0 + 64} ACCEPT OK\n")
        else:           # stateful: the ACK is accepted by conntrack, which never logs
            expected += (f"2 111122223333 i-web {OUT} {WEB} 40005 443 6 1 {n[9]} "
                         f"{T0 + 64} {T0 + 64} ACCEPT OK\n")
        assert out.read_text() == expected, extra


def test_hand_flow_log_jsonl(hand, tmp_path):
    w, cap, frames = hand
    out = tmp_path / "fl.jsonl"
    r = run("replay", cap, "--world", w, "--flow-log", out, "--log-format", "jsonl", "--json")
    assert r.exit_code == 0, r.output
    lines = out.read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    assert all(list(x) == ["window_start", "account", "instance", "direction", "protocol",
                           "srcaddr", "dstaddr", "srcport", "dstport", "packets", "bytes",
                           "start", "end", "action", "rule", "log_status"] for x in recs)
    assert [(x["window_start"], x["instance"], x["direction"], x["action"], x["rule"])
            for x in recs] == [
        (T0, "i-web", "ingress", "REJECT", "r-ssh-reject"),
        (T0, "i-web", "ingress", "REJECT", "r-ssh-reject"),
        (T0, "i-web", "ingress", "REJECT", "r-udp-reject"),
        (T0, "i-web", "ingress", "REJECT", "r-udp6-reject"),
        (T0 + 60, "i-db", "ingress", "DROP", "default"),
        (T0 + 60, "i-web", "ingress", "REJECT", "r-ssh-reject"),
        (T0 + 60, "i-web", "ingress", "ACCEPT", "r-https-log")]
    assert lines[0] == json.dumps(recs[0], separators=(",", ":"))
    doc = json.loads(r.stdout)
    assert doc["flow_log"] == {"records": 7, "ok_records": 7, "skipdata_records": 0,
                               "logged_events": 7, "ok_packets": 7, "skipped_packets": 0,
                               "format": "jsonl"}
    assert doc["outputs"]["flow_log"] == str(out)


def test_hand_rule_counters_and_rule_stats(hand, tmp_path):
    w, cap, frames = hand
    n = [len(f) for f in frames]
    r = run("replay", cap, "--world", w, "--json", "--rule-stats")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    rc = doc["rule_counters"]
    assert set(rc) == {"default", "conntrack", "conntrack-related", "conntrack-full", "r-http",
                       "r-ssh-reject", "r-udp-reject", "r-udp6-reject", "r-https-log", "r-db",
                       "sg-web:eg:0", "sg-web:eg:1", "sg-db:eg:0", "sg-db:eg:1"}
    assert rc["r-ssh-reject"] == {"packets": 3, "bytes": n[2] + n[3] + n[8]}
    assert rc["r-http"] == {"packets": 1, "bytes": n[0]}
    assert rc["conntrack"] == {"packets": 2, "bytes": n[1] + n[10]}   # the SYN-ACK, the ACK
    assert rc["r-db"] == {"packets": 1, "bytes": n[6]}
    assert rc["sg-web:eg:0"] == {"packets": 1, "bytes": n[6]}
    assert rc["default"] == {"packets": 1, "bytes": n[7]}
    assert rc["conntrack-full"] == {"packets": 0, "bytes": 0}
    checks = sum(sum(sum(c.values()) for c in d.values()) for d in doc["instances"].values())
    assert sum(v["packets"] for v in rc.values()) == checks == 12
    # the table: every rule, busiest first, and the total
    assert said(r, "Rule counters (14 rules and reasons)", "rule", "packets", "bytes",
                f"r-ssh-reject │ 3 │ {n[2] + n[3] + n[8]}", "conntrack-full │ 0 │ 0", "total │ 12")
    assert r.stderr.index("r-ssh-reject") < r.stderr.index("r-http")
    # without --json the table replaces the top-10 list
    r = run("replay", cap, "--world", w, "--rule-stats")
    assert r.exit_code == 0 and r.stdout == "" and said(r, "Rule counters", "Verdicts")
    assert "Deciding rules" not in r.stderr


# ---------------------------------------------------------------------------------------
# REJECT answers, parsed back with scapy
# ---------------------------------------------------------------------------------------
def ones_complement(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def checksum_ok(data: bytes) -> bool:
    return ones_complement(data) == 0xFFFF


def l4_checksum_ok(ip_raw: bytes) -> bool:
    """TCP / ICMPv6 checksum with the pseudo header (ICMPv4: over the message alone)."""
    if ip_raw[0] >> 4 == 4:
        ihl = (ip_raw[0] & 15) * 4
        proto, body = ip_raw[9], ip_raw[ihl:]
        if proto == 1:
            return checksum_ok(body)
        pseudo = ip_raw[12:20] + struct.pack("!BBH", 0, proto, len(body))
    else:
        proto, body = ip_raw[6], ip_raw[40:]
        pseudo = ip_raw[8:40] + struct.pack("!IxxxB", len(body), proto)
    return checksum_ok(pseudo + body)


def test_responses_every_field(hand, tmp_path):
    w, cap, frames = hand
    out = tmp_path / "answers.pcap"
    r = run("replay", cap, "--world", w, "--responses", out, "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["verdicts"]["REJECT"] == 5
    assert doc["responses"] == {"written": 5, "rejected": 5}
    reader = RawPcapReader(str(out))
    assert reader.linktype == 101
    assert reader.nano                                # nanosecond timestamps
    answers = [(raw, meta) for raw, meta in reader]
    reader.close()
    assert len(answers) == 5
    rejected = [2, 3, 4, 5, 8]                       # capture order
    for (raw, meta), i in zip(answers, rejected):
        # each answer carries its packet's timestamp (meta.usec holds nanoseconds here)
        assert (meta.sec, meta.usec) == (T0 + int(hand_packets()[i][1]),
                                         round(hand_packets()[i][1] % 1 * 1e9))
        assert meta.caplen == meta.wirelen == len(raw)
        assert l4_checksum_ok(raw)
        if raw[0] >> 4 == 4:
            assert checksum_ok(raw[:20])
    # TCP SYN (no ACK): RST+ACK, seq 0, ack = seq + 0 payload + 1 (SYN)
    a = IP(answers[0][0])
    assert (a.src, a.dst, a.ttl, a.proto, a.flags) == (WEB, OUT, 64, 6, "DF")
    assert (a[TCP].sport, a[TCP].dport, a[TCP].flags, a[TCP].seq, a[TCP].ack) == (
        22, 40001, "RA", 0, 1001)
    assert (a[TCP].window, a[TCP].dataofs, len(a[TCP].payload)) == (0, 5, 0)
    # TCP with ACK: RST, seq = its ack, ack 0
    a = IP(answers[1][0])
    assert (a[TCP].sport, a[TCP].dport, a[TCP].flags, a[TCP].seq, a[TCP].ack) == (
        22, 40002, "R", 777, 0)
    # FIN with 3 bytes, no ACK: ack = 10 + 3 + 1 (FIN)
    a = IP(answers[4][0])
    assert (a[TCP].flags, a[TCP].seq, a[TCP].ack) == ("RA", 0, 14)
    # UDP over IPv4: ICMP 3/13 quoting the IP header and 8 bytes of payload
    a = IP(answers[2][0])
    assert (a.src, a.dst, a.proto, a[ICMP].type, a[ICMP].code) == (WEB, OUT, 1, 3, 13)
    ip4 = frames[4][14:]
    assert answers[2][0][28:] == ip4[:28]
    assert len(answers[2][0]) == 20 + 8 + 28 == a.len
    # UDP over IPv6: ICMPv6 1/1 quoting as much as fits in 1280 bytes
    raw6 = answers[3][0]
    a = IPv6(raw6)
    assert (a.src, a.dst, a.nh, a.hlim) == (WEB6, OUT6, 58, 64)
    assert (raw6[40], raw6[41]) == (1, 1)
    assert len(raw6) == 1280 and a.plen == 1240
    assert raw6[48:] == frames[5][14:][:1232]


def test_no_rejects_gives_an_empty_capture(hand, tmp_path):
    w, _, _ = hand
    cap = tmp_path / "ok.pcap"
    f = ETH / IP(src=OUT, dst=WEB) / TCP(sport=1, dport=80, flags="S")
    f.time = T0
    wrpcap(str(cap), [f])
    out = tmp_path / "answers.pcap"
    assert run("replay", cap, "--world", w, "--responses", out).exit_code == 0
    reader = RawPcapReader(str(out))
    assert reader.linktype == 101 and list(reader) == []
    reader.close()


# ---------------------------------------------------------------------------------------
# generated traffic against the reference
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gen(tmp_path_factory):
    d = tmp_path_factory.mktemp("gen")
    wd = generate_world(120, 12, 30, deny_share=0.3, ipv6_share=0.3, seed=12)
    wd["logging"] = {"drops": True, "accepts": True, "aggregation_interval": 1,
                     "max_records": 150}
    world = World.from_dict(wd)
    w = d / "world.json"
    w.write_text(json.dumps(wd))
    batch = generate_traffic(world, 3000, drop_share=0.2, seed=5)
    path = d / "gen.pcap"
    write_capture(path, batch)
    return world, w, path, read_capture(path)


def reference(world, batch, stateful=True):
    """The reference's flow records, check events and final world for ``batch``."""
    state = NaiveState(stateful=stateful)
    live = []
    naive_replay(world, packets_from_batch(batch), state, live=live)
    records = naive_flow_log(live[0], state.events)
    return records, state.events, live[0]


def events_of_rows(world, batch, rows):
    """The check events the contract derives from verdict CSV rows (verdict, egress rule,
    ingress rule): the flow log and counters of a replay, separated from how its verdicts
    were found (tracking is tested against the reference elsewhere)."""
    events = []
    for i, (pkt, (verdict, egress, ingress)) in enumerate(zip(packets_from_batch(batch), rows)):
        for direction, rule, addr in (("egress", egress, pkt.src), ("ingress", ingress, pkt.dst)):
            if not rule:
                continue
            inst = owner_of(world, addr)
            result = "ACCEPT" if direction == "egress" and (ingress or verdict == "ACCEPT") \
                else verdict
            events.append(CheckEvent(
                i, inst.id, direction, result, rule, ts_ns=pkt.ts_ns, wirelen=pkt.wirelen,
                proto=pkt.proto, src=pkt.src, dst=pkt.dst, sport=pkt.sport, dport=pkt.dport,
                account=inst.owner, rule_log=rule_has_log(world, inst, direction, rule)))
    return events


def read_rows(path):
    lines = Path(path).read_text().splitlines()[1:]
    return [tuple(x.split(",")[1:]) for x in lines]


def test_generated_flow_log_matches_reference(gen, tmp_path):
    world, w, path, batch = gen
    v = tmp_path / "v.csv"
    for fmt in ("aws", "jsonl"):
        out = tmp_path / f"fl.{fmt}"
        r = run("replay", path, "--world", w, "--flow-log", out, "--log-format", fmt, "--json",
                "--chunk-packets", 700, "--verdicts", v)
        assert r.exit_code == 0, r.output
        events = events_of_rows(world, batch, read_rows(v))
        records = naive_flow_log(world, events)
        lines = naive_aws_lines(records) if fmt == "aws" else naive_jsonl_lines(records)
        assert out.read_text() == "".join(x + "\n" for x in lines), fmt
    assert any(x["log_status"] == "SKIPDATA" for x in records)     # max_records reached
    doc = json.loads(r.stdout)
    fl = doc["flow_log"]
    skipped = sum(x["packets"] for x in records if x["log_status"] == "SKIPDATA")
    assert fl["skipped_packets"] == skipped > 0
    assert fl["ok_packets"] + fl["skipped_packets"] == fl["logged_events"] == len(events)
    assert fl["records"] == len(records) and fl["ok_records"] == 150
    counters = naive_rule_counters(world, events)
    assert {k: (v["packets"], v["bytes"]) for k, v in doc["rule_counters"].items()} == counters
    assert sum(v["packets"] for v in doc["rule_counters"].values()) == len(events)


@pytest.mark.parametrize("stateful", [True, False], ids=["stateful", "stateless"])
def test_generated_flow_log_end_to_end(gen, tmp_path, stateful):
    """Verdicts, flow log and counters of a whole replay against the reference's."""
    world, w, path, batch = gen
    records, events, after = reference(world, batch, stateful=stateful)
    out = tmp_path / "fl.log"
    r = run("replay", path, "--world", w, "--flow-log", out, "--json",
            *(() if stateful else ("--stateless",)))
    assert r.exit_code == 0, r.output
    assert out.read_text() == "".join(x + "\n" for x in naive_aws_lines(records))
    doc = json.loads(r.stdout)
    assert {k: (v["packets"], v["bytes"]) for k, v in doc["rule_counters"].items()} == \
        naive_rule_counters(after, events)


def test_library_replay_outputs_and_chunking(gen, tmp_path):
    world, _, path, batch = gen
    docs = []
    for chunk in (3000, 257):
        d = tmp_path / str(chunk)
        d.mkdir()
        s = R.replay(world, [path], chunk_packets=chunk, flow_log=d / "fl.log",
                     responses=d / "r.pcap", verdicts=d / "v.csv")
        docs.append(s.to_dict())
        assert s.responses["written"] == s.verdicts["REJECT"] > 0
        assert len(read_capture(d / "r.pcap")) == s.verdicts["REJECT"]
    a, b = docs
    for key in ("verdicts", "instances", "rule_counters", "flow_log", "responses"):
        assert a[key] == b[key], key
    for name in ("fl.log", "r.pcap", "v.csv"):
        assert (tmp_path / "3000" / name).read_bytes() == (tmp_path / "257" / name).read_bytes()


def test_flow_log_status_line(gen, tmp_path):
    _, w, path, _ = gen
    r = run("replay", path, "--world", w, "--stateless", "--flow-log", tmp_path / "fl.log")
    assert r.exit_code == 0, r.output
    assert said(r, "flow log written to", "records of", "past max_records (SKIPDATA)")


# ---------------------------------------------------------------------------------------
# failures leave nothing behind
# ---------------------------------------------------------------------------------------
def test_failed_replay_writes_nothing(hand, tmp_path):
    w, cap, _ = hand
    bad = tmp_path / "bad.pcap"
    data = bytearray(Path(cap).read_bytes())
    pos = 24
    for _ in range(5):                                          # record 5: an absurd caplen
        pos += 16 + int.from_bytes(data[pos + 8:pos + 12], "little")
    data[pos + 8:pos + 12] = (1 << 30).to_bytes(4, "little")
    bad.write_bytes(bytes(data))
    outs = [tmp_path / "fl.log", tmp_path / "r.pcap", tmp_path / "v.csv"]
    r = run("replay", cap, bad, "--world", w, "--flow-log", outs[0], "--responses", outs[1],
            "--verdicts", outs[2], "--chunk-packets", 2)
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pcap"]


def test_bad_log_format_and_unwritable_paths(hand, tmp_path):
    w, cap, _ = hand
    r = run("replay", cap, "--world", w, "--flow-log", tmp_path / "x", "--log-format", "csv")
    assert r.exit_code == 2 and "csv" in r.output
    r = run("replay", cap, "--world", w, "--flow-log", tmp_path / "no" / "fl.log")
    assert r.exit_code == 2 and said(r, "cannot write")
    r = run("replay", cap, "--world", w, "--responses", tmp_path / "no" / "r.pcap")
    assert r.exit_code == 2 and said(r, "cannot write")
    with pytest.raises(R.ReplayError, match="unknown flow-log format"):
        R.replay(World.from_dict(WORLD), [cap], flow_log=tmp_path / "f", log_format="xml")
    assert list(tmp_path.iterdir()) == []


def test_check_totals_catches_disagreements():
    base = dict(packets=2, verdicts={"ACCEPT": 1, "REJECT": 1}, captures=[{"records": 2}],
                rule_counters={"default": {"packets": 3, "bytes": 1}})
    R.check_totals(R.ReplaySummary(**base), checks=3)
    with pytest.raises(RuntimeError, match="rule counters hold 3 checks, the instances 4"):
        R.check_totals(R.ReplaySummary(**base), checks=4)
    fl = {"ok_packets": 1, "skipped_packets": 1, "logged_events": 3}
    with pytest.raises(RuntimeError, match="flow log's records hold 1 packets"):
        R.check_totals(R.ReplaySummary(**base, flow_log=fl))
    with pytest.raises(RuntimeError, match="2 REJECT answers written for 1"):
        R.check_totals(R.ReplaySummary(**base, responses={"written": 2, "rejected": 1}))
