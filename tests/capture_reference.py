"""An independent, slow reference for ``fastsg.capture``: scapy for framing and field values.

It shares no code with the numba reader.  scapy does the framing (``RawPcapReader``,
``RawPcapNgReader``) and decodes every header field (``Ether``, ``Dot1Q``, ``CookedLinux``,
``IP``, ``IPv6``, the IPv6 extension header classes, ``AH``, ``TCP``, ``UDP``, ``ICMP``,
``ICMPv6*``); this module only adds the control flow and fastsg's own rules (what is
MALFORMED or NON_IP, fragments, the quoted header of ICMP errors, nanosecond timestamps).
Header bytes are length-checked *before* scapy sees them, and scapy classes are fed
zero-padded bytes so that its defaults never stand in for missing fields.

Workarounds for known scapy behaviour (each marked ``WORKAROUND`` below):

* the readers cut packets to ``size`` (MTU) by default: ``_read_packet`` is called with a
  large size; a classic pcap record longer than 4 x MTU would still be cut by scapy, so
  such a record makes the reference raise rather than give a wrong answer;
* ``RawPcapNgReader`` ignores ``if_tsoffset``: the option is read from the IDB here;
* ``RawPcapNgReader`` returns an empty packet for an SPB when the IDB snaplen is 0 (it
  takes ``min(wirelen, snaplen)``): the SPB caplen is recomputed as
  min(block body - 4, original length, snaplen if non-zero);
* ``RawPcapNgReader`` keeps the interface list across sections: it is reset at every SHB
  (interface ids are per section);
* the NULL link type's family is in the writer's byte order and BSDs use 24, 28 or 30 for
  IPv6; scapy's ``Loopback`` only knows some of them (family 30 and LOOP IPv6 come out as
  Raw), so the family is read with ``struct`` and both byte orders tried;
* scapy does not bind EtherType 0x9100 (old QinQ): the tag is decoded with ``Dot1Q``,
  whose layout it shares; IPv6 next headers 139 (HIP) and 140 (Shim6) are decoded with
  the generic ``IPv6ExtHdrDestOpt`` layout (next header, length in 8-octet units);
* ``Ether`` turns an 802.3 length frame into ``Dot3`` (its length is read instead of a type);
* scapy's TCP ``flags`` field is 9 bits (it includes NS from byte 12): masked to byte 13;
* scapy's ``ICMP`` has ``id`` only for v4 echo-like types: ICMPv6 is decoded with the
  ``ICMPv6EchoRequest`` layout (type, code, checksum, id, seq);
* scapy classes raise on short input: fields are decoded from zero-padded bytes, and only
  those that lie within the real bytes are used.
"""
from __future__ import annotations

import ipaddress
import struct

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (ICMPv6EchoRequest, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment,
                                IPv6ExtHdrHopByHop, IPv6ExtHdrRouting)
from scapy.layers.ipsec import AH
from scapy.layers.l2 import CookedLinux, CookedLinuxV2, Dot1AD, Dot1Q, Dot3, Ether
from scapy.utils import RawPcapNgReader, RawPcapReader

INT64_MAX = 2**63 - 1
INT64_MIN = -2**63
BIG = 1 << 30

STATUS_IP, STATUS_NON_IP, STATUS_MALFORMED = 0, 1, 2
VLAN_TAGS = {0x8100: Dot1Q, 0x88A8: Dot1AD, 0x9100: Dot1Q}
V6_GENERIC_EXT = {0: IPv6ExtHdrHopByHop, 43: IPv6ExtHdrRouting, 60: IPv6ExtHdrDestOpt,
                  135: IPv6ExtHdrDestOpt, 139: IPv6ExtHdrDestOpt, 140: IPv6ExtHdrDestOpt}


def _clamp(v: int) -> int:
    return max(INT64_MIN, min(INT64_MAX, v))


