"""One packet's address lookup and one check against the compiled tables (spec sections 2, 3).

Helpers inlined at numba's IR level into the tracking walk (``track._walk``), which
evaluates the rules only for the checks its tables do not accept, so they cost no call.
The tables are passed as the blobs of ``KernelTables`` (``I`` int32, ``U32``, ``U64``,
``U8``), taken out of the tuple once before the kernel's loop, and everything else as
scalars: passing the tuple itself costs a reference-count update of every member per call
(measured here: 14 ns against 3 ns for a two-load lookup).  The section offsets come as
``offs``, a tuple of scalars read once per kernel call (``section_offsets``): read from
``O`` at each use they cost a fifth of the speed of a check (the loads cannot be hoisted
past the kernel's stores).

The stateless kernel (``classify._classify_block``) shares two of the table steps
(``lookup.le_position``, ``lookup.ranked_outcome``) but keeps the rest written out in its
loop, with every section offset a local: measured on the same packets without its flow
cache, 8.0 against 6.7 Mpps at 10k rules and 15.4 against 12.6 at 100 rules through
``rules_check``; moving the slot, group-peer and IPv6 steps into the shared helpers too
looked ~10% slower at 10k and 100k rules in alternating-process runs (within this
machine's noise, but the hot path is not worth the risk).  The differential tests hold
both to the naive reference.
"""
from __future__ import annotations

import numpy as np

from ..compile import tables as T
from ..compile.addrmap import hash4, hash6
from ..config import njit
from .lookup import (_ADDR4, _ADDR6_HI, _ADDR6_LO, _ADDR6_VAL, _CLS, _GRP, _INST,
                     _INST_GROUP_LIST, _PD, _PD_PROTO_SLOT, _PT_CLASS, _PT_START_KEY, _RANK,
                     _SLOT, _V4_RANK, _V4_START, _V6_RANK, _V6_START_HI, _V6_START_LO, NO_RANK,
                     group_peer, group_rank, le_position, le_position6, ranked_outcome,
                     slot_record)

_LOW32 = np.uint64(0xFFFFFFFF)

# positions in the ``offs`` tuple
(OFF_ADDR4, OFF_ADDR6_HI, OFF_ADDR6_LO, OFF_ADDR6_VAL, OFF_INST, OFF_INST_GROUPS, OFF_PD,
 OFF_PROTO_SLOT, OFF_SLOT, OFF_PT_KEY, OFF_PT_CLASS, OFF_CLS, OFF_V4_START, OFF_V4_RANK,
 OFF_V6_HI, OFF_V6_LO, OFF_V6_RANK, OFF_GRP, OFF_RANK) = range(19)


@njit(inline=True)
def section_offsets(O):
    """The table section starts the helpers use, as a tuple of int64 (positions OFF_*)."""
    return (O[_ADDR4], O[_ADDR6_HI], O[_ADDR6_LO], O[_ADDR6_VAL], O[_INST], O[_INST_GROUP_LIST],
            O[_PD], O[_PD_PROTO_SLOT], O[_SLOT], O[_PT_START_KEY], O[_PT_CLASS], O[_CLS],
            O[_V4_START], O[_V4_RANK], O[_V6_START_HI], O[_V6_START_LO], O[_V6_RANK], O[_GRP],
            O[_RANK])


@njit(inline=True)
def addr_value(I, U64, offs, shift4, shift6, ver, hi, lo):
    """Address (``hi``/``lo`` uint64 halves; IPv4 in ``lo``) -> ``inst * 2 + is_public`` of
    the running instance that owns it, or -1 (int64).  One linear-probing hash lookup;
    ``shift4``/``shift6``: ``KernelTables.addr4_shift``/``addr6_shift``."""
    if ver == 4:
        mask4 = (np.int64(1) << (64 - shift4)) - 1
        o_addr4 = offs[OFF_ADDR4]
        a = np.uint32(lo)
        h = np.int64(hash4(a, shift4))
        e = U64[np.uint64(o_addr4 + h)]
        while (e & _LOW32) != _LOW32 and np.uint32(e >> np.uint64(32)) != a:
            h = (h + 1) & mask4
            e = U64[np.uint64(o_addr4 + h)]
        return np.int64(np.int32(np.uint32(e & _LOW32)))
    mask6 = (np.int64(1) << (64 - shift6)) - 1
    o_hi, o_lo, o_val = offs[OFF_ADDR6_HI], offs[OFF_ADDR6_LO], offs[OFF_ADDR6_VAL]
    h = np.int64(hash6(hi, lo, shift6))
    while I[np.uint64(o_val + h)] != -1 and (U64[np.uint64(o_hi + h)] != hi
                                             or U64[np.uint64(o_lo + h)] != lo):
        h = (h + 1) & mask6
    return np.int64(I[np.uint64(o_val + h)])


