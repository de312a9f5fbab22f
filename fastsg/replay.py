"""Replay: captures -> ``Engine`` -> verdict CSV, split captures and a summary (spec sections
2, 3, 6 and 9).

``replay(world, captures, ...)`` streams each capture in chunks (``iter_capture``), in the
order given, through one ``Engine``, and feeds every chunk's verdicts to the sinks:

* the verdict CSV (``index,verdict,egress_rule,ingress_rule``, one row per record, indexes
  continuing across captures), formatted by a numba kernel straight into bytes;
* the split captures (``accepted.pcap`` ... ``malformed.pcap``): every record copied with its
  original bytes and timestamp;
* the tallies of the summary: packets per verdict, checks per instance and per deciding rule.

Timeline (section 6): an event at time T applies before the first packet (in capture order)
whose timestamp is >= T, events in time order, ties in file order.  Every earlier packet had
a timestamp < T (else the event would have applied already), so the packet an event waits
for is the first whose *running maximum* timestamp reaches T: one ``searchsorted`` over the
chunk finds the cut of every pending event.  The chunk is classified piece by piece between
cuts; the Engine picks each mutation up incrementally before the next piece.

Memory stays bounded by one chunk: nothing per packet outlives its chunk.  Outputs are
written to temporary files renamed into place when the replay succeeds, so a failed replay
(a corrupt capture half-way) leaves no half-written results behind.
"""
from __future__ import annotations

import ipaddress
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

from .batch import PacketBatch
from .capture import iter_capture
from .capture.writer import PcapWriter, _gather_records
from .config import njit, resolve_threads
from .engine import Engine, Result, Verdict
from .errors import FastsgError, WorldError

DEFAULT_CHUNK_PACKETS = 1 << 20
CSV_HEADER = b"index,verdict,egress_rule,ingress_rule\n"
VERDICT_NAMES = tuple(v.name for v in Verdict)
CHECK_VERDICTS = (Verdict.ACCEPT, Verdict.DROP, Verdict.REJECT)   # what one check can decide
DIRECTIONS = ("egress", "ingress")
SPLIT_FILES = {Verdict.ACCEPT: "accepted.pcap", Verdict.DROP: "dropped.pcap",
               Verdict.REJECT: "rejected.pcap", Verdict.UNMANAGED: "unmanaged.pcap",
               Verdict.MALFORMED: "malformed.pcap"}
LINKTYPE_ETHERNET = 1

STATEFUL_UNAVAILABLE = (
    "stateful replay (connection tracking, spec section 4) is not yet available; pass "
    "--stateless to judge every packet by the rules alone (the default becomes stateful "
    "once tracking lands)")


class ReplayError(FastsgError):
    """A replay cannot run or cannot write its outputs."""


# =========================================================================================
# the summary
# =========================================================================================
@dataclass
class ReplaySummary:
    """What a replay saw.  ``to_dict()`` is the ``--json`` document.

    verdicts: packets per verdict name (all five, adding up to ``packets``).
    captures: per capture, its reading statistics.  instances: per instance id, per
    direction, the checks it decided by result.  rules: per deciding-rule name (rule ids,
    ``default``, the conntrack reasons) the checks it decided and their bytes (wire lengths).
    """
    packets: int = 0
    verdicts: dict = field(default_factory=dict)
    captures: list = field(default_factory=list)
    instances: dict = field(default_factory=dict)
    rules: dict = field(default_factory=dict)
    elapsed_seconds: float = 0.0
    timings: dict = field(default_factory=dict)
    stateful: bool = False
    threads: int = 1
    events_applied: int = 0
    events_pending: int = 0
    outputs: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)

    @property
    def packets_per_second(self) -> float:
        return self.packets / self.elapsed_seconds if self.elapsed_seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {"packets": self.packets, "verdicts": dict(self.verdicts),
                "captures": list(self.captures), "instances": dict(self.instances),
                "rules": dict(self.rules), "elapsed_seconds": round(self.elapsed_seconds, 6),
                "packets_per_second": round(self.packets_per_second, 1),
                "timings": {k: round(v, 6) for k, v in self.timings.items()},
                "stateful": self.stateful, "threads": self.threads,
                "timeline": {"applied": self.events_applied, "pending": self.events_pending},
                "outputs": dict(self.outputs), "warnings": list(self.warnings)}


