"""``Engine``: a world's compiled tables + the kernels, behind one validating entry point."""
from __future__ import annotations

import threading
from dataclasses import dataclass
from enum import IntEnum

import numba
import numpy as np

from .batch import PacketBatch
from .compile.compiler import CompiledWorld, Compiler
from .config import FLOW_CACHE_BITS, resolve_threads
from .flowlog import FlowLog, RuleCounters
from .kernels.classify import (MODE_ADDRESSES, MODE_BOTH, MODE_STATELESS,
                               classify_packets)
from .tracking import Tracker


class Verdict(IntEnum):
    """Per-packet verdict (the values of ``Result.verdict``)."""
    ACCEPT = 0
    DROP = 1
    REJECT = 2
    UNMANAGED = 3
    MALFORMED = 4


@dataclass(frozen=True)
class Result:
    """Verdicts of one classified batch.

    verdict: uint8[n] of ``Verdict`` values.  egress_rule, ingress_rule: int32[n] indexes
    into ``rule_names`` of each check's deciding rule, -1 where the check did not happen.
    rule_names: rule ids and the reasons ``default``, ``conntrack``, ``conntrack-related``,
    ``conntrack-full`` (indexes 0-3), as of the world revision the batch saw.
    src_instance, dst_instance: int32[n] index into ``instance_ids`` of the running
    instance owning the packet's source / destination address (the instance of its egress
    / ingress check), -1 where none does or the record is not an IP packet.
    """
    verdict: np.ndarray
    egress_rule: np.ndarray
    ingress_rule: np.ndarray
    rule_names: tuple
    revision: int = 0
    src_instance: np.ndarray | None = None
    dst_instance: np.ndarray | None = None
    instance_ids: tuple = ()

    def __len__(self) -> int:
        return len(self.verdict)

    def counts(self) -> dict[str, int]:
        """Packets per verdict name, every verdict present (they add up to ``len(self)``)."""
        bins = np.bincount(self.verdict, minlength=len(Verdict))
        return {v.name: int(bins[v]) for v in Verdict}

    def rule_name(self, index: int) -> str | None:
        return None if index < 0 else self.rule_names[index]

    def row(self, i: int) -> tuple[str, str | None, str | None]:
        """(verdict name, egress rule name or None, ingress rule name or None) of packet i."""
        return (Verdict(int(self.verdict[i])).name, self.rule_name(int(self.egress_rule[i])),
                self.rule_name(int(self.ingress_rule[i])))


