"""Bulk stateless classification (spec sections 2 and 3).

Private kernel; ``fastsg.engine.Engine.classify`` validates, allocates and dispatches.
Packets are independent without tracking, so each thread takes one contiguous run of
packets (its flow cache lives across the run) and the result is exactly the sequential one.  The per-packet steps are written in the loop body (see
``lookup.py`` for why), in this order:

1. status: non-IP -> UNMANAGED, malformed -> MALFORMED;
2. source and destination address -> running instance (hash probe);
3. egress check at the source's instance (peer = destination), then, if it accepted,
   ingress check at the destination's instance (peer = source).  A check: protocol slot of
   the instance's policy direction; least rank of the slot's wild class and of the port
   class of the packet's port key; each class gives the least rank of its IPv4/IPv6
   interval table at the peer address and of its group-peer rules whose group the peer's
   instance holds; the least rank names the deciding rule, none means the order's default.
"""
from __future__ import annotations

import numpy as np
from numba import prange

from ..compile import tables as T
from ..compile.addrmap import _MUL, _MUL2, hash4, hash6
from ..config import BLOCK_PACKETS, GROUPED_MISSES_MIN_BYTES, MISS_GROUP, njit
from ..schema import STATUS_IP, STATUS_MALFORMED
from .check import addr_value, section_offsets
from .llvm_hints import select_unpredictable
from .lookup import (_ADDR4, _ADDR6_HI, _ADDR6_LO, _ADDR6_VAL, _CLS, _GRP, _INST, _INST_GROUP_LIST,
                     _PD, _PD_PROTO_SLOT, _PT_CLASS, _PT_START_KEY, _RANK, _SLOT, _V4_RANK,
                     _V4_START, _V6_RANK, _V6_START_HI, _V6_START_LO, ACCEPT, MALFORMED, NO_RANK,
                     UNMANAGED, cache_outputs, group_rank, le_position, le_position6,
                     pack_outcome, pack_pair, port_key_select, ranked_outcome,
                     zeros_line_aligned)

_LOW32 = np.uint64(0xFFFFFFFF)
MODE_STATELESS, MODE_BOTH, MODE_ADDRESSES = 0, 1, 2
# a flow-cache outcome word whose key's first packet is queued as a miss (low half: which)
_PENDING = np.uint64(1 << 63)


@njit()
def _flow_cache(cache_bits):
    """A thread's flow cache for ``cache_bits`` >= 1: ``(cache, shift4, shift6, base6)``.

    ``cache`` is uint64, zeroed (a zero word is never a valid entry: the second word of
    every entry has bit 40 set), aligned to 64 bytes so that no entry straddles two cache
    lines.  Both parts are direct-mapped:

    * IPv4: ``2 ** cache_bits`` entries of 4 words from 0, ``[src << 32 | dst,
      1 << 40 | proto << 20 | key, outcome, values]``, the entry ``hash >> shift4``;
    * IPv6: ``2 ** (cache_bits - 2)`` entries (at least 2) of 8 words from ``base6``,
      ``[digest, the same second word, outcome, values, src_hi, src_lo, dst_hi, dst_lo]``,
      the entry ``(digest * _MUL) >> shift6``.  Without it the bench's 6% of IPv6 packets
      cost a quarter of the time at 10k rules (144 ns each, against 54 ns a packet).

    ``outcome`` packs ``verdict | (egress_rule + 1) << 4 | (ingress_rule + 1) << 34``,
    ``values`` ``(src_val + 1) | (dst_val + 1) << 32``.  (Two ways per IPv4 set would cut the
    bench's misses from 10.4% to 8.7% of packets, 8.5% being first packets of their key,
    but measured 10% slower at 100 rules and no faster at 10k.)
    """
    bits4 = max(cache_bits, 1)
    bits6 = max(cache_bits - 2, 1)
    base6 = 4 << bits4
    size = base6 + (8 << bits6)
    return zeros_line_aligned(size), np.uint64(64 - bits4), np.uint64(64 - bits6), np.int64(base6)


