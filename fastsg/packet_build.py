"""Real packet bytes from schema columns, vectorised with numpy.

``build_frames(batch, link)`` turns a ``PacketBatch`` into frames: Ethernet II (or raw IP) +
IPv4/IPv6 + TCP/UDP/ICMP/ICMPv6 with valid checksums, IPv4 non-first fragments (offset 1480,
no L4 header), IPv6 fragment headers, ICMP errors quoting the ``emb_*`` header.  Rows are
grouped by *shape* (IP version x L4 kind x fragment x error quote); each group's headers are
one fixed-width uint8 matrix filled column-wise, checksummed row-wise and scattered into the
output buffer.  The payload is zeros: only ``snaplen`` bytes of each frame are captured (never
fewer than its headers) and the checksums are those of the whole zero-padded packet, so they
stay valid for the frame on the wire (``frame_lengths``).

``write_capture(path, batch, link)`` writes a classic pcap (nanosecond timestamps) through
``fastsg.capture.writer.PcapWriter``.
"""
from __future__ import annotations

import numpy as np

from . import schema

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKS = {"ethernet": (LINKTYPE_ETHERNET, 14), "raw": (LINKTYPE_RAW, 0)}
DEFAULT_SNAPLEN = 128
# non-first fragments sit right after a first fragment carrying 1480 (v4) / 1448 (v6) bytes
FRAG_OFFSET_V4 = 1480 // 8
FRAG_OFFSET_V6 = 1448 // 8
# L4 kinds of a row
K_NONE, K_TCP, K_UDP, K_ICMP = 0, 1, 2, 3
L4_LEN = np.array([0, 20, 8, 8])
TTL = 64


def build_frames(batch, link: str = "ethernet", snaplen: int = DEFAULT_SNAPLEN):
    """Frames of every row of ``batch`` -> (buf uint8[total], offsets int64[n+1]).

    Frame i is ``buf[offsets[i]:offsets[i+1]]``: the first min(frame length, max(snaplen,
    header length)) bytes of the packet.  IP rows follow their columns; NON_IP rows become ARP
    requests (ethernet only); MALFORMED rows a 12-byte cut IPv4 header.
    """
    cols = batch.columns
    lay = _layout(cols, link, snaplen)
    buf = np.zeros(int(lay["offsets"][-1]), np.uint8)
    for rows, hdr in _all_headers(cols, lay, link):
        _scatter(buf, lay["offsets"][rows], hdr)
    return buf, lay["offsets"]


def frame_lengths(batch, link: str = "ethernet") -> np.ndarray:
    """Original (wire) length of each frame ``build_frames`` makes, uint32[n]."""
    return _layout(batch.columns, link, DEFAULT_SNAPLEN)["wire"].astype(np.uint32)


def write_capture(path, batch, link: str = "ethernet", snaplen: int = DEFAULT_SNAPLEN) -> int:
    """Write ``batch`` as a nanosecond pcap of ``link`` frames; returns the record count.

    Record timestamps are ``batch.ts``; original lengths are ``frame_lengths`` (for the
    generated traffic and ``link="ethernet"`` these equal ``batch.wirelen``).
    """
    from .capture.writer import PcapWriter
    linktype = LINKS[_check_link(link)][0]
    buf, offsets = build_frames(batch, link, snaplen)
    wire = frame_lengths(batch, link)
    caps = np.diff(offsets)
    file_snaplen = int(max(snaplen, caps.max() if len(caps) else 0))
    with PcapWriter(path, linktype, nanosecond=True, snaplen=file_snaplen) as w:
        w.write_many(buf, offsets, np.asarray(batch.ts, np.int64), wire)
    return len(batch)


# ------------------------------------------------------------------------------------------
# layout
# ------------------------------------------------------------------------------------------

def _check_link(link: str) -> str:
    if link not in LINKS:
        raise ValueError(f"link must be one of {sorted(LINKS)}, not {link!r}")
    return link


