"""Capture files (classic pcap, pcapng) -> ``PacketBatch`` chunks, through mmap and numba.

Reading a window of records:

* classic pcap, two passes: a sequential numba walk over the record headers collects the
  record offsets (the only thing that needs a sequential walk); then the parallel parse
  kernel (``prange``) reads each record's header (ts, caplen, wirelen) and decodes its
  link/IP/L4 headers straight from the mapped bytes (``_parse.parse_records``).  The
  columns are carved out of one allocation (``schema.block_columns``) and the parse kernel
  counts the NON_IP and MALFORMED records, so nothing reads a column back.
* pcapng, three passes: a sequential *count* walk (on a copy of the section/interface
  state) sizes the columns exactly; the same walker then *indexes* (``rec_offset``,
  ``caplen``, ``wirelen``, ``ts`` with the interface's resolution and offset, ``linktype``);
  then the parallel parse kernel.

Only one window of columns is alive at a time and consumed pages of the mapping are
released, so a file larger than memory streams in bounded memory.

Framing rules (what is an error and what is not):

* classic pcap: the four magics (LE/BE x microseconds/nanoseconds); the header's link type
  masked to its low 16 bits (the high bits carry FCS information); the snaplen is never
  trusted.  A record whose header or data runs past the end of the file is a *truncated
  final record*: dropped with a warning, counted in ``stats.truncated``.  A caplen above
  256 MiB is a ``CaptureError``.
* pcapng: sections in either byte order, interfaces per section (link type, snaplen,
  ``if_tsresol`` 10^-n or 2^-n, ``if_tsoffset``), EPB, SPB (interface 0, no timestamp:
  ts = 0), the obsolete packet block; other blocks are skipped by length.  A block total
  length that is not a multiple of 4, below 12, above 256 MiB or not repeated at the block
  end, a packet block naming an unknown interface, or a caplen beyond its block is a
  ``CaptureError``; a block running past the end of the file is a truncated final record.
* timestamps are int64 nanoseconds, computed with saturating arithmetic: a value beyond the
  int64 range is clamped (after the unit conversion, and again after adding ``if_tsoffset``)
  and counted in ``stats.clamped_ts``.
"""
from __future__ import annotations

import inspect
import mmap
import os
import warnings
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from .. import schema
from ..batch import PacketBatch
from ..config import njit
from ..errors import CaptureError
from ._parse import (FRAMING_INDEXED, FRAMING_PCAP_BE, FRAMING_PCAP_LE, KNOWN_LINKTYPES,
                     PARSE_BLOCK, be32, byte, inline, le32, parse_range, parse_records)

MAX_CAPLEN = 256 << 20          # beyond this a length field is corruption, not a packet
ALL_RECORDS = 1 << 62           # "no window limit"
_RELEASE_BYTES = 64 << 20       # give consumed mapped pages back every this many bytes
_WALK_ROOM = 1 << 24            # records a classic pcap offset walk reserves room for at first

INT64_MAX = np.int64(0x7FFFFFFFFFFFFFFF)
INT64_MIN = np.int64(-0x7FFFFFFFFFFFFFFF - 1)
_NS = np.int64(1_000_000_000)

# Walker result codes.
MORE = 0            # stopped after max_records; more may follow
END = 1             # clean end of file
TRUNCATED = 2       # the file ends inside a record/block
NEED_IFACES = 3     # pcapng: the interface table is full; grow it and walk again
ERR_CAPLEN = 10     # absurd caplen
ERR_BLOCKLEN = 11   # pcapng block total length invalid
ERR_TRAILER = 12    # pcapng block total length not repeated at the block end
ERR_BOM = 13        # pcapng section header byte-order magic invalid
ERR_VERSION = 14    # pcapng section header major version not 1
ERR_SHORT = 15      # pcapng block body too short for its fixed fields
ERR_BLOCK_CAPLEN = 16   # pcapng packet caplen beyond its block
ERR_IFACE = 17      # pcapng packet names an interface not described in its section
ERR_FIRST = 18      # pcapng file does not start with a section header

