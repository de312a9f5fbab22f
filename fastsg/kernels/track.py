"""Connection tracking (spec section 4): stateful classification.

Private kernels; ``fastsg.tracking.Tracker`` owns the tables and dispatches.  ``_track``
walks the packets in capture order and makes each check: own flow, RELATED, and only when
the tables do not accept the packet the rules, insert, capacity.  The rules come either
from a parallel pass over every packet before the walk (``_classify_rules`` in MODE_BOTH,
with its flow cache: cheaper while most packets start or refresh young flows) or from
``check.rules_check`` inside the walk, only for the checks the tables do not accept (a
packet of a tracked flow then never pays for them: cheaper once the tables are large).

Tables.  Instances are spread over ``NPART`` partitions (instance index mod ``NPART``);
each partition is one open-addressing hash table (linear probing, tombstones) holding the
flows of its instances, 4 uint64 words per slot, in one arena ``slots`` (uint64[total, 4]):

    word 0, 1: peer address (hi, lo)
    word 2:    bit 63 occupied, bit 62 tombstone, bit 61 stream (udp), bit 60 inbound
               (the inserting packet came in to the instance); the key: bits 58-59 which
               address of the instance (0 private v4, 1 private v6, 2 public v4), bits
               50-57 protocol, bits 34-49 instance-side port, bits 18-33 peer port, bits
               0-17 the instance index divided by NPART (the partition holds the rest)
    word 3:    last packet time (int64 ns, as uint64)

An empty slot is all zeros.  Parallelism: two partitions are *linked* when a packet
meets checks in both; linked partitions form components, components are dealt to threads
and each thread walks its packets in capture order.  Every table is touched by one thread
only, in capture order, so the result is exactly the sequential one.

Fast cache.  While the tables fit the caches (no prefetching, see ``_walk``), each walk keeps a
direct-mapped cache of outcomes by flow key in the packet's direction (source, destination,
protocol, the flow's two ports; IPv4 entries of 8 uint64 words, IPv6 entries of 16 that also
hold the addresses): the verdict and deciding rules, the address values, and the slots the
checks refreshed.  A packet whose key is cached takes that outcome and refreshes those slots
without probing the tables.  Measured at 10k rules, one thread, a fresh generated stream of
500k packets: 91% of the packets take it, and the walk alone went from 2.85x to 2.09x the
stateless cost (minimum of 15 alternating rounds).  An entry stands only while its outcome
cannot have changed:

* ``valid until``: the earliest time one of its slots may expire (``expiry_bound_timeout``
  from the last refresh through it; a slot's last time only grows, so until then it is live
  and, having been live, never purged and its slot never reused);
* the generations of its slots' partitions (a rehash moves slots);
* a packet that inserts or ends a flow (RST) forgets its key's entry and the reply's, the
  only two keys whose checks meet those flows: a refused check stays refused until then;
* entries are made only from outcomes the same key's next packet meets again: every check a
  live flow or refused by the rules (no insert, no RELATED, no conntrack-full), after the
  refresh (so a udp flow made a stream already is); after an insert, the flows just made
  (and for the reply, unless udp, whose first reply still makes its flows streams);
* ICMP keys hold no type or code, which the rules may look at: only outcomes where every check
  finds a flow; ICMP errors, RSTs and non-first fragments never use it.

The clock is the latest timestamp seen so far (``clock[i]`` is the running maximum), so an
expired flow stays expired and may be purged.  A partition about to pass 3/4 load is
rehashed, bigger, into its shard's free arena space; a shard out of space stops before the
packet (``stop_part``) and the wrapper enlarges the arena and resumes.
"""
from __future__ import annotations

import numpy as np
from numba import prange

from ..config import TRACK_CACHE_BITS, njit
from ..schema import STATUS_IP, STATUS_MALFORMED, TCP_RST
from .llvm_hints import prefetch
from .check import addr_value, rules_check, section_offsets
from .lookup import (ACCEPT, DROP, MALFORMED, UNMANAGED, cache_outputs, pack_outcome, pack_pair,
                     port_key, zeros_line_aligned)

NPART = 64
MIN_PART_SLOTS = 64                # a partition's first size
PREFETCH = 8                       # packets of lookahead for the table loads
PREFETCH_BYTES = 1 << 20           # ... issued once a partition is bigger than this (L2-sized)
PART_SHIFT = 6                     # log2(NPART)
_FC_VALID = np.uint64(1 << 63)
_NEVER = np.int64(0x7FFFFFFFFFFFFFFF)

RULE_CONNTRACK = 1
RULE_RELATED = 2
RULE_FULL = 3

OCC = np.uint64(1 << 63)
TOMB = np.uint64(1 << 62)
STREAM = np.uint64(1 << 61)
INBOUND = np.uint64(1 << 60)
KEY_MASK = np.uint64((1 << 60) - 1)     # the key bits of word 2 (no state bits)
_MUL = np.uint64(0x9E3779B97F4A7C15)
_MUL2 = np.uint64(0xC2B2AE3D27D4EB4F)
_LOW32 = np.uint64(0xFFFFFFFF)

# timeouts (ns) by index: tcp, udp, udp stream, icmp, other
T_TCP, T_UDP, T_UDP_STREAM, T_ICMP, T_OTHER = 0, 1, 2, 3, 4


@njit(inline=True)
def key_word(inst, xsel, proto, xport, pport):
    """Word 2's key bits: instance // NPART (18 bits), address selector, protocol, ports."""
    return (np.uint64(xsel) << np.uint64(58)) | (np.uint64(proto) << np.uint64(50)) \
        | (np.uint64(xport) << np.uint64(34)) | (np.uint64(pport) << np.uint64(18)) \
        | np.uint64(inst >> PART_SHIFT)


@njit(inline=True)
def check_key(val, ver, proto, xport, pport):
    """A check's table key: ``(partition, key word)`` for the instance of address-map value
    ``val`` (inst * 2 + is_public) and a packet of IP version ``ver``; ``xport`` the flow's
    instance-side port, ``pport`` its peer-side one (see ``flow_ports``)."""
    inst = val >> 1
    xsel = 1 if ver == 6 else (2 if (val & 1) else 0)
    return inst & (NPART - 1), key_word(inst, xsel, proto, xport, pport)


