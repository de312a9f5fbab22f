"""Replay: captures -> ``Engine`` -> verdict CSV, split captures, REJECT answers, flow log
and a summary (spec sections 2-7 and 9).

``replay(world, captures, ...)`` streams each capture in chunks (``iter_capture``), in the
order given, through one ``Engine`` (stateful unless told otherwise: the tracking tables,
clock and flow log carry over from chunk to chunk), and feeds every chunk's verdicts to the
sinks:

* the verdict CSV (``index,verdict,egress_rule,ingress_rule``, one row per record, indexes
  continuing across captures), formatted by a numba kernel straight into bytes;
* the split captures (``accepted.pcap`` ... ``malformed.pcap``): every record copied with its
  original bytes and timestamp;
* the REJECT answers (``fastsg.reject``), one per REJECT packet, as a raw-IP pcap;
* the tallies of the summary: packets per verdict and checks per instance.

The per-rule hit counters and the flow log are the engine's (``engine.rule_counters()``,
``engine.flow_log``): the summary reports them and the flow log is written at the end.

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
import mmap
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

from .batch import PacketBatch
from .capture import iter_capture
from .capture.writer import file_header, record_headers
from .capture.writer import interleave
from .config import njit, resolve_threads
from .engine import Engine, Result, Verdict
from .errors import FastsgError, WorldError
from .flowlog import FORMATS as FLOW_LOG_FORMATS
from .reject import LINKTYPE_RAW, build_responses
from .registry import MappedRegistry

DEFAULT_CHUNK_PACKETS = 1 << 20
CSV_HEADER = b"index,verdict,egress_rule,ingress_rule\n"
VERDICT_NAMES = tuple(v.name for v in Verdict)
CHECK_VERDICTS = (Verdict.ACCEPT, Verdict.DROP, Verdict.REJECT)   # what one check can decide
DIRECTIONS = ("egress", "ingress")
SPLIT_FILES = {Verdict.ACCEPT: "accepted.pcap", Verdict.DROP: "dropped.pcap",
               Verdict.REJECT: "rejected.pcap", Verdict.UNMANAGED: "unmanaged.pcap",
               Verdict.MALFORMED: "malformed.pcap"}
LINKTYPE_ETHERNET = 1

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
    direction, the checks it decided by result.  rule_counters: the engine's per-rule hit
    counters (spec section 7) as {name: {"packets", "bytes"}}: every rule id of the world,
    ``default`` and the conntrack reasons, zeros included; packets add up to the checks.
    flow_log: the flow log's counts (``FlowLog.totals()`` and the format) when one was
    written, else None.  responses: {"written", "rejected"} when REJECT answers were
    written, else None.
    """
    packets: int = 0
    verdicts: dict = field(default_factory=dict)
    captures: list = field(default_factory=list)
    instances: dict = field(default_factory=dict)
    rule_counters: dict = field(default_factory=dict)
    flow_log: Optional[dict] = None
    responses: Optional[dict] = None
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
                "rule_counters": dict(self.rule_counters), "flow_log": self.flow_log,
                "responses": self.responses,
                "elapsed_seconds": round(self.elapsed_seconds, 6),
                "packets_per_second": round(self.packets_per_second, 1),
                "timings": {k: round(v, 6) for k, v in self.timings.items()},
                "stateful": self.stateful, "threads": self.threads,
                "timeline": {"applied": self.events_applied, "pending": self.events_pending},
                "outputs": dict(self.outputs), "warnings": list(self.warnings)}


