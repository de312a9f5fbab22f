"""The answers to REJECTed packets (SEMANTICS.md section 5): TCP RSTs and ICMP unreachables.

``build_responses(batch, mask, original_bytes)`` returns, for every packet selected by
``mask``, the raw IP packet (no link header) a host would see back:

* **TCP** (``proto == 6``, not a non-first fragment): an RST, ports swapped, window 0, no
  payload, data offset 5.  If the packet had ACK: flags RST, seq = its ack, ack = 0;
  otherwise RST+ACK, seq = 0, ack = its seq + ``l4_payload_len`` + 1 for SYN + 1 for FIN
  (mod 2**32).  Built from the columns alone.
* **everything else**: ICMP destination unreachable, administratively prohibited --
  IPv4 type 3 code 13 quoting the original IP header (options included) and the first
  8 bytes of its payload; IPv6 type 1 code 1 quoting as much of the original packet as
  fits in 1280 bytes (40 + 8 + at most 1232 quoted bytes).

Common to both: source = the packet's destination, destination = its source; IPv4 TTL 64,
TOS 0, id 0 (DF set on RSTs, as Linux does; not on ICMP errors); IPv6 traffic class and
flow label 0, hop limit 64, no extension headers; every checksum is correct (IPv4 header;
TCP and ICMPv6 with their pseudo headers; ICMPv4).

Packets no host answers (default ``suppress=True``, as Linux's REJECT target and RFC 1122 /
RFC 4443 section 2.4(e) behave) get an **empty** answer, so answer ``j`` always belongs to
the ``j``-th selected packet: a TCP segment carrying RST; an ICMP/ICMPv6 error message
(v4 types 3, 4, 5, 11, 12; v6 types < 128 and redirect 137); a non-first fragment; a
packet sent to a multicast or broadcast address (v4 224.0.0.0/4, 255.255.255.255; v6
ff00::/8) or from an address that names no single host (0.0.0.0, ::, multicast, v4
broadcast).  ``suppress=False`` answers every IP packet (a non-first TCP fragment, having
no TCP header, then gets an ICMP unreachable).  Non-IP and MALFORMED rows never get one.

Original bytes (what the ICMP answers quote) come from ``original_bytes``, one of

* ``None``: ``batch.data``/``batch.data_offsets`` when the batch carries record bytes (the
  IP header at ``l3_offset`` within each record); otherwise every quote is rebuilt;
* a callable ``f(i) -> bytes | None``: the IP packet (from its IP header on) of batch row
  ``i`` (the row index in ``batch``, not the rank among the selected rows); ``None`` for
  "unknown, rebuild it".  For a list ``pkts`` of bytes: ``pkts.__getitem__``;
* a path (``str``/``os.PathLike``): the capture file ``batch`` was read from
  (``read_capture``): row ``i``'s packet is ``caplen - l3_offset`` bytes at
  ``rec_offset + l3_offset`` of the file;
* a tuple ``(buf, starts, lengths)`` of arrays over every row of the batch: row ``i``'s IP
  packet is ``buf[starts[i]:starts[i] + lengths[i]]``; ``starts[i] < 0`` means unknown.

Bytes that do not hold an IP header of the row's version (too short, wrong version
nibble, IHL < 5) count as unknown.  The original is cut to its IP length (Ethernet
padding is never quoted); a capture truncated by its snaplen is quoted as far as it goes.
**Rebuilt originals** (packets generated from arrays, or unknown bytes) are the headers
``fastsg.packet_build.build_frames(..., link="raw")`` makes from the columns -- IPv4/IPv6
header (IPv4: no options, id = 0-based rank among the rebuilt rows, DF; the IP length
covers ``l4_payload_len`` bytes of payload), plus the TCP (seq, ack, flags from the
columns), UDP or ICMP header (the echo sequence number is not in the columns) -- with no
invented payload: an IPv4 quote is the 20-byte header + 8 bytes of the L4 header, an IPv6
quote the 40-byte header (+ the fragment header) + the L4 header.

Timestamps: each answer carries the rejected packet's own ``ts``.
``write_responses`` writes the non-empty answers as a raw-IP (link type 101) pcap.
"""
from __future__ import annotations

