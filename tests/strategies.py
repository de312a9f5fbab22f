"""Hypothesis strategies: valid worlds in file syntax, packet batches biased to boundaries,
and World-API mutations.

* ``world_dicts(order=None)`` -> a dict that ``World.from_dict`` accepts (spec section 1).
  Small on purpose so collisions happen: few groups, few instances, a small address
  universe, a small set of ports/priorities.  Covers IPv4 and IPv6, nested/overlapping
  CIDRs incl. /0, /32 and /128, group peers by id, by name and another account's
  ``owner/sg-id``, public addresses, stopped/terminated instances (whose addresses may
  repeat a running instance's), all three orders (world-level and per-instance),
  allow/deny/reject, explicit priorities with ties, tcp/udp port ranges, icmp/icmpv6
  type/code incl. -1, ``all``/``-1``, numeric protocols, egress omitted / ``[]`` / explicit,
  instances with up to 5 groups, a second account and (sometimes) a second region.
* ``packet_batches(world)`` -> a ``fastsg.PacketBatch`` whose packets are drawn from the
  world's own addresses, CIDR edges (first/last address +-1), port-range edges +-1, ICMP
  values of the rules, unknown addresses; mixed IPv4/IPv6; protocols 6/17/1/58/47/other;
  non-first fragments; a few non-IP and malformed records.  ``world`` may be a ``World`` or
  a world dict.
  Half the packets are *aimed* at one rule (its peer, protocol, port/ICMP edges).
* ``dense_world_dicts(order)`` / ``dense_packet_batches(world)``: few wide, overlapping
  rules with priority ties on instances with several groups, and packets that hit them,
  so that the combining order (not just matching) decides.
* ``mutations(world)`` -> one (name, kwargs) World-API call, usually valid, sometimes not.
* ``batch_from_rows``, ``engine_class``, ``result_tuples``: building batches, and the engine
  side of a comparison in the shape of ``NaiveResult.as_tuple()``.
* Stateful traffic (sections 4 and 7): ``tracking_world_dicts()`` (tracking-minded, random
  or dense worlds with small timeouts ``TRACK_CONNTRACK``, tiny capacities, random logging
  settings and some ``log: true`` rules); ``tracking_packet_dicts(world)`` /
  ``tracking_batches(world)`` (new flows, replies, repeats, RSTs, ICMP errors quoting earlier
  packets either way, non-first fragments, non-IP/malformed records, steps around every
  timeout and back in time; ``batch_from_packet_dicts`` builds the batch with
  ``PacketBatch.from_arrays``); ``timeline_worlds()`` -> (world dict with a timeline of
  valid events, packet dicts) for replay.  These use a seeded ``random.Random`` (see
  ``tracking_packet_dicts``) and peek at the reference's verdicts only to pick which
  packets to answer or quote.

Packet fields are drawn through ``st.randoms()`` (one cheap recorded draw per choice): far
faster than a composite strategy per packet, and hypothesis still replays and shrinks them.
"""
from __future__ import annotations

import ipaddress
import os
import random

import numpy as np
from hypothesis import HealthCheck
from hypothesis import strategies as st

REGION = "us-east-1"
REGION2 = "eu-west-1"
OWNER_DEFAULT = "000000000000"
OWNER2 = "111122223333"
OWNERS = (OWNER_DEFAULT, OWNER2)
ORDERS = ("allow,deny", "deny,allow", "priority")

# ---- the address universe (small: collisions and CIDR edges happen) -------------------
V4_PRIVATE = [f"10.0.0.{i}" for i in range(1, 15)] + [f"10.0.1.{i}" for i in range(1, 4)]
V4_PUBLIC = [f"54.1.2.{i}" for i in range(1, 8)]
V6_PRIVATE = [f"2001:db8::{i:x}" for i in range(1, 15)] + [f"2001:db8:0:1::{i:x}" for i in range(1, 4)]
V4_UNKNOWN = ["192.0.2.1", "198.51.100.7", "0.0.0.0", "255.255.255.255", "10.255.255.255",
              "11.0.0.0", "9.255.255.255", "10.0.0.0", "10.0.0.15", "10.0.0.16"]
V6_UNKNOWN = ["2001:db8:ffff::1", "::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "fe80::1",
              "2001:db8::", "2001:db8::f", "2001:db8::10", "2001:db9::", "::ffff:10.0.0.1"]

V4_PREFIXES = (0, 8, 16, 24, 28, 29, 30, 31, 32, 32)
V6_PREFIXES = (0, 32, 64, 120, 124, 126, 127, 128, 128)

PORTS = (0, 1, 21, 22, 23, 53, 79, 80, 81, 443, 1023, 1024, 8080, 65534, 65535)
ICMP_TYPES = (0, 3, 8, 11, 128, 129, 255)
ICMP_CODES = (0, 1, 13, 255)
PRIORITIES = (0, 1, 100, 100, 1000, 65535)
GROUP_NAMES = ("web", "db", "app", "ops", "cache")

# protocol spellings in file syntax
PROTO_SPELLINGS = ("tcp", "tcp", "udp", "icmp", "icmp", "icmpv6", "icmpv6", "all", "-1", -1,
                   6, 17, 1, 58, 47, 50, 0, 255, 132)
PROTO_NUMBER = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58, "all": -1, "-1": -1}


def proto_number(p) -> int:
    return PROTO_NUMBER[p] if isinstance(p, str) else int(p)


# ---------------------------------------------------------------------------------------
# worlds
# ---------------------------------------------------------------------------------------
@st.composite
def cidrs(draw, version=None):
    if version is None:
        version = draw(st.sampled_from((4, 4, 6)))
    if version == 4:
        base = draw(st.sampled_from(V4_PRIVATE + V4_PRIVATE + V4_PUBLIC + V4_UNKNOWN))
        plen = draw(st.sampled_from(V4_PREFIXES))
    else:
        base = draw(st.sampled_from(V6_PRIVATE + V6_UNKNOWN[:2]))
        plen = draw(st.sampled_from(V6_PREFIXES))
    return str(ipaddress.ip_network(f"{base}/{plen}", strict=False))


@st.composite
def port_spec(draw):
    """None (omitted), a single port, or a 'lo-hi' range."""
    kind = draw(st.sampled_from(("none", "single", "range", "range", "full")))
    if kind == "none":
        return None
    if kind == "full":
        return "0-65535"
    if kind == "single":
        return draw(st.sampled_from(PORTS))
    a, b = draw(st.sampled_from(PORTS)), draw(st.sampled_from(PORTS))
    lo, hi = min(a, b), max(a, b)
    return f"{lo}-{hi}"