def check_totals(summary: ReplaySummary, rows_written: Optional[int] = None,
                 split_written: Optional[int] = None, checks: Optional[int] = None) -> None:
    """The invariants of sections 7 and 9, checked on every replay: the verdict counts add
    up to the packets classified, which are the records the captures yielded, and every
    output got one row / record per packet; the rule counters add up to the ``checks``
    tallied per instance; the flow log's records plus its skipped packets add up to the
    events it logged; one REJECT answer was written per REJECT packet.  The counts come from
    different places (the tally kernel, the engine's counters, the chunk loop, the reader's
    statistics, the sinks), so a disagreement is a bug in fastsg, never a property of the
    input: raise loudly."""
    n = summary.packets
    problems = []
    total = sum(summary.verdicts.values())
    if total != n:
        problems.append(f"verdict counts add up to {total}, not to the {n} packets")
    captured = sum(c["records"] for c in summary.captures)
    if captured != n:
        problems.append(f"the captures yielded {captured} records but {n} packets were classified")
    if rows_written is not None and rows_written != n:
        problems.append(f"{rows_written} verdict rows written for {n} packets")
    if split_written is not None and split_written != n:
        problems.append(f"{split_written} records split for {n} packets")
    counted = sum(c["packets"] for c in summary.rule_counters.values())
    if checks is not None and counted != checks:
        problems.append(f"the rule counters hold {counted} checks, the instances {checks}")
    fl = summary.flow_log
    if fl is not None and fl["ok_packets"] + fl["skipped_packets"] != fl["logged_events"]:
        problems.append(f"the flow log's records hold {fl['ok_packets']} packets and "
                        f"{fl['skipped_packets']} were skipped, but {fl['logged_events']} "
                        "events were logged")
    if fl is not None and fl["logged_events"] > counted:
        problems.append(f"the flow log logged {fl['logged_events']} events of {counted} checks")
    rs = summary.responses
    if rs is not None and not rs["written"] == rs["rejected"] == summary.verdicts.get("REJECT", 0):
        problems.append(f"{rs['written']} REJECT answers written for {rs['rejected']} rejected "
                        f"packets seen and {summary.verdicts.get('REJECT', 0)} REJECT verdicts")
    if problems:
        raise RuntimeError("replay totals do not add up (a fastsg bug): " + "; ".join(problems))


# =========================================================================================
# the verdict CSV
# =========================================================================================
OUT_BUFFER_BYTES = 4 << 20      # reused output buffer: stays in cache, never page-faults again


@njit()
def _csv_fill(first, verdict, egress_rule, ingress_rule, start, vbuf, voff, rbuf, roff, out):
    """Format rows ``start...`` as ``first+i,<verdict>,<egress>,<ingress>\\n`` into ``out``
    until the next row does not fit.  Returns ``(next row, bytes written)``.

    Names are pre-encoded (and CSV-quoted where needed): verdict v is ``vbuf[voff[v]:
    voff[v+1]]``, rule r is ``rbuf[roff[r]:roff[r+1]]``; a rule index < 0 is an empty field.
    """
    n = len(verdict)
    # the index's decimal digits, right-aligned, advanced like an odometer: consecutive
    # indexes differ in their last digits only, so no division per row
    digits = np.empty(20, np.uint8)
    x = first + start
    nd = 0
    while True:
        digits[19 - nd] = 48 + x % 10
        nd += 1
        x //= 10
        if x == 0:
            break
    cap = len(out)
    pos = 0
    i = start
    while i < n:
        v = verdict[i]
        e = egress_rule[i]
        g = ingress_rule[i]
        vl = voff[v + 1] - voff[v]
        el = roff[e + 1] - roff[e] if e >= 0 else 0
        gl = roff[g + 1] - roff[g] if g >= 0 else 0
        if pos + nd + 4 + vl + el + gl > cap:
            break
        for k in range(nd):
            out[pos + k] = digits[20 - nd + k]
        pos += nd
        out[pos] = 44                   # ','
        pos += 1
        a = voff[v]
        for k in range(vl):
            out[pos + k] = vbuf[a + k]
        pos += vl
        out[pos] = 44
        pos += 1
        a = roff[e] if e >= 0 else 0
        for k in range(el):
            out[pos + k] = rbuf[a + k]
        pos += el
        out[pos] = 44
        pos += 1
        a = roff[g] if g >= 0 else 0
        for k in range(gl):
            out[pos + k] = rbuf[a + k]
        pos += gl
        out[pos] = 10                   # '\n'
        pos += 1
        i += 1
        k = 19
        while True:                     # digits += 1
            if k < 20 - nd:
                nd += 1
                digits[k] = 49
                break
            if digits[k] == 57:
                digits[k] = 48
                k -= 1
            else:
                digits[k] += 1
                break
    return i, pos


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


