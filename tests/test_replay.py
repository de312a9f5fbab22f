"""``fastsg.replay``: verdict CSV, split captures, summary tallies and the timeline, checked
against the reference (``naive.py``) on generated traffic and on the sample captures.

Stateless mode here (the reference's stateless classifier); stateful replays, flow logs,
rule counters and REJECT answers: test_replay_flowlog.py.
"""
from __future__ import annotations

import collections
import csv
import io
import ipaddress
from pathlib import Path

import numpy as np
import pytest

from fastsg import CaptureError, World
from fastsg import replay as R
from fastsg.capture import iter_capture, read_capture
from fastsg.generate import generate_traffic, generate_world
from fastsg.packet_build import write_capture
from fastsg.schema import STATUS_MALFORMED, STATUS_NON_IP

try:
    from naive import NaiveState, naive_classify, naive_replay, packets_from_batch
except ImportError:                                     # tests/ imported as a package
    from tests.naive import NaiveState, naive_classify, naive_replay, packets_from_batch

ROOT = Path(__file__).resolve().parents[1]
# bundled captures (pcaps/), and the shared sample set laid beside the clone in CI
SAMPLE_DIRS = [ROOT / "pcaps", ROOT.parent / "shared" / "data" / "pcaps"]
SAMPLES = sorted(p for d in SAMPLE_DIRS if d.is_dir() for p in d.iterdir()
                 if p.suffix in (".pcap", ".pcapng") and p.stat().st_size < 1 << 20)
VERDICTS = ("ACCEPT", "DROP", "REJECT", "UNMANAGED", "MALFORMED")
T0 = 1_700_000_000 * 10**9


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------
def read_csv(path) -> list[tuple]:
    """(verdict, egress or None, ingress or None) per row; checks the header and indexes."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["index", "verdict", "egress_rule", "ingress_rule"]
    assert [int(r[0]) for r in rows[1:]] == list(range(len(rows) - 1))
    return [(r[1], r[2] or None, r[3] or None) for r in rows[1:]]


def expected(world, batch, timeline: bool = False):
    """The reference's rows and check events for ``batch``."""
    state = NaiveState()
    packets = packets_from_batch(batch)
    results = (naive_replay(world, packets, state) if timeline
               else naive_classify(world, packets, state))
    return [r.as_tuple() for r in results], state.events


def record_bytes(path, batch) -> list[bytes]:
    """The captured bytes of every record of ``batch`` (read from ``path``)."""
    data = Path(path).read_bytes()
    return [data[o:o + c] for o, c in zip(batch.rec_offset.tolist(), batch.caplen.tolist())]


def world_for(batch, seed: int = 0) -> World:
    """A world whose instances own the busiest addresses of ``batch``, with rules that
    accept, drop and reject some of its traffic (so every verdict can occur)."""
    ip = batch.status == 0
    counts = collections.Counter()
    for side in ("src", "dst"):
        for ver, hi, lo in zip(batch.ipver[ip].tolist(), batch.columns[side + "_hi"][ip].tolist(),
                               batch.columns[side + "_lo"][ip].tolist()):
            counts[(ver, hi, lo)] += 1
    v4 = [ipaddress.IPv4Address(lo) for (ver, hi, lo), _ in counts.most_common() if ver == 4][:6]
    v6 = [ipaddress.IPv6Address(hi << 64 | lo) for (ver, hi, lo), _ in counts.most_common()
          if ver == 6][:4]
    groups = [
        {"id": "sg-web", "name": "web", "ingress": [
            {"protocol": "tcp", "ports": "80-443", "cidr": "0.0.0.0/0"},
            {"protocol": "tcp", "ports": "1024-65535", "cidr": "::/0"},
            {"protocol": "icmp", "cidr": "0.0.0.0/0"},
            {"protocol": "udp", "ports": 53, "cidr": "0.0.0.0/0", "action": "reject"}]},
        {"id": "sg-peers", "name": "peers", "ingress": [
            {"protocol": "all", "group": "sg-peers"},
            {"protocol": "tcp", "ports": 22, "cidr": "0.0.0.0/0", "action": "deny"}]},
        {"id": "sg-closed", "name": "closed", "ingress": [], "egress": [
            {"protocol": "tcp", "ports": 443, "cidr": "0.0.0.0/0"}]},
    ]
    lists = [["sg-web"], ["sg-web", "sg-peers"], ["sg-closed"], ["sg-peers"]]
    instances = []
    for k, addr in enumerate(v4):
        inst = {"id": f"i-{k}", "private_ip": str(addr), "groups": lists[(k + seed) % 4]}
        if k < len(v6):
            inst["private_ipv6"] = str(v6[k])
        instances.append(inst)
    for k in range(len(v4), len(v6)):           # IPv6-only captures
        instances.append({"id": f"i-{k}", "private_ip": f"192.0.2.{k + 1}",
                          "private_ipv6": str(v6[k]), "groups": lists[k % 4]})
    return World.from_dict({"version": 1, "security_groups": groups, "instances": instances})


