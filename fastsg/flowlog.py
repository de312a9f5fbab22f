"""Flow logs and per-rule hit counters (spec section 7, pinned down by the flow-log contract).

**Events.**  Every check a packet meets is an event of the checked instance, in event order
(packet order, egress before ingress).  For packet ``i`` of a classified batch:

* an egress event when ``egress_rule[i] >= 0`` (instance ``src_instance[i]``), whose action
  is ACCEPT if the packet also met an ingress check (``ingress_rule[i] >= 0``) or its verdict
  is ACCEPT, else the packet's verdict (DROP or REJECT);
* an ingress event when ``ingress_rule[i] >= 0`` (instance ``dst_instance[i]``), whose action
  is the packet's verdict.

The deciding rule is the check's rule index.  MALFORMED and UNMANAGED packets meet no check.

``RuleCounters`` adds every event (logged or not) to its deciding rule: 1 packet and the
packet's ``wirelen`` bytes.

``FlowLog`` keeps the *logged* events: action != ACCEPT and ``logging.drops``, action ==
ACCEPT and ``logging.accepts``, or a deciding rule with ``log: true`` (the world is read
live: its current ``logging`` settings, rule flags and instance owners).  They aggregate into
records keyed by (window, instance id, direction, protocol, source, destination, source
port, destination port, action, rule), ``window = ts_ns // I_ns`` with ``I_ns =
int(round(aggregation_interval * 1e9))``; ports are the packet's for tcp/udp, 0 otherwise.
Past ``max_records`` OK records an event that would create a new record goes to the
SKIPDATA record of its (window, instance) instead.  Records come out sorted by (window,
sequence number of the record's first event).

Per batch of n packets the work is: one numba pass over the rule columns (the counters);
one numba pass selecting the logged events -- with the default settings (drops only, no
rule logging) it reads the verdict column alone and looks closer only at DROP/REJECT
packets, so a batch without events costs about a millisecond per million packets; then,
for the k selected events only, one numba pass that adds each event to its record in place
(the records are numpy columns, ``_Store``, found through a hash index of their keys) or,
for a key the log does not hold yet, groups it in a per-batch hash table (per distinct
key: packets, bytes, first and last timestamp, first sequence number, in order of first
event), from which records are made while ``max_records`` allows.
"""
from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from numba import prange

from .config import njit
from .kernels.llvm_hints import prefetch
from .registry import MappedRegistry

# ``fastsg.Verdict`` values (not imported: the engine imports this module)
ACCEPT, DROP, REJECT = 0, 1, 2
ACTION_NAMES = ("ACCEPT", "DROP", "REJECT")
DIRECTION_NAMES = ("egress", "ingress")
REASONS = ("default", "conntrack", "conntrack-related", "conntrack-full")
FORMATS = ("aws", "jsonl")
AWS_VERSION = 2

_U64 = np.uint64


# =========================================================================================
# kernels: one pass each over the batch's verdict and rule columns
# =========================================================================================
# Packets per bit of the "a logged rule decided here" flags the counters pass leaves
# for the flow log (one uint8 per block), so the log's selection never rereads the
# rule columns of blocks where no rule with ``log: true`` decided anything.
FLAG_BLOCK = 64
_NO_FLAGS = np.zeros(0, np.uint8)


@njit(inline=True)
def _count_packet(iu, egress_rule, ingress_rule, wirelen, packets, nbytes):
    """Count packet ``iu``'s two check events (entry 0 takes the -1 "no check" ones);
    returns its counter entries ``(e, g)`` (uint64: rule index + 1)."""
    w = np.int64(wirelen[iu])
    e = np.uint64(egress_rule[iu] + 1)
    g = np.uint64(ingress_rule[iu] + 1)
    packets[e] += 1
    nbytes[e] += w
    packets[g] += 1
    nbytes[g] += w
    return e, g