def write_verdict_rows(write: Callable, first_index: int, verdict: np.ndarray,
                       egress_rule: np.ndarray, ingress_rule: np.ndarray, names: NameTable,
                       buffer: Optional[np.ndarray] = None) -> None:
    """Format the CSV rows (no header) of packets ``first_index...`` and pass the bytes to
    ``write`` a buffer at a time.  ``names`` must cover every rule index used."""
    out = buffer if buffer is not None else np.empty(OUT_BUFFER_BYTES, np.uint8)
    i, n = 0, len(verdict)
    while i < n:
        j, nbytes = _csv_fill(np.int64(first_index), verdict, egress_rule, ingress_rule, i,
                              _VERDICT_TABLE.buf, _VERDICT_TABLE.offsets, names.buf,
                              names.offsets, out)
        if j == i:          # a row longer than the buffer (absurdly long rule ids): grow it
            out = np.empty(2 * len(out), np.uint8)
            continue
        write(out[:nbytes])
        i = j


def format_verdict_rows(first_index: int, verdict, egress_rule, ingress_rule,
                        names: NameTable) -> bytes:
    """The CSV rows as one bytes object (small batches, tests)."""
    parts: list = []
    write_verdict_rows(lambda b: parts.append(b.tobytes()), first_index, verdict, egress_rule,
                       ingress_rule, names)
    return b"".join(parts)


# =========================================================================================
# outputs written to temporary files, renamed into place on success
# =========================================================================================
class _PendingFile:
    """A path written under a temporary name beside it, renamed into place by ``commit``."""

    def __init__(self, path):
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        self.f = None
        try:
            self.f = open(self.tmp, "wb")
        except OSError as e:
            raise _cannot_write(self.path, e) from None

    def commit(self) -> None:
        self.f.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        if self.f is not None:
            self.f.close()
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
        self._buf = np.empty(OUT_BUFFER_BYTES, np.uint8)
        self.file.f.write(CSV_HEADER)

    def write(self, verdict, egress_rule, ingress_rule, rule_names) -> None:
        self.names.extend(rule_names)
        write_verdict_rows(self.file.f.write, self.rows, verdict, egress_rule, ingress_rule,
                           self.names, self._buf)
        self.rows += len(verdict)

    def commit(self) -> None:
        self.file.commit()

    def abort(self) -> None:
        self.file.abort()


# =========================================================================================
# split captures
# =========================================================================================
@njit()
def _fill_records(src, starts, lengths, headers, begin, end, out):
    """Records ``begin..end-1`` as pcap records (16-byte header, then the packet's bytes
    copied from ``src``) into ``out`` until the next one does not fit.  Returns
    ``(next record, bytes written)``."""
    pos = 0
    i = begin
    cap = len(out)
    while i < end:
        n = lengths[i]
        if pos + 16 + n > cap:
            break
        # slice copies: numba turns them into tight copy loops (faster than per-byte indexing)
        out[pos:pos + 16] = headers[i]
        pos += 16
        s = starts[i]
        out[pos:pos + n] = src[s:s + n]
        pos += n
        i += 1
    return i, pos


class _Source:
    """A capture file mapped read-only, to copy records out of it."""

    def __init__(self, path: str):
        self.path = path
        self._f = open(path, "rb")
        self._mm = mmap.mmap(self._f.fileno(), 0, access=mmap.ACCESS_READ)
        self.buf = np.frombuffer(self._mm, np.uint8)

    def close(self) -> None:
        self.buf = None             # the array holds an export of the mapping
        try:
            self._mm.close()
        except BufferError:         # a view still lives somewhere: unmapped when collected
            pass
        self._f.close()