# ---- framing ----------------------------------------------------------------------------
class _NgReader(RawPcapNgReader):
    """RawPcapNgReader with the workarounds listed in the module docstring."""

    tsoffset = 0        # if_tsoffset of the interface of the last packet block read

    def _read_block_shb(self):
        super()._read_block_shb()
        self.interfaces = []                      # WORKAROUND: ids are per section

    def _read_block_idb(self, block, _):
        super()._read_block_idb(block, _)
        opts = self._read_options(block[8:])      # WORKAROUND: if_tsoffset
        raw = opts.get(14)
        off = struct.unpack(self.endian + "q", raw[:8])[0] if raw and len(raw) >= 8 else 0
        self.interfaces[-1][2]["tsoffset"] = off

    def _note_iface(self, fmt, block):
        # scapy's packet metadata carries no interface id: remember the interface's offset
        if len(block) >= struct.calcsize(fmt):
            intid = struct.unpack_from(self.endian + fmt, block)[0]
            if intid < len(self.interfaces):
                self.tsoffset = self.interfaces[intid][2]["tsoffset"]

    def _read_block_epb(self, block, size):
        self._note_iface("I", block)
        return super()._read_block_epb(block, size)

    def _read_block_pkt(self, block, size):
        self._note_iface("H", block)
        return super()._read_block_pkt(block, size)

    def _read_block_spb(self, block, size):
        res = super()._read_block_spb(block, size)
        if res is None:
            return None
        _, meta = res
        snaplen = self.interfaces[0][1]
        caplen = min(len(block) - 4, meta.wirelen, snaplen or BIG)   # WORKAROUND: snaplen 0
        return block[4:4 + caplen], meta


