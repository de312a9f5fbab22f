"""``Tracker``: the connection-tracking tables of every instance (spec section 4).

The tables live in one arena of hash slots (see ``kernels/track.py`` for the layout);
instances are spread over ``NPART`` partitions, each one open-addressing table.  The
tracker keeps the tracking clock (the latest timestamp seen), grows a partition when its
load would pass 3/4 (dropping expired flows on the way), and discards a terminated
instance's flows.  It is mutable state of one ``Engine``, used under the engine's lock.
"""
from __future__ import annotations

import mmap

import numpy as np

from .config import TRACK_CACHE_BITS
from .kernels.track import (MIN_PART_SLOTS, NPART, PART_SHIFT, _discard, _live_flows,
                            _shards, _track, _walk, grown_size, prefetches)

SLOT_WORDS = 4
SLOT_BYTES = SLOT_WORDS * 8
HUGE_ARENA_BYTES = 4 << 20
# New flows per packet in the last batch from which the next one has its rules judged
# in a pass before the walk (see ``Tracker.rules_first``)
RULES_FIRST_NEW_FLOWS = 0.02
MAX_INSTANCES = 1 << (18 + PART_SHIFT)      # the key word holds instance // NPART in 18 bits
FREE_SLOTS_PER_PACKET = 1 / 4     # free arena slots a batch starts with, per packet (see run)
_NO_TIME = np.iinfo(np.int64).min
_NEVER = np.iinfo(np.int64).max


def _zeros_aligned(rows: int) -> np.ndarray:
    """Zeroed uint64[rows, 4] starting on a 64-byte boundary, so no 32-byte slot straddles
    two cache lines.  Big arenas are anonymous mappings with transparent huge pages asked
    for (where the kernel offers them on request): random probes into a table of many
    megabytes then miss the TLB far less often.  The mapping must be private: Python's
    default anonymous mapping is shared memory, which Linux backs with huge pages only
    when ``shmem_enabled`` says so (commonly never)."""
    nbytes = rows * SLOT_BYTES
    if nbytes >= HUGE_ARENA_BYTES and hasattr(mmap, "MADV_HUGEPAGE"):
        region = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)   # zeroed
        try:
            region.madvise(mmap.MADV_HUGEPAGE)
        except OSError:
            pass                                    # no THP here: ordinary pages
        return np.frombuffer(region, np.uint64).reshape(rows, SLOT_WORDS)
    raw = np.zeros(rows * SLOT_WORDS + 8, np.uint64)
    skip = (-raw.ctypes.data % 64) // 8
    return raw[skip:skip + rows * SLOT_WORDS].reshape(rows, SLOT_WORDS)


def _ns(seconds) -> int:
    return int(round(float(seconds) * 1e9))


