"""Elementary-interval tables: "which rules cover this point" turned into sorted arrays.

A rule set over one dimension (an address or a port key) is a list of inclusive ranges
``[lo, hi]`` each carrying a *rank* (smaller decides first, see ``policy.py``).  The
dimension is cut at every range end; each elementary interval stores the least rank of
the ranges covering it (``NO_RANK`` if none).  Adjacent intervals with the same rank are
merged, so a lookup is one "last start <= x" search.
"""
from __future__ import annotations

import numpy as np

from ..config import njit

NO_RANK = np.int32(0x7FFFFFFF)


@njit()
def _paint_min_rank(first, last, rank, n_points):
    """Least rank per elementary interval.

    first, last: int64[k] index range [first, last) of the elementary intervals each rule
    covers; rank: int32[k] sorted ascending, so the first rule to reach an interval wins.
    Returns int32[n_points].
    """
    out = np.full(n_points, 0x7FFFFFFF, np.int32)
    for r in range(len(rank)):
        rk = rank[r]
        for j in range(first[r], last[r]):
            if out[j] == 0x7FFFFFFF:
                out[j] = rk
    return out


def _merge_equal(points, ranks):
    keep = np.ones(len(ranks), dtype=bool)
    keep[1:] = ranks[1:] != ranks[:-1]
    return points[keep], ranks[keep]


def min_rank_table_u64(lo: np.ndarray, hi: np.ndarray, rank: np.ndarray, end: int):
    """Interval table over [0, end) for keys that fit in uint64 (IPv4 addresses, port keys).

    lo, hi: uint64/int64[k] inclusive bounds; rank: int32[k].  Returns (starts uint64[m],
    ranks int32[m]) with starts[0] == 0, starts ascending, adjacent ranks distinct.
    """
    lo = np.asarray(lo, dtype=np.uint64)
    hi = np.asarray(hi, dtype=np.uint64)
    rank = np.asarray(rank, dtype=np.int32)
    ends = hi + np.uint64(1)
    points = np.unique(np.concatenate([np.zeros(1, np.uint64), lo, ends]))
    points = points[points < np.uint64(end)]
    order = np.argsort(rank, kind="stable")
    first = np.searchsorted(points, lo[order]).astype(np.int64)
    last = np.searchsorted(points, ends[order]).astype(np.int64)
    ranks = _paint_min_rank(first, last, rank[order], len(points))
    return _merge_equal(points, ranks)


def min_rank_table_u128(lo: list[int], hi: list[int], rank: list[int]):
    """Interval table over the 128-bit IPv6 space.  lo, hi: Python ints (inclusive).

    Returns (starts_hi uint64[m], starts_lo uint64[m], ranks int32[m]).
    """
    end = 1 << 128
    points = sorted({0, *lo, *(h + 1 for h in hi if h + 1 < end)})
    index = {p: i for i, p in enumerate(points)}
    n = len(points)
    order = np.argsort(np.asarray(rank, dtype=np.int32), kind="stable")
    first = np.array([index[lo[i]] for i in order], dtype=np.int64)
    last = np.array([index[hi[i] + 1] if hi[i] + 1 < end else n for i in order], dtype=np.int64)
    ranks = _paint_min_rank(first, last, np.asarray(rank, dtype=np.int32)[order], n)
    pts = np.array(points, dtype=object)
    pts, ranks = _merge_equal(pts, ranks)
    starts_hi = np.array([p >> 64 for p in pts], dtype=np.uint64)
    starts_lo = np.array([p & 0xFFFFFFFFFFFFFFFF for p in pts], dtype=np.uint64)
    return starts_hi, starts_lo, ranks
