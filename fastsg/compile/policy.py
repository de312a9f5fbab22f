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
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..world.model import ICMP_PROTOCOLS, PORT_PROTOCOLS, Rule
from .intervals import NO_RANK, min_rank_table_u64, min_rank_table_u128

FRAG_KEY = 65536
KEY_END = 65537            # port keys live in [0, KEY_END)
ACTION_CODE = {"allow": 0, "deny": 1, "reject": 2}   # == Verdict ACCEPT, DROP, REJECT
ORDER_DEFAULT_ACCEPT = {"allow,deny": False, "deny,allow": True, "priority": False}


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


def _key_range(rule: Rule, slot_proto: int):
    """Inclusive port-key range of ``rule`` within a slot, or None when it is wild."""
    if rule.protocol == -1 or slot_proto not in PORT_PROTOCOLS + ICMP_PROTOCOLS:
        return None
    if slot_proto in PORT_PROTOCOLS:
        if rule.port_lo == 0 and rule.port_hi == 65535:
            return None
        return rule.port_lo, rule.port_hi
    if rule.icmp_type < 0:
        return None
    if rule.icmp_code < 0:
        return rule.icmp_type * 256, rule.icmp_type * 256 + 255
    k = rule.icmp_type * 256 + rule.icmp_code
    return k, k


class _Builder:
    """Accumulates classes and port tables while one direction compiles."""

    def __init__(self, rules, ranks, group_index):
        self.rules = rules
        self.ranks = ranks
        self.group_index = group_index
        self.classes: dict[bytes, int] = {}
        self.cls = {k: [] for k in ("v4s", "v4l", "v6s", "v6l", "gs", "gl")}
        self.v4_start, self.v4_rank = [], []
        self.v6_hi, self.v6_lo, self.v6_rank = [], [], []
        self.grp_group, self.grp_rank = [], []
        self.n4 = self.n6 = self.ng = 0
        self.pt_start_key, self.pt_class = [], []
        self.npt = 0

    def class_of(self, members: list[int]) -> int:
        """Class index of the rule set ``members`` (rule positions), built once."""
        if not members:
            return -1
        ident = np.asarray(sorted(members), dtype=np.int32).tobytes()
        c = self.classes.get(ident)
        if c is not None:
            return c
        c = len(self.classes)
        self.classes[ident] = c
        v4lo, v4hi, v4r, v6lo, v6hi, v6r, groups = [], [], [], [], [], [], []
        for p in members:
            rule, rank = self.rules[p], int(self.ranks[p])
            if rule.group is not None:
                groups.append((rank, self.group_index(rule.group)))
            elif rule.cidr.version == 4:
                v4lo.append(int(rule.cidr.network_address))
                v4hi.append(int(rule.cidr.broadcast_address))
                v4r.append(rank)
            else:
                v6lo.append(int(rule.cidr.network_address))
                v6hi.append(int(rule.cidr.broadcast_address))
                v6r.append(rank)
        self.cls["v4s"].append(self.n4)
        if v4r:
            starts, ranks = min_rank_table_u64(np.array(v4lo, np.uint64), np.array(v4hi, np.uint64),
                                               np.array(v4r, np.int32), 1 << 32)
            self.v4_start.append(starts.astype(np.uint32))
            self.v4_rank.append(ranks)
            self.n4 += len(ranks)
        self.cls["v4l"].append(self.n4 - self.cls["v4s"][-1])
        self.cls["v6s"].append(self.n6)
        if v6r:
            hi, lo, ranks = min_rank_table_u128(v6lo, v6hi, v6r)
            self.v6_hi.append(hi)
            self.v6_lo.append(lo)
            self.v6_rank.append(ranks)
            self.n6 += len(ranks)
        self.cls["v6l"].append(self.n6 - self.cls["v6s"][-1])
        groups.sort()
        # a group met again later in rank order can never decide: keep its best rank only
        seen = set()
        groups = [(r, g) for r, g in groups if not (g in seen or seen.add(g))]
        self.cls["gs"].append(self.ng)
        self.cls["gl"].append(len(groups))
        self.grp_rank.extend(r for r, _ in groups)
        self.grp_group.extend(g for _, g in groups)
        self.ng += len(groups)
        return c

    def port_table(self, ranged: list[tuple[int, int, int]]) -> tuple[int, int]:
        """Port table for (key_lo, key_hi, position) rules -> (start, length)."""
        if not ranged:
            return self.npt, 0
        klo = np.array([r[0] for r in ranged], dtype=np.int64)
        khi = np.array([r[1] for r in ranged], dtype=np.int64)
        pos = np.array([r[2] for r in ranged], dtype=np.int64)
        points = np.unique(np.concatenate([[0], klo, khi + 1]))
        points = points[points < KEY_END]
        cover = (klo[:, None] <= points[None, :]) & (khi[:, None] >= points[None, :])
        classes = []
        for j in range(len(points)):
            classes.append(self.class_of(pos[cover[:, j]].tolist()))
        classes = np.array(classes, dtype=np.int32)
        keep = np.ones(len(points), dtype=bool)
        keep[1:] = classes[1:] != classes[:-1]
        start = self.npt
        self.pt_start_key.append(points[keep].astype(np.int32))
        self.pt_class.append(classes[keep])
        self.npt += int(keep.sum())
        return start, self.npt - start