def world_dict_two_hosts(timeline=None, ingress=None) -> dict:
    """Instances A 10.0.0.1 and B 10.0.0.2; B's group admits nothing unless told."""
    d = {"version": 1,
         "security_groups": [
             {"id": "sg-a", "name": "a", "ingress": []},
             {"id": "sg-b", "name": "b", "ingress": ingress or []}],
         "instances": [
             {"id": "i-a", "private_ip": "10.0.0.1", "groups": ["sg-a"]},
             {"id": "i-b", "private_ip": "10.0.0.2", "groups": ["sg-b"]}]}
    if timeline:
        d["timeline"] = timeline
    return d


def packets(specs):
    """A batch from (src, dst, dport, ts_seconds_offset) tuples, TCP SYNs."""
    src, dst, dport, ts = zip(*specs)
    return generate_batch(list(src), list(dst), list(dport), list(ts))


def generate_batch(src, dst, dport, ts):
    from fastsg import PacketBatch
    return PacketBatch.from_arrays(src, dst, 6, sport=40000, dport=dport, tcp_flags=2,
                                   ts=np.array([T0 + int(t * 1e9) for t in ts], np.int64),
                                   wirelen=60)


# ---------------------------------------------------------------------------------------
# fixtures: a generated world and capture (with non-IP and malformed records)
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gen(tmp_path_factory):
    d = tmp_path_factory.mktemp("gen")
    world = World.from_dict(generate_world(120, 12, 30, deny_share=0.25, ipv6_share=0.3,
                                           seed=7))
    batch = generate_traffic(world, 3000, drop_share=0.2, seed=5, stateful=False)
    status = batch.status.copy()
    status[::97] = STATUS_NON_IP          # ARP frames: UNMANAGED
    status[5::89] = STATUS_MALFORMED      # cut IPv4 headers: MALFORMED
    batch.columns["status"][:] = status
    path = d / "gen.pcap"
    write_capture(path, batch)
    return world, path, read_capture(path)


def raw_copy(batch, path, n):
    """Write the first ``n`` records of ``batch`` that raw IP can carry (no ARP) as a raw-IP
    capture; returns their indexes in ``batch``."""
    idx = np.flatnonzero(batch.status != STATUS_NON_IP)[:n]
    write_capture(path, batch.take(idx), link="raw")
    return idx.tolist()


def replay_one(world, paths, tmp_path, name="out", **kw):
    kw.setdefault("stateful", False)
    csv_path = tmp_path / f"{name}.csv"
    summary = R.replay(world, [paths] if isinstance(paths, (str, Path)) else paths,
                       verdicts=csv_path, **kw)
    return summary, read_csv(csv_path)