@njit(inline=True)
def _count_range(egress_rule, ingress_rule, wirelen, packets, nbytes, log_rule, flags, lo, hi):
    """packets[r + 1] += 1 and nbytes[r + 1] += wirelen[i] for both checks of packets
    lo..hi-1 (entry 0 collects the -1 "no check" entries).  Branch-free: whether a check
    happened is as unpredictable as the traffic.  Unsigned indexes (see kernels/lookup.py):
    1.30 -> 0.99 ms for 500k packets at 10k rules.

    With a non-empty ``log_rule`` (uint8 per rule index + 1, 1 for ``log: true``) it also
    sets ``flags[i // FLAG_BLOCK]`` (uint8) to 1 where one of packet i's rules logs; ``lo``
    must then start a block (a block is never shared by two threads)."""
    if len(log_rule) == 0:
        for i in range(lo, hi):
            _count_packet(np.uint64(i), egress_rule, ingress_rule, wirelen, packets, nbytes)
        return
    for b0 in range(lo, hi, FLAG_BLOCK):
        f = np.uint8(0)
        for i in range(b0, min(b0 + FLAG_BLOCK, hi)):
            e, g = _count_packet(np.uint64(i), egress_rule, ingress_rule, wirelen, packets,
                                 nbytes)
            f |= log_rule[e] | log_rule[g]
        flags[np.uint64(b0 // FLAG_BLOCK)] = f


@njit()
def _count_rules(egress_rule, ingress_rule, wirelen, packets, nbytes, log_rule, flags):
    """``_count_range`` over the whole batch, on one thread."""
    _count_range(egress_rule, ingress_rule, wirelen, packets, nbytes, log_rule, flags, 0,
                 len(egress_rule))


@njit(parallel=True)
def _count_rules_split(egress_rule, ingress_rule, wirelen, packets, nbytes, log_rule, flags,
                       nblocks):
    """``_count_range`` over ``nblocks`` contiguous runs of packets in parallel (each
    starting a FLAG_BLOCK block), each into its own copy of the counters, summed at the end
    (the copies cost nblocks * 2 * 8 bytes per counter, so the caller splits only batches
    long next to the counters)."""
    n = len(egress_rule)
    m = len(packets)
    part_p = np.zeros((nblocks, m), np.int64)
    part_b = np.zeros((nblocks, m), np.int64)
    for blk in prange(nblocks):
        lo = (blk * n // nblocks) // FLAG_BLOCK * FLAG_BLOCK
        hi = n if blk == nblocks - 1 else (blk + 1) * n // nblocks // FLAG_BLOCK * FLAG_BLOCK
        _count_range(egress_rule, ingress_rule, wirelen, part_p[blk], part_b[blk], log_rule,
                     flags, lo, hi)
    for r in prange(m):
        for blk in range(nblocks):
            packets[r] += part_p[blk, r]
            nbytes[r] += part_b[blk, r]


PREFETCH_EVENTS = 8             # events of lookahead for the event kernels' prefetches


@njit()
def _select_events(verdict, verdict_words, egress_rule, ingress_rule, log_rule, drops, accepts,
                   flags, out_pkt, out_dir):
    """The logged events of a batch, in event order: packet index into ``out_pkt`` (int64)
    and direction (0 egress, 1 ingress) into ``out_dir`` (uint8); both hold 2n entries.
    ``verdict_words``: the first ``n // 8 * 8`` verdicts viewed as uint64.
    ``log_rule``: uint8 per rule index + 1, 1 for a rule with ``log: true`` (entry 0, for
    "no check", is 0); empty when no rule logs.  Returns the number of events.

    Unless accepts are logged, a packet can hold a logged event only if its verdict is not
    ACCEPT or one of its rules logs: one cheap test (an OR of three bytes) per packet picks
    the candidates, and only those are looked at closely.  With no rule logging, only the
    verdict column is read.  ``flags``: the counters pass's per-block marks (see
    ``_count_range``), or empty: a block no logged rule decided in is then looked at like
    a batch without logged rules (its rule columns are not read again).

    Allocates the candidates' list and runs ``_select_events_run``, compiled without
    reference counting (see ``config.jit_options``)."""
    cand = np.empty(0 if accepts else len(verdict), np.int64)
    return _select_events_run(verdict, verdict_words, egress_rule, ingress_rule, log_rule,
                              drops, accepts, flags, out_pkt, out_dir, cand)


@njit(refcounts=False)
def _select_events_run(verdict, verdict_words, egress_rule, ingress_rule, log_rule, drops,
                       accepts, flags, out_pkt, out_dir, cand):
    """The loop of ``_select_events``; ``cand`` int64[n] scratch (empty when accepts are
    logged)."""
    n = len(verdict)
    k = 0
    if accepts:
        for i in range(n):
            k = _events_of(i, verdict[i], egress_rule[i], ingress_rule[i], log_rule, drops,
                           accepts, out_pkt, out_dir, k)
    else:
        # first the candidates' indexes, block by block: where a logged rule may have
        # decided (every block when no marks came, the marked ones otherwise), each packet
        # is tested; elsewhere only refused packets can log, and they are few: found
        # skipping 8 ACCEPT verdicts (zero bytes) at a time (500k packets at 1% drops:
        # 0.53 -> 0.26 ms).  Then their events.
        c = 0
        for b0 in range(0, n, FLAG_BLOCK):
            b1 = min(b0 + FLAG_BLOCK, n)
            if len(log_rule) > 0 and (len(flags) == 0 or flags[np.uint64(b0 // FLAG_BLOCK)] != 0):
                for i in range(b0, b1):
                    if (verdict[i] | log_rule[np.uint64(egress_rule[i] + 1)]
                            | log_rule[np.uint64(ingress_rule[i] + 1)]) != 0:
                        cand[c] = i
                        c += 1
            elif drops:
                whole = (b1 - b0) // 8              # whole words (b0 is a multiple of 8)
                for w in range(b0 // 8, b0 // 8 + whole):
                    if verdict_words[np.uint64(w)] == 0:
                        continue
                    for i in range(8 * w, 8 * w + 8):
                        if verdict[i] != 0:
                            cand[c] = i
                            c += 1
                for i in range(b0 + 8 * whole, b1):
                    if verdict[i] != 0:
                        cand[c] = i
                        c += 1
        # the deciding rules of a candidate PREFETCH_EVENTS ahead are fetched early: the
        # candidates are far apart, each read a cache miss
        for j in range(c):
            if j + PREFETCH_EVENTS < c:
                a = cand[j + PREFETCH_EVENTS]
                prefetch(egress_rule, a)
                prefetch(ingress_rule, a)
            i = cand[j]
            k = _events_of(i, verdict[i], egress_rule[i], ingress_rule[i], log_rule, drops,
                           accepts, out_pkt, out_dir, k)
    return k


@njit(inline=True)
def _events_of(i, v, e, g, log_rule, drops, accepts, out_pkt, out_dir, k):
    """Append packet i's logged events (egress first) at ``k``; returns the new ``k``."""
    if e >= 0:
        ok = g >= 0 or v == 0                 # the egress check accepted
        if (accepts if ok else drops) or (len(log_rule) != 0 and log_rule[e + 1] != 0):
            out_pkt[k] = i
            out_dir[k] = 0
            k += 1
    if g >= 0:
        if (accepts if v == 0 else drops) or (len(log_rule) != 0 and log_rule[g + 1] != 0):
            out_pkt[k] = i
            out_dir[k] = 1
            k += 1
    return k


# A record's key: 7 uint64 words -- the window, (instance << 32 | rule), (protocol << 48 |
# ipver << 40 | direction << 36 | action << 32 | srcport << 16 | dstport) and the four
# address halves -- where instance and rule are the log's own registry indexes (an
# engine's indexes need not be stable).
KEY_WORDS = 7
_M1 = np.uint64(0x9E3779B97F4A7C15)
_M2 = np.uint64(0xC2B2AE3D27D4EB4F)


@njit(inline=True)
def _mix(h, x):
    h = (h ^ x) * _M1
    return h ^ (h >> np.uint64(29))


@njit(inline=True)
def _key_hash(key):
    h = _M2
    for w in range(KEY_WORDS):
        h = _mix(h, key[w])
    return h


@njit(inline=True)
def _same_key(rows, r, key):
    """Whether row ``r`` of ``rows`` (uint64[:, KEY_WORDS]) is ``key``."""
    for w in range(KEY_WORDS):
        if rows[r, w] != key[w]:
            return False
    return True


@njit(inline=True)
def _add_event(packets, nbytes, t0, t1, r, w_bytes, ts):
    """One event of ``w_bytes`` at ``ts`` into aggregate ``r`` of the given columns."""
    packets[r] += 1
    nbytes[r] += w_bytes
    if ts < t0[r]:
        t0[r] = ts
    if ts > t1[r]:
        t1[r] = ts


@njit(inline=True)
def _find_record(rec_slots, rec_keys, h, key):
    """Index of the record whose key is ``key`` (hash ``h``), or -1."""
    mask = np.uint64(len(rec_slots) - 1)
    slot = h & mask
    while True:
        r = rec_slots[slot]
        if r < 0 or _same_key(rec_keys, r, key):
            return r
        slot = (slot + np.uint64(1)) & mask


@njit()
def _index_records(rec_slots, rec_keys, lo, hi):
    """Enter records ``lo..hi-1`` (rows of ``rec_keys``, keys not yet in the index) into
    ``rec_slots``, the records' open-addressing hash index (int64, a power of two long,
    -1 empty, at most half full)."""
    mask = np.uint64(len(rec_slots) - 1)
    for r in range(lo, hi):
        slot = _key_hash(rec_keys[r]) & mask
        while rec_slots[slot] >= 0:
            slot = (slot + np.uint64(1)) & mask
        rec_slots[slot] = r


@njit()
def _group_events(pkt, d, verdict, egress_rule, ingress_rule, src_instance, dst_instance,
                  inst_map, rule_map, p, interval_ns, first_packet, rec_slots, rec_keys,
                  rec_packets, rec_bytes, rec_t0, rec_t1, keys, packets, nbytes, t0, t1, seq):
    """Aggregate the k logged events (``pkt`` int64[k] packet index, ``d`` uint8[k] 0 egress
    / 1 ingress, in event order) by record key, in one pass with an open-addressing hash
    table.  ``p``: the batch's ``PacketColumns``; ``inst_map`` / ``rule_map``: int64 maps
    from the result's instance / rule indexes to the log's registry indexes.

    An event whose key already has a record (``rec_slots``: the records' hash index, see
    ``_index_records``; ``rec_keys`` their keys) is added to it in place (``rec_packets``,
    ``rec_bytes``, ``rec_t0``, ``rec_t1``): in a long stream most events are, so only the
    keys new to the log come back.  For those it fills, per distinct key in order of its
    first event (so by first sequence number):
    ``keys[g]`` (KEY_WORDS uint64, see ``KEY_WORDS``), ``packets``, ``nbytes``, ``t0`` / ``t1``
    (first / last ts_ns), ``seq`` (sequence number of the first event: 2 * packet number in
    the stream + direction).  All outputs hold k rows.  Returns ``(groups, bad)`` where
    ``bad`` counts events without an instance or with a verdict no check gives (must be 0).

    Allocates the batch's key table and runs ``_group_events_run``, compiled without
    reference counting (see ``config.jit_options``)."""
    cap = 16
    while cap < 2 * len(pkt):
        cap *= 2
    return _group_events_run(pkt, d, verdict, egress_rule, ingress_rule, src_instance,
                             dst_instance, inst_map, rule_map, p, interval_ns, first_packet,
                             rec_slots, rec_keys, rec_packets, rec_bytes, rec_t0, rec_t1, keys,
                             packets, nbytes, t0, t1, seq, np.full(cap, -1, np.int64),
                             np.empty(KEY_WORDS, np.uint64))


@njit(refcounts=False)
def _group_events_run(pkt, d, verdict, egress_rule, ingress_rule, src_instance, dst_instance,
                      inst_map, rule_map, p, interval_ns, first_packet, rec_slots, rec_keys,
                      rec_packets, rec_bytes, rec_t0, rec_t1, keys, packets, nbytes, t0, t1,
                      seq, table, key):
    """The loop of ``_group_events``: ``table`` int64, a power of two >= 2k long, all -1
    (the batch's new keys' hash index); ``key`` uint64[KEY_WORDS] scratch."""
    k = len(pkt)
    mask = np.uint64(len(table) - 1)
    groups = 0
    bad = 0
    for j in range(k):
        if j + PREFETCH_EVENTS < k:
            # the events' packets are far apart: fetch the columns of a later one now, so
            # its cache misses overlap this event's work (5,070 events of 500k packets:
            # 1.50 -> 0.42 ms)
            # (only the lines this event reads: its own side's instance and rule; not the
            # high address halves, which only IPv6 packets read)
            a = pkt[j + PREFETCH_EVENTS]
            prefetch(verdict, a)
            prefetch(ingress_rule, a)
            if d[j + PREFETCH_EVENTS] == 0:
                prefetch(egress_rule, a)
                prefetch(src_instance, a)
            else:
                prefetch(dst_instance, a)
            prefetch(p.ts, a)
            prefetch(p.proto, a)
            prefetch(p.ipver, a)
            prefetch(p.sport, a)
            prefetch(p.dport, a)
            prefetch(p.src_lo, a)
            prefetch(p.dst_lo, a)
            prefetch(p.wirelen, a)
        i = pkt[j]
        dr = d[j]
        v = verdict[i]
        if dr == 0:
            x = src_instance[i]
            r = egress_rule[i]
            action = 0 if (ingress_rule[i] >= 0 or v == 0) else v
        else:
            x = dst_instance[i]
            r = ingress_rule[i]
            action = v
        if x < 0 or r < 0 or action > 2:
            bad += 1
            continue
        ts = p.ts[i]
        proto = np.uint64(p.proto[i])
        sport = np.uint64(0)
        dport = np.uint64(0)
        if proto == 6 or proto == 17:
            sport = np.uint64(p.sport[i])
            dport = np.uint64(p.dport[i])
        ver = p.ipver[i]
        key[0] = np.uint64(ts // interval_ns)       # floor division, as Python's
        key[1] = (np.uint64(inst_map[x]) << np.uint64(32)) | np.uint64(rule_map[r])
        key[2] = ((proto << np.uint64(48)) | (np.uint64(ver) << np.uint64(40))
                  | (np.uint64(dr) << np.uint64(36)) | (np.uint64(action) << np.uint64(32))
                  | (sport << np.uint64(16)) | dport)
        key[3] = p.src_hi[i] if ver == 6 else np.uint64(0)     # 0 for IPv4 (the schema's)
        key[4] = p.src_lo[i]
        key[5] = p.dst_hi[i] if ver == 6 else np.uint64(0)
        key[6] = p.dst_lo[i]
        h = _key_hash(key)
        w_bytes = np.int64(p.wirelen[i])
        rec = _find_record(rec_slots, rec_keys, h, key)
        if rec >= 0:
            _add_event(rec_packets, rec_bytes, rec_t0, rec_t1, rec, w_bytes, ts)
            continue
        slot = h & mask
        while True:
            g = table[slot]
            if g < 0:
                g = groups
                groups += 1
                table[slot] = g
                for w in range(KEY_WORDS):
                    keys[g, w] = key[w]
                packets[g] = 1
                nbytes[g] = w_bytes
                t0[g] = ts
                t1[g] = ts
                seq[g] = 2 * (first_packet + i) + dr
                break
            if _same_key(keys, g, key):
                _add_event(packets, nbytes, t0, t1, g, w_bytes, ts)
                break
            slot = (slot + np.uint64(1)) & mask
    return groups, bad


# =========================================================================================
# rule counters
# =========================================================================================
class RuleCounters:
    """Packets and bytes per deciding rule, over every check event (logged or not).

    Counts live in int64 arrays, entry ``r + 1`` for the engine's rule index ``r`` (its
    rule-name registry only grows, so an index keeps its meaning); ``names`` is the
    longest ``Result.rule_names`` seen.
    """

    def __init__(self):
        self._packets = np.zeros(65, np.int64)
        self._bytes = np.zeros(65, np.int64)
        self.names: tuple = ()

    def add(self, batch, result, threads: int = 1, log_rule=None):
        """Count the check events of ``result`` (the verdicts of ``batch``), on up to
        ``threads`` threads (numba's thread count must allow them).

        ``log_rule`` (a flow log's ``rule_log_flags``, optional): the same pass then marks
        the blocks of FLAG_BLOCK packets where a rule with ``log: true`` decided, and
        returns the marks (uint8 per block) for ``FlowLog.add``: the log's selection then
        skips rereading the rule columns elsewhere (500k packets at 10k rules: its cost
        from about 2.5 to 0.5 ns a packet).  Returns None without ``log_rule``."""
        names = result.rule_names
        if len(names) > len(self.names):
            if self.names and names[len(self.names) - 1] != self.names[-1]:
                raise ValueError("rule_names changed meaning: an engine's rule names only grow")
            self.names = names
            self._packets = _grown(self._packets, len(names) + 1)
            self._bytes = _grown(self._bytes, len(names) + 1)
        n = len(result.verdict)
        marking = log_rule is not None and len(log_rule) > 0
        flags = np.zeros((n + FLAG_BLOCK - 1) // FLAG_BLOCK, np.uint8) if marking else None
        if n == 0:
            return flags
        _check_lengths(batch, result)
        rules, marks = (log_rule, flags) if marking else (_NO_FLAGS, _NO_FLAGS)
        # split when the per-thread copies of the counters are small next to the batch
        # (500k packets, 10k rules, 2 threads: 1.22 -> 0.94 ms, timed alone)
        if threads > 1 and n >= 8 * threads * len(self._packets):
            _count_rules_split(result.egress_rule, result.ingress_rule,
                               batch.columns["wirelen"], self._packets, self._bytes, rules,
                               marks, threads)
        else:
            _count_rules(result.egress_rule, result.ingress_rule, batch.columns["wirelen"],
                         self._packets, self._bytes, rules, marks)
        return flags

    @property
    def packets(self) -> np.ndarray:
        """int64[len(names)]: check events per rule index."""
        return self._packets[1:len(self.names) + 1].copy()

    @property
    def bytes(self) -> np.ndarray:
        """int64[len(names)]: bytes (wire lengths) of those events."""
        return self._bytes[1:len(self.names) + 1].copy()

    @property
    def events(self) -> int:
        """Check events counted (the sum of ``packets``)."""
        return int(self.packets.sum())

    def as_dict(self, world) -> dict[str, tuple[int, int]]:
        """{name: (packets, bytes)}: the four reasons, every rule id of ``world`` as it is
        now (zeros included), and any other rule that decided something (a rule revoked
        since keeps its hits, so the counters always add up to ``events``)."""
        out: dict[str, tuple[int, int]] = {r: (0, 0) for r in REASONS}
        packets, nbytes = self.packets.tolist(), self.bytes.tolist()
        with world.lock:
            current = {r.id for g in world.groups.values() for r in g.ingress + g.egress}
        for i, name in enumerate(self.names):
            if packets[i] or name in current or name in out:
                out[name] = (packets[i], nbytes[i])
        for name in sorted(current - out.keys()):
            out[name] = (0, 0)
        return out


def _grown(a: np.ndarray, n: int) -> np.ndarray:
    """``a`` with at least ``n`` entries (zeros appended, capacity doubled)."""
    if n <= len(a):
        return a
    out = np.zeros(max(n, 2 * len(a)), a.dtype)
    out[:len(a)] = a
    return out


def _check_lengths(batch, result) -> None:
    n = len(result.verdict)
    if len(batch) != n or len(result.egress_rule) != n or len(result.ingress_rule) != n:
        raise ValueError(f"batch of {len(batch)} packets but a result of {n} verdicts / "
                         f"{len(result.egress_rule)} egress / {len(result.ingress_rule)} "
                         "ingress rules")


# =========================================================================================
# flow records
# =========================================================================================
@dataclass(frozen=True)
class FlowRecord:
    """One flow-log record.  ``log_status`` "OK" or "SKIPDATA" (then direction, protocol,
    srcaddr, dstaddr, srcport, dstport, action and rule are None).  window_start: the
    window's first second (int when integral, else float); start / end: integer seconds
    (floor of the first / last event's timestamp); action: ACCEPT, DROP or REJECT;
    direction: egress or ingress; addresses as ``str(ipaddress.ip_address(...))``."""
    window_start: int | float
    account: str
    instance: str
    direction: Optional[str]
    protocol: Optional[int]
    srcaddr: Optional[str]
    dstaddr: Optional[str]
    srcport: Optional[int]
    dstport: Optional[int]
    packets: int
    bytes: int
    start: int
    end: int
    action: Optional[str]
    rule: Optional[str]
    log_status: str

    def aws_line(self) -> str:
        """The VPC Flow Logs version 2 default line (DROP -> REJECT, '-' for missing)."""
        if self.log_status == "SKIPDATA":
            return (f"{AWS_VERSION} {self.account} {self.instance} - - - - - {self.packets} "
                    f"{self.bytes} {self.start} {self.end} - SKIPDATA")
        action = "ACCEPT" if self.action == "ACCEPT" else "REJECT"
        return (f"{AWS_VERSION} {self.account} {self.instance} {self.srcaddr} {self.dstaddr} "
                f"{self.srcport} {self.dstport} {self.protocol} {self.packets} {self.bytes} "
                f"{self.start} {self.end} {action} {self.log_status}")

    def jsonl_line(self) -> str:
        """One compact JSON object, keys in field order."""
        return json.dumps({"window_start": self.window_start, "account": self.account,
                           "instance": self.instance, "direction": self.direction,
                           "protocol": self.protocol, "srcaddr": self.srcaddr,
                           "dstaddr": self.dstaddr, "srcport": self.srcport,
                           "dstport": self.dstport, "packets": self.packets,
                           "bytes": self.bytes, "start": self.start, "end": self.end,
                           "action": self.action, "rule": self.rule,
                           "log_status": self.log_status}, separators=(",", ":"))


class _Store:
    """Growable columns of the OK records: key words (n, KEY_WORDS) uint64, and int64
    packets, bytes, first and last ts_ns, first event's sequence number."""

    def __init__(self):
        self.n = 0
        self.keys = np.zeros((0, KEY_WORDS), np.uint64)
        self.cols = {c: np.zeros(0, np.int64) for c in ("packets", "bytes", "t0", "t1", "seq")}

    def append(self, keys: np.ndarray, **values) -> None:
        m = len(keys)
        if self.n + m > len(self.keys):
            cap = max(self.n + m, 2 * len(self.keys), 64)
            grown = np.zeros((cap, KEY_WORDS), np.uint64)
            grown[:self.n] = self.keys[:self.n]
            self.keys = grown
            for c, a in self.cols.items():
                g = np.zeros(cap, np.int64)
                g[:self.n] = a[:self.n]
                self.cols[c] = g
        self.keys[self.n:self.n + m] = keys
        for c, v in values.items():
            self.cols[c][self.n:self.n + m] = v
        self.n += m

    def col(self, name: str) -> np.ndarray:
        return self.cols[name][:self.n]


class FlowLog:
    """Aggregated flow records of the logged check events of one engine's packet stream.

    ``add(batch, result)`` after each classify (the batches of one capture-ordered stream);
    ``records()`` / ``lines(fmt)`` / ``write(path, fmt)`` give the records in output order.
    Counts: ``logged_events`` (events logged), ``skipped_packets`` (events that went to
    SKIPDATA records); ``check()`` verifies the records account for every logged event.

    OK records are held as numpy columns (``_Store``) found through an open-addressing hash
    index of their keys (``_slots``), which the event kernel probes itself: an event of a
    record already held costs no Python.  SKIPDATA records: a dict (window, instance
    index) -> [packets, bytes, first ts_ns, last ts_ns, first sequence number].
    """

    def __init__(self, world):
        self.world = world
        self._store = _Store()
        self._slots = np.full(64, -1, np.int64)     # hash index of the OK records' keys
        self._skip: dict[tuple, list] = {}
        self._rules = MappedRegistry()
        self._instances = MappedRegistry()
        self._owners: list[str] = []        # by instance registry index
        self._packets_seen = 0              # packets of the stream so far (sequence numbers)
        self.logged_events = 0
        self.skipped_packets = 0
        # rule-name -> index of the engine's names, and the rules with log: true
        self._names: tuple = ()
        self._name_index: dict[str, int] = {}
        self._log_ids: dict[str, frozenset] = {}    # group id -> ids of its log: true rules
        self._log_revision: Optional[int] = None
        self._log_rule = np.zeros(0, np.uint8)
        self._log_rule_names = -1                   # len(names) the flags were built for
        self._buf_pkt = np.empty(0, np.int64)
        self._buf_dir = np.empty(0, np.uint8)

    def __len__(self) -> int:
        return self._store.n + len(self._skip)

    # ---- adding a batch -------------------------------------------------------------
    def add(self, batch, result, flags=None) -> None:
        """Log the logged events of ``result`` (the verdicts of ``batch``, the next packets
        of the stream).  ``flags``: what ``RuleCounters.add`` returned for this result when
        given ``rule_log_flags(result.rule_names)`` (optional; saves a pass over the rule
        columns)."""
        n = len(result.verdict)
        if n == 0:
            return
        _check_lengths(batch, result)
        settings = self.world.logging
        log_rule = self.rule_log_flags(result.rule_names)
        if flags is None or len(log_rule) == 0:
            flags = _NO_FLAGS
        elif len(flags) != (n + FLAG_BLOCK - 1) // FLAG_BLOCK:
            raise ValueError(f"flags: {len(flags)} blocks for {n} packets")
        if len(self._buf_pkt) < 2 * n:
            self._buf_pkt = np.empty(2 * n, np.int64)
            self._buf_dir = np.empty(2 * n, np.uint8)
        verdict = np.ascontiguousarray(result.verdict)
        words = verdict[:n // 8 * 8].view(np.uint64)
        k = int(_select_events(verdict, words, result.egress_rule, result.ingress_rule,
                               log_rule, bool(settings["drops"]), bool(settings["accepts"]),
                               flags, self._buf_pkt, self._buf_dir))
        first_packet = self._packets_seen
        self._packets_seen += n
        if k:
            self._aggregate(batch, result, self._buf_pkt[:k].copy(), self._buf_dir[:k].copy(),
                            first_packet, settings)

    def _aggregate(self, batch, result, pkt, d, first_packet, settings) -> None:
        """Merge the k logged events (``pkt`` int64[k] packet index, ``d`` uint8[k] 0 egress
        / 1 ingress, in event order) into the records."""
        if result.src_instance is None or result.dst_instance is None:
            raise ValueError("the Result carries no src_instance/dst_instance: cannot log")
        interval_ns = int(round(settings["aggregation_interval"] * 1e9))
        if interval_ns <= 0:
            raise ValueError("logging.aggregation_interval must be > 0, not "
                             f"{settings['aggregation_interval']!r}")
        k = len(pkt)
        store = self._store
        keys = np.empty((k, KEY_WORDS), np.uint64)
        g = {c: np.empty(k, np.int64) for c in ("packets", "bytes", "t0", "t1", "seq")}
        groups, bad = _group_events(
            pkt, d, result.verdict, result.egress_rule, result.ingress_rule,
            result.src_instance, result.dst_instance, self._instance_map(result.instance_ids),
            self._rules.map(result.rule_names), batch.kernel_columns(), np.int64(interval_ns),
            np.int64(first_packet), self._slots, store.keys, store.cols["packets"],
            store.cols["bytes"], store.cols["t0"], store.cols["t1"],
            keys, g["packets"], g["bytes"], g["t0"], g["t1"], g["seq"])
        if bad:
            raise RuntimeError(f"{bad} check events without an instance or with a verdict no "
                               "check gives (engine result inconsistent: a fastsg bug)")
        self.logged_events += k
        keys = keys[:groups]
        g = {c: a[:groups] for c, a in g.items()}
        # the events of existing records are in them already; the new keys come in order
        # of their first event: records while max_records allows, the rest go to SKIPDATA
        take = max(0, min(groups, int(settings["max_records"]) - store.n))
        if take:
            self._append_records(keys[:take], {name: a[:take] for name, a in g.items()})
        if take < groups:
            self._skip_groups(np.arange(take, groups), g, keys)

    def _append_records(self, keys: np.ndarray, values: dict) -> None:
        """New OK records (keys not in the log yet), entered into the hash index."""
        store = self._store
        lo = store.n
        store.append(keys, **values)
        if 2 * store.n > len(self._slots):          # keep the index at most half full
            size = len(self._slots)
            while 2 * store.n > size:
                size *= 2
            self._slots = np.full(size, -1, np.int64)
            lo = 0
        _index_records(self._slots, store.keys, lo, store.n)

    def _skip_groups(self, rows: np.ndarray, g: dict, keys: np.ndarray) -> None:
        """Aggregate the distinct keys ``rows`` (no record, none allowed) into the SKIPDATA
        records of their (window, instance)."""
        wi = [keys[rows, 0], keys[rows, 1] >> _U64(32)]
        order, starts = _group(wi)
        sel = rows[order]
        packets = np.add.reduceat(g["packets"][sel], starts)
        nbytes = np.add.reduceat(g["bytes"][sel], starts)
        t0 = np.minimum.reduceat(g["t0"][sel], starts)
        t1 = np.maximum.reduceat(g["t1"][sel], starts)
        seq = np.minimum.reduceat(g["seq"][sel], starts)
        window = wi[0][order][starts].view(np.int64)
        inst = wi[1][order][starts]
        for key, p, b, a, z, s in zip(zip(window.tolist(), inst.tolist()), packets.tolist(),
                                      nbytes.tolist(), t0.tolist(), t1.tolist(), seq.tolist()):
            rec = self._skip.get(key)
            if rec is None:
                self._skip[key] = [p, b, a, z, s]
                continue
            rec[_P] += p
            rec[_B] += b
            rec[_T0] = min(rec[_T0], a)
            rec[_T1] = max(rec[_T1], z)
            rec[_SEQ] = min(rec[_SEQ], s)
        self.skipped_packets += int(packets.sum())

    def _instance_map(self, instance_ids: tuple) -> np.ndarray:
        """Registry index per index of ``instance_ids``; owners recorded on first sight
        (instance ids are never reused, so an id's owner never changes)."""
        reg = self._instances
        known = len(reg.names)
        out = reg.map(instance_ids)
        if len(reg.names) > known:
            with self.world.lock:
                for iid in reg.names[known:]:
                    inst = self.world.instances.get(iid)
                    if inst is None:
                        raise RuntimeError(f"instance {iid!r} is not in the world")
                    self._owners.append(inst.owner)
        return out

    def rule_log_flags(self, names: tuple) -> np.ndarray:
        """uint8 per rule index + 1 of ``names`` (an engine's ``Result.rule_names``; entry
        0: no check): 1 when the rule has ``log: true`` in the world now (empty when no
        rule has).  Kept up to date incrementally: a rule change recomputes only its
        group."""
        world = self.world
        changed = False
        with world.lock:
            if self._log_revision is None:
                self._log_ids = {gid: _log_ids(g) for gid, g in world.groups.items()}
                changed = True
            elif self._log_revision != world.revision:
                for ch in world.changes_since(self._log_revision):
                    if ch.kind == "rules" and ch.group is not None:
                        grp = world.groups.get(ch.group)
                        self._log_ids[ch.group] = _log_ids(grp) if grp is not None else frozenset()
                        changed = True
            self._log_revision = world.revision
        if names is not self._names:
            n = len(self._names)
            if len(names) >= n and names[:n] == self._names:
                for i in range(n, len(names)):
                    self._name_index[names[i]] = i
            else:
                self._name_index = {name: i for i, name in enumerate(names)}
            self._names = names
            changed = changed or len(names) != self._log_rule_names
        if changed:
            flags = np.zeros(len(names) + 1, np.uint8)      # by rule index + 1
            for ids in self._log_ids.values():
                for rid in ids:
                    i = self._name_index.get(rid)
                    if i is not None:
                        flags[i + 1] = True
            # empty when no rule logs: the selection then takes its fast path
            self._log_rule = flags if flags.any() else np.zeros(0, np.uint8)
            self._log_rule_names = len(names)
        return self._log_rule

    # ---- output -----------------------------------------------------------------------
    def records(self) -> list[FlowRecord]:
        """Every record (OK and SKIPDATA) sorted by (window, first event's sequence number)."""
        interval = self.world.logging["aggregation_interval"]
        st = self._store
        keys = st.keys[:st.n]
        window = keys[:, 0].view(np.int64).tolist()
        inst = (keys[:, 1] >> _U64(32)).tolist()
        rule = (keys[:, 1] & _U64(0xFFFFFFFF)).tolist()
        small = keys[:, 2]
        proto = (small >> _U64(48)).tolist()
        ipver = ((small >> _U64(40)) & _U64(0xFF)).tolist()
        d = ((small >> _U64(36)) & _U64(1)).tolist()
        action = ((small >> _U64(32)) & _U64(0xF)).tolist()
        sport = ((small >> _U64(16)) & _U64(0xFFFF)).tolist()
        dport = (small & _U64(0xFFFF)).tolist()
        sh, sl, dh, dl = (keys[:, j].tolist() for j in range(3, 7))
        packets, nbytes = st.col("packets").tolist(), st.col("bytes").tolist()
        t0, t1, seq = st.col("t0").tolist(), st.col("t1").tolist(), st.col("seq").tolist()
        iname, rname, owner = self._instances.names, self._rules.names, self._owners
        items = []
        for j in range(st.n):
            items.append(((window[j], seq[j]), FlowRecord(
                _window_start(window[j], interval), owner[inst[j]], iname[inst[j]],
                DIRECTION_NAMES[d[j]], proto[j], _addr(ipver[j], sh[j], sl[j]),
                _addr(ipver[j], dh[j], dl[j]), sport[j], dport[j], packets[j], nbytes[j],
                t0[j] // 10**9, t1[j] // 10**9, ACTION_NAMES[action[j]], rname[rule[j]], "OK")))
        for (w, x), v in self._skip.items():
            items.append(((w, v[_SEQ]), FlowRecord(
                _window_start(w, interval), owner[x], iname[x], None, None, None, None, None,
                None, v[_P], v[_B], v[_T0] // 10**9, v[_T1] // 10**9, None, None, "SKIPDATA")))
        items.sort(key=lambda t: t[0])
        return [r for _, r in items]

    def lines(self, fmt: str = "aws") -> list[str]:
        """One line per record in output order (no trailing newline): ``fmt`` 'aws' or 'jsonl'."""
        if fmt not in FORMATS:
            raise ValueError(f"unknown flow-log format {fmt!r} (aws or jsonl)")
        recs = self.records()
        return [r.aws_line() for r in recs] if fmt == "aws" else [r.jsonl_line() for r in recs]

    def write(self, path, fmt: str = "aws") -> int:
        """Write the lines ('\\n'-terminated) to ``path`` atomically (a temporary file beside
        it, fsync, rename).  Returns the number of records written."""
        self.check()
        lines = self.lines(fmt)
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "w", encoding="utf-8", newline="\n") as f:
                f.write("".join(line + "\n" for line in lines))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        return len(lines)

    def totals(self) -> dict:
        """{"records", "ok_records", "skipdata_records", "logged_events", "ok_packets",
        "skipped_packets"}: ok_packets + skipped_packets == logged_events."""
        return {"records": len(self), "ok_records": self._store.n,
                "skipdata_records": len(self._skip), "logged_events": self.logged_events,
                "ok_packets": int(self._store.col("packets").sum()),
                "skipped_packets": self.skipped_packets}

    def check(self) -> None:
        """Raise if the records do not account for every logged event (a fastsg bug)."""
        t = self.totals()
        skip = sum(v[_P] for v in self._skip.values())
        problems = []
        if t["ok_packets"] + t["skipped_packets"] != t["logged_events"]:
            problems.append(f"OK records hold {t['ok_packets']} packets and "
                            f"{t['skipped_packets']} were skipped, but {t['logged_events']} "
                            "events were logged")
        if skip != t["skipped_packets"]:
            problems.append(f"SKIPDATA records hold {skip} packets, not the "
                            f"{t['skipped_packets']} skipped")
        indexed = int(np.count_nonzero(self._slots >= 0))
        if indexed != self._store.n:
            problems.append(f"{self._store.n} OK records but {indexed} keys indexed")
        if problems:
            raise RuntimeError("flow log counts do not add up (a fastsg bug): "
                               + "; ".join(problems))


_P, _B, _T0, _T1, _SEQ = range(5)      # fields of a SKIPDATA record's list


def _log_ids(group) -> frozenset:
    return frozenset(r.id for r in group.ingress + group.egress if r.log)


def _window_start(window: int, interval):
    ws = window * interval
    if isinstance(ws, float) and ws.is_integer():
        return int(ws)
    return ws


def _addr(ipver: int, hi: int, lo: int) -> str:
    if ipver == 4:
        return str(ipaddress.IPv4Address(lo & 0xFFFFFFFF))
    return str(ipaddress.IPv6Address((hi << 64) | lo))


# =========================================================================================
# grouping equal keys
# =========================================================================================
_MIX = (_U64(0x9E3779B97F4A7C15), _U64(0xC2B2AE3D27D4EB4F), _U64(0x165667B19E3779F9),
        _U64(0xD6E8FEB86659FD93), _U64(0xFF51AFD7ED558CCD), _U64(0xC4CEB9FE1A85EC53),
        _U64(0x27D4EB2F165667C5))


def _group(cols: list) -> tuple[np.ndarray, np.ndarray]:
    """Group the rows of equal key (``cols``: uint64 arrays of one length k).  Returns
    ``(order, starts)``: ``order`` int64[k] a permutation putting equal keys together,
    ``starts`` int64[g] the position in ``order`` where each of the g groups begins.

    A 64-bit hash of each row is sorted (one radix-friendly key instead of 7); rows of equal
    hash are then checked equal column by column, and on a collision the rows are sorted
    exactly (lexicographically) instead."""
    k = len(cols[0])
    with np.errstate(over="ignore"):
        h = np.zeros(k, np.uint64)
        for col, m in zip(cols, _MIX):
            h = (h ^ (col * m)) * _MIX[0]
            h ^= h >> _U64(31)
    order = np.argsort(h, kind="stable")
    hs = h[order]
    boundary = np.empty(k, np.bool_)
    if k:
        boundary[0] = True
        np.not_equal(hs[1:], hs[:-1], out=boundary[1:])
        same = ~boundary[1:]
        # rows sharing a hash with the previous row must share its key too
        if same.any() and any(np.any(cs[1:][same] != cs[:-1][same])
                              for cs in (col[order] for col in cols)):
            order = np.lexsort(cols[::-1])
            boundary[1:] = False
            for col in cols:
                cs = col[order]
                boundary[1:] |= cs[1:] != cs[:-1]
    return order, np.flatnonzero(boundary)