def check_totals(summary: ReplaySummary, records_read: int, rows_written: Optional[int]) -> None:
    """The invariants of section 9, checked on every replay: the verdict counts add up to
    the packets, the packets to the records read, and the CSV has one row per record.
    A failure is a bug in fastsg, never a property of the input: raise loudly."""
    total = sum(summary.verdicts.values())
    problems = []
    if total != summary.packets:
        problems.append(f"verdict counts add up to {total}, not to the {summary.packets} packets")
    if records_read != summary.packets:
        problems.append(f"{records_read} records read but {summary.packets} packets classified")
    captured = sum(c["records"] for c in summary.captures)
    if captured != records_read:
        problems.append(f"the captures report {captured} records, {records_read} were read")
    if rows_written is not None and rows_written != records_read:
        problems.append(f"{rows_written} verdict rows written for {records_read} records")
    if problems:
        raise RuntimeError("replay totals do not add up (a fastsg bug): " + "; ".join(problems))


# =========================================================================================
# the verdict CSV
# =========================================================================================
@njit()
def _ndigits(x):
    d = 1
    while x >= 10:
        x //= 10
        d += 1
    return d


@njit()
def _csv_rows(first, verdict, egress_rule, ingress_rule, vbuf, voff, rbuf, roff):
    """The CSV rows of one chunk as bytes: ``first+i,<verdict>,<egress>,<ingress>\\n``.

    Names are pre-encoded (and CSV-quoted where needed): verdict v is ``vbuf[voff[v]:
    voff[v+1]]``, rule r is ``rbuf[roff[r]:roff[r+1]]``; a rule index < 0 is an empty field.
    Two passes: the exact size, then the bytes (no per-row Python objects at all).
    """
    n = len(verdict)
    total = 0
    for i in range(n):
        v = verdict[i]
        total += _ndigits(first + i) + 4 + voff[v + 1] - voff[v]
        e = egress_rule[i]
        if e >= 0:
            total += roff[e + 1] - roff[e]
        g = ingress_rule[i]
        if g >= 0:
            total += roff[g + 1] - roff[g]
    out = np.empty(total, np.uint8)
    pos = 0
    for i in range(n):
        x = first + i
        nd = _ndigits(x)
        for k in range(nd - 1, -1, -1):
            out[pos + k] = 48 + x % 10
            x //= 10
        pos += nd
        out[pos] = 44
        pos += 1
        v = verdict[i]
        for k in range(voff[v], voff[v + 1]):
            out[pos] = vbuf[k]
            pos += 1
        out[pos] = 44
        pos += 1
        e = egress_rule[i]
        if e >= 0:
            for k in range(roff[e], roff[e + 1]):
                out[pos] = rbuf[k]
                pos += 1
        out[pos] = 44
        pos += 1
        g = ingress_rule[i]
        if g >= 0:
            for k in range(roff[g], roff[g + 1]):
                out[pos] = rbuf[k]
                pos += 1
        out[pos] = 10
        pos += 1
    return out


def csv_field(name: str) -> bytes:
    """One CSV field (RFC 4180): quoted only when it holds a comma, quote or line break."""
    if any(c in name for c in ',"\r\n'):
        name = '"' + name.replace('"', '""') + '"'
    return name.encode("utf-8")


class NameTable:
    """Deciding-rule names, encoded for the CSV kernel, grown as the engine's name list grows.

    The engine's ``rule_names`` only ever grow (an index never changes meaning), so the
    table appends the new names in amortised O(1) instead of rebuilding after each timeline
    event.
    """

    def __init__(self, names: Sequence[str] = ()):
        self.names: list[str] = []
        self.buf = np.zeros(256, np.uint8)
        self.offsets = np.zeros(64, np.int64)
        self.extend(names)

    def __len__(self) -> int:
        return len(self.names)

    def extend(self, names: Sequence[str]) -> None:
        """Bring the table up to ``names`` (which must extend the names seen so far)."""
        n = len(self.names)
        if len(names) < n or (n and names[n - 1] != self.names[-1]):
            raise RuntimeError("the engine's rule_names changed meaning (they must only grow)")
        for name in names[n:]:
            self._append(name)

    def _append(self, name: str) -> None:
        data = np.frombuffer(csv_field(name), np.uint8)
        k = len(self.names)
        end = int(self.offsets[k])
        if k + 2 > len(self.offsets):
            self.offsets = np.concatenate([self.offsets, np.zeros(len(self.offsets), np.int64)])
        if end + len(data) > len(self.buf):
            grown = np.zeros(max(2 * len(self.buf), end + len(data)), np.uint8)
            grown[:end] = self.buf[:end]
            self.buf = grown
        self.buf[end:end + len(data)] = data
        self.offsets[k + 1] = end + len(data)
        self.names.append(name)


