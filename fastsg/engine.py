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
from .kernels.classify import _classify_stateless


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
    """
    verdict: np.ndarray
    egress_rule: np.ndarray
    ingress_rule: np.ndarray
    rule_names: tuple
    revision: int = 0

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

    ``Engine(world, stateful=False, threads=None, flow_cache=True)``: ``threads`` is the
    default thread count of ``classify`` (None: all cores); ``flow_cache`` keeps a small
    per-thread cache of recent (addresses, protocol, port) outcomes within one classify call
    (never across calls, so never stale; results are identical either way).  Any mutation of the world is visible to the very next
    ``classify``: each call first brings the compiled tables up to the world's revision
    (recompiling only what changed) and then runs on one immutable snapshot, so a mutation
    landing during a classify is seen entirely or not at all.
    """

    def __init__(self, world, stateful: bool = False, threads: int | None = None,
                 flow_cache: bool = True):
        if stateful:
            raise NotImplementedError(
                "stateful tracking (spec section 4) is not implemented yet; "
                "use Engine(world, stateful=False)")
        self.world = world
        self.stateful = stateful
        self.threads = threads
        self.flow_cache = flow_cache
        self._lock = threading.Lock()
        self._compiler = Compiler(world)
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
        """Verdicts of every packet of ``batch`` (spec sections 2 and 3)."""
        if not isinstance(batch, PacketBatch):
            raise TypeError(f"classify expects a PacketBatch, not {type(batch).__name__}")
        compiled = self.refresh()
        n = len(batch)
        verdict = np.empty(n, np.uint8)
        egress_rule = np.empty(n, np.int32)
        ingress_rule = np.empty(n, np.int32)
        if n:
            nthreads = resolve_threads(threads if threads is not None else self.threads)
            previous = numba.get_num_threads()
            numba.set_num_threads(nthreads)
            try:
                cache_bits = FLOW_CACHE_BITS if self.flow_cache else 0
                _classify_stateless(compiled.kernel, batch.kernel_columns(), cache_bits, nthreads,
                                    verdict, egress_rule, ingress_rule)
            finally:
                numba.set_num_threads(previous)
        return Result(verdict, egress_rule, ingress_rule, compiled.rule_names, compiled.revision)