# ---------------------------------------------------------------------------------------
# verdict CSV and summary against the reference
# ---------------------------------------------------------------------------------------
def test_generated_capture_matches_reference(gen, tmp_path):
    world, path, batch = gen
    summary, rows = replay_one(world, path, tmp_path)
    want, events = expected(world, batch)
    assert len(rows) == len(batch) == summary.packets == summary.captures[0]["records"]
    assert rows == want
    assert set(summary.verdicts) == set(VERDICTS)
    assert sum(summary.verdicts.values()) == summary.packets
    assert summary.verdicts == {v: sum(1 for w in want if w[0] == v) for v in VERDICTS}
    assert summary.verdicts["UNMANAGED"] > 0 and summary.verdicts["MALFORMED"] > 0
    assert summary.verdicts["DROP"] > 0 and summary.verdicts["ACCEPT"] > 0
    check_tallies(summary, events, batch)


def check_tallies(summary, events, batch):
    """Per-instance and per-rule counts equal the reference's check events."""
    inst = collections.defaultdict(lambda: {d: collections.Counter() for d in R.DIRECTIONS})
    rules = collections.defaultdict(lambda: [0, 0])
    for ev in events:
        inst[ev.instance][ev.direction][ev.result] += 1
        rules[ev.rule][0] += 1
        rules[ev.rule][1] += int(batch.wirelen[ev.packet_index])
    got = {i: {d: {v: n for v, n in c.items() if n} for d, c in dirs.items()}
           for i, dirs in summary.instances.items()}
    assert got == {i: {d: dict(c) for d, c in dirs.items()} for i, dirs in inst.items()}
    assert {k: [v["packets"], v["bytes"]] for k, v in summary.rule_counters.items()
            if v["packets"]} == dict(rules)
    assert "default" in summary.rule_counters and "conntrack" in summary.rule_counters


def test_json_document(gen, tmp_path):
    world, path, _ = gen
    doc = R.replay(world, [path], stateful=False).to_dict()
    for key in ("packets", "verdicts", "captures", "instances", "rule_counters",
                "elapsed_seconds", "packets_per_second"):
        assert key in doc
    cap = doc["captures"][0]
    assert {"path", "records", "truncated", "clamped_timestamps"} <= set(cap)
    assert cap["path"] == str(path) and cap["truncated"] == 0
    assert doc["packets_per_second"] > 0


@pytest.mark.skipif(not SAMPLES, reason="no sample captures (pcaps/ or shared/data/pcaps)")
@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.name)
def test_sample_captures(sample, tmp_path):
    it = iter_capture(sample)
    batch = it.read_all()
    world = world_for(batch)
    summary, rows = replay_one(world, sample, tmp_path)
    assert len(rows) == it.stats.records == summary.packets
    assert rows == expected(world, batch)[0]
    assert sum(summary.verdicts.values()) == summary.packets


def test_world_not_mutated_and_summary_checked(gen):
    world, path, _ = gen
    before = world.to_dict()
    R.replay(world, [path], stateful=False)
    assert world.to_dict() == before
    bad = R.ReplaySummary(packets=3, verdicts={"ACCEPT": 1, "DROP": 1}, captures=[{"records": 3}])
    with pytest.raises(RuntimeError, match="add up to 2"):
        R.check_totals(bad, 3)
    good = R.ReplaySummary(packets=3, verdicts={"ACCEPT": 2, "DROP": 1}, captures=[{"records": 3}])
    R.check_totals(good, 3, 3)
    with pytest.raises(RuntimeError, match="rows written"):
        R.check_totals(good, 2)
    with pytest.raises(RuntimeError, match="records split"):
        R.check_totals(good, 3, 4)
    with pytest.raises(RuntimeError, match="yielded 4 records"):
        R.check_totals(R.ReplaySummary(packets=3, verdicts={"DROP": 3},
                                       captures=[{"records": 4}]))