_VERDICT_TABLE = NameTable(VERDICT_NAMES)


def format_verdict_rows(first_index: int, verdict: np.ndarray, egress_rule: np.ndarray,
                        ingress_rule: np.ndarray, names: NameTable) -> bytes:
    """CSV rows (no header) of packets ``first_index ...``; ``names`` covers every index used."""
    out = _csv_rows(np.int64(first_index), verdict, egress_rule, ingress_rule,
                    _VERDICT_TABLE.buf, _VERDICT_TABLE.offsets, names.buf, names.offsets)
    return out.tobytes()


# =========================================================================================
# outputs written to temporary files, renamed into place on success
# =========================================================================================
class _PendingFile:
    """A path written under a temporary name beside it, renamed into place by ``commit``."""

    def __init__(self, path):
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")

    def commit(self) -> None:
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass


def _cannot_write(path, exc: OSError) -> ReplayError:
    return ReplayError(f"{path}: cannot write: {exc.strerror or exc}")


class VerdictCsv:
    """The verdict CSV of section 9, written chunk by chunk."""

    def __init__(self, path):
        self.file = _PendingFile(path)
        self.rows = 0
        self.names = NameTable()
        try:
            self._f = open(self.file.tmp, "wb")
        except OSError as e:
            raise _cannot_write(path, e) from None
        self._f.write(CSV_HEADER)

    def write(self, verdict, egress_rule, ingress_rule, rule_names) -> None:
        self.names.extend(rule_names)
        self._f.write(format_verdict_rows(self.rows, verdict, egress_rule, ingress_rule,
                                          self.names))
        self.rows += len(verdict)

    def commit(self) -> None:
        self._f.close()
        self.file.commit()

    def abort(self) -> None:
        self._f.close()
        self.file.abort()


class SplitWriter:
    """The split captures: one classic pcap per verdict with the records' original bytes
    and timestamps (nanosecond pcap, so no timestamp loses precision).

    A pcap file holds one link type: a verdict's main file takes the link type of its first
    record, records of any other link type go to ``<stem>.linktype<N>.pcap`` beside it (the
    naming of ``capture.copy_records``).  Verdicts that got no record get an empty capture.
    """

    def __init__(self, directory):
        self.dir = Path(directory)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise _cannot_write(directory, e) from None
        self._writers: dict[tuple[int, int], tuple[PcapWriter, _PendingFile]] = {}
        self._main: dict[int, int] = {}     # verdict -> link type of its main file
        self.counts = {v.name: 0 for v in Verdict}

    def write(self, src_path: str, batch: PacketBatch, verdict: np.ndarray) -> None:
        """Copy every record of ``batch`` (read from ``src_path``) to its verdict's file."""
        if len(batch) == 0:
            return
        # one pass over the source: records grouped by (verdict, link type), capture order kept
        key = verdict.astype(np.int64) << 16 | batch.linktype.astype(np.int64)
        order = np.argsort(key, kind="stable")
        key = key[order]
        lengths = batch.caplen[order].astype(np.int64)
        data = _gather_records(src_path, batch.rec_offset[order].astype(np.int64), lengths)
        offsets = np.concatenate(([0], np.cumsum(lengths)))
        bounds = np.flatnonzero(np.diff(key)) + 1
        starts = np.concatenate(([0], bounds))
        ends = np.concatenate((bounds, [len(key)]))
        ts, wirelen = batch.ts[order], batch.wirelen[order]
        for s, e in zip(starts.tolist(), ends.tolist()):
            v, lt = int(key[s]) >> 16, int(key[s]) & 0xFFFF
            writer = self._writer(v, lt)
            writer.write_many(data, offsets[s:e + 1], ts[s:e], wirelen[s:e])
            self.counts[Verdict(v).name] += e - s

    def _writer(self, verdict: int, linktype: int) -> PcapWriter:
        entry = self._writers.get((verdict, linktype))
        if entry is None:
            main = self._main.setdefault(verdict, linktype)
            name = Path(SPLIT_FILES[Verdict(verdict)])
            if linktype != main:
                name = name.with_name(f"{name.stem}.linktype{linktype}{name.suffix}")
            pending = _PendingFile(self.dir / name)
            try:
                entry = (PcapWriter(pending.tmp, linktype), pending)
            except OSError as e:
                raise _cannot_write(pending.path, e) from None
            self._writers[(verdict, linktype)] = entry
        return entry[0]

    def commit(self, default_linktype: int) -> dict:
        """Close everything, create the empty captures, rename into place.  Returns
        {verdict name: [paths written]}."""
        for v in Verdict:
            if int(v) not in self._main:
                self._writer(int(v), default_linktype)
        written: dict[str, list] = {v.name: [] for v in Verdict}
        for (v, _), (w, pending) in sorted(self._writers.items()):
            w.close()
            pending.commit()
            written[Verdict(v).name].append(str(pending.path))
        return written

    def abort(self) -> None:
        for w, pending in self._writers.values():
            w.close()
            pending.abort()