import os

import numpy as np

from . import schema
from .config import njit

TTL = 64
V6_MIN_MTU = 1280
V6_QUOTE_MAX = V6_MIN_MTU - 40 - 8      # 1232 quoted bytes at most
V4_QUOTE_PAYLOAD = 8                     # bytes of payload after the quoted IPv4 header
LINKTYPE_RAW = 101

# answer kinds (per selected packet)
A_NONE, A_RST, A_ICMP = 0, 1, 2

ICMP4_ERRORS = (3, 4, 5, 11, 12)
ICMP6_REDIRECT = 137


# ------------------------------------------------------------------------------------------
# public API
# ------------------------------------------------------------------------------------------

def build_responses(batch, mask, original_bytes=None, *, suppress: bool = True):
    """Answers to the packets of ``batch`` selected by ``mask`` (bool, one per row).

    Returns ``(buf, offsets, ts_ns)``: ``buf`` uint8 holding the raw IP answers back to
    back, ``offsets`` int64[k+1] (answer ``j`` = ``buf[offsets[j]:offsets[j+1]]``, empty
    when no host would answer, see the module doc), ``ts_ns`` int64[k] = the selected
    packets' timestamps, where ``k = mask.sum()``.  ``original_bytes``: see the module doc.
    """
    n = len(batch)
    mask = np.asarray(mask)
    if mask.dtype != np.bool_:
        raise TypeError(f"mask must be a boolean array, not {mask.dtype}")
    if mask.shape != (n,):
        raise ValueError(f"mask has shape {mask.shape}, the batch {n} packets")
    rows = np.flatnonzero(mask)
    k = len(rows)
    c = {name: col[rows] for name, col in batch.columns.items()}
    kind = _answer_kinds(c, suppress)

    # TCP: the RST's seq/ack/flags, vectorised (uint64 arithmetic, then mod 2**32)
    flags = c["tcp_flags"].astype(np.uint64)
    has_ack = (flags & np.uint64(schema.TCP_ACK)) != 0
    nxt = (c["tcp_seq"].astype(np.uint64) + c["l4_payload_len"].astype(np.uint64)
           + ((flags >> np.uint64(1)) & np.uint64(1)) + (flags & np.uint64(1)))
    rseq = np.where(has_ack, c["tcp_ack"], 0).astype(np.int64)
    rack = np.where(has_ack, 0, nxt & np.uint64(0xFFFFFFFF)).astype(np.int64)
    rflags = np.where(has_ack, schema.TCP_RST, schema.TCP_RST | schema.TCP_ACK).astype(np.int64)

    # ICMP: the quotes
    icmp = np.flatnonzero(kind == A_ICMP)
    qlen = np.zeros(k, np.int64)
    qbuf, qlen[icmp] = _quotes(batch, rows[icmp], original_bytes)
    qoff = np.zeros(k + 1, np.int64)
    np.cumsum(qlen, out=qoff[1:])

    ver = c["ipver"].astype(np.int64)
    iph = np.where(ver == 6, 40, 20)
    length = np.select([kind == A_RST, kind == A_ICMP], [iph + 20, iph + 8 + qlen], 0)
    offsets = np.zeros(k + 1, np.int64)
    np.cumsum(length, out=offsets[1:])
    buf = np.zeros(int(offsets[-1]), np.uint8)
    _fill(buf, offsets, kind.astype(np.int64), ver, _addr_bytes(c, "src"),
          _addr_bytes(c, "dst"), c["sport"].astype(np.int64), c["dport"].astype(np.int64),
          rseq, rack, rflags, qbuf, qoff)
    return buf, offsets, c["ts"].astype(np.int64)


def write_responses(path, batch, mask, original_bytes=None, *, suppress: bool = True,
                    nanosecond: bool = True) -> int:
    """Write the answers of ``build_responses`` as a raw-IP (link type 101) classic pcap,
    in the order of the rejected packets, each with its packet's timestamp; empty answers
    are left out.  Returns the number of records written."""
    from .capture.writer import PcapWriter
    buf, offsets, ts = build_responses(batch, mask, original_bytes, suppress=suppress)
    keep = np.diff(offsets) > 0
    # empty answers add no bytes, so the kept starts plus the final end bound the kept ones
    kept_offsets = np.concatenate((offsets[:-1][keep], offsets[-1:]))
    with PcapWriter(path, LINKTYPE_RAW, nanosecond=nanosecond) as w:
        w.write_many(buf, kept_offsets, ts[keep])
    return int(keep.sum())