@njit(inline=True)
def _cache_entry(cache, shift4, shift6, base6, ver, proto, key, s_hi, s_lo, d_hi, d_lo):
    """A packet's flow-cache entry (see ``_flow_cache``): ``(put, hit, k1, k2)``, the
    entry's start in ``cache``, whether it holds this packet's key, and the key's two
    words (what a fill writes at ``put`` and ``put + 1``)."""
    k2 = (np.uint64(1) << np.uint64(40)) | (np.uint64(proto) << np.uint64(20)) | np.uint64(key)
    if ver == 4:
        k1 = (s_lo << np.uint64(32)) | d_lo
        put = 4 * np.int64(((k1 ^ (k2 * _MUL2)) * _MUL) >> shift4)
        hit = cache[np.uint64(put)] == k1 and cache[np.uint64(put + 1)] == k2
    else:
        k1 = (s_hi * _MUL2) ^ s_lo ^ ((d_hi * _MUL2 ^ d_lo) * _MUL) ^ k2
        put = base6 + 8 * np.int64((k1 * _MUL) >> shift6)
        hit = (cache[np.uint64(put)] == k1 and cache[np.uint64(put + 1)] == k2
               and cache[np.uint64(put + 4)] == s_hi and cache[np.uint64(put + 5)] == s_lo
               and cache[np.uint64(put + 6)] == d_hi and cache[np.uint64(put + 7)] == d_lo)
    return put, hit, k1, k2


@njit(inline=True)
def _cache_claim(cache, put, ver, k1, k2, outcome, s_hi, s_lo, d_hi, d_lo):
    """Write a key into its flow-cache entry at ``put`` with outcome word ``outcome`` (the
    addresses too for IPv6; the values word is the caller's)."""
    if ver != 4:
        cache[np.uint64(put + 4)] = s_hi
        cache[np.uint64(put + 5)] = s_lo
        cache[np.uint64(put + 6)] = d_hi
        cache[np.uint64(put + 7)] = d_lo
    cache[np.uint64(put)] = k1
    cache[np.uint64(put + 1)] = k2
    cache[np.uint64(put + 2)] = outcome