# =========================================================================================
# address -> instance, for the per-instance tallies
# =========================================================================================
_MIX = np.uint64(0x9E3779B97F4A7C15)


def _key6(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """A 64-bit key of an IPv6 address (hits are verified on the full 128 bits)."""
    with np.errstate(over="ignore"):
        return (hi * _MIX) ^ lo


class OwnerMap:
    """Which running instance an address belongs to (spec section 2), vectorised.

    Instances get dense indexes in order of first appearance (``ids``), stable across
    rebuilds, so tallies can be kept in arrays.  Rebuilt only when a change could move an
    address (launch, terminate): rule changes, attach and detach cannot.
    """

    def __init__(self, world):
        self.world = world
        self.ids: list[str] = []
        self._index: dict[str, int] = {}
        self._revision = None
        self.refresh()

    def refresh(self) -> None:
        world = self.world
        with world.lock:
            if self._revision == world.revision:
                return
            if self._revision is not None and not any(
                    c.kind in ("launch", "terminate") for c in world.changes_since(self._revision)):
                self._revision = world.revision
                return
            self._build(world)
            self._revision = world.revision

    def _build(self, world) -> None:
        v4_key, v4_val, v6_hi, v6_lo, v6_val = [], [], [], [], []
        for inst in world.instances.values():
            if not inst.running:
                continue
            k = self._index.setdefault(inst.id, len(self.ids))
            if k == len(self.ids):
                self.ids.append(inst.id)
            for addr in inst.addresses():
                v = int(addr)
                if addr.version == 4:
                    v4_key.append(v)
                    v4_val.append(k)
                else:
                    v6_hi.append(v >> 64)
                    v6_lo.append(v & 0xFFFFFFFFFFFFFFFF)
                    v6_val.append(k)
        keys = np.array(v4_key, np.uint64)
        order = np.argsort(keys)
        self._k4, self._v4 = keys[order], np.array(v4_val, np.int32)[order]
        hi, lo = np.array(v6_hi, np.uint64), np.array(v6_lo, np.uint64)
        keys = _key6(hi, lo)
        order = np.argsort(keys)
        self._k6, self._hi6, self._lo6 = keys[order], hi[order], lo[order]
        self._v6 = np.array(v6_val, np.int32)[order]
        if len(np.unique(self._k6)) != len(self._k6):
            # two addresses sharing a 64-bit key (never seen in practice): exact dict lookups
            self._exact6 = {(int(h), int(l)): int(x) for h, l, x in zip(hi, lo, v6_val)}
        else:
            self._exact6 = None

    def lookup(self, ipver: np.ndarray, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
        """int32 instance index of each address, -1 where no running instance owns it."""
        out = np.full(len(ipver), -1, np.int32)
        m4 = ipver == 4
        if m4.any() and len(self._k4):
            out[m4] = _find(self._k4, self._v4, lo[m4])
        m6 = ipver == 6
        if m6.any() and len(self._k6):
            qh, ql = hi[m6], lo[m6]
            if self._exact6 is not None:
                out[m6] = [self._exact6.get((int(h), int(l)), -1) for h, l in zip(qh, ql)]
            else:
                idx = np.minimum(np.searchsorted(self._k6, _key6(qh, ql)), len(self._k6) - 1)
                hit = (self._hi6[idx] == qh) & (self._lo6[idx] == ql)
                out[m6] = np.where(hit, self._v6[idx], -1)
        return out


def _find(keys: np.ndarray, values: np.ndarray, query: np.ndarray) -> np.ndarray:
    """values[j] where keys[j] == query (keys sorted, distinct), else -1."""
    idx = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
    return np.where(keys[idx] == query, values[idx], -1).astype(np.int32)


# =========================================================================================
# the tallies
# =========================================================================================
class Tally:
    """Packets per verdict, checks per (instance, direction, result) and per deciding rule."""

    def __init__(self):
        self.verdicts = np.zeros(len(Verdict), np.int64)
        self.rule_packets = np.zeros(64, np.int64)
        self.rule_bytes = np.zeros(64, np.int64)
        self.inst = np.zeros((16, 2, len(CHECK_VERDICTS)), np.int64)
        self.rule_names: tuple = ()

    def add(self, verdict, egress_rule, ingress_rule, egress_inst, ingress_inst, wirelen,
            rule_names) -> None:
        self.verdicts += np.bincount(verdict, minlength=len(Verdict))
        self.rule_names = rule_names if len(rule_names) > len(self.rule_names) else self.rule_names
        did_e, did_i = egress_rule >= 0, ingress_rule >= 0
        wl = wirelen.astype(np.int64)
        for rules, did in ((egress_rule, did_e), (ingress_rule, did_i)):
            r = rules[did]
            if len(r):
                n = int(r.max()) + 1
                self._grow_rules(n)
                self.rule_packets[:n] += np.bincount(r, minlength=n)
                # float64 weights are exact: a chunk's bytes stay far below 2**53
                self.rule_bytes[:n] += np.bincount(r, weights=wl[did], minlength=n).astype(np.int64)
        # a packet that met its ingress check passed its egress check (egress comes first)
        e_result = np.where(did_i, Verdict.ACCEPT, verdict)[did_e]
        self._add_inst(egress_inst[did_e], 0, e_result)
        self._add_inst(ingress_inst[did_i], 1, verdict[did_i])

    def _grow_rules(self, n: int) -> None:
        if n > len(self.rule_packets):
            size = max(n, 2 * len(self.rule_packets))
            for name in ("rule_packets", "rule_bytes"):
                old = getattr(self, name)
                new = np.zeros(size, np.int64)
                new[:len(old)] = old
                setattr(self, name, new)

    def _add_inst(self, inst, direction: int, result) -> None:
        if len(inst) == 0:
            return
        if (inst < 0).any():
            raise RuntimeError("a check happened at an address no running instance owns "
                               "(engine and world disagree: a fastsg bug)")
        n = int(inst.max()) + 1
        if n > len(self.inst):
            grown = np.zeros((max(n, 2 * len(self.inst)),) + self.inst.shape[1:], np.int64)
            grown[:len(self.inst)] = self.inst
            self.inst = grown
        k = len(CHECK_VERDICTS)
        counts = np.bincount(inst.astype(np.int64) * k + result, minlength=n * k).reshape(n, k)
        self.inst[:n, direction] += counts

    def instances(self, ids: Sequence[str]) -> dict:
        out = {}
        totals = self.inst.sum(axis=(1, 2))
        for i in np.flatnonzero(totals).tolist():
            out[ids[i]] = {d: {v.name: int(self.inst[i, j, int(v)]) for v in CHECK_VERDICTS}
                           for j, d in enumerate(DIRECTIONS)}
        return out

    def rules(self, world) -> dict:
        """Every deciding-rule name: the reasons, every rule the engine knows (in its index
        order), then the world's rules no running instance uses (0 hits)."""
        names = list(self.rule_names)
        out = {}
        for i, name in enumerate(names):
            hit = i < len(self.rule_packets)
            out[name] = {"packets": int(self.rule_packets[i]) if hit else 0,
                         "bytes": int(self.rule_bytes[i]) if hit else 0}
        with world.lock:
            for g in world.groups.values():
                for r in g.ingress + g.egress:
                    out.setdefault(r.id, {"packets": 0, "bytes": 0})
        return out


# =========================================================================================
# the replay itself
# =========================================================================================
@dataclass
class _Classified:
    """One chunk's verdicts and the instance of each check that happened (-1 none)."""
    verdict: np.ndarray
    egress_rule: np.ndarray
    ingress_rule: np.ndarray
    egress_inst: np.ndarray
    ingress_inst: np.ndarray
    rule_names: tuple


class Replayer:
    """Runs one replay: an Engine on a world, the timeline, the sinks and the tallies."""

    def __init__(self, world, *, stateful: bool, threads: Optional[int], chunk_packets: int,
                 csv: Optional[VerdictCsv], split: Optional[SplitWriter],
                 progress: Optional[Callable[[int], None]], on_warning: Callable[[str], None]):
        self.world = world
        try:
            self.engine = Engine(world, stateful=stateful, threads=threads)
        except NotImplementedError:
            raise ReplayError(STATEFUL_UNAVAILABLE) from None
        self.threads = threads
        self.chunk_packets = int(chunk_packets)
        self.csv, self.split = csv, split
        self.progress = progress
        self.on_warning = on_warning
        self.owners = OwnerMap(world)
        self.tally = Tally()
        self.pending = list(world.pending_events())
        self.applied = 0
        self.records = 0
        self.captures: list[dict] = []
        self.linktypes: dict[int, int] = {}
        self.timings = {"read": 0.0, "classify": 0.0, "tally": 0.0, "write": 0.0}

    # ---- captures -> chunks ----
    def run(self, paths: Sequence[str]) -> None:
        for path in paths:
            self._capture(os.fspath(path))

    def _capture(self, path: str) -> None:
        it = iter_capture(path, self.chunk_packets)
        done_bytes = 0
        try:
            while True:
                t0 = time.perf_counter()
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    batch = next(it, None)
                for w in caught:
                    self.on_warning(str(w.message))
                self.timings["read"] += time.perf_counter() - t0
                if batch is None:
                    break
                self._chunk(path, batch)
                if self.progress is not None:
                    self.progress(it.stats.bytes - done_bytes)
                    done_bytes = it.stats.bytes
        finally:
            it.close()
        st = it.stats
        for lt, n in st.linktypes.items():
            self.linktypes[lt] = self.linktypes.get(lt, 0) + n
        self.captures.append({"path": path, "format": st.format, "records": st.records,
                              "truncated": st.truncated, "clamped_timestamps": st.clamped_ts,
                              "non_ip": st.non_ip, "malformed": st.malformed,
                              "unknown_linktype": st.unknown_linktype, "bytes": st.bytes,
                              "linktypes": {str(k): v for k, v in sorted(st.linktypes.items())}})

    def _chunk(self, path: str, batch: PacketBatch) -> None:
        t0 = time.perf_counter()
        c = self._classify(batch)
        t1 = time.perf_counter()
        self.tally.add(c.verdict, c.egress_rule, c.ingress_rule, c.egress_inst, c.ingress_inst,
                       batch.wirelen, c.rule_names)
        t2 = time.perf_counter()
        if self.csv is not None:
            self.csv.write(c.verdict, c.egress_rule, c.ingress_rule, c.rule_names)
        if self.split is not None:
            self.split.write(path, batch, c.verdict)
        self.records += len(batch)
        self.timings["classify"] += t1 - t0
        self.timings["tally"] += t2 - t1
        self.timings["write"] += time.perf_counter() - t2

    # ---- one chunk, cut at the timeline events ----
    def _classify(self, batch: PacketBatch) -> _Classified:
        n = len(batch)
        cuts = event_cuts(batch.ts, [e.at_ns for e in self.pending])
        due = int(np.count_nonzero(cuts < n))      # cuts are sorted
        pieces, start = [], 0
        for event, cut in zip(self.pending[:due], cuts[:due].tolist()):
            if cut > start:
                pieces.append(self._piece(batch.take(slice(start, cut))))
                start = cut
            self._apply(event, self.records + cut)
        self.pending = self.pending[due:]
        pieces.append(self._piece(batch.take(slice(start, n)) if start else batch))
        if len(pieces) == 1:
            return pieces[0]
        return _Classified(*(np.concatenate([getattr(p, f) for p in pieces]) for f in
                             ("verdict", "egress_rule", "ingress_rule", "egress_inst",
                              "ingress_inst")), rule_names=pieces[-1].rule_names)

    def _apply(self, event, packet_index: int) -> None:
        try:
            self.world.apply_event(event)
        except WorldError as e:
            raise ReplayError(f"timeline event {event.index} ({event.kind}) could not be applied "
                              f"before packet {packet_index}: {e}") from None
        self.applied += 1

    def _piece(self, batch: PacketBatch) -> _Classified:
        res: Result = self.engine.classify(batch)
        self.owners.refresh()
        return _Classified(res.verdict, res.egress_rule, res.ingress_rule,
                           self._owners(batch, "src", res.egress_rule >= 0),
                           self._owners(batch, "dst", res.ingress_rule >= 0), res.rule_names)

    def _owners(self, batch: PacketBatch, side: str, mask: np.ndarray) -> np.ndarray:
        """The instance index of ``side``'s address where ``mask`` (a check happened there)."""
        out = np.full(len(mask), -1, np.int32)
        if mask.any():
            c = batch.columns
            out[mask] = self.owners.lookup(c["ipver"][mask], c[side + "_hi"][mask],
                                           c[side + "_lo"][mask])
        return out

    def default_linktype(self) -> int:
        """The most common link type read (Ethernet when nothing was read)."""
        if not self.linktypes:
            return LINKTYPE_ETHERNET
        return max(sorted(self.linktypes), key=lambda lt: self.linktypes[lt])


def event_cuts(ts: np.ndarray, times: Sequence[int]) -> np.ndarray:
    """Index in ``ts`` (a chunk's timestamps, capture order) before which each pending event
    applies: the first packet whose timestamp is >= the event's time; ``len(ts)`` when no
    packet of the chunk reaches it.  ``times`` is sorted; every packet before the chunk had a
    timestamp below ``times[0]``, so the running maximum (sorted) can be searched."""
    if len(times) == 0:
        return np.zeros(0, np.int64)
    if len(ts) == 0:
        return np.zeros(len(times), np.int64)
    running_max = np.maximum.accumulate(ts)
    return np.searchsorted(running_max, np.asarray(times, np.int64), side="left")


def check_captures(paths: Sequence) -> None:
    """Fail before writing anything if a capture is missing or not a capture at all."""
    if not paths:
        raise ReplayError("no capture given")
    for p in paths:
        with iter_capture(p, 1):
            pass


def replay(world, captures: Iterable, *, stateful: bool = True, threads: Optional[int] = None,
           chunk_packets: int = DEFAULT_CHUNK_PACKETS, verdicts=None, split_dir=None,
           progress: Optional[Callable[[int], None]] = None,
           on_warning: Optional[Callable[[str], None]] = None,
           copy_world: bool = True) -> ReplaySummary:
    """Replay ``captures`` (paths, in order) against ``world`` and return the summary.

    ``stateful``: spec section 4 tracking (not available yet: raises ``ReplayError``).
    ``verdicts``: path of the verdict CSV; ``split_dir``: directory of the split captures.
    ``progress(n)`` is called with the capture bytes consumed after each chunk;
    ``on_warning(message)`` with each warning (truncated final record...), also listed in
    the summary.  The timeline is applied to a copy of ``world`` unless ``copy_world`` is
    False (then ``world`` ends in the state of the last packet).  Raises ``CaptureError``
    (file, record, offset), ``WorldError`` or ``ReplayError``; on error no output is left.
    """
    t_start = time.perf_counter()
    paths = [os.fspath(p) for p in captures]
    check_captures(paths)
    if chunk_packets < 1:
        raise ReplayError(f"chunk_packets must be >= 1, not {chunk_packets}")
    live = world.copy() if copy_world else world
    summary = ReplaySummary(stateful=stateful, threads=resolve_threads(threads))
    warn = _collector(summary.warnings, on_warning)
    csv = split = None
    try:
        replayer = Replayer(live, stateful=stateful, threads=threads, chunk_packets=chunk_packets,
                            csv=None, split=None, progress=progress, on_warning=warn)
        compile_seconds = time.perf_counter() - t_start
        csv = VerdictCsv(verdicts) if verdicts is not None else None
        split = SplitWriter(split_dir) if split_dir is not None else None
        replayer.csv, replayer.split = csv, split
        replayer.run(paths)
        _fill_summary(summary, replayer, live)
        summary.timings = {"compile": compile_seconds, **replayer.timings}
        check_totals(summary, replayer.records, csv.rows if csv is not None else None)
        if csv is not None:
            csv.commit()
            summary.outputs["verdicts"] = os.fspath(verdicts)
        if split is not None:
            summary.outputs["split"] = split.commit(replayer.default_linktype())
    except BaseException:
        for sink in (csv, split):
            if sink is not None:
                sink.abort()
        raise
    summary.elapsed_seconds = time.perf_counter() - t_start
    return summary


def _collector(store: list, callback):
    def warn(message: str) -> None:
        store.append(message)
        if callback is not None:
            callback(message)
    return warn


def _fill_summary(summary: ReplaySummary, r: Replayer, world) -> None:
    t = r.tally
    summary.packets = int(t.verdicts.sum())
    summary.verdicts = {v.name: int(t.verdicts[v]) for v in Verdict}
    summary.captures = r.captures
    summary.instances = t.instances(r.owners.ids)
    summary.rules = t.rules(world)
    summary.events_applied = r.applied
    summary.events_pending = len(r.pending)


# =========================================================================================
# one packet (``fastsg classify``)
# =========================================================================================
PACKET_PROTOCOLS = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58}
ECHO_REQUEST = {1: 8, 58: 128}


def parse_protocol(text) -> int:
    """``tcp``/``udp``/``icmp``/``icmpv6`` or a number 0-255 -> the protocol number."""
    s = str(text).strip().lower()
    if s in PACKET_PROTOCOLS:
        return PACKET_PROTOCOLS[s]
    if s.isdigit() and 0 <= int(s) <= 255:
        return int(s)
    raise ValueError(f"{text!r} is not a protocol (tcp, udp, icmp, icmpv6 or a number 0-255)")


def classify_packet(world, *, src, dst, proto, sport: int = 0, dport: int = 0,
                    icmp_type: Optional[int] = None, icmp_code: int = 0,
                    fragment: bool = False, tcp_flags: int = 0x02,
                    at_ns: Optional[int] = None) -> dict:
    """Classify one packet (stateless: one packet alone has no tracked flow) and explain it.

    ``icmp_type`` defaults to echo request for icmp/icmpv6.  ``at_ns``: first apply the
    timeline events a packet at that time would see (on a copy of ``world``).  Returns
    {"verdict", "packet": {...}, "egress": check or None, "ingress": check or None, "events_applied"}
    where a check is {"instance", "result", "rule", "rule_detail"} (rule_detail: the rule in
    file syntax with its group and direction, or None for ``default``).
    """
    p = parse_protocol(proto)
    if icmp_type is None:
        icmp_type = ECHO_REQUEST.get(p, 0)
    src_a, dst_a = ipaddress.ip_address(str(src)), ipaddress.ip_address(str(dst))
    if src_a.version != dst_a.version:
        raise ValueError(f"source {src_a} and destination {dst_a} are of different IP versions")
    live, applied = world, 0
    if at_ns is not None:
        live = world.copy()
        for ev in live.pending_events():
            if ev.at_ns > at_ns:
                break
            live.apply_event(ev)
            applied += 1
    is_icmp = p in ECHO_REQUEST
    # the schema puts an echo's identifier in both port columns
    is_echo = is_icmp and icmp_type in (0, 8, 128, 129) and (p == 1) == (icmp_type in (0, 8))
    batch = PacketBatch.from_arrays(
        [src_a], [dst_a], [p], sport=[sport],
        dport=[sport if is_echo else 0 if is_icmp else dport], icmp_type=[icmp_type if is_icmp else 0],
        icmp_code=[icmp_code if is_icmp else 0], frag=[int(fragment)],
        tcp_flags=[tcp_flags if p == 6 else 0], ts=np.array([at_ns or 0], np.int64))
    res = Engine(live, stateful=False).classify(batch)
    verdict, egress_rule, ingress_rule = res.row(0)
    owners = OwnerMap(live)
    c = batch.columns
    checks = {}
    for direction, side, rule in (("egress", "src", egress_rule), ("ingress", "dst", ingress_rule)):
        if rule is None:
            checks[direction] = None
            continue
        inst = owners.lookup(c["ipver"], c[side + "_hi"], c[side + "_lo"])[0]
        refused = verdict if (direction == "ingress" or ingress_rule is None) else "ACCEPT"
        checks[direction] = {"instance": owners.ids[inst] if inst >= 0 else None,
                             "result": refused, "rule": rule,
                             "rule_detail": _rule_detail(live, rule)}
    return {"verdict": verdict,
            "packet": {"src": str(src_a), "dst": str(dst_a), "proto": p, "sport": sport,
                       "dport": dport if not is_icmp else None,
                       "icmp_type": icmp_type if is_icmp else None,
                       "icmp_code": icmp_code if is_icmp else None, "fragment": bool(fragment)},
            "egress": checks["egress"], "ingress": checks["ingress"], "events_applied": applied}


def _rule_detail(world, rule_id: str) -> Optional[dict]:
    """The rule named ``rule_id`` in file syntax, with its group and direction."""
    from .world.files import rule_to_dict
    with world.lock:
        for g in world.groups.values():
            for direction in DIRECTIONS:
                for r in g.rules(direction):
                    if r.id == rule_id:
                        return {"group": g.id, "group_name": g.name, "direction": direction,
                                **rule_to_dict(r)}
    return None