@njit(inline=True)
def slot_hash(hi, lo, kw):
    h = (hi * _MUL2) ^ lo
    h = (h ^ (kw * _MUL2)) * _MUL
    return h ^ (h >> np.uint64(29))


@njit(inline=True)
def home_slot(hi, lo, kw, size):
    """A key's first probe position in a table of ``size`` slots (any size, not only
    powers of two: the high 32 hash bits scaled to the size)."""
    return np.int64(((slot_hash(hi, lo, kw) >> np.uint64(32)) * np.uint64(size)) >> np.uint64(32))


@njit(inline=True)
def flow_ports(proto, itype, sport, dport, ident):
    """The port-like values of a packet's flow key: tcp/udp ports; for an ICMP echo its
    identifier (``icmp_id``, the schema's own field for it) on both sides; else 0, 0."""
    if proto == 6 or proto == 17:
        return sport, dport
    if proto == 1:
        if itype == 8 or itype == 0:
            return ident, ident
        return 0, 0
    if proto == 58:
        if itype == 128 or itype == 129:
            return ident, ident
        return 0, 0
    return 0, 0


@njit(inline=True)
def quoted_ports(proto, sport, dport):
    """The port-like values of a quoted header's flow key: its ports for tcp/udp, and for
    icmp/icmpv6 the quoted fields as they are (the parser puts a quoted echo's identifier
    on both sides, 0 for other ICMP); else 0, 0."""
    if proto == 6 or proto == 17 or proto == 1 or proto == 58:
        return sport, dport
    return 0, 0


@njit(inline=True)
def is_icmp_error(proto, itype):
    if proto == 1:
        return itype == 3 or itype == 4 or itype == 5 or itype == 11 or itype == 12
    if proto == 58:
        return itype >= 1 and itype <= 4
    return False


@njit(inline=True)
def timeout_of(proto, w2, timeouts):
    if proto == 6:
        return timeouts[T_TCP]
    if proto == 17:
        if w2 & STREAM:
            return timeouts[T_UDP_STREAM]
        return timeouts[T_UDP]
    if proto == 1 or proto == 58:
        return timeouts[T_ICMP]
    return timeouts[T_OTHER]


@njit(inline=True)
def expiry_bound_timeout(proto, w2, timeouts):
    """The timeout that bounds a flow's expiry from below whatever its next packets do: a
    udp flow not yet a stream may become one at a later packet, and the stream timeout
    may be the shorter (a promotion at time t >= last expires at t + stream >= last +
    min(udp, stream)).  ``next_exp`` (an instance's earliest possible expiry, which decides
    when a full table is swept) is kept with it, so a refresh never has to lower it."""
    if proto == 17 and (w2 & STREAM) == 0:
        return min(timeouts[T_UDP], timeouts[T_UDP_STREAM])
    return timeout_of(proto, w2, timeouts)


@njit(inline=True)
def entry_proto(w2):
    return np.int64((w2 >> np.uint64(50)) & np.uint64(0xFF))


@njit(inline=True)
def entry_inst(w2, part):
    return (np.int64(w2 & np.uint64(0x3FFFF)) << PART_SHIFT) | part


@njit(inline=True)
def _find(slots, base, size, hi, lo, kw):
    """Slot index (absolute) of the key, or -1.  Probes past tombstones."""
    h = home_slot(hi, lo, kw, size)
    for _ in range(size):
        r = np.uint64(base + h)         # unsigned: no negative-index fix-up
        w2 = slots[r, 2]
        if w2 == 0:
            return -1
        if (w2 & OCC) and (w2 & KEY_MASK) == kw and slots[r, 1] == lo and slots[r, 0] == hi:
            return base + h
        h += 1
        if h == size:
            h = 0
    return -1


@njit(inline=True)
def _free_slot(slots, base, size, hi, lo, kw):
    """Where a new key goes: the first tombstone or empty slot on its probe path (the
    caller keeps the load under 3/4, so there is one)."""
    h = home_slot(hi, lo, kw, size)
    while slots[np.uint64(base + h), 2] & OCC:
        h += 1
        if h == size:
            h = 0
    return base + h


@njit(inline=True)
def grown_size(used):
    """Slots of a partition rehashed with ``used`` slots taken: 4x while small (fewer
    growths), 2x once big (memory per flow)."""
    return max(MIN_PART_SLOTS, (4 if used < (1 << 16) else 2) * used + 8)


@njit(inline=True)
def _touch(flat, part_base, part_size, val, ver, proto, xport, pport, peer_hi, peer_lo):
    """Prefetch the home slot of a check's own flow and the line after it (``flat``: the
    arena as uint64[4 * total]);
    issued PREFETCH packets ahead, the cache misses overlap the work on earlier packets."""
    part, kw = check_key(val, ver, proto, xport, pport)
    size = part_size[part]
    if size > 0:
        h = home_slot(peer_hi, peer_lo, kw, size)
        at = 4 * (part_base[part] + h)
        prefetch(flat, at)
        # and the next line: at 0.61 load, a quarter of the keys sit past their home
        # slot's line (measured at 1M flows: 74% in it, 93% within three slots), and that
        # second miss was not hidden (1M live flows, same process, alternating: 7.5-8.4
        # -> 9.1-9.2 Mpps)
        if at + 8 < len(flat):
            prefetch(flat, at + 8)


@njit()
def prefetches(part_size):
    """Whether a walk over partitions of ``part_size`` slots prefetches its table loads
    (a partition bigger than the L2 cache) instead of keeping the fast cache."""
    return part_size.max() * 32 > PREFETCH_BYTES


