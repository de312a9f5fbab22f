"""numba options and library-wide defaults, in one place.

Every kernel is compiled with ``jit_options(...)``; no kernel writes its own ``cache=``,
``parallel=`` or ``fastmath=``.  The environment variable ``FASTSG_NO_CACHE=1`` turns the
on-disk cache off (useful when kernels are being edited); ``FASTSG_LEAN_CACHE_LOAD=0``
loads cached kernels numba's own (slower) way.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numba

from . import lean_cache_load



def env_flag(name: str, default: bool) -> bool:
    """A yes/no environment setting: 1/true/yes on, 0/false/no/off off (any case, spaces
    ignored), anything else (or unset) ``default``."""
    value = os.environ.get(name, "").strip().lower()
    if value in ("1", "true", "yes"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    return default


# On-disk cache of compiled kernels: later processes skip the JIT warm-up.
CACHE = os.environ.get("FASTSG_NO_CACHE", "") not in ("1", "true", "yes")


def _sources_digest() -> str:
    """A digest of every fastsg source file.  numba's cache only notices edits to the file
    holding a kernel, not to constants it imports (table layouts, schema), so the cache
    lives in a directory named after the whole package's sources: any change, fresh cache."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _use_versioned_cache_dir() -> None:
    if not CACHE or os.environ.get("NUMBA_CACHE_DIR"):
        return      # the user chose a cache directory: respect it
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fastsg"
    target = base / f"numba-{_sources_digest()}"
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError:
        return      # unwritable home: numba falls back to __pycache__ beside the sources
    numba.config.CACHE_DIR = str(target)


_use_versioned_cache_dir()
# Cached kernels load without numba's whole first-use set-up (see ``lean_cache_load``).
if env_flag("FASTSG_LEAN_CACHE_LOAD", True):
    lean_cache_load.install()
# Integer-only kernels: fastmath gains nothing and must never change a verdict.
FASTMATH = False
# The GIL is released in every kernel, so a mutation can land while a classify runs.
NOGIL = True

# Work is split over threads in contiguous runs of at least this many packets (a smaller
# batch runs on one thread: starting a second costs more than it saves).
BLOCK_PACKETS = 1 << 16
# log2 of the flow cache's IPv4 entries per thread (32 bytes each: 4096 entries are 128 KiB,
# which stays in L2), plus a quarter as many IPv6 entries of 64 bytes.  Measured on
# generated traffic: 85% hits at 1024 entries, 90% at 4096.  0 turns the cache off.
FLOW_CACHE_BITS = 12
# log2 of the tracking walk's fast-cache IPv4 entries per shard (64 bytes each: 4096 are
# 256 KiB), plus a quarter as many IPv6 entries of 128 bytes (see ``kernels/track.py``).
# Used while the walk does not prefetch (tables that fit the caches); 0 turns it off.
TRACK_CACHE_BITS = 12
# Flow-cache misses of big tables are evaluated this many at a time, one table step of all of them per
# pass, so the CPU overlaps their cache misses (see ``classify._resolve_misses``).
MISS_GROUP = 32
# ... when the compiled tables are at least this big (well past a core's 1 MiB L2 here;
# ``classify.groups_misses``).
GROUPED_MISSES_MIN_BYTES = 4 << 20


def jit_options(parallel: bool = False, inline: bool = False, refcounts: bool = True) -> dict:
    """Keyword arguments for ``numba.njit``: ``parallel`` for prange kernels, ``inline`` for
    small scalar helpers called per packet (inlined at numba's IR level); ``refcounts``
    False compiles a kernel without numba's reference counting (its ``_nrt`` option).

    Why ``refcounts=False``: numba counts references to every array a function handles,
    and in a long loop body with many branches (the tracking walk, the grouped misses) its
    pruning of the count updates fails, leaving atomic increments and decrements of the
    arrays' counts (calls into the runtime) on the hot path: the walk's machine code held
    about 230 such calls, and holds none without counting.  Measured in one process,
    alternating, 9 rounds, one thread: a million live flows 7.4 -> 10.9 Mpps, 50k live
    flows 10.6 -> 13.8, a fresh stream at 10k rules 3.06x -> 2.50x the stateless cost.
    Such a kernel must not allocate (an allocating wrapper passes it its scratch) and
    returns nothing that needs counting."""
    opts = {"cache": CACHE, "nogil": NOGIL, "fastmath": FASTMATH}
    if parallel:
        opts["parallel"] = True
    if inline:
        opts["inline"] = "always"
    if not refcounts:
        opts["_nrt"] = False
    return opts


def njit(parallel: bool = False, inline: bool = False, refcounts: bool = True):
    """``numba.njit`` with the project's options: ``@njit()``, ``@njit(parallel=True)``,
    ``@njit(inline=True)`` for scalar helpers called per packet, or
    ``@njit(refcounts=False)`` for a non-allocating hot kernel (see ``jit_options``)."""
    return numba.njit(**jit_options(parallel, inline, refcounts))


def max_threads() -> int:
    """Threads numba may use in this process (``NUMBA_NUM_THREADS``, default: all cores)."""
    return numba.config.NUMBA_NUM_THREADS


def resolve_threads(threads: int | None) -> int:
    """``threads`` option -> a concrete thread count (None or 0: all available)."""
    limit = max_threads()
    if threads is None or threads <= 0:
        return limit
    return min(int(threads), limit)