class SplitWriter:
    """The split captures: one classic pcap per verdict with the records' original bytes
    and timestamps (nanosecond pcap, so no timestamp loses precision).

    A pcap file holds one link type: a verdict's main file takes the link type of its first
    record, records of any other link type go to ``<stem>.linktype<N>.pcap`` beside it (the
    naming of ``capture.copy_records``).  Verdicts that got no record get an empty capture.
    File and record headers come from ``capture.writer``; the record bytes are copied
    straight from the mapped source into one reused buffer.
    """

    def __init__(self, directory):
        self.dir = Path(directory)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise _cannot_write(directory, e) from None
        self._files: dict[tuple[int, int], _PendingFile] = {}
        self._main: dict[int, int] = {}     # verdict -> link type of its main file
        self._source: Optional[_Source] = None
        self._buf = np.empty(OUT_BUFFER_BYTES, np.uint8)
        self.counts = {v.name: 0 for v in Verdict}

    def write(self, src_path: str, batch: PacketBatch, verdict: np.ndarray) -> None:
        """Copy every record of ``batch`` (read from ``src_path``) to its verdict's file."""
        if len(batch) == 0:
            return
        src = self._open_source(src_path)
        # group by (verdict, link type) keeping capture order: a stable sort of small keys
        lts, lt_code = np.unique(batch.linktype, return_inverse=True)
        key = verdict.astype(np.int32) * len(lts) + lt_code.astype(np.int32)
        order = np.argsort(key.astype(np.uint16 if key.max() < 65536 else np.int64),
                           kind="stable")
        key = key[order]
        starts = batch.rec_offset[order]
        lengths = batch.caplen[order].astype(np.int64)
        if len(starts) and (starts.min() < 0 or (starts + lengths).max() > len(src.buf)):
            raise ReplayError(f"{src_path}: record offsets point outside the file "
                              "(was the batch read from it?)")
        try:
            headers = record_headers(batch.ts[order], lengths, batch.wirelen[order], True)
        except ValueError as e:
            raise ReplayError(f"{src_path}: cannot write split captures: {e}") from None
        headers = headers.view(np.uint8).reshape(-1, 16)
        bounds = np.flatnonzero(np.diff(key)) + 1
        for s, e in zip(np.concatenate(([0], bounds)).tolist(),
                        np.concatenate((bounds, [len(key)])).tolist()):
            v, lt = int(key[s]) // len(lts), int(lts[int(key[s]) % len(lts)])
            f = self._file(v, lt).f
            i = s
            while i < e:
                i2, nbytes = _fill_records(src.buf, starts, lengths, headers, i, e, self._buf)
                if i2 == i:     # a record bigger than the buffer
                    self._buf = np.empty(2 * max(len(self._buf), 16 + int(lengths[i])), np.uint8)
                    continue
                f.write(self._buf[:nbytes])
                i = i2
            self.counts[Verdict(v).name] += e - s

    def _open_source(self, path: str) -> _Source:
        if self._source is None or self._source.path != path:
            self.close_source()
            self._source = _Source(path)
        return self._source

    def close_source(self) -> None:
        if self._source is not None:
            self._source.close()
            self._source = None

    def _file(self, verdict: int, linktype: int) -> _PendingFile:
        pending = self._files.get((verdict, linktype))
        if pending is None:
            main = self._main.setdefault(verdict, linktype)
            name = Path(SPLIT_FILES[Verdict(verdict)])
            if linktype != main:
                name = name.with_name(f"{name.stem}.linktype{linktype}{name.suffix}")
            pending = _PendingFile(self.dir / name)
            pending.f.write(file_header(linktype, nanosecond=True))
            self._files[(verdict, linktype)] = pending
        return pending

    def commit(self, default_linktype: int) -> dict:
        """Close everything, create the empty captures, rename into place.  Returns
        {verdict name: [paths written]}."""
        self.close_source()
        for v in Verdict:
            if int(v) not in self._main:
                self._file(int(v), default_linktype)
        written: dict[str, list] = {v.name: [] for v in Verdict}
        for (v, _), pending in sorted(self._files.items()):
            pending.commit()
            written[Verdict(v).name].append(str(pending.path))
        return written

    def abort(self) -> None:
        self.close_source()
        for pending in self._files.values():
            pending.abort()


# =========================================================================================
# REJECT answers and the flow log
# =========================================================================================
class ResponseWriter:
    """The answers to REJECTed packets (spec section 5, ``fastsg.reject``) as one raw-IP
    pcap (link type 101, nanosecond timestamps): one answer per REJECT packet, in capture
    order, each with its packet's timestamp.  Every REJECT packet is answered (``suppress=
    False``: the answer the spec describes, even where a real host would stay silent, e.g.
    to a TCP RST), so ``written == rejected``.  The ICMP answers quote the packets' original
    bytes, read from the capture."""

    def __init__(self, path):
        self.file = _PendingFile(path)
        self.file.f.write(file_header(LINKTYPE_RAW, nanosecond=True))
        self.written = 0
        self.rejected = 0

    def write(self, src_path: str, batch: PacketBatch, verdict: np.ndarray) -> None:
        mask = verdict == Verdict.REJECT
        k = int(np.count_nonzero(mask))
        if k == 0:
            return
        self.rejected += k
        original = src_path if (batch.rec_offset >= 0).all() else None
        buf, offsets, ts = build_responses(batch, mask, original, suppress=False)
        lengths = np.diff(offsets)
        if len(lengths) != k or (lengths <= 0).any():
            raise RuntimeError(f"{int(np.count_nonzero(lengths <= 0))} of {k} rejected packets "
                               "got no answer (a fastsg bug)")
        headers = record_headers(ts, lengths, lengths, True)
        self.file.f.write(interleave(headers, buf, lengths).data)
        self.written += k

    def commit(self) -> None:
        self.file.commit()

    def abort(self) -> None:
        self.file.abort()