@njit(inline=True)
def rules_check(I, U32, U64, U8, offs, inst, direction, ver, proto, key, peer_hi, peer_lo, peer_val):
    """One check of the rules at instance ``inst`` (``direction`` 1 egress, 0 ingress) for a
    packet of IP version ``ver``, protocol ``proto`` and port key ``key`` (see
    ``lookup.port_key``) whose other end is ``peer_hi``/``peer_lo`` (address-map value
    ``peer_val``, -1 when no running instance owns it).  Returns ``(verdict, rule)``:
    ACCEPT/DROP/REJECT and the deciding rule's index (RULE_DEFAULT when none matched).

    Protocol slot of the instance's policy direction; least rank of the slot's wild class
    and of the port class of the key; each class gives the least rank of its IPv4/IPv6
    interval table at the peer address and of its group-peer rules whose group the peer's
    instance holds; the least rank names the deciding rule, none means the order's default.
    """
    irec = offs[OFF_INST] + inst * T.INST_STRIDE
    pd = I[np.uint64(irec + T.INST_POLICY)] * 2 + direction
    prec = offs[OFF_PD] + pd * T.PD_STRIDE
    srec = slot_record(I, U8, offs[OFF_SLOT], offs[OFF_PROTO_SLOT], prec, pd, proto)
    peer_inst = group_peer(I, offs[OFF_INST], irec, peer_val)
    best = NO_RANK
    for part in range(2):
        c = -1
        if part == 0:
            c = I[np.uint64(srec + T.SLOT_WILD)]
        else:
            m = I[np.uint64(srec + T.SLOT_PT_LEN)]
            if m > 0:
                o_pt_key = offs[OFF_PT_KEY]
                at = le_position(I, o_pt_key + I[np.uint64(srec + T.SLOT_PT_START)], m, key)
                c = I[np.uint64(offs[OFF_PT_CLASS] - o_pt_key + at)]
        if c < 0:
            continue
        crec = offs[OFF_CLS] + c * T.CLS_STRIDE
        # class c: interval table of the peer's IP version
        if ver == 4:
            m = I[np.uint64(crec + T.CLS_V4_LEN)]
            x = np.uint32(peer_lo)
            if 0 < m <= T.CLS_INLINE:     # the table sits in the record itself
                cnt = 0
                for q in range(1, m):
                    cnt += np.uint32(I[np.uint64(crec + T.CLS_V4_INLINE_START + q)]) <= x
                r = I[np.uint64(crec + T.CLS_V4_INLINE_RANK + cnt)]
                if r < best:
                    best = r
            elif m > 0:
                o_v4_start = offs[OFF_V4_START]
                at = le_position(U32, o_v4_start + I[np.uint64(crec + T.CLS_V4_START)], m, x)
                r = I[np.uint64(offs[OFF_V4_RANK] - o_v4_start + at)]
                if r < best:
                    best = r
        else:
            m = I[np.uint64(crec + T.CLS_V6_LEN)]
            if m > 0:
                at = le_position6(U64, offs[OFF_V6_HI], offs[OFF_V6_LO],
                                  I[np.uint64(crec + T.CLS_V6_START)], m, peer_hi, peer_lo)
                r = I[np.uint64(offs[OFF_V6_RANK] + at)]
                if r < best:
                    best = r
        # group-peer rules by rank: the first whose group the peer holds decides
        best = group_rank(I, offs[OFF_INST], offs[OFF_INST_GROUPS], offs[OFF_GRP], crec,
                          peer_inst, best)
    return ranked_outcome(I, offs[OFF_RANK], prec, best)