# ---------------------------------------------------------------------------------------
# chunking and several captures
# ---------------------------------------------------------------------------------------
def test_chunking_gives_identical_output(gen, tmp_path):
    world, path, batch = gen
    # (each chunk costs two parallel-kernel launches, so the tiniest chunks run on a
    # 300-record capture)
    small = tmp_path / "small.pcap"
    write_capture(small, batch.take(slice(0, 300)))
    for cap, chunk in ((path, 250), (small, 7), (small, 1)):
        whole, _ = replay_one(world, cap, tmp_path, "whole")
        chunked, _ = replay_one(world, cap, tmp_path, "chunked", chunk_packets=chunk)
        assert (tmp_path / "whole.csv").read_bytes() == (tmp_path / "chunked.csv").read_bytes()
        a, b = whole.to_dict(), chunked.to_dict()
        for key in ("packets", "verdicts", "instances", "rule_counters", "captures"):
            assert a[key] == b[key], key


def test_several_captures_in_order(gen, tmp_path):
    world, path, batch = gen
    # the second capture: 500 records of the generated one, as raw IP
    second = tmp_path / "second.pcap"
    idx = raw_copy(batch, second, 500)
    summary, rows = replay_one(world, [path, second], tmp_path)
    want = expected(world, batch)[0]
    assert rows == want + [want[i] for i in idx]
    assert [c["path"] for c in summary.captures] == [str(path), str(second)]
    assert [c["records"] for c in summary.captures] == [len(batch), 500]
    assert summary.packets == len(batch) + 500


# ---------------------------------------------------------------------------------------
# split captures
# ---------------------------------------------------------------------------------------
def test_split_original_bytes(gen, tmp_path):
    world, path, batch = gen
    second = tmp_path / "raw.pcap"                     # a second link type (raw IP)
    idx = raw_copy(batch, second, 300)
    summary, rows = replay_one(world, [path, second], tmp_path, split_dir=tmp_path / "split")
    originals = record_bytes(path, batch) + record_bytes(second, read_capture(second))
    ts = np.concatenate([batch.ts, batch.ts[idx]])
    wirelen = np.concatenate([batch.wirelen, read_capture(second).wirelen])
    lts = [1] * len(batch) + [101] * 300
    for verdict, name in R.SPLIT_FILES.items():
        want = [i for i, r in enumerate(rows) if r[0] == verdict.name]
        assert summary.verdicts[verdict.name] == len(want)
        for lt in (1, 101):
            sel = [i for i in want if lts[i] == lt]
            f = tmp_path / "split" / (name if lt == 1 else name.replace(".pcap", ".linktype101.pcap"))
            if not sel and lt == 101:
                assert not f.exists()
                continue
            got = read_capture(f)
            assert len(got) == len(sel), (name, lt)
            assert record_bytes(f, got) == [originals[i] for i in sel]
            assert got.ts.tolist() == ts[sel].tolist()
            assert got.wirelen.tolist() == wirelen[sel].tolist()
            assert set(got.linktype.tolist()) <= {lt}
    assert sorted(p.name for p in (tmp_path / "split").iterdir()
                  if not p.name.startswith(".")) == sorted(
        [n for n in R.SPLIT_FILES.values()]
        + [n.replace(".pcap", ".linktype101.pcap") for v, n in R.SPLIT_FILES.items()
           if any(rows[i][0] == v.name for i in range(len(batch), len(rows)))])


@pytest.mark.skipif(not any(p.suffix == ".pcapng" for p in SAMPLES), reason="no pcapng sample")
def test_split_from_pcapng(tmp_path):
    sample = next(p for p in SAMPLES if p.suffix == ".pcapng")
    batch = read_capture(sample)
    world = world_for(batch)
    summary = R.replay(world, [sample], stateful=False, split_dir=tmp_path / "s")
    originals = record_bytes(sample, batch)
    total = 0
    for paths in summary.outputs["split"].values():
        for f in paths:
            got = read_capture(f) if Path(f).stat().st_size > 24 else None
            if got is not None:
                total += len(got)
                assert all(b in originals for b in record_bytes(f, got))
    assert total == len(batch)