@njit()
def _classify_block(t, p, cache_bits, mode, lo, hi, verdict, egress_rule, ingress_rule,
                    src_val, dst_val):
    """Packets ``lo..hi-1`` of ``_classify_rules`` with one flow cache.  A plain function:
    called directly for a one-thread call, its loop runs faster than the same loop in a
    ``prange`` body (see ``classify_packets``)."""
    I, U32, U64, U8, O = t.i32, t.u32, t.u64, t.u8, t.off
    shift4, shift6 = t.addr4_shift, t.addr6_shift
    mask4 = (np.int64(1) << (64 - shift4)) - 1
    mask6 = (np.int64(1) << (64 - shift6)) - 1
    # section starts as scalars: one load per table access instead of two
    o_addr4, o_addr6_hi, o_addr6_lo, o_addr6_val = O[_ADDR4], O[_ADDR6_HI], O[_ADDR6_LO], O[_ADDR6_VAL]
    o_inst, o_inst_groups, o_pd, o_proto_slot = O[_INST], O[_INST_GROUP_LIST], O[_PD], O[_PD_PROTO_SLOT]
    o_slot, o_pt_key, o_pt_class, o_cls = O[_SLOT], O[_PT_START_KEY], O[_PT_CLASS], O[_CLS]
    o_v4_start, o_v4_rank, o_v6_hi, o_v6_lo, o_v6_rank = (O[_V4_START], O[_V4_RANK], O[_V6_START_HI],
                                                          O[_V6_START_LO], O[_V6_RANK])
    o_grp, o_rank = O[_GRP], O[_RANK]
    status, ipver, proto, dport = p.status, p.ipver, p.proto, p.dport
    src_hi, src_lo, dst_hi, dst_lo = p.src_hi, p.src_lo, p.dst_hi, p.dst_lo
    icmp_type, icmp_code, frag = p.icmp_type, p.icmp_code, p.frag
    cache, cache_shift4, cache_shift6, base6 = _flow_cache(cache_bits)
    # MODE_STATELESS writes instance indexes (value >> 1: the caller's Result wants them,
    # and a numpy pass over the columns afterwards is serial work); other modes the values
    vshift = 1 if mode == MODE_STATELESS else 0
    use_cache = cache_bits > 0 and mode != MODE_ADDRESSES
    for i in range(lo, hi):
        iu = np.uint64(i)            # unsigned indexes: see lookup.py
        st = status[iu]
        if st != STATUS_IP:
            verdict[iu] = MALFORMED if st == STATUS_MALFORMED else UNMANAGED
            egress_rule[iu] = -1
            ingress_rule[iu] = -1
            src_val[iu] = -1
            dst_val[iu] = -1
            continue
        ver = ipver[iu]
        key = port_key_select(proto[iu], dport[iu], icmp_type[iu], icmp_code[iu], frag[iu])
        put = -1           # cache entry to fill after a miss (-1: none)
        k1 = np.uint64(0)
        k2 = np.uint64(0)
        if use_cache:
            put, hit, k1, k2 = _cache_entry(cache, cache_shift4, cache_shift6, base6, ver,
                                            proto[iu], key, src_hi[iu], src_lo[iu],
                                            dst_hi[iu], dst_lo[iu])
            if hit:
                cache_outputs(cache[np.uint64(put + 2)], cache[np.uint64(put + 3)], iu, vshift,
                               verdict, egress_rule, ingress_rule, src_val, dst_val)
                continue
        # -- 2. addresses -> instances (value inst*2 + is_public, -1 none)
        s_val = -1
        d_val = -1
        for side in range(2):
            hi = src_hi[iu] if side == 0 else dst_hi[iu]
            lo = src_lo[iu] if side == 0 else dst_lo[iu]
            if ver == 4:
                a = np.uint32(lo)
                h = np.int64(hash4(a, shift4))
                e = U64[np.uint64(o_addr4 + h)]
                while (e & _LOW32) != _LOW32 and np.uint32(e >> np.uint64(32)) != a:
                    h = (h + 1) & mask4
                    e = U64[np.uint64(o_addr4 + h)]
                val = np.int64(np.int32(np.uint32(e & _LOW32)))
            else:
                h = np.int64(hash6(hi, lo, shift6))
                while I[np.uint64(o_addr6_val + h)] != -1 and (U64[np.uint64(o_addr6_hi + h)] != hi
                                                    or U64[np.uint64(o_addr6_lo + h)] != lo):
                    h = (h + 1) & mask6
                val = np.int64(I[np.uint64(o_addr6_val + h)])
            if side == 0:
                s_val = val
            else:
                d_val = val
        if mode == MODE_ADDRESSES:
            src_val[iu] = np.int32(s_val)
            dst_val[iu] = np.int32(d_val)
            continue
        v = UNMANAGED
        eg = -1
        ig = -1
        ev = 3
        iv = 3
        if s_val >= 0 or d_val >= 0:
            v = ACCEPT
            # -- 3. egress check (side 0) then ingress check (side 1)
            for side in range(2):
                if side == 0:
                    if s_val < 0:
                        continue
                    inst = s_val >> 1
                    direction = 1
                    peer_hi = dst_hi[iu]
                    peer_lo = dst_lo[iu]
                    peer_val = d_val
                else:
                    if d_val < 0 or (v != ACCEPT and mode == MODE_STATELESS):
                        continue
                    inst = d_val >> 1
                    direction = 0
                    peer_hi = src_hi[iu]
                    peer_lo = src_lo[iu]
                    peer_val = s_val
                irec = o_inst + inst * T.INST_STRIDE
                pd = I[np.uint64(irec + T.INST_POLICY)] * 2 + direction
                prec = o_pd + pd * T.PD_STRIDE
                pr = proto[iu]
                # inline slot records follow tables.PD_INLINE_PROTOCOLS = (6, 17, 1, 58)
                if pr == 6:
                    srec = prec + T.PD_INLINE
                elif pr == 17:
                    srec = prec + T.PD_INLINE + 3
                elif pr == 1:
                    srec = prec + T.PD_INLINE + 6
                elif pr == 58:
                    srec = prec + T.PD_INLINE + 9
                else:
                    srec = o_slot + (I[np.uint64(prec + T.PD_SLOT_START)]
                                     + U8[np.uint64(o_proto_slot + pd * 256 + pr)]) * T.SLOT_STRIDE
                # group peers: private addresses of running instances in the same region
                peer_inst = -1
                if peer_val >= 0 and (peer_val & 1) == 0:
                    peer_inst = peer_val >> 1
                    peer_region = I[np.uint64(o_inst + peer_inst * T.INST_STRIDE + T.INST_REGION)]
                    if peer_region != I[np.uint64(irec + T.INST_REGION)]:
                        peer_inst = -1
                best = NO_RANK
                for part in range(2):
                    c = -1
                    if part == 0:
                        c = I[np.uint64(srec + T.SLOT_WILD)]
                    else:
                        m = I[np.uint64(srec + T.SLOT_PT_LEN)]
                        if m > 0:
                            at = le_position(I, o_pt_key + I[np.uint64(srec + T.SLOT_PT_START)], m, key)
                            c = I[np.uint64(o_pt_class - o_pt_key + at)]
                    if c < 0:
                        continue
                    crec = o_cls + c * T.CLS_STRIDE
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
                            at = le_position(U32, o_v4_start + I[np.uint64(crec + T.CLS_V4_START)], m, x)
                            r = I[np.uint64(o_v4_rank - o_v4_start + at)]
                            if r < best:
                                best = r
                    else:
                        m = I[np.uint64(crec + T.CLS_V6_LEN)]
                        if m > 0:
                            base = I[np.uint64(crec + T.CLS_V6_START)]
                            while m > 1:
                                half = m >> 1
                                mid = base + half
                                mh = U64[np.uint64(o_v6_hi + mid)]
                                le = (mh < peer_hi) | ((mh == peer_hi) & (U64[np.uint64(o_v6_lo + mid)] <= peer_lo))
                                base += select_unpredictable(le, half, 0)
                                m -= half
                            r = I[np.uint64(o_v6_rank + base)]
                            if r < best:
                                best = r
                    # group-peer rules by rank: the first whose group the peer holds decides
                    m = I[np.uint64(crec + T.CLS_GRP_LEN)]
                    if m > 0 and peer_inst >= 0:
                        g0 = I[np.uint64(crec + T.CLS_GRP_START)]
                        prec_i = o_inst + peer_inst * T.INST_STRIDE
                        gbase = o_inst_groups + I[np.uint64(prec_i + T.INST_GROUPS_START)]
                        ng = I[np.uint64(prec_i + T.INST_NGROUPS)]
                        for k in range(g0, g0 + m):
                            grec = o_grp + k * T.GRP_STRIDE
                            r = I[np.uint64(grec + T.GRP_RANK)]
                            if r >= best:
                                break
                            g = I[np.uint64(grec + T.GRP_GROUP)]
                            hit = False
                            for q in range(ng):
                                if I[np.uint64(gbase + q)] == g:
                                    hit = True
                                    break
                            if hit:
                                best = r
                                break
                v, rule = ranked_outcome(I, o_rank, prec, best)
                if side == 0:
                    eg = rule
                    ev = v
                else:
                    ig = rule
                    iv = v
        if mode == MODE_BOTH:
            v = ev | (iv << 2)
        verdict[iu] = v
        src_val[iu] = np.int32(s_val >> vshift)
        dst_val[iu] = np.int32(d_val >> vshift)
        egress_rule[iu] = eg
        ingress_rule[iu] = ig
        if put >= 0:
            _cache_claim(cache, put, ver, k1, k2, pack_outcome(v, eg, ig),
                         src_hi[iu], src_lo[iu], dst_hi[iu], dst_lo[iu])
            cache[np.uint64(put + 3)] = pack_pair(s_val, d_val)


