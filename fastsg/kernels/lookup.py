"""Scalar per-packet helpers and the table section indexes the kernels use.

Kernels read the flat table blobs ``I`` (int32), ``U32``, ``U64``, ``U8`` of
``compile.tables.KernelTables``; a section starts at ``O[_SECTION]``.

Why the kernels are written as one loop body, not as helpers taking arrays: numba
reference-counts every array argument of a called function that loops or branches (an
atomic add and subtract per array per call).  Measured here, a hash lookup in a helper ran
at 30 M/s against 50 M/s written in the loop, and a classify built from such helpers at
2 M packets/s; with two threads the shared counters made it slower still.  So only
helpers on scalars live here.
"""
from __future__ import annotations

import numpy as np

from ..compile.addrmap import hash4, hash6
from ..compile.policy import FRAG_KEY
from ..compile import tables as T
from ..compile.tables import SECTION
from ..config import njit

NO_RANK = 0x7FFFFFFF
_LOW32 = np.uint64(0xFFFFFFFF)
RULE_DEFAULT = 0
ACCEPT, DROP, REJECT, UNMANAGED, MALFORMED = 0, 1, 2, 3, 4

# section indexes into O (numba freezes these globals as constants)
_PD = SECTION["pd"]
_RANK = SECTION["rank"]
_SLOT = SECTION["slot"]
_PT_START_KEY = SECTION["pt_start_key"]
_PT_CLASS = SECTION["pt_class"]
_CLS = SECTION["cls"]
_V4_RANK = SECTION["v4_rank"]
_V6_RANK = SECTION["v6_rank"]
_GRP = SECTION["grp"]
_INST = SECTION["inst"]
_INST_GROUP_LIST = SECTION["inst_group_list"]
_ADDR6_VAL = SECTION["addr6_val"]
_V4_START = SECTION["v4_start"]
_ADDR4 = SECTION["addr4"]
_V6_START_HI = SECTION["v6_start_hi"]
_V6_START_LO = SECTION["v6_start_lo"]
_ADDR6_HI = SECTION["addr6_hi"]
_ADDR6_LO = SECTION["addr6_lo"]
_PD_PROTO_SLOT = SECTION["pd_proto_slot"]


@njit(inline=True)
def le_position(A, base, m, x):
    """Position of the last of the ``m`` sorted keys ``A[base:base + m]`` that is <= ``x``
    (the first key is a table's least value and always <= x): halve down to 16 keys, then
    count the keys <= x in one contiguous run (branch-free, vectorised), which takes fewer
    dependent loads than a binary search.  Inlined: arrays in, no call, no refcount."""
    while m > 16:
        half = m >> 1
        base += half * (A[base + half] <= x)
        m -= half
    cnt = 0
    for q in range(1, m):
        cnt += A[base + q] <= x
    return base + cnt


@njit(inline=True)
def ranked_outcome(I, o_rank, prec, best):
    """``(verdict, rule)`` (int64) of a check whose least matching rank is ``best`` in the
    policy direction whose record starts at ``prec``: the ranked rule's action and index,
    or the combining order's default (RULE_DEFAULT) when nothing matched (NO_RANK)."""
    if best == NO_RANK:
        return (np.int64(ACCEPT) if I[prec + T.PD_DEFAULT_ACCEPT] else np.int64(DROP)), \
            np.int64(RULE_DEFAULT)
    rrec = o_rank + (I[prec + T.PD_RANK_START] + best) * T.RANK_STRIDE
    return np.int64(I[rrec + T.RANK_ACTION]), np.int64(I[rrec + T.RANK_RULE])


@njit(inline=True)
def port_key(proto, dport, icmp_type, icmp_code, frag):
    """The packet's port key (see compile/policy.py): int32."""
    key = np.int32(0)
    if frag != 0:
        key = np.int32(FRAG_KEY)
    elif proto == 6 or proto == 17:
        key = np.int32(dport)
    elif proto == 1 or proto == 58:
        key = np.int32(icmp_type) * 256 + np.int32(icmp_code)
    return key


@njit()
def find_instance(I, U64, O, shift4, shift6, ipver, hi, lo):
    """Address -> ``inst * 2 + is_public`` of the running instance it belongs to, or -1.

    (The fast kernel writes this probe inline; this helper serves the baselines.)
    """
    val = np.int64(-1)
    if ipver == 4:
        a = np.uint32(lo)
        mask = (np.int64(1) << (64 - shift4)) - 1
        h = np.int64(hash4(a, shift4))
        e = U64[O[_ADDR4] + h]
        while (e & _LOW32) != _LOW32 and np.uint32(e >> np.uint64(32)) != a:
            h = (h + 1) & mask
            e = U64[O[_ADDR4] + h]
        val = np.int64(np.int32(np.uint32(e & _LOW32)))
    else:
        mask = (np.int64(1) << (64 - shift6)) - 1
        h = np.int64(hash6(hi, lo, shift6))
        while I[O[_ADDR6_VAL] + h] != -1 and (U64[O[_ADDR6_HI] + h] != hi or U64[O[_ADDR6_LO] + h] != lo):
            h = (h + 1) & mask
        val = np.int64(I[O[_ADDR6_VAL] + h])
    return val
