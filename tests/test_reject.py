"""REJECT answers (fastsg.reject): TCP RSTs and ICMP administratively-prohibited unreachables.

Packets are built with scapy; every answer is parsed back with scapy and compared field by
field with the rule of SEMANTICS.md section 5, and byte for byte with the packet scapy
builds from those fields (so scapy recomputes every length and checksum independently).
"""
from __future__ import annotations

import logging

import numpy as np
import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_RR, IPOption_NOP
from scapy.layers.inet6 import (ICMPv6DestUnreach, ICMPv6EchoRequest, IPv6, IPv6ExtHdrHopByHop,
                                in6_chksum)
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from scapy.utils import RawPcapReader, checksum, rdpcap, wrpcap

from fastsg import PacketBatch, read_capture
from fastsg.reject import build_responses, write_responses

logging.getLogger("scapy").setLevel(logging.ERROR)

T0 = 1_700_000_000.0
M32 = 1 << 32
A4, B4 = "10.0.1.5", "198.51.100.7"
A6, B6 = "2001:db8::5", "2001:db8:1::7"


ETH = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")     # no address resolution


def _v4(**kw):
    return IP(src=A4, dst=B4, **kw)


def _v6(**kw):
    return IPv6(src=A6, dst=B6, **kw)


# (name, packet, expected answer): "rst" / "icmp" / None (no answer by default)
CASES = [
    ("tcp-syn", ETH / _v4() / TCP(sport=40000, dport=443, flags="S", seq=1000), "rst"),
    ("tcp-synack", _v4() / TCP(sport=443, dport=40000, flags="SA", seq=5, ack=77), "rst"),
    ("tcp-ack-payload", _v4() / TCP(sport=1, dport=2, flags="A", seq=9, ack=M32 - 1) / (b"d" * 100),
     "rst"),
    ("tcp-psh-nowrap", _v4() / TCP(sport=3, dport=4, flags="P", seq=M32 - 5) / (b"p" * 10), "rst"),
    ("tcp-fin-wrap", _v4() / TCP(sport=5, dport=6, flags="F", seq=M32 - 1), "rst"),
    ("tcp-finack", _v4() / TCP(sport=7, dport=8, flags="FA", seq=123, ack=456), "rst"),
    ("tcp-synfin-wrap", _v4() / TCP(sport=9, dport=10, flags="SF", seq=M32 - 2) / b"abc", "rst"),
    ("tcp-null", _v4() / TCP(sport=11, dport=12, flags=0, seq=42) / (b"n" * 7), "rst"),
    ("tcp-options", _v4(options=[IPOption_NOP()] * 4) / TCP(sport=13, dport=14, flags="S", seq=1,
                                                            options=[("MSS", 1460)]), "rst"),
    ("udp", ETH / _v4() / UDP(sport=5353, dport=53) / (b"q" * 30), "icmp"),
    ("udp-ip-options", _v4(options=[IPOption_RR(routers=["1.2.3.4", "5.6.7.8"])])
     / UDP(sport=1000, dport=2000) / (b"o" * 20), "icmp"),
    ("icmp-echo", _v4() / ICMP(type=8, id=777, seq=3) / (b"e" * 56), "icmp"),
    ("gre-short", _v4(proto=47) / Raw(b"\x00\x00\x08\x00"), "icmp"),
    ("v6-udp", ETH / _v6() / UDP(sport=546, dport=547) / (b"u" * 12), "icmp"),
    ("v6-tcp-syn", _v6() / TCP(sport=50000, dport=22, flags="S", seq=M32 - 1), "rst"),
    ("v6-tcp-ack", _v6() / TCP(sport=22, dport=50000, flags="PA", seq=1, ack=99) / b"x", "rst"),
    ("v6-echo", _v6() / ICMPv6EchoRequest(id=5, seq=6, data=b"ping"), "icmp"),
    ("v6-hbh-udp", _v6() / IPv6ExtHdrHopByHop() / UDP(sport=7, dport=8) / b"hbh", "icmp"),
    ("v6-udp-large", _v6() / UDP(sport=9, dport=10) / (bytes(range(256)) * 12), "icmp"),
    ("v6-udp-fits", _v6() / UDP(sport=11, dport=12) / (b"f" * (1232 - 48)), "icmp"),
    ("v6-udp-one-over", _v6() / UDP(sport=13, dport=14) / (b"g" * (1232 - 47)), "icmp"),
    # no host answers these (RFC 793, RFC 1122 3.2.2, RFC 4443 2.4(e); Linux REJECT)
    ("tcp-rst", _v4() / TCP(sport=15, dport=16, flags="R", seq=31337), None),
    ("icmp-error", _v4() / ICMP(type=3, code=3) / IP(src=B4, dst=A4) / UDP(sport=1, dport=2), None),
    ("v6-icmp-error", _v6() / ICMPv6DestUnreach(code=4) / IPv6(src=B6, dst=A6) / UDP(), None),
    ("v4-nonfirst-fragment", _v4(proto=17, frag=185) / (b"z" * 40), None),
    ("v4-multicast", IP(src=A4, dst="239.1.2.3") / UDP(sport=1, dport=2), None),
    ("v4-broadcast", IP(src=A4, dst="255.255.255.255") / UDP(sport=68, dport=67), None),
    ("v4-unspecified-src", IP(src="0.0.0.0", dst=B4) / UDP(sport=68, dport=67), None),
    ("v6-multicast", IPv6(src=A6, dst="ff02::1") / UDP(sport=1, dport=2), None),
]
NAMES = [c[0] for c in CASES]
PKTS = [c[1] for c in CASES]
for _i, _p in enumerate(PKTS):
    _p.time = T0 + _i * 0.25