@njit(inline=True)
def _fc_key(ver, s_hi, s_lo, d_hi, d_lo, proto, sp, dp, fsh):
    """A packet's fast-cache entry (word index, uint64) and key words; ``fsh``: the
    cache's (shift4, shift6, base6)."""
    k2 = _FC_VALID | (np.uint64(proto) << np.uint64(32)) | (np.uint64(sp) << np.uint64(16)) \
        | np.uint64(dp)
    if ver == 4:
        k1 = (np.uint64(s_lo) << np.uint64(32)) | np.uint64(d_lo)
        return np.uint64(8) * (((k1 ^ (k2 * _MUL2)) * _MUL) >> fsh[0]), k1, k2
    k1 = (s_hi * _MUL2) ^ s_lo ^ ((d_hi * _MUL2 ^ d_lo) * _MUL) ^ k2
    return fsh[2] + np.uint64(16) * ((k1 * _MUL) >> fsh[1]), k1, k2


@njit(inline=True)
def _fc_match(fc, cu, ver, k1, k2, s_hi, s_lo, d_hi, d_lo):
    """Whether the fast-cache entry at ``cu`` holds this key."""
    if fc[cu] != k1 or fc[cu + np.uint64(1)] != k2:
        return False
    return ver == 4 or (fc[cu + np.uint64(8)] == s_hi and fc[cu + np.uint64(9)] == s_lo
                        and fc[cu + np.uint64(10)] == d_hi and fc[cu + np.uint64(11)] == d_lo)


@njit(inline=True)
def _fc_fill(fc, cu, ver, k1, k2, s_hi, s_lo, d_hi, d_lo, se, si, sv, dv, slots, proto,
             timeouts, part_gen, outcome, now):
    """Remember a packet's outcome: the slots its checks refreshed (se, si; -1 none), the
    address values, the earliest expiry they may have, the partitions' generations."""
    tmo = _NEVER
    gw = np.uint64(0)
    if se >= 0:
        tmo = expiry_bound_timeout(proto, slots[np.uint64(se), 2], timeouts)
        gw = part_gen[np.uint64((sv >> 1) & (NPART - 1))]
    if si >= 0:
        tmo = min(tmo, expiry_bound_timeout(proto, slots[np.uint64(si), 2], timeouts))
        gw |= part_gen[np.uint64((dv >> 1) & (NPART - 1))] << np.uint64(32)
    fc[cu] = k1
    fc[cu + np.uint64(1)] = k2
    fc[cu + np.uint64(2)] = pack_pair(se, si)
    fc[cu + np.uint64(3)] = np.uint64(now + tmo if tmo != _NEVER else _NEVER)
    fc[cu + np.uint64(4)] = pack_pair(sv, dv)
    fc[cu + np.uint64(5)] = np.uint64(tmo)
    fc[cu + np.uint64(6)] = gw
    fc[cu + np.uint64(7)] = outcome
    if ver != 4:
        fc[cu + np.uint64(8)] = s_hi
        fc[cu + np.uint64(9)] = s_lo
        fc[cu + np.uint64(10)] = d_hi
        fc[cu + np.uint64(11)] = d_lo


@njit(inline=True)
def _fc_forget(fc, fsh, ver, s_hi, s_lo, d_hi, d_lo, proto, sp, dp):
    cu, k1, k2 = _fc_key(ver, s_hi, s_lo, d_hi, d_lo, proto, sp, dp, fsh)
    if _fc_match(fc, cu, ver, k1, k2, s_hi, s_lo, d_hi, d_lo):
        fc[cu + np.uint64(1)] = np.uint64(0)


@njit(inline=True)
def _live_slot(slots, part_base, part_size, timeouts, now, val, ver, proto, xport, pport,
               peer_hi, peer_lo):
    """The slot of the live flow a check at ``val``'s instance (address-map value) finds:
    own port ``xport``, peer port ``pport``, peer address ``peer_hi``/``peer_lo``; or -1
    (no such flow, or expired at ``now``)."""
    part, kw = check_key(val, ver, proto, xport, pport)
    s = _find(slots, part_base[np.uint64(part)], part_size[np.uint64(part)], peer_hi, peer_lo,
              kw)
    if s >= 0 and np.int64(slots[np.uint64(s), 3]) + timeout_of(
            proto, slots[np.uint64(s), 2], timeouts) >= now:
        return s
    return np.int64(-1)


@njit(inline=True)
def _refresh(slots, s, now, proto, egress):
    """A live flow's packet at ``now``: its last time, and a udp flow becomes a stream once
    a packet goes the other way than the inserting one (the state word read anew: both
    checks of a packet to itself may refresh one slot)."""
    w2 = slots[np.uint64(s), 2]
    slots[np.uint64(s), 3] = np.uint64(now)
    if proto == 17 and ((w2 & INBOUND) != 0) == egress:
        slots[np.uint64(s), 2] = w2 | STREAM


@njit()
def _sweep(slots, base, size, inst, part, now, timeouts, stored):
    """Purge the instance's expired flows (tombstones); returns the least expiry left."""
    least = np.int64(0x7FFFFFFFFFFFFFFF)
    for s in range(base, base + size):
        w2 = slots[s, 2]
        if (w2 & OCC) == 0 or entry_inst(w2, part) != inst:
            continue
        proto = entry_proto(w2)
        last = np.int64(slots[s, 3])
        if last + timeout_of(proto, w2, timeouts) < now:
            slots[s, 2] = TOMB
            stored[inst] -= 1
        else:
            least = min(least, last + expiry_bound_timeout(proto, w2, timeouts))
    return least