# ------------------------------------------------------------------------------------------
# which packets get which answer
# ------------------------------------------------------------------------------------------

def _answer_kinds(c, suppress: bool) -> np.ndarray:
    """A_NONE / A_RST / A_ICMP per selected packet (int8)."""
    ver = c["ipver"]
    proto = c["proto"]
    frag = c["frag"] != 0
    ip = (c["status"] == schema.STATUS_IP) & ((ver == 4) | (ver == 6))
    tcp = (proto == 6) & ~frag
    kind = np.where(ip, np.where(tcp, A_RST, A_ICMP), A_NONE).astype(np.int8)
    if not suppress:
        return kind
    v4 = ver == 4
    v6 = ver == 6
    ity = c["icmp_type"]
    icmp_error = ((v4 & (proto == 1) & np.isin(ity, ICMP4_ERRORS))
                  | (v6 & (proto == 58) & ((ity < 128) | (ity == ICMP6_REDIRECT))))
    silent = (tcp & ((c["tcp_flags"] & schema.TCP_RST) != 0)) | icmp_error | frag
    for side in ("src", "dst"):
        hi, lo = c[side + "_hi"], c[side + "_lo"]
        multi = np.where(v4, (lo >> np.uint64(28)) == 0xE, (hi >> np.uint64(56)) == 0xFF)
        bcast = v4 & (lo == 0xFFFFFFFF)
        silent |= multi | bcast
    silent |= (c["src_hi"] == 0) & (c["src_lo"] == 0)          # 0.0.0.0 / ::
    kind[silent] = A_NONE
    return kind


def _addr_bytes(c, side: str) -> np.ndarray:
    """Addresses as 16 network-order bytes per row (IPv4: the last 4)."""
    k = len(c[side + "_lo"])
    both = np.empty((k, 2), dtype=">u8")
    both[:, 0] = c[side + "_hi"]
    both[:, 1] = c[side + "_lo"]
    return np.ascontiguousarray(both).view(np.uint8).reshape(k, 16)


# ------------------------------------------------------------------------------------------
# the quoted originals
# ------------------------------------------------------------------------------------------

def _quotes(batch, rows: np.ndarray, original_bytes):
    """The bytes each ICMP answer quotes for batch rows ``rows``: (buf uint8, lengths int64)
    with the quotes back to back in the order of ``rows``."""
    m = len(rows)
    if m == 0:
        return np.zeros(0, np.uint8), np.zeros(0, np.int64)
    ver = batch.ipver[rows].astype(np.int64)
    src, starts, lengths = _locate(batch, rows, original_bytes)
    qlen = np.empty(m, np.int64)
    _quote_lengths(src, starts, lengths, ver, qlen)
    # unknown or unusable bytes: rebuild the headers from the columns
    missing = np.flatnonzero(qlen < 0)
    if len(missing):
        from .packet_build import build_frames
        fbuf, foff = build_frames(batch.take(rows[missing]), link="raw", snaplen=0)
        fstarts = foff[:-1].copy()
        flens = np.diff(foff)
        flen_q = np.empty(len(missing), np.int64)
        _quote_lengths(fbuf, fstarts, flens, ver[missing], flen_q)
        if (flen_q < 0).any():      # cannot happen for IP rows; guard against misuse
            raise ValueError("could not rebuild the original headers of some rejected packets")
        qlen[missing] = flen_q
    qoff = np.zeros(m + 1, np.int64)
    np.cumsum(qlen, out=qoff[1:])
    out = np.empty(int(qoff[-1]), np.uint8)
    have = np.flatnonzero(starts >= 0)
    have = have[np.isin(have, missing, invert=True)] if len(missing) else have
    _gather(src, starts[have], qlen[have], out, qoff[have])
    if len(missing):
        _gather(fbuf, fstarts, qlen[missing], out, qoff[missing])
    return out, qlen