@st.composite
def rule_dicts(draw, own, groups, rule_ids, previous=None):
    """One rule in file syntax for a rule list of group ``own``.

    ``groups``: list of dicts with id/name/owner/region (the referencable groups);
    ``rule_ids``: a set of explicit rule ids already used (updated); ``previous``: a list of
    (group info, rule dict) made so far: a third of the rules are *variants* of one of them
    (same match, another action and/or priority), so that rules overlap, shadow each other
    and tie on priority.
    """
    same_place = [r for g, r in (previous or ())
                  if g["owner"] == own["owner"] and g["region"] == own["region"]]
    if same_place and draw(st.booleans()):
        rule = {k: v for k, v in draw(st.sampled_from(same_place)).items()
                if k not in ("id", "action", "priority")}
        rule["action"] = draw(st.sampled_from(("allow", "deny", "reject")))
        prio = draw(st.sampled_from((None, 100, 1000)))
        if prio is not None:
            rule["priority"] = prio
        return rule
    rule = {}
    proto = draw(st.sampled_from(PROTO_SPELLINGS))
    rule["protocol"] = proto
    num = proto_number(proto)
    if num in (6, 17):
        ports = draw(port_spec())
        if ports is not None:
            rule["ports"] = ports
    elif num in (1, 58):
        t = draw(st.sampled_from((None, None, -1) + ICMP_TYPES))
        if t is not None:
            rule["icmp_type"] = t
        if t is not None and t != -1:
            c = draw(st.sampled_from((None, -1) + ICMP_CODES + ICMP_CODES))
            if c is not None:
                rule["icmp_code"] = c
        elif draw(st.booleans()):
            # any type: no code, or (spec section 1: each field "-1 or omitted = any") one
            # code of every type
            rule["icmp_code"] = draw(st.sampled_from((-1, -1) + ICMP_CODES))
    # the peer: a CIDR or a group in the same region
    same_region = [g for g in groups if g["region"] == own["region"]]
    if same_region and draw(st.integers(0, 2)) == 0:
        target = draw(st.sampled_from(same_region))
        forms = [f"{target['owner']}/{target['id']}"]
        if target["owner"] == own["owner"]:
            forms += [target["id"], target["id"], target["name"]]
        rule["group"] = draw(st.sampled_from(forms))
    else:
        rule["cidr"] = draw(cidrs())
    action = draw(st.sampled_from((None, None, "allow", "deny", "deny", "reject")))
    if action is not None:
        rule["action"] = action
    prio = draw(st.sampled_from((None, None) + PRIORITIES))
    if prio is not None:
        rule["priority"] = prio
    if draw(st.integers(0, 5)) == 0:
        rid = f"sgr-{len(rule_ids):04x}"
        rule_ids.add(rid)
        rule["id"] = rid
    return rule


@st.composite
def world_dicts(draw, order=None, max_groups=5, max_instances=6, max_rules=4):
    """A valid world in file syntax.  ``order``: force the world-level order (instances
    may still override it); None draws one (or omits it)."""
    n_groups = draw(st.integers(1, max_groups))
    two_regions = draw(st.integers(0, 4)) == 0
    groups = []
    used_names = set()
    for k in range(n_groups):
        owner = draw(st.sampled_from(OWNERS))
        region = REGION2 if (two_regions and k == n_groups - 1 and n_groups > 1) else REGION
        free = [n for n in GROUP_NAMES if (owner, region, n) not in used_names]
        name = draw(st.sampled_from(free))
        used_names.add((owner, region, name))
        groups.append({"id": f"sg-{k:02x}{k * 7 % 16:x}", "name": name, "owner": owner,
                       "region": region})

    rule_ids = set()
    previous = []
    out_groups = []
    for g in groups:
        gd = {"id": g["id"], "name": g["name"]}
        if g["owner"] != OWNER_DEFAULT or draw(st.booleans()):
            gd["owner"] = g["owner"]
        if g["region"] != REGION or draw(st.integers(0, 3)) == 0:
            gd["region"] = g["region"]
        n_in = draw(st.integers(0, max_rules))
        gd["ingress"] = []
        for _ in range(n_in):
            near = [(g, r) for r in gd["ingress"]] * 4 + previous      # prefer the same list
            gd["ingress"].append(draw(rule_dicts(g, groups, rule_ids, near)))
            previous.append((g, gd["ingress"][-1]))
        eg = draw(st.sampled_from(("omit", "omit", "empty", "explicit", "explicit")))
        if eg == "empty":
            gd["egress"] = []
        elif eg == "explicit":
            n_eg = draw(st.integers(1, max_rules))
            gd["egress"] = []
            for _ in range(n_eg):
                near = [(g, r) for r in gd["egress"]] * 4 + previous
                gd["egress"].append(draw(rule_dicts(g, groups, rule_ids, near)))
                previous.append((g, gd["egress"][-1]))
        out_groups.append(gd)

    # instances: running ones take distinct addresses; others may repeat anything
    n_inst = draw(st.integers(0 if draw(st.integers(0, 9)) == 0 else 1, max_instances))
    v4 = list(draw(st.permutations(V4_PRIVATE)))
    v6 = list(draw(st.permutations(V6_PRIVATE)))
    pub = list(draw(st.permutations(V4_PUBLIC)))
    instances = []
    for k in range(n_inst):
        g0 = draw(st.sampled_from(groups))
        owner, region = g0["owner"], g0["region"]
        mine = [g for g in groups if g["owner"] == owner and g["region"] == region]
        state = draw(st.sampled_from(("running",) * 5 + ("stopped", "terminated")))
        inst = {"id": f"i-{k:03x}"}
        if state == "running":
            inst["private_ip"] = v4.pop()
            if draw(st.booleans()):
                inst["private_ipv6"] = v6.pop()
            if draw(st.integers(0, 2)) == 0:
                inst["public_ip"] = pub.pop()
        else:
            inst["private_ip"] = draw(st.sampled_from(V4_PRIVATE))
            if draw(st.booleans()):
                inst["private_ipv6"] = draw(st.sampled_from(V6_PRIVATE))
            if draw(st.integers(0, 2)) == 0:
                inst["public_ip"] = draw(st.sampled_from(V4_PUBLIC))
        if owner != OWNER_DEFAULT or draw(st.integers(0, 3)) == 0:
            inst["owner"] = owner
        if region != REGION or draw(st.integers(0, 3)) == 0:
            inst["region"] = region
        at_least = 0 if draw(st.integers(0, 9)) == 0 else 1      # an instance may hold no group
        chosen = draw(st.lists(st.sampled_from(mine), min_size=at_least,
                               max_size=min(5, len(mine)), unique_by=lambda g: g["id"]))
        inst["groups"] = [draw(st.sampled_from((g["id"], g["id"], g["name"]))) for g in chosen]
        io = draw(st.sampled_from((None, None, None) + ORDERS))
        if io is not None:
            inst["order"] = io
        if state != "running" or draw(st.integers(0, 3)) == 0:
            inst["state"] = state
        instances.append(inst)

    world = {"version": 1, "region": REGION}
    if order is not None:
        world["order"] = order
    else:
        wo = draw(st.sampled_from((None,) + ORDERS))
        if wo is not None:
            world["order"] = wo
    world["security_groups"] = out_groups
    world["instances"] = instances
    return world


# Dense worlds: few wide, overlapping match specs, so that M (the matching rules of a check)
# is large and the combining order, ties and canonical positions decide.
DENSE_MATCHES = (
    {"protocol": "all", "cidr": "0.0.0.0/0"},
    {"protocol": "all", "cidr": "192.0.2.0/24"},
    {"protocol": "tcp", "cidr": "0.0.0.0/0"},
    {"protocol": "tcp", "ports": 80, "cidr": "192.0.2.0/24"},
    {"protocol": "tcp", "ports": "22-80", "cidr": "192.0.2.1/32"},
    {"protocol": "udp", "ports": "53-53", "cidr": "0.0.0.0/0"},
    {"protocol": "icmp", "icmp_type": 8, "cidr": "192.0.2.0/24"},
    {"protocol": "icmp", "icmp_type": 3, "icmp_code": 13, "cidr": "0.0.0.0/0"},
    {"protocol": "icmp", "icmp_type": 3, "icmp_code": 1, "cidr": "192.0.2.0/24"},
    {"protocol": "icmp", "icmp_type": 3, "cidr": "192.0.2.0/24"},
    {"protocol": "icmp", "cidr": "192.0.2.0/25"},
    {"protocol": "icmp", "icmp_code": 1, "cidr": "192.0.2.0/24"},
    {"protocol": "all", "cidr": "::/0"},
    {"protocol": "tcp", "ports": 80, "cidr": "2001:db8:ff::/48"},
    {"protocol": "icmpv6", "icmp_type": 128, "cidr": "::/0"},
    {"protocol": "icmpv6", "icmp_type": 1, "icmp_code": 1, "cidr": "2001:db8:ff::/48"},
    {"protocol": 47, "cidr": "192.0.2.0/24"},
    {"protocol": "all", "group": "sg-d0"},
    {"protocol": "tcp", "group": "sg-d1"},
)