# ---------------------------------------------------------------------------------------
# timeline events (spec section 6)
# ---------------------------------------------------------------------------------------
def test_authorize_event_applies_at_the_right_packet(tmp_path):
    at = T0 / 1e9 + 10
    world = World.from_dict(world_dict_two_hosts(timeline=[
        {"at": at, "authorize": {"group": "sg-b", "direction": "ingress",
                                 "rule": {"protocol": "tcp", "ports": 22, "cidr": "10.0.0.1/32",
                                          "id": "r-ssh"}}}]))
    # times in seconds after T0: before, before, tie (the event applies before it), after,
    # and an out-of-order late packet (the event has already applied)
    batch = packets([("10.0.0.1", "10.0.0.2", 22, t) for t in (1, 9.999, 10, 11, 5)])
    cap = tmp_path / "t.pcap"
    write_capture(cap, batch)
    for chunk in (1, 2, 100):
        summary, rows = replay_one(world, cap, tmp_path, f"c{chunk}", chunk_packets=chunk)
        assert [r[0] for r in rows] == ["DROP", "DROP", "ACCEPT", "ACCEPT", "ACCEPT"]
        assert rows[0] == ("DROP", "sg-a:eg:0", "default")
        assert rows[2] == ("ACCEPT", "sg-a:eg:0", "r-ssh")
        assert summary.events_applied == 1 and summary.events_pending == 0
        assert rows == expected(world, read_capture(cap), timeline=True)[0]
    assert len(world.pending_events()) == 1          # the caller's world is untouched


def test_many_events_against_reference(tmp_path):
    base = T0 / 1e9
    timeline = [
        {"at": base + 2, "authorize": {"group": "sg-b", "direction": "ingress",
                                       "rule": {"protocol": "tcp", "cidr": "10.0.0.0/24"}}},
        {"at": base + 3, "launch": {"id": "i-c", "private_ip": "10.0.0.3", "groups": ["sg-b"]}},
        {"at": base + 3, "attach": {"instance": "i-a", "group": "sg-b"}},
        {"at": base + 5, "revoke": {"group": "sg-b", "rule_id": "sg-b:in:0"}},
        {"at": base + 6, "terminate": {"instance": "i-b"}},
        {"at": base + 99, "detach": {"instance": "i-a", "group": "sg-b"}},   # after the end
    ]
    world = World.from_dict(world_dict_two_hosts(timeline=timeline))
    rng = np.random.default_rng(3)
    n = 400
    hosts = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "198.51.100.9"]
    src = rng.integers(0, 4, n)
    dst = (src + rng.integers(1, 4, n)) % 4
    # mostly increasing time with jitter (out-of-order packets exercise the running maximum)
    t = np.sort(rng.uniform(0, 8, n)) + rng.uniform(-0.5, 0.5, n) * (rng.random(n) < 0.2)
    batch = packets([(hosts[s], hosts[d], 22, x) for s, d, x in zip(src, dst, t)])
    cap = tmp_path / "m.pcap"
    write_capture(cap, batch)
    read = read_capture(cap)
    want, events = expected(world, read, timeline=True)
    for chunk in (9, 64, 1000):
        summary, rows = replay_one(world, cap, tmp_path, f"m{chunk}", chunk_packets=chunk)
        assert rows == want
        assert summary.events_applied == 5 and summary.events_pending == 1
        check_tallies(summary, events, read)
    assert {"UNMANAGED", "ACCEPT", "DROP"} <= {r[0] for r in want}


def test_event_cuts():
    ts = np.array([1, 5, 3, 7, 7, 2, 9])
    assert R.event_cuts(ts, [0, 1, 2, 5, 6, 7, 8, 10]).tolist() == [0, 0, 1, 1, 3, 3, 6, 7]
    assert R.event_cuts(ts, []).tolist() == []
    assert R.event_cuts(np.zeros(0, np.int64), [4]).tolist() == [0]