_MESSAGES = {
    ERR_CAPLEN: "captured length {detail} is absurd (> 256 MiB): corrupt record header",
    ERR_BLOCKLEN: "pcapng block total length {detail} is invalid (must be a multiple of 4, "
                  ">= 12 and <= 256 MiB)",
    ERR_TRAILER: "pcapng block total length {detail} is not repeated at the block end",
    ERR_BOM: "pcapng section header has an invalid byte-order magic 0x{detail:08x}",
    ERR_VERSION: "pcapng section header major version {detail} is not supported (only 1)",
    ERR_SHORT: "pcapng block of type 0x{detail:08x} is too short for its fixed fields",
    ERR_BLOCK_CAPLEN: "pcapng packet captured length {detail} runs past the end of its block",
    ERR_IFACE: "pcapng packet names interface {detail}, not described in this section",
    ERR_FIRST: "pcapng file does not start with a section header block",
}

PCAP_MAGICS = {  # first four bytes -> (big_endian, nanosecond)
    b"\xd4\xc3\xb2\xa1": (False, False),
    b"\xa1\xb2\xc3\xd4": (True, False),
    b"\x4d\x3c\xb2\xa1": (False, True),
    b"\xa1\xb2\x3c\x4d": (True, True),
}
PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"


# ---- numba: shared helpers --------------------------------------------------------------
@njit()
def rd32(b, p, big):
    """uint32 at ``b[p:p+4]`` in the file's byte order, as int64."""
    return be32(b, p) if big else le32(b, p)


@njit()
def rd16(b, p, big):
    """uint16 at ``b[p:p+2]`` in the file's byte order, as int64."""
    if big:
        return (byte(b, p) << 8) | byte(b, p + 1)
    return (byte(b, p + 1) << 8) | byte(b, p)


@njit()
def sat_add(a, c):
    """a + c for int64, saturating.  Returns ``(sum, clamped)``."""
    if c > 0 and a > INT64_MAX - c:
        return INT64_MAX, True
    if c < 0 and a < INT64_MIN - c:
        return INT64_MIN, True
    return a + c, False


@njit()
def sat_mul(a, m):
    """a * m for int64 ``a`` and positive ``m``, saturating.  Returns ``(product, clamped)``."""
    if a > INT64_MAX // m:
        return INT64_MAX, True
    if a < INT64_MIN // m:
        return INT64_MIN, True
    return a * m, False