PKTS = [p.__class__(bytes(p)) for p in PKTS]       # dissected: every field concrete
for _i, _p in enumerate(PKTS):
    _p.time = T0 + _i * 0.25


def _orig(pkt) -> bytes:
    """The packet's own IP layer (outermost)."""
    layer = pkt.payload if isinstance(pkt, Ether) else pkt
    return bytes(layer)


ORIG = [_orig(p) for p in PKTS]


@pytest.fixture(scope="module")
def batch():
    return PacketBatch.from_scapy(PKTS)


@pytest.fixture(scope="module")
def answers(batch):
    mask = np.ones(len(batch), bool)
    return build_responses(batch, mask, lambda i: ORIG[i])


def _answer(answers, j) -> bytes:
    buf, off, _ = answers
    return bytes(buf[off[j]:off[j + 1]])


# ------------------------------------------------------------------------------------------
# the checks of one answer
# ------------------------------------------------------------------------------------------

def _outer(orig: bytes):
    return IP(orig) if orig[0] >> 4 == 4 else IPv6(orig)


def _check_ip(r: bytes, orig: bytes, proto: int):
    """Common IP checks: version, swapped addresses, TTL/hop limit, length, protocol, and the
    IPv4 header checksum recomputed by scapy."""
    o = _outer(orig)
    if o.version == 4:
        assert r[0] == 0x45
        ip = IP(r)
        assert (ip.src, ip.dst) == (o.dst, o.src)
        assert ip.ttl == 64 and ip.proto == proto and ip.len == len(r) and ip.frag == 0
        assert ip.tos == 0 and ip.id == 0
        assert ip.flags == ("DF" if proto == 6 else 0)
        hdr = IP(r[:20])
        del hdr.chksum
        assert bytes(hdr)[:20] == r[:20], "IPv4 header checksum"
        assert checksum(r[:20]) == 0
        return ip, 20
    ip = IPv6(r)
    assert ip.version == 6 and ip.tc == 0 and ip.fl == 0
    assert (ip.src, ip.dst) == (o.dst, o.src)
    assert ip.hlim == 64 and ip.nh == proto and ip.plen == len(r) - 40
    return ip, 40


