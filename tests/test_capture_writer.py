"""pcap writers: PcapWriter, copy_records (replay --split) and write_raw_ip."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import CookedLinux, Ether

from capture_reference import PcapngBuilder, frames, pcap_bytes
from fastsg.capture import PcapWriter, copy_records, read_capture, write_raw_ip
from fastsg.schema import FIELD_NAMES

logging.getLogger("scapy").setLevel(logging.ERROR)

PCAPS = Path(__file__).resolve().parents[2] / "shared" / "data" / "pcaps"
T0 = 1_700_000_000_123_456_789

PKTS = [bytes(Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1, dport=2)),
        bytes(Ether() / IPv6(src="::1", dst="::2") / UDP(sport=3, dport=4) / b"abc"),
        bytes(Ether() / IP(src="1.1.1.1", dst="2.2.2.2") / ICMP(id=5)),
        b""]


def _compare_rows(a, ia, b, ib):
    """Every column except rec_offset equal between records a[ia] and b[ib]."""
    for name in FIELD_NAMES:
        if name != "rec_offset":
            np.testing.assert_array_equal(a.columns[name][ia], b.columns[name][ib], err_msg=name)


@pytest.mark.parametrize("nanosecond", [True, False])
def test_write_and_read_back(tmp_path, nanosecond):
    path = tmp_path / "w.pcap"
    with PcapWriter(path, linktype=1, nanosecond=nanosecond) as w:
        for i, p in enumerate(PKTS):
            w.write(p, T0 + i, wirelen=len(p) + i)
    assert w.count == len(PKTS)
    batch = read_capture(path)
    scale = 1 if nanosecond else 1000
    assert batch.ts.tolist() == [(T0 + i) // scale * scale for i in range(len(PKTS))]
    assert batch.wirelen.tolist() == [len(p) + i for i, p in enumerate(PKTS)]
    assert batch.caplen.tolist() == [len(p) for p in PKTS]
    assert (batch.linktype == 1).all()
    assert [d for d, *_ in frames(path)] == PKTS           # the reference reads it too


def test_write_many_equals_write(tmp_path):
    rng = np.random.default_rng(1)
    pkts = [bytes(rng.integers(0, 256, int(n), dtype=np.uint8)) for n in
            rng.integers(0, 300, 500)]
    ts = rng.integers(0, 2**62, len(pkts)).astype(np.int64) // 4
    wl = np.array([len(p) + 4 for p in pkts], np.uint32)
    one, many = tmp_path / "one.pcap", tmp_path / "many.pcap"
    with PcapWriter(one, 228) as w:
        for p, t, n in zip(pkts, ts.tolist(), wl.tolist()):
            w.write(p, t, n)
    buf = np.frombuffer(b"".join(pkts), np.uint8)
    offsets = np.concatenate(([0], np.cumsum([len(p) for p in pkts])))
    with PcapWriter(many, 228) as w:
        w.write_many(buf, offsets, ts, wl)
        w.write_many(buf, offsets[:1], ts[:0], wl[:0])            # nothing: a no-op
    assert one.read_bytes() == many.read_bytes()
    # offsets not starting at 0, and default wire lengths
    with PcapWriter(many, 228) as w:
        w.write_many(buf, offsets[10:21], ts[10:20])
    batch = read_capture(many)
    assert batch.caplen.tolist() == batch.wirelen.tolist() == [len(p) for p in pkts[10:20]]


def test_writer_rejects_bad_input(tmp_path):
    with PcapWriter(tmp_path / "x.pcap", 1) as w:
        with pytest.raises(ValueError):
            w.write(b"x", -1)
        with pytest.raises(ValueError):
            w.write(b"x", 2**32 * 10**9)
        with pytest.raises(ValueError):
            w.write_many(np.zeros(4, np.uint8), np.array([0, 2, 4]), np.zeros(1, np.int64))
        with pytest.raises(ValueError):
            w.write_many(np.zeros(4, np.uint8), np.array([0, 3, 2]), np.zeros(2, np.int64))


@pytest.mark.skipif(not PCAPS.exists(), reason=f"sample captures not found: {PCAPS}")
@pytest.mark.parametrize("name", ["appneta-tcpreplay_test.pcap",
                                  "seladb-PcapPlusPlus_nanosecs_big_endian.pcap"])
def test_copy_records_keeps_original_bytes(tmp_path, name):
    src = PCAPS / name
    batch = read_capture(src)
    mask = np.arange(len(batch)) % 3 != 1
    out = copy_records(src, batch, mask, tmp_path / "split.pcap")
    assert list(out) == [int(batch.linktype[0])]
    copied = read_capture(out[int(batch.linktype[0])])
    sel = np.flatnonzero(mask)
    assert len(copied) == len(sel)
    _compare_rows(copied, slice(None), batch, sel)
    src_frames = frames(src)
    assert [d for d, *_ in frames(out[int(batch.linktype[0])])] == [src_frames[i][0] for i in sel]


def test_copy_records_mixed_link_types(tmp_path):
    b = PcapngBuilder().shb().idb(1, tsresol=9).idb(113, tsresol=6)
    sll = bytes(CookedLinux(proto=0x800) / IP() / UDP())
    for i in range(7):
        b.epb(i % 2, PKTS[0] if i % 2 == 0 else sll, T0 + i if i % 2 == 0 else 1000 + i)
    src = tmp_path / "mixed.pcapng"
    src.write_bytes(b.bytes())
    batch = read_capture(src)
    out = copy_records(src, batch, np.ones(len(batch), bool), tmp_path / "split.pcap")
    # the majority link type takes the requested name; the others get a suffix
    assert out == {1: str(tmp_path / "split.pcap"), 113: str(tmp_path / "split.linktype113.pcap")}
    for lt, path in out.items():
        part = read_capture(path)
        sel = np.flatnonzero(batch.linktype == lt)
        _compare_rows(part, slice(None), batch, sel)
    empty = copy_records(src, batch, np.zeros(len(batch), bool), tmp_path / "none.pcap")
    assert list(empty) == [1] and len(read_capture(empty[1])) == 0


def test_copy_records_checks_the_source(tmp_path):
    src = tmp_path / "a.pcap"
    src.write_bytes(pcap_bytes([(PKTS[0], T0)] * 3))
    batch = read_capture(src)
    small = tmp_path / "b.pcap"
    small.write_bytes(pcap_bytes([(PKTS[0], T0)]))
    with pytest.raises(ValueError, match="outside the file"):
        copy_records(small, batch, np.ones(3, bool), tmp_path / "out.pcap")


def test_write_raw_ip(tmp_path):
    answers = [bytes(IP(src="10.0.0.2", dst="10.0.0.1") / TCP(sport=80, dport=1234, flags="R")),
               bytes(IPv6(src="::2", dst="::1") / UDP(sport=53, dport=9))]
    path = tmp_path / "answers.pcap"
    write_raw_ip(path, answers, [T0, T0 + 1])
    batch = read_capture(path)
    assert (batch.linktype == 101).all() and batch.ipver.tolist() == [4, 6]
    assert batch.sport.tolist() == [80, 53] and batch.tcp_flags[0] == 4
    assert batch.ts.tolist() == [T0, T0 + 1]
    write_raw_ip(path, [], [])
    assert len(read_capture(path)) == 0
