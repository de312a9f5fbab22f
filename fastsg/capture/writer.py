"""Classic pcap writers: packets from memory, and records copied out of a source capture.

Files are written little-endian, with the nanosecond magic (``a1b23c4d``) by default so
the int64 nanosecond timestamps of a batch survive a round trip exactly.
"""
from __future__ import annotations

import mmap
import os
from pathlib import Path

import numpy as np

from ..config import njit

PCAP_SNAPLEN = 262144           # libpcap's maximum; written in the file header
_HDR = np.dtype([("sec", "<u4"), ("frac", "<u4"), ("caplen", "<u4"), ("wirelen", "<u4")])


def file_header(linktype: int, nanosecond: bool, snaplen: int = PCAP_SNAPLEN) -> bytes:
    """The 24-byte little-endian pcap file header."""
    magic = 0xA1B23C4D if nanosecond else 0xA1B2C3D4
    return np.array([(magic, 2, 4, 0, 0, snaplen, linktype)],
                    dtype=[("magic", "<u4"), ("major", "<u2"), ("minor", "<u2"),
                           ("zone", "<i4"), ("sigfigs", "<u4"), ("snaplen", "<u4"),
                           ("linktype", "<u4")]).tobytes()


def record_headers(ts_ns: np.ndarray, caplen: np.ndarray, wirelen: np.ndarray,
                   nanosecond: bool) -> np.ndarray:
    """(n,) record headers (structured, 16 bytes each) for int64 ns timestamps."""
    ts_ns = np.asarray(ts_ns, dtype=np.int64)
    if ts_ns.size and (ts_ns.min() < 0 or ts_ns.max() // 1_000_000_000 > 0xFFFFFFFF):
        raise ValueError("pcap timestamps must lie in [1970, 2106): unsigned 32-bit seconds")
    hdr = np.empty(len(ts_ns), dtype=_HDR)
    hdr["sec"] = ts_ns // 1_000_000_000
    frac = ts_ns % 1_000_000_000
    hdr["frac"] = frac if nanosecond else frac // 1000
    hdr["caplen"] = caplen
    hdr["wirelen"] = wirelen
    return hdr


def interleave(hdr: np.ndarray, data: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Records = 16-byte header then data, for every packet, as one uint8 array.

    ``hdr``: (n,) ``_HDR`` records; ``data``: uint8, the packets back to back; ``lengths``:
    int64 (n,) bytes of each packet.
    """
    n = len(lengths)
    out = np.empty(16 * n + len(data), np.uint8)
    # header i starts after i headers and the data of packets 0..i-1
    starts = 16 * np.arange(n, dtype=np.int64) + np.concatenate(
        ([0], np.cumsum(lengths[:-1], dtype=np.int64))) if n else np.zeros(0, np.int64)
    is_data = np.ones(len(out), bool)
    hdr_pos = (starts[:, None] + np.arange(16)).ravel()
    is_data[hdr_pos] = False
    out[hdr_pos] = hdr.view(np.uint8).reshape(-1)
    out[is_data] = data
    return out


class PcapWriter:
    """Write a classic pcap file of one link type.

    ``with PcapWriter(path, linktype=101) as w: w.write(pkt_bytes, ts_ns)``.
    """

    def __init__(self, path, linktype: int, nanosecond: bool = True,
                 snaplen: int = PCAP_SNAPLEN):
        self.path = os.fspath(path)
        self.linktype = int(linktype)
        self.nanosecond = bool(nanosecond)
        self.count = 0
        self._f = open(self.path, "wb")
        self._f.write(file_header(self.linktype, self.nanosecond, snaplen))

    def write(self, data: bytes, ts_ns: int, wirelen: int | None = None) -> None:
        """One packet: its bytes, timestamp (int ns) and original length (default: len)."""
        data = bytes(data)
        hdr = record_headers(np.array([ts_ns], np.int64), len(data),
                             len(data) if wirelen is None else wirelen, self.nanosecond)
        self._f.write(hdr.tobytes())
        self._f.write(data)
        self.count += 1

    def write_many(self, buf: np.ndarray, offsets: np.ndarray, ts_ns: np.ndarray,
                   wirelen: np.ndarray | None = None) -> None:
        """Packets ``buf[offsets[i]:offsets[i+1]]`` (uint8 buffer, int64 offsets of n+1
        entries), with ``ts_ns`` (int64, n) and ``wirelen`` (uint32, n; default: caplen):
        the whole output is built with numpy and written at once."""
        offsets = np.asarray(offsets, dtype=np.int64)
        n = len(offsets) - 1
        if n <= 0:
            return
        lengths = np.diff(offsets)
        if (lengths < 0).any():
            raise ValueError("offsets must be non-decreasing")
        if len(ts_ns) != n or (wirelen is not None and len(wirelen) != n):
            raise ValueError(f"{n} packets but {len(ts_ns)} timestamps"
                             + ("" if wirelen is None else f" and {len(wirelen)} wire lengths"))
        wl = lengths if wirelen is None else np.asarray(wirelen)
        hdr = record_headers(ts_ns, lengths, wl, self.nanosecond)
        data = np.asarray(buf, dtype=np.uint8)[offsets[0]:offsets[-1]]
        self._f.write(interleave(hdr, data, lengths).data)
        self.count += n

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@njit()
def _gather(src, starts, lengths, out):
    """Copy ``src[starts[i]:starts[i]+lengths[i]]`` back to back into ``out`` (uint8)."""
    k = 0
    for i in range(len(starts)):
        s = starts[i]
        for j in range(lengths[i]):
            out[k + j] = src[s + j]
        k += lengths[i]


def _gather_records(src_path: str, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The bytes of the given records of a file, back to back (uint8)."""
    out = np.empty(int(lengths.sum()), np.uint8)
    if len(out) == 0:
        return out
    if starts.min() < 0 or (starts + lengths).max() > os.path.getsize(src_path):
        raise ValueError(f"{src_path}: the batch's rec_offset/caplen point outside the "
                         "file; was it read from this file?")
    with open(src_path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        src = np.frombuffer(mm, dtype=np.uint8)
        _gather(src, starts, lengths, out)
        del src                 # the mapping cannot close while a view of it lives
    return out


def copy_records(src_path, batch, mask, dst_path, nanosecond: bool = True) -> dict[int, str]:
    """Write the records of ``batch`` selected by ``mask`` with their original bytes and
    timestamps, as classic pcap.

    ``batch`` must come from reading ``src_path`` (its ``rec_offset`` and ``caplen`` locate
    the bytes).  Records keep their capture order.  One file per link type: the link type
    with the most selected records goes to ``dst_path``, every other one to
    ``<stem>.linktype<N><suffix>`` beside it (a pcap file holds one link type; only pcapng
    sources can mix them).  Nothing selected: an empty capture of the batch's most common
    link type (Ethernet for an empty batch).  Returns {link type: path written}.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != (len(batch),):
        raise ValueError(f"mask has shape {mask.shape}, the batch {len(batch)} records")
    sel = np.flatnonzero(mask)
    lts = batch.linktype[sel]
    values, counts = np.unique(lts if len(sel) else batch.linktype, return_counts=True)
    if len(values) == 0:
        values, counts = np.array([1], np.uint16), np.array([0])
    order = np.argsort(-counts, kind="stable")      # most records first, ties: lowest type
    if len(sel) == 0:
        order = order[:1]
    dst = Path(dst_path)
    written = {}
    for rank, v in enumerate(values[order].tolist()):
        path = dst if rank == 0 else dst.with_name(f"{dst.stem}.linktype{v}{dst.suffix}")
        rows = sel[lts == v]
        starts = batch.rec_offset[rows].astype(np.int64)
        lengths = batch.caplen[rows].astype(np.int64)
        data = _gather_records(os.fspath(src_path), starts, lengths)
        offsets = np.concatenate(([0], np.cumsum(lengths)))
        with PcapWriter(path, v, nanosecond=nanosecond) as w:
            w.write_many(data, offsets, batch.ts[rows], batch.wirelen[rows])
        written[int(v)] = os.fspath(path)
    return written


def write_raw_ip(path, packets, ts_ns, nanosecond: bool = True) -> None:
    """Write IP packets (a list of ``bytes``) with int64 ns timestamps as link type 101."""
    lengths = np.fromiter((len(p) for p in packets), dtype=np.int64, count=len(packets))
    data = np.frombuffer(b"".join(bytes(p) for p in packets), dtype=np.uint8)
    offsets = np.concatenate(([0], np.cumsum(lengths)))
    with PcapWriter(path, 101, nanosecond=nanosecond) as w:
        w.write_many(data, offsets, np.asarray(ts_ns, dtype=np.int64))
