"""``compile_direction`` against brute force.

For random rule lists (and hand-picked edge cases) the compiled tables of one policy
direction are read back the way the kernel reads them (protocol slot; wild class and port
class; IPv4/IPv6 interval table at the peer address; group list) and the deciding rule
must be exactly the one a direct reading of spec section 3 picks: the matching rule that
comes first under the combining order.  The tables' structural invariants (sorted starts
beginning at 0, merged neighbours, group lists by rank with each group once, index
ranges inside their arrays) are checked too, since the kernel relies on them.
"""
from __future__ import annotations

import bisect
import ipaddress
import random
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastsg.compile.policy import (ACTION_CODE, FRAG_KEY, ORDER_DEFAULT_ACCEPT, DirectionTables,
                                   compile_direction)
from fastsg.world.model import Rule

ORDERS = ("allow,deny", "deny,allow", "priority")
NO_RANK = 0x7FFFFFFF
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

V4_BASES = ("10.0.0.0", "10.0.0.1", "10.0.0.7", "10.0.1.0", "10.0.0.255", "192.0.2.9", "0.0.0.0",
            "255.255.255.255", "127.0.0.1")
V4_PREFIXES = (0, 1, 8, 16, 24, 28, 30, 31, 32)
V6_BASES = ("2001:db8::", "2001:db8::1", "2001:db8:0:1::", "::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "2001:db8::ffff:ffff:ffff:ffff", "fe80::1", "::ffff:10.0.0.1")
V6_PREFIXES = (0, 1, 32, 63, 64, 65, 96, 120, 127, 128)
PORTS = (0, 1, 21, 22, 23, 79, 80, 81, 443, 1023, 1024, 65534, 65535)
ICMP_TYPES = (0, 3, 8, 11, 255)
ICMP_CODES = (0, 1, 13, 255)
PROTOCOLS = (-1, -1, 6, 6, 6, 17, 1, 58, 47, 0, 255, 132)
GROUPS = tuple(f"sg-{k:03d}" for k in range(6))


# ---------------------------------------------------------------------------------------
# brute force (spec section 3, written out)
# ---------------------------------------------------------------------------------------
def proto_match(rule: Rule, proto: int, frag: bool, dport: int, itype: int, icode: int) -> bool:
    if rule.protocol == -1:
        return True
    if rule.protocol != proto:
        return False
    if proto in (6, 17):
        if frag:
            return rule.port_lo == 0 and rule.port_hi == 65535
        return rule.port_lo <= dport <= rule.port_hi
    if proto in (1, 58):
        if frag:
            return rule.icmp_type == -1 and rule.icmp_code == -1
        return ((rule.icmp_type == -1 or rule.icmp_type == itype)
                and (rule.icmp_code == -1 or rule.icmp_code == icode))
    return True


def peer_match(rule: Rule, addr, peer_groups) -> bool:
    if rule.group is not None:
        return rule.group in peer_groups
    return rule.cidr.version == addr.version and addr in rule.cidr


def brute_decider(rules, order, probe):
    """Position of the deciding rule (None: no rule matches)."""
    proto, frag, dport, itype, icode, addr, peer_groups = probe
    m = [p for p, r in enumerate(rules)
         if proto_match(r, proto, frag, dport, itype, icode) and peer_match(r, addr, peer_groups)]
    if not m:
        return None
    refuse = [p for p in m if rules[p].action != "allow"]
    allow = [p for p in m if rules[p].action == "allow"]
    if order == "allow,deny":
        return refuse[0] if refuse else allow[0]
    if order == "deny,allow":
        return allow[0] if allow else refuse[0]
    return min(m, key=lambda p: (rules[p].priority, rules[p].action == "allow", p))


# ---------------------------------------------------------------------------------------
# reading the tables the way the kernel does
# ---------------------------------------------------------------------------------------
def port_key(proto, frag, dport, itype, icode) -> int:
    if frag:
        return FRAG_KEY
    if proto in (6, 17):
        return dport
    if proto in (1, 58):
        return itype * 256 + icode
    return 0


def table_decider(t: DirectionTables, probe, group_index):
    """(global rule index, action) the tables decide, or None for the default."""
    proto, frag, dport, itype, icode, addr, peer_groups = probe
    key = port_key(proto, frag, dport, itype, icode)
    held = {group_index[g] for g in peer_groups}
    slot = int(t.proto_slot[proto])
    classes = [int(t.slot_wild[slot])]
    n = int(t.slot_pt_len[slot])
    if n > 0:
        s = int(t.slot_pt_start[slot])
        keys = t.pt_start_key[s:s + n].tolist()
        classes.append(int(t.pt_class[s + bisect.bisect_right(keys, key) - 1]))
    best = NO_RANK
    for c in classes:
        if c < 0:
            continue
        if addr.version == 4:
            s, n = int(t.cls_v4_start[c]), int(t.cls_v4_len[c])
            if n:
                starts = t.v4_start[s:s + n].tolist()
                best = min(best, int(t.v4_rank[s + bisect.bisect_right(starts, int(addr)) - 1]))
        else:
            s, n = int(t.cls_v6_start[c]), int(t.cls_v6_len[c])
            if n:
                starts = [(h << 64) | l for h, l in zip(t.v6_start_hi[s:s + n].tolist(),
                                                        t.v6_start_lo[s:s + n].tolist())]
                best = min(best, int(t.v6_rank[s + bisect.bisect_right(starts, int(addr)) - 1]))
        s, n = int(t.cls_grp_start[c]), int(t.cls_grp_len[c])
        for k in range(s, s + n):            # by rank: the first held group below best decides
            r = int(t.grp_rank[k])
            if r >= best:
                break
            if int(t.grp_group[k]) in held:
                best = r
                break
    if best == NO_RANK:
        return None
    return int(t.rank_rule[best]), int(t.rank_action[best])


def check_invariants(t: DirectionTables, n_rules: int):
    i32 = ("rank_rule", "slot_wild", "slot_pt_start", "slot_pt_len", "pt_start_key", "pt_class",
           "cls_v4_start", "cls_v4_len", "cls_v6_start", "cls_v6_len", "cls_grp_start",
           "cls_grp_len", "v4_rank", "v6_rank", "grp_group", "grp_rank")
    for name in i32:
        assert getattr(t, name).dtype == np.int32, name
    assert t.rank_action.dtype == np.uint8 and t.proto_slot.dtype == np.uint8
    assert t.proto_slot.shape == (256,)
    assert t.v4_start.dtype == np.uint32
    assert t.v6_start_hi.dtype == np.uint64 and t.v6_start_lo.dtype == np.uint64
    assert len(t.rank_rule) == len(t.rank_action) == n_rules
    nslots = len(t.slot_wild)
    assert len(t.slot_pt_start) == len(t.slot_pt_len) == nslots
    assert int(t.proto_slot.max()) < nslots
    ncls = len(t.cls_v4_start)
    for name in ("cls_v4_len", "cls_v6_start", "cls_v6_len", "cls_grp_start", "cls_grp_len"):
        assert len(getattr(t, name)) == ncls
    assert len(t.pt_start_key) == len(t.pt_class)
    assert len(t.v4_start) == len(t.v4_rank)
    assert len(t.v6_start_hi) == len(t.v6_start_lo) == len(t.v6_rank)
    assert len(t.grp_group) == len(t.grp_rank)
    assert ((t.slot_wild >= -1) & (t.slot_wild < ncls)).all()
    assert ((t.pt_class >= -1) & (t.pt_class < ncls)).all()
    for s in range(nslots):
        a, n = int(t.slot_pt_start[s]), int(t.slot_pt_len[s])
        if n:
            keys = t.pt_start_key[a:a + n]
            assert a + n <= len(t.pt_start_key) and keys[0] == 0 and (np.diff(keys) > 0).all()
            assert (keys < FRAG_KEY + 1).all()
            cls = t.pt_class[a:a + n]
            assert (cls[1:] != cls[:-1]).all()
    for c in range(ncls):
        a, n = int(t.cls_v4_start[c]), int(t.cls_v4_len[c])
        if n:
            st_ = t.v4_start[a:a + n].astype(np.int64)
            rk = t.v4_rank[a:a + n]
            assert st_[0] == 0 and (np.diff(st_) > 0).all() and (rk[1:] != rk[:-1]).all()
        a, n = int(t.cls_v6_start[c]), int(t.cls_v6_len[c])
        if n:
            starts = [(int(h) << 64) | int(l) for h, l in zip(t.v6_start_hi[a:a + n], t.v6_start_lo[a:a + n])]
            rk = t.v6_rank[a:a + n]
            assert starts[0] == 0 and all(x < y for x, y in zip(starts, starts[1:]))
            assert (rk[1:] != rk[:-1]).all()
        a, n = int(t.cls_grp_start[c]), int(t.cls_grp_len[c])
        assert a + n <= len(t.grp_rank)
        rk = t.grp_rank[a:a + n]
        assert (np.diff(rk) > 0).all()
        assert len(set(t.grp_group[a:a + n].tolist())) == n       # each group once, at its best rank
        assert n == 0 or (rk >= 0).all() and (rk < n_rules).all()
    assert sorted(t.rank_rule.tolist()) == list(range(n_rules))    # rule_index(rule) = position


# ---------------------------------------------------------------------------------------
# probes
# ---------------------------------------------------------------------------------------
def probe_values(rules, rnd: random.Random, n_probes: int):
    protos = sorted({r.protocol for r in rules if r.protocol >= 0} | {6, 17, 1, 58, 47, 0, 255})
    ports = {0, 65535, 65534, 1}
    itypes, icodes = {0, 8, 255}, {0, 255}
    v4, v6 = {0, 2**32 - 1}, {0, 2**128 - 1}
    for r in rules:
        ports.update(x for x in (r.port_lo - 1, r.port_lo, r.port_hi, r.port_hi + 1) if 0 <= x <= 65535)
        if r.icmp_type >= 0:
            itypes.update(x for x in (r.icmp_type - 1, r.icmp_type, r.icmp_type + 1) if 0 <= x <= 255)
        if r.icmp_code >= 0:
            icodes.update(x for x in (r.icmp_code - 1, r.icmp_code, r.icmp_code + 1) if 0 <= x <= 255)
        if r.cidr is not None:
            lo, hi = int(r.cidr.network_address), int(r.cidr.broadcast_address)
            top = 2**32 - 1 if r.cidr.version == 4 else 2**128 - 1
            (v4 if r.cidr.version == 4 else v6).update(x for x in (lo - 1, lo, hi, hi + 1, (lo + hi) // 2)
                                                       if 0 <= x <= top)
    ports, itypes, icodes = sorted(ports), sorted(itypes), sorted(icodes)
    addrs = [ipaddress.IPv4Address(x) for x in sorted(v4)] + [ipaddress.IPv6Address(x) for x in sorted(v6)]
    groups = sorted({r.group for r in rules if r.group is not None} | {"sg-none"})
    for _ in range(n_probes):
        proto = rnd.choice(protos)
        frag = rnd.random() < 0.1
        held = frozenset(g for g in groups if rnd.random() < 0.3)
        yield (proto, frag, rnd.choice(ports), rnd.choice(itypes), rnd.choice(icodes),
               rnd.choice(addrs), held)


def check(rules, order, n_probes=300, seed=0):
    """Compile and compare with brute force; returns the tables."""
    index = {id(r): p for p, r in enumerate(rules)}
    assert len(index) == len(rules), "use distinct Rule objects"
    all_groups = sorted({r.group for r in rules if r.group is not None} | {"sg-none"})
    gidx = {g: 1000 + 7 * k for k, g in enumerate(all_groups)}     # any global numbering
    calls = []

    def group_index(g):
        calls.append(g)
        return gidx[g]

    t = compile_direction(rules, order, lambda r: index[id(r)], group_index)
    assert len(calls) == len(set(calls))                            # once per group
    assert t.default_accept == ORDER_DEFAULT_ACCEPT[order]
    check_invariants(t, len(rules))
    rnd = random.Random(seed)
    for probe in probe_values(rules, rnd, n_probes):
        p = brute_decider(rules, order, probe)
        expected = None if p is None else (p, ACTION_CODE[rules[p].action])
        got = table_decider(t, probe, gidx)
        assert got == expected, (probe, got, expected, [rules[i] for i in ([p] if p is not None else [])])
    return t


# ---------------------------------------------------------------------------------------
# rule generation
# ---------------------------------------------------------------------------------------
def make_rule(k, proto, ports=None, icmp=(-1, -1), cidr=None, group=None, action="allow", priority=1000):
    lo, hi = ports if ports is not None else (0, 65535)
    if proto not in (6, 17):
        lo, hi = 0, 65535
    itype, icode = icmp if proto in (1, 58) else (-1, -1)
    return Rule(id=f"r{k}", protocol=proto, port_lo=lo, port_hi=hi, icmp_type=itype, icmp_code=icode,
                cidr=None if group is not None else ipaddress.ip_network(cidr or "0.0.0.0/0", strict=False),
                group=group, action=action, priority=priority)


@st.composite
def rule_lists(draw, max_rules=25, groups=GROUPS):
    n = draw(st.integers(0, max_rules))
    rules = []
    for k in range(n):
        proto = draw(st.sampled_from(PROTOCOLS))
        ports = None
        if proto in (6, 17):
            kind = draw(st.sampled_from(("full", "single", "range", "range")))
            if kind == "single":
                p = draw(st.sampled_from(PORTS))
                ports = (p, p)
            elif kind == "range":
                a, b = draw(st.sampled_from(PORTS)), draw(st.sampled_from(PORTS))
                ports = (min(a, b), max(a, b))
        itype = draw(st.sampled_from((-1,) + ICMP_TYPES))
        icode = draw(st.sampled_from((-1,) + ICMP_CODES)) if itype >= 0 else -1
        peer = draw(st.sampled_from(("v4", "v4", "v6", "group")))
        cidr = group = None
        if peer == "v4":
            cidr = f"{draw(st.sampled_from(V4_BASES))}/{draw(st.sampled_from(V4_PREFIXES))}"
        elif peer == "v6":
            cidr = f"{draw(st.sampled_from(V6_BASES))}/{draw(st.sampled_from(V6_PREFIXES))}"
        else:
            group = draw(st.sampled_from(groups))
        rules.append(make_rule(k, proto, ports, (itype, icode), cidr, group,
                               draw(st.sampled_from(("allow", "allow", "deny", "reject"))),
                               draw(st.sampled_from((0, 1, 100, 100, 1000, 65535)))))
    if rules and draw(st.booleans()):           # duplicates (same match, other id/position)
        for k in draw(st.lists(st.integers(0, len(rules) - 1), max_size=5)):
            rules.append(replace(rules[k], id=f"d{len(rules)}"))
    return rules


@pytest.mark.parametrize("order", ORDERS)
@settings(max_examples=150, **SETTINGS)
@given(rules=rule_lists(), seed=st.integers(0, 2**32 - 1))
def test_random_rule_lists(order, rules, seed):
    check(rules, order, seed=seed)


@settings(max_examples=40, **SETTINGS)
@given(rules=rule_lists(max_rules=120), order=st.sampled_from(ORDERS), seed=st.integers(0, 2**32 - 1))
def test_longer_rule_lists(rules, order, seed):
    check(rules, order, n_probes=500, seed=seed)


# ---------------------------------------------------------------------------------------
# edge cases
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("order", ORDERS)
def test_no_rules(order):
    t = check([], order)
    assert (t.slot_wild == -1).all() and (t.slot_pt_len == 0).all() and len(t.rank_rule) == 0


def test_only_wild_rules():
    rules = [make_rule(0, -1, cidr="10.0.0.0/8", action="deny"),
             make_rule(1, 6, cidr="0.0.0.0/0"),                         # full port range
             make_rule(2, 1, cidr="::/0", action="reject"),             # any ICMP type
             make_rule(3, 47, cidr="10.1.0.0/16"),                      # no port key
             make_rule(4, 58, group="sg-000", priority=5)]
    for order in ORDERS:
        t = check(rules, order, n_probes=600)
        assert (t.slot_pt_len == 0).all()


def test_only_ranged_rules():
    rules = [make_rule(0, 6, (22, 22), cidr="10.0.0.0/24"),
             make_rule(1, 6, (20, 80), cidr="10.0.0.0/8", action="deny"),
             make_rule(2, 17, (53, 53), cidr="2001:db8::/32"),
             make_rule(3, 6, (80, 65535), group="sg-001"),
             make_rule(4, 6, (0, 0), cidr="0.0.0.0/0", action="reject")]
    for order in ORDERS:
        t = check(rules, order, n_probes=600)
        assert (t.slot_wild == -1).all()


def test_ipv6_extremes():
    rules = [make_rule(0, -1, cidr="::/0", action="deny", priority=9),
             make_rule(1, -1, cidr="ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128"),
             make_rule(2, -1, cidr="::/128", priority=1),
             make_rule(3, -1, cidr="2001:db8::ffff:ffff:ffff:ffff/128", action="reject", priority=3),
             make_rule(4, -1, cidr="2001:db8::/64", priority=2),
             make_rule(5, -1, cidr="2001:db8:0:1::/64", action="deny"),
             make_rule(6, -1, cidr="8000::/1", priority=4)]
    for order in ORDERS:
        check(rules, order, n_probes=600)


def test_ipv4_extremes():
    rules = [make_rule(0, -1, cidr="0.0.0.0/0", action="deny", priority=9),
             make_rule(1, -1, cidr="255.255.255.255/32"),
             make_rule(2, -1, cidr="0.0.0.0/32", priority=1),
             make_rule(3, -1, cidr="128.0.0.0/1", action="reject", priority=3),
             make_rule(4, -1, cidr="255.255.255.0/24", priority=2)]
    for order in ORDERS:
        check(rules, order, n_probes=600)


def test_icmp_type_only_and_type_code():
    rules = [make_rule(0, 1, icmp=(8, -1), cidr="10.0.0.0/8"),
             make_rule(1, 1, icmp=(8, 0), cidr="10.0.0.0/8", action="deny"),
             make_rule(2, 1, icmp=(3, 13), cidr="0.0.0.0/0", action="reject"),
             make_rule(3, 1, icmp=(255, 255), cidr="0.0.0.0/0"),
             make_rule(4, 58, icmp=(128, -1), cidr="::/0"),
             make_rule(5, 58, icmp=(0, 0), cidr="::/0", action="deny"),
             make_rule(6, 1, cidr="192.0.2.0/24", priority=7)]
    for order in ORDERS:
        t = check(rules, order, n_probes=800)
        s = int(t.proto_slot[1])
        a, n = int(t.slot_pt_start[s]), int(t.slot_pt_len[s])
        assert 8 * 256 in t.pt_start_key[a:a + n] and 9 * 256 in t.pt_start_key[a:a + n]


def test_frag_key_only_matches_wild_rules():
    rules = [make_rule(0, 6, (0, 65535), cidr="10.0.0.0/8"),
             make_rule(1, 6, (65535, 65535), cidr="0.0.0.0/0", action="deny"),
             make_rule(2, 6, (0, 65534), cidr="0.0.0.0/0", action="deny"),
             make_rule(3, 1, icmp=(255, -1), cidr="0.0.0.0/0", action="deny"),
             make_rule(4, 1, cidr="10.0.0.0/8")]
    for order in ORDERS:
        t = check(rules, order, n_probes=400)
        for proto in (6, 1):
            s = int(t.proto_slot[proto])
            a, n = int(t.slot_pt_start[s]), int(t.slot_pt_len[s])
            keys = t.pt_start_key[a:a + n].tolist()
            assert t.pt_class[a + bisect.bisect_right(keys, FRAG_KEY) - 1] == -1
        probe = (6, True, 0, 0, 0, ipaddress.IPv4Address("10.1.2.3"), frozenset())
        assert table_decider(t, probe, {}) == (0, 0)


def test_duplicate_rules():
    base = [make_rule(0, 6, (22, 22), cidr="10.0.0.0/24"),
            make_rule(1, -1, group="sg-000", action="deny", priority=50),
            make_rule(2, 17, (1, 65535), cidr="2001:db8::/48", action="reject")]
    rules = []
    for k in range(4):
        for r in base:
            rules.append(replace(r, id=f"{r.id}-{k}"))
    for order in ORDERS:
        t = check(rules, order, n_probes=600)
        for c in range(len(t.cls_grp_len)):
            assert t.cls_grp_len[c] <= 1                     # one group: listed once per class


def test_same_object_twice():
    """A group held twice by nobody, but the same Rule object may appear in two policies'
    lists, and a list may repeat a value: the cached row must serve both."""
    r = make_rule(0, 6, (80, 80), cidr="10.0.0.0/8")
    t1 = compile_direction([r], "allow,deny", lambda x: 7, lambda g: 0)
    t2 = compile_direction([make_rule(1, -1, cidr="::/0"), r], "priority", lambda x: 9, lambda g: 0)
    assert t1.rank_rule.tolist() == [7] and len(t2.rank_rule) == 2
    check([r, make_rule(1, 6, (80, 80), cidr="10.0.0.0/8", action="deny")], "allow,deny")


def test_many_groups():
    rnd = random.Random(5)
    groups = [f"sg-{k:04d}" for k in range(150)]
    rules = [make_rule(k, rnd.choice((-1, 6, 17)), (80, 80) if k % 3 else (1000, 2000),
                       group=rnd.choice(groups), action=rnd.choice(("allow", "deny")),
                       priority=rnd.choice((1, 2, 3)))
             for k in range(600)]
    rules += [make_rule(600 + k, 6, (0, 65535), cidr="10.0.0.0/8") for k in range(3)]
    for order in ORDERS:
        check(rules, order, n_probes=400, seed=order.__hash__() & 0xFFFF)


def test_every_protocol_named():
    """256 named protocols leave no slot for 'protocols no rule names' (the slot index
    must still fit uint8)."""
    rules = [make_rule(p, p, cidr="10.0.0.0/8", action="deny" if p % 2 else "allow") for p in range(256)]
    rules.append(make_rule(256, -1, cidr="0.0.0.0/0", priority=0))
    for order in ORDERS:
        t = check(rules, order, n_probes=400)
        assert len(t.slot_wild) == 256


def test_many_ranges_and_classes():
    """Staggered port ranges over many protocols: many classes, deduplicated member sets."""
    rnd = random.Random(11)
    rules = []
    for k in range(300):
        proto = rnd.choice((6, 17, 6, 1, 58, -1, 47))
        a, b = sorted(rnd.sample(PORTS, 2))
        v6 = rnd.random() < 0.3
        cidr = (f"2001:db8:{rnd.randrange(4):x}::/{rnd.choice((32, 48, 64, 128))}" if v6 else
                f"10.{rnd.randrange(3)}.{rnd.randrange(3)}.0/{rnd.choice((8, 16, 24, 32))}")
        grp = rnd.choice(GROUPS) if rnd.random() < 0.2 else None
        rules.append(make_rule(k, proto, (a, b), (rnd.choice(ICMP_TYPES), rnd.choice((-1, 0, 1))),
                               cidr=cidr, group=grp, action=rnd.choice(("allow", "deny", "reject")),
                               priority=rnd.randrange(5)))
    for order in ORDERS:
        check(rules, order, n_probes=1500, seed=3)