def _check_rst(r: bytes, orig: bytes):
    o = _outer(orig)
    ip, h = _check_ip(r, orig, 6)
    assert len(r) == h + 20, "no options, no payload"
    t = ip[TCP]
    ot = o[TCP]
    assert (t.sport, t.dport) == (ot.dport, ot.sport)
    assert t.dataofs == 5 and t.window == 0 and t.urgptr == 0 and t.reserved == 0
    assert len(t.payload) == 0
    oflags = int(ot.flags)
    if oflags & 0x10:                                   # had ACK
        assert int(t.flags) == 0x04
        assert t.seq == ot.ack and t.ack == 0
    else:
        assert int(t.flags) == 0x14
        plen = len(bytes(ot.payload))
        assert t.seq == 0
        assert t.ack == (ot.seq + plen + (oflags >> 1 & 1) + (oflags & 1)) % M32
    # checksums recomputed by scapy
    again = ip.copy()
    if h == 20:
        del again.chksum
    del again[TCP].chksum
    assert bytes(again) == r
    # and the same packet built from scratch by scapy
    ipc = (IP(src=o.dst, dst=o.src, ttl=64, id=0, flags="DF") if h == 20
           else IPv6(src=o.dst, dst=o.src, hlim=64))
    expect = ipc / TCP(sport=ot.dport, dport=ot.sport, seq=t.seq, ack=t.ack, flags=int(t.flags),
                       window=0)
    assert bytes(expect) == r


def _check_icmp(r: bytes, orig: bytes, quoted: bytes | None = None):
    """``quoted``: the bytes the answer must quote (default: from ``orig`` by the rule)."""
    o = _outer(orig)
    v6 = o.version == 6
    ip, h = _check_ip(r, orig, 58 if v6 else 1)
    icmp = r[h:h + 8]
    quote = r[h + 8:]
    if quoted is None:
        if v6:
            quoted = orig[:min(len(orig), 40 + o.plen, 1232)]
        else:
            quoted = orig[:min(o.len, o.ihl * 4 + 8)]
    assert quote == quoted
    if v6:
        assert len(r) <= 1280
        assert (icmp[0], icmp[1]) == (1, 1)
        assert icmp[4:8] == b"\0\0\0\0"
        assert in6_chksum(58, ip, r[40:42] + b"\0\0" + r[44:]) == int.from_bytes(icmp[2:4], "big")
        expect = IPv6(src=o.dst, dst=o.src, hlim=64) / ICMPv6DestUnreach(code=1) / Raw(quote)
    else:
        assert (icmp[0], icmp[1]) == (3, 13)
        assert icmp[4:8] == b"\0\0\0\0"
        assert checksum(r[h:]) == 0
        assert checksum(r[h:h + 2] + b"\0\0" + r[h + 4:]) == int.from_bytes(icmp[2:4], "big")
        expect = IP(src=o.dst, dst=o.src, ttl=64, id=0) / ICMP(type=3, code=13) / Raw(quote)
    assert bytes(expect) == r, "scapy builds the same answer (lengths and checksums)"
    return quote


# ------------------------------------------------------------------------------------------
# tests
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("j", range(len(CASES)), ids=NAMES)
def test_answer(answers, batch, j):
    name, pkt, kind = CASES[j]
    r = _answer(answers, j)
    assert answers[2][j] == batch.ts[j]
    if kind is None:
        assert r == b""
    elif kind == "rst":
        _check_rst(r, ORIG[j])
    else:
        _check_icmp(r, ORIG[j])


def test_shapes_and_timestamps(answers, batch):
    buf, off, ts = answers
    assert buf.dtype == np.uint8 and off.dtype == np.int64 and ts.dtype == np.int64
    assert len(off) == len(batch) + 1 and len(ts) == len(batch) and off[0] == 0
    assert off[-1] == len(buf) and (np.diff(off) >= 0).all()
    np.testing.assert_array_equal(ts, batch.ts)