def _layout(cols, link, snaplen) -> dict:
    """Per-row lengths and shape codes (all int64[n] unless noted).

    kind: L4 kind (K_*; K_NONE for non-first fragments and other protocols); quote: bytes of
    quoted header in an ICMP error (0, 28 or 48); body: L4 payload incl. the quote; l3: IP
    header incl. the IPv6 fragment header; hdr: bytes of headers; wire: frame length on the
    wire; offsets: int64[n+1] of the captured frames.
    """
    _check_link(link)
    link_len = LINKS[link][1]
    n = len(cols["status"])
    status = cols["status"]
    ver = cols["ipver"].astype(np.int64)
    proto = cols["proto"].astype(np.int64)
    frag = cols["frag"] != 0
    ip = status == schema.STATUS_IP
    if link == "raw" and (status == schema.STATUS_NON_IP).any():
        raise ValueError("a raw-IP capture cannot carry non-IP frames (status NON_IP rows)")
    if (ip & ~np.isin(ver, (4, 6))).any():
        raise ValueError("IP rows must have ipver 4 or 6")
    icmp = np.where(ver == 6, proto == 58, proto == 1)
    kind = np.select([frag, proto == 6, proto == 17, icmp], [K_NONE, K_TCP, K_UDP, K_ICMP], K_NONE)
    quote = np.where((kind == K_ICMP) & (cols["emb_valid"] != 0), np.where(ver == 6, 48, 28), 0)
    body = np.maximum(cols["l4_payload_len"].astype(np.int64), quote)
    l3 = np.where(ver == 6, 40 + 8 * frag, 20)
    hdr = link_len + l3 + L4_LEN[kind] + quote
    wire = hdr - quote + body
    # NON_IP: a 42-byte ARP request; MALFORMED: an IPv4 header cut after 12 bytes
    hdr = np.where(status == schema.STATUS_NON_IP, 42, np.where(ip, hdr, link_len + 12))
    wire = np.where(ip, wire, hdr)
    cap = np.minimum(wire, np.maximum(snaplen, hdr))
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(cap, out=offsets[1:])
    return {"ver": ver, "proto": proto, "frag": frag, "ip": ip, "kind": kind, "quote": quote,
            "body": body, "l3": l3, "hdr": hdr, "wire": wire, "offsets": offsets,
            "link_len": link_len}


def _all_headers(cols, lay, link):
    """Yield (rows int64[m], headers uint8[m, h]) for every shape group present."""
    status = cols["status"]
    ip = lay["ip"]
    shape = (lay["ver"] * 100 + lay["kind"] * 10 + lay["frag"] * 2 + (lay["quote"] > 0))
    for key in np.unique(shape[ip]):
        rows = np.nonzero(ip & (shape == key))[0]
        yield rows, _ip_headers(cols, lay, rows, link)
    rows = np.nonzero(status == schema.STATUS_NON_IP)[0]
    if len(rows):
        yield rows, _arp(cols, rows)
    rows = np.nonzero(status == schema.STATUS_MALFORMED)[0]
    if len(rows):
        cut = np.zeros((len(rows), 12), np.uint8)
        cut[:, 0] = 0x45
        cut[:, 3] = 20
        cut[:, 8] = TTL
        yield rows, _with_link(cols, rows, link, 0x0800, cut)


# ------------------------------------------------------------------------------------------
# header pieces: each returns uint8[m, width]
# ------------------------------------------------------------------------------------------

def _be(x, nbytes: int) -> np.ndarray:
    """Big-endian bytes of unsigned values: uint8[m, nbytes]."""
    x = np.asarray(x).astype(np.uint64)
    shifts = (np.arange(nbytes - 1, -1, -1, dtype=np.uint64) * np.uint64(8))
    return ((x[:, None] >> shifts) & np.uint64(0xFF)).astype(np.uint8)


def _addr(hi, lo, ver6: bool) -> np.ndarray:
    """Addresses -> 4 (IPv4) or 16 (IPv6) network-order bytes per row."""
    return np.hstack((_be(hi, 8), _be(lo, 8))) if ver6 else _be(lo, 4)


def _ones_sum(a: np.ndarray) -> np.ndarray:
    """Ones-complement partial sum (unfolded, uint64[m]) of rows of bytes (padded to even)."""
    if a.shape[1] % 2:
        a = np.hstack((a, np.zeros((a.shape[0], 1), np.uint8)))
    return ((a[:, 0::2].astype(np.uint64) << np.uint64(8)) | a[:, 1::2]).sum(axis=1)


def _checksum(*parts) -> np.ndarray:
    """Internet checksum (uint16 values as uint64[m]) of the concatenated row pieces; pieces
    are uint8[m, k] arrays (each of even width, or the last one) or precomputed sums."""
    s = np.zeros(len(parts[0]), np.uint64)
    for p in parts:
        s = s + (p if p.ndim == 1 else _ones_sum(p))
    for _ in range(3):
        s = (s & np.uint64(0xFFFF)) + (s >> np.uint64(16))
    return ~s & np.uint64(0xFFFF)