class Engine:
    """Classifies packet batches against a live ``World``.

    ``Engine(world, stateful=True, threads=None, flow_cache=True, flow_log=None)``:

    * ``stateful``: connection tracking (spec section 4).  Successive ``classify`` calls
      are one capture-ordered stream: the tables, the tracking clock (the latest timestamp
      seen) and the flow log carry over from call to call.  ``stateful=False`` judges every
      packet by the rules alone.
    * ``threads``: default thread count of ``classify`` (None: all cores).  1 and N threads
      give identical results.
    * ``flow_cache``: a small per-thread cache of recent (addresses, protocol, port)
      outcomes of the rules within one classify call (never across calls, so never stale).
    * ``miss_groups`` (attribute, read per call): None evaluates the flow cache's misses in
      groups only when the compiled tables are big (``kernels.classify.groups_misses``);
      True or False forces the choice (tests, benchmarks).  Results never depend on it.
    * ``flow_log``: None keeps the flow records the world's ``logging`` settings ask for
      (``engine.flow_log``); False keeps none.  Per-rule hit counters are always kept
      (``engine.rule_counters()``).

    Any mutation of the world is visible to the very next ``classify``: each call first
    brings the compiled tables up to the world's revision (recompiling only what changed)
    and then runs on one immutable snapshot, so a mutation landing during a classify is
    seen entirely or not at all.  Terminating an instance discards its tracked flows.
    """

    def __init__(self, world, stateful: bool = True, threads: int | None = None,
                 flow_cache: bool = True, flow_log: bool | None = None):
        self.world = world
        self.stateful = bool(stateful)
        self.threads = threads
        self.flow_cache = flow_cache
        self.miss_groups: bool | None = None
        self._lock = threading.Lock()
        self._compiler = Compiler(world)
        self._counters = RuleCounters()
        self.flow_log = None if flow_log is False else FlowLog(world)
        self.tracker = Tracker(world.conntrack) if self.stateful else None
        self._tracked_revision = world.revision
        self.refresh()

    def refresh(self) -> CompiledWorld:
        """Bring the compiled tables up to the world's current revision and return them."""
        with self._lock:
            return self._compiler.refresh()

    @property
    def compiled(self) -> CompiledWorld:
        return self.refresh()

    @property
    def last_compile_seconds(self) -> float:
        return self._compiler.last_compile_seconds

    def classify(self, batch: PacketBatch, threads: int | None = None) -> Result:
        """Verdicts of every packet of ``batch`` (spec sections 2-4), in capture order after
        the packets of earlier calls."""
        if not isinstance(batch, PacketBatch):
            raise TypeError(f"classify expects a PacketBatch, not {type(batch).__name__}")
        nthreads = resolve_threads(threads if threads is not None else self.threads)
        with self._lock:
            compiled = self._compiler.refresh()
            if self.stateful:
                self._sync_tracking(compiled)
            previous = numba.get_num_threads()
            numba.set_num_threads(nthreads)
            try:
                result = self._classify(compiled, batch, nthreads)
                log = self.flow_log
                # the counters' pass also marks where logged rules decided, for the log
                log_rule = None if log is None else log.rule_log_flags(result.rule_names)
                flags = self._counters.add(batch, result, nthreads, log_rule)
            finally:
                numba.set_num_threads(previous)
            if log is not None:
                log.add(batch, result, flags)
            return result

    def _classify(self, compiled: CompiledWorld, batch: PacketBatch, nthreads: int) -> Result:
        """The kernels on ``nthreads`` threads (numba's thread count is set by the caller)."""
        n = len(batch)
        verdict = np.empty(n, np.uint8)
        egress_rule = np.empty(n, np.int32)
        ingress_rule = np.empty(n, np.int32)
        src_val = np.empty(n, np.int32)
        dst_val = np.empty(n, np.int32)
        if n:
            cols = batch.kernel_columns()
            cache_bits = FLOW_CACHE_BITS if self.flow_cache else 0
            if not self.stateful:
                classify_packets(compiled.kernel, cols, cache_bits, nthreads, MODE_STATELESS,
                                 verdict, egress_rule, ingress_rule, src_val, dst_val,
                                 self.miss_groups)
            else:
                self._classify_tracked(compiled, cols, n, nthreads, cache_bits, verdict,
                                       egress_rule, ingress_rule, src_val, dst_val)
        if self.stateful and n:
            # the walk leaves address-map values, instance * 2 + is_public (the stateless
            # kernel writes the instance indexes itself)
            np.right_shift(src_val, 1, out=src_val)
            np.right_shift(dst_val, 1, out=dst_val)
        return Result(verdict, egress_rule, ingress_rule, compiled.rule_names, compiled.revision,
                      src_val, dst_val, compiled.instance_ids)

    def _classify_tracked(self, compiled, cols, n, nthreads, cache_bits, verdict, egress_rule,
                          ingress_rule, src_val, dst_val) -> None:
        """Stateful: the rules of every packet in a parallel pass and then the tracking
        walk, or the walk alone evaluating the rules of the checks its tables do not
        accept (``Tracker.rules_first`` decides, from the tables' flows and, on several
        threads, the shards); on several threads the walk is dealt to shards
        (``Tracker.shard_plan``: none when every packet falls in one), which needs every
        packet's instances first (either parallel pass gives them)."""
        tracker = self.tracker
        rules_v = np.empty(0, np.uint8)
        vals_ready = False
        plan = "auto"               # Tracker.run deals the walk to shards itself
        first = tracker.rules_first(n, nthreads)
        if first is not True and nthreads > 1:
            # the shards come from the packets' instances (and may decide ``first``)
            classify_packets(compiled.kernel, cols, 0, nthreads, MODE_ADDRESSES, verdict,
                             egress_rule, ingress_rule, src_val, dst_val, self.miss_groups)
            vals_ready = True
            plan = tracker.shard_plan(src_val, dst_val, nthreads)
            if first is None:
                first = tracker.rules_first(n, nthreads, tracker.shard_count(plan))
        if first:
            rules_v = np.empty(n, np.uint8)
            classify_packets(compiled.kernel, cols, cache_bits, nthreads, MODE_BOTH, rules_v,
                             egress_rule, ingress_rule, src_val, dst_val, self.miss_groups)
            vals_ready = True
        tracker.run(compiled.kernel, cols, verdict, egress_rule, ingress_rule, src_val, dst_val,
                    vals_ready, rules_v, compiled.inst_addr, nthreads, cache_bits, plan)

    def _sync_tracking(self, compiled: CompiledWorld) -> None:
        """Size the per-instance counters; discard the tables of terminated instances."""
        tracker = self.tracker
        tracker.ensure_instances(len(compiled.instance_ids))
        if self._tracked_revision != compiled.revision:
            index = {name: i for i, name in enumerate(compiled.instance_ids)}
            for change in self.world.changes_since(self._tracked_revision):
                if change.kind == "terminate" and change.instance in index:
                    tracker.discard(index[change.instance])
            self._tracked_revision = compiled.revision

    # ---- tracking, logging and counters ----
    def rule_counters(self) -> dict:
        """Packets and bytes of every check event per deciding rule: every rule id of the
        world and the four reasons, zeros included: {name: (packets, bytes)}."""
        with self._lock:
            return self._counters.as_dict(self.world)

    def reset_tracking(self) -> None:
        """Forget every tracked flow and the tracking clock."""
        with self._lock:
            if self.tracker is not None:
                self.tracker.reset()

    def tracking_stats(self) -> dict:
        """Flows held, live flows, table bytes, bytes per flow (empty when stateless)."""
        with self._lock:
            return self.tracker.stats() if self.tracker is not None else {}