def test_specific_values(answers):
    """The rule, spelled out for the cases around the 2**32 wrap."""
    def tcp(name):
        return IP(_answer(answers, NAMES.index(name)))[TCP] if not name.startswith("v6") else \
            IPv6(_answer(answers, NAMES.index(name)))[TCP]
    assert (tcp("tcp-syn").seq, tcp("tcp-syn").ack, str(tcp("tcp-syn").flags)) == (0, 1001, "RA")
    assert (tcp("tcp-synack").seq, tcp("tcp-synack").ack, str(tcp("tcp-synack").flags)) == (77, 0, "R")
    assert tcp("tcp-ack-payload").seq == M32 - 1
    assert tcp("tcp-psh-nowrap").ack == 5
    assert tcp("tcp-fin-wrap").ack == 0
    assert tcp("tcp-synfin-wrap").ack == 3
    assert tcp("tcp-null").ack == 49
    assert tcp("v6-tcp-syn").ack == 0 and tcp("v6-tcp-syn").sport == 22
    r = _answer(answers, NAMES.index("udp-ip-options"))
    assert len(r) == 20 + 8 + 32 + 8          # quote: 32-byte header with options + 8
    assert len(_answer(answers, NAMES.index("udp"))) == 20 + 8 + 28
    assert len(_answer(answers, NAMES.index("gre-short"))) == 20 + 8 + 24   # only 4 payload bytes
    assert len(_answer(answers, NAMES.index("v6-udp-large"))) == 1280
    assert len(_answer(answers, NAMES.index("v6-udp-fits"))) == 1280
    fits = _answer(answers, NAMES.index("v6-udp-fits"))
    assert fits[48:] == ORIG[NAMES.index("v6-udp-fits")]          # the whole packet
    over = _answer(answers, NAMES.index("v6-udp-one-over"))
    assert len(over) == 1280 and over[48:] == ORIG[NAMES.index("v6-udp-one-over")][:1232]
    hbh = _answer(answers, NAMES.index("v6-hbh-udp"))
    assert hbh[48:] == ORIG[NAMES.index("v6-hbh-udp")]


def test_no_suppression(batch):
    """suppress=False answers every IP packet, by the same rules."""
    silent = [j for j, c in enumerate(CASES) if c[2] is None]
    mask = np.zeros(len(batch), bool)
    mask[silent] = True
    ans = build_responses(batch, mask, lambda i: ORIG[i], suppress=False)
    for k, j in enumerate(silent):
        r = _answer(ans, k)
        if NAMES[j] == "tcp-rst":
            _check_rst(r, ORIG[j])
            assert str(IP(r)[TCP].flags) == "RA" and IP(r)[TCP].ack == 31337
        else:
            _check_icmp(r, ORIG[j])
    # and with suppression (the default) they are all empty
    buf, off, ts = build_responses(batch, mask, lambda i: ORIG[i])
    assert len(buf) == 0 and (off == 0).all() and len(ts) == len(silent)


def test_mask_subset(batch, answers):
    mask = np.zeros(len(batch), bool)
    picked = sorted(NAMES.index(n) for n in ("udp", "tcp-rst", "v6-tcp-ack", "v6-udp-large"))
    mask[picked] = True
    buf, off, ts = build_responses(batch, mask, lambda i: ORIG[i])
    assert len(off) == 5
    np.testing.assert_array_equal(ts, batch.ts[picked])
    for k, j in enumerate(picked):
        assert bytes(buf[off[k]:off[k + 1]]) == _answer(answers, j)


def test_original_bytes_called_with_batch_rows(batch):
    seen = []

    def orig(i):
        seen.append(i)
        return ORIG[i]
    mask = np.zeros(len(batch), bool)
    mask[[NAMES.index("udp"), NAMES.index("tcp-syn"), NAMES.index("v6-echo")]] = True
    build_responses(batch, mask, orig)
    assert sorted(seen) == sorted([NAMES.index("udp"), NAMES.index("v6-echo")])   # not for RSTs


def test_rebuilt_originals(batch, answers):
    """No original bytes: TCP answers are the same; ICMP answers quote headers rebuilt from
    the columns (IP header + 8 bytes of the L4 header for v4; IP header + L4 header for v6)."""
    mask = np.ones(len(batch), bool)
    ans = build_responses(batch, mask)              # batch carries no data
    also = build_responses(batch, mask, lambda i: None)
    np.testing.assert_array_equal(ans[0], also[0])
    for j, (name, pkt, kind) in enumerate(CASES):
        r = _answer(ans, j)
        if kind != "icmp":
            assert r == _answer(answers, j)
            continue
        o = _outer(ORIG[j])
        quote = r[(48 if o.version == 6 else 28):]
        q = _outer(quote)
        assert (q.src, q.dst) == (o.src, o.dst)
        # the IP length covers the L4 header + l4_payload_len (as the columns say)
        l4 = {6: 20, 17: 8, 1: 8, 58: 8}.get(int(batch.proto[j]), 0)
        if o.version == 4:
            assert q.ihl == 5 and q.proto == o.proto
            assert q.len == 20 + l4 + batch.l4_payload_len[j]
            assert len(quote) == min(28, q.len)
            _check_icmp(r, ORIG[j], quoted=quote)
            if o.proto == 17:
                assert quote[20:24] == bytes(o[UDP])[:4]          # ports
        else:
            assert q.nh == batch.proto[j] and q.plen == l4 + batch.l4_payload_len[j]
            assert len(quote) == 40 + l4
            _check_icmp(r, ORIG[j], quoted=quote)
            if q.nh == 17:
                assert quote[40:44] == bytes(o[UDP])[:4]