@njit()
def _classify_block_grouped(t, p, cache_bits, mode, lo, hi, verdict, egress_rule,
                            ingress_rule, src_val, dst_val):
    """``_classify_block`` for big tables (``groups_misses``): flow-cache hits are answered
    as the loop meets them; a miss is queued, its cache entry marked pending so that later
    packets of the same key wait for it instead of missing too, and every MISS_GROUP
    misses are evaluated together by ``_resolve_misses``.  Same outputs.

    Allocates the flow cache and the queues and runs ``_grouped_run``, which is compiled
    without reference counting (see ``config.jit_options``)."""
    cache, cache_shift4, cache_shift6, base6 = _flow_cache(cache_bits)
    g = MISS_GROUP
    queues = (np.empty(g, np.int64),          # miss_at: packet of each queued miss
              np.empty(g, np.int64),          # miss_key: its port key
              np.empty(g, np.int64),          # miss_put: its cache entry (-1: none)
              np.empty(4 * g, np.int64),      # wait_at: packets waiting for a queued miss ...
              np.empty(4 * g, np.int64))      # wait_for: ... and which one
    _grouped_run(t, p, cache_bits, mode, lo, hi, verdict, egress_rule, ingress_rule, src_val,
                 dst_val, cache, cache_shift4, cache_shift6, base6, queues, _miss_work(g))