@st.composite
def dense_world_dicts(draw, order=None):
    """2-5 groups of 1-5 rules drawn from ``DENSE_MATCHES`` with random actions and
    priorities from {1, 2} (ties everywhere); 1-3 running instances holding random
    subsets of the groups in random order; any order.  Packets: ``packet_batches``."""
    n_groups = draw(st.integers(2, 5))
    groups = []
    for k in range(n_groups):
        rules = []
        for _ in range(draw(st.integers(1, 5))):
            r = dict(draw(st.sampled_from(DENSE_MATCHES)))
            r["action"] = draw(st.sampled_from(("allow", "deny", "reject")))
            r["priority"] = draw(st.sampled_from((1, 1, 1, 2)))
            rules.append(r)
        g = {"id": f"sg-d{k}", "name": f"dense{k}", "ingress": rules}
        if draw(st.booleans()):
            g["egress"] = [dict(r) for r in draw(st.lists(st.sampled_from(rules), max_size=3))]
        groups.append(g)
    instances = []
    for k in range(draw(st.integers(1, 3))):
        chosen = draw(st.permutations([g["id"] for g in groups]))[:draw(st.integers(1, n_groups))]
        inst = {"id": f"i-d{k}", "private_ip": f"10.0.0.{k + 1}",
                "private_ipv6": f"2001:db8::{k + 1}", "groups": chosen}
        io = draw(st.sampled_from((None,) + ORDERS))
        if io:
            inst["order"] = io
        instances.append(inst)
    members = {"sg-d0": "192.0.2.1", "sg-d1": "192.0.2.2"}   # peers that are group members
    for k, (gid, ip) in enumerate(members.items()):
        if draw(st.booleans()):
            instances.append({"id": f"i-m{k}", "private_ip": ip, "groups": [gid]})
    world = {"version": 1, "region": REGION, "security_groups": groups, "instances": instances}
    world["order"] = order if order is not None else draw(st.sampled_from(ORDERS))
    return world


DENSE_PEERS_V4 = ("192.0.2.0", "192.0.2.1", "192.0.2.2", "192.0.2.127", "192.0.2.128",
                  "192.0.2.255", "198.51.100.1")
DENSE_PEERS_V6 = ("2001:db8:ff::", "2001:db8:ff::1", "2001:db8:fe:ffff:ffff:ffff:ffff:ffff",
                  "2001:db8::9")
DENSE_L4 = ((6, 80, 0, 0), (6, 22, 0, 0), (6, 81, 0, 0), (6, 21, 0, 0), (17, 53, 0, 0),
            (17, 54, 0, 0), (1, 0, 8, 0), (1, 0, 3, 13), (1, 0, 3, 1), (1, 0, 3, 2),
            (1, 0, 0, 0), (58, 0, 128, 0), (58, 0, 1, 1), (58, 0, 1, 0), (47, 0, 0, 0),
            (50, 0, 0, 0))


@st.composite
def dense_packet_batches(draw, world, n_min=1, n_max=40):
    """Packets between the instances of a dense world and the peers its rules name (both
    directions), every protocol/port/ICMP value its rules care about, some fragments."""
    rnd = draw(st.randoms(use_true_random=False))
    n = draw(st.integers(n_min, n_max))
    running = [i for i in world.instances.values() if i.running]
    rows = []
    for _ in range(n):
        inst = rnd.choice(running)
        if rnd.random() < 0.25:
            peer_inst = rnd.choice(running)
            me, peer = (inst.private_ip, peer_inst.private_ip) if rnd.random() < 0.5 else \
                (inst.private_ipv6 or inst.private_ip, peer_inst.private_ipv6 or peer_inst.private_ip)
            me, peer = str(me), str(peer)
            if ":" in me and ":" not in peer or ":" in peer and ":" not in me:
                me, peer = str(inst.private_ip), str(peer_inst.private_ip)
        elif rnd.random() < 0.7 or inst.private_ipv6 is None:
            me, peer = str(inst.private_ip), rnd.choice(DENSE_PEERS_V4)
        else:
            me, peer = str(inst.private_ipv6), rnd.choice(DENSE_PEERS_V6)
        src, dst = (peer, me) if rnd.random() < 0.6 else (me, peer)
        proto, dport, itype, icode = rnd.choice(DENSE_L4)
        frag = 1 if rnd.random() < 0.1 else 0
        rows.append((src, dst, proto, 40000, dport, itype, icode, frag, 0x02, 0))
    return batch_from_rows(rows)


# ---------------------------------------------------------------------------------------
# facts about a world (a World object or a world dict), for packet generation
# ---------------------------------------------------------------------------------------
def _rules_of_dict(world: dict):
    for g in world.get("security_groups", []):
        for r in g.get("ingress", []) or []:
            yield r
        for r in g.get("egress", []) or []:
            yield r


def _ports_of(spec):
    if spec is None:
        return (0, 65535)
    if isinstance(spec, int):
        return (spec, spec)
    s = str(spec)
    if "-" in s:
        a, b = s.split("-")
        return (int(a), int(b))
    return (int(s), int(s))


def world_rng_stopped(inst) -> bool:
    """Let one in a few non-running instances hold rules too (their packets are UNMANAGED)."""
    return sum(map(ord, inst.id)) % 4 == 0


def world_facts(world):
    """What is worth sending at a world: a dict with
    ``v4``/``v6``: (running instances' addresses, every other interesting address: other
    instances', CIDR first/last +-1, unknown ones), ``ports`` (dports incl. range edges +-1),
    ``types``/``codes`` (ICMP values of the rules and a few more)."""
    running, others = set(), set()
    targets = []
    nets = []
    port_edges = set()
    types, codes = set(), set()
    if isinstance(world, dict):
        for inst in world.get("instances", []):
            bucket = running if inst.get("state", "running") == "running" else others
            for k in ("private_ip", "private_ipv6", "public_ip"):
                if inst.get(k):
                    bucket.add(ipaddress.ip_address(inst[k]))
        for r in _rules_of_dict(world):
            if "cidr" in r:
                nets.append(ipaddress.ip_network(r["cidr"]))
            lo, hi = _ports_of(r.get("ports"))
            port_edges.update((lo, hi))
            if r.get("icmp_type") is not None:
                types.add(int(r["icmp_type"]))
            if r.get("icmp_code") is not None:
                codes.add(int(r["icmp_code"]))
    else:
        targets = []
        for g in world.groups.values():
            holders = [a for i in world.instances.values() if g.id in i.groups
                       and (i.state == "running" or world_rng_stopped(i))
                       for a in i.addresses()]
            for direction in ("ingress", "egress"):
                for r in g.rules(direction):
                    if r.group is not None:
                        peers = [a for i in world.instances.values() if r.group in i.groups
                                 for a in i.addresses()]
                    else:
                        peers = []
                    targets.append((direction, holders, r, peers))
        for inst in world.instances.values():
            bucket = running if inst.state == "running" else others
            for a in (inst.private_ip, inst.private_ipv6, inst.public_ip):
                if a is not None:
                    bucket.add(a)
        for g in world.groups.values():
            for r in list(g.ingress) + list(g.egress):
                if r.cidr is not None:
                    nets.append(r.cidr)
                port_edges.update((r.port_lo, r.port_hi))
                types.add(r.icmp_type)
                codes.add(r.icmp_code)
    for net in nets:
        first, last = int(net.network_address), int(net.broadcast_address)
        top = (1 << net.max_prefixlen) - 1
        for v in (first - 1, first, first + 1, last - 1, last, last + 1):
            if 0 <= v <= top:
                others.add(ipaddress.IPv4Address(v) if net.version == 4 else ipaddress.IPv6Address(v))
    for a in V4_PRIVATE[:3] + V4_PUBLIC[:2] + V4_UNKNOWN + V6_PRIVATE[:3] + V6_UNKNOWN:
        others.add(ipaddress.ip_address(a))
    others -= running
    ports = set(PORTS)
    for p in port_edges:
        for v in (p - 1, p, p + 1):
            if 0 <= v <= 65535:
                ports.add(v)
    types = {t for t in types if t >= 0} | set(ICMP_TYPES)
    codes = {c for c in codes if c >= 0} | set(ICMP_CODES)

    def split(version):
        return (sorted(str(a) for a in running if a.version == version),
                sorted(str(a) for a in others if a.version == version))
    return {"v4": split(4), "v6": split(6), "ports": sorted(ports), "types": sorted(types),
            "codes": sorted(codes), "targets": [t for t in targets if t[1]]}