# ---------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------
def corrupt_copy(path, dest, record: int = 10) -> int:
    """Copy a classic pcap with record ``record``'s caplen made absurd; returns its offset."""
    data = bytearray(Path(path).read_bytes())
    pos = 24
    for _ in range(record):
        pos += 16 + int.from_bytes(data[pos + 8:pos + 12], "little")
    data[pos + 8:pos + 12] = (1 << 30).to_bytes(4, "little")
    Path(dest).write_bytes(bytes(data))
    return pos


def test_corrupt_capture_names_record_and_offset(gen, tmp_path):
    world, path, _ = gen
    bad = tmp_path / "bad.pcap"
    offset = corrupt_copy(path, bad, record=600)     # after two chunks went out
    out = tmp_path / "v.csv"
    with pytest.raises(CaptureError) as e:
        R.replay(world, [path, bad], stateful=False, verdicts=out, split_dir=tmp_path / "s",
                 chunk_packets=256)
    assert e.value.path == str(bad) and e.value.record == 600 and e.value.offset == offset
    # a failed replay leaves no output behind, not even temporary files
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert list((tmp_path / "s").iterdir()) == []


def test_missing_and_non_capture_files(gen, tmp_path):
    world, path, _ = gen
    with pytest.raises(CaptureError, match="nope.pcap"):
        R.replay(world, [path, tmp_path / "nope.pcap"], stateful=False,
                 verdicts=tmp_path / "v.csv")
    assert not (tmp_path / "v.csv").exists()
    text = tmp_path / "text.pcap"
    text.write_text("hello, world\n")
    with pytest.raises(CaptureError, match="not a pcap or pcapng"):
        R.replay(world, [text], stateful=False)


def test_stateful_is_the_default(gen):
    world, path, _ = gen
    summary = R.replay(world, [path])
    assert summary.stateful and summary.to_dict()["stateful"] is True
    assert sum(summary.verdicts.values()) == summary.packets == 3000


def test_truncated_capture_warns_and_counts(gen, tmp_path):
    world, path, batch = gen
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(Path(path).read_bytes()[:-5])
    seen = []
    summary = R.replay(world, [cut], stateful=False, on_warning=seen.append)
    assert summary.captures[0]["truncated"] == 1
    assert summary.packets == len(batch) - 1
    assert len(seen) == 1 and "truncated" in seen[0] and summary.warnings == seen


# ---------------------------------------------------------------------------------------
# the CSV formatter
# ---------------------------------------------------------------------------------------
def test_csv_formatting_and_quoting():
    names = ["default", "conntrack", "a,b", 'q"uote', "line\nbreak", "sg-1:in:0"]
    table = R.NameTable(names)
    rng = np.random.default_rng(1)
    n = 2500
    verdict = rng.integers(0, 5, n).astype(np.uint8)
    eg = rng.integers(-1, len(names), n).astype(np.int32)
    ing = rng.integers(-1, len(names), n).astype(np.int32)
    for first in (0, 7, 95, 999_990):
        parts = []
        # a tiny buffer: rows are split across writes, and a too-long row grows the buffer
        R.write_verdict_rows(lambda b: parts.append(b.tobytes()), first, verdict, eg, ing,
                             table, buffer=np.empty(8, np.uint8))
        text = b"".join(parts).decode()
        ref = io.StringIO()
        w = csv.writer(ref, lineterminator="\n")
        for i in range(n):
            w.writerow([first + i, VERDICTS[verdict[i]], names[eg[i]] if eg[i] >= 0 else "",
                        names[ing[i]] if ing[i] >= 0 else ""])
        assert text == ref.getvalue()


def test_name_table_only_grows():
    t = R.NameTable(["default", "x"])
    t.extend(("default", "x", "y"))
    assert t.names == ["default", "x", "y"]
    with pytest.raises(RuntimeError):       # names seen so far changed: not an extension
        t.extend(("default", "x", "z", "w"))
