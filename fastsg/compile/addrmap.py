"""Address -> instance hash tables (open addressing, linear probing, power-of-two size).

The value of a slot is ``instance_index * 2 + is_public`` (-1: empty).  An IPv4 slot is
one uint64, ``address << 32 | value``, so a probe is one load.  The table is at
most half full, so a lookup usually reads one slot.  IPv4 and IPv6 have separate tables
so an IPv6 address like ``::10.0.0.1`` never collides with the IPv4 ``10.0.0.1``.
"""
from __future__ import annotations

import numpy as np

from ..config import njit

_MUL = np.uint64(0x9E3779B97F4A7C15)     # Fibonacci hashing: good spread, one multiply
_MUL2 = np.uint64(0xC2B2AE3D27D4EB4F)


@njit(inline=True)
def hash4(addr, shift):
    return (np.uint64(addr) * _MUL) >> np.uint64(shift)


@njit(inline=True)
def hash6(hi, lo, shift):
    return ((hi * _MUL2) ^ lo) * _MUL >> np.uint64(shift)


def table_bits(n: int) -> int:
    """log2 of a table size holding ``n`` keys at most half full (at least 16 slots)."""
    return max(4, int(2 * max(n, 1) - 1).bit_length())


@njit()
def _build4(keys, vals, bits):
    size = 1 << bits
    shift = 64 - bits
    slots = np.full(size, 0xFFFFFFFF, np.uint64)
    mask = size - 1
    for i in range(len(keys)):
        h = np.int64(hash4(keys[i], shift))
        while (slots[h] & np.uint64(0xFFFFFFFF)) != np.uint64(0xFFFFFFFF):
            h = (h + 1) & mask
        slots[h] = (np.uint64(keys[i]) << np.uint64(32)) | np.uint64(np.uint32(vals[i]))
    return slots


@njit()
def _build6(hi, lo, vals, bits):
    size = 1 << bits
    shift = 64 - bits
    th = np.zeros(size, np.uint64)
    tl = np.zeros(size, np.uint64)
    tv = np.full(size, -1, np.int32)
    mask = size - 1
    for i in range(len(hi)):
        h = np.int64(hash6(hi[i], lo[i], shift))
        while tv[h] != -1:
            h = (h + 1) & mask
        th[h] = hi[i]
        tl[h] = lo[i]
        tv[h] = vals[i]
    return th, tl, tv


def build_v4(keys: np.ndarray, vals: np.ndarray):
    """keys uint32[k] (distinct), vals int32[k] (>= 0) -> (slots uint64[2**bits], bits)."""
    bits = table_bits(len(keys))
    return _build4(keys.astype(np.uint32), vals.astype(np.int32), bits), bits


def build_v6(hi: np.ndarray, lo: np.ndarray, vals: np.ndarray):
    """hi, lo uint64[k] (distinct pairs), vals int32[k] -> (slot_hi, slot_lo, slot_vals, bits)."""
    bits = table_bits(len(hi))
    th, tl, tv = _build6(hi.astype(np.uint64), lo.astype(np.uint64), vals.astype(np.int32), bits)
    return th, tl, tv, bits