# ---------------------------------------------------------------------------------------
# packets
# ---------------------------------------------------------------------------------------
PACKET_PROTOS = (6, 6, 6, 17, 17, 1, 1, 58, 58, 47, 50, 0, 132, 255)

# Packets are drawn through a ``random.Random``-like object (``st.randoms()``): one cheap
# hypothesis draw per choice, still recorded and shrunk by hypothesis.


def _address(rnd, facts, version):
    """Mostly a running instance's address (so checks happen), else anything interesting."""
    running, others = facts["v4"] if version == 4 else facts["v6"]
    if running and rnd.random() < 0.6:
        return rnd.choice(running)
    return rnd.choice(others)


def _near(rnd, lo, hi, top):
    """A value at or just around the edges of [lo, hi], or inside."""
    v = rnd.choice(("lo", "hi", "in", "in", "lo-1", "hi+1"))
    if v == "lo":
        return lo
    if v == "hi":
        return hi
    if v == "in":
        return rnd.randint(lo, hi)
    return max(0, lo - 1) if v == "lo-1" else min(top, hi + 1)


def targeted_row(rnd, facts):
    """A packet aimed at one rule: at an instance holding the rule's group, from/to the rule's
    peer (inside the CIDR or at its edges, or a member of the peer group), with the rule's
    protocol and ports/ICMP values or values just outside them.  None if not expressible."""
    direction, holders, rule, peers = rnd.choice(facts["targets"])
    if rule.cidr is not None:
        net = rule.cidr
        version = net.version
        v = _near(rnd, int(net.network_address), int(net.broadcast_address), (1 << net.max_prefixlen) - 1)
        peer = ipaddress.IPv4Address(v) if version == 4 else ipaddress.IPv6Address(v)
    else:
        peer = rnd.choice(peers) if peers else None
        version = peer.version if peer is not None else rnd.choice((4, 6))
    mine = [a for a in holders if a.version == version]
    if not mine:
        return None
    me = rnd.choice(mine)
    if peer is None or rnd.random() < 0.1:
        running, others = facts["v4"] if version == 4 else facts["v6"]
        peer = rnd.choice(running + others)
    src, dst = (peer, me) if direction == "ingress" else (me, peer)
    if rule.protocol == -1 or rnd.random() < 0.1:
        proto = rnd.choice(PACKET_PROTOS)
    else:
        proto = rule.protocol
    dport = _near(rnd, rule.port_lo, rule.port_hi, 65535)
    itype = _near(rnd, rule.icmp_type, rule.icmp_type, 255) if rule.icmp_type >= 0 \
        else rnd.choice(facts["types"])
    icode = _near(rnd, rule.icmp_code, rule.icmp_code, 255) if rule.icmp_code >= 0 \
        else rnd.choice(facts["codes"])
    if proto not in (1, 58):
        itype = icode = 0
    frag = 1 if rnd.random() < 0.1 else 0
    flags = rnd.choice((0x02, 0x10, 0x12))
    return (str(src), str(dst), proto, 40000, dport, itype, icode, frag, flags, 0)


def random_row(rnd, facts):
    """A packet between interesting addresses with boundary-biased fields; a few non-IP
    (status 1) and malformed (status 2) records."""
    has_v6 = bool(facts["v6"][0])
    version = rnd.choice((4, 4, 6, 6) if has_v6 else (4, 4, 4, 6))
    src = _address(rnd, facts, version)
    dst = _address(rnd, facts, version)
    proto = rnd.choice(PACKET_PROTOS) if rnd.random() < 0.8 else rnd.randint(0, 255)
    dport = rnd.choice(facts["ports"])
    sport = rnd.choice((0, 22, 80, 1024, 40000, 65535))
    itype = rnd.choice(facts["types"]) if proto in (1, 58) else 0
    icode = rnd.choice(facts["codes"]) if proto in (1, 58) else 0
    frag = 1 if rnd.random() < 0.1 else 0
    flags = rnd.choice((0x02, 0x10, 0x12, 0x04, 0x11, 0))
    r = rnd.random()
    status = 1 if r < 0.03 else 2 if r < 0.06 else 0
    return (src, dst, proto, sport, dport, itype, icode, frag, flags, status)


def make_rows(rnd, facts, n):
    rows = []
    for _ in range(n):
        row = None
        if facts["targets"] and rnd.random() < 0.5:
            row = targeted_row(rnd, facts)
        rows.append(row if row is not None else random_row(rnd, facts))
    return rows


def batch_from_rows(rows, ts=None):
    """Rows (src, dst, proto, sport, dport, icmp_type, icmp_code, frag, tcp_flags, status)
    -> PacketBatch.  ``ts``: optional timestamps (ns)."""
    from fastsg import PacketBatch
    if not rows:
        return PacketBatch.empty(0)
    cols = list(zip(*rows))
    src, dst, proto, sport, dport, itype, icode, frag, flags, status = cols
    kw = {}
    if ts is not None:
        kw["ts"] = np.asarray(ts, dtype=np.int64)
    batch = PacketBatch.from_arrays(
        src=list(src), dst=list(dst), proto=list(proto), sport=list(sport), dport=list(dport),
        icmp_type=list(itype), icmp_code=list(icode), tcp_flags=list(flags), frag=list(frag),
        **kw)
    # from_arrays marks every record as IP: set the status afterwards
    st_arr = np.asarray(status, dtype=np.uint8)
    batch.columns["status"][:] = st_arr
    batch.columns["ipver"][st_arr == 1] = 0          # a non-IP frame has no IP version
    return batch


@st.composite
def packet_rows(draw, world, n_min=0, n_max=40):
    facts = world_facts(world)
    n = draw(st.integers(n_min, n_max))
    rnd = draw(st.randoms(use_true_random=False))
    return make_rows(rnd, facts, n)


@st.composite
def packet_batches(draw, world, n_min=0, n_max=40):
    """A PacketBatch of packets worth sending at ``world`` (a World or a world dict)."""
    return batch_from_rows(draw(packet_rows(world, n_min, n_max)))


# ---------------------------------------------------------------------------------------
# mutations through the World API
# ---------------------------------------------------------------------------------------
def _group_infos(world):
    return [{"id": g.id, "name": g.name, "owner": g.owner, "region": g.region}
            for g in world.groups.values()]