def _macs(cols, rows) -> tuple[np.ndarray, np.ndarray]:
    """Locally administered MACs 02:00:<low 32 address bits> for destination and source."""
    pre = np.tile(np.array([0x02, 0x00], np.uint8), (len(rows), 1))
    return (np.hstack((pre, _be(cols["dst_lo"][rows] & np.uint64(0xFFFFFFFF), 4))),
            np.hstack((pre, _be(cols["src_lo"][rows] & np.uint64(0xFFFFFFFF), 4))))


def _with_link(cols, rows, link, ethertype, rest) -> np.ndarray:
    """Prefix ``rest`` with an Ethernet II header (``link == "ethernet"``)."""
    if link != "ethernet":
        return rest
    dst, src = _macs(cols, rows)
    return np.hstack((dst, src, _be(np.full(len(rows), ethertype), 2), rest))


def _arp(cols, rows) -> np.ndarray:
    """ARP who-has frames (42 bytes) for NON_IP rows: sender = src_lo, target = dst_lo."""
    m = len(rows)
    dst, src = _macs(cols, rows)
    fixed = np.tile(np.array([0, 1, 8, 0, 6, 4, 0, 1], np.uint8), (m, 1))
    return np.hstack((np.full((m, 6), 0xFF, np.uint8), src, _be(np.full(m, 0x0806), 2), fixed, src,
                      _be(cols["src_lo"][rows] & np.uint64(0xFFFFFFFF), 4), np.zeros((m, 6), np.uint8),
                      _be(cols["dst_lo"][rows] & np.uint64(0xFFFFFFFF), 4)))


def _ipv4(total_len, ident, frag_field, proto, src, dst) -> np.ndarray:
    """IPv4 headers (20 bytes, checksummed); ``src``/``dst`` are uint8[m, 4]."""
    m = len(total_len)
    h = np.hstack((np.tile(np.array([0x45, 0], np.uint8), (m, 1)), _be(total_len, 2), _be(ident, 2),
                   _be(frag_field, 2), np.full((m, 1), TTL, np.uint8), _be(proto, 1),
                   np.zeros((m, 2), np.uint8), src, dst))
    h[:, 10:12] = _be(_checksum(h), 2)
    return h


def _ipv6(payload_len, next_header, src, dst) -> np.ndarray:
    """IPv6 headers (40 bytes); ``src``/``dst`` are uint8[m, 16]."""
    m = len(payload_len)
    return np.hstack((np.tile(np.array([0x60, 0, 0, 0], np.uint8), (m, 1)), _be(payload_len, 2),
                      _be(next_header, 1), np.full((m, 1), TTL, np.uint8), src, dst))


def _pseudo_sum(src, dst, proto, l4_len, ver6: bool) -> np.ndarray:
    """Ones-complement sum of the TCP/UDP/ICMPv6 pseudo header."""
    if ver6:
        return _ones_sum(np.hstack((src, dst, _be(l4_len, 4), np.zeros((len(src), 3), np.uint8),
                                    _be(proto, 1))))
    return _ones_sum(np.hstack((src, dst, np.zeros((len(src), 1), np.uint8), _be(proto, 1),
                                _be(l4_len, 2))))


def _quote(cols, rows, ver6: bool) -> np.ndarray:
    """The original header an ICMP error quotes: IP header + 8 bytes of L4 (28 / 48 bytes)."""
    m = len(rows)
    ep = cols["emb_proto"][rows].astype(np.int64)
    src = _addr(cols["emb_src_hi"][rows], cols["emb_src_lo"][rows], ver6)
    dst = _addr(cols["emb_dst_hi"][rows], cols["emb_dst_lo"][rows], ver6)
    sp = cols["emb_sport"][rows].astype(np.int64)
    dp = cols["emb_dport"][rows].astype(np.int64)
    l4len = np.where(ep == 6, 20, 8)
    echo_type = 128 if ver6 else 8
    is_icmp = ep == (58 if ver6 else 1)
    # tcp: ports + seq 0; udp: ports + length 8 + checksum 0; icmp echo: type, code, 0, id, seq 0
    l4 = np.where(is_icmp[:, None],
                  np.hstack((_be(np.full(m, echo_type), 1), np.zeros((m, 3), np.uint8), _be(sp, 2),
                             np.zeros((m, 2), np.uint8))),
                  np.hstack((_be(sp, 2), _be(dp, 2),
                             np.where((ep == 17)[:, None], _be(np.full(m, 8), 2), 0).astype(np.uint8),
                             np.zeros((m, 2), np.uint8))))
    if ver6:
        inner = _ipv6(l4len, ep, src, dst)
    else:
        inner = _ipv4(20 + l4len, np.zeros(m), np.full(m, 0x4000), ep, src, dst)
    return np.hstack((inner, l4.astype(np.uint8)))


