"""Per-packet helpers and the table section indexes the kernels use.

Kernels read the flat table blobs ``I`` (int32), ``U32``, ``U64``, ``U8`` of
``compile.tables.KernelTables``; a section starts at ``O[_SECTION]``.

Why the table steps are inline helpers (``@njit(inline=True)``, merged into the caller at
numba's IR level) and never called functions: numba reference-counts every array argument
of a called function that loops or branches (an atomic add and subtract per array per
call).  Measured here, a hash lookup in a called helper ran at 30 M/s against 50 M/s
written in the loop, and a classify built from such helpers at 2 M packets/s.  Inlined,
arrays passed as arguments cost nothing (3 ns for a two-load lookup either way); the one
thing to avoid is passing a tuple of arrays (``KernelTables``) into an inline helper, which
costs a count update per member per call (14 ns).  ``find_instance`` is a called helper:
it serves only the baselines.

Hot paths index arrays with unsigned integers (``A[np.uint64(i)]``): for a signed index
numba emits a negative-index fix-up (a compare and an add, and the array's length kept live
in a register), which in the big tracking walk spilled registers and kept loops from
vectorising.  Measured on warm tables (10k rules, 500k packets, one process, alternating):
the walk at 115-120 ns a packet with signed indexes, 89-97 with unsigned ones.  Never mix
an unsigned value into other arithmetic: numba types int64 + uint64 as float64.
"""
from __future__ import annotations

import numpy as np

from ..compile.addrmap import hash4, hash6
from ..compile.policy import FRAG_KEY
from ..compile import tables as T
from ..compile.tables import SECTION
from ..config import njit
from .llvm_hints import select_unpredictable

NO_RANK = 0x7FFFFFFF
_LOW32 = np.uint64(0xFFFFFFFF)
_MASK30 = np.uint64((1 << 30) - 1)
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
def pack_outcome(verdict, egress_rule, ingress_rule):
    """A packet's outcome as one uint64, the form the flow caches keep (the stateless
    kernel's and the tracking walk's): ``verdict | (egress_rule + 1) << 4 |
    (ingress_rule + 1) << 34`` (rules -1 where the check did not happen)."""
    return np.uint64(verdict) | (np.uint64(egress_rule + 1) << np.uint64(4)) \
        | (np.uint64(ingress_rule + 1) << np.uint64(34))


@njit(inline=True)
def pack_pair(a, b):
    """Two int64 values >= -1 as one uint64: ``(a + 1) | (b + 1) << 32`` (address values,
    slot indexes)."""
    return np.uint64(a + 1) | (np.uint64(b + 1) << np.uint64(32))


@njit(inline=True)
def cache_outputs(packed, vals, iu, vshift, verdict, egress_rule, ingress_rule, src_val,
                  dst_val):
    """Packet ``iu``'s outputs from a cached outcome word (``pack_outcome``) and values
    word (``pack_pair`` of the address values, written shifted right by ``vshift``)."""
    verdict[iu] = np.uint8(packed & np.uint64(15))
    egress_rule[iu] = np.int32(np.int64((packed >> np.uint64(4)) & _MASK30) - 1)
    ingress_rule[iu] = np.int32(np.int64(packed >> np.uint64(34)) - 1)
    src_val[iu] = np.int32((np.int64(vals & _LOW32) - 1) >> vshift)
    dst_val[iu] = np.int32((np.int64(vals >> np.uint64(32)) - 1) >> vshift)


@njit(inline=True)
def zeros_line_aligned(size):
    """Zeroed uint64[size] starting on a 64-byte boundary (so no cache entry straddles
    two lines)."""
    raw = np.zeros(size + 8, np.uint64)
    start = (8 - ((np.int64(raw.ctypes.data) >> 3) & 7)) & 7
    return raw[start:start + size]


@njit(inline=True)
def le_position(A, base, m, x):
    """Position of the last of the ``m`` sorted keys ``A[base:base + m]`` that is <= ``x``
    (the first key is a table's least value and always <= x): halve down to 16 keys, then
    count the keys <= x in one contiguous run (vectorised), which takes fewer dependent
    loads than a binary search.  Each halving step is a compare and a conditional move
    (``select_unpredictable``: LLVM would otherwise make it a branch that random keys
    mispredict half the time), and indexes are unsigned (numba adds a negative-index fix-up
    to every signed one, which also keeps the count from vectorising).  Inlined: arrays in,
    no call, no refcount."""
    at = np.uint64(base)
    while m > 16:
        half = m >> 1
        at += np.uint64(select_unpredictable(A[at + np.uint64(half)] <= x, half, 0))
        m -= half
    cnt = 0
    for q in range(1, m):
        cnt += A[at + np.uint64(q)] <= x
    return np.int64(at) + cnt