def rule_to_dict(r) -> dict:
    """A ``Rule`` back in file syntax (match fields only; the group peer by id)."""
    d = {"protocol": r.protocol}
    if r.protocol in (6, 17):
        d["ports"] = f"{r.port_lo}-{r.port_hi}"
    if r.protocol in (1, 58):
        d["icmp_type"] = r.icmp_type
        d["icmp_code"] = r.icmp_code
    if r.cidr is not None:
        d["cidr"] = str(r.cidr)
    else:
        d["group"] = r.group
    return d


@st.composite
def mutations(draw, world):
    """One World-API call as (method name, kwargs).  Mostly valid; sometimes invalid
    (already attached, unknown rule id, duplicate address, ...) so that refusal is tested."""
    kind = draw(st.sampled_from(("authorize", "authorize", "revoke", "attach", "detach",
                                 "launch", "terminate")))
    groups = list(world.groups.values())
    instances = list(world.instances.values())
    infos = _group_infos(world)
    if kind == "authorize" or (not instances and kind in ("attach", "detach", "terminate")):
        g = draw(st.sampled_from(groups))
        direction = draw(st.sampled_from(("ingress", "egress")))
        own = {"id": g.id, "name": g.name, "owner": g.owner, "region": g.region}
        previous = [(own, rule_to_dict(r)) for h in groups if h.region == g.region
                    for r in h.ingress + h.egress
                    if r.group is None or world.groups[r.group].region == g.region]
        rule = draw(rule_dicts(own, infos, set(), previous))
        if "id" in rule:       # fresh: the revision only grows (no state outside the world)
            rule["id"] = f"sgr-r{world.revision:05x}"
        return "authorize", {"group": g.id, "direction": direction, "rule": rule}
    if kind == "revoke":
        g = draw(st.sampled_from(groups))
        direction = draw(st.sampled_from(("ingress", "egress")))
        ids = [r.id for r in g.rules(direction)]
        if ids and draw(st.integers(0, 5)) > 0:
            return "revoke", {"group": g.id, "direction": direction,
                              "rule_id": draw(st.sampled_from(ids))}
        return "revoke", {"group": g.id, "direction": direction, "rule_id": "sgr-nonexistent"}
    if kind == "attach":
        inst = draw(st.sampled_from(instances))
        same = [g for g in groups if g.owner == inst.owner and g.region == inst.region]
        g = draw(st.sampled_from(same if same and draw(st.integers(0, 5)) > 0 else groups))
        return "attach", {"instance": inst.id, "group": g.id}
    if kind == "detach":
        inst = draw(st.sampled_from(instances))
        if inst.groups and draw(st.integers(0, 5)) > 0:
            return "detach", {"instance": inst.id, "group": draw(st.sampled_from(inst.groups))}
        return "detach", {"instance": inst.id, "group": draw(st.sampled_from(groups)).id}
    if kind == "terminate":
        inst = draw(st.sampled_from(instances))
        return "terminate", {"instance": inst.id}
    # launch: a fresh id (instances are never removed); addresses from the small universe
    # (they may collide with a running instance's -> refused)
    g0 = draw(st.sampled_from(groups))
    same = [g for g in groups if g.owner == g0.owner and g.region == g0.region]
    chosen = draw(st.lists(st.sampled_from(same), min_size=1, max_size=min(5, len(same)),
                           unique_by=lambda g: g.id))
    d = {"id": f"i-m{len(world.instances):03x}", "private_ip": draw(st.sampled_from(V4_PRIVATE)),
         "owner": g0.owner, "region": g0.region,
         "groups": [draw(st.sampled_from((g.id, g.name))) for g in chosen]}
    if draw(st.booleans()):
        d["private_ipv6"] = draw(st.sampled_from(V6_PRIVATE))
    if draw(st.integers(0, 2)) == 0:
        d["public_ip"] = draw(st.sampled_from(V4_PUBLIC))
    o = draw(st.sampled_from((None, None) + ORDERS))
    if o:
        d["order"] = o
    return "launch", {"instance_dict": d}


# ---------------------------------------------------------------------------------------
# the engine side of a comparison
# ---------------------------------------------------------------------------------------
def engine_class():
    """``fastsg.Engine``, or None while the engine module does not exist yet (an engine
    that exists but fails to import is an error, not a skip)."""
    try:
        from fastsg import Engine
        return Engine
    except ImportError:
        import importlib.util
        try:
            spec = importlib.util.find_spec("fastsg.engine")
        except ImportError:
            spec = None
        if spec is not None:
            raise
        return None


def assert_same(got, expected, batch, what=""):
    """Exact equality of result tuples (engine vs reference), with the first differing
    packet spelled out and the reference's results just before it."""
    try:
        from naive import packets_from_batch
    except ImportError:                                 # tests/ imported as a package
        from tests.naive import packets_from_batch
    assert len(got) == len(expected), f"{what}: {len(got)} results for {len(expected)} packets"
    for i, (g, e) in enumerate(zip(got, expected)):
        if g != e:
            pkt = packets_from_batch(batch.take(slice(i, i + 1)))[0]
            n_bad = sum(1 for a, b in zip(got, expected) if a != b)
            raise AssertionError(
                f"{what}: packet {i} of {len(got)} ({n_bad} differ): engine {g} != reference {e}\n"
                f"  packet: {pkt}\n  previous: {expected[max(0, i - 5):i]}")


def tracked_engine(world, threads, rules_first=None, **options):
    """A stateful Engine whose tracking walk gets its rules as told: True from the pass over
    every packet first, False evaluated inside the walk, None as the engine decides."""
    from fastsg import Engine
    engine = Engine(world, stateful=True, threads=threads, **options)
    engine.tracker.force_rules_first = rules_first
    return engine


def result_tuples(res) -> list:
    """An engine ``Result`` -> [(verdict name, egress rule or None, ingress rule or None)],
    the shape of ``NaiveResult.as_tuple()``."""
    from fastsg import Verdict
    names = list(res.rule_names)
    verdicts = np.asarray(res.verdict).tolist()
    eg = np.asarray(res.egress_rule).tolist()
    ing = np.asarray(res.ingress_rule).tolist()
    if not (len(verdicts) == len(eg) == len(ing)):
        raise AssertionError(f"result columns of different lengths: {len(verdicts)}, {len(eg)}, {len(ing)}")
    return [(Verdict(v).name, names[e] if e >= 0 else None, names[i] if i >= 0 else None)
            for v, e, i in zip(verdicts, eg, ing)]


# =======================================================================================
# stateful traffic (spec section 4) and flow logs (section 7)
# =======================================================================================
# Small timeouts (seconds) so that flows expire within a short generated capture.
TRACK_CONNTRACK = {"tcp_timeout": 5, "udp_timeout": 2, "udp_stream_timeout": 4,
                   "icmp_timeout": 1, "other_timeout": 3}
TRACK_CAPACITIES = (1, 1, 2, 2, 3, 3, 1000)
T0_NS = 1_700_000_000 * 10**9            # a realistic epoch base for generated captures
SEC = 10**9
# time steps between packets (ns): zero, tiny, around every timeout (+-1 ns), long jumps;
# TRACK_BACK: occasional steps back in time (out-of-order captures)
TRACK_STEPS = (0, 0, 0, 1, SEC // 10, SEC // 2, SEC // 2, SEC - 1, SEC, SEC, SEC + 1,
               2 * SEC - 1, 2 * SEC, 2 * SEC + 1, 3 * SEC, 3 * SEC + 1, 4 * SEC, 4 * SEC + 1,
               5 * SEC, 5 * SEC + 1, 7 * SEC, 30 * SEC)
