"""The capture reader on captures built here: every link type, tag stacks, IPv6 extension
chains, IPv4 options and fragments, ICMP errors, all pcap magics, pcapng framings, cut-off
headers, truncated files and broken framing.

Packets are built with scapy; files are written by the plain struct builders of
``capture_reference`` (they can write framings scapy cannot).  Besides explicit expected
values, every file read successfully is also compared field by field with the reference.
"""
from __future__ import annotations

import ipaddress
import logging
import struct
import tracemalloc
import warnings

import numpy as np
import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, TCPerror, UDPerror, ICMPerror
from scapy.layers.inet6 import (ICMPv6DestUnreach, ICMPv6EchoRequest, ICMPv6PacketTooBig,
                                ICMPv6ParamProblem, ICMPv6TimeExceeded, IPv6, IPerror6,
                                TCPerror as TCPerror6)
from scapy.layers.l2 import ARP, CookedLinux, CookedLinuxV2, Ether
from scapy.packet import Raw

from capture_reference import PcapngBuilder, mismatches, pcap_bytes
from fastsg.capture import iter_capture, read_capture
from fastsg.errors import CaptureError
from fastsg.schema import STATUS_IP, STATUS_MALFORMED, STATUS_NON_IP

logging.getLogger("scapy").setLevel(logging.ERROR)

T0 = 1_700_000_000_123_456_000          # a timestamp with microsecond digits
INT64_MAX = 2**63 - 1

V4_TCP = IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1234, dport=80, flags="SA", seq=1000,
                                                  ack=2000) / Raw(b"x" * 10)
V4_UDP = IP(src="192.168.1.1", dst="8.8.8.8") / UDP(sport=5353, dport=53) / Raw(b"q" * 7)
V4_ECHO = IP(src="10.1.1.1", dst="10.2.2.2") / ICMP(type=8, id=0x1234, seq=1) / Raw(b"p" * 16)
V6_UDP = IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP(sport=1000, dport=2000) / Raw(b"z" * 5)
V6_TCP = IPv6(src="fe80::1", dst="ff02::1:2") / TCP(sport=443, dport=50000, flags="A") / Raw(b"y")
V6_ECHO = IPv6(src="2001:db8::a", dst="2001:db8::b") / ICMPv6EchoRequest(id=77, seq=3)
V4_PACKETS = [V4_TCP, V4_UDP, V4_ECHO]
V6_PACKETS = [V6_UDP, V6_TCP, V6_ECHO]


# ---- helpers ----------------------------------------------------------------------------
def write(tmp_path, content: bytes, name="cap.pcap"):
    path = tmp_path / name
    path.write_bytes(content)
    return path


def read_checked(path, **kw):
    """read_capture + the reference must agree."""
    batch = read_capture(path, **kw)
    diff = mismatches(batch, path)
    assert not diff, "\n".join(diff[:20])
    return batch


def addr(batch, i, which):
    return batch.address(i, which)


def assert_ip_packet(batch, i, pkt, l3_offset):
    """Record i holds scapy packet ``pkt`` (IP/IPv6 first) at ``l3_offset``."""
    assert batch.status[i] == STATUS_IP, f"record {i}: status {batch.status[i]}"
    assert batch.l3_offset[i] == l3_offset
    assert batch.ipver[i] == pkt.version
    assert addr(batch, i, "src") == ipaddress.ip_address(pkt.src)
    assert addr(batch, i, "dst") == ipaddress.ip_address(pkt.dst)
    l4 = pkt.payload
    if isinstance(l4, (TCP, UDP)):
        assert (batch.sport[i], batch.dport[i]) == (l4.sport, l4.dport)
        assert batch.proto[i] == (6 if isinstance(l4, TCP) else 17)
        assert batch.l4_payload_len[i] == len(l4.payload)
    if isinstance(l4, TCP):
        assert batch.tcp_flags[i] == int(l4.flags)
        assert (batch.tcp_seq[i], batch.tcp_ack[i]) == (l4.seq, l4.ack)
    if isinstance(l4, (ICMP, ICMPv6EchoRequest)):
        assert batch.icmp_type[i] == l4.type
        assert batch.sport[i] == batch.dport[i] == batch.icmp_id[i] == l4.id


# ---- link types ---------------------------------------------------------------------------
def _eth(p, ethertype=0x0800):
    """An Ethernet frame around scapy packet ``p``, or around raw bytes of ``ethertype``."""
    if isinstance(p, (bytes, bytearray)):
        return bytes.fromhex("66778899aabb001122334455") + struct.pack(">H", ethertype) + p
    return bytes(Ether(src="00:11:22:33:44:55", dst="66:77:88:99:aa:bb") / p)


def _fam(fmt, v4, v6):
    return lambda p: struct.pack(fmt, v4 if p.version == 4 else v6) + bytes(p)