@njit()
def _walk(sh, t, p, vals_ready, rules_v, cache_bits, egress_rule, ingress_rule, src_val,
          dst_val, clock, order, shard_start, pos, stop_part, slots, part_base, part_size,
          part_used, stored, next_exp, capacity, timeouts, inst_addr_hi, inst_addr_lo,
          inst_addr_ver, verdict, flat, free_lo, free_hi, grows, clock_state):
    """Walk shard ``sh`` of ``_track`` in capture order (the whole walk of a one-shard
    batch: called directly, a plain function runs this loop faster than the same loop
    in a ``prange`` body; measured 13-20 against 21-28 ns a packet).

    A batch walked as one shard may pass ``order`` and ``clock`` empty: packet k is then
    packet k, and the clock is kept as the walk goes, from ``clock_state[sh]`` (in/out:
    the latest timestamp seen before the shard's next packet), sparing two arrays of n
    int64 written and read once.

    Allocates the shard's rules cache and runs ``_walk_shard``, which is compiled without
    reference counting (see ``config.jit_options``)."""
    rcache = np.zeros(4 << cache_bits, np.uint64)
    # prefetching pays only when the tables outgrow the caches; the fast cache only while
    # they do not (with a million live flows nearly every key is new to it)
    lookahead = PREFETCH if prefetches(part_size) else 0
    fbits = TRACK_CACHE_BITS if lookahead == 0 else 0
    bits6 = max(fbits - 2, 1)
    fc = zeros_line_aligned((8 << fbits) + (16 << bits6))
    fsh = (np.uint64(64 - fbits), np.uint64(64 - bits6), np.uint64(8 << fbits))
    part_gen = np.zeros(NPART, np.uint64)
    _walk_shard(sh, t, p, vals_ready, rules_v, cache_bits, egress_rule, ingress_rule, src_val,
                dst_val, clock, order, shard_start, pos, stop_part, slots, part_base,
                part_size, part_used, stored, next_exp, capacity, timeouts, inst_addr_hi,
                inst_addr_lo, inst_addr_ver, verdict, flat, free_lo, free_hi, grows,
                clock_state, rcache, lookahead, fc, fbits, fsh, part_gen)


