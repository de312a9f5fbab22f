"""numba kernels: decode the link, IP and L4 headers of indexed capture records.

Input is the whole capture as one ``uint8`` array (usually ``np.frombuffer`` over an mmap)
plus, per record, the byte offset of its packet data (``rec_offset``, int64), its captured
length (``caplen``, uint32) and its link type (``linktype``, uint16).  Output is written
into the schema columns (``fastsg.schema``) of the same records.  All wire fields are
network byte order (big-endian) except the BSD NULL link header, which is in the byte order
of the machine that wrote the capture.

Conventions inside this module:

* positions are absolute indexes into the capture array;
* ``cap_end`` is the end of the captured bytes of the record, ``ip_end`` the end of the IP
  packet according to its own length field (may lie beyond ``cap_end`` when the snaplen cut
  the packet, and is ``cap_end`` when the length field is 0, as in TSO captures), and
  ``data_end = min(ip_end, cap_end)`` bounds every header read (so Ethernet padding is
  never taken for a header);
* helpers return plain tuples of scalars; every integer is int64 except addresses, which
  are uint64 halves (numba turns uint64/int64 mixes into floats, so the two never meet).

The kernel writes only the columns that differ from their defaults for a record: the
columns must come fresh from ``schema.empty_columns`` or ``schema.block_columns`` (zeros;
``l3_offset`` -1).  Pages of columns that stay zero (IPv6 high halves in an IPv4 capture,
the ICMP-error columns...) are then never touched.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import prange

from ..config import jit_options, njit
from ..schema import STATUS_MALFORMED, STATUS_NON_IP


def inline():
    """``@njit()`` for the tuple-returning helpers of the kernels (link_layer, ipv4_header,
    transport...): same options, but inlined into the caller at numba IR level.  Called out
    of line they cost ~40% of the parse time (numba's calling convention returns tuples
    through memory behind a status word).  The one-line byte readers stay plain ``@njit()``:
    LLVM inlines those by itself, and IR-inlining their many call sites makes compilation
    several times slower."""
    return numba.njit(inline="always", **jit_options())

# What the link layer says follows it (first element of ``link_layer``'s result).
NET_CUT = -1        # the link header itself is cut off: MALFORMED
NET_NONE = 0        # not IP (ARP, 802.3/LLC, unknown family...): NON_IP
NET_ANY = 1         # raw IP: the version nibble decides
NET_UNKNOWN = 2     # link type fastsg does not decode: NON_IP
NET_V4 = 4
NET_V6 = 6

# Link types decoded (pcap LINKTYPE_* values).
LT_NULL, LT_ETHERNET, LT_RAW12, LT_RAW14, LT_RAW = 0, 1, 12, 14, 101
LT_LOOP, LT_SLL, LT_IPV4, LT_IPV6, LT_SLL2 = 108, 113, 228, 229, 276
KNOWN_LINKTYPES = (LT_NULL, LT_ETHERNET, LT_RAW12, LT_RAW14, LT_RAW, LT_LOOP, LT_SLL,
                   LT_IPV4, LT_IPV6, LT_SLL2)

_ZERO64 = np.uint64(0)


# ---- byte access ----------------------------------------------------------------------
# Every read of the capture goes through ``byte``: indexing with an *unsigned* value spares
# numba's negative-index wraparound (a compare and a conditional move per byte, and no
# combining of adjacent byte loads).  Positions are never negative.
@njit()
def byte(b, p):
    """``b[p]`` as int64."""
    return np.int64(b[np.uint64(p)])


@njit()
def be16(b, p):
    """Big-endian uint16 at ``b[p:p+2]`` as int64."""
    return (byte(b, p) << 8) | byte(b, p + 1)


@njit()
def be32(b, p):
    """Big-endian uint32 at ``b[p:p+4]`` as int64."""
    return (byte(b, p) << 24) | (byte(b, p + 1) << 16) | (byte(b, p + 2) << 8) | byte(b, p + 3)


@njit()
def le32(b, p):
    """Little-endian uint32 at ``b[p:p+4]`` as int64."""
    return (byte(b, p + 3) << 24) | (byte(b, p + 2) << 16) | (byte(b, p + 1) << 8) | byte(b, p)


@njit()
def be64u(b, p):
    """Big-endian 64-bit value at ``b[p:p+8]`` as uint64 (an IPv6 address half)."""
    return (np.uint64(be32(b, p)) << np.uint64(32)) | np.uint64(be32(b, p + 4))


# ---- link layer -----------------------------------------------------------------------
@njit()
def _family(fam):
    """BSD address family -> NET_V4 / NET_V6 / NET_NONE (24, 28, 30: the BSDs' AF_INET6)."""
    if fam == 2:
        return NET_V4
    if fam == 24 or fam == 28 or fam == 30:
        return NET_V6
    return NET_NONE


@njit()
def _ethertype(et):
    if et == 0x0800:
        return NET_V4
    if et == 0x86DD:
        return NET_V6
    return NET_NONE   # ARP, LLDP, ... and 802.3 length fields (<= 1500)


@inline()
def link_layer(b, p, cl, lt):
    """Decode the link header of the record at ``p`` (``cl`` captured bytes, link type ``lt``).

    Returns ``(net, l3)``: ``net`` one of the NET_* codes, ``l3`` the absolute position of
    the network header (meaningful for NET_V4, NET_V6 and NET_ANY).
    """
    if lt == LT_ETHERNET:
        if cl < 14:
            return NET_CUT, p
        et = be16(b, p + 12)
        off = 14
        # 802.1Q, 802.1ad and the pre-standard 0x9100 QinQ tag, stacked to any depth
        while et == 0x8100 or et == 0x88A8 or et == 0x9100:
            if off + 4 > cl:
                return NET_CUT, p
            et = be16(b, p + off + 2)
            off += 4
        return _ethertype(et), p + off
    if lt == LT_RAW or lt == LT_RAW12 or lt == LT_RAW14:
        return NET_ANY, p
    if lt == LT_IPV4:
        return NET_V4, p
    if lt == LT_IPV6:
        return NET_V6, p
    if lt == LT_NULL:
        if cl < 4:
            return NET_CUT, p
        fam = le32(b, p)
        if fam > 0xFFFF:          # written by a big-endian host: families are small numbers
            fam = be32(b, p)
        return _family(fam), p + 4
    if lt == LT_LOOP:             # like NULL, but always big-endian
        if cl < 4:
            return NET_CUT, p
        return _family(be32(b, p)), p + 4
    if lt == LT_SLL:              # Linux cooked v1: protocol at 14, 16-byte header
        if cl < 16:
            return NET_CUT, p
        return _ethertype(be16(b, p + 14)), p + 16
    if lt == LT_SLL2:             # Linux cooked v2: protocol at 0, 20-byte header
        if cl < 20:
            return NET_CUT, p
        return _ethertype(be16(b, p)), p + 20
    return NET_UNKNOWN, p


# ---- network layer ----------------------------------------------------------------------
@inline()
def ipv4_header(b, l3, cap_end):
    """IPv4 header at ``l3``.

    Returns ``(ok, proto, src_lo, dst_lo, l4, ip_end, frag)``; ``ok`` is False when the
    header is cut off or invalid (version, IHL < 5, total length shorter than the header).
    """
    z = _ZERO64
    if cap_end - l3 < 20:
        return False, 0, z, z, l3, l3, 0
    vihl = byte(b, l3)
    hl = (vihl & 15) * 4
    if (vihl >> 4) != 4 or hl < 20 or l3 + hl > cap_end:
        return False, 0, z, z, l3, l3, 0
    tot = be16(b, l3 + 2)
    if tot == 0:
        ip_end = cap_end          # TSO/GSO capture: the length field is not filled in
    elif tot < hl:
        return False, 0, z, z, l3, l3, 0
    else:
        ip_end = l3 + tot
    frag = 1 if (be16(b, l3 + 6) & 0x1FFF) != 0 else 0
    src = np.uint64(be32(b, l3 + 12))
    dst = np.uint64(be32(b, l3 + 16))
    return True, byte(b, l3 + 9), src, dst, l3 + hl, ip_end, frag


@inline()
def ipv6_chain(b, nh, pos, end):
    """Walk the IPv6 extension headers from ``pos`` (first header type ``nh``) up to ``end``.

    Returns ``(ok, proto, l4, frag)``: the upper-layer protocol, its position, and 1 when a
    fragment header with a non-zero offset was met (the walk stops there: what follows is
    not a header).  ``ok`` is False when a header runs past ``end``.
    """
    while True:
        if nh == 0 or nh == 43 or nh == 60 or nh == 135 or nh == 139 or nh == 140:
            if pos + 2 > end:
                return False, nh, pos, 0
            ln = (byte(b, pos + 1) + 1) * 8
        elif nh == 51:            # AH counts 4-octet units, minus 2
            if pos + 2 > end:
                return False, nh, pos, 0
            ln = (byte(b, pos + 1) + 2) * 4
        elif nh == 44:            # fragment header, fixed 8 bytes
            if pos + 8 > end:
                return False, nh, pos, 0
            nxt = byte(b, pos)
            if (be16(b, pos + 2) >> 3) != 0:
                return True, nxt, pos + 8, 1
            nh = nxt
            pos += 8
            continue
        else:
            return True, nh, pos, 0
        if pos + ln > end:
            return False, nh, pos, 0
        nh = byte(b, pos)
        pos += ln


@inline()
def ipv6_header(b, l3, cap_end):
    """IPv6 header and extension chain at ``l3``.

    Returns ``(ok, proto, src_hi, src_lo, dst_hi, dst_lo, l4, ip_end, frag)``.
    """
    z = _ZERO64
    if cap_end - l3 < 40 or (byte(b, l3) >> 4) != 6:
        return False, 0, z, z, z, z, l3, l3, 0
    plen = be16(b, l3 + 4)
    ip_end = l3 + 40 + plen if plen != 0 else cap_end   # 0: jumbogram or TSO capture
    ok, proto, l4, frag = ipv6_chain(b, byte(b, l3 + 6), l3 + 40, min(ip_end, cap_end))
    if not ok:
        return False, 0, z, z, z, z, l3, l3, 0
    return (True, proto, be64u(b, l3 + 8), be64u(b, l3 + 16), be64u(b, l3 + 24),
            be64u(b, l3 + 32), l4, ip_end, frag)


# ---- transport layer --------------------------------------------------------------------
@njit()
def is_echo(ipver, itype):
    """ICMP echo request/reply: its identifier stands for both ports."""
    if ipver == 4:
        return itype == 8 or itype == 0
    return itype == 128 or itype == 129


@njit()
def is_icmp_error(ipver, itype):
    """ICMP errors that quote the offending packet (v4 3,4,5,11,12; v6 1-4)."""
    if ipver == 4:
        return itype == 3 or itype == 4 or itype == 5 or itype == 11 or itype == 12
    return itype >= 1 and itype <= 4


@njit()
def is_icmp(ipver, proto):
    return (ipver == 4 and proto == 1) or (ipver == 6 and proto == 58)


@inline()
def quoted_header(b, ipver, q, end):
    """The original header quoted by an ICMP error, from ``q`` to ``end``.

    Valid only when the quoted IP header (same version as the error) and the first 8 bytes
    of its L4 header are present.  Returns ``(valid, proto, s_hi, s_lo, d_hi, d_lo, sport,
    dport)``; ports are 0 for protocols without ports and for a quoted non-first fragment.
    """
    z = _ZERO64
    if ipver == 4:
        ok, proto, s_lo, d_lo, l4, ip_end, frag = ipv4_header(b, q, end)
        s_hi = z
        d_hi = z
    else:
        ok, proto, s_hi, s_lo, d_hi, d_lo, l4, ip_end, frag = ipv6_header(b, q, end)
    # the quoted packet's own length field describes the original, not what was quoted
    if not ok or l4 + 8 > end:
        return False, 0, z, z, z, z, 0, 0
    sport = 0
    dport = 0
    if frag == 0:
        if proto == 6 or proto == 17:
            sport = be16(b, l4)
            dport = be16(b, l4 + 2)
        elif is_icmp(ipver, proto) and is_echo(ipver, byte(b, l4)):
            sport = be16(b, l4 + 4)
            dport = sport
    return True, proto, s_hi, s_lo, d_hi, d_lo, sport, dport


@inline()
def transport(b, ipver, proto, l4, ip_end, data_end):
    """L4 header at ``l4``: reads stop at ``data_end``, the payload length follows ``ip_end``.

    Returns ``(ok, sport, dport, itype, icode, icmp_id, flags, seq, ack, payload_len)``;
    ``ok`` is False when the ports (ICMP type and code) are cut off.
    """
    avail = data_end - l4
    if proto == 6:
        if avail < 4:
            return False, 0, 0, 0, 0, 0, 0, 0, 0, 0
        seq = be32(b, l4 + 4) if avail >= 8 else 0
        ack = be32(b, l4 + 8) if avail >= 12 else 0
        hl = 20
        if avail >= 13 and (byte(b, l4 + 12) >> 4) >= 5:
            hl = (byte(b, l4 + 12) >> 4) * 4
        flags = byte(b, l4 + 13) if avail >= 14 else 0    # cut-off flags read as 0
        return (True, be16(b, l4), be16(b, l4 + 2), 0, 0, 0, flags, seq, ack,
                max(ip_end - l4 - hl, 0))
    if proto == 17:
        if avail < 4:
            return False, 0, 0, 0, 0, 0, 0, 0, 0, 0
        return True, be16(b, l4), be16(b, l4 + 2), 0, 0, 0, 0, 0, 0, max(ip_end - l4 - 8, 0)
    if is_icmp(ipver, proto):
        if avail < 2:
            return False, 0, 0, 0, 0, 0, 0, 0, 0, 0
        itype = byte(b, l4)
        ident = 0
        if is_echo(ipver, itype) and avail >= 6:
            ident = be16(b, l4 + 4)
        return (True, ident, ident, itype, byte(b, l4 + 1), ident, 0, 0, 0,
                max(ip_end - l4 - 8, 0))
    return True, 0, 0, 0, 0, 0, 0, 0, 0, max(ip_end - l4, 0)


# ---- the kernel -------------------------------------------------------------------------
# How a record's ts/caplen/wirelen reach the kernel (its ``framing`` argument).
FRAMING_INDEXED = 0     # already in the columns (filled by the sequential index walk)
FRAMING_PCAP_LE = 1     # read from the 16-byte classic pcap record header before the data
FRAMING_PCAP_BE = 2


@inline()
def pcap_record_header(b, p, big, frac_ns):
    """Classic pcap record header ending at ``p`` -> ``(ts_ns, caplen, wirelen)``.

    Seconds are unsigned 32-bit, so ``sec * 1e9 + frac * frac_ns`` stays below 2^63.
    """
    h = p - 16
    if big:
        return be32(b, h) * 1_000_000_000 + be32(b, h + 4) * frac_ns, be32(b, h + 8), \
            be32(b, h + 12)
    return le32(b, h) * 1_000_000_000 + le32(b, h + 4) * frac_ns, le32(b, h + 8), \
        le32(b, h + 12)


# Records per call of ``parse_range`` from the parallel loop: large enough to amortise the
# call (35 arrays), small enough to balance threads.
PARSE_BLOCK = 4096


@njit()
def parse_range(buf, lo, hi, framing, frac_ns, rec_offset, caplen, linktype, ts, wirelen,
                status, ipver, proto, src_hi, src_lo, dst_hi, dst_lo, sport, dport, icmp_type,
                icmp_code, icmp_id, tcp_flags, tcp_seq, tcp_ack, l4_payload_len, frag,
                emb_valid, emb_proto, emb_src_hi, emb_src_lo, emb_dst_hi, emb_dst_lo,
                emb_sport, emb_dport, l3_offset):
    """Decode records ``lo..hi-1`` (see ``parse_records``).  A plain loop: the helpers are
    inlined here, where numba compiles a large body quickly (in a ``prange`` body the same
    code takes tens of seconds to compile).  Returns the number of records of status
    ``(NON_IP, MALFORMED)``."""
    non_ip = 0
    malformed = 0
    for i in range(lo, hi):
        p = np.int64(rec_offset[i])
        if framing != FRAMING_INDEXED:
            t, cl, wl = pcap_record_header(buf, p, framing == FRAMING_PCAP_BE, frac_ns)
            ts[i] = t
            caplen[i] = cl
            wirelen[i] = wl
        cap_end = p + np.int64(caplen[i])
        net, l3 = link_layer(buf, p, np.int64(caplen[i]), np.int64(linktype[i]))
        if net == NET_NONE or net == NET_UNKNOWN:
            status[i] = STATUS_NON_IP
            non_ip += 1
            continue
        if net == NET_CUT:
            status[i] = STATUS_MALFORMED
            malformed += 1
            continue
        l3_offset[i] = l3 - p
        if net == NET_ANY:
            if l3 >= cap_end:
                status[i] = STATUS_MALFORMED
                malformed += 1
                continue
            net = byte(buf, l3) >> 4      # raw IP: the version nibble names the header
        if net == NET_V4:
            ok, pr, s_lo, d_lo, l4, ip_end, fr = ipv4_header(buf, l3, cap_end)
            s_hi = _ZERO64
            d_hi = _ZERO64
        else:   # NET_V6, or a raw-IP version nibble: anything but 6 is not a valid header
            ok, pr, s_hi, s_lo, d_hi, d_lo, l4, ip_end, fr = ipv6_header(buf, l3, cap_end)
        if not ok:
            status[i] = STATUS_MALFORMED
            malformed += 1
            continue
        data_end = min(ip_end, cap_end)
        if fr != 0:
            # a non-first fragment carries no L4 header: no ports, no flags
            tok, sp, dp, ity, ico, iid, fl, sq, ak, pl = (True, 0, 0, 0, 0, 0, 0, 0, 0,
                                                          max(ip_end - l4, 0))
        else:
            tok, sp, dp, ity, ico, iid, fl, sq, ak, pl = transport(buf, net, pr, l4, ip_end,
                                                                   data_end)
        if not tok:
            status[i] = STATUS_MALFORMED
            malformed += 1
            continue
        ipver[i] = net
        proto[i] = pr
        src_lo[i] = s_lo
        dst_lo[i] = d_lo
        if net == NET_V6:
            src_hi[i] = s_hi
            dst_hi[i] = d_hi
        sport[i] = sp
        dport[i] = dp
        tcp_flags[i] = fl
        tcp_seq[i] = sq
        tcp_ack[i] = ak
        l4_payload_len[i] = pl
        if fr != 0:
            frag[i] = 1
        elif is_icmp(net, pr):
            icmp_type[i] = ity
            icmp_code[i] = ico
            icmp_id[i] = iid
            if is_icmp_error(net, ity):
                ev, ep, es_hi, es_lo, ed_hi, ed_lo, esp, edp = quoted_header(buf, net, l4 + 8,
                                                                             data_end)
                if ev:
                    emb_valid[i] = 1
                    emb_proto[i] = ep
                    emb_src_hi[i] = es_hi
                    emb_src_lo[i] = es_lo
                    emb_dst_hi[i] = ed_hi
                    emb_dst_lo[i] = ed_lo
                    emb_sport[i] = esp
                    emb_dport[i] = edp
    return non_ip, malformed


@njit(parallel=True)
def parse_records(buf, framing, frac_ns, rec_offset, caplen, linktype, ts, wirelen, status,
                  ipver, proto, src_hi, src_lo, dst_hi, dst_lo, sport, dport, icmp_type,
                  icmp_code, icmp_id, tcp_flags, tcp_seq, tcp_ack, l4_payload_len, frag,
                  emb_valid, emb_proto, emb_src_hi, emb_src_lo, emb_dst_hi, emb_dst_lo,
                  emb_sport, emb_dport, l3_offset):
    """Decode every record's headers into the columns, blocks of records in parallel.

    ``buf``: the capture, uint8.  ``rec_offset`` (int64) and ``linktype`` (uint16) locate
    and type each record.  With ``framing`` FRAMING_INDEXED, ``caplen``, ``ts`` and
    ``wirelen`` are already filled; with FRAMING_PCAP_LE/BE they are read here, in
    parallel, from the classic pcap record header that precedes each record (``frac_ns``:
    1 for nanosecond files, 1000 for microsecond ones) -- this saves a sequential pass over
    the file.  Every other argument is the schema column of that name, freshly allocated by
    ``schema.empty_columns`` or ``block_columns``: only values that differ from the defaults are written, so
    pages of columns that stay zero are never touched.  Returns the number of records of
    status ``(NON_IP, MALFORMED)`` (counted here: reading ``status`` back would touch its
    pages).
    """
    n = len(rec_offset)
    non_ip = 0
    malformed = 0
    for k in prange((n + PARSE_BLOCK - 1) // PARSE_BLOCK):
        a, b = parse_range(buf, k * PARSE_BLOCK, min(n, (k + 1) * PARSE_BLOCK), framing,
                           frac_ns, rec_offset, caplen, linktype, ts, wirelen, status, ipver,
                           proto, src_hi, src_lo, dst_hi, dst_lo, sport, dport, icmp_type,
                           icmp_code, icmp_id, tcp_flags, tcp_seq, tcp_ack, l4_payload_len,
                           frag, emb_valid, emb_proto, emb_src_hi, emb_src_lo, emb_dst_hi,
                           emb_dst_lo, emb_sport, emb_dport, l3_offset)
        non_ip += a
        malformed += b
    return non_ip, malformed