class Tracker:
    """Tracking tables and clock.  ``conntrack``: the world's ``conntrack`` settings."""

    def __init__(self, conntrack: dict):
        self.timeouts = np.array([_ns(conntrack["tcp_timeout"]), _ns(conntrack["udp_timeout"]),
                                  _ns(conntrack["udp_stream_timeout"]),
                                  _ns(conntrack["icmp_timeout"]), _ns(conntrack["other_timeout"])],
                                 np.int64)
        self.capacity = int(conntrack["capacity"])
        self.force_rules_first = None
        self.reset()

    def reset(self) -> None:
        """Forget every flow and the clock."""
        self.slots = _zeros_aligned(0)
        self.arena_end = 0
        self.part_base = np.zeros(NPART, np.int64)
        self.part_size = np.zeros(NPART, np.int64)
        self.part_used = np.zeros(NPART, np.int64)
        self.stored = np.zeros(0, np.int64)
        self.next_exp = np.zeros(0, np.int64)
        self.clock = _NO_TIME
        self.grows = 0
        self.new_flow_share = 0.0   # flows the last batch added to the tables, per packet

    # ---- instances ----
    def ensure_instances(self, n: int) -> None:
        if n > MAX_INSTANCES:
            raise ValueError(f"connection tracking supports at most {MAX_INSTANCES} instances")
        if n > len(self.stored):
            m = max(n, 2 * len(self.stored), 64)
            self.stored = np.concatenate([self.stored, np.zeros(m - len(self.stored), np.int64)])
            self.next_exp = np.concatenate([self.next_exp,
                                            np.full(m - len(self.next_exp), _NEVER, np.int64)])

    def discard(self, inst: int) -> None:
        """Drop every flow of instance ``inst`` (it was terminated)."""
        if inst >= len(self.stored) or self.stored[inst] == 0:
            return
        part = inst & (NPART - 1)
        base, size = int(self.part_base[part]), int(self.part_size[part])
        _discard(self.slots, base, size, inst, part)
        self.stored[inst] = 0
        self.next_exp[inst] = _NEVER

    # ---- classification ----
    def rules_first(self, n: int, nthreads: int, shards: int | None = None):
        """Whether a batch of ``n`` packets on ``nthreads`` threads, its walk dealt to
        ``shards`` shards, should have the rules of every packet computed before the walk
        (a parallel pass with the flow cache) rather than inside it, only for the checks
        the tables do not accept.

        * One walk (one thread, or every packet in one shard) while the walk keeps its fast
          cache (``walk_caches``): the walk alone.  The cache remembers each flow key's
          outcome, refused ones too, so the rules are evaluated about once per new key.
          Measured at 10k rules, one thread, 500k generated packets (27k flows), time
          against stateless, median of 9 alternating rounds: a fresh stream 1.77x the walk
          alone against 2.35x the pass first; the second half of a 1M-packet stream after
          its first half 1.80x against 2.31x.  On two threads the two are even (fresh 2.85x
          against 2.80x, continued 2.89x against 2.84x), so several shards keep the rules
          below.
        * Empty tables (a new engine, ``reset_tracking``, the first chunk of a replay):
          the pass first.  Every flow's first packet then needs the rules, and evaluated
          one by one inside the walk they cost more than the whole pass: measured at 10k
          rules, one thread, a fresh stream of 500k generated packets (27k flows), CPU time
          per packet against stateless, two runs: 2.67x and 2.42x the pass first, 3.39x
          and 2.74x the walk alone.  (Since the walk runs without reference counting,
          the two are within noise: 2.69x against 2.76x, 15 alternating rounds.)
        * Tables holding flows, and the last batch added few of them (under
          ``RULES_FIRST_NEW_FLOWS`` per packet): the walk alone, as a packet of a tracked
          flow then never pays for the rules: the same stream again 2.30x and 1.88x
          against 2.66x and 2.23x; a million live flows 8.3 and 6.4 Mpps against 6.5 and
          4.4.  With several shards the pass first still spreads the rules over the
          threads, which pays while the tables hold fewer flows than the batch has packets.
        * A stream still opening flows (the last batch added at least
          ``RULES_FIRST_NEW_FLOWS`` per packet): the pass first.  Each new flow's first
          packet costs the walk a full evaluation on cold tables (about 0.7 us), against
          the pass's flow cache.  Measured at 10k rules, one thread, the second half of
          a 1M-packet generated stream after its first half (5.3-5.6% new flows): 96-110
          ns a packet the pass first, 112-133 the walk alone (7 alternating rounds); the
          same half again (no new flow): 90-96 against 83-97, and 1M live flows 121
          against 102.

        Returns None when the answer depends on the shards and ``shards`` is None.
        ``force_rules_first`` (None: decide; True/False) overrides it, for tests of both
        paths."""
        if self.force_rules_first is not None:
            return bool(self.force_rules_first)
        if (nthreads <= 1 or shards == 1) and self.walk_caches():
            return False
        stored = int(self.stored.sum())
        if stored == 0 or self.new_flow_share >= RULES_FIRST_NEW_FLOWS:
            return True
        if nthreads <= 1 or stored >= n:
            return False
        if shards is None:
            return None             # it depends on how the walk shards: ask again
        return shards > 1

    def walk_caches(self) -> bool:
        """Whether the next walk keeps its fast cache: on unless turned off
        (``config.TRACK_CACHE_BITS``) or the tables are big enough to be prefetched
        instead (``kernels/track.py``)."""
        return TRACK_CACHE_BITS > 0 and not prefetches(self.part_size)

    @staticmethod
    def shard_count(plan) -> int:
        """Shards of a ``shard_plan`` (None: one)."""
        return 1 if plan is None else len(plan[1]) - 1

    @staticmethod
    def shard_plan(src_val, dst_val, nthreads: int):
        """Deal a batch's packets to at most ``nthreads`` shards (see ``_shards``; needs the
        address values): ``(order, shard_start)``, or None when every packet falls in one
        shard, which is then walked in capture order without the order and clock arrays."""
        n = len(src_val)
        if nthreads <= 1 or n == 0:
            return None
        order = np.empty(n, np.int64)
        shard_of_part = np.empty(NPART, np.int64)
        shard_start = _shards(src_val, dst_val, nthreads, order, shard_of_part)
        if np.count_nonzero(np.diff(shard_start)) <= 1:
            return None             # one shard: the capture order itself (order unfilled)
        return order, shard_start

    def run(self, t, cols, verdict, egress_rule, ingress_rule, src_val, dst_val, vals_ready,
            rules_v, inst_addr, nthreads: int, cache_bits: int, plan="auto") -> None:
        """Classify one batch with the tables, in capture order: fills verdict uint8[n],
        egress_rule and ingress_rule int32[n] (see ``_track``; ``t`` the compiled rules).
        src_val/dst_val int32[n]: the address-map values, filled already when
        ``vals_ready`` (needed to shard over ``nthreads`` > 1), else filled by the walk.
        rules_v: the rules' packed verdicts of both checks (egress_rule/ingress_rule then hold
        their deciding rules), or empty to have the walk evaluate them.
        ``cache_bits``: log2 of the walk's rules-outcome cache entries (0: no cache).
        ``plan``: the batch's ``shard_plan`` (None: one walk in capture order), or "auto"
        to make it here."""
        n = len(verdict)
        if n == 0:
            return
        stored_before = int(self.stored.sum())
        if isinstance(plan, str):
            if nthreads > 1 and not vals_ready:
                raise ValueError("sharding the tracking walk needs the address values")
            plan = self.shard_plan(src_val, dst_val, nthreads) if vals_ready else None
        if plan is not None:
            order, shard_start = plan
            clock = np.maximum.accumulate(cols.ts)
            if clock[0] < self.clock:
                np.maximum(clock, self.clock, out=clock)
        else:
            # one shard in capture order: no order array, and the walk keeps the clock
            clock = order = np.empty(0, np.int64)
            shard_start = np.array([0, n], np.int64)
        nshards = len(shard_start) - 1
        pos = shard_start[:-1].copy()
        stop = np.full(nshards, -1, np.int64)
        grows = np.zeros(nshards, np.int64)
        clock_state = np.full(nshards, self.clock, np.int64)
        addr_hi, addr_lo, addr_ver = inst_addr
        # free arena space to start with: n / 4 slots (8 bytes a packet; an arena of 4 MiB
        # or more is a mapping whose untouched pages cost nothing).  A fresh stream's tables
        # then grow without stop-enlarge-resume rounds: 15 for 500k packets of generated
        # traffic with 256 slots to start (70.6 -> 67.9 ms a call at n / 8, measured), 2 at
        # n / 8, none at n / 4.  Each round also starts the walk's caches empty: 2.10x ->
        # 1.95x and 1.87x -> 1.83x the stateless cost at n / 4 (10k rules, one thread, two
        # sets of 11 and 15 alternating rounds).
        need = int(n * FREE_SLOTS_PER_PACKET)
        while True:
            free_lo, free_hi = self._free_space(nshards, need)
            args = (t, cols, int(vals_ready), rules_v, cache_bits, egress_rule, ingress_rule,
                    src_val, dst_val, clock, order, shard_start, pos, stop, self.slots,
                    self.part_base, self.part_size, self.part_used, self.stored, self.next_exp,
                    self.capacity, self.timeouts, addr_hi, addr_lo, addr_ver, verdict,
                    self.slots.reshape(-1), free_lo, free_hi, grows, clock_state)
            unfinished = np.flatnonzero(pos < shard_start[1:])
            if len(unfinished) == 1:
                # one shard to walk: a plain call (no thread pool to wake, and a faster loop)
                _walk(int(unfinished[0]), *args)
            else:
                _track(*args)
            self.arena_end = int(free_lo.max())     # holes between shards' spaces: garbage
            stopped = np.nonzero(stop >= 0)[0]
            if len(stopped) == 0:
                break
            # a shard ran out of arena space: make room for the biggest growth asked for
            need = max(grown_size(int(self.part_used[int(stop[sh])])) for sh in stopped)
        if not np.array_equal(pos, shard_start[1:]):     # every packet judged, none twice
            raise AssertionError(f"tracking walk ended at {pos.tolist()}, "
                                 f"not at the shard ends {shard_start[1:].tolist()}")
        self.grows += int(grows.sum())
        self.clock = int(clock[-1]) if len(clock) else int(clock_state[0])
        self.new_flow_share = max(0, int(self.stored.sum()) - stored_before) / n

    def _free_space(self, nshards: int, need: int):
        """Zeroed arena space for each shard to grow partitions into: [lo, hi) per shard.
        The arena is enlarged (and compacted) when its free tail is short."""
        held = int(self.part_size.sum())
        want = nshards * max(need, 4 * MIN_PART_SLOTS) + held // 2
        if len(self.slots) - self.arena_end < want:
            self._compact(held + want)
        free = len(self.slots) - self.arena_end
        chunk = free // nshards
        lo = self.arena_end + chunk * np.arange(nshards, dtype=np.int64)
        return lo, lo + chunk

    def _compact(self, rows: int) -> None:
        """A new arena of ``rows`` slots holding the partitions back to back."""
        arena = _zeros_aligned(rows)
        end = 0
        for q in range(NPART):
            size = int(self.part_size[q])
            if size:
                b = int(self.part_base[q])
                arena[end:end + size] = self.slots[b:b + size]
                self.part_base[q] = end
                end += size
        self.slots = arena
        self.arena_end = end

    # ---- reporting ----
    def stats(self) -> dict:
        """Flows held, live flows at the clock, table bytes and bytes per held flow."""
        flows = int(self.stored.sum())
        table_bytes = int(self.part_size.sum()) * SLOT_BYTES
        live = int(_live_flows(self.slots[:self.arena_end], self.clock, self.timeouts)) \
            if self.arena_end else 0
        return {"flows": flows, "live_flows": live, "table_bytes": table_bytes,
                "arena_bytes": int(self.slots.nbytes),
                "bytes_per_flow": table_bytes / flows if flows else 0.0,
                "partition_grows": self.grows}