def test_unusable_bytes_are_rebuilt(batch):
    mask = np.zeros(len(batch), bool)
    j = NAMES.index("udp")
    mask[j] = True
    rebuilt = build_responses(batch, mask)
    for junk in (b"", b"\x45\x00", b"\x60" + b"\0" * 60, b"\x44" + b"\0" * 40):
        got = build_responses(batch, mask, lambda i: junk)
        np.testing.assert_array_equal(got[0], rebuilt[0])


def test_padding_and_truncation(batch):
    """Link padding after the IP length is never quoted; a truncated capture is quoted as far
    as it goes."""
    mask = np.zeros(len(batch), bool)
    small6, large6, udp4 = (NAMES.index(n) for n in ("v6-udp", "v6-udp-large", "udp"))
    mask[[small6, large6, udp4]] = True
    padded = {small6: ORIG[small6] + b"\xee" * 20, large6: ORIG[large6][:300],
              udp4: ORIG[udp4] + b"\xee" * 20}
    ans = build_responses(batch, mask, padded.get)
    _check_icmp(_answer(ans, 0), ORIG[udp4])
    _check_icmp(_answer(ans, 1), ORIG[small6])
    _check_icmp(_answer(ans, 2), ORIG[large6], quoted=ORIG[large6][:300])
    # a truncated IPv4 capture (shorter than header + 8): what there is
    cut = {udp4: ORIG[udp4][:24]}
    mask = np.zeros(len(batch), bool)
    mask[udp4] = True
    ans = build_responses(batch, mask, cut.get)
    _check_icmp(_answer(ans, 0), ORIG[udp4], quoted=ORIG[udp4][:24])


def test_capture_path_tuple_and_data_forms(tmp_path, batch, answers):
    """Originals from the capture the batch was read from, from arrays, from batch.data."""
    path = tmp_path / "in.pcap"
    frames = [p if isinstance(p, Ether) else ETH / p for p in PKTS]
    wrpcap(str(path), frames)
    cap = read_capture(path)
    assert len(cap) == len(batch)
    mask = np.ones(len(cap), bool)
    want = build_responses(batch, mask, lambda i: ORIG[i])
    got = build_responses(cap, mask, path)
    got_str = build_responses(cap, mask, str(path))
    for g in (got, got_str):
        np.testing.assert_array_equal(g[0], want[0])
        np.testing.assert_array_equal(g[1], want[1])
    raw = np.fromfile(path, np.uint8)
    starts = cap.rec_offset + cap.l3_offset
    lengths = cap.caplen.astype(np.int64) - cap.l3_offset
    got = build_responses(cap, mask, (raw, starts, lengths))
    np.testing.assert_array_equal(got[0], want[0])
    # a batch carrying its record bytes
    data = np.frombuffer(b"".join(bytes(f) for f in frames), np.uint8)
    doff = np.concatenate(([0], np.cumsum([len(bytes(f)) for f in frames])))
    carrying = PacketBatch(cap.columns, data=data, data_offsets=doff)
    got = build_responses(carrying, mask, None)
    np.testing.assert_array_equal(got[0], want[0])
    # offsets outside the file are refused
    bad = PacketBatch(dict(cap.columns, rec_offset=cap.rec_offset + 10**6))
    with pytest.raises(ValueError, match="outside"):
        build_responses(bad, mask, path)