def _cat(parts, dtype):
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)


def compile_direction(rules: list[Rule], order: str, rule_index, group_index) -> DirectionTables:
    """Compile the canonical rule list of one policy direction.

    rule_index(rule) -> int: the rule's global index (its position in ``rule_names``);
    group_index(group_id) -> int: the group's global index (as in the membership table).
    """
    ranks = rank_rules(rules, order) if rules else np.zeros(0, np.int32)
    rank_rule = np.zeros(len(rules), np.int32)
    rank_action = np.zeros(len(rules), np.uint8)
    for p, rule in enumerate(rules):
        rank_rule[ranks[p]] = rule_index(rule)
        rank_action[ranks[p]] = ACTION_CODE[rule.action]

    specific = sorted({r.protocol for r in rules if r.protocol >= 0})
    slot_protos = [-1] + specific          # slot 0: protocols no rule names
    proto_slot = np.zeros(256, np.uint8)
    for s, p in enumerate(slot_protos[1:], start=1):
        proto_slot[p] = s
    b = _Builder(rules, ranks, group_index)
    slot_wild, slot_pt_start, slot_pt_len = [], [], []
    for sp in slot_protos:
        wild, ranged = [], []
        for p, rule in enumerate(rules):
            if rule.protocol != -1 and rule.protocol != sp:
                continue
            kr = _key_range(rule, sp)
            if kr is None:
                wild.append(p)
            else:
                ranged.append((kr[0], kr[1], p))
        slot_wild.append(b.class_of(wild))
        start, length = b.port_table(ranged)
        slot_pt_start.append(start)
        slot_pt_len.append(length)
    i32 = lambda xs: np.asarray(xs, dtype=np.int32)
    return DirectionTables(
        default_accept=ORDER_DEFAULT_ACCEPT[order],
        rank_rule=rank_rule, rank_action=rank_action, proto_slot=proto_slot,
        slot_wild=i32(slot_wild), slot_pt_start=i32(slot_pt_start), slot_pt_len=i32(slot_pt_len),
        pt_start_key=_cat(b.pt_start_key, np.int32), pt_class=_cat(b.pt_class, np.int32),
        cls_v4_start=i32(b.cls["v4s"]), cls_v4_len=i32(b.cls["v4l"]),
        cls_v6_start=i32(b.cls["v6s"]), cls_v6_len=i32(b.cls["v6l"]),
        cls_grp_start=i32(b.cls["gs"]), cls_grp_len=i32(b.cls["gl"]),
        v4_start=_cat(b.v4_start, np.uint32), v4_rank=_cat(b.v4_rank, np.int32),
        v6_start_hi=_cat(b.v6_hi, np.uint64), v6_start_lo=_cat(b.v6_lo, np.uint64),
        v6_rank=_cat(b.v6_rank, np.int32),
        grp_group=i32(b.grp_group), grp_rank=i32(b.grp_rank),
    )
