"""``Tracker``: the connection-tracking tables of every instance (spec section 4).

The tables live in one arena of hash slots (see ``kernels/track.py`` for the layout);
instances are spread over ``NPART`` partitions, each one open-addressing table.  The
tracker keeps the tracking clock (the latest timestamp seen), grows a partition when its
load would pass 3/4 (dropping expired flows on the way), and discards a terminated
instance's flows.  It is mutable state of one ``Engine``, used under the engine's lock.
"""
from __future__ import annotations

import mmap

import numba
import numpy as np

from .kernels.track import (MIN_PART_SLOTS, NPART, PART_SHIFT, _discard, _live_flows,
                            _shards, _track, grown_size)

SLOT_WORDS = 4
SLOT_BYTES = SLOT_WORDS * 8
HUGE_ARENA_BYTES = 4 << 20
MAX_INSTANCES = 1 << (18 + PART_SHIFT)      # the key word holds instance // NPART in 18 bits
_NO_TIME = np.iinfo(np.int64).min
_NEVER = np.iinfo(np.int64).max


def _zeros_aligned(rows: int) -> np.ndarray:
    """Zeroed uint64[rows, 4] starting on a 64-byte boundary, so no 32-byte slot straddles
    two cache lines.  Big arenas are anonymous mappings with transparent huge pages asked
    for (where the kernel offers them on request): random probes into a table of many
    megabytes then miss the TLB far less often."""
    nbytes = rows * SLOT_BYTES
    if nbytes >= HUGE_ARENA_BYTES and hasattr(mmap, "MADV_HUGEPAGE"):
        region = mmap.mmap(-1, nbytes)              # page-aligned and zeroed
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
    def run(self, cols, rules_v, egress_rule, ingress_rule, src_val, dst_val, inst_addr,
            nthreads: int) -> np.ndarray:
        """Apply the tables to one batch in capture order; returns verdict uint8[n] and
        rewrites egress_rule / ingress_rule int32[n] in place (see ``_track``)."""
        n = len(rules_v)
        verdict = np.empty(n, np.uint8)
        if n == 0:
            return verdict
        clock = np.maximum.accumulate(cols.ts)
        if clock[0] < self.clock:
            np.maximum(clock, self.clock, out=clock)
        self.clock = int(clock[-1])
        if nthreads > 1:
            order = np.empty(n, np.int64)
            shard_of_part = np.empty(NPART, np.int64)
            shard_start = _shards(src_val, dst_val, cols.frag, nthreads, order, shard_of_part)
        else:
            order = np.arange(n, dtype=np.int64)
            shard_start = np.array([0, n], np.int64)
        nshards = len(shard_start) - 1
        pos = shard_start[:-1].copy()
        stop = np.full(nshards, -1, np.int64)
        grows = np.zeros(nshards, np.int64)
        addr_hi, addr_lo, addr_ver = inst_addr
        need = 0
        while True:
            free_lo, free_hi = self._free_space(nshards, need)
            _track(cols, rules_v, egress_rule, ingress_rule, src_val, dst_val, clock, order,
                   shard_start, pos, stop, self.slots, self.part_base, self.part_size,
                   self.part_used, self.stored, self.next_exp, self.capacity, self.timeouts,
                   addr_hi, addr_lo, addr_ver, verdict, self.slots.reshape(-1), free_lo, free_hi,
                   grows)
            self.arena_end = int(free_lo.max())     # holes between shards' spaces: garbage
            stopped = np.nonzero(stop >= 0)[0]
            if len(stopped) == 0:
                break
            # a shard ran out of arena space: make room for the biggest growth asked for
            need = max(grown_size(int(self.part_used[int(stop[sh])])) for sh in stopped)
            # resuming a single shard: run it on this thread alone (waking the pool's
            # other threads for nothing can cost a scheduler time slice on a busy machine)
            if np.count_nonzero(pos < shard_start[1:]) == 1 and numba.get_num_threads() > 1:
                numba.set_num_threads(1)
        if not np.array_equal(pos, shard_start[1:]):     # every packet judged, none twice
            raise AssertionError(f"tracking walk ended at {pos.tolist()}, "
                                 f"not at the shard ends {shard_start[1:].tolist()}")
        self.grows += int(grows.sum())
        return verdict

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