LINKS = {  # name: (link type, wrap(ip packet) -> frame, l3 offset, versions)
    "ethernet": (1, _eth, 14, (4, 6)),
    "null-le-30": (0, _fam("<I", 2, 30), 4, (4, 6)),
    "null-be-24": (0, _fam(">I", 2, 24), 4, (4, 6)),
    "null-le-28": (0, _fam("<I", 2, 28), 4, (4, 6)),
    "raw12": (12, bytes, 0, (4, 6)),
    "raw14": (14, bytes, 0, (4, 6)),
    "raw101": (101, bytes, 0, (4, 6)),
    "loop108": (108, _fam(">I", 2, 30), 4, (4, 6)),
    "sll113": (113, lambda p: bytes(CookedLinux(proto=0x800 if p.version == 4 else 0x86DD) / p),
               16, (4, 6)),
    "ipv4-228": (228, bytes, 0, (4,)),
    "ipv6-229": (229, bytes, 0, (6,)),
    "sll2-276": (276, lambda p: bytes(CookedLinuxV2(proto=0x800 if p.version == 4 else 0x86DD)
                                      / p), 20, (4, 6)),
}


@pytest.mark.parametrize("name", sorted(LINKS))
def test_link_types(tmp_path, name):
    lt, wrap, l3, versions = LINKS[name]
    pkts = [p for p in V4_PACKETS + V6_PACKETS if p.version in versions]
    path = write(tmp_path, pcap_bytes([(wrap(p), T0 + i) for i, p in enumerate(pkts)],
                                      linktype=lt, nano=True))
    batch = read_checked(path)
    assert len(batch) == len(pkts)
    assert (batch.linktype == lt).all()
    for i, p in enumerate(pkts):
        assert_ip_packet(batch, i, p, l3)
        assert batch.ts[i] == T0 + i


def test_unknown_linktype_is_non_ip(tmp_path):
    path = write(tmp_path, pcap_bytes([(_eth(V4_TCP), T0)] * 3, linktype=147))
    it = iter_capture(path)
    batch = it.read_all()
    assert (batch.status == STATUS_NON_IP).all() and (batch.l3_offset == -1).all()
    assert it.stats.unknown_linktype == 3 and it.stats.non_ip == 3


def test_linktype_high_bits_masked(tmp_path):
    # the upper bits of the header's link-type field carry FCS length information
    path = write(tmp_path, pcap_bytes([(_eth(V4_UDP), T0)], linktype=0x1C000001))
    batch = read_checked(path)
    assert batch.linktype[0] == 1 and batch.status[0] == STATUS_IP


def test_null_junk_family_and_non_ip_frames(tmp_path):
    frames = [struct.pack("<I", 7) + bytes(V4_UDP),                     # unknown family
              bytes(Ether() / ARP()),                                     # ARP
              bytes(Ether(dst="01:80:c2:00:00:00", type=38) / Raw(bytes(38)))]  # 802.3 length
    path = write(tmp_path, pcap_bytes([(frames[0], T0)], linktype=0))
    assert read_checked(path).status[0] == STATUS_NON_IP
    path = write(tmp_path, pcap_bytes([(f, T0) for f in frames[1:]], linktype=1), "e.pcap")
    assert (read_checked(path).status == STATUS_NON_IP).all()


# ---- VLAN tags ----------------------------------------------------------------------------
def _tagged(tpids, ip_pkt, ethertype=0x0800):
    head = bytes.fromhex("66778899aabb001122334455")
    for k, tpid in enumerate(tpids):
        head += struct.pack(">HH", tpid, 100 + k)
    return head + struct.pack(">H", ethertype) + bytes(ip_pkt)


@pytest.mark.parametrize("tpids", [(0x8100,), (0x8100, 0x8100), (0x88A8, 0x8100), (0x9100,),
                                   (0x9100, 0x8100), (0x8100, 0x8100, 0x8100),
                                   (0x88A8, 0x8100, 0x8100, 0x8100)])
def test_vlan_stacks(tmp_path, tpids):
    frames = [_tagged(tpids, V4_TCP), _tagged(tpids, V6_UDP, 0x86DD),
              _tagged(tpids, ARP(), 0x0806)]
    path = write(tmp_path, pcap_bytes([(f, T0) for f in frames]))
    batch = read_checked(path)
    l3 = 14 + 4 * len(tpids)
    assert_ip_packet(batch, 0, V4_TCP, l3)
    assert_ip_packet(batch, 1, V6_UDP, l3)
    assert batch.status[2] == STATUS_NON_IP
    # the stack cut inside a tag: the frame cannot be classified
    cut = _tagged(tpids, V4_TCP)[:12 + 4 * len(tpids)]
    path = write(tmp_path, pcap_bytes([(cut, T0, 200)]), "cut.pcap")
    assert read_checked(path).status[0] == STATUS_MALFORMED