@njit(refcounts=False)
def _grouped_run(t, p, cache_bits, mode, lo, hi, verdict, egress_rule, ingress_rule, src_val,
                 dst_val, cache, cache_shift4, cache_shift6, base6, queues, work):
    """The loop of ``_classify_block_grouped`` (its cache, queues and scratch passed in)."""
    status, ipver, proto, dport = p.status, p.ipver, p.proto, p.dport
    src_hi, src_lo, dst_hi, dst_lo = p.src_hi, p.src_lo, p.dst_hi, p.dst_lo
    icmp_type, icmp_code, frag = p.icmp_type, p.icmp_code, p.frag
    vshift = 1 if mode == MODE_STATELESS else 0        # as in _classify_block
    use_cache = cache_bits > 0 and mode != MODE_ADDRESSES
    g = MISS_GROUP
    miss_at, miss_key, miss_put, wait_at, wait_for = queues
    i = lo
    while i < hi:
        n_miss = 0
        n_wait = 0
        # the inner loop runs until the queue is full; the (inlined) evaluation stays
        # outside it, so the hits' loop is compiled as a small loop of its own
        while i < hi and n_miss < g and n_wait < 4 * g:
            iu = np.uint64(i)            # unsigned indexes: see lookup.py
            i += 1
            st = status[iu]
            if st != STATUS_IP:
                verdict[iu] = MALFORMED if st == STATUS_MALFORMED else UNMANAGED
                egress_rule[iu] = -1
                ingress_rule[iu] = -1
                src_val[iu] = -1
                dst_val[iu] = -1
                continue
            ver = ipver[iu]
            key = port_key_select(proto[iu], dport[iu], icmp_type[iu], icmp_code[iu], frag[iu])
            put = -1
            if use_cache:
                put, hit, k1, k2 = _cache_entry(cache, cache_shift4, cache_shift6, base6, ver,
                                                proto[iu], key, src_hi[iu], src_lo[iu],
                                                dst_hi[iu], dst_lo[iu])
                if hit:
                    packed = cache[np.uint64(put + 2)]
                    if packed & _PENDING:           # its key's first packet is queued
                        wait_at[n_wait] = np.int64(iu)
                        wait_for[n_wait] = np.int64(packed & _LOW32)
                        n_wait += 1
                        continue
                    cache_outputs(packed, cache[np.uint64(put + 3)], iu, vshift, verdict,
                                   egress_rule, ingress_rule, src_val, dst_val)
                    continue
                # claim the entry now: later packets of this key wait for this miss
                _cache_claim(cache, put, ver, k1, k2, _PENDING | np.uint64(n_miss), src_hi[iu],
                             src_lo[iu], dst_hi[iu], dst_lo[iu])
            miss_at[n_miss] = np.int64(iu)
            miss_key[n_miss] = key
            miss_put[n_miss] = put
            n_miss += 1
        _resolve_misses(t, p, mode, vshift, cache, work, n_miss, miss_at, miss_key, miss_put,
                        n_wait, wait_at, wait_for, verdict, egress_rule, ingress_rule, src_val,
                        dst_val)


@njit(inline=True)
def _miss_work(g):
    """Scratch of ``_resolve_misses`` for ``g`` misses: int64 arrays (see there)."""
    return (np.empty(g, np.int64), np.empty(g, np.int64),          # s_val, d_val
            np.empty(2 * g, np.int64), np.empty(2 * g, np.int64),  # prec, peer_inst
            np.empty(2 * g, np.int64), np.empty(2 * g, np.int64),  # verdict, rule of a check
            np.empty(4 * g, np.int64), np.empty(4 * g, np.int64),  # class record, rank
            # queued table searches: owner (check or class), start, length, key
            np.empty(4 * g, np.int64), np.empty(4 * g, np.int64),
            np.empty(4 * g, np.int64), np.empty(4 * g, np.int64))


@njit(inline=True)
def _le_positions(A, at, m, x, k):
    """``lookup.le_position`` for the ``k`` searches ``at[s]`` (start in ``A``), ``m[s]``
    (keys), ``x[s]`` (the value) at once: one halving step of every search per pass, so
    the CPU overlaps their cache misses, then the last <= 16 keys of each counted.  Leaves
    each search's position in ``at``."""
    more = True
    while more:
        more = False
        for s in range(k):
            ms = m[s]
            if ms > 16:
                half = ms >> 1
                a = at[s]
                at[s] = a + select_unpredictable(A[np.uint64(a + half)] <= x[s], half, 0)
                m[s] = ms - half
                more |= ms - half > 16
    for s in range(k):
        a = np.uint64(at[s])
        xs = x[s]
        cnt = 0
        for e in range(1, m[s]):
            cnt += A[a + np.uint64(e)] <= xs
        at[s] = np.int64(a) + cnt