def _locate(batch, rows: np.ndarray, original_bytes):
    """(buf uint8, starts int64[m], lengths int64[m]) of the original IP packets of ``rows``;
    ``starts < 0`` where they are unknown."""
    m = len(rows)
    unknown = (np.zeros(0, np.uint8), np.full(m, -1, np.int64), np.zeros(m, np.int64))
    if original_bytes is None:
        if batch.data is None or batch.data_offsets is None:
            return unknown
        data = np.asarray(batch.data, dtype=np.uint8)
        doff = np.asarray(batch.data_offsets, dtype=np.int64)
        rec = doff[rows]
        reclen = doff[rows + 1] - rec
        return data, *_within(rec, reclen, batch.l3_offset[rows])
    if isinstance(original_bytes, (str, os.PathLike)):
        path = os.fspath(original_bytes)
        size = os.path.getsize(path)
        data = np.asarray(np.memmap(path, dtype=np.uint8, mode="r")) if size else np.zeros(0, np.uint8)
        starts, lengths = _within(batch.rec_offset[rows], batch.caplen[rows], batch.l3_offset[rows])
        _check_bounds(starts, lengths, size, f"{path}: the batch's rec_offset/caplen point "
                                             "outside the file; was it read from this file?")
        return data, starts, lengths
    if isinstance(original_bytes, tuple) and len(original_bytes) == 3:
        buf, starts, lengths = original_bytes
        data = np.asarray(buf, dtype=np.uint8).reshape(-1)
        starts = np.asarray(starts, dtype=np.int64)
        lengths = np.asarray(lengths, dtype=np.int64)
        n = len(batch)
        if starts.shape != (n,) or lengths.shape != (n,):
            raise ValueError(f"original_bytes: starts and lengths need {n} entries "
                             f"(one per batch row), not {starts.shape} / {lengths.shape}")
        starts, lengths = starts[rows], lengths[rows]
        starts = np.where(lengths < 0, -1, starts)
        _check_bounds(starts, lengths, len(data), "original_bytes: (starts, lengths) point "
                                                  "outside the buffer")
        return data, starts, lengths
    if callable(original_bytes):
        pieces = [original_bytes(int(i)) for i in rows]
        lengths = np.array([0 if p is None else len(p) for p in pieces], np.int64)
        known = np.array([p is not None for p in pieces], bool)
        offs = np.concatenate(([0], np.cumsum(lengths)))
        data = np.frombuffer(b"".join(bytes(p) for p in pieces if p is not None), np.uint8)
        return data, np.where(known, offs[:-1], -1).astype(np.int64), lengths
    raise TypeError("original_bytes must be None, a callable row -> bytes, a capture path or "
                    f"a (buf, starts, lengths) tuple, not {type(original_bytes).__name__}")


def _within(rec, reclen, l3):
    """Start and length of the IP packet inside records at ``rec`` of ``reclen`` bytes."""
    rec = np.asarray(rec, np.int64)
    l3 = np.asarray(l3, np.int64)
    ok = (rec >= 0) & (l3 >= 0) & (l3 < reclen)
    return np.where(ok, rec + l3, -1), np.where(ok, reclen - l3, 0).astype(np.int64)


def _check_bounds(starts, lengths, size, message):
    ok = starts >= 0
    if ok.any() and ((starts[ok] + lengths[ok]).max() > size or lengths[ok].min() < 0):
        raise ValueError(message)


# ------------------------------------------------------------------------------------------
# kernels
# ------------------------------------------------------------------------------------------

@njit()
def _quote_lengths(src, starts, lengths, ver, out):
    """Bytes to quote of each original (``out``), -1 where the bytes are no IP header of
    version ``ver[j]``.  IPv4: header + 8 bytes; IPv6: up to V6_QUOTE_MAX; both cut to the
    IP length (so link-layer padding is never quoted) and to the bytes available."""
    for j in range(len(starts)):
        out[j] = -1
        p = starts[j]
        avail = lengths[j]
        if p < 0 or avail < 1:
            continue
        b0 = np.int64(src[p])
        if (b0 >> 4) != ver[j]:
            continue
        if ver[j] == 4:
            ihl = (b0 & 15) * 4
            if ihl < 20 or avail < ihl:
                continue
            total = (np.int64(src[p + 2]) << 8) | np.int64(src[p + 3])
            iplen = total if ihl <= total <= avail else avail
            out[j] = min(iplen, ihl + V4_QUOTE_PAYLOAD)
        else:
            if avail < 40:
                continue
            plen = (np.int64(src[p + 4]) << 8) | np.int64(src[p + 5])
            iplen = 40 + plen if 0 < plen and 40 + plen <= avail else avail
            out[j] = min(iplen, V6_QUOTE_MAX)