@inline()
def units_to_ns(hi, lo, res):
    """pcapng timestamp ``hi:lo`` (two uint32 halves of a uint64 count, as int64) in units
    of ``if_tsresol`` ``res`` (bit 7 clear: 10^-res s; set: 2^-(res & 127) s) -> floor ns.

    Returns ``(ns, clamped)``; values beyond int64 clamp to INT64_MAX.
    """
    units = (np.uint64(hi) << np.uint64(32)) | np.uint64(lo)
    n = res & 127
    if res & 128 == 0:
        if n <= 9:
            mult = np.int64(10) ** (9 - n)
            if units > np.uint64(INT64_MAX // mult):
                return INT64_MAX, True
            return np.int64(units) * mult, False
        if n - 9 > 19:                      # 10^20 > 2^64: every count is < 1 ns
            return np.int64(0), False
        return np.int64(units // (np.uint64(10) ** np.uint64(n - 9))), False
    # binary resolution: floor(units * 1e9 / 2^n) without 128-bit integers
    if n >= 64:
        q = np.uint64(0)
        r = units
    else:
        q = units >> np.uint64(n)
        r = units & ((np.uint64(1) << np.uint64(n)) - np.uint64(1))
    if q > np.uint64(INT64_MAX // _NS):
        return INT64_MAX, True
    qns = np.int64(q) * _NS
    if n == 0:
        rns = np.int64(0)
    elif n <= 32:                           # r < 2^32: r * 1e9 < 2^62
        rns = np.int64((r * np.uint64(_NS)) >> np.uint64(n))
    else:                                   # split r = rh * 2^32 + rl
        a = (r >> np.uint64(32)) * np.uint64(_NS)
        c = (r & np.uint64(0xFFFFFFFF)) * np.uint64(_NS)
        t = a + (c >> np.uint64(32))
        rns = np.int64(t >> np.uint64(n - 32)) if n - 32 < 64 else np.int64(0)
    return sat_add(qns, rns)


@inline()
def pcapng_ts(hi, lo, res, offset):
    """Nanoseconds of a pcapng timestamp with the interface's ``if_tsoffset`` (seconds)."""
    ns, c1 = units_to_ns(hi, lo, res)
    off, c2 = sat_mul(offset, _NS)
    ns, c3 = sat_add(ns, off)
    return ns, c1 or c2 or c3


# ---- numba: classic pcap ----------------------------------------------------------------
# How far ahead of the record header being read the offset walk touches the file.  Each
# step of the walk depends on the length it just read, so on its own it waits for one cache
# miss at a time; a load at a fixed distance ahead (its address does not depend on that
# length) keeps a few misses in flight and doubles the walk's speed.
_WALK_LOOKAHEAD = 1024


@njit()
def walk_pcap(buf, pos, max_records, big, rec_offset):
    """Walk classic pcap records from byte ``pos`` (a record header).

    Writes the offset of each record's packet data into ``rec_offset`` (int64, room for
    ``max_records``); the rest of the record header is read later, in parallel, by the
    parse kernel.  Returns ``(count, pos, code, detail, touch)``: ``pos`` is where the walk
    stopped (the next record, or the faulty one), ``code`` one of
    MORE/END/TRUNCATED/ERR_CAPLEN, ``detail`` the faulty length; ``touch`` is meaningless
    (the look-ahead loads, returned so that the compiler keeps them).
    """
    end = len(buf)
    last = end - 1
    n = 0
    touch = 0
    while n < max_records:
        if pos == end:
            return n, pos, END, 0, touch
        if end - pos < 16:
            return n, pos, TRUNCATED, 0, touch
        touch ^= byte(buf, min(pos + _WALK_LOOKAHEAD, last))
        cl = rd32(buf, pos + 8, big)
        if cl > MAX_CAPLEN:
            return n, pos, ERR_CAPLEN, cl, touch
        if cl > end - pos - 16:
            return n, pos, TRUNCATED, 0, touch
        rec_offset[n] = pos + 16
        pos += 16 + cl
        n += 1
    return n, pos, MORE, 0, touch


# ---- numba: pcapng ----------------------------------------------------------------------
# state[] slots carried from one window to the next
ST_BIG, ST_NIF, ST_CLAMPED = 0, 1, 2
_STATE_SLOTS = 3


@inline()
def read_idb(buf, body, body_end, big):
    """Interface description block body -> ``(linktype, snaplen, tsresol, tsoffset)``."""
    lt = rd16(buf, body, big)
    snap = rd32(buf, body + 4, big)
    res = 6
    off = np.int64(0)
    p = body + 8
    while p + 4 <= body_end:
        code = rd16(buf, p, big)
        olen = rd16(buf, p + 2, big)
        if code == 0 or p + 4 + olen > body_end:
            break
        if code == 9 and olen >= 1:
            res = byte(buf, p + 4)
        elif code == 14 and olen >= 8:      # signed 64-bit seconds
            lo = np.uint64(rd32(buf, p + 4 + (4 if big else 0), big))
            hi = np.uint64(rd32(buf, p + 4 + (0 if big else 4), big))
            off = np.int64((hi << np.uint64(32)) | lo)
        p += 4 + ((olen + 3) & ~3)
    return lt, snap, res, off


@njit()
def walk_pcapng(buf, pos, max_records, fill, state, if_linktype, if_snaplen, if_tsresol,
                if_tsoffset, rec_offset, caplen, wirelen, ts, linktype):
    """Walk pcapng blocks from byte ``pos`` (a block start) until ``max_records`` packets.

    ``state`` (int64[3]: byte order, interface count, clamped-timestamp counter) and the
    interface table (``if_*``, int64) carry over between windows and are updated in place.
    Packet records fill ``rec_offset``, ``caplen``, ``wirelen``, ``ts``, ``linktype`` when
    ``fill``.  Returns ``(count, pos, code, detail)`` as ``walk_pcap``.
    """
    end = len(buf)
    big = state[ST_BIG] != 0
    n = 0
    while n < max_records:
        if pos == end:
            return n, pos, END, 0
        if end - pos < 12:
            return n, pos, TRUNCATED, 0
        btype = rd32(buf, pos, big)
        if btype == 0x0A0D0D0A:             # section header: its magic sets the byte order
            bom = le32(buf, pos + 8)
            if bom == 0x1A2B3C4D:
                big = False
            elif bom == 0x4D3C2B1A:
                big = True
            else:
                return n, pos, ERR_BOM, bom
        elif pos == 0:
            return n, pos, ERR_FIRST, 0
        blen = rd32(buf, pos + 4, big)
        if blen < 12 or blen % 4 != 0 or blen > MAX_CAPLEN:
            return n, pos, ERR_BLOCKLEN, blen
        if blen > end - pos:
            return n, pos, TRUNCATED, 0
        if rd32(buf, pos + blen - 4, big) != blen:
            return n, pos, ERR_TRAILER, blen
        body = pos + 8
        body_len = blen - 12
        is_packet = False
        if btype == 0x0A0D0D0A:
            if body_len < 16:
                return n, pos, ERR_SHORT, btype
            if rd16(buf, body + 4, big) != 1:
                return n, pos, ERR_VERSION, rd16(buf, body + 4, big)
            state[ST_BIG] = 1 if big else 0
            state[ST_NIF] = 0               # interface ids restart in every section
        elif btype == 1:                    # interface description
            if body_len < 8:
                return n, pos, ERR_SHORT, btype
            k = state[ST_NIF]
            if k == len(if_linktype):
                return n, pos, NEED_IFACES, 0
            lt, snap, res, off = read_idb(buf, body, body + body_len, big)
            if_linktype[k] = lt
            if_snaplen[k] = snap
            if_tsresol[k] = res
            if_tsoffset[k] = off
            state[ST_NIF] = k + 1
        elif btype == 6 or btype == 2:      # enhanced / obsolete packet block
            if body_len < 20:
                return n, pos, ERR_SHORT, btype
            iface = rd32(buf, body, big) if btype == 6 else rd16(buf, body, big)
            if iface >= state[ST_NIF]:
                return n, pos, ERR_IFACE, iface
            cl = rd32(buf, body + 12, big)
            if cl > body_len - 20:
                return n, pos, ERR_BLOCK_CAPLEN, cl
            is_packet = True
            if fill:
                t, clamped = pcapng_ts(rd32(buf, body + 4, big), rd32(buf, body + 8, big),
                                       if_tsresol[iface], if_tsoffset[iface])
                ts[n] = t
                if clamped:
                    state[ST_CLAMPED] += 1
                caplen[n] = cl
                wirelen[n] = rd32(buf, body + 16, big)
                rec_offset[n] = body + 20
        elif btype == 3:                    # simple packet block: interface 0, no timestamp
            if body_len < 4:
                return n, pos, ERR_SHORT, btype
            if state[ST_NIF] == 0:
                return n, pos, ERR_IFACE, 0
            iface = 0
            orig = rd32(buf, body, big)
            cl = min(body_len - 4, orig)
            if if_snaplen[0] > 0:
                cl = min(cl, if_snaplen[0])
            is_packet = True
            if fill:
                ts[n] = 0
                caplen[n] = cl
                wirelen[n] = orig
                rec_offset[n] = body + 4
        if is_packet:
            if fill:
                linktype[n] = if_linktype[iface]
            n += 1
        pos += blen
    return n, pos, MORE, 0


# ---- Python side --------------------------------------------------------------------------
@dataclass
class CaptureStats:
    """What reading a capture met.  Counts cover the records yielded so far."""
    path: str
    format: str = ""                  # "pcap" or "pcapng"
    records: int = 0                  # packet records yielded
    truncated: int = 0                # truncated final records dropped (0 or 1 per file)
    clamped_ts: int = 0               # timestamps clamped to the int64 nanosecond range
    unknown_linktype: int = 0         # records of a link type fastsg does not decode (NON_IP)
    non_ip: int = 0                   # records with status NON_IP (includes the above)
    malformed: int = 0                # records with status MALFORMED
    bytes: int = 0                    # file bytes consumed (headers included)
    linktypes: dict = field(default_factory=dict)   # link type -> record count


# the columns ``walk_pcapng`` fills, in its parameter order
_WALK_COLUMNS = ("rec_offset", "caplen", "wirelen", "ts", "linktype")
_PARSE_ARGS = tuple(inspect.signature(parse_records.py_func).parameters)[3:]
# below this many records the parallel kernel's thread start-up costs more than it saves
_SERIAL_RECORDS = 4 * PARSE_BLOCK


def parse_columns(buf: np.ndarray, cols: dict, framing: int = FRAMING_INDEXED,
                  frac_ns: int = 1) -> tuple[int, int]:
    """Run the parse kernel on indexed columns (binding them to its parameters by name).
    Returns the number of records of status ``(NON_IP, MALFORMED)``."""
    args = {name: cols[name] for name in _PARSE_ARGS}
    n = len(cols["rec_offset"])
    if n <= _SERIAL_RECORDS:
        non_ip, malformed = parse_range(buf, 0, n, framing, frac_ns, **args)
    else:
        non_ip, malformed = parse_records(buf, framing, frac_ns, **args)
    return int(non_ip), int(malformed)


class _PcapFramer:
    """Classic pcap framing: header at 0, records from byte 24."""
    format = "pcap"
    start = 24

    def __init__(self, head: bytes, size: int, path: str):
        if size < 24:
            raise CaptureError(f"truncated pcap file header ({size} of 24 bytes)", path,
                               None, 0)
        self.big, nano = PCAP_MAGICS[head[:4]]
        self.frac_ns = 1 if nano else 1000
        self.framing = FRAMING_PCAP_BE if self.big else FRAMING_PCAP_LE
        # the high 16 bits of the link-type field carry FCS information, not the type
        self.linktype = int.from_bytes(head[20:24], "big" if self.big else "little") & 0xFFFF

    def _walk(self, buf, pos, max_records):
        """Collect up to ``max_records`` record offsets from ``pos``: ``(offsets, n, pos,
        code, detail)``.  The offsets array is sized for every record the rest of the file
        can hold (up to ``_WALK_ROOM`` records, then grown by doubling): only the pages the
        walk writes are ever backed by memory."""
        n = 0
        room = min(max_records, (len(buf) - pos) // 16 + 1, _WALK_ROOM)
        offsets = np.empty(room, np.int64)
        while True:
            if len(offsets) == n:
                grown = np.empty(min(max_records, 2 * n, (len(buf) - 24) // 16 + 1),
                                 np.int64)
                grown[:n] = offsets[:n]
                offsets = grown
            limit = min(max_records, len(offsets)) - n
            k, pos, code, detail, _ = walk_pcap(buf, pos, limit, self.big, offsets[n:])
            n += k
            if code != MORE or n == max_records:
                return offsets[:n], n, pos, code, detail

    def window(self, buf, pos, max_records):
        """Index up to ``max_records`` records from ``pos`` and parse them."""
        offsets, n, pos, code, detail = self._walk(buf, pos, max_records)
        cols = schema.block_columns(n, caller_fills=("rec_offset", "linktype"))
        cols["rec_offset"] = offsets            # the walk's array itself: no copy
        cols["linktype"].fill(self.linktype)
        counts = (0, 0)
        if code < ERR_CAPLEN:
            counts = parse_columns(buf, cols, self.framing, self.frac_ns)
        linktypes = {self.linktype: n} if n else {}
        return cols, n, pos, code, detail, 0, linktypes, counts


class _PcapngFramer:
    """pcapng framing: blocks from byte 0 (the first section header)."""
    format = "pcapng"
    start = 0

    def __init__(self, head: bytes, size: int, path: str):
        if size < 28:
            raise CaptureError(f"truncated pcapng section header ({size} bytes)", path,
                               None, 0)
        self.state = np.zeros(_STATE_SLOTS, np.int64)
        self.ifaces = [np.zeros(16, np.int64) for _ in range(4)]

    def _grow(self):
        self.ifaces = [np.concatenate([a, np.zeros(len(a), np.int64)]) for a in self.ifaces]

    def window(self, buf, pos, max_records):
        """Count, index and parse up to ``max_records`` packet records from ``pos``."""
        while True:
            # the counting walk runs on copies: the filling walk must see the same state
            n, _, code, _ = walk_pcapng(buf, pos, max_records, False, self.state.copy(),
                                        *(a.copy() for a in self.ifaces), *_no_columns())
            if code != NEED_IFACES:
                break
            self._grow()
        cols = schema.block_columns(n, caller_fills=_WALK_COLUMNS)
        before_clamped = int(self.state[ST_CLAMPED])
        n, pos, code, detail = walk_pcapng(buf, pos, max_records, True, self.state,
                                           *self.ifaces,
                                           *(cols[c] for c in _WALK_COLUMNS))
        counts = (0, 0)
        if code < ERR_CAPLEN:
            counts = parse_columns(buf, cols)
        by_type = np.bincount(cols["linktype"])
        linktypes = {int(v): int(by_type[v]) for v in np.flatnonzero(by_type)}
        return (cols, n, pos, code, detail, int(self.state[ST_CLAMPED]) - before_clamped,
                linktypes, counts)


def _no_columns():
    """Zero-length stand-ins for the output columns of a counting walk."""
    return tuple(np.zeros(0, schema.FIELD_BY_NAME[name].dtype) for name in _WALK_COLUMNS)


class CaptureIterator:
    """Iterator of ``PacketBatch`` chunks of at most ``chunk_packets`` records of a capture.

    ``stats`` (a ``CaptureStats``) is updated as chunks are produced.  The file stays mapped
    until the iterator is exhausted, closed, or leaves its ``with`` block.
    """

    def __init__(self, path, chunk_packets: int = 1 << 20):
        if chunk_packets < 1:
            raise ValueError("chunk_packets must be >= 1")
        self.path = os.fspath(path)
        self.chunk_packets = int(chunk_packets)
        self.stats = CaptureStats(str(self.path))
        self._file = None
        self._mm = None
        self._buf = None
        self._done = False
        self._released = 0
        self._open()

    # ---- lifecycle ----
    def _open(self):
        try:
            self._file = open(self.path, "rb")
            size = os.fstat(self._file.fileno()).st_size
            if size == 0:
                raise CaptureError("empty file: not a capture", self.path, None, 0)
            self._mm = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as e:
            self.close()
            raise CaptureError(f"cannot map the file: {e}", self.path) from e
        except CaptureError:
            self.close()
            raise
        # the header is checked on plain bytes: an exception must not hold the array
        head = self._mm[:28]
        try:
            if head[:4] in PCAP_MAGICS:
                self._framer = _PcapFramer(head, size, self.path)
            elif head[:4] == PCAPNG_MAGIC:
                self._framer = _PcapngFramer(head, size, self.path)
            else:
                raise CaptureError(f"not a pcap or pcapng file (magic {head[:4].hex()})",
                                   self.path, None, 0)
        except CaptureError:
            self.close()
            raise
        self._buf = np.frombuffer(self._mm, dtype=np.uint8)
        self.stats.format = self._framer.format
        self._pos = self._framer.start

    def close(self) -> None:
        """Unmap and close the file (idempotent)."""
        self._done = True
        self._buf = None            # the array holds a buffer export of the mmap
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:     # a view still lives (in a traceback?): unmapped on GC
                pass
            self._mm = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    # ---- iteration ----
    def __iter__(self) -> Iterator[PacketBatch]:
        return self

    def __next__(self) -> PacketBatch:
        if self._done:
            raise StopIteration
        cols, n, code = self._next_window()
        if code in (END, TRUNCATED):
            if code == TRUNCATED:
                self.stats.truncated += 1
                warnings.warn(f"{self.path}: 1 truncated final record dropped (the file ends "
                              f"inside the record at byte offset {self._pos}); "
                              f"{self.stats.records} complete records kept", stacklevel=2)
            self.close()
            if n == 0:
                raise StopIteration
        return PacketBatch(cols, source=self.path)

    def _next_window(self):
        """Index and parse the next window: ``(columns, record count, walker code)``.
        (No reference to the mapped array may outlive this call: ``close`` needs none.)"""
        buf = self._buf
        cols, n, pos, code, detail, clamped, linktypes, counts = self._framer.window(
            buf, self._pos, self.chunk_packets)
        if code >= ERR_CAPLEN or (code == TRUNCATED and pos == 0):
            del buf
            record = self.stats.records + n
            self.close()
            if code == TRUNCATED:
                raise CaptureError("truncated pcapng section header", self.path, None, 0)
            raise CaptureError(_MESSAGES[code].format(detail=detail), self.path, record, pos)
        self._pos = pos
        self._account(n, len(buf) if code == TRUNCATED else pos, clamped, linktypes, counts)
        if code == MORE:
            self._release(pos)
        return cols, n, code

    def _account(self, n, pos, clamped, linktypes, counts):
        """``counts``: the window's records of status (NON_IP, MALFORMED)."""
        st = self.stats
        st.records += n
        st.bytes = pos
        st.clamped_ts += clamped
        st.non_ip += counts[0]
        st.malformed += counts[1]
        for lt, count in linktypes.items():
            st.linktypes[lt] = st.linktypes.get(lt, 0) + count
            if lt not in KNOWN_LINKTYPES:
                st.unknown_linktype += count

    def _release(self, pos):
        """Drop consumed pages from the mapping (they stay in the page cache) so the
        resident set of a long stream stays bounded."""
        page = mmap.PAGESIZE
        upto = (pos // page) * page
        if upto - self._released >= _RELEASE_BYTES and hasattr(mmap, "MADV_DONTNEED"):
            self._mm.madvise(mmap.MADV_DONTNEED, self._released, upto - self._released)
            self._released = upto

    def read_all(self) -> PacketBatch:
        """The remaining records as one batch (``source`` = the path)."""
        chunks = list(self)
        if len(chunks) == 1:
            return chunks[0]
        batch = PacketBatch.concat(chunks)
        batch.source = self.path
        return batch


def iter_capture(path, chunk_packets: int = 1 << 20) -> CaptureIterator:
    """Stream a pcap/pcapng file as ``PacketBatch`` chunks of at most ``chunk_packets``.

    Memory stays bounded by one chunk's columns whatever the file size.  The returned
    iterator's ``stats`` (``CaptureStats``) is complete once it is exhausted.  Raises
    ``CaptureError`` (naming file, record number and byte offset) on an unreadable file;
    a truncated final record is a ``warnings.warn`` and is counted, not an error.
    """
    return CaptureIterator(path, chunk_packets)


def read_capture(path) -> PacketBatch:
    """Read a whole capture into one ``PacketBatch`` (``source`` = path; ``rec_offset``
    locates each record's original bytes in the file).  For the reading statistics use
    ``it = iter_capture(path); batch = it.read_all(); it.stats``."""
    with CaptureIterator(path, ALL_RECORDS) as it:
        return it.read_all()
