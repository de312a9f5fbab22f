"""Compile one direction of one *policy* (an instance's group list + combining order).

Ranks.  All three combining orders (spec section 3) reduce to "the matching rule of least
rank decides; no match: the order's default".  Over the policy's rules M in canonical
order (groups in list order, rules in file order, position p):

* ``allow,deny``: deny/reject rules rank by p, then allow rules by p (first deny wins,
  else first allow);
* ``deny,allow``: allow rules first, then deny/reject rules;
* ``priority``:  by (priority, 0 for deny/reject else 1, p).

Least rank is a ``min`` and so decomposes over any split of the rules, which is what keeps
the tables small: per protocol *slot*, the rules that ignore the port key (``all``, full
port ranges, any ICMP type/code) form one *wild class*; the others are cut into
elementary port-key intervals, each mapped to a *port class* (identical rule sets share a
class).  A class holds sorted IPv4 and IPv6 interval tables of least rank over the peer
address, plus its group-peer rules sorted by rank.  A check looks up the wild class and
the port class and takes the lesser rank.

Port key (int32): tcp/udp destination port; icmp/icmpv6 ``type*256 + code``; 0 for other
protocols; ``FRAG_KEY`` (65536) for a non-first fragment, which only wild rules cover.

How it compiles (all per-rule work in one numba pass, ``_compile``): each rule's numbers
are packed once into a 13-word row kept on the Rule (see "rule rows"), so a direction's
input is one ``b"".join``; ranks and protocol slots follow; per slot a sweep
over the port-key events (rule range starts and ends) keeps the member set's 128-bit
Zobrist hash (XOR of random keys per rule position), so identical member sets, within
and across slots, are found by a hash probe and built once.  A new class's members,
sorted by (peer kind, address low end, prefix length, rank), give its IPv4 and IPv6
tables (``_laminar_min_rank``) and its group list (rank order, each group at its
first, best rank only: a later occurrence can never decide).
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from itertools import accumulate, chain

import numpy as np

from ..config import njit
from ..world.model import ICMP_PROTOCOLS, PORT_PROTOCOLS, Rule

__all__ = ["ACTION_CODE", "DirectionTables", "FRAG_KEY", "ICMP_PROTOCOLS", "KEY_END", "NO_RANK",
           "ORDER_DEFAULT_ACCEPT", "PORT_PROTOCOLS", "compile_direction", "rank_rules"]

FRAG_KEY = 65536
KEY_END = 65537            # port keys live in [0, KEY_END)
ACTION_CODE = {"allow": 0, "deny": 1, "reject": 2}   # == Verdict ACCEPT, DROP, REJECT
ORDER_DEFAULT_ACCEPT = {"allow,deny": False, "deny,allow": True, "priority": False}
ORDER_CODE = {"allow,deny": 0, "deny,allow": 1, "priority": 2}
NO_RANK = np.int32(0x7FFFFFFF)
_MAX64 = np.uint64(0xFFFFFFFFFFFFFFFF)
_MAX32 = np.uint64(0xFFFFFFFF)


@dataclass(frozen=True)
class DirectionTables:
    """Compiled tables of one policy direction; indexes are local (``link`` shifts them).

    rank_rule int32[r], rank_action uint8[r]: the rule (global index) and action of rank k.
    proto_slot uint8[256]: protocol number -> local slot.  Per slot s: slot_wild int32
    (class of the wild rules, -1 none), slot_pt_start/slot_pt_len int32 (range of the
    port table in pt_start_key/pt_class; length 0: no port-specific rules).
    Per class c: cls_v4_start/len, cls_v6_start/len, cls_grp_start/len (int32).
    v4_start uint32 / v4_rank int32; v6_start_hi, v6_start_lo uint64 / v6_rank int32;
    grp_group int32 (global group index) / grp_rank int32, sorted by rank within a class.
    """
    default_accept: bool
    rank_rule: np.ndarray
    rank_action: np.ndarray
    proto_slot: np.ndarray
    slot_wild: np.ndarray
    slot_pt_start: np.ndarray
    slot_pt_len: np.ndarray
    pt_start_key: np.ndarray
    pt_class: np.ndarray
    cls_v4_start: np.ndarray
    cls_v4_len: np.ndarray
    cls_v6_start: np.ndarray
    cls_v6_len: np.ndarray
    cls_grp_start: np.ndarray
    cls_grp_len: np.ndarray
    v4_start: np.ndarray
    v4_rank: np.ndarray
    v6_start_hi: np.ndarray
    v6_start_lo: np.ndarray
    v6_rank: np.ndarray
    grp_group: np.ndarray
    grp_rank: np.ndarray

    @property
    def nbytes(self) -> int:
        return sum(v.nbytes for v in self.__dict__.values() if isinstance(v, np.ndarray))


def rank_rules(rules: list[Rule], order: str) -> np.ndarray:
    """Rank (int32) of each rule of canonical list ``rules`` under ``order``."""
    n = len(rules)
    pos = np.arange(n, dtype=np.int64)
    is_allow = np.array([r.action == "allow" for r in rules], dtype=bool)
    if order == "allow,deny":
        key = np.where(is_allow, n + pos, pos)
    elif order == "deny,allow":
        key = np.where(is_allow, pos, n + pos)
    elif order == "priority":
        prio = np.array([r.priority for r in rules], dtype=np.int64)
        key = (prio * 2 + is_allow) * (n + 1) + pos
    else:
        raise ValueError(f"unknown order {order!r}")
    ranks = np.empty(n, dtype=np.int32)
    ranks[np.argsort(key, kind="stable")] = np.arange(n, dtype=np.int32)
    return ranks


# ---- rule rows ---------------------------------------------------------------------------
# A rule's numbers, packed once per Rule object as 13 little-endian 64-bit words: protocol,
# port_lo, port_hi, icmp_type, icmp_code, priority, action code, peer kind (0 IPv4, 1 IPv6,
# 2 group), prefix length, then the inclusive address bounds lo_hi, lo_lo, hi_hi, hi_lo
# (unsigned; IPv4 in the low words).  Rules are immutable and shared by every policy that
# holds their group, so the packed row is kept on the Rule itself (an attribute outside the
# dataclass fields: equality, hashing, repr and ``replace`` ignore it) and a direction's
# rows are one C-level ``b"".join``.  Change the attribute's suffix with the layout.
# ``_ip``/``_prefixlen``/``_version`` are the stdlib ipaddress objects' own fields.
_ROW_ATTR = "_fastsg_policy_row_v1"
NROW = 13
R_PROTO, R_PORT_LO, R_PORT_HI, R_TYPE, R_CODE, R_PRIO, R_ACTION, R_KIND, R_PLEN, R_ADDR = range(10)
KIND_V4, KIND_V6, KIND_GROUP = 0, 1, 2
_CACHED_ROW = operator.attrgetter(_ROW_ATTR)
_INTS = operator.attrgetter("protocol", "port_lo", "port_hi", "icmp_type", "icmp_code", "priority")
_ACTION = operator.attrgetter("action")
_CIDR = operator.attrgetter("cidr")
_GROUP = operator.attrgetter("group")
_NET_IP = operator.attrgetter("network_address._ip")         # == int(net.network_address)
_NET_PLEN_VER = operator.attrgetter("_prefixlen", "_version")  # == prefixlen, version
_M64 = (1 << 64) - 1
_M128 = (1 << 128) - 1


def _pack_rows(rules) -> bytes:
    """The rows of ``rules`` (C-level attribute reads; Python code only per IPv6 rule)."""
    n = len(rules)
    out = np.zeros((n, NROW), np.int64)
    out[:, :R_ACTION] = np.fromiter(chain.from_iterable(map(_INTS, rules)), np.int64, 6 * n).reshape(n, 6)
    out[:, R_ACTION] = np.fromiter(map(ACTION_CODE.__getitem__, map(_ACTION, rules)), np.int64, n)
    out[:, R_KIND] = KIND_GROUP
    nets = list(map(_CIDR, rules))
    pos = [p for p, net in enumerate(nets) if net is not None]
    if pos:
        nets = [nets[p] for p in pos]
        m = len(pos)
        plen_ver = np.fromiter(chain.from_iterable(map(_NET_PLEN_VER, nets)), np.int64, 2 * m).reshape(m, 2)
        ips = list(map(_NET_IP, nets))
        pos = np.asarray(pos, np.int64)
        is4 = plen_ver[:, 1] == 4
        out[pos, R_KIND] = np.where(is4, KIND_V4, KIND_V6)
        out[pos, R_PLEN] = plen_ver[:, 0]
        bounds = out.view(np.uint64)
        j4 = np.flatnonzero(is4)
        if len(j4):
            lo = np.fromiter(map(ips.__getitem__, j4.tolist()), np.uint64, len(j4))
            bounds[pos[j4], R_ADDR + 1] = lo
            bounds[pos[j4], R_ADDR + 3] = lo | (np.uint64(0xFFFFFFFF) >> plen_ver[j4, 0].astype(np.uint64))
        for j in np.flatnonzero(~is4).tolist():
            lo = ips[j]
            hi = lo | (_M128 >> int(plen_ver[j, 0]))
            bounds[pos[j], R_ADDR:] = (lo >> 64, lo & _M64, hi >> 64, hi & _M64)
    return out.tobytes()


def _rows(rules) -> bytes:
    """The packed rows of ``rules``, packing (and keeping) those not packed yet."""
    try:
        return b"".join(map(_CACHED_ROW, rules))
    except AttributeError:
        pass
    missing = [rule for rule in rules if not hasattr(rule, _ROW_ATTR)]
    packed = _pack_rows(missing)
    size = 8 * NROW
    try:
        for k, rule in enumerate(missing):
            object.__setattr__(rule, _ROW_ATTR, packed[k * size:(k + 1) * size])
        return b"".join(map(_CACHED_ROW, rules))
    except (AttributeError, TypeError):             # no instance dict: just don't cache
        return _pack_rows(rules)


def _columns(rules, rule_index, group_index):
    """The arguments of ``_compile`` after ``order`` (see there), calling ``rule_index``
    once per rule and ``group_index`` once per distinct group."""
    n = len(rules)
    rows = np.frombuffer(_rows(rules), np.int64).reshape(n, NROW)
    ridx = np.fromiter(map(rule_index, rules), np.int64, n)
    groups = list(map(_GROUP, rules))
    if groups.count(None) == n:
        glocal = np.full(n, -1, np.int64)
        gglob = np.zeros(0, np.int32)
    else:
        local = {g: i for i, g in enumerate(g for g in dict.fromkeys(groups) if g is not None)}
        gglob = np.fromiter(map(group_index, local), np.int32, len(local))
        local[None] = -1
        glocal = np.fromiter(map(local.__getitem__, groups), np.int64, n)
    return rows, ridx, glocal, gglob, _zobrist(n)


# Zobrist keys per rule position (two uint64 each); any fixed random values will do.
_ZOBRIST = np.zeros((0, 2), np.uint64)


def _zobrist(n: int) -> np.ndarray:
    global _ZOBRIST
    if len(_ZOBRIST) < n:
        size = max(1024, 2 * n)
        _ZOBRIST = np.random.default_rng(0x5EC6).integers(0, 1 << 64, size=(size, 2), dtype=np.uint64,
                                                          endpoint=False)
    return _ZOBRIST[:n]


# ---- interval tables -----------------------------------------------------------------
# A class's IPv4 (or IPv6) table: the address space cut at every rule's range ends, each
# elementary interval holding the least rank of the ranges covering it (NO_RANK if none),
# equal neighbours merged, so a lookup is one "last start <= x" search.  The table is
# canonical: it starts at 0 and a new entry starts exactly where the least rank changes.
# Address ranges are CIDR blocks, so any two are nested or disjoint (laminar): sorted by
# (lo ascending, hi descending, rank ascending) they form a forest that one pass with a
# stack walks (a block's effective rank is the least of its own and its enclosing
# blocks'; the innermost open block decides each point).  Addresses are 128-bit (hi, lo)
# uint64 pairs; IPv4 uses hi = 0.
# (These helpers live here, not in a module of their own, because numba's on-disk cache of
# a caller is keyed on the caller's file only: a callee edited in another file would leave
# ``_compile``'s cached machine code stale.)
@njit()
def _emit(out_hi, out_lo, out_rank, t, s_hi, s_lo, rank):
    """Append (start, rank) to the canonical table out[:t] -> new t.  Starts come in
    nondecreasing order; a start equal to the last one overwrites it (the later value
    holds from there); equal neighbouring ranks merge."""
    if out_hi[t - 1] == s_hi and out_lo[t - 1] == s_lo:
        if t >= 2 and out_rank[t - 2] == rank:
            return t - 1
        out_rank[t - 1] = rank
        return t
    if out_rank[t - 1] == rank:
        return t
    out_hi[t] = s_hi
    out_lo[t] = s_lo
    out_rank[t] = rank
    return t + 1


@njit()
def _laminar_min_rank(items, i0, i1, addr, rank, is4, stk_hi, stk_lo, stk_rank,
                     out_hi, out_lo, out_rank):
    """Least-rank table of the CIDR blocks ``items[i0:i1]`` (rule positions, sorted by
    (lo, -hi, rank)).  addr: uint64[:, 4] per position (lo_hi, lo_lo, hi_hi, hi_lo),
    inclusive; rank: int32 per position; is4: the space ends at 2**32 (else 2**128).

    stk_*: scratch of at least i1 - i0 entries; out_*: at least 2 * (i1 - i0) + 1.
    Writes the table (starts as hi/lo pairs, ranks) to out_*[:t] and returns t >= 1.
    """
    no_rank = np.int32(0x7FFFFFFF)
    one = np.uint64(1)
    out_hi[0] = np.uint64(0)
    out_lo[0] = np.uint64(0)
    out_rank[0] = no_rank
    t = 1
    sp = 0
    for j in range(i0, i1):
        p = items[j]
        l_hi = addr[p, 0]
        l_lo = addr[p, 1]
        # close the blocks that end before this one starts
        while sp > 0 and (stk_hi[sp - 1] < l_hi or (stk_hi[sp - 1] == l_hi and stk_lo[sp - 1] < l_lo)):
            sp -= 1
            e_lo = stk_lo[sp] + one
            e_hi = stk_hi[sp] + one if e_lo == 0 else stk_hi[sp]
            outer = stk_rank[sp - 1] if sp > 0 else no_rank
            t = _emit(out_hi, out_lo, out_rank, t, e_hi, e_lo, outer)
        outer = stk_rank[sp - 1] if sp > 0 else no_rank
        r = rank[p]
        eff = r if r < outer else outer
        t = _emit(out_hi, out_lo, out_rank, t, l_hi, l_lo, eff)
        stk_hi[sp] = addr[p, 2]
        stk_lo[sp] = addr[p, 3]
        stk_rank[sp] = eff
        sp += 1
    while sp > 0:
        sp -= 1
        h_hi = stk_hi[sp]
        h_lo = stk_lo[sp]
        if is4:
            at_end = h_lo == _MAX32
        else:
            at_end = h_hi == _MAX64 and h_lo == _MAX64
        if at_end:
            break                   # the enclosing blocks end there too
        e_lo = h_lo + one
        e_hi = h_hi + one if e_lo == 0 else h_hi
        outer = stk_rank[sp - 1] if sp > 0 else no_rank
        t = _emit(out_hi, out_lo, out_rank, t, e_hi, e_lo, outer)
    return t


@njit()
def _argsort(keys):
    """Stable argsort of uint64 ``keys`` (bottom-up merge sort; one small routine instead of
    numpy's sorts, which cost seconds of JIT compile each)."""
    n = len(keys)
    a = np.arange(n)
    b = np.empty(n, np.int64)
    width = 1
    while width < n:
        for i in range(0, n, 2 * width):
            mid = min(i + width, n)
            hi = min(i + 2 * width, n)
            left = i
            right = mid
            for k in range(i, hi):
                if right < hi and (left >= mid or keys[a[right]] < keys[a[left]]):
                    b[k] = a[right]
                    right += 1
                else:
                    b[k] = a[left]
                    left += 1
        a, b = b, a
        width *= 2
    return a


@njit()
def _reserve(a, used, extra):
    """``a`` with room for ``used + extra`` (a bigger copy when needed)."""
    if used + extra <= len(a):
        return a
    size = 2 * len(a)
    if size < used + extra:
        size = used + extra
    b = np.empty(size, np.int64)
    for j in range(used):
        b[j] = a[j]
    return b


@njit()
def _probe(ht_hi, ht_lo, ht_val, mask, h_hi, h_lo):
    """Open-addressing probe for hash (h_hi, h_lo) -> (class or -1, slot index)."""
    i = np.int64(h_lo & mask)
    while ht_val[i] >= 0:
        if ht_hi[i] == h_hi and ht_lo[i] == h_lo:
            return ht_val[i], i
        i = (i + 1) & np.int64(mask)
    return np.int32(-1), i


@njit()
def _intern(ht_hi, ht_lo, ht_val, mask, h_hi, h_lo, members, count, mem, n_mem, ncls, cls_mem):
    """Class of the member set hashed (h_hi, h_lo); a set not seen before becomes class
    ``ncls``, its ``count`` members appended to ``mem``.  -> (class, mem, n_mem, ncls)."""
    c, hpos = _probe(ht_hi, ht_lo, ht_val, mask, h_hi, h_lo)
    if c < 0:
        c = np.int32(ncls)
        ht_hi[hpos] = h_hi
        ht_lo[hpos] = h_lo
        ht_val[hpos] = c
        mem = _reserve(mem, n_mem, count)
        for j in range(count):
            mem[n_mem] = members[j]
            n_mem += 1
        ncls += 1
        cls_mem[ncls] = n_mem
    return c, mem, n_mem, ncls


@njit()
def _compile(order, rows, ridx, glocal, gglob, zob):
    """All of one direction's tables from its rule rows (see the module docstring).

    rows int64[n, NROW]: the packed rule rows (see "rule rows" above; address words are uint64
    bit patterns); ridx: global rule index per position; glocal: local group of a
    group-peer rule, else -1 (gglob: local group -> global index); zob uint64[n, 2]:
    Zobrist keys.  Returns (i32, u8, u32, u64) blobs that ``compile_direction`` cuts into
    the tables.
    """
    n = rows.shape[0]
    addr = np.empty((n, 4), np.uint64)          # lo_hi, lo_lo, hi_hi, hi_lo
    for p in range(n):
        for k in range(4):
            addr[p, k] = np.uint64(rows[p, R_ADDR + k])
    # ---- ranks
    key = np.empty(n, np.uint64)
    for p in range(n):
        allow = np.int64(1) if rows[p, R_ACTION] == 0 else np.int64(0)
        if order == 0:
            key[p] = np.uint64(allow * n + p)
        elif order == 1:
            key[p] = np.uint64((1 - allow) * n + p)
        else:
            key[p] = np.uint64((rows[p, R_PRIO] * 2 + allow) * (n + 1) + p)
    by_rank = _argsort(key)
    rank = np.empty(n, np.int32)
    rank_rule = np.empty(n, np.int32)
    rank_action = np.empty(n, np.uint8)
    for k in range(n):
        p = by_rank[k]
        rank[p] = k
        rank_rule[k] = ridx[p]
        rank_action[k] = rows[p, R_ACTION]
    # ---- protocol slots: slot 0 for the protocols no rule names (when there are any)
    named = np.zeros(256, np.bool_)
    for p in range(n):
        if rows[p, R_PROTO] >= 0:
            named[rows[p, R_PROTO]] = True
    n_named = 0
    for q in range(256):
        if named[q]:
            n_named += 1
    first = 1 if n_named < 256 else 0
    nslots = first + n_named
    proto_slot = np.zeros(256, np.uint8)
    slot_proto = np.full(nslots, -1, np.int64)
    s = first
    for q in range(256):
        if named[q]:
            proto_slot[q] = s
            slot_proto[s] = q
            s += 1
    # ---- per rule: port-key range [klo, kend) within its own slot, or wild; an ICMP rule
    # with a code and any type (``code_only``) holds the 256 keys type*256 + code instead
    wild = np.zeros(n, np.bool_)
    klo = np.zeros(n, np.int64)
    kend = np.zeros(n, np.int64)
    code_only = np.zeros(n, np.bool_)
    n_ranges = 0
    slot_count = np.zeros(nslots + 1, np.int64)
    n_all = 0
    for p in range(n):
        pr = rows[p, R_PROTO]
        w = True
        if pr == 6 or pr == 17:
            if not (rows[p, R_PORT_LO] == 0 and rows[p, R_PORT_HI] == 65535):
                w = False
                klo[p] = rows[p, R_PORT_LO]
                kend[p] = rows[p, R_PORT_HI] + 1
        elif pr == 1 or pr == 58:
            if rows[p, R_TYPE] >= 0:
                w = False
                if rows[p, R_CODE] < 0:
                    klo[p] = rows[p, R_TYPE] * 256
                    kend[p] = klo[p] + 256
                else:
                    klo[p] = rows[p, R_TYPE] * 256 + rows[p, R_CODE]
                    kend[p] = klo[p] + 1
            elif rows[p, R_CODE] >= 0:
                w = False
                code_only[p] = True
        wild[p] = w
        if not w:
            n_ranges += 256 if code_only[p] else 1
        if pr >= 0:
            slot_count[np.int64(proto_slot[pr]) + 1] += 1
        else:
            n_all += 1
    slot_first = slot_count
    for s in range(nslots):
        slot_first[s + 1] += slot_first[s]
    by_slot = np.empty(n - n_all, np.int64)
    all_rules = np.empty(n_all, np.int64)
    fill = slot_first.copy()
    a = 0
    for p in range(n):
        pr = rows[p, R_PROTO]
        if pr >= 0:
            s = np.int64(proto_slot[pr])
            by_slot[fill[s]] = p
            fill[s] += 1
        else:
            all_rules[a] = p
            a += 1
    # ---- member order inside a class: by (kind, lo_hi, lo_lo, prefix length, rank): kind
    # buckets filled in rank order, then stable sorts within the IPv4 / IPv6 buckets
    bucket = np.zeros(4, np.int64)
    for p in range(n):
        bucket[rows[p, R_KIND] + 1] += 1
    for k in range(3):
        bucket[k + 1] += bucket[k]
    srt = np.empty(n, np.int64)
    fill = bucket.copy()
    for k in range(n):
        p = by_rank[k]
        srt[fill[rows[p, R_KIND]]] = p
        fill[rows[p, R_KIND]] += 1
    for kd in range(2):                  # IPv4: one pass on lo << 6 | plen; IPv6: three
        b0 = bucket[kd]
        mb = bucket[kd + 1] - b0
        if mb < 2:
            continue
        vals = np.empty(mb, np.uint64)
        tmp = np.empty(mb, np.int64)
        for col in range(1 if kd == 0 else 3):
            for j in range(mb):
                p = srt[b0 + j]
                if kd == 0:
                    vals[j] = (addr[p, 1] << np.uint64(6)) | np.uint64(rows[p, R_PLEN])
                elif col == 0:
                    vals[j] = np.uint64(rows[p, R_PLEN])
                else:
                    vals[j] = addr[p, 2 - col]
            perm = _argsort(vals)
            for j in range(mb):
                tmp[j] = srt[b0 + perm[j]]
            for j in range(mb):
                srt[b0 + j] = tmp[j]
    skey = np.empty(n, np.int64)
    for j in range(n):
        skey[srt[j]] = j
    # ---- pass 1: classes (member sets, deduplicated by hash) and port tables
    max_cls = 2 * nslots + 2 * n_ranges + 2
    hsize = 16
    while hsize < 2 * max_cls:
        hsize *= 2
    mask = np.uint64(hsize - 1)
    ht_hi = np.zeros(hsize, np.uint64)
    ht_lo = np.zeros(hsize, np.uint64)
    ht_val = np.full(hsize, -1, np.int32)
    cls_mem = np.zeros(max_cls + 1, np.int64)      # members of class c: mem[cls_mem[c]:cls_mem[c+1]]
    mem = np.empty(max(16, 2 * n), np.int64)
    n_mem = 0
    ncls = 0
    slot_wild = np.full(nslots, -1, np.int32)
    slot_pt_start = np.zeros(nslots, np.int32)
    slot_pt_len = np.zeros(nslots, np.int32)
    pt_key = np.empty(2 * n_ranges + nslots, np.int32)
    pt_cls = np.empty(2 * n_ranges + nslots, np.int32)
    npt = 0
    all_hi = np.uint64(0)
    all_lo = np.uint64(0)
    for j in range(n_all):
        all_hi ^= zob[all_rules[j], 0]
        all_lo ^= zob[all_rules[j], 1]
    active = np.empty(n, np.int64)
    where = np.empty(n, np.int64)
    wild_members = np.empty(n, np.int64)
    for s in range(nslots):
        b0 = slot_first[s]
        b1 = slot_first[s + 1]
        # wild class: the `all` rules and this slot's wild rules
        h_hi = all_hi
        h_lo = all_lo
        cnt = n_all
        for j in range(n_all):
            wild_members[j] = all_rules[j]
        for j in range(b0, b1):
            p = by_slot[j]
            if wild[p]:
                h_hi ^= zob[p, 0]
                h_lo ^= zob[p, 1]
                wild_members[cnt] = p
                cnt += 1
        if cnt > 0:
            c, mem, n_mem, ncls = _intern(ht_hi, ht_lo, ht_val, mask, h_hi, h_lo, wild_members,
                                          cnt, mem, n_mem, ncls, cls_mem)
            slot_wild[s] = c
        # port table: sweep the range starts and ends of this slot's ranged rules
        m = 0
        for j in range(b0, b1):
            if not wild[by_slot[j]]:
                m += 256 if code_only[by_slot[j]] else 1
        slot_pt_start[s] = npt
        if m == 0:
            continue
        # the slot's key ranges [r_lo, r_end) and their rules (a rule's ranges are disjoint,
        # so it is active in at most one at a time)
        r_rule = np.empty(m, np.int64)
        r_lo = np.empty(m, np.int64)
        r_end = np.empty(m, np.int64)
        m = 0
        for j in range(b0, b1):
            p = by_slot[j]
            if wild[p]:
                continue
            if code_only[p]:
                for t in range(256):
                    r_rule[m] = p
                    r_lo[m] = t * 256 + rows[p, R_CODE]
                    r_end[m] = r_lo[m] + 1
                    m += 1
            else:
                r_rule[m] = p
                r_lo[m] = klo[p]
                r_end[m] = kend[p]
                m += 1
        vals = np.empty(m, np.uint64)
        for j in range(m):
            vals[j] = np.uint64(r_lo[j])
        adds = _argsort(vals)
        for j in range(m):
            vals[j] = np.uint64(r_end[j])
        ends = _argsort(vals)
        ia = 0
        ie = 0
        n_act = 0
        h_hi = np.uint64(0)
        h_lo = np.uint64(0)
        k = np.int64(0)
        while True:
            while ie < m and r_end[ends[ie]] == k:
                p = r_rule[ends[ie]]
                ie += 1
                h_hi ^= zob[p, 0]
                h_lo ^= zob[p, 1]
                w = where[p]
                n_act -= 1
                last = active[n_act]
                active[w] = last
                where[last] = w
            while ia < m and r_lo[adds[ia]] == k:
                p = r_rule[adds[ia]]
                ia += 1
                h_hi ^= zob[p, 0]
                h_lo ^= zob[p, 1]
                active[n_act] = p
                where[p] = n_act
                n_act += 1
            c = np.int32(-1)
            if n_act > 0:
                c, mem, n_mem, ncls = _intern(ht_hi, ht_lo, ht_val, mask, h_hi, h_lo, active,
                                              n_act, mem, n_mem, ncls, cls_mem)
            if npt == slot_pt_start[s] or pt_cls[npt - 1] != c:
                pt_key[npt] = np.int32(k)
                pt_cls[npt] = c
                npt += 1
            if ia < m:
                k = r_lo[adds[ia]]
                if ie < m and r_end[ends[ie]] < k:
                    k = r_end[ends[ie]]
            elif ie < m:
                k = r_end[ends[ie]]
            else:
                break
        slot_pt_len[s] = npt - slot_pt_start[s]
    # ---- pass 2: each class's IPv4 / IPv6 tables and group list
    n4 = 0
    n6 = 0
    ng = 0
    biggest = 0
    for c in range(ncls):
        k4 = 0
        k6 = 0
        for j in range(cls_mem[c], cls_mem[c + 1]):
            kd = rows[mem[j], R_KIND]
            if kd == 0:
                k4 += 1
            elif kd == 1:
                k6 += 1
            else:
                ng += 1
        n4 += 2 * k4 + 1 if k4 > 0 else 0
        n6 += 2 * k6 + 1 if k6 > 0 else 0
        if cls_mem[c + 1] - cls_mem[c] > biggest:
            biggest = cls_mem[c + 1] - cls_mem[c]
    v4_start = np.empty(n4, np.uint32)
    v4_rank = np.empty(n4, np.int32)
    v6_hi = np.empty(n6, np.uint64)
    v6_lo = np.empty(n6, np.uint64)
    v6_rank = np.empty(n6, np.int32)
    grp_group = np.empty(ng, np.int32)
    grp_rank = np.empty(ng, np.int32)
    cls_v4_start = np.zeros(ncls, np.int32)
    cls_v4_len = np.zeros(ncls, np.int32)
    cls_v6_start = np.zeros(ncls, np.int32)
    cls_v6_len = np.zeros(ncls, np.int32)
    cls_grp_start = np.zeros(ncls, np.int32)
    cls_grp_len = np.zeros(ncls, np.int32)
    keys = np.empty(biggest, np.uint64)
    items = np.empty(biggest, np.int64)
    stk_hi = np.empty(biggest, np.uint64)
    stk_lo = np.empty(biggest, np.uint64)
    stk_rank = np.empty(biggest, np.int32)
    out_hi = np.empty(2 * biggest + 1, np.uint64)
    out_lo = np.empty(2 * biggest + 1, np.uint64)
    out_rank = np.empty(2 * biggest + 1, np.int32)
    seen = np.full(len(gglob), -1, np.int64)
    n4 = 0
    n6 = 0
    ng = 0
    for c in range(ncls):
        c0 = cls_mem[c]
        mc = cls_mem[c + 1] - c0
        for j in range(mc):
            keys[j] = np.uint64(skey[mem[c0 + j]])
        perm = _argsort(keys[:mc])
        for j in range(mc):
            items[j] = srt[skey[mem[c0 + perm[j]]]]
        j4 = 0
        while j4 < mc and rows[items[j4], R_KIND] == 0:
            j4 += 1
        j6 = j4
        while j6 < mc and rows[items[j6], R_KIND] == 1:
            j6 += 1
        cls_v4_start[c] = n4
        if j4 > 0:
            t = _laminar_min_rank(items, 0, j4, addr, rank, True, stk_hi, stk_lo, stk_rank,
                                 out_hi, out_lo, out_rank)
            for j in range(t):
                v4_start[n4 + j] = np.uint32(out_lo[j])
                v4_rank[n4 + j] = out_rank[j]
            n4 += t
        cls_v4_len[c] = n4 - cls_v4_start[c]
        cls_v6_start[c] = n6
        if j6 > j4:
            t = _laminar_min_rank(items, j4, j6, addr, rank, False, stk_hi, stk_lo, stk_rank,
                                 out_hi, out_lo, out_rank)
            for j in range(t):
                v6_hi[n6 + j] = out_hi[j]
                v6_lo[n6 + j] = out_lo[j]
                v6_rank[n6 + j] = out_rank[j]
            n6 += t
        cls_v6_len[c] = n6 - cls_v6_start[c]
        cls_grp_start[c] = ng
        for j in range(j6, mc):            # by rank; a group met again can never decide
            p = items[j]
            g = glocal[p]
            if seen[g] != c:
                seen[g] = c
                grp_group[ng] = gglob[g]
                grp_rank[ng] = rank[p]
                ng += 1
        cls_grp_len[c] = ng - cls_grp_start[c]
    # ---- one blob per element type (returning 21 arrays costs more than computing them)
    i32 = np.empty(8 + n + 3 * nslots + 2 * npt + 6 * ncls + n4 + n6 + 2 * ng, np.int32)
    i32[0] = n
    i32[1] = nslots
    i32[2] = npt
    i32[3] = ncls
    i32[4] = n4
    i32[5] = n6
    i32[6] = ng
    i32[7] = 0
    o = 8
    for part, m in ((rank_rule, n), (slot_wild, nslots), (slot_pt_start, nslots), (slot_pt_len, nslots),
                    (pt_key, npt), (pt_cls, npt), (cls_v4_start, ncls), (cls_v4_len, ncls),
                    (cls_v6_start, ncls), (cls_v6_len, ncls), (cls_grp_start, ncls), (cls_grp_len, ncls),
                    (v4_rank, n4), (v6_rank, n6), (grp_group, ng), (grp_rank, ng)):
        for j in range(m):
            i32[o + j] = part[j]
        o += m
    u8 = np.empty(n + 256, np.uint8)
    for j in range(n):
        u8[j] = rank_action[j]
    for j in range(256):
        u8[n + j] = proto_slot[j]
    u64 = np.empty(2 * n6, np.uint64)
    u32 = np.empty(n4, np.uint32)
    for j in range(n6):
        u64[j] = v6_hi[j]
        u64[n6 + j] = v6_lo[j]
    for j in range(n4):
        u32[j] = v4_start[j]
    return i32, u8, u32, u64


def compile_direction(rules: list[Rule], order: str, rule_index, group_index) -> DirectionTables:
    """Compile the canonical rule list of one policy direction.

    rule_index(rule) -> int: the rule's global index (its position in ``rule_names``);
    group_index(group_id) -> int: the group's global index (as in the membership table).
    """
    code = ORDER_CODE.get(order)
    if code is None:
        raise ValueError(f"unknown order {order!r}")
    i32, u8, v4_start, u64 = _compile(code, *_columns(rules, rule_index, group_index))
    n, nslots, npt, ncls, n4, n6, ng = i32[:7].tolist()
    cut = list(accumulate((8, n, nslots, nslots, nslots, npt, npt, ncls, ncls, ncls, ncls, ncls, ncls,
                           n4, n6, ng, ng)))
    (rank_rule, slot_wild, slot_pt_start, slot_pt_len, pt_start_key, pt_class, cls_v4_start, cls_v4_len,
     cls_v6_start, cls_v6_len, cls_grp_start, cls_grp_len, v4_rank, v6_rank, grp_group,
     grp_rank) = [i32[cut[k]:cut[k + 1]] for k in range(16)]
    return DirectionTables(
        default_accept=ORDER_DEFAULT_ACCEPT[order],
        rank_rule=rank_rule, rank_action=u8[:n], proto_slot=u8[n:],
        slot_wild=slot_wild, slot_pt_start=slot_pt_start, slot_pt_len=slot_pt_len,
        pt_start_key=pt_start_key, pt_class=pt_class,
        cls_v4_start=cls_v4_start, cls_v4_len=cls_v4_len, cls_v6_start=cls_v6_start,
        cls_v6_len=cls_v6_len, cls_grp_start=cls_grp_start, cls_grp_len=cls_grp_len,
        v4_start=v4_start, v4_rank=v4_rank, v6_start_hi=u64[:n6], v6_start_lo=u64[n6:],
        v6_rank=v6_rank, grp_group=grp_group, grp_rank=grp_rank)