@njit(refcounts=False)
def _walk_shard(sh, t, p, vals_ready, rules_v, cache_bits, egress_rule, ingress_rule, src_val,
                dst_val, clock, order, shard_start, pos, stop_part, slots, part_base,
                part_size, part_used, stored, next_exp, capacity, timeouts, inst_addr_hi,
                inst_addr_lo, inst_addr_ver, verdict, flat, free_lo, free_hi, grows,
                clock_state, rcache, lookahead, fc, fbits, fsh, part_gen):
    """The loop of ``_walk``: ``rcache`` uint64[4 << cache_bits] zeroed, the rules cache;
    ``lookahead`` packets between a table prefetch and its packet (0: none); ``fc`` the
    fast cache (zeroed, 64-byte aligned uint64: ``8 << fbits`` words of IPv4 entries, then
    the IPv6 ones from ``fsh[2]``; ``fbits`` 0: off), ``fsh`` its (IPv4 shift, IPv6 shift,
    IPv6 base), ``part_gen`` uint64[NPART] zeroed, each partition's rehash count."""
    I, U32, U64, U8, O = t.i32, t.u32, t.u64, t.u8, t.off     # out of the tuple once
    offs = section_offsets(O)
    shift4, shift6 = t.addr4_shift, t.addr6_shift
    rules_ready = len(rules_v) > 0
    cache_shift = np.uint64(64 - cache_bits)
    stop_part[sh] = -1
    k = pos[sh]
    end = shard_start[sh + 1]
    # without the parallel address pass, the walk computes each packet's address-map
    # values `lookahead` packets ahead of it (the prefetch needs them)
    fill = k if vals_ready == 0 else end
    by_order = len(order) > 0
    by_clock = len(clock) > 0
    running = clock_state[sh]
    ts = p.ts
    use_fc = fbits > 0
    ce = np.int64(-1)
    ck1 = np.uint64(0)
    ck2 = np.uint64(0)
    while k < end:
        # The packets up to the next one the full path must take, in a loop of their own:
        # what only the full path uses (the rules' table offsets, its cache, the arena
        # bookkeeping) stays out of this loop's registers.  Measured (same process,
        # alternating, 9 rounds): 1M live flows 7.8 -> 9.6 and 6.0 -> 7.7 Mpps, a fresh
        # stream's walk at 10k rules 80 -> 73 ns a packet.
        while True:
            i = order[k] if by_order else k
            iu = np.uint64(i)                # unsigned: numba adds no negative-index fix-up
            if by_clock:
                now = clock[iu]
            else:
                now = ts[iu] if ts[iu] > running else running
            # -- the fast cache: this key's outcome last time, and the slots to refresh
            ce = np.int64(-1)
            if use_fc and p.status[iu] == STATUS_IP and p.frag[iu] == 0:
                c_proto = np.int64(p.proto[iu])
                if not ((c_proto == 6 and (p.tcp_flags[iu] & TCP_RST) != 0)
                        or ((c_proto == 1 or c_proto == 58) and p.emb_valid[iu] != 0)):
                    c_sp, c_dp = flow_ports(c_proto, p.icmp_type[iu], p.sport[iu], p.dport[iu],
                                            p.icmp_id[iu])
                    c_ver = p.ipver[iu]
                    cu, ck1, ck2 = _fc_key(c_ver, p.src_hi[iu], p.src_lo[iu], p.dst_hi[iu],
                                           p.dst_lo[iu], c_proto, c_sp, c_dp, fsh)
                    ce = np.int64(cu)
                    if _fc_match(fc, cu, c_ver, ck1, ck2, p.src_hi[iu], p.src_lo[iu],
                                 p.dst_hi[iu], p.dst_lo[iu]) \
                            and now <= np.int64(fc[cu + np.uint64(3)]):
                        vals = fc[cu + np.uint64(4)]
                        sw = fc[cu + np.uint64(2)]
                        gw = fc[cu + np.uint64(6)]
                        c_sv = np.int64(vals & _LOW32) - 1
                        c_dv = np.int64(vals >> np.uint64(32)) - 1
                        c_se = np.int64(sw & _LOW32) - 1
                        c_si = np.int64(sw >> np.uint64(32)) - 1
                        good = True
                        if c_se >= 0:
                            good = part_gen[np.uint64((c_sv >> 1) & (NPART - 1))] == (gw & _LOW32)
                        if c_si >= 0 and good:
                            good = part_gen[np.uint64((c_dv >> 1) & (NPART - 1))] \
                                == (gw >> np.uint64(32))
                        if good:
                            if c_se >= 0:
                                slots[np.uint64(c_se), 3] = np.uint64(now)
                            if c_si >= 0:
                                slots[np.uint64(c_si), 3] = np.uint64(now)
                            if c_se >= 0 or c_si >= 0:
                                fc[cu + np.uint64(3)] = np.uint64(now + np.int64(fc[cu + np.uint64(5)]))
                            cache_outputs(fc[cu + np.uint64(7)], vals, iu, 0, verdict,
                                          egress_rule, ingress_rule, src_val, dst_val)
                            running = now
                            if fill == k:
                                fill += 1
                            k += 1
                            if k >= end:
                                break
                            continue
            while fill < end and fill <= k + lookahead:
                j = order[fill] if by_order else fill
                ju = np.uint64(j)
                if p.status[ju] == STATUS_IP:
                    src_val[ju] = addr_value(I, U64, offs, shift4, shift6, p.ipver[ju],
                                             p.src_hi[ju], p.src_lo[ju])
                    dst_val[ju] = addr_value(I, U64, offs, shift4, shift6, p.ipver[ju],
                                             p.dst_hi[ju], p.dst_lo[ju])
                else:
                    src_val[ju] = -1
                    dst_val[ju] = -1
                fill += 1
            if lookahead > 0 and k + lookahead < end:
                j = order[k + lookahead] if by_order else k + lookahead
                if p.status[j] == STATUS_IP and p.frag[j] == 0:
                    jp = np.int64(p.proto[j])
                    jsp, jdp = flow_ports(jp, p.icmp_type[j], p.sport[j], p.dport[j],
                                          p.icmp_id[j])
                    if src_val[j] >= 0:
                        _touch(flat, part_base, part_size, np.int64(src_val[j]),
                               p.ipver[j], jp, jsp, jdp, p.dst_hi[j], p.dst_lo[j])
                    if dst_val[j] >= 0:
                        _touch(flat, part_base, part_size, np.int64(dst_val[j]),
                               p.ipver[j], jp, jdp, jsp, p.src_hi[j], p.src_lo[j])
            # no check: not IP (both values are -1 then) or no running instance at either end
            st = p.status[iu]
            sv = np.int64(src_val[iu])
            dv = np.int64(dst_val[iu])
            if sv < 0 and dv < 0:
                verdict[iu] = MALFORMED if st == STATUS_MALFORMED else UNMANAGED
                egress_rule[iu] = -1
                ingress_rule[iu] = -1
                running = now
                k += 1
                if k >= end:
                    break
                continue
            frag = p.frag[iu]
            # -- fast path: every check this packet meets is a live flow of its table (84% of
            # the packets of a fresh generated stream): find both, refresh both, next packet.
            # Anything else (a miss, an expired flow, an RST, a fragment) leaves the tables as
            # they were and takes the full path below, which finds again.  A short block of its
            # own lets the CPU overlap consecutive packets' probes: measured at 10k rules,
            # fresh stream 187 -> 151 ns a packet, warm tables 139 -> 99, 1M live flows 6.1 ->
            # 7.3 Mpps (same process, alternating).  For a packet from an instance to itself
            # both checks may find the same slot: each refresh reads the state word anew.
            if frag == 0:
                f_proto = np.int64(p.proto[iu])
                if not (f_proto == 6 and (p.tcp_flags[iu] & TCP_RST) != 0):
                    f_ver = p.ipver[iu]
                    f_sp, f_dp = flow_ports(f_proto, p.icmp_type[iu], p.sport[iu], p.dport[iu],
                                            p.icmp_id[iu])
                    se = np.int64(-1)
                    si = np.int64(-1)
                    if sv >= 0:
                        se = _live_slot(slots, part_base, part_size, timeouts, now, sv, f_ver,
                                        f_proto, f_sp, f_dp, p.dst_hi[iu], p.dst_lo[iu])
                    ok = sv < 0 or se >= 0
                    if ok and dv >= 0:
                        si = _live_slot(slots, part_base, part_size, timeouts, now, dv, f_ver,
                                        f_proto, f_dp, f_sp, p.src_hi[iu], p.src_lo[iu])
                        ok = si >= 0
                    if ok:
                        if se >= 0:
                            _refresh(slots, se, now, f_proto, True)
                        if si >= 0:
                            _refresh(slots, si, now, f_proto, False)
                        if ce >= 0:
                            _fc_fill(fc, np.uint64(ce), f_ver, ck1, ck2, p.src_hi[iu], p.src_lo[iu],
                                     p.dst_hi[iu], p.dst_lo[iu], se, si, sv, dv, slots, f_proto,
                                     timeouts, part_gen,
                                     pack_outcome(ACCEPT, RULE_CONNTRACK if se >= 0 else -1,
                                                  RULE_CONNTRACK if si >= 0 else -1), now)
                        verdict[iu] = ACCEPT
                        egress_rule[iu] = RULE_CONNTRACK if se >= 0 else -1
                        ingress_rule[iu] = RULE_CONNTRACK if si >= 0 else -1
                        running = now
                        k += 1
                        if k >= end:
                            break
                        continue
            break
        if k >= end:
            break
        if frag == 0:
            # room for two inserts in each partition this packet may insert into: grow
            # a partition about to pass 3/4 load into this shard's free arena space
            for side in range(2):
                val = sv if side == 0 else dv
                if val < 0:
                    continue
                q = (val >> 1) & (NPART - 1)
                if (part_used[np.uint64(q)] + 2) * 4 <= part_size[np.uint64(q)] * 3:
                    continue
                new_size = grown_size(part_used[np.uint64(q)])
                if free_hi[sh] - free_lo[sh] < new_size:
                    stop_part[sh] = q           # out of room: the wrapper makes more
                    break
                base = part_base[np.uint64(q)]
                size = part_size[np.uint64(q)]
                nb = free_lo[sh]
                part_used[np.uint64(q)] = _rehash(slots[base:base + size],
                                                  slots[nb:nb + new_size], q, now, timeouts,
                                                  stored)
                slots[base:base + size] = 0     # the old region is garbage now
                part_base[np.uint64(q)] = nb
                part_size[np.uint64(q)] = new_size
                part_gen[np.uint64(q)] += np.uint64(1)      # its slots moved
                free_lo[sh] = nb + new_size
                grows[sh] += 1
            if stop_part[sh] >= 0:
                break
        proto = np.int64(p.proto[iu])
        ver = p.ipver[iu]
        itype = p.icmp_type[iu]
        key = port_key(proto, p.dport[iu], itype, p.icmp_code[iu], frag)
        sp, dp = flow_ports(proto, itype, p.sport[iu], p.dport[iu], p.icmp_id[iu])
        rst = proto == 6 and (p.tcp_flags[iu] & TCP_RST) != 0
        emb_ok = p.emb_valid[iu] != 0 and is_icmp_error(proto, itype)
        v = ACCEPT
        eg = np.int64(-1)
        ig = np.int64(-1)
        changed = rst               # a flow inserted or ended: forget both directions' entries
        stable = True               # the same outcome for this key's next packet (no insert)
        fs0 = np.int64(-1)
        fs1 = np.int64(-1)
        for side in range(2):
            if side == 0:
                if sv < 0:
                    continue
                val = sv
                xport = sp
                pport = dp
                peer_hi = p.dst_hi[iu]
                peer_lo = p.dst_lo[iu]
                peer_val = dv
            else:
                if dv < 0 or v != ACCEPT:
                    continue
                val = dv
                xport = dp
                pport = sp
                peer_hi = p.src_hi[iu]
                peer_lo = p.src_lo[iu]
                peer_val = sv
            egress = side == 0
            inst = val >> 1
            hit = False
            cv = np.int64(ACCEPT)
            cr = np.int64(-1)
            s = np.int64(-1)
            base = np.int64(0)
            size = np.int64(0)
            part = np.int64(0)
            kw = np.uint64(0)
            if frag == 0:
                part, kw = check_key(val, ver, proto, xport, pport)
                base = part_base[np.uint64(part)]
                size = part_size[np.uint64(part)]
                # -- own flow
                s = _find(slots, base, size, peer_hi, peer_lo, kw)
                if s >= 0:
                    w2 = slots[np.uint64(s), 2]
                    if np.int64(slots[np.uint64(s), 3]) + timeout_of(proto, w2, timeouts) >= now:
                        hit = True
                        _refresh(slots, s, now, proto, egress)
                        if side == 0:
                            fs0 = s
                        else:
                            fs1 = s
                        if rst:
                            slots[np.uint64(s), 2] = TOMB
                            stored[np.uint64(inst)] -= 1
                        cr = RULE_CONNTRACK
                # -- RELATED: an ICMP error quoting a live flow, either orientation
                if not hit and emb_ok:
                    e_proto = np.int64(p.emb_proto[iu])
                    esp, edp = quoted_ports(e_proto, p.emb_sport[iu], p.emb_dport[iu])
                    for orient in range(2):
                        if hit:
                            break
                        if orient == 0:
                            a_hi, a_lo, a_port = p.emb_src_hi[iu], p.emb_src_lo[iu], esp
                            b_hi, b_lo, b_port = p.emb_dst_hi[iu], p.emb_dst_lo[iu], edp
                        else:
                            a_hi, a_lo, a_port = p.emb_dst_hi[iu], p.emb_dst_lo[iu], edp
                            b_hi, b_lo, b_port = p.emb_src_hi[iu], p.emb_src_lo[iu], esp
                        for j in range(3):
                            ui = np.uint64(inst)
                            if inst_addr_ver[ui, j] == ver and inst_addr_hi[ui, j] == a_hi \
                                    and inst_addr_lo[ui, j] == a_lo:
                                s2 = _find(slots, base, size, b_hi, b_lo,
                                           key_word(inst, j, e_proto, a_port, b_port))
                                if s2 >= 0 and np.int64(slots[np.uint64(s2), 3]) + timeout_of(
                                        e_proto, slots[np.uint64(s2), 2], timeouts) >= now:
                                    hit = True
                                    cr = RULE_RELATED
                                    stable = False
            if not hit:
                # -- the rules (precomputed, or through the cache); an ACCEPT inserts
                slot4 = -1
                k1 = np.uint64(0)
                k2 = np.uint64(0)
                found = False
                if rules_ready:
                    cv = (np.int64(rules_v[iu]) >> (2 * side)) & 3
                    cr = np.int64(egress_rule[iu] if side == 0 else ingress_rule[iu])
                    found = True
                elif ver == 4 and cache_bits > 0:
                    k1 = (p.src_lo[iu] << np.uint64(32)) | p.dst_lo[iu]
                    k2 = (np.uint64(2 + side) << np.uint64(40)) \
                        | (np.uint64(proto) << np.uint64(20)) | np.uint64(key)
                    slot4 = 4 * np.int64(((k1 ^ (k2 * _MUL2)) * _MUL) >> cache_shift)
                    if rcache[np.uint64(slot4)] == k1 and rcache[np.uint64(slot4 + 1)] == k2:
                        packed = rcache[np.uint64(slot4 + 2)]
                        cv = np.int64(packed & np.uint64(15))
                        cr = np.int64(packed >> np.uint64(4))
                        found = True
                if not found:
                    cv, cr = rules_check(I, U32, U64, U8, offs, inst, 1 if egress else 0, ver,
                                         proto, key, peer_hi, peer_lo, peer_val)
                    if slot4 >= 0:
                        rcache[np.uint64(slot4)] = k1
                        rcache[np.uint64(slot4 + 1)] = k2
                        rcache[np.uint64(slot4 + 2)] = np.uint64(cv) \
                            | (np.uint64(cr) << np.uint64(4))
                if frag == 0 and cv == ACCEPT:
                    if stored[np.uint64(inst)] >= capacity:
                        if now > next_exp[np.uint64(inst)] and size > 0:
                            next_exp[np.uint64(inst)] = _sweep(slots, base, size, inst, part, now,
                                                    timeouts, stored)
                            if s >= 0 and (slots[np.uint64(s), 2] & OCC) == 0:
                                s = -1           # the sweep purged this key's expired entry
                    if stored[np.uint64(inst)] >= capacity:
                        stable = False
                        cv = DROP
                        cr = RULE_FULL
                    elif rst:
                        if s >= 0:               # an expired entry of this key ends too
                            slots[np.uint64(s), 2] = TOMB
                            stored[np.uint64(inst)] -= 1
                    else:
                        state = kw | OCC
                        if not egress:
                            state |= INBOUND
                        changed = True
                        if s < 0:
                            s = _free_slot(slots, base, size, peer_hi, peer_lo, kw)
                            if slots[np.uint64(s), 2] == 0:
                                part_used[np.uint64(part)] += 1
                            stored[np.uint64(inst)] += 1
                            slots[np.uint64(s), 0] = peer_hi
                            slots[np.uint64(s), 1] = peer_lo
                        slots[np.uint64(s), 2] = state
                        slots[np.uint64(s), 3] = np.uint64(now)
                        exp = now + expiry_bound_timeout(proto, state, timeouts)
                        if exp < next_exp[np.uint64(inst)]:
                            next_exp[np.uint64(inst)] = exp
                        if side == 0:
                            fs0 = s
                        else:
                            fs1 = s
            v = cv
            if side == 0:
                eg = cr
            else:
                ig = cr
        if use_fc:
            # what this key's next packet meets: the flows this one found or inserted
            # (conntrack), the rules that refused it.  ICMP keys only when every check
            # finds a flow: the key holds no ICMP type, which the rules may look at.
            if stable and ce >= 0 and (v == ACCEPT or not (proto == 1 or proto == 58)):
                _fc_fill(fc, np.uint64(ce), ver, ck1, ck2, p.src_hi[iu], p.src_lo[iu], p.dst_hi[iu],
                         p.dst_lo[iu], fs0, fs1, sv, dv, slots, proto, timeouts, part_gen,
                         pack_outcome(v, RULE_CONNTRACK if fs0 >= 0 else eg,
                                      RULE_CONNTRACK if fs1 >= 0 else ig), now)
            elif changed:
                _fc_forget(fc, fsh, ver, p.src_hi[iu], p.src_lo[iu], p.dst_hi[iu], p.dst_lo[iu],
                           proto, sp, dp)
            if changed:
                # and the reply's: it finds the same two flows (a udp reply makes its flows
                # streams, which the full path does)
                if stable and ce >= 0 and v == ACCEPT and proto != 17:
                    ru, r1, r2 = _fc_key(ver, p.dst_hi[iu], p.dst_lo[iu], p.src_hi[iu],
                                         p.src_lo[iu], proto, dp, sp, fsh)
                    _fc_fill(fc, ru, ver, r1, r2, p.dst_hi[iu], p.dst_lo[iu], p.src_hi[iu],
                             p.src_lo[iu], fs1, fs0, dv, sv, slots, proto, timeouts, part_gen,
                             pack_outcome(ACCEPT, RULE_CONNTRACK if fs1 >= 0 else -1,
                                          RULE_CONNTRACK if fs0 >= 0 else -1), now)
                else:
                    _fc_forget(fc, fsh, ver, p.dst_hi[iu], p.dst_lo[iu], p.src_hi[iu],
                               p.src_lo[iu], proto, dp, sp)
        verdict[iu] = v
        egress_rule[iu] = eg
        ingress_rule[iu] = ig
        running = now
        k += 1
    pos[sh] = k
    clock_state[sh] = running