@njit(inline=True)
def _resolve_misses(t, p, mode, vshift, cache, work, n, miss_at, miss_key, miss_put, n_wait,
                    wait_at, wait_for, verdict, egress_rule, ingress_rule, src_val, dst_val):
    """Evaluate ``n`` queued misses (packets ``miss_at[:n]``, port keys ``miss_key``, cache
    entries ``miss_put``, -1 none), write their outputs and cache entries, then copy them
    to the ``n_wait`` packets ``wait_at`` that wait for miss ``wait_for``.

    Why in passes: on big tables nearly every step of a check is a cache miss, and each
    step's address comes from the step before (address -> instance -> policy direction ->
    protocol slot -> port class -> class record -> interval search -> rank -> rule), so one
    packet at a time the CPU waits out some twenty misses in a row (530 ns a packet at 100k
    rules).  Each pass below takes one step for every queued miss; the steps of different
    packets are independent, so the CPU overlaps their misses.  A check is ``q = 2 * j +
    side`` (side 0 egress at the source, 1 ingress at the destination) and a class of a
    check ``r = 2 * q + part`` (part 0 the slot's wild class, 1 the port class).  Both
    checks are always evaluated; MODE_STATELESS then drops the ingress check of a packet
    whose egress check refused, as the spec's order says."""
    I, U32, U64, U8, O = t.i32, t.u32, t.u64, t.u8, t.off
    shift4, shift6 = t.addr4_shift, t.addr6_shift
    o_inst, o_inst_groups, o_pd, o_proto_slot = O[_INST], O[_INST_GROUP_LIST], O[_PD], O[_PD_PROTO_SLOT]
    o_slot, o_pt_key, o_pt_class, o_cls = O[_SLOT], O[_PT_START_KEY], O[_PT_CLASS], O[_CLS]
    o_v4_start, o_v4_rank, o_v6_hi, o_v6_lo, o_v6_rank = (O[_V4_START], O[_V4_RANK], O[_V6_START_HI],
                                                          O[_V6_START_LO], O[_V6_RANK])
    o_grp, o_rank = O[_GRP], O[_RANK]
    ipver, proto = p.ipver, p.proto
    src_hi, src_lo, dst_hi, dst_lo = p.src_hi, p.src_lo, p.dst_hi, p.dst_lo
    s_vals, d_vals, prec, peer_inst, check_v, check_rule, crec, rank, s_own, s_at, s_len, s_key = work
    # -- addresses -> instances (value inst*2 + is_public, -1 none)
    offs = section_offsets(O)
    for j in range(n):
        iu = np.uint64(miss_at[j])
        ver = ipver[iu]
        s_vals[j] = addr_value(I, U64, offs, shift4, shift6, ver, src_hi[iu], src_lo[iu])
        d_vals[j] = addr_value(I, U64, offs, shift4, shift6, ver, dst_hi[iu], dst_lo[iu])
    if mode == MODE_ADDRESSES:
        for j in range(n):
            iu = np.uint64(miss_at[j])
            src_val[iu] = np.int32(s_vals[j])
            dst_val[iu] = np.int32(d_vals[j])
        return
    # -- each check: instance record -> policy direction record; group-peer instance
    for q in range(2 * n):
        j = q >> 1
        if q & 1 == 0:
            val, peer_val, direction = s_vals[j], d_vals[j], 1
        else:
            val, peer_val, direction = d_vals[j], s_vals[j], 0
        prec[q] = -1
        if val < 0:
            continue
        irec = o_inst + (val >> 1) * T.INST_STRIDE
        prec[q] = o_pd + (I[np.uint64(irec + T.INST_POLICY)] * 2 + direction) * T.PD_STRIDE
        # group peers: private addresses of running instances in the same region
        pi = -1
        if peer_val >= 0 and (peer_val & 1) == 0:
            pi = peer_val >> 1
            if I[np.uint64(o_inst + pi * T.INST_STRIDE + T.INST_REGION)] != I[np.uint64(irec + T.INST_REGION)]:
                pi = -1
        peer_inst[q] = pi
    # -- protocol slot: the wild class, and the port-table search of the key
    k = 0
    for q in range(2 * n):
        crec[2 * q] = -1
        crec[2 * q + 1] = -1
        pr = prec[q]
        if pr < 0:
            continue
        j = q >> 1
        pt = proto[np.uint64(miss_at[j])]
        # inline slot records follow tables.PD_INLINE_PROTOCOLS = (6, 17, 1, 58)
        if pt == 6:
            srec = pr + T.PD_INLINE
        elif pt == 17:
            srec = pr + T.PD_INLINE + 3
        elif pt == 1:
            srec = pr + T.PD_INLINE + 6
        elif pt == 58:
            srec = pr + T.PD_INLINE + 9
        else:
            pd = (pr - o_pd) // T.PD_STRIDE
            srec = o_slot + (I[np.uint64(pr + T.PD_SLOT_START)]
                             + U8[np.uint64(o_proto_slot + pd * 256 + pt)]) * T.SLOT_STRIDE
        c = I[np.uint64(srec + T.SLOT_WILD)]
        if c >= 0:
            crec[2 * q] = o_cls + c * T.CLS_STRIDE
        m = I[np.uint64(srec + T.SLOT_PT_LEN)]
        if m > 0:
            s_own[k] = q
            s_at[k] = o_pt_key + I[np.uint64(srec + T.SLOT_PT_START)]
            s_len[k] = m
            s_key[k] = miss_key[j]
            k += 1
    _le_positions(I, s_at, s_len, s_key, k)
    for s in range(k):
        c = I[np.uint64(o_pt_class - o_pt_key + s_at[s])]
        if c >= 0:
            crec[2 * s_own[s] + 1] = o_cls + c * T.CLS_STRIDE
    # -- class records: small IPv4 tables and IPv6 tables at once, big IPv4 ones queued
    k = 0
    for r in range(4 * n):
        rank[r] = NO_RANK
        cr = crec[r]
        if cr < 0:
            continue
        q = r >> 1
        iu = np.uint64(miss_at[q >> 1])
        if q & 1 == 0:
            peer_hi, peer_lo = dst_hi[iu], dst_lo[iu]
        else:
            peer_hi, peer_lo = src_hi[iu], src_lo[iu]
        if ipver[iu] == 4:
            m = I[np.uint64(cr + T.CLS_V4_LEN)]
            x = np.uint32(peer_lo)
            if 0 < m <= T.CLS_INLINE:     # the table sits in the record itself
                cnt = 0
                for e in range(1, m):
                    cnt += np.uint32(I[np.uint64(cr + T.CLS_V4_INLINE_START + e)]) <= x
                rank[r] = I[np.uint64(cr + T.CLS_V4_INLINE_RANK + cnt)]
            elif m > 0:
                s_own[k] = r
                s_at[k] = o_v4_start + I[np.uint64(cr + T.CLS_V4_START)]
                s_len[k] = m
                s_key[k] = x
                k += 1
        else:
            m = I[np.uint64(cr + T.CLS_V6_LEN)]
            if m > 0:
                at = le_position6(U64, o_v6_hi, o_v6_lo, I[np.uint64(cr + T.CLS_V6_START)], m,
                                  peer_hi, peer_lo)
                rank[r] = I[np.uint64(o_v6_rank + at)]
    _le_positions(U32, s_at, s_len, s_key, k)
    for s in range(k):
        rank[s_own[s]] = I[np.uint64(o_v4_rank - o_v4_start + s_at[s])]
    # -- each check: least rank, with group-peer rules; the deciding rule
    for q in range(2 * n):
        pr = prec[q]
        if pr < 0:
            continue
        best = min(rank[2 * q], rank[2 * q + 1])
        for part in range(2):
            cr = crec[2 * q + part]
            if cr >= 0:
                best = group_rank(I, o_inst, o_inst_groups, o_grp, cr, peer_inst[q], best)
        v, rule = ranked_outcome(I, o_rank, pr, best)
        check_v[q] = v
        check_rule[q] = rule
    # -- outputs, the cache entry, then the packets that waited
    for j in range(n):
        iu = np.uint64(miss_at[j])
        s_val, d_val = s_vals[j], d_vals[j]
        v = UNMANAGED
        eg = -1
        ig = -1
        ev = 3
        iv = 3
        if s_val >= 0 or d_val >= 0:
            v = ACCEPT
            if s_val >= 0:
                ev = check_v[2 * j]
                eg = check_rule[2 * j]
                v = ev
            if d_val >= 0 and (v == ACCEPT or mode != MODE_STATELESS):
                iv = check_v[2 * j + 1]
                ig = check_rule[2 * j + 1]
                v = iv
        if mode == MODE_BOTH:
            v = ev | (iv << 2)
        verdict[iu] = v
        src_val[iu] = np.int32(s_val >> vshift)
        dst_val[iu] = np.int32(d_val >> vshift)
        egress_rule[iu] = eg
        ingress_rule[iu] = ig
        put = miss_put[j]
        if put >= 0 and cache[np.uint64(put + 2)] == (_PENDING | np.uint64(j)):
            cache[np.uint64(put + 2)] = pack_outcome(v, eg, ig)
            cache[np.uint64(put + 3)] = pack_pair(s_val, d_val)
    for w in range(n_wait):
        iu = np.uint64(wait_at[w])
        ju = np.uint64(miss_at[wait_for[w]])
        verdict[iu] = verdict[ju]
        egress_rule[iu] = egress_rule[ju]
        ingress_rule[iu] = ingress_rule[ju]
        src_val[iu] = src_val[ju]
        dst_val[iu] = dst_val[ju]