class FlowLogFile:
    """The engine's flow log (spec section 7) in ``fmt`` ('aws' or 'jsonl'), written at the
    end of the replay under a temporary name and renamed into place with the other outputs.
    The file is opened up front so that an unwritable path fails before any work."""

    def __init__(self, path, fmt: str):
        if fmt not in FLOW_LOG_FORMATS:
            raise ReplayError(f"unknown flow-log format {fmt!r} (one of {', '.join(FLOW_LOG_FORMATS)})")
        self.fmt = fmt
        self.file = _PendingFile(path)

    def write(self, flow_log) -> int:
        """Write every record; returns how many."""
        flow_log.check()
        lines = flow_log.lines(self.fmt)
        self.file.f.write("".join(line + "\n" for line in lines).encode("utf-8"))
        return len(lines)

    def commit(self) -> None:
        self.file.commit()

    def abort(self) -> None:
        self.file.abort()


# =========================================================================================
# the tallies
# =========================================================================================
@njit()
def _tally(verdict, egress_rule, ingress_rule, src_instance, dst_instance, inst_map, verdicts,
           inst):
    """Count one classified piece: packets per verdict (``verdicts``), checks per (instance,
    direction 0 egress / 1 ingress, result) (``inst``, rows by ``inst_map[instance index]``).
    Returns the number of checks without an instance or with an impossible result (must be
    0)."""
    bad = 0
    for i in range(len(verdict)):
        v = verdict[i]
        verdicts[v] += 1
        e = egress_rule[i]
        g = ingress_rule[i]
        if e >= 0:
            x = src_instance[i]
            # a packet that met its ingress check passed its egress check
            result = v if g < 0 else 0
            if x < 0 or result > 2:
                bad += 1
            else:
                inst[inst_map[x], 0, result] += 1
        if g >= 0:
            x = dst_instance[i]
            if x < 0 or v > 2:
                bad += 1
            else:
                inst[inst_map[x], 1, v] += 1
    return bad


class Tally:
    """Packets per verdict and checks per (instance, direction, result), from the engine's
    results (the instance of each check is ``Result.src_instance`` / ``dst_instance``).
    Instances get dense rows in order of first appearance (``instance_ids``), stable even if
    the engine's instance indexes are not."""

    def __init__(self):
        self.verdicts = np.zeros(len(Verdict), np.int64)
        self.inst = np.zeros((16, 2, len(CHECK_VERDICTS)), np.int64)
        self._instances = MappedRegistry()

    @property
    def instance_ids(self) -> list[str]:
        return self._instances.names

    def add(self, res: Result) -> None:
        """Count one classified piece."""
        if res.src_instance is None or res.dst_instance is None:
            raise RuntimeError("the engine's results carry no instance indexes")
        inst_map = self._instances.map(res.instance_ids)
        self.inst = _grown(self.inst, len(self._instances.names))
        bad = _tally(res.verdict, res.egress_rule, res.ingress_rule, res.src_instance,
                     res.dst_instance, inst_map, self.verdicts, self.inst)
        if bad:
            raise RuntimeError(f"{bad} checks without an instance or with an impossible result "
                               "(engine result inconsistent: a fastsg bug)")

    def checks(self) -> int:
        """Checks counted (every instance, direction and result)."""
        return int(self.inst.sum())

    def instances(self) -> dict:
        out = {}
        totals = self.inst.sum(axis=(1, 2))
        ids = self._instances.names
        for i in np.flatnonzero(totals).tolist():
            out[ids[i]] = {d: {v.name: int(self.inst[i, j, int(v)]) for v in CHECK_VERDICTS}
                           for j, d in enumerate(DIRECTIONS)}
        return out