def test_write_responses_read_back(tmp_path, batch, answers):
    path = tmp_path / "answers.pcap"
    mask = np.ones(len(batch), bool)
    n = write_responses(path, batch, mask, lambda i: ORIG[i])
    buf, off, ts = answers
    nonempty = np.flatnonzero(np.diff(off) > 0)
    assert n == len(nonempty) == sum(1 for c in CASES if c[2])
    # scapy: link type 101, the same bytes and nanosecond timestamps
    with RawPcapReader(str(path)) as rd:
        assert rd.linktype == 101
        recs = list(rd)
    assert len(recs) == n
    for (data, meta), j in zip(recs, nonempty):
        assert data == _answer(answers, j)
        assert meta.sec * 10**9 + meta.usec == ts[j]       # nanosecond pcap: usec holds ns
        assert meta.caplen == meta.wirelen == len(data)
    pkts = rdpcap(str(path))
    for p, j in zip(pkts, nonempty):
        assert bytes(p) == _answer(answers, j)
        kind = CASES[j][2]
        (_check_rst if kind == "rst" else _check_icmp)(bytes(p), ORIG[j])
    # fastsg's own reader
    cap = read_capture(path)
    assert len(cap) == n
    assert (cap.linktype == 101).all() and (cap.l3_offset == 0).all()
    np.testing.assert_array_equal(cap.ts, ts[nonempty])
    for i, j in enumerate(nonempty):
        j = int(j)
        assert cap.address(i, "src") == batch.address(j, "dst")
        assert cap.address(i, "dst") == batch.address(j, "src")
        assert cap.ipver[i] == batch.ipver[j]
        if CASES[j][2] == "rst":
            assert cap.proto[i] == 6
            assert (cap.sport[i], cap.dport[i]) == (batch.dport[j], batch.sport[j])
            assert cap.tcp_flags[i] & 0x04
            assert cap.l4_payload_len[i] == 0
        else:
            v6 = batch.ipver[j] == 6
            assert cap.proto[i] == (58 if v6 else 1)
            assert (cap.icmp_type[i], cap.icmp_code[i]) == ((1, 1) if v6 else (3, 13))
            # the quoted header is the original packet's (the reader fills emb_* only for
            # quotes with ports / echo ids)
            if batch.proto[j] not in (6, 17, 1, 58):
                assert cap.emb_valid[i] == 0
                continue
            assert cap.emb_valid[i] == 1 and cap.emb_proto[i] == batch.proto[j]
            assert (cap.emb_src_lo[i], cap.emb_dst_lo[i]) == (batch.src_lo[j], batch.dst_lo[j])
            assert (cap.emb_src_hi[i], cap.emb_dst_hi[i]) == (batch.src_hi[j], batch.dst_hi[j])
            if batch.proto[j] == 17:
                assert (cap.emb_sport[i], cap.emb_dport[i]) == (batch.sport[j], batch.dport[j])


def test_empty(tmp_path, batch):
    mask = np.zeros(len(batch), bool)
    buf, off, ts = build_responses(batch, mask, lambda i: ORIG[i])
    assert len(buf) == 0 and off.tolist() == [0] and len(ts) == 0
    path = tmp_path / "none.pcap"
    assert write_responses(path, batch, mask) == 0
    with RawPcapReader(str(path)) as rd:
        assert rd.linktype == 101 and list(rd) == []
    assert len(read_capture(path)) == 0
    empty = PacketBatch.empty(0)
    buf, off, ts = build_responses(empty, np.zeros(0, bool))
    assert len(buf) == 0 and off.tolist() == [0]


def test_bad_arguments(batch):
    with pytest.raises(ValueError, match="shape"):
        build_responses(batch, np.ones(3, bool))
    with pytest.raises(TypeError, match="boolean"):
        build_responses(batch, np.ones(len(batch), np.int64))
    with pytest.raises(TypeError, match="original_bytes"):
        build_responses(batch, np.ones(len(batch), bool), 42)
    with pytest.raises(ValueError, match="entries"):
        build_responses(batch, np.ones(len(batch), bool), (np.zeros(10, np.uint8), [0], [1]))