@njit(parallel=True)
def _classify_rules(t, p, cache_bits, nthreads, mode, verdict, egress_rule, ingress_rule,
                    src_val, dst_val):
    """t: KernelTables; p: PacketColumns (schema columns, n each); cache_bits: log2 of the
    flow-cache entries per thread (0: no cache); nthreads: threads the work is split over.
    Fills egress_rule int32[n] and ingress_rule int32[n] (-1 where the check did not
    happen), src_val and dst_val int32[n] (address-map value of the source/destination:
    instance * 2 + is_public, -1 when no running instance owns it or the packet is not IP;
    in MODE_STATELESS the instance index, value >> 1) and verdict uint8[n].  ``mode``:

    * MODE_STATELESS: the packet's verdict (spec section 2);
    * MODE_BOTH (the rules half of stateful tracking, see ``track.py``): the ingress check
      is made even when the egress check refused, and verdict packs the rules' verdict of
      each check, ``egress | ingress << 2`` with 3 meaning "no check" (0 ACCEPT, 1 DROP,
      2 REJECT);
    * MODE_ADDRESSES: only src_val and dst_val (the parallel pass that sharding the tracking
      walk needs when the walk makes the checks itself).

    Flow cache: without tracking, a packet's outcome is a function of (source,
    destination, protocol, port key) and the immutable tables, so each thread keeps a small
    direct-mapped cache of recent outcomes (``_flow_cache``: IPv4 and IPv6 entries).
    Traffic with flow locality then mostly costs one probe.  (Big tables go through
    ``_classify_rules_grouped`` instead; see ``groups_misses``.)
    """
    n = len(p.status)
    # one contiguous run of packets per thread (at least BLOCK_PACKETS each), so each
    # thread's flow cache lives across its whole run
    nblocks = classify_blocks(n, nthreads)
    for b in prange(nblocks):
        _classify_block(t, p, cache_bits, mode, b * n // nblocks, (b + 1) * n // nblocks,
                        verdict, egress_rule, ingress_rule, src_val, dst_val)