TRACK_BACK = (-1, -SEC // 2, -SEC, -3 * SEC, -6 * SEC)
TRACK_EXTERNAL_V4 = ("192.0.2.1", "192.0.2.2", "198.51.100.7")
TRACK_EXTERNAL_V6 = ("2001:db8:ff::1", "2001:db8:ff::2")
ICMP4_ERRORS = (3, 3, 3, 11, 11, 4, 5, 12)
ICMP6_ERRORS = (1, 1, 3, 3, 2, 4)

# rule templates for worlds where tracking matters: asymmetric rules (egress open, ingress
# narrow), group peers, refusals, every tracked protocol family
TRACK_RULES = (
    {"protocol": "tcp", "ports": 80, "cidr": "0.0.0.0/0"},
    {"protocol": "tcp", "ports": "22-80", "cidr": "10.0.0.0/8"},
    {"protocol": "tcp", "ports": 443, "cidr": "::/0"},
    {"protocol": "udp", "ports": 53, "cidr": "0.0.0.0/0"},
    {"protocol": "udp", "ports": "1024-65535", "cidr": "192.0.2.0/24"},
    {"protocol": "udp", "cidr": "::/0"},
    {"protocol": "icmp", "icmp_type": 8, "cidr": "0.0.0.0/0"},
    {"protocol": "icmp", "icmp_type": 3, "cidr": "0.0.0.0/0"},
    {"protocol": "icmp", "cidr": "10.0.0.0/8"},
    {"protocol": "icmpv6", "icmp_type": 128, "cidr": "::/0"},
    {"protocol": "icmpv6", "cidr": "2001:db8::/32"},
    {"protocol": 47, "cidr": "0.0.0.0/0"},
    {"protocol": "all", "cidr": "10.0.0.0/8"},
    {"protocol": "all", "cidr": "192.0.2.1/32"},
    {"protocol": "all", "cidr": "::/0"},
    {"protocol": "all", "group": "sg-t0"},
    {"protocol": "tcp", "group": "sg-t1"},
    {"protocol": "udp", "group": "sg-t0"},
)


@st.composite
def track_world_dicts(draw):
    """A world where tracking decides a lot: 2-4 groups of template rules (open or narrow
    egress, narrow ingress), 2-4 running instances with v4, often v6 and public addresses,
    sometimes a stopped one.  Logging and conntrack settings are added by
    ``tracking_world_dicts``."""
    groups = []
    n_groups = draw(st.integers(2, 4))
    for k in range(n_groups):
        ingress = []
        for _ in range(draw(st.integers(0, 4))):
            r = dict(draw(st.sampled_from(TRACK_RULES)))
            r["action"] = draw(st.sampled_from(("allow", "allow", "allow", "deny", "reject")))
            if draw(st.integers(0, 3)) == 0:
                r["priority"] = draw(st.sampled_from((1, 2, 1000)))
            ingress.append(r)
        g = {"id": f"sg-t{k}", "name": f"track{k}", "ingress": ingress}
        eg = draw(st.sampled_from(("omit", "omit", "empty", "explicit")))
        if eg == "empty":
            g["egress"] = []
        elif eg == "explicit":
            g["egress"] = []
            for _ in range(draw(st.integers(1, 3))):
                r = dict(draw(st.sampled_from(TRACK_RULES)))
                r["action"] = draw(st.sampled_from(("allow", "allow", "deny", "reject")))
                g["egress"].append(r)
        groups.append(g)
    instances = []
    pub = list(V4_PUBLIC)
    for k in range(draw(st.integers(2, 4))):
        inst = {"id": f"i-t{k}", "private_ip": f"10.0.0.{k + 1}",
                "groups": list(draw(st.permutations([g["id"] for g in groups])))
                [:draw(st.integers(1, min(3, n_groups)))]}
        if draw(st.integers(0, 2)) > 0:
            inst["private_ipv6"] = f"2001:db8::{k + 1:x}"
        if draw(st.integers(0, 2)) == 0:
            inst["public_ip"] = pub.pop()
        o = draw(st.sampled_from((None, None) + ORDERS))
        if o:
            inst["order"] = o
        if draw(st.integers(0, 2)) == 0:
            inst["owner"] = OWNER2
            inst["groups"] = []          # groups are of the default owner
        instances.append(inst)
    if draw(st.integers(0, 3)) == 0:
        instances.append({"id": "i-stopped", "private_ip": "10.0.0.14", "groups": [],
                          "state": "stopped"})
    world = {"version": 1, "region": REGION, "security_groups": groups, "instances": instances}
    o = draw(st.sampled_from((None,) + ORDERS))
    if o:
        world["order"] = o
    return world


def _mark_some_rules_logged(draw, world: dict) -> None:
    """Set ``log: true`` on a few rules (in place)."""
    for g in world.get("security_groups", []):
        for direction in ("ingress", "egress"):
            for r in g.get(direction) or []:
                if draw(st.integers(0, 5)) == 0:
                    r["log"] = True


@st.composite
def tracking_world_dicts(draw, logging=True):
    """A world dict for stateful tests: ``track_world_dicts``, ``world_dicts`` or
    ``dense_world_dicts``, with small conntrack timeouts (``TRACK_CONNTRACK``), a tiny
    capacity most of the time, random logging settings and a few ``log: true`` rules."""
    kind = draw(st.sampled_from(("track", "track", "track", "random", "dense")))
    if kind == "track":
        world = draw(track_world_dicts())
    elif kind == "random":
        world = draw(world_dicts(max_instances=5))
    else:
        world = draw(dense_world_dicts())
    conntrack = dict(TRACK_CONNTRACK)
    conntrack["capacity"] = draw(st.sampled_from(TRACK_CAPACITIES))
    # now and then a udp stream timeout shorter than udp's (valid, and the promotion then
    # brings a flow's expiry forward)
    conntrack["udp_stream_timeout"] = draw(st.sampled_from((4, 4, 4, 1)))
    world["conntrack"] = conntrack
    if logging:
        _mark_some_rules_logged(draw, world)
        world["logging"] = {"drops": draw(st.booleans()), "accepts": draw(st.booleans()),
                            "aggregation_interval": draw(st.sampled_from((1, 2, 3, 60))),
                            "max_records": draw(st.sampled_from((0, 1, 2, 3, 5, 8, 1000000)))}
    return world


def _flow_key_ports(pk: dict) -> tuple:
    """The ports a flow key gives a generated packet (tcp/udp ports, echo id, else 0)."""
    if pk["proto"] in (6, 17):
        return pk["sport"], pk["dport"]
    if (pk["proto"] == 1 and pk["icmp_type"] in (8, 0)) or \
            (pk["proto"] == 58 and pk["icmp_type"] in (128, 129)):
        return pk["icmp_id"], pk["icmp_id"]
    return 0, 0


def _blank_packet(src, dst, proto) -> dict:
    return {"src": src, "dst": dst, "proto": proto, "sport": 0, "dport": 0, "icmp_type": 0,
            "icmp_code": 0, "icmp_id": 0, "tcp_flags": 0, "frag": 0, "emb_valid": 0,
            "emb_proto": 0, "emb_src": None, "emb_dst": None, "emb_sport": 0, "emb_dport": 0,
            "status": 0}


def _echo(pk: dict, version: int, reply: bool, ident: int) -> None:
    pk["icmp_type"] = (0 if reply else 8) if version == 4 else (129 if reply else 128)
    pk["icmp_id"] = pk["sport"] = pk["dport"] = ident


def track_addresses(world) -> dict:
    """Address pools for stateful traffic: {4: (instances', others), 6: (...)}.  Instance
    addresses include stopped/terminated ones and a few free private ones (an instance may
    be launched there by a timeline)."""
    pools = {4: ([], list(TRACK_EXTERNAL_V4) + V4_PRIVATE[:3]),
             6: ([], list(TRACK_EXTERNAL_V6) + V6_PRIVATE[:2])}
    for inst in world.instances.values():
        for a in inst.addresses():
            if inst.running:
                pools[a.version][0].append(str(a))
            else:
                pools[a.version][1].append(str(a))
    for v in (4, 6):
        pools[v] = (sorted(set(pools[v][0])), sorted(set(pools[v][1]) - set(pools[v][0])))
    return pools


def _new_packet(rnd, pools) -> dict:
    version = 6 if pools[6][0] and rnd.random() < 0.3 else 4
    mine, others = pools[version]

    def pick():
        if mine and rnd.random() < 0.75:
            return rnd.choice(mine)
        return rnd.choice(others)
    src, dst = pick(), pick()
    if rnd.random() < 0.03 and mine:
        dst = src                                            # a packet to itself
    proto = rnd.choice((6, 6, 6, 17, 17, 17, 1, 1, 47, 132))
    if proto == 1 and version == 6:
        proto = 58
    pk = _blank_packet(src, dst, proto)
    if proto in (6, 17):
        pk["sport"] = rnd.choice((1024, 40000, 40000, 40001, 53, 80))
        pk["dport"] = rnd.choice((22, 53, 80, 80, 443, 40000))
        if proto == 6:
            pk["tcp_flags"] = rnd.choice((0x02, 0x02, 0x10, 0x18, 0x11, 0x04, 0x14))
    elif proto in (1, 58):
        r = rnd.random()
        if r < 0.7:
            _echo(pk, version, rnd.random() < 0.2, rnd.choice((1, 2, 7)))
        elif r < 0.85:
            pk["icmp_type"] = rnd.choice(ICMP4_ERRORS if proto == 1 else ICMP6_ERRORS)
            pk["icmp_code"] = rnd.choice((0, 1, 13))     # an error with no usable quote
        else:
            pk["icmp_type"] = rnd.choice((13, 14, 17) if proto == 1 else (133, 135, 136))
    return pk


def _reply(rnd, orig: dict) -> dict:
    pk = dict(orig)
    pk.update(src=orig["dst"], dst=orig["src"], sport=orig["dport"], dport=orig["sport"],
              frag=0, emb_valid=0, status=0)
    if pk["proto"] == 6:
        pk["tcp_flags"] = rnd.choice((0x12, 0x10, 0x10, 0x18, 0x11, 0x14, 0x04))
    elif pk["proto"] in (1, 58) and pk["icmp_id"]:
        version = 4 if pk["proto"] == 1 else 6
        _echo(pk, version, orig["icmp_type"] in (8, 128), orig["icmp_id"])
    return pk


def _icmp_error(rnd, orig: dict, pools) -> dict:
    """An ICMP error quoting ``orig`` (or its reply), sent the usual way (orig's
    destination back to orig's source), the other way, or from/to a third address."""
    version = 6 if ":" in orig["src"] else 4
    quoted = orig if rnd.random() < 0.75 else _reply(rnd, orig)
    r = rnd.random()
    if r < 0.55:
        src, dst = quoted["dst"], quoted["src"]
    elif r < 0.8:
        src, dst = quoted["src"], quoted["dst"]
    else:
        mine, others = pools[version]
        third = rnd.choice(others + mine)
        src, dst = (third, quoted["src"]) if rnd.random() < 0.5 else (quoted["dst"], third)
    pk = _blank_packet(src, dst, 1 if version == 4 else 58)
    pk["icmp_type"] = rnd.choice(ICMP4_ERRORS if version == 4 else ICMP6_ERRORS)
    if rnd.random() < 0.05:
        pk["icmp_type"] = 0 if version == 4 else 129     # not an error: the quote is ignored
    pk["icmp_code"] = rnd.choice((0, 1, 3, 13))
    pk["emb_valid"] = 0 if rnd.random() < 0.1 else 1
    pk["emb_proto"] = quoted["proto"]
    pk["emb_src"], pk["emb_dst"] = quoted["src"], quoted["dst"]
    pk["emb_sport"], pk["emb_dport"] = _flow_key_ports(quoted)
    if quoted["proto"] not in (6, 17, 1, 58) and rnd.random() < 0.2:
        pk["emb_sport"], pk["emb_dport"] = 7, 9          # ports of a port-less quote: ignored
    return pk


def _naive_guide(world):
    """A function pk -> verdict of the reference, stateful, packet after packet.  The
    generator uses it only to answer and quote accepted packets more often (flows that are
    tracked somewhere); what is right is still decided by comparing engine and reference."""
    try:
        from naive import NaivePacket, NaiveState, classify_one
    except ImportError:                                 # tests/ imported as a package
        from tests.naive import NaivePacket, NaiveState, classify_one
    state = NaiveState(stateful=True)
    ip = ipaddress.ip_address

    def verdict(pk):
        status = {0: "ip", 1: "non-ip", 2: "malformed"}[pk["status"]]
        src, dst = ip(pk["src"]), ip(pk["dst"])
        p = NaivePacket(status=status, ipver=src.version, proto=pk["proto"], src=src, dst=dst,
                        sport=pk["sport"], dport=pk["dport"], icmp_type=pk["icmp_type"],
                        icmp_code=pk["icmp_code"], frag=pk["frag"], ts_ns=pk["ts"],
                        tcp_flags=pk["tcp_flags"], wirelen=pk["wirelen"], icmp_id=pk["icmp_id"],
                        emb_valid=pk["emb_valid"], emb_proto=pk["emb_proto"],
                        emb_src=ip(pk["emb_src"]) if pk["emb_valid"] else None,
                        emb_dst=ip(pk["emb_dst"]) if pk["emb_valid"] else None,
                        emb_sport=pk["emb_sport"], emb_dport=pk["emb_dport"])
        return classify_one(world, p, state).verdict
    return verdict


@st.composite
def tracking_packet_dicts(draw, world, n_min=1, n_max=60, t0=T0_NS):
    """Packets (dicts of columns, with ``ts`` and ``wirelen``) for stateful tests: new
    flows, replies (ports and addresses swapped, echo request -> reply), repeats, TCP RSTs,
    ICMP errors quoting earlier packets in either orientation, non-first fragments, a few
    non-IP/malformed records; timestamps step around every timeout, sometimes backwards."""
    # a seeded PRNG, not st.randoms(): hypothesis's randoms favour small values (a third of
    # random() is below 0.1), which would skew every branch below.  Shrinking n truncates
    # the same stream of packets, which is how a stateful failure shrinks best anyway.
    rnd = random.Random(draw(st.integers(0, 2**64 - 1), label="seed"))
    n = draw(st.integers(n_min, n_max), label="packets")
    pools = track_addresses(world)
    if not pools[4][0] and not pools[6][0]:
        pools[4] = (list(TRACK_EXTERNAL_V4[:1]), pools[4][1])
    t = t0 + rnd.choice((0, 1, SEC - 1, SEC // 2))
    guide = _naive_guide(world)
    out = []
    ip_packets = []
    accepted = []           # packets the reference accepted (their flows are tracked)
    followups = []          # flows quoted by an ICMP error: their next packets come soon
    urgent = False          # the last packet was such an error: follow it up right now
    step = None             # a time step chosen with the packet (else drawn below)
    for _ in range(n):
        r = rnd.random()
        if followups and (urgent or r < 0.2):
            # the quoted flow again, about one timeout after the error: live only if the
            # error did not refresh it (it must not), or only because it was refreshed
            orig = followups.pop()
            urgent = False
            pk = _reply(rnd, orig) if rnd.random() < 0.6 else dict(orig, frag=0, status=0)
            timeout = {6: 5, 17: 2, 1: 1, 58: 1}.get(orig["proto"], 3) * SEC
            step = rnd.choice((timeout, timeout, timeout + 1, 2 * SEC, 4 * SEC))
        elif not ip_packets or r < 0.45:
            pk = _new_packet(rnd, pools)
        else:
            r = rnd.random()
            if accepted and r < 0.5:
                orig = rnd.choice(accepted[-3:] if rnd.random() < 0.7 else accepted)
            else:
                orig = rnd.choice(ip_packets[-3:] if r < 0.8 else ip_packets)
            r = rnd.random()
            if r < 0.4:
                pk = _reply(rnd, orig)
            elif r < 0.55:
                pk = dict(orig, frag=0, status=0)
                if pk["proto"] == 6:
                    pk["tcp_flags"] = rnd.choice((0x10, 0x18, 0x11))
            elif r < 0.75:
                if accepted and rnd.random() < 0.6:
                    orig = rnd.choice(accepted[-2:])        # quote a tracked flow
                pk = _icmp_error(rnd, orig, pools)
                if rnd.random() < 0.6:
                    followups.append(orig)
                    urgent = rnd.random() < 0.7
                    step = rnd.choice((SEC // 2, SEC // 10, None))  # soon after the flow
            elif r < 0.85 and orig["proto"] == 6:
                pk = _reply(rnd, orig) if rnd.random() < 0.5 else dict(orig, status=0)
                pk["frag"] = 0
                pk["tcp_flags"] = rnd.choice((0x04, 0x14))
            elif r < 0.93:
                pk = dict(orig, frag=1, tcp_flags=0, icmp_type=0, icmp_code=0, icmp_id=0,
                          emb_valid=0, status=0)
                if rnd.random() < 0.7:
                    pk["sport"] = pk["dport"] = 0           # as a capture gives them
                if rnd.random() < 0.5:
                    pk = _reply(rnd, pk)
                    pk["frag"] = 1
            else:
                pk = _new_packet(rnd, pools)
        if rnd.random() < 0.04:
            pk = dict(pk, status=rnd.choice((1, 2)))          # non-IP / malformed record
        if step is not None:
            t, step = t + step, None
        elif rnd.random() < 0.1:
            t = max(0, t + rnd.choice(TRACK_BACK))
        else:
            t = t + rnd.choice(TRACK_STEPS)
        pk["ts"] = t
        pk["wirelen"] = rnd.choice((40, 60, 64, 100, 576, 1500, 9001))
        out.append(pk)
        if pk["status"] == 0:
            ip_packets.append(pk)
            if guide(pk) == "ACCEPT" and not pk["frag"]:
                accepted.append(pk)
        else:
            guide(pk)                                          # it advances the clock
    return out


def _halves(addr) -> tuple:
    if addr is None:
        return 0, 0
    v = int(ipaddress.ip_address(addr))
    return v >> 64, v & 0xFFFFFFFFFFFFFFFF


def batch_from_packet_dicts(packets):
    """Packet dicts (``tracking_packet_dicts``) -> PacketBatch via ``PacketBatch.from_arrays``."""
    from fastsg import PacketBatch
    if not packets:
        return PacketBatch.empty(0)
    cols = {k: [p[k] for p in packets] for k in packets[0] if k not in ("emb_src", "emb_dst")}
    src = cols.pop("src")
    dst = cols.pop("dst")
    status = np.asarray(cols.pop("status"), dtype=np.uint8)
    more = {k: np.asarray(v) for k, v in cols.items()
            if k not in ("proto", "sport", "dport", "ts", "icmp_type", "icmp_code", "tcp_flags",
                         "frag", "wirelen")}
    for side in ("src", "dst"):
        hl = [_halves(p["emb_" + side]) for p in packets]
        more[f"emb_{side}_hi"] = np.array([h for h, _ in hl], dtype=np.uint64)
        more[f"emb_{side}_lo"] = np.array([lo for _, lo in hl], dtype=np.uint64)
    more["status"] = status
    batch = PacketBatch.from_arrays(
        src=src, dst=dst, proto=cols["proto"], sport=cols["sport"], dport=cols["dport"],
        ts=np.asarray(cols["ts"], dtype=np.int64), icmp_type=cols["icmp_type"],
        icmp_code=cols["icmp_code"], tcp_flags=cols["tcp_flags"], frag=cols["frag"],
        wirelen=cols["wirelen"], **more)
    batch.columns["ipver"][status == 1] = 0            # a non-IP frame has no IP version
    return batch


@st.composite
def tracking_batches(draw, world, n_min=1, n_max=60):
    return batch_from_packet_dicts(draw(tracking_packet_dicts(world, n_min, n_max)))


def _timeline_entry(name, kwargs) -> dict:
    """A ``mutations`` call as a timeline entry (without ``at``)."""
    if name == "launch":
        return {"launch": dict(kwargs["instance_dict"])}
    if name == "revoke":
        return {"revoke": {k: kwargs[k] for k in ("group", "direction", "rule_id")}}
    return {name: dict(kwargs)}


def ns_to_at(ns: int) -> str:
    """Nanoseconds -> an exact ``at`` (a decimal string)."""
    return f"{ns // SEC}.{ns % SEC:09d}"


@st.composite
def timeline_worlds(draw, n_min=1, n_max=60, max_events=6):
    """(world dict with a ``timeline``, packet dicts) for replay: the events are World-API
    mutations (``mutations``) that apply in order, plus 'relaunch' (a new instance on a
    terminated one's address, which must start with an empty table), at packet times
    (ties with packets included) or just before/after them."""
    from fastsg import World, WorldError
    d = draw(tracking_world_dicts())
    sim = World.from_dict(d)
    packets = draw(tracking_packet_dicts(sim, n_min, n_max))
    stamps = sorted({p["ts"] for p in packets})
    k = draw(st.integers(0, max_events))
    times = sorted(draw(st.sampled_from(stamps)) + draw(st.sampled_from((0, 0, -1, 1, -SEC // 2)))
                   for _ in range(k))
    timeline = []
    for t in times:
        terminated = [i for i in sim.instances.values() if i.state == "terminated"
                      and i.private_ip is not None]
        if terminated and draw(st.integers(0, 2)) == 0:
            old = draw(st.sampled_from(terminated))
            entry = {"launch": {"id": f"i-re{len(sim.instances):03x}",
                                "private_ip": str(old.private_ip), "owner": old.owner,
                                "region": old.region, "groups": list(old.groups)}}
            if old.public_ip is not None:
                entry["launch"]["public_ip"] = str(old.public_ip)
        else:
            name, kwargs = draw(mutations(sim))
            entry = _timeline_entry(name, kwargs)
        try:
            kind = next(iter(entry))
            if kind == "launch":
                sim.launch(entry["launch"])
            else:
                getattr(sim, kind)(**entry[kind])
        except WorldError:
            continue
        timeline.append({"at": ns_to_at(max(0, t)), **entry})
    d = dict(d, timeline=timeline)
    return d, packets


# ---- shared settings of the differential suites ----------------------------------------
# FASTSG_TEST_SCALE=20 runs 20x the examples (a longer hunt; the default keeps each file fast)
SCALE = float(os.environ.get("FASTSG_TEST_SCALE", "1"))
SETTINGS = dict(deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])


def scaled(examples: int) -> int:
    """A test's max_examples times FASTSG_TEST_SCALE (at least 1)."""
    return max(1, int(examples * SCALE))