@njit(inline=True)
def slot_record(I, U8, o_slot, o_proto_slot, prec, pd, proto):
    """Start of the protocol slot record of policy direction ``pd`` (record at ``prec``):
    the common protocols' records sit inside the PD record, in the order of
    ``tables.PD_INLINE_PROTOCOLS`` (6, 17, 1, 58); any other goes through the protocol map."""
    if proto == 6:
        return prec + T.PD_INLINE
    if proto == 17:
        return prec + T.PD_INLINE + 3
    if proto == 1:
        return prec + T.PD_INLINE + 6
    if proto == 58:
        return prec + T.PD_INLINE + 9
    return o_slot + (I[np.uint64(prec + T.PD_SLOT_START)] + U8[np.uint64(o_proto_slot + pd * 256 + proto)]) \
        * T.SLOT_STRIDE


@njit(inline=True)
def group_peer(I, o_inst, irec, peer_val):
    """The instance a check's peer stands for as a group member, or -1: group peers are the
    private addresses of running instances in the same region as the checking instance
    (record at ``irec``); ``peer_val`` is the peer's address-map value."""
    if peer_val < 0 or (peer_val & 1) != 0:
        return -1
    peer_inst = peer_val >> 1
    if I[np.uint64(o_inst + peer_inst * T.INST_STRIDE + T.INST_REGION)] != I[np.uint64(irec + T.INST_REGION)]:
        return -1
    return peer_inst


@njit(inline=True)
def le_position6(U64, o_hi, o_lo, base, m, hi, lo):
    """``le_position`` for IPv6 starts held as (hi, lo) uint64 halves: a branch-free
    binary search."""
    while m > 1:
        half = m >> 1
        mid = base + half
        mh = U64[o_hi + mid]
        le = (mh < hi) | ((mh == hi) & (U64[o_lo + mid] <= lo))
        base += select_unpredictable(le, half, 0)
        m -= half
    return base


@njit(inline=True)
def group_rank(I, o_inst, o_inst_groups, o_grp, crec, peer_inst, best):
    """The least of ``best`` and the rank of the first group-peer rule of class record
    ``crec`` whose group instance ``peer_inst`` holds (rules by rank: the first hit decides)."""
    m = I[np.uint64(crec + T.CLS_GRP_LEN)]
    if m == 0 or peer_inst < 0:
        return best
    g0 = I[np.uint64(crec + T.CLS_GRP_START)]
    prec_i = o_inst + peer_inst * T.INST_STRIDE
    gbase = o_inst_groups + I[np.uint64(prec_i + T.INST_GROUPS_START)]
    ng = I[np.uint64(prec_i + T.INST_NGROUPS)]
    for k in range(g0, g0 + m):
        grec = o_grp + k * T.GRP_STRIDE
        r = I[np.uint64(grec + T.GRP_RANK)]
        if r >= best:
            return best
        g = I[np.uint64(grec + T.GRP_GROUP)]
        for q in range(ng):
            if I[np.uint64(gbase + q)] == g:
                return r
    return best


@njit(inline=True)
def ranked_outcome(I, o_rank, prec, best):
    """``(verdict, rule)`` (int64) of a check whose least matching rank is ``best`` in the
    policy direction whose record starts at ``prec``: the ranked rule's action and index,
    or the combining order's default (RULE_DEFAULT) when nothing matched (NO_RANK)."""
    if best == NO_RANK:
        return (np.int64(ACCEPT) if I[np.uint64(prec + T.PD_DEFAULT_ACCEPT)] else np.int64(DROP)), \
            np.int64(RULE_DEFAULT)
    rrec = o_rank + (I[np.uint64(prec + T.PD_RANK_START)] + best) * T.RANK_STRIDE
    return np.int64(I[np.uint64(rrec + T.RANK_ACTION)]), np.int64(I[np.uint64(rrec + T.RANK_RULE)])


@njit(inline=True)
def port_key(proto, dport, icmp_type, icmp_code, frag):
    """The packet's port key (see compile/policy.py): int32.  The destination port for TCP
    and UDP, ``type * 256 + code`` for ICMP and ICMPv6, 0 for other protocols, FRAG_KEY for
    a non-first fragment.  Branches: the tracking walk's form (see ``port_key_select``)."""
    key = np.int32(0)
    if frag != 0:
        key = np.int32(FRAG_KEY)
    elif proto == 6 or proto == 17:
        key = np.int32(dport)
    elif proto == 1 or proto == 58:
        key = np.int32(icmp_type) * 256 + np.int32(icmp_code)
    return key


@njit(inline=True)
def port_key_select(proto, dport, icmp_type, icmp_code, frag):
    """``port_key`` without branches (flags times values, one conditional move), for the
    stateless kernel: mixed traffic makes the protocol tests unpredictable, and as
    branches they cost its cached classify 10% at 100 rules and 2-8% at 10k (in-process
    A/B, 15-21 rounds).  The tracking walk keeps the branches: with this form its
    steady state over a million live TCP flows (one protocol, every branch predicted)
    ran 8.1 against 7.1 and 8.8 against 7.5 Mpps."""
    pr = np.int64(proto)
    l4 = np.int64((pr == 6) | (pr == 17))
    icmp = np.int64((pr == 1) | (pr == 58))
    key = l4 * np.int64(dport) + icmp * (np.int64(icmp_type) * 256 + np.int64(icmp_code))
    return np.int32(select_unpredictable(frag != 0, np.int64(FRAG_KEY), key))


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