@njit(parallel=True)
def _track(t, p, vals_ready, rules_v, cache_bits, egress_rule, ingress_rule, src_val, dst_val,
           clock, order, shard_start, pos, stop_part, slots, part_base, part_size, part_used,
           stored, next_exp, capacity, timeouts, inst_addr_hi, inst_addr_lo, inst_addr_ver,
           verdict, flat, free_lo, free_hi, grows, clock_state):
    """Classify packets with the tracking tables, in capture order within each shard.

    t: KernelTables (the compiled rules); p: PacketColumns (n); vals_ready: 1 when
    src_val/dst_val int32[n] (address-map values, inst * 2 + is_public, -1 none) are filled
    already (the parallel address pass that sharding needs), 0 to have the walk fill them;
    rules_v uint8[n]: the rules' verdicts of both checks when precomputed by
    ``_classify_rules(mode=MODE_BOTH)`` (packed ``egress | ingress << 2``; egress_rule and
    ingress_rule then hold the rules' deciding rules on entry), or empty: the walk then
    evaluates the rules itself, only for the checks its tables do not accept;
    cache_bits: log2 of the entries of each shard's cache of rules outcomes (0: none);
    egress_rule/ingress_rule int32[n] out: the deciding rules (-1 where the check did not
    happen); verdict uint8[n] out (not the same array as rules_v).  clock int64[n] the
    tracking clock per packet; order int64[n] packet indexes grouped by shard (capture order
    within a shard), shard s owning order[shard_start[s]:shard_start[s+1]] (one shard may
    pass both empty, see ``_walk``, and clock_state int64[nshards]); pos int64[nshards]
    where each shard resumes
    (in/out: shard_start[s+1] when done); stop_part int64[nshards] out: the partition a
    stopped shard could not grow, -1 if none.  free_lo/free_hi int64[nshards] (in/out):
    each shard's zeroed arena space [lo, hi) where it rehashes a partition about to pass 3/4
    load (growing it, dropping tombstones and expired flows); grows int64[nshards] (in/out)
    counts those.  Tables: slots uint64[total, 4], part_base/part_size/part_used
    int64[NPART], stored int64[n_inst], next_exp int64[n_inst]; capacity int64; timeouts
    int64[5] ns.  inst_addr_*: [n_inst, 3] the instances' addresses (private v4, v6,
    public; ver 0 none).  flat: ``slots`` as one flat uint64 array (for prefetching).

    A check at instance X (egress at the source's instance, then, if that accepted,
    ingress at the destination's), written in the loop body (no per-check calls):
    (first, a fast path for a packet whose every check finds a live flow: see ``_walk``)
    fragment -> the rules; own flow live -> ACCEPT by conntrack (refresh, udp stream, RST
    removal); ICMP error quoting a live flow of X (either orientation) -> ACCEPT by
    conntrack-related; else the rules (precomputed, or ``rules_check`` evaluated here, so a
    packet of a tracked flow never pays for them), and a rules ACCEPT inserts the flow unless
    X holds ``capacity`` live flows (DROP by conntrack-full).

    Rules cache: for an IPv4 packet a check's rules outcome is a function of (source,
    destination, protocol, port key, which check) and the immutable tables, so each shard
    keeps a direct-mapped cache of recent outcomes (4 uint64 per entry: addresses, protocol,
    key and side, packed outcome): the first packets of new flows between the same hosts
    and the packets the rules refuse again and again mostly cost one probe.
    """
    for sh in prange(len(pos)):
        _walk(sh, t, p, vals_ready, rules_v, cache_bits, egress_rule, ingress_rule, src_val,
              dst_val, clock, order, shard_start, pos, stop_part, slots, part_base, part_size,
              part_used, stored, next_exp, capacity, timeouts, inst_addr_hi, inst_addr_lo,
              inst_addr_ver, verdict, flat, free_lo, free_hi, grows, clock_state)