def _pcapng_frames(path):
    r = _NgReader(path)
    out = []
    try:
        while True:
            try:
                data, m = r._read_packet(size=BIG)   # WORKAROUND: default size is MTU
            except EOFError:
                break
            ts = 0                                   # an SPB has no timestamp
            if m.tshigh is not None:
                # floor to ns, clamp, add the offset (clamped), clamp: fastsg's documented steps
                units = (m.tshigh << 32) | m.tslow
                ts = min(units * 10**9 // m.tsresol, INT64_MAX)
                ts = _clamp(ts + _clamp(r.tsoffset * 10**9))
            out.append((data, m.linktype, ts, m.wirelen))
    finally:
        r.close()
    return out


def _pcap_frames(path):
    r = RawPcapReader(path)
    out = []
    try:
        while True:
            try:
                data, m = r._read_packet(size=BIG)
            except EOFError:
                break
            if len(data) < m.caplen:
                if len(data) == 4 * 1500:
                    raise RuntimeError("record longer than scapy reads")   # WORKAROUND
                break                                   # truncated final record
            ts = m.sec * 10**9 + m.usec * (1 if r.nano else 1000)
            out.append((data, r.linktype & 0xFFFF, ts, m.wirelen))
    finally:
        r.close()
    return out


def frames(path):
    """(packet bytes, link type, ts ns, wirelen) of every complete record of a capture."""
    path = str(path)                     # scapy takes a str path or a file object
    with open(path, "rb") as f:
        magic = f.read(4)
    return _pcapng_frames(path) if magic == b"\x0a\x0d\x0d\x0a" else _pcap_frames(path)


# ---- headers ----------------------------------------------------------------------------
def _dec(cls, data: bytes, need: int):
    """Decode ``data`` with scapy class ``cls``, zero-padded to ``need`` bytes."""
    return cls(bytes(data) + bytes(max(0, need - len(data))))


def _addr(text: str) -> tuple[int, int]:
    v = int(ipaddress.ip_address(text))
    return v >> 64, v & 0xFFFFFFFFFFFFFFFF


def link(data: bytes, lt: int):
    """-> (kind, l3): kind 'v4', 'v6', 'any' (raw IP), 'none' (not IP), 'cut' (link header
    cut off), 'unknown' (link type not decoded)."""
    n = len(data)
    ethermap = {0x0800: "v4", 0x86DD: "v6"}
    if lt == 1:
        if n < 14:
            return "cut", 0
        eth = Ether(data[:14])           # scapy turns an 802.3 length frame into Dot3
        et, off = (eth.len if isinstance(eth, Dot3) else eth.type), 14
        while et in VLAN_TAGS:
            if off + 4 > n:
                return "cut", 0
            et = VLAN_TAGS[et](data[off:off + 4]).type
            off += 4
        return ethermap.get(et, "none"), off
    if lt in (12, 14, 101):
        return "any", 0
    if lt == 228:
        return "v4", 0
    if lt == 229:
        return "v6", 0
    if lt in (0, 108):
        if n < 4:
            return "cut", 0
        fam = struct.unpack(">I" if lt == 108 else "<I", data[:4])[0]
        if lt == 0 and fam > 0xFFFF:
            fam = struct.unpack(">I", data[:4])[0]
        return {2: "v4", 24: "v6", 28: "v6", 30: "v6"}.get(fam, "none"), 4
    if lt == 113:
        if n < 16:
            return "cut", 0
        return ethermap.get(CookedLinux(data[:16]).proto, "none"), 16
    if lt == 276:
        if n < 20:
            return "cut", 0
        return ethermap.get(CookedLinuxV2(data[:20]).proto, "none"), 20
    return "unknown", 0


def ipv4(data: bytes, l3: int, end: int):
    """-> None if invalid, else dict(proto, src, dst, l4, ip_end, frag)."""
    if end - l3 < 20:
        return None
    h = IP(data[l3:l3 + 20])
    hl = h.ihl * 4
    if h.version != 4 or h.ihl < 5 or l3 + hl > end:
        return None
    if h.len != 0 and h.len < hl:
        return None
    ip_end = end if h.len == 0 else l3 + h.len
    return dict(proto=h.proto, src=_addr(h.src), dst=_addr(h.dst), l4=l3 + hl, ip_end=ip_end,
                frag=int(h.frag > 0))


def ipv6(data: bytes, l3: int, end: int):
    """-> None if invalid, else dict(proto, src, dst, l4, ip_end, frag)."""
    if end - l3 < 40:
        return None
    h = IPv6(data[l3:l3 + 40])
    if h.version != 6:
        return None
    ip_end = end if h.plen == 0 else l3 + 40 + h.plen
    lim = min(ip_end, end)
    nh, pos, frag = h.nh, l3 + 40, 0
    while True:
        if nh in V6_GENERIC_EXT or nh == 51:
            if pos + 2 > lim:
                return None
            if nh == 51:
                e = _dec(AH, data[pos:pos + 2], 1100)   # scapy sizes AH's ICV by its length
                ln = (e.payloadlen + 2) * 4
            else:
                e = _dec(V6_GENERIC_EXT[nh], data[pos:pos + 2], 8)
                ln = (e.len + 1) * 8
            if pos + ln > lim:
                return None
            nh, pos = e.nh, pos + ln
        elif nh == 44:
            if pos + 8 > lim:
                return None
            e = IPv6ExtHdrFragment(data[pos:pos + 8])
            nh, pos = e.nh, pos + 8
            if e.offset > 0:
                frag = 1
                break
        else:
            break
    return dict(proto=nh, src=_addr(h.src), dst=_addr(h.dst), l4=pos, ip_end=ip_end, frag=frag)


def _icmp(ver, data: bytes):
    """The first 8 bytes of an ICMP/ICMPv6 header: type, code and (echo) id.  scapy's ICMP
    only has ``id`` for v4 echo-like types, so v6 is decoded with the echo layout."""
    return _dec(ICMP if ver == 4 else ICMPv6EchoRequest, data, 8)


def _echo(ver, itype):
    return itype in ((8, 0) if ver == 4 else (128, 129))


def quoted(data: bytes, ver: int, q: int, end: int):
    """The header an ICMP error quotes -> None or dict(proto, src, dst, sport, dport)."""
    h = ipv4(data, q, end) if ver == 4 else ipv6(data, q, end)
    if h is None or h["l4"] + 8 > end:
        return None
    l4 = data[h["l4"]:h["l4"] + 8]
    sport = dport = 0
    if not h["frag"]:
        if h["proto"] in (6, 17):
            u = UDP(l4)                          # ports: the first 4 bytes of TCP and UDP
            sport, dport = u.sport, u.dport
        elif (ver, h["proto"]) in ((4, 1), (6, 58)) and _echo(ver, l4[0]):
            sport = dport = _icmp(ver, l4).id
    return dict(proto=h["proto"], src=h["src"], dst=h["dst"], sport=sport, dport=dport)


FIELDS = ("status", "ipver", "proto", "src_hi", "src_lo", "dst_hi", "dst_lo", "sport", "dport",
          "icmp_type", "icmp_code", "icmp_id", "tcp_flags", "tcp_seq", "tcp_ack",
          "l4_payload_len", "frag", "emb_valid", "emb_proto", "emb_src_hi", "emb_src_lo",
          "emb_dst_hi", "emb_dst_lo", "emb_sport", "emb_dport", "ts", "wirelen", "caplen",
          "linktype", "l3_offset")


def decode(data: bytes, lt: int) -> dict:
    """Every header field of one record (the reference's answer), as a dict."""
    row = dict.fromkeys(FIELDS, 0)
    row.update(caplen=len(data), linktype=lt, l3_offset=-1)
    kind, l3 = link(data, lt)
    if kind in ("none", "unknown"):
        row["status"] = STATUS_NON_IP
        return row
    if kind == "cut":
        row["status"] = STATUS_MALFORMED
        return row
    row["l3_offset"] = l3
    end = len(data)
    if kind == "any":
        if l3 >= end:
            row["status"] = STATUS_MALFORMED
            return row
        kind = {4: "v4", 6: "v6"}.get(data[l3] >> 4, "bad")
    h = ipv4(data, l3, end) if kind == "v4" else ipv6(data, l3, end) if kind == "v6" else None
    if h is None:
        row["status"] = STATUS_MALFORMED
        return row
    ver = 4 if kind == "v4" else 6
    lim = min(h["ip_end"], end)
    l4, proto = h["l4"], h["proto"]
    avail = lim - l4
    seg = data[l4:lim]
    out = dict(ipver=ver, proto=proto, frag=h["frag"])
    out["src_hi"], out["src_lo"] = h["src"]
    out["dst_hi"], out["dst_lo"] = h["dst"]
    if h["frag"]:
        out["l4_payload_len"] = max(h["ip_end"] - l4, 0)
    elif proto == 6:
        if avail < 4:
            row["status"] = STATUS_MALFORMED
            return row
        t = _dec(TCP, seg[:20], 20)
        out.update(sport=t.sport, dport=t.dport, tcp_seq=t.seq if avail >= 8 else 0,
                   tcp_ack=t.ack if avail >= 12 else 0,
                   # scapy's flags field is 9 bits (NS from byte 12): the schema has byte 13
                   tcp_flags=int(t.flags) & 0xFF if avail >= 14 else 0)
        hl = t.dataofs * 4 if avail >= 13 and t.dataofs >= 5 else 20
        out["l4_payload_len"] = max(h["ip_end"] - l4 - hl, 0)
    elif proto == 17:
        if avail < 4:
            row["status"] = STATUS_MALFORMED
            return row
        u = _dec(UDP, seg[:8], 8)
        out.update(sport=u.sport, dport=u.dport, l4_payload_len=max(h["ip_end"] - l4 - 8, 0))
    elif (ver, proto) in ((4, 1), (6, 58)):
        if avail < 2:
            row["status"] = STATUS_MALFORMED
            return row
        ic = _icmp(ver, seg[:8])
        out.update(icmp_type=ic.type, icmp_code=ic.code,
                   l4_payload_len=max(h["ip_end"] - l4 - 8, 0))
        if _echo(ver, ic.type) and avail >= 6:
            out.update(icmp_id=ic.id, sport=ic.id, dport=ic.id)
        errors = (3, 4, 5, 11, 12) if ver == 4 else (1, 2, 3, 4)
        if ic.type in errors:
            e = quoted(data, ver, l4 + 8, lim)
            if e is not None:
                out.update(emb_valid=1, emb_proto=e["proto"], emb_sport=e["sport"],
                           emb_dport=e["dport"])
                out["emb_src_hi"], out["emb_src_lo"] = e["src"]
                out["emb_dst_hi"], out["emb_dst_lo"] = e["dst"]
    else:
        out["l4_payload_len"] = max(h["ip_end"] - l4, 0)
    row.update(out)
    return row


def reference_records(path) -> list[dict]:
    """The reference's rows for every complete record of a capture, plus ``data``: the
    record's packet bytes (to check ``rec_offset`` against the file)."""
    rows = []
    for data, lt, ts, wirelen in frames(path):
        row = decode(data, lt)
        row.update(ts=ts, wirelen=wirelen, data=bytes(data))
        rows.append(row)
    return rows


# ---- capture builders for the tests ---------------------------------------------------------
# Plain struct writers, so that tests can build every framing (both byte orders, several
# pcapng sections, SPB, the obsolete packet block, odd options) that scapy cannot write.
def pcap_bytes(records, linktype=1, big=False, nano=False, snaplen=65535) -> bytes:
    """A classic pcap file.  ``records``: (data, ts_ns[, wirelen[, caplen]]) tuples; a
    given caplen is written as is (to fake bad lengths); ``linktype`` is the raw 32-bit
    header field."""
    e = ">" if big else "<"
    out = [struct.pack(e + "IHHiIII", 0xA1B23C4D if nano else 0xA1B2C3D4, 2, 4, 0, 0,
                       snaplen, linktype)]
    for rec in records:
        data, ts = bytes(rec[0]), rec[1]
        wirelen = rec[2] if len(rec) > 2 and rec[2] is not None else len(data)
        caplen = rec[3] if len(rec) > 3 else len(data)
        frac = ts % 10**9 if nano else (ts % 10**9) // 1000
        out.append(struct.pack(e + "IIII", ts // 10**9, frac, caplen, wirelen) + data)
    return b"".join(out)


def _pad4(b: bytes) -> bytes:
    return b + bytes(-len(b) % 4)


class PcapngBuilder:
    """Build a pcapng file block by block: ``PcapngBuilder().shb().idb(1).epb(0, data, ts)``."""

    def __init__(self):
        self.parts = []
        self.e = "<"

    def block(self, btype: int, body: bytes, total=None, trailer=None) -> "PcapngBuilder":
        body = _pad4(body)
        n = 12 + len(body) if total is None else total
        self.parts.append(struct.pack(self.e + "II", btype, n) + body
                          + struct.pack(self.e + "I", n if trailer is None else trailer))
        return self

    def shb(self, big=False, major=1) -> "PcapngBuilder":
        self.e = ">" if big else "<"
        return self.block(0x0A0D0D0A, struct.pack(self.e + "IHHq", 0x1A2B3C4D, major, 0, -1))

    @staticmethod
    def option(e, code: int, value: bytes) -> bytes:
        return struct.pack(e + "HH", code, len(value)) + _pad4(value)

    def idb(self, linktype: int, snaplen=0, tsresol=None, tsoffset=None) -> "PcapngBuilder":
        opts = b""
        if tsresol is not None:
            opts += self.option(self.e, 9, bytes([tsresol]))
        if tsoffset is not None:
            opts += self.option(self.e, 14, struct.pack(self.e + "q", tsoffset))
        if opts:
            opts += struct.pack(self.e + "HH", 0, 0)
        return self.block(1, struct.pack(self.e + "HHI", linktype, 0, snaplen) + opts)

    def epb(self, iface: int, data: bytes, units: int, wirelen=None, caplen=None):
        data = bytes(data)
        return self.block(6, struct.pack(self.e + "IIIII", iface, units >> 32,
                                         units & 0xFFFFFFFF,
                                         len(data) if caplen is None else caplen,
                                         len(data) if wirelen is None else wirelen) + data)

    def pb(self, iface: int, data: bytes, units: int, wirelen=None):
        data = bytes(data)
        return self.block(2, struct.pack(self.e + "HHIIII", iface, 0, units >> 32,
                                         units & 0xFFFFFFFF, len(data),
                                         len(data) if wirelen is None else wirelen) + data)

    def spb(self, data: bytes, wirelen=None):
        data = bytes(data)
        return self.block(3, struct.pack(self.e + "I", len(data) if wirelen is None
                                         else wirelen) + data)

    def bytes(self) -> bytes:
        return b"".join(self.parts)


def mismatches(batch, path) -> list[str]:
    """Differences between a batch read by fastsg and the reference, as messages."""
    ref = reference_records(path)
    if len(batch) != len(ref):
        return [f"{len(batch)} records read, the reference has {len(ref)}"]
    out = []
    raw = open(path, "rb").read()
    for i, r in enumerate(ref):
        for f in FIELDS:
            got = int(batch.columns[f][i])
            if got != int(r[f]):
                out.append(f"record {i}: {f} = {got}, reference {r[f]}")
        o, n = int(batch.rec_offset[i]), int(batch.caplen[i])
        if raw[o:o + n] != r["data"]:
            out.append(f"record {i}: rec_offset {o} does not locate the record's bytes")
    return out