# ---- IPv4 -----------------------------------------------------------------------------------
@pytest.mark.parametrize("ihl", range(5, 16))
def test_ipv4_options(tmp_path, ihl):
    opts = b"\x01" * ((ihl - 5) * 4)          # NOPs
    p = IP(bytes(IP(src="1.2.3.4", dst="5.6.7.8", options=[Raw(opts)] if opts else [])
                 / TCP(sport=7, dport=9, flags="S") / Raw(b"abc")))
    assert p.ihl == ihl
    batch = read_checked(write(tmp_path, pcap_bytes([(_eth(p), T0)])))
    assert_ip_packet(batch, 0, p, 14)
    assert batch.l4_payload_len[0] == 3


def test_ipv4_fragments(tmp_path):
    first = IP(src="1.1.1.1", dst="2.2.2.2", flags="MF", frag=0, proto=17) / \
        UDP(sport=11, dport=22, len=3008) / Raw(b"a" * 64)
    later = IP(src="1.1.1.1", dst="2.2.2.2", frag=185, proto=17) / Raw(b"b" * 40)
    batch = read_checked(write(tmp_path, pcap_bytes([(_eth(first), T0), (_eth(later), T0)])))
    assert batch.frag.tolist() == [0, 1]
    assert (batch.sport[0], batch.dport[0]) == (11, 22)
    assert (batch.sport[1], batch.dport[1], batch.proto[1]) == (0, 0, 17)
    assert batch.l4_payload_len[1] == 40


def test_ipv4_invalid_headers_are_malformed(tmp_path):
    good = bytes(V4_UDP)
    bad_version = bytes([0x65]) + good[1:]
    short_ihl = bytes([0x44]) + good[1:]
    short_total = good[:2] + struct.pack(">H", 16) + good[4:]
    total_cuts_ports = good[:2] + struct.pack(">H", 22) + good[4:]
    frames = [_eth(x) for x in (bad_version, short_ihl, short_total, total_cuts_ports)]
    frames.append(_eth(V6_UDP)[:12] + b"\x08\x00" + bytes(V6_UDP))   # ethertype says v4
    batch = read_checked(write(tmp_path, pcap_bytes([(f, T0) for f in frames])))
    assert (batch.status == STATUS_MALFORMED).all()
    raw = write(tmp_path, pcap_bytes([(bytes([0x55]) + good[1:], T0)], linktype=101), "r.pcap")
    assert read_checked(raw).status[0] == STATUS_MALFORMED


def test_ethernet_padding_and_tso_lengths(tmp_path):
    small = IP(src="9.9.9.9", dst="8.8.8.8") / UDP(sport=1, dport=2) / Raw(b"hi")
    padded = _eth(small) + bytes(60 - len(_eth(small)))          # Ethernet minimum frame
    tso4 = bytearray(bytes(V4_TCP))
    tso4[2:4] = b"\x00\x00"                                      # total length 0 (TSO)
    tso6 = bytearray(bytes(V6_UDP))
    tso6[4:6] = b"\x00\x00"
    batch = read_checked(write(tmp_path, pcap_bytes([(padded, T0), (_eth(bytes(tso4)), T0),
                                                     (_eth(bytes(tso6), 0x86DD), T0)])))
    assert (batch.status == STATUS_IP).all()
    assert batch.l4_payload_len.tolist() == [2, 10, 5]