def _grown(a: np.ndarray, n: int) -> np.ndarray:
    """``a`` with at least ``n`` rows (zeros appended, capacity doubled)."""
    if n <= len(a):
        return a
    out = np.zeros((max(n, 2 * len(a)),) + a.shape[1:], a.dtype)
    out[:len(a)] = a
    return out


# =========================================================================================
# the replay itself
# =========================================================================================
class Replayer:
    """Runs one replay: an Engine on a world, the timeline, the sinks and the tallies."""

    def __init__(self, world, *, stateful: bool, threads: Optional[int], chunk_packets: int,
                 progress: Optional[Callable[[int], None]], on_warning: Callable[[str], None],
                 flow_log: bool = False):
        self.world = world
        # flow records only when a flow log is wanted; the rule counters are always kept
        self.engine = Engine(world, stateful=stateful, threads=threads,
                             flow_log=None if flow_log else False)
        self.chunk_packets = int(chunk_packets)
        self.csv: Optional[VerdictCsv] = None
        self.split: Optional[SplitWriter] = None
        self.responses: Optional[ResponseWriter] = None
        self.progress = progress
        self.on_warning = on_warning
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
                    if issubclass(w.category, UserWarning):     # the reader's own warnings
                        self.on_warning(str(w.message))
                    else:                                       # anything else: as usual
                        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
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
        verdict, egress_rule, ingress_rule, rule_names = self._classify(batch)
        t0 = time.perf_counter()
        if self.csv is not None:
            self.csv.write(verdict, egress_rule, ingress_rule, rule_names)
        if self.split is not None:
            self.split.write(path, batch, verdict)
        if self.responses is not None:
            self.responses.write(path, batch, verdict)
        self.records += len(batch)
        self.timings["write"] += time.perf_counter() - t0

    # ---- one chunk, cut at the timeline events ----
    def _classify(self, batch: PacketBatch):
        """Verdicts of a chunk: ``(verdict, egress_rule, ingress_rule, rule_names)``, the
        timeline events falling inside it applied before the packets they precede."""
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
            r = pieces[0]
            return r.verdict, r.egress_rule, r.ingress_rule, r.rule_names
        return (np.concatenate([r.verdict for r in pieces]),
                np.concatenate([r.egress_rule for r in pieces]),
                np.concatenate([r.ingress_rule for r in pieces]), pieces[-1].rule_names)

    def _apply(self, event, packet_index: int) -> None:
        try:
            self.world.apply_event(event)
        except WorldError as e:
            raise ReplayError(f"timeline event {event.index} ({event.kind}) could not be applied "
                              f"before packet {packet_index}: {e}") from None
        self.applied += 1

    def _piece(self, batch: PacketBatch) -> Result:
        """Classify a piece against the world as it stands, and count it."""
        t0 = time.perf_counter()
        res = self.engine.classify(batch)
        t1 = time.perf_counter()
        self.tally.add(res)
        self.timings["classify"] += t1 - t0
        self.timings["tally"] += time.perf_counter() - t1
        return res

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
           flow_log=None, log_format: str = "aws", responses=None,
           progress: Optional[Callable[[int], None]] = None,
           on_warning: Optional[Callable[[str], None]] = None,
           copy_world: bool = True) -> ReplaySummary:
    """Replay ``captures`` (paths, in order) against ``world`` and return the summary.

    ``stateful``: spec section 4 tracking (False: the rules alone judge every packet).
    ``verdicts``: path of the verdict CSV; ``split_dir``: directory of the split captures;
    ``flow_log``: path of the flow log (spec section 7) in ``log_format`` ('aws' or
    'jsonl'); ``responses``: path of the raw-IP pcap of REJECT answers (section 5).
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
    if log_format not in FLOW_LOG_FORMATS:
        raise ReplayError(f"unknown flow-log format {log_format!r} "
                          f"(one of {', '.join(FLOW_LOG_FORMATS)})")
    live = world.copy() if copy_world else world
    summary = ReplaySummary(stateful=stateful, threads=resolve_threads(threads))
    warn = _collector(summary.warnings, on_warning)
    sinks: list = []
    try:
        replayer = Replayer(live, stateful=stateful, threads=threads, chunk_packets=chunk_packets,
                            progress=progress, on_warning=warn, flow_log=flow_log is not None)
        compile_seconds = time.perf_counter() - t_start

        def sink(make, *args):
            if args[0] is None:
                return None
            sinks.append(make(*args))
            return sinks[-1]
        csv = sink(VerdictCsv, verdicts)
        split = sink(SplitWriter, split_dir)
        answers = sink(ResponseWriter, responses)
        log_file = sink(FlowLogFile, flow_log, log_format)
        replayer.csv, replayer.split, replayer.responses = csv, split, answers
        replayer.run(paths)
        _fill_summary(summary, replayer)
        summary.timings = {"compile": compile_seconds, **replayer.timings}
        if log_file is not None:
            summary.flow_log = {**replayer.engine.flow_log.totals(), "format": log_format}
        if answers is not None:
            summary.responses = {"written": answers.written, "rejected": answers.rejected}
        check_totals(summary, csv.rows if csv is not None else None,
                     sum(split.counts.values()) if split is not None else None,
                     replayer.tally.checks())
        if log_file is not None:
            t0 = time.perf_counter()
            log_file.write(replayer.engine.flow_log)
            summary.timings["flow_log"] = time.perf_counter() - t0
        # everything is written: rename into place
        if csv is not None:
            csv.commit()
            summary.outputs["verdicts"] = os.fspath(verdicts)
        if answers is not None:
            answers.commit()
            summary.outputs["responses"] = os.fspath(responses)
        if log_file is not None:
            log_file.commit()
            summary.outputs["flow_log"] = os.fspath(flow_log)
        if split is not None:
            summary.outputs["split"] = split.commit(replayer.default_linktype())
    except BaseException:
        for sink in sinks:
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


def _fill_summary(summary: ReplaySummary, r: Replayer) -> None:
    t = r.tally
    summary.packets = r.records
    summary.verdicts = {v.name: int(t.verdicts[v]) for v in Verdict}
    summary.captures = r.captures
    summary.instances = t.instances()
    summary.rule_counters = {name: {"packets": p, "bytes": b}
                             for name, (p, b) in r.engine.rule_counters().items()}
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
    where a check is {"instance", "result", "rule", "rule_detail"} (rule_detail: {"group",
    "group_name", "direction", "rule": the rule in file syntax}, or None for ``default``).
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
        dport=[sport if is_echo else 0 if is_icmp else dport],
        icmp_type=[icmp_type if is_icmp else 0],
        icmp_code=[icmp_code if is_icmp else 0], frag=[int(fragment)],
        tcp_flags=[tcp_flags if p == 6 else 0], ts=np.array([at_ns or 0], np.int64))
    res = Engine(live, stateful=False).classify(batch)
    verdict, egress_rule, ingress_rule = res.row(0)
    checks = {}
    for direction, addr, rule in (("egress", src_a, egress_rule), ("ingress", dst_a, ingress_rule)):
        if rule is None:
            checks[direction] = None
            continue
        # a packet that met its ingress check passed its egress check
        result = verdict if (direction == "ingress" or ingress_rule is None) else "ACCEPT"
        checks[direction] = {"instance": _owner_id(live, addr), "result": result, "rule": rule,
                             "rule_detail": _rule_detail(live, rule)}
    return {"verdict": verdict,
            "packet": {"src": str(src_a), "dst": str(dst_a), "proto": p, "sport": sport,
                       "dport": dport if not is_icmp else None,
                       "icmp_type": icmp_type if is_icmp else None,
                       "icmp_code": icmp_code if is_icmp else None, "fragment": bool(fragment)},
            "egress": checks["egress"], "ingress": checks["ingress"], "events_applied": applied}


def _owner_id(world, addr) -> Optional[str]:
    """The id of the running instance ``addr`` belongs to (spec section 2), or None."""
    with world.lock:
        for inst in world.instances.values():
            if inst.running and any(a.version == addr.version and a == addr
                                    for a in inst.addresses()):
                return inst.id
    return None


def _rule_detail(world, rule_id: str) -> Optional[dict]:
    """The rule named ``rule_id`` in file syntax, with its group and direction."""
    from .world.files import rule_to_dict
    with world.lock:
        for g in world.groups.values():
            for direction in DIRECTIONS:
                for r in g.rules(direction):
                    if r.id == rule_id:
                        return {"group": g.id, "group_name": g.name, "direction": direction,
                                "rule": rule_to_dict(r)}
    return None