@njit()
def _packet_parts(sv, dv):
    """A packet's (first, second) partition for sharding: its source's and destination's
    (one side's twice when the other meets no instance), or (-1, -1)."""
    a = -1
    b = -1
    if sv >= 0:
        a = (np.int64(sv) >> 1) & (NPART - 1)
    if dv >= 0:
        b = (np.int64(dv) >> 1) & (NPART - 1)
    if a < 0:
        a = b
    if b < 0:
        b = a
    return a, b


@njit()
def _shards(src_val, dst_val, nthreads, order, shard_of_part):
    """Deal the partitions to at most nthreads shards: partitions linked by a packet that
    meets checks in both go to the same shard.  Returns shard_start int64[nshards + 1] and
    fills shard_of_part int64[NPART]; when more than one shard holds packets it also fills
    order int64[n] (packet indexes grouped by shard, capture order within each; a packet
    goes to its first partition's shard, one meeting no instance to shard 0), else leaves
    it untouched (the capture order is the walk's order).

    One pass counts the packets of each (first, second) partition pair (64 x 64 counters,
    in L1); the components, weights and shard sizes come from those counts, so a batch
    whose partitions all link costs that pass alone (500k packets: 31 -> about 3 ns a
    packet, measured), and only a batch split over shards pays a second pass, for order."""
    n = len(src_val)
    pairs = np.zeros(NPART * NPART, np.int64)
    none = 0
    for i in range(n):
        a, b = _packet_parts(src_val[i], dst_val[i])
        if a < 0:
            none += 1
        else:
            pairs[a * NPART + b] += 1
    parent = np.arange(NPART)
    weight = np.zeros(NPART, np.int64)
    for a in range(NPART):
        for b in range(NPART):
            c = pairs[a * NPART + b]
            if c == 0:
                continue
            weight[a] += c
            ra = a
            while parent[ra] != ra:
                ra = parent[ra]
            rb = b
            while parent[rb] != rb:
                rb = parent[rb]
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    root = np.empty(NPART, np.int64)
    for q in range(NPART):
        r = q
        while parent[r] != r:
            r = parent[r]
        root[q] = r
    comp_weight = np.zeros(NPART, np.int64)
    for q in range(NPART):
        comp_weight[root[q]] += weight[q]
    # largest components first onto the lightest shard
    nshards = max(1, nthreads)
    load = np.zeros(nshards, np.int64)
    shard_of_root = np.full(NPART, -1, np.int64)
    ranked = np.argsort(-comp_weight)
    for q in ranked:
        if comp_weight[q] == 0 or root[q] != q:
            continue
        s = np.argmin(load)
        shard_of_root[q] = s
        load[s] += comp_weight[q]
    for q in range(NPART):
        s = shard_of_root[root[q]]
        shard_of_part[q] = s if s >= 0 else 0
    counts = np.zeros(nshards + 1, np.int64)
    counts[1] = none
    for q in range(NPART):
        counts[shard_of_part[q] + 1] += weight[q]
    busy = 0
    for s in range(nshards):
        if counts[s + 1] > 0:
            busy += 1
    for s in range(nshards):
        counts[s + 1] += counts[s]
    if busy <= 1:
        return counts
    fill = counts[:nshards].copy()
    for i in range(n):
        a, _ = _packet_parts(src_val[i], dst_val[i])
        s = shard_of_part[a] if a >= 0 else 0
        order[fill[s]] = i
        fill[s] += 1
    return counts