def _ip_headers(cols, lay, rows, link) -> np.ndarray:
    """All headers of one shape group (same version, L4 kind, fragment flag, quote)."""
    i0 = rows[0]
    ver6 = lay["ver"][i0] == 6
    kind = int(lay["kind"][i0])
    frag = bool(lay["frag"][i0])
    m = len(rows)
    proto = lay["proto"][rows]
    src = _addr(cols["src_hi"][rows], cols["src_lo"][rows], ver6)
    dst = _addr(cols["dst_hi"][rows], cols["dst_lo"][rows], ver6)
    body = lay["body"][rows]
    l4_len = L4_LEN[kind] + body
    ident = rows & 0xFFFF
    l4 = _l4(cols, lay, rows, kind, ver6, src, dst, l4_len, body)
    if ver6:
        ext = np.zeros((m, 0), np.uint8)
        nh = proto
        if frag:
            ext = np.hstack((_be(proto, 1), np.zeros((m, 1), np.uint8),
                             _be(np.full(m, FRAG_OFFSET_V6 << 3), 2), _be(ident, 4)))
            nh = np.full(m, 44)
        ip = np.hstack((_ipv6(ext.shape[1] + l4_len, nh, src, dst), ext))
    else:
        frag_field = np.full(m, FRAG_OFFSET_V4 if frag else 0x4000)
        ip = _ipv4(20 + l4_len, ident, frag_field, proto, src, dst)
    return _with_link(cols, rows, link, 0x86DD if ver6 else 0x0800, np.hstack((ip, l4)))


def _l4(cols, lay, rows, kind, ver6, src, dst, l4_len, body) -> np.ndarray:
    """TCP / UDP / ICMP(v6) header (+ quote for errors) of one group; empty for K_NONE."""
    m = len(rows)
    sport = cols["sport"][rows]
    dport = cols["dport"][rows]
    proto = lay["proto"][rows]
    z2 = np.zeros((m, 2), np.uint8)
    if kind == K_NONE:
        return np.zeros((m, 0), np.uint8)
    if kind == K_TCP:
        h = np.hstack((_be(sport, 2), _be(dport, 2), _be(cols["tcp_seq"][rows], 4),
                       _be(cols["tcp_ack"][rows], 4), np.full((m, 1), 0x50, np.uint8),
                       _be(cols["tcp_flags"][rows], 1), _be(np.full(m, 64240), 2), z2, z2))
        h[:, 16:18] = _be(_checksum(_pseudo_sum(src, dst, proto, l4_len, ver6), h), 2)
        return h
    if kind == K_UDP:
        h = np.hstack((_be(sport, 2), _be(dport, 2), _be(l4_len, 2), z2))
        c = _checksum(_pseudo_sum(src, dst, proto, l4_len, ver6), h)
        h[:, 6:8] = _be(np.where(c == 0, 0xFFFF, c), 2)    # 0 means "no checksum" in UDP
        return h
    ity = cols["icmp_type"][rows]
    quote = lay["quote"][rows[0]] > 0
    if quote:
        rest = np.hstack((np.zeros((m, 4), np.uint8), _quote(cols, rows, ver6)))
    else:   # echo: identifier + sequence; other types: 4 zero bytes
        seq = rows & 0xFFFF
        echo = np.isin(ity, (128, 129) if ver6 else (0, 8))
        rest = np.where(echo[:, None], np.hstack((_be(cols["icmp_id"][rows], 2), _be(seq, 2))), 0)
        rest = rest.astype(np.uint8)
    h = np.hstack((_be(ity, 1), _be(cols["icmp_code"][rows], 1), z2, rest))
    parts = [h] if not ver6 else [_pseudo_sum(src, dst, np.full(m, 58), l4_len, True), h]
    h[:, 2:4] = _be(_checksum(*parts), 2)
    return h


def _scatter(buf, starts, hdr, chunk: int = 1 << 16) -> None:
    """buf[starts[i] + j] = hdr[i, j], in chunks so the index matrix stays small."""
    width = hdr.shape[1]
    cols = np.arange(width, dtype=np.int64)
    for a in range(0, len(starts), chunk):
        idx = starts[a:a + chunk, None] + cols
        buf[idx] = hdr[a:a + chunk]
