"""The packet-header schema: every field a packet carries through fastsg, declared once.

A batch of packets is a *struct of arrays*: one 1-D numpy array per field, all the same
length, in capture order.  The capture reader, the synthetic generators, ``PacketBatch``
and the kernels all take their field names and dtypes from ``FIELDS``; nothing else in
the code base lists them again.  Kernels receive the columns they need *by name* (the
wrapper binds ``batch.columns`` to the kernel's parameter names), so no positional field
order is ever written down twice.

Conventions (all values in host byte order, already decoded from the wire):

* Addresses are 128-bit values split in two uint64 halves, ``*_hi`` (bits 127..64) and
  ``*_lo`` (bits 63..0).  An IPv4 address ``a.b.c.d`` is stored as ``hi = 0`` and
  ``lo = a<<24 | b<<16 | c<<8 | d`` and is told apart from IPv6 by ``ipver``.
* ``status`` says whether the record is an IP packet, a non-IP frame (UNMANAGED) or a
  record whose IP header or L4 ports were cut off (MALFORMED).
* ``ts`` is the timestamp in integer nanoseconds since the Unix epoch.
"""
from __future__ import annotations

from collections import namedtuple
from dataclasses import dataclass

import numpy as np

# parse status values (column ``status``)
STATUS_IP = 0
STATUS_NON_IP = 1
STATUS_MALFORMED = 2

# TCP flag bits (column ``tcp_flags``)
TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_PSH = 0x08
TCP_ACK = 0x10


@dataclass(frozen=True)
class Field:
    name: str
    dtype: np.dtype
    doc: str


def _f(name: str, dtype, doc: str) -> Field:
    return Field(name, np.dtype(dtype), doc)


FIELDS: tuple[Field, ...] = (
    _f("status", np.uint8, "STATUS_IP, STATUS_NON_IP or STATUS_MALFORMED"),
    _f("ipver", np.uint8, "4 or 6 for IP packets, 0 otherwise"),
    _f("proto", np.uint8, "IP protocol (IPv6: the upper-layer header after the extension chain)"),
    _f("src_hi", np.uint64, "source address bits 127..64 (0 for IPv4)"),
    _f("src_lo", np.uint64, "source address bits 63..0 (IPv4: the 32-bit address)"),
    _f("dst_hi", np.uint64, "destination address bits 127..64 (0 for IPv4)"),
    _f("dst_lo", np.uint64, "destination address bits 63..0 (IPv4: the 32-bit address)"),
    _f("sport", np.uint16, "TCP/UDP source port; ICMP echo identifier for echo request/reply; else 0"),
    _f("dport", np.uint16, "TCP/UDP destination port; ICMP echo identifier for echo request/reply; else 0"),
    _f("icmp_type", np.uint8, "ICMP/ICMPv6 type (0 for other protocols)"),
    _f("icmp_code", np.uint8, "ICMP/ICMPv6 code (0 for other protocols)"),
    _f("icmp_id", np.uint16, "ICMP/ICMPv6 echo identifier (0 when not an echo)"),
    _f("tcp_flags", np.uint8, "TCP flags byte (FIN=1 SYN=2 RST=4 PSH=8 ACK=16); 0 if cut off"),
    _f("tcp_seq", np.uint32, "TCP sequence number (0 when not TCP)"),
    _f("tcp_ack", np.uint32, "TCP acknowledgement number (0 when not TCP)"),
    _f("l4_payload_len", np.uint32, "bytes of L4 payload after the TCP/UDP/ICMP header, per the IP length"),
    _f("frag", np.uint8, "1 for a non-first fragment (IPv4 offset > 0, IPv6 fragment offset > 0)"),
    # the original header quoted inside an ICMP/ICMPv6 error (for RELATED tracking)
    _f("emb_valid", np.uint8, "1 when this is an ICMP error quoting an IP header with its ports"),
    _f("emb_proto", np.uint8, "protocol of the quoted header"),
    _f("emb_src_hi", np.uint64, "quoted source address bits 127..64"),
    _f("emb_src_lo", np.uint64, "quoted source address bits 63..0"),
    _f("emb_dst_hi", np.uint64, "quoted destination address bits 127..64"),
    _f("emb_dst_lo", np.uint64, "quoted destination address bits 63..0"),
    _f("emb_sport", np.uint16, "quoted source port (echo identifier for a quoted echo)"),
    _f("emb_dport", np.uint16, "quoted destination port (echo identifier for a quoted echo)"),
    # record bookkeeping
    _f("ts", np.int64, "timestamp, nanoseconds since the Unix epoch"),
    _f("wirelen", np.uint32, "original length of the packet on the wire (pcap orig_len)"),
    _f("caplen", np.uint32, "bytes captured for this record"),
    _f("linktype", np.uint16, "link type of the record (pcap LINKTYPE_*), 0xFFFF when generated"),
    _f("l3_offset", np.int32, "offset of the IP header within the record's bytes, -1 if none"),
    _f("rec_offset", np.int64, "byte offset of the record's packet data in its file, -1 if generated"),
)

FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in FIELDS)
FIELD_BY_NAME: dict[str, Field] = {f.name: f for f in FIELDS}

# Default values for columns a producer leaves out (everything else defaults to 0).
DEFAULTS: dict[str, int] = {"linktype": 0xFFFF, "l3_offset": -1, "rec_offset": -1}


def empty_columns(n: int) -> dict[str, np.ndarray]:
    """Freshly allocated columns for ``n`` packets, every field at its default."""
    cols = {}
    for f in FIELDS:
        default = DEFAULTS.get(f.name, 0)
        cols[f.name] = np.full(n, default, dtype=f.dtype) if default else np.zeros(n, dtype=f.dtype)
    return cols


_HUGE_PAGE = 2 << 20      # columns of a block start 2 MiB-aligned (transparent huge pages)
_COLUMN_ALIGN = 64         # each column of a block starts on a cache line


def block_columns(n: int, caller_fills: tuple = ()) -> dict[str, np.ndarray]:
    """``empty_columns(n)`` carved out of one zeroed allocation (each column a view of it).

    For producers that fill fresh columns in bulk (the capture reader): one large
    allocation, 2 MiB-aligned, is backed by transparent huge pages (numpy asks for them on
    allocations of 4 MiB and more), so first touching it costs a few hundred page faults
    instead of one per 4 KiB page of every column.  Pages of columns that stay zero are
    never touched.  The block lives as long as any of its columns does.  Columns named in
    ``caller_fills`` are left zero instead of at their default: the caller writes (or
    replaces) every entry.
    """
    spans = [-(-n * f.dtype.itemsize // _COLUMN_ALIGN) * _COLUMN_ALIGN for f in FIELDS]
    total = sum(spans)
    pad = _HUGE_PAGE if total >= _HUGE_PAGE else 0
    raw = np.zeros(total + pad, np.uint8)
    pos = (-raw.ctypes.data) % _HUGE_PAGE if pad else 0
    cols = {}
    for f, span in zip(FIELDS, spans):
        col = raw[pos:pos + n * f.dtype.itemsize].view(f.dtype)
        default = DEFAULTS.get(f.name, 0)
        if default and f.name not in caller_fills:
            col.fill(default)
        cols[f.name] = col
        pos += span
    return cols


# The columns as one namedtuple: kernels take it as a single argument and read fields by
# name (``p.src_lo[i]``), so the field order lives here and nowhere else.
PacketColumns = namedtuple("PacketColumns", FIELD_NAMES)