@njit()
def _rehash(old, new, part, now, timeouts, stored):
    """Copy a partition's live flows from old (uint64[m, 4]) into new (zeroed uint64[k, 4]),
    dropping tombstones and flows expired at ``now``; returns the slots used."""
    size = len(new)
    used = 0
    for s in range(len(old)):
        w2 = old[s, 2]
        if (w2 & OCC) == 0:
            continue
        inst = entry_inst(w2, part)
        if np.int64(old[s, 3]) + timeout_of(entry_proto(w2), w2, timeouts) < now:
            stored[inst] -= 1
            continue
        kw = w2 & KEY_MASK
        h = home_slot(old[s, 0], old[s, 1], kw, size)
        while new[h, 2] != 0:
            h += 1
            if h == size:
                h = 0
        new[h, 0] = old[s, 0]
        new[h, 1] = old[s, 1]
        new[h, 2] = w2
        new[h, 3] = old[s, 3]
        used += 1
    return used


@njit()
def _discard(slots, base, size, inst, part):
    """Tombstone every flow of one instance; returns how many."""
    gone = 0
    for s in range(base, base + size):
        w2 = slots[s, 2]
        if (w2 & OCC) and entry_inst(w2, part) == inst:
            slots[s, 2] = TOMB
            gone += 1
    return gone


@njit()
def _live_flows(slots, now, timeouts):
    """Flows live at ``now`` over the whole arena."""
    live = 0
    for s in range(len(slots)):
        w2 = slots[s, 2]
        if (w2 & OCC) and np.int64(slots[s, 3]) + timeout_of(entry_proto(w2), w2, timeouts) >= now:
            live += 1
    return live