@njit()
def _gather(src, starts, lengths, out, out_starts):
    """out[out_starts[j]:+lengths[j]] = src[starts[j]:+lengths[j]]."""
    for j in range(len(starts)):
        s = starts[j]
        d = out_starts[j]
        for b in range(lengths[j]):
            out[d + b] = src[s + b]


@njit(inline=True)
def _put16(out, p, v):
    out[p] = (v >> 8) & 0xFF
    out[p + 1] = v & 0xFF


@njit(inline=True)
def _put32(out, p, v):
    out[p] = (v >> 24) & 0xFF
    out[p + 1] = (v >> 16) & 0xFF
    out[p + 2] = (v >> 8) & 0xFF
    out[p + 3] = v & 0xFF


@njit(inline=True)
def _sum16(buf, a, b):
    """Ones-complement partial sum (unfolded) of the 16-bit words of buf[a:b]."""
    s = np.int64(0)
    i = a
    while i + 1 < b:
        s += (np.int64(buf[i]) << 8) | np.int64(buf[i + 1])
        i += 2
    if i < b:
        s += np.int64(buf[i]) << 8
    return s


@njit(inline=True)
def _fold(s):
    while s > 0xFFFF:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


@njit()
def _fill(out, offsets, kind, ver, saddr, daddr, sport, dport, rseq, rack, rflags, qbuf, qoff):
    """Write every answer into ``out`` (zeroed beforehand) at ``offsets``."""
    for j in range(len(kind)):
        a = kind[j]
        if a == A_NONE:
            continue
        p = offsets[j]
        total = offsets[j + 1] - p
        proto = 6 if a == A_RST else (58 if ver[j] == 6 else 1)
        if ver[j] == 6:
            out[p] = 0x60
            _put16(out, p + 4, total - 40)
            out[p + 6] = proto
            out[p + 7] = TTL
            for b in range(16):
                out[p + 8 + b] = daddr[j, b]        # source = the packet's destination
                out[p + 24 + b] = saddr[j, b]
            h = 40
            pseudo = _sum16(out, p + 8, p + 40) + proto + (total - 40)
        else:
            out[p] = 0x45
            _put16(out, p + 2, total)
            if a == A_RST:
                out[p + 6] = 0x40                   # DF
            out[p + 8] = TTL
            out[p + 9] = proto
            for b in range(4):
                out[p + 12 + b] = daddr[j, 12 + b]
                out[p + 16 + b] = saddr[j, 12 + b]
            _put16(out, p + 10, _fold(_sum16(out, p, p + 20)))
            h = 20
            pseudo = _sum16(out, p + 12, p + 20) + proto + (total - 20)
        q = p + h
        if a == A_RST:
            _put16(out, q, dport[j])
            _put16(out, q + 2, sport[j])
            _put32(out, q + 4, rseq[j])
            _put32(out, q + 8, rack[j])
            out[q + 12] = 0x50                      # data offset 5, no options
            out[q + 13] = rflags[j]
            # window, checksum, urgent pointer: 0
            _put16(out, q + 16, _fold(pseudo + _sum16(out, q, q + 20)))
        else:
            if ver[j] == 6:
                out[q] = 1                          # destination unreachable
                out[q + 1] = 1                      # administratively prohibited
            else:
                out[q] = 3                          # destination unreachable
                out[q + 1] = 13                     # communication administratively prohibited
            s0 = qoff[j]
            for b in range(qoff[j + 1] - s0):
                out[q + 8 + b] = qbuf[s0 + b]
            s = _sum16(out, q, p + total)
            if ver[j] == 6:
                s += pseudo
            _put16(out, q + 2, _fold(s))