# ---- IPv6 extension headers -----------------------------------------------------------------
def _ext(nh, kind, size=8, frag_offset=0):
    """One extension header's bytes, whose next header is ``nh``."""
    if kind == 51:                                   # AH: length in 4-octet units, minus 2
        return bytes([nh, size // 4 - 2]) + bytes(size - 2)
    if kind == 44:
        return bytes([nh, 0]) + struct.pack(">HI", (frag_offset << 3) | 1, 0xABCD)
    return bytes([nh, size // 8 - 1]) + bytes(size - 2)


def _v6_chain(chain, l4proto, l4):
    """IPv6 packet with the extension headers ``chain`` [(kind, size, frag_offset)]."""
    kinds = [c[0] for c in chain] + [l4proto]
    body = b"".join(_ext(kinds[k + 1], *chain[k]) for k in range(len(chain))) + bytes(l4)
    return IPv6(bytes(IPv6(src="2001:db8::10", dst="2001:db8::20", nh=kinds[0],
                           plen=len(body))) + body)


CHAINS = [
    [(0, 8, 0)], [(43, 24, 0)], [(60, 16, 0)], [(51, 24, 0)], [(51, 12, 0)],
    [(0, 8, 0), (60, 8, 0), (43, 24, 0), (51, 16, 0)],
    [(135, 8, 0)], [(139, 16, 0)], [(140, 8, 0)],
    [(44, 8, 0)], [(0, 8, 0), (44, 8, 0), (60, 8, 0)],
]


@pytest.mark.parametrize("chain", CHAINS, ids=lambda c: "-".join(str(k[0]) for k in c))
def test_ipv6_extension_chains(tmp_path, chain):
    udp = UDP(sport=4000, dport=5000) / Raw(b"d" * 9)
    p = _v6_chain(chain, 17, udp)
    batch = read_checked(write(tmp_path, pcap_bytes([(_eth(p), T0)])))
    assert batch.status[0] == STATUS_IP and batch.proto[0] == 17
    assert (batch.sport[0], batch.dport[0], batch.frag[0]) == (4000, 5000, 0)
    assert batch.l4_payload_len[0] == 9


@pytest.mark.parametrize("chain", [[(44, 8, 100)], [(0, 8, 0), (44, 8, 7)],
                                   [(60, 8, 0), (44, 8, 1), (51, 16, 0)]])
def test_ipv6_non_first_fragment(tmp_path, chain):
    p = _v6_chain(chain, 6, bytes(TCP(sport=1, dport=2)))
    batch = read_checked(write(tmp_path, pcap_bytes([(_eth(p), T0)])))
    assert batch.status[0] == STATUS_IP and batch.frag[0] == 1
    # the walk stops at the fragment header: what follows is fragment data, not a header
    assert batch.proto[0] == (6 if chain[-1][0] == 44 else 51)
    assert (batch.sport[0], batch.dport[0], batch.tcp_flags[0]) == (0, 0, 0)


def test_ipv6_chain_running_past_the_packet_is_malformed(tmp_path):
    p = bytearray(bytes(_v6_chain([(0, 8, 0)], 17, bytes(UDP()))))
    p[41] = 200                                   # hop-by-hop length far beyond the packet
    batch = read_checked(write(tmp_path, pcap_bytes([(_eth(bytes(p), 0x86DD), T0)])))
    assert batch.status[0] == STATUS_MALFORMED


# ---- ICMP errors ----------------------------------------------------------------------------
ORIG4_TCP = IPerror(src="10.0.0.2", dst="10.0.0.1") / TCPerror(sport=80, dport=1234)
ORIG4_UDP = IPerror(src="10.0.0.2", dst="172.16.0.9") / UDPerror(sport=53, dport=33434)
ORIG4_ECHO = IPerror(src="10.0.0.2", dst="10.9.9.9") / ICMPerror(type=8, id=4242)
ORIG6_TCP = IPerror6(src="2001:db8::2", dst="2001:db8::1") / TCPerror6(sport=22, dport=6000)


def _icmp4(itype, code, orig, cut=None):
    quoted = bytes(orig)[:cut]
    return IP(src="192.0.2.1", dst="10.0.0.2") / ICMP(type=itype, code=code) / Raw(quoted)


@pytest.mark.parametrize("itype,code,orig,sport,dport", [
    (3, 3, ORIG4_UDP, 53, 33434), (3, 13, ORIG4_TCP, 80, 1234), (11, 0, ORIG4_TCP, 80, 1234),
    (4, 0, ORIG4_UDP, 53, 33434), (5, 1, ORIG4_ECHO, 4242, 4242), (12, 0, ORIG4_TCP, 80, 1234),
    (3, 1, ORIG4_ECHO, 4242, 4242)])
def test_icmp4_errors_quote_the_original(tmp_path, itype, code, orig, sport, dport):
    batch = read_checked(write(tmp_path, pcap_bytes([(_eth(_icmp4(itype, code, orig)), T0)])))
    assert (batch.icmp_type[0], batch.icmp_code[0], batch.emb_valid[0]) == (itype, code, 1)
    assert batch.emb_proto[0] == orig.proto
    assert ipaddress.ip_address(int(batch.emb_src_lo[0])) == ipaddress.ip_address(orig.src)
    assert ipaddress.ip_address(int(batch.emb_dst_lo[0])) == ipaddress.ip_address(orig.dst)
    assert (batch.emb_sport[0], batch.emb_dport[0]) == (sport, dport)
    assert batch.sport[0] == batch.dport[0] == 0


def test_icmp4_error_quoting_too_little(tmp_path):
    frames = [_eth(_icmp4(3, 3, ORIG4_UDP, cut=20 + 4)),   # ports but not 8 L4 bytes
              _eth(_icmp4(3, 3, ORIG4_UDP, cut=12)),       # not even the IP header
              _eth(IP(src="1.1.1.1", dst="2.2.2.2") / ICMP(type=0, id=9) / Raw(bytes(ORIG4_UDP))),
              _eth(IP(src="1.1.1.1", dst="2.2.2.2") / ICMP(type=3) / Raw(bytes(ORIG6_TCP)))]
    batch = read_checked(write(tmp_path, pcap_bytes([(f, T0) for f in frames])))
    assert (batch.status == STATUS_IP).all()
    assert batch.emb_valid.tolist() == [0, 0, 0, 0]        # echo reply is no error; v6 in v4
    assert batch.icmp_id[2] == 9


def test_icmp4_error_quoting_options(tmp_path):
    orig = IPerror(src="10.0.0.2", dst="10.0.0.3", options=[Raw(b"\x01" * 8)]) / \
        UDPerror(sport=1, dport=2)
    batch = read_checked(write(tmp_path, pcap_bytes([(_eth(_icmp4(3, 3, orig)), T0)])))
    assert (batch.emb_valid[0], batch.emb_sport[0], batch.emb_dport[0]) == (1, 1, 2)


@pytest.mark.parametrize("layer,orig,sport,dport", [
    (ICMPv6DestUnreach(code=1), ORIG6_TCP, 22, 6000),
    (ICMPv6PacketTooBig(mtu=1280), IPerror6(src="::1", dst="::2") / UDPerror(sport=5, dport=6),
     5, 6),
    (ICMPv6TimeExceeded(), IPerror6(src="::1", dst="::2") / ICMPv6EchoRequest(id=31), 31, 31),
    (ICMPv6ParamProblem(), ORIG6_TCP, 22, 6000)])
def test_icmp6_errors_quote_the_original(tmp_path, layer, orig, sport, dport):
    p = IPv6(src="2001:db8::ff", dst="2001:db8::2") / layer / Raw(bytes(orig))
    batch = read_checked(write(tmp_path, pcap_bytes([(_eth(p), T0)])))
    assert (batch.proto[0], batch.icmp_type[0], batch.emb_valid[0]) == (58, layer.type, 1)
    assert (batch.emb_sport[0], batch.emb_dport[0]) == (sport, dport)
    assert batch.address(0, "src") == ipaddress.ip_address("2001:db8::ff")
    emb_src = (int(batch.emb_src_hi[0]) << 64) | int(batch.emb_src_lo[0])
    assert ipaddress.IPv6Address(emb_src) == ipaddress.IPv6Address(orig.src)


def test_icmp6_error_quoting_an_extension_chain(tmp_path):
    orig = _v6_chain([(0, 8, 0), (60, 16, 0)], 17, bytes(UDP(sport=7, dport=8)))
    p = IPv6(src="2001:db8::ff", dst="2001:db8::2") / ICMPv6DestUnreach() / Raw(bytes(orig))
    batch = read_checked(write(tmp_path, pcap_bytes([(_eth(p), T0)])))
    assert (batch.emb_valid[0], batch.emb_proto[0], batch.emb_sport[0]) == (1, 17, 7)


# ---- cut-off headers ------------------------------------------------------------------------
TRUNCATION_CASES = {  # name: (frame, first caplen that is not MALFORMED)
    "v4-tcp-options": (_eth(IP(src="1.2.3.4", dst="4.3.2.1", options=[Raw(b"\x01" * 4)])
                            / TCP(sport=5, dport=6, flags="PA") / Raw(b"data")), 14 + 24 + 4),
    "v4-udp": (_eth(V4_UDP), 14 + 20 + 4),
    "v4-icmp": (_eth(V4_ECHO), 14 + 20 + 2),
    "v6-hbh-udp": (_eth(_v6_chain([(0, 8, 0)], 17, bytes(UDP(sport=1, dport=2)))),
                   14 + 40 + 8 + 4),
    "v6-tcp": (_eth(V6_TCP), 14 + 40 + 4),
    "v6-icmp": (_eth(V6_ECHO), 14 + 40 + 2),
    "sll-v4-tcp": (bytes(CookedLinux(proto=0x800) / V4_TCP), 16 + 20 + 4),
}


@pytest.mark.parametrize("name", sorted(TRUNCATION_CASES))
def test_truncation_at_every_byte(tmp_path, name):
    frame, first_ok = TRUNCATION_CASES[name]
    lt = 113 if name.startswith("sll") else 1
    recs = [(frame[:k], T0 + k, len(frame)) for k in range(len(frame) + 1)]
    batch = read_checked(write(tmp_path, pcap_bytes(recs, linktype=lt, snaplen=0)))
    caplen = batch.caplen.astype(int)
    assert caplen.tolist() == list(range(len(frame) + 1))
    np.testing.assert_array_equal(batch.status == STATUS_MALFORMED, caplen < first_ok)
    assert (batch.wirelen == len(frame)).all()
    ok = batch.status == STATUS_IP
    if "tcp" in name:
        # TCP flags cut off read as 0, without making the record MALFORMED
        l4 = first_ok - 4
        np.testing.assert_array_equal(batch.tcp_flags[ok] != 0, caplen[ok] >= l4 + 14)
    if "icmp" in name:
        l4 = first_ok - 2
        np.testing.assert_array_equal(batch.icmp_id[ok] != 0, caplen[ok] >= l4 + 6)


# ---- classic pcap framing -------------------------------------------------------------------
@pytest.mark.parametrize("big", [False, True])
@pytest.mark.parametrize("nano", [False, True])
def test_four_magics(tmp_path, big, nano):
    ts = [T0 + 123 if nano else T0, 0, 2**32 * 10**9 - 1000]
    pkts = [_eth(p) for p in (V4_TCP, V6_UDP, V4_ECHO)]
    path = write(tmp_path, pcap_bytes(list(zip(pkts, ts)), big=big, nano=nano))
    batch = read_checked(path)
    assert batch.ts.tolist() == ts
    assert (batch.status == STATUS_IP).all()


def test_snaplen_is_not_trusted(tmp_path):
    recs = [(_eth(V4_TCP), T0), (_eth(V6_UDP) + bytes(3000), T0)]
    for snaplen in (0, 16, 0xFFFFFFFF):
        path = write(tmp_path, pcap_bytes(recs, snaplen=snaplen))
        assert len(read_checked(path)) == 2


def test_zero_records_and_zero_caplen(tmp_path):
    assert len(read_capture(write(tmp_path, pcap_bytes([])))) == 0
    batch = read_checked(write(tmp_path, pcap_bytes([(b"", T0, 60)]), "z.pcap"))
    assert batch.status[0] == STATUS_MALFORMED and batch.caplen[0] == 0


# ---- pcapng framing -------------------------------------------------------------------------
def _ns(units, res, off=0):
    per_sec = 2 ** (res & 127) if res & 128 else 10 ** res
    return min(units * 10**9 // per_sec, INT64_MAX) + off * 10**9


def test_pcapng_sections_interfaces_and_blocks(tmp_path):
    f4, f6 = _eth(V4_TCP), _eth(V6_UDP)
    b = PcapngBuilder()
    b.shb(big=False)
    b.idb(1, snaplen=0, tsresol=0x80 | 20, tsoffset=1_600_000_000)    # 2^-20 s, offset
    b.idb(101, snaplen=65535, tsresol=9)                              # ns, raw IP
    b.block(0x0BAD, b"skip me")                                       # unknown block
    b.epb(0, f4, units=3 * 2**20 + 2**19)                             # 3.5 s
    b.epb(1, bytes(V6_TCP), units=T0)
    b.block(5, bytes(24))                                             # interface statistics
    b.pb(0, f6, units=2**20 - 1)
    b.spb(f4)                                                         # snaplen 0: whole
    b.shb(big=True)                                                   # new section, BE
    b.idb(113, snaplen=40, tsresol=3, tsoffset=-5)                    # ms, SLL, snaplen 40
    b.epb(0, bytes(CookedLinux(proto=0x800) / V4_UDP), units=1234)
    b.spb(bytes(CookedLinux(proto=0x800) / V4_UDP))                   # cut to 40 bytes
    b.idb(229, tsresol=0x80 | 40)                                     # 2^-40 s
    b.epb(1, bytes(V6_ECHO), units=2**45 + 12345)
    b.pb(1, bytes(V6_ECHO), units=7)
    path = write(tmp_path, b.bytes(), "x.pcapng")
    it = iter_capture(path)
    batch = it.read_all()
    assert not mismatches(batch, path)
    assert batch.linktype.tolist() == [1, 101, 1, 1, 113, 113, 229, 229]
    assert batch.ts.tolist() == [
        _ns(3 * 2**20 + 2**19, 0x94, 1_600_000_000), T0, _ns(2**20 - 1, 0x94, 1_600_000_000),
        0, _ns(1234, 3, -5), 0, _ns(2**45 + 12345, 0x80 | 40), _ns(7, 0x80 | 40)]
    assert batch.caplen.tolist()[4:6] == [len(CookedLinux() / V4_UDP), 40]
    assert batch.wirelen[5] == len(CookedLinux() / V4_UDP)
    assert_ip_packet(batch, 0, V4_TCP, 14)
    assert_ip_packet(batch, 1, V6_TCP, 0)
    assert_ip_packet(batch, 6, V6_ECHO, 0)
    assert it.stats.format == "pcapng" and it.stats.records == 8
    assert it.stats.linktypes == {1: 3, 101: 1, 113: 2, 229: 2}


@pytest.mark.parametrize("res,units", [(6, 2**64 - 1), (0, 2**40), (0x80, 2**40),
                                       (0x80 | 10, 2**63)])
def test_pcapng_timestamps_clamped(tmp_path, res, units):
    b = PcapngBuilder().shb().idb(1, tsresol=res).epb(0, _eth(V4_UDP), units=units)
    it = iter_capture(write(tmp_path, b.bytes(), "c.pcapng"))
    batch = it.read_all()
    assert batch.ts[0] == INT64_MAX and it.stats.clamped_ts == 1


@pytest.mark.parametrize("res", [0, 1, 6, 9, 12, 19, 30, 0x80, 0x80 | 1, 0x80 | 32,
                                 0x80 | 33, 0x80 | 63, 0x80 | 64, 0x80 | 100])
def test_pcapng_resolutions_exact(tmp_path, res):
    rng = np.random.default_rng(res)
    units = [int(u) for u in rng.integers(0, 2**63, 20, dtype=np.uint64)] + [0, 1, 2**64 - 1]
    b = PcapngBuilder().shb().idb(1, tsresol=res, tsoffset=-1)
    for u in units:
        b.epb(0, _eth(V4_UDP), units=u)
    batch = read_capture(write(tmp_path, b.bytes(), "r.pcapng"))
    want = [max(-2**63, min(INT64_MAX, min(u * 10**9 // (2 ** (res & 127) if res & 128
                                                          else 10 ** res), INT64_MAX) - 10**9))
            for u in units]
    assert batch.ts.tolist() == want


def test_pcapng_many_interfaces(tmp_path):
    b = PcapngBuilder().shb()
    for k in range(300):                      # more than the reader's first table size
        b.idb(1 if k % 2 else 101, tsresol=6)
    for k in range(300):
        b.epb(k, _eth(V4_UDP) if k % 2 else bytes(V6_UDP), units=k)
    batch = read_checked(write(tmp_path, b.bytes(), "m.pcapng"), )
    assert batch.linktype.tolist() == [1 if k % 2 else 101 for k in range(300)]
    assert (batch.status == STATUS_IP).all()


# ---- errors ---------------------------------------------------------------------------------
def _error(path, **kw):
    with pytest.raises(CaptureError) as e:
        read_capture(path, **kw)
    assert str(path) in str(e.value) and e.value.path == str(path)
    return e.value


def test_not_a_capture(tmp_path):
    assert _error(write(tmp_path, b"")).offset == 0
    assert "magic" in _error(write(tmp_path, b"GIF89a" + bytes(40))).reason
    assert _error(write(tmp_path, pcap_bytes([])[:20])).offset == 0
    assert _error(write(tmp_path, PcapngBuilder().shb().bytes()[:20])).offset == 0


def test_absurd_caplen(tmp_path):
    recs = [(_eth(V4_UDP), T0)] * 3
    data = bytearray(pcap_bytes(recs))
    off = 24 + 2 * (16 + len(_eth(V4_UDP)))
    data[off + 8:off + 12] = struct.pack("<I", 0x7FFFFFFF)
    err = _error(write(tmp_path, bytes(data)))
    assert (err.record, err.offset) == (2, off)
    assert "absurd" in err.reason


@pytest.mark.parametrize("case", ["len-not-4", "len-small", "trailer", "iface", "caplen",
                                  "bom", "version", "spb-before-idb", "bom-first"])
def test_pcapng_framing_errors(tmp_path, case):
    b = PcapngBuilder().shb().idb(1).epb(0, _eth(V4_UDP), 1)
    good = len(b.bytes())
    if case == "len-not-4":
        b.block(6, bytes(40), total=50)
    elif case == "len-small":
        b.block(6, b"", total=8)
    elif case == "trailer":
        b.block(6, bytes(40), trailer=44)
    elif case == "iface":
        b.epb(3, _eth(V4_UDP), 1)
    elif case == "caplen":
        b.epb(0, _eth(V4_UDP), 1, caplen=500)
    elif case == "bom":
        b.parts.append(b"\x0a\x0d\x0d\x0a" + struct.pack("<I", 28) + b"\x01\x02\x03\x04"
                       + bytes(12) + struct.pack("<I", 28))
    elif case == "version":
        b.parts.append(b"\x0a\x0d\x0d\x0a" + struct.pack("<IIHHq", 28, 0x1A2B3C4D, 2, 0, -1)
                       + struct.pack("<I", 28))
    elif case == "spb-before-idb":
        b.shb().spb(_eth(V4_UDP))
        good += 28
    elif case == "bom-first":
        b = PcapngBuilder().shb()
        b.parts[0] = b"\x0a\x0d\x0d\x0a" + b.parts[0][4:8] + b"\x00" + b.parts[0][9:]
        good = 0
    path = write(tmp_path, b.bytes() + bytes(PcapngBuilder().shb().idb(1).epb(0, b"x", 1).bytes()),
                 "e.pcapng")
    err = _error(path)
    if case != "bom-first":
        assert (err.record, err.offset) == (1, good)


# ---- truncated files ------------------------------------------------------------------------
def test_truncated_final_record_every_byte(tmp_path):
    recs = [(_eth(p), T0 + i) for i, p in enumerate([V4_TCP, V6_UDP, V4_ECHO])]
    full = pcap_bytes(recs)
    last = len(pcap_bytes(recs[:2]))
    for cut in range(last + 1, len(full)):
        path = write(tmp_path, full[:cut])
        with pytest.warns(UserWarning, match="1 truncated final record"):
            it = iter_capture(path)
            batch = it.read_all()
        assert len(batch) == 2 and it.stats.truncated == 1 and it.stats.records == 2
        assert it.stats.bytes == cut
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(read_capture(write(tmp_path, full[:last]))) == 2


def test_caplen_beyond_the_file_is_a_truncated_record(tmp_path):
    data = pcap_bytes([(_eth(V4_UDP), T0), (_eth(V4_UDP), T0, 5000, 5000)])
    with pytest.warns(UserWarning, match="truncated"):
        assert len(read_capture(write(tmp_path, data))) == 1


def test_truncated_pcapng(tmp_path):
    b = PcapngBuilder().shb().idb(1).epb(0, _eth(V4_UDP), 1).epb(0, _eth(V6_UDP), 2)
    full = b.bytes()
    for cut in (len(full) - 1, len(full) - 20, len(full) - 60):
        with pytest.warns(UserWarning, match="truncated"):
            assert len(read_capture(write(tmp_path, full[:cut], "t.pcapng"))) == 1


# ---- streaming ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["pcap", "pcapng"])
def test_chunks_equal_whole(tmp_path, kind):
    pkts = [_eth(p) for p in V4_PACKETS + V6_PACKETS] * 20
    if kind == "pcap":
        data = pcap_bytes([(p, T0 + i) for i, p in enumerate(pkts)], nano=True)
    else:
        b = PcapngBuilder().shb().idb(1, tsresol=9)
        for i, p in enumerate(pkts):
            if i == 50:
                b.shb(big=True).idb(1, tsresol=9)
            b.epb(0, p, T0 + i)
        data = b.bytes()
    path = write(tmp_path, data, "s." + kind)
    whole = read_checked(path)
    assert whole.ts.tolist() == [T0 + i for i in range(len(pkts))]
    for chunk in (1, 3, 50, 119, 120, 1000):
        it = iter_capture(path, chunk_packets=chunk)
        parts = list(it)
        assert [len(p) for p in parts[:-1]] == [chunk] * (len(parts) - 1)
        for name, col in whole.columns.items():
            np.testing.assert_array_equal(np.concatenate([p.columns[name] for p in parts]), col)
        assert it.stats.records == len(pkts)


def test_streaming_memory_is_bounded(tmp_path):
    n, chunk = 200_000, 5_000
    frame = _eth(V4_TCP)
    rec = struct.pack("<IIII", 1, 0, len(frame), len(frame)) + frame
    path = tmp_path / "big.pcap"
    path.write_bytes(pcap_bytes([]) + rec * n)
    size = path.stat().st_size
    list(iter_capture(path, chunk_packets=chunk))          # compile outside the measurement
    tracemalloc.start()
    try:
        count = 0
        for batch in iter_capture(path, chunk_packets=chunk):
            count += len(batch)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == n
    # one chunk's columns (~130 bytes a record) and its offsets, not the file or all records
    assert peak < 400 * chunk < size // 5, (peak, size)


def test_parallel_and_serial_parse_agree(tmp_path):
    """Large windows take the parallel kernel, small ones the serial loop: same columns."""
    frames = [_eth(p) for p in V4_PACKETS + V6_PACKETS]
    frames += [_eth(_icmp4(3, 3, ORIG4_UDP)), _tagged((0x8100, 0x88A8), V4_TCP),
               _eth(V4_TCP)[:30], bytes(Ether() / ARP())]
    recs = [(frames[i % len(frames)], T0 + i, 1500) for i in range(40_000)]
    for lt_path, data in (("p.pcap", pcap_bytes(recs, nano=True)),
                          ("p.pcapng", _ng_of(recs))):
        path = write(tmp_path, data, lt_path)
        whole = read_capture(path)                               # one 40k window: parallel
        parts = list(iter_capture(path, chunk_packets=999))      # serial windows
        for name, col in whole.columns.items():
            np.testing.assert_array_equal(np.concatenate([p.columns[name] for p in parts]),
                                          col, err_msg=name)
        assert (whole.status == STATUS_MALFORMED).sum() == 40_000 // len(frames)


def _ng_of(recs):
    b = PcapngBuilder().shb().idb(1, tsresol=9)
    for data, ts, wirelen in recs:
        b.epb(0, data, ts, wirelen)
    return b.bytes()
