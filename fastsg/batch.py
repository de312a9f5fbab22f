"""``PacketBatch``: packet headers as a struct of arrays, shaped by ``fastsg.schema``."""
from __future__ import annotations

import ipaddress
from typing import Iterable, Mapping, Sequence

import numpy as np

from . import schema
from .schema import FIELD_BY_NAME, FIELD_NAMES


def address_halves(addrs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Addresses -> (hi uint64, lo uint64, ipver uint8) arrays.

    ``addrs`` is a uint32 array of IPv4 addresses in host order, or a sequence of address
    strings / ``ipaddress`` objects (IPv4 and IPv6 mixed freely).
    """
    arr = np.asarray(addrs) if not isinstance(addrs, np.ndarray) else addrs
    if arr.dtype.kind in "ui":
        if arr.size and (int(arr.min()) < 0 or int(arr.max()) > 0xFFFFFFFF):
            raise ValueError("integer addresses must be IPv4 values in 0..2**32-1")
        lo = arr.astype(np.uint64)
        return np.zeros(len(lo), np.uint64), lo, np.full(len(lo), 4, np.uint8)
    n = len(addrs)
    hi = np.zeros(n, np.uint64)
    lo = np.zeros(n, np.uint64)
    ver = np.zeros(n, np.uint8)
    for i, a in enumerate(addrs):
        ip = a if isinstance(a, (ipaddress.IPv4Address, ipaddress.IPv6Address)) else ipaddress.ip_address(str(a))
        v = int(ip)
        hi[i] = v >> 64
        lo[i] = v & 0xFFFFFFFFFFFFFFFF
        ver[i] = ip.version
    return hi, lo, ver


def address_value(hi: int, lo: int, ipver: int):
    """(hi, lo, ipver) -> an ``ipaddress`` object."""
    if ipver == 4:
        return ipaddress.IPv4Address(int(lo) & 0xFFFFFFFF)
    return ipaddress.IPv6Address((int(hi) << 64) | int(lo))


class PacketBatch:
    """A batch of packet headers: one numpy array per schema field, all of length ``len(batch)``.

    Columns are attributes (``batch.src_lo``, ``batch.ts`` ...) and are also available as the
    mapping ``batch.columns``.  Dtypes and meanings are those of ``fastsg.schema.FIELDS``.
    A batch may also carry ``data``: the raw record bytes (uint8 array) with ``data_offsets``
    (int64, n+1 entries), used to write split captures with the original bytes.
    """

    __slots__ = ("columns", "data", "data_offsets", "source")

    def __init__(self, columns: Mapping[str, np.ndarray], data: np.ndarray | None = None,
                 data_offsets: np.ndarray | None = None, source: str | None = None):
        n = None
        cols = {}
        for name in FIELD_NAMES:
            if name not in columns:
                raise ValueError(f"PacketBatch: missing column {name!r}")
            col = np.ascontiguousarray(columns[name], dtype=FIELD_BY_NAME[name].dtype)
            if col.ndim != 1:
                raise ValueError(f"PacketBatch: column {name!r} must be 1-D")
            if n is None:
                n = len(col)
            elif len(col) != n:
                raise ValueError(f"PacketBatch: column {name!r} has {len(col)} entries, expected {n}")
            cols[name] = col
        extra = set(columns) - set(FIELD_NAMES)
        if extra:
            raise ValueError(f"PacketBatch: unknown columns {sorted(extra)}")
        self.columns = cols
        self.data = data
        self.data_offsets = data_offsets
        self.source = source

    def __getattr__(self, name):
        try:
            return self.columns[name]
        except KeyError:
            raise AttributeError(name) from None

    def __len__(self) -> int:
        return len(self.columns["status"])

    def __repr__(self) -> str:
        return f"PacketBatch({len(self)} packets{', from ' + self.source if self.source else ''})"

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def empty(cls, n: int = 0) -> "PacketBatch":
        return cls(schema.empty_columns(n))

    @classmethod
    def from_arrays(cls, src, dst, proto, sport=None, dport=None, ts=None, icmp_type=None,
                    icmp_code=None, tcp_flags=None, frag=None, wirelen=None,
                    **more) -> "PacketBatch":
        """Build a batch of IP packets from per-field arrays.

        ``src``/``dst``: uint32 arrays of IPv4 addresses (host order) or sequences of IPv4/IPv6
        address strings.  ``proto``: protocol numbers.  ``ts``: timestamps in ns (int64) or
        seconds (float arrays are taken as seconds).  Missing fields are 0; ``wirelen``
        defaults to 64.  ICMP echo (v4 8/0, v6 128/129) gets ``icmp_id`` from ``sport`` when
        given.  Any other schema column can be passed by name in ``more``.
        """
        s_hi, s_lo, s_ver = address_halves(src)
        d_hi, d_lo, d_ver = address_halves(dst)
        n = len(s_lo)
        if len(d_lo) != n:
            raise ValueError(f"src has {n} addresses, dst {len(d_lo)}")
        if np.any(s_ver != d_ver):
            i = int(np.nonzero(s_ver != d_ver)[0][0])
            raise ValueError(f"packet {i}: source and destination are of different IP versions")
        cols = schema.empty_columns(n)
        cols.update(src_hi=s_hi, src_lo=s_lo, dst_hi=d_hi, dst_lo=d_lo, ipver=s_ver)

        def put(name, values):
            if values is None:
                return
            arr = np.asarray(values)
            if arr.ndim == 0:
                arr = np.full(n, arr)
            if len(arr) != n:
                raise ValueError(f"{name} has {len(arr)} entries, expected {n}")
            dt = FIELD_BY_NAME[name].dtype
            if arr.size and arr.dtype.kind in "iu" and (int(arr.min()) < np.iinfo(dt).min
                                                        or int(arr.max()) > np.iinfo(dt).max):
                raise ValueError(f"{name}: values out of range for {dt}")
            cols[name] = arr.astype(dt)

        put("proto", proto)
        put("sport", sport)
        put("dport", dport)
        put("icmp_type", icmp_type)
        put("icmp_code", icmp_code)
        put("tcp_flags", tcp_flags)
        put("frag", frag)
        cols["wirelen"][:] = 64
        put("wirelen", wirelen)
        if ts is not None:
            t = np.asarray(ts)
            if t.dtype.kind == "f":
                t = np.round(t * 1e9)
            put("ts", t.astype(np.int64))
        for name, values in more.items():
            if name not in FIELD_BY_NAME:
                raise TypeError(f"from_arrays: unknown field {name!r}")
            put(name, values)
        # ICMP echo: the identifier is the flow's "port" on both sides (spec section 4)
        echo = (((cols["proto"] == 1) & ((cols["icmp_type"] == 8) | (cols["icmp_type"] == 0)))
                | ((cols["proto"] == 58) & ((cols["icmp_type"] == 128) | (cols["icmp_type"] == 129))))
        if sport is not None and "icmp_id" not in more:
            cols["icmp_id"] = np.where(echo, cols["sport"], 0).astype(np.uint16)
        if "status" not in more:
            cols["status"][:] = schema.STATUS_IP
        return cls(cols)

    @classmethod
    def from_scapy(cls, packets: Iterable) -> "PacketBatch":
        """Build a batch from scapy packets (Ether, or IP/IPv6 first).

        Non-IP frames become UNMANAGED (status NON_IP); a packet's ``.time`` becomes its
        timestamp; ``wirelen`` is ``len(bytes(pkt))``.
        """
        from . import scapy_bridge
        rows = [scapy_bridge.header_row(p) for p in packets]
        cols = schema.empty_columns(len(rows))
        for i, row in enumerate(rows):
            for name, value in row.items():
                cols[name][i] = value
        return cls(cols)

    @classmethod
    def concat(cls, batches: Sequence["PacketBatch"]) -> "PacketBatch":
        if not batches:
            return cls.empty(0)
        cols = {name: np.concatenate([b.columns[name] for b in batches]) for name in FIELD_NAMES}
        return cls(cols)

    # ---- access -------------------------------------------------------------------------
    def take(self, index) -> "PacketBatch":
        """A new batch of the packets selected by a slice, boolean mask or index array."""
        return PacketBatch({name: col[index] for name, col in self.columns.items()})

    def subset(self, names: Iterable[str]) -> dict[str, np.ndarray]:
        """The named columns, for binding to a kernel's parameters by name."""
        return {name: self.columns[name] for name in names}

    def address(self, i: int, which: str = "src"):
        """Packet ``i``'s source or destination address as an ``ipaddress`` object."""
        c = self.columns
        return address_value(c[which + "_hi"][i], c[which + "_lo"][i], c["ipver"][i])

    def kernel_columns(self) -> "schema.PacketColumns":
        """The columns as the ``PacketColumns`` namedtuple kernels take."""
        return schema.PacketColumns(**self.columns)