@njit(parallel=True)
def _classify_rules_grouped(t, p, cache_bits, nthreads, mode, verdict, egress_rule,
                            ingress_rule, src_val, dst_val):
    """``_classify_rules`` with each run through ``_classify_block_grouped``: a kernel of
    its own, so the one for smaller tables stays as it was."""
    n = len(p.status)
    nblocks = classify_blocks(n, nthreads)
    for b in prange(nblocks):
        _classify_block_grouped(t, p, cache_bits, mode, b * n // nblocks,
                                (b + 1) * n // nblocks, verdict, egress_rule, ingress_rule,
                                src_val, dst_val)


@njit()
def classify_blocks(n, nthreads):
    """Contiguous runs of packets a call is split into: one per thread, each at least
    BLOCK_PACKETS long."""
    return max(1, min(nthreads, (n + BLOCK_PACKETS - 1) // BLOCK_PACKETS))


def tables_nbytes(t) -> int:
    """Bytes of the compiled tables ``t`` (KernelTables) the kernels read."""
    return int(t.i32.nbytes + t.u32.nbytes + t.u64.nbytes + t.u8.nbytes)


def groups_misses(t, cache_bits: int) -> bool:
    """Whether flow-cache misses on tables ``t`` are evaluated in groups
    (``_classify_block_grouped``): only with the flow cache on (its misses are then mostly
    first packets of their flow, whose table steps miss the CPU caches) and tables too big
    to stay in the cores' caches.  Grouping overlaps those misses, but its passes cost more
    instructions than evaluating one packet at a time.  Measured at 1 thread, same packets,
    alternating in one process, flow cache on: 1.1-1.7x faster at 100k rules (14 MB of
    tables), 0.8-0.9x at 10k (1.2 MB), 0.7-0.8x at 100 rules; with the cache off,
    0.6-0.8x even at 100k (most packets repeat a recent flow, whose steps hit)."""
    return cache_bits > 0 and tables_nbytes(t) >= GROUPED_MISSES_MIN_BYTES


def classify_packets(t, p, cache_bits, nthreads, mode, verdict, egress_rule, ingress_rule,
                     src_val, dst_val, grouped=None) -> None:
    """Dispatch ``_classify_rules``: a call that is one run of packets goes straight to
    ``_classify_block`` (no thread pool to wake, and a faster loop); arguments as for
    ``_classify_rules``; ``grouped`` None: ``groups_misses(t, cache_bits)``."""
    n = len(verdict)
    if grouped is None:
        grouped = groups_misses(t, cache_bits)
    grouped = bool(grouped)
    if classify_blocks(n, nthreads) == 1:
        block = _classify_block_grouped if grouped else _classify_block
        block(t, p, cache_bits, mode, 0, n, verdict, egress_rule, ingress_rule, src_val,
              dst_val)
    else:
        kernel = _classify_rules_grouped if grouped else _classify_rules
        kernel(t, p, cache_bits, nthreads, mode, verdict, egress_rule, ingress_rule, src_val,
               dst_val)