def test_non_ip_rows_get_no_answer():
    pkts = [ETH / Raw(b"\x00" * 50), Ether(type=0x0800) / b"\x45\x00"]
    b = PacketBatch.from_scapy(pkts)
    b.status[1] = 2     # MALFORMED
    buf, off, ts = build_responses(b, np.ones(2, bool), suppress=False)
    assert len(buf) == 0 and off.tolist() == [0, 0, 0]


def test_many_generated_packets(tmp_path):
    """Packets generated from arrays (no original bytes): the vectorised RST rule over the
    whole uint32 range, checked through fastsg's reader; a sample checked with scapy."""
    rng = np.random.default_rng(7)
    n = 20_000
    src = rng.integers(0x0A000000, 0x0AFFFFFF, n, dtype=np.uint32)
    dst = rng.integers(0xC0A80000, 0xC0A8FFFF, n, dtype=np.uint32)
    proto = rng.choice(np.array([6, 6, 6, 17, 1], np.uint8), n)
    flags = rng.choice(np.array([0x02, 0x12, 0x10, 0x18, 0x01, 0x11, 0x03, 0x00, 0x08], np.uint8), n)
    seq = rng.integers(0, M32, n, dtype=np.uint64)
    seq[:50] = M32 - rng.integers(1, 4, 50)
    ack = rng.integers(0, M32, n, dtype=np.uint64)
    plen = rng.integers(0, 1400, n).astype(np.uint32)
    is_tcp = proto == 6
    b = PacketBatch.from_arrays(src, dst, proto, sport=rng.integers(1, 65536, n),
                                dport=rng.integers(1, 65536, n),
                                ts=1_700_000_000_000_000_000 + np.arange(n, dtype=np.int64),
                                icmp_type=np.where(proto == 1, 8, 0),
                                tcp_flags=np.where(is_tcp, flags, 0),
                                tcp_seq=np.where(is_tcp, seq, 0), tcp_ack=np.where(is_tcp, ack, 0),
                                l4_payload_len=plen)
    mask = rng.random(n) < 0.5
    path = tmp_path / "gen.pcap"
    assert write_responses(path, b, mask) == mask.sum()
    rows = np.flatnonzero(mask)
    cap = read_capture(path)
    assert len(cap) == len(rows)
    np.testing.assert_array_equal(cap.src_lo, b.dst_lo[rows])
    np.testing.assert_array_equal(cap.dst_lo, b.src_lo[rows])
    np.testing.assert_array_equal(cap.ts, b.ts[rows])
    t = is_tcp[rows]
    np.testing.assert_array_equal(cap.proto, np.where(t, 6, 1))
    np.testing.assert_array_equal(cap.sport[t], b.dport[rows][t])
    np.testing.assert_array_equal(cap.dport[t], b.sport[rows][t])
    f = b.tcp_flags[rows][t].astype(np.int64)
    s = b.tcp_seq[rows][t].astype(np.int64)
    a = b.tcp_ack[rows][t].astype(np.int64)
    pl = b.l4_payload_len[rows][t].astype(np.int64)
    had_ack = (f & 0x10) != 0
    np.testing.assert_array_equal(cap.tcp_flags[t], np.where(had_ack, 0x04, 0x14))
    np.testing.assert_array_equal(cap.tcp_seq[t], np.where(had_ack, a, 0))
    np.testing.assert_array_equal(cap.tcp_ack[t],
                                  np.where(had_ack, 0, (s + pl + (f >> 1 & 1) + (f & 1)) % M32))
    np.testing.assert_array_equal(cap.icmp_type[~t], 3)
    np.testing.assert_array_equal(cap.icmp_code[~t], 13)
    assert (cap.emb_valid[~t] == 1).all()
    np.testing.assert_array_equal(cap.emb_src_lo[~t], b.src_lo[rows][~t])
    # checksums of a sample, by scapy
    with RawPcapReader(str(path)) as rd:
        for k, (data, _) in enumerate(rd):
            if k % 97:
                continue
            ip = IP(data)
            again = IP(data)
            del again.chksum
            if ip.proto == 6:
                del again[TCP].chksum
                assert bytes(again) == data
            else:
                assert checksum(data[20:]) == 0 and len(data) == 20 + 8 + 28
                assert bytes(again)[:20] == data[:20]
