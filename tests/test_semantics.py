"""One small named test per rule of SEMANTICS.md sections 2, 3 and 6.

Every test states the expected verdict and deciding rules and asserts that BOTH the
reference (tests/naive.py) and the engine give exactly that.  Tests at the end check batch
sizes around ``fastsg.config.BLOCK_PACKETS``.
"""
from __future__ import annotations

import numpy as np
import pytest

from fastsg import World, WorldError
from fastsg.config import BLOCK_PACKETS

try:
    from naive import naive_classify, naive_replay, packets_from_batch
    from strategies import batch_from_rows, engine_class, result_tuples
except ImportError:                                     # tests/ imported as a package
    from tests.naive import naive_classify, naive_replay, packets_from_batch
    from tests.strategies import batch_from_rows, engine_class, result_tuples

Engine = engine_class()

REGION = "us-east-1"
A, D, R, U, M = "ACCEPT", "DROP", "REJECT", "UNMANAGED", "MALFORMED"


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------
def sg(gid, ingress=(), egress=None, **kw):
    """A group in file syntax; ``egress=None`` omits egress (the default allow-all)."""
    d = {"id": gid, "name": kw.pop("name", gid + "-name"), "ingress": list(ingress)}
    if egress is not None:
        d["egress"] = list(egress)
    d.update(kw)
    return d


def inst(iid, ip, groups, **kw):
    d = {"id": iid, "private_ip": ip, "groups": list(groups)}
    d.update(kw)
    return d


def rule(rid, protocol="tcp", **kw):
    d = {"id": rid, "protocol": protocol}
    d.update(kw)
    return d


def make_world(groups, instances, order=None, **extra):
    d = {"version": 1, "region": REGION, "security_groups": list(groups),
         "instances": list(instances)}
    if order is not None:
        d["order"] = order
    d.update(extra)
    return World.from_dict(d)


def P(src, dst, proto=6, dport=80, sport=40000, icmp_type=0, icmp_code=0, frag=0,
      flags=0x02, status=0):
    """One packet row for ``batch_from_rows``."""
    return (src, dst, proto, sport, dport, icmp_type, icmp_code, frag, flags, status)


class Both:
    """The reference and (when it exists) one Engine over the SAME world object, so that
    World-API mutations reach both; ``expect`` asserts they both give ``expected``."""

    def __init__(self, world, threads=1):
        self.world = world
        self.engine = Engine(world, stateful=False, threads=threads) if Engine else None

    def results(self, rows):
        batch = batch_from_rows(rows)
        naive = [r.as_tuple() for r in naive_classify(self.world, packets_from_batch(batch))]
        engine = result_tuples(self.engine.classify(batch)) if self.engine else None
        return naive, engine

    def expect(self, rows, expected):
        if isinstance(expected, tuple):
            expected = [expected]
        naive, engine = self.results(rows)
        assert naive == list(expected), "reference (naive) disagrees with the spec"
        if engine is not None:
            assert engine == list(expected), "engine disagrees with the spec"


def expect(world, rows, expected, threads=1):
    Both(world, threads).expect(rows, expected)


def test_engine_is_available():
    assert Engine is not None, "fastsg.Engine is not importable: only the reference was checked"


# =======================================================================================
# section 2: which checks a packet meets
# =======================================================================================
def test_both_checks_recorded_when_accepted():
    w = make_world([sg("sg-a", egress=[rule("a-eg", cidr="10.0.0.0/24")]),
                    sg("sg-b", ingress=[rule("b-in", cidr="10.0.0.1/32")])],
                   [inst("i-a", "10.0.0.1", ["sg-a"]), inst("i-b", "10.0.0.2", ["sg-b"])])
    expect(w, [P("10.0.0.1", "10.0.0.2")], (A, "a-eg", "b-in"))


def test_egress_checked_before_ingress():
    # egress denies (DROP), ingress would REJECT: the egress refusal decides
    w = make_world([sg("sg-a", egress=[rule("a-deny", cidr="0.0.0.0/0", action="deny")]),
                    sg("sg-b", ingress=[rule("b-rej", cidr="0.0.0.0/0", action="reject")])],
                   [inst("i-a", "10.0.0.1", ["sg-a"]), inst("i-b", "10.0.0.2", ["sg-b"])])
    expect(w, [P("10.0.0.1", "10.0.0.2")], (D, "a-deny", None))


def test_egress_refusal_means_no_ingress_check():
    # egress has no matching rule -> DROP by default; ingress (which would ACCEPT) not done
    w = make_world([sg("sg-a", egress=[]),
                    sg("sg-b", ingress=[rule("b-in", cidr="0.0.0.0/0")])],
                   [inst("i-a", "10.0.0.1", ["sg-a"]), inst("i-b", "10.0.0.2", ["sg-b"])])
    expect(w, [P("10.0.0.1", "10.0.0.2")], (D, "default", None))


def test_ingress_refusal_after_egress_accept():
    w = make_world([sg("sg-a"), sg("sg-b", ingress=[rule("b-rej", cidr="10.0.0.0/8",
                                                         action="reject")])],
                   [inst("i-a", "10.0.0.1", ["sg-a"]), inst("i-b", "10.0.0.2", ["sg-b"])])
    expect(w, [P("10.0.0.1", "10.0.0.2")], (R, "sg-a:eg:0", "b-rej"))


def test_unmanaged_when_neither_side_is_an_instance():
    w = make_world([sg("sg-a", ingress=[rule("a-in", protocol="all", cidr="0.0.0.0/0")])],
                   [inst("i-a", "10.0.0.1", ["sg-a"])])
    expect(w, [P("192.0.2.1", "192.0.2.2"), P("2001:db8::9", "2001:db8::1")],
           [(U, None, None), (U, None, None)])


def test_only_destination_is_an_instance():
    w = make_world([sg("sg-a", ingress=[rule("a-in", cidr="192.0.2.0/24")])],
                   [inst("i-a", "10.0.0.1", ["sg-a"])])
    expect(w, [P("192.0.2.1", "10.0.0.1"), P("198.51.100.1", "10.0.0.1")],
           [(A, None, "a-in"), (D, None, "default")])


def test_only_source_is_an_instance():
    w = make_world([sg("sg-a", egress=[rule("a-eg", ports=443, cidr="0.0.0.0/0")])],
                   [inst("i-a", "10.0.0.1", ["sg-a"])])
    expect(w, [P("10.0.0.1", "192.0.2.1", dport=443), P("10.0.0.1", "192.0.2.1", dport=80)],
           [(A, "a-eg", None), (D, "default", None)])


def test_non_ip_is_unmanaged():
    w = make_world([sg("sg-a", ingress=[rule("a-in", protocol="all", cidr="0.0.0.0/0")])],
                   [inst("i-a", "10.0.0.1", ["sg-a"]), inst("i-b", "10.0.0.2", ["sg-a"])])
    expect(w, [P("10.0.0.1", "10.0.0.2", status=1)], (U, None, None))


def test_malformed_counted():
    # a malformed record is MALFORMED whatever its (partly parsed) addresses say
    w = make_world([sg("sg-a", ingress=[rule("a-in", protocol="all", cidr="0.0.0.0/0")])],
                   [inst("i-a", "10.0.0.1", ["sg-a"]), inst("i-b", "10.0.0.2", ["sg-a"])])
    expect(w, [P("10.0.0.1", "10.0.0.2", status=2), P("192.0.2.1", "192.0.2.2", status=2),
               P("10.0.0.1", "10.0.0.2")],
           [(M, None, None), (M, None, None), (A, "sg-a:eg:0", "a-in")])


def test_stopped_instance_address_does_not_belong():
    w = make_world([sg("sg-a", ingress=[rule("a-in", protocol="all", cidr="0.0.0.0/0")])],
                   [inst("i-a", "10.0.0.1", ["sg-a"], state="stopped")])
    expect(w, [P("192.0.2.1", "10.0.0.1"), P("10.0.0.1", "192.0.2.1")],
           [(U, None, None), (U, None, None)])


def test_terminated_instance_address_does_not_belong():
    w = make_world([sg("sg-a", ingress=[rule("a-in", protocol="all", cidr="0.0.0.0/0")])],
                   [inst("i-a", "10.0.0.1", ["sg-a"], state="terminated",
                         private_ipv6="2001:db8::1", public_ip="54.1.2.1")])
    expect(w, [P("192.0.2.1", "10.0.0.1"), P("2001:db8::9", "2001:db8::1"),
               P("192.0.2.1", "54.1.2.1")], [(U, None, None)] * 3)


def test_stopped_instance_may_share_an_address_with_a_running_one():
    w = make_world([sg("sg-a", ingress=[rule("a-in", cidr="0.0.0.0/0")]),
                    sg("sg-s", ingress=[rule("s-in", cidr="0.0.0.0/0", action="deny")])],
                   [inst("i-old", "10.0.0.1", ["sg-s"], state="stopped"),
                    inst("i-a", "10.0.0.1", ["sg-a"])])
    expect(w, [P("192.0.2.1", "10.0.0.1")], (A, None, "a-in"))


def test_private_ipv6_and_public_ip_belong():
    w = make_world([sg("sg-a", ingress=[rule("a-in4", cidr="192.0.2.0/24"),
                                        rule("a-in6", cidr="2001:db8:ff::/48")])],
                   [inst("i-a", "10.0.0.1", ["sg-a"], private_ipv6="2001:db8::1",
                         public_ip="54.1.2.1")])
    expect(w, [P("2001:db8:ff::1", "2001:db8::1"), P("192.0.2.1", "54.1.2.1"),
               P("192.0.2.1", "10.0.0.1")],
           [(A, None, "a-in6"), (A, None, "a-in4"), (A, None, "a-in4")])


def test_public_address_belongs_but_never_matches_group_peer():
    # b's public address belongs to b (so b's egress is checked), but as a peer it never
    # matches a group rule, even though b is a running member of sg-b
    w = make_world([sg("sg-a", ingress=[rule("a-from-b", group="sg-b")]),
                    sg("sg-b")],
                   [inst("i-a", "10.0.0.1", ["sg-a"], public_ip="54.1.2.1"),
                    inst("i-b", "10.0.0.2", ["sg-b"], public_ip="54.1.2.2")])
    expect(w, [P("54.1.2.2", "10.0.0.1"), P("10.0.0.2", "10.0.0.1"),
               P("10.0.0.2", "54.1.2.1")],
           [(D, "sg-b:eg:0", "default"), (A, "sg-b:eg:0", "a-from-b"),
            (A, "sg-b:eg:0", "a-from-b")])


def test_packet_to_itself_meets_both_checks_at_the_same_instance():
    w = make_world([sg("sg-a", ingress=[rule("a-self", group="sg-a")],
                       egress=[rule("a-eg", cidr="10.0.0.1/32")])],
                   [inst("i-a", "10.0.0.1", ["sg-a"])])
    expect(w, [P("10.0.0.1", "10.0.0.1")], (A, "a-eg", "a-self"))


# =======================================================================================
# section 3: matching
# =======================================================================================
def test_cidr_peer_boundaries():
    w = make_world([sg("sg-a", ingress=[rule("a-in", cidr="192.0.2.16/28")])],
                   [inst("i-a", "10.0.0.1", ["sg-a"])])
    rows = [P(s, "10.0.0.1") for s in ("192.0.2.15", "192.0.2.16", "192.0.2.31", "192.0.2.32")]
    expect(w, rows, [(D, None, "default"), (A, None, "a-in"), (A, None, "a-in"),
                     (D, None, "default")])


def test_cidr_slash32_slash128_and_slash0():
    w = make_world([sg("sg-a", ingress=[rule("h4", cidr="192.0.2.7/32"),
                                        rule("h6", cidr="2001:db8:ff::7/128"),
                                        rule("all4", ports=22, cidr="0.0.0.0/0"),
                                        rule("all6", ports=23, cidr="::/0")])],
                   [inst("i-a", "10.0.0.1", ["sg-a"], private_ipv6="2001:db8::1")])
    expect(w, [P("192.0.2.7", "10.0.0.1"), P("192.0.2.8", "10.0.0.1"),
               P("2001:db8:ff::7", "2001:db8::1"), P("2001:db8:ff::6", "2001:db8::1"),
               P("203.0.113.5", "10.0.0.1", dport=22), P("fe80::5", "2001:db8::1", dport=23)],
           [(A, None, "h4"), (D, None, "default"), (A, None, "h6"), (D, None, "default"),
            (A, None, "all4"), (A, None, "all6")])


def test_cidr_matches_only_own_ip_version():
    w = make_world([sg("sg-a", ingress=[rule("v4-all", protocol="all", cidr="0.0.0.0/0")],
                       egress=[rule("v6-all", protocol="all", cidr="::/0")])],
                   [inst("i-a", "10.0.0.1", ["sg-a"], private_ipv6="2001:db8::1")])
    expect(w, [P("2001:db8::9", "2001:db8::1"),          # v6 packet, only a v4 ingress rule
               P("10.0.0.1", "192.0.2.1"),               # v4 packet, only a v6 egress rule
               P("::ffff:192.0.2.1", "2001:db8::1")],    # v4-mapped v6 is still v6
           [(D, None, "default"), (D, "default", None), (D, None, "default")])


def test_group_peer_matches_private_ip():
    w = make_world([sg("sg-db", ingress=[rule("db-from-web", ports=3306, group="sg-web")]),
                    sg("sg-web")],
                   [inst("i-db", "10.0.0.1", ["sg-db"]), inst("i-web", "10.0.0.2", ["sg-web"]),
                    inst("i-other", "10.0.0.3", ["sg-db"])])
    expect(w, [P("10.0.0.2", "10.0.0.1", dport=3306), P("10.0.0.3", "10.0.0.1", dport=3306),
               P("192.0.2.1", "10.0.0.1", dport=3306)],
           [(A, "sg-web:eg:0", "db-from-web"), (D, "sg-db:eg:0", "default"),
            (D, None, "default")])


def test_group_peer_matches_private_ipv6():
    w = make_world([sg("sg-db", ingress=[rule("db-from-web", group="sg-web")]), sg("sg-web")],
                   [inst("i-db", "10.0.0.1", ["sg-db"], private_ipv6="2001:db8::1"),
                    inst("i-web", "10.0.0.2", ["sg-web"], private_ipv6="2001:db8::2")])
    expect(w, [P("2001:db8::2", "2001:db8::1")], (A, "sg-web:eg:1", "db-from-web"))


def test_group_peer_requires_a_running_member():
    w = make_world([sg("sg-db", ingress=[rule("db-from-web", group="sg-web")]), sg("sg-web")],
                   [inst("i-db", "10.0.0.1", ["sg-db"]),
                    inst("i-web", "10.0.0.2", ["sg-web"], state="stopped")])
    expect(w, [P("10.0.0.2", "10.0.0.1")], (D, None, "default"))


def test_group_peer_by_name_and_other_account():
    w = make_world([sg("sg-db", name="db", ingress=[
                        rule("by-name", ports=1, group="web"),
                        rule("by-owner", ports=2, group="444455556666/sg-partner")]),
                    sg("sg-web", name="web"),
                    sg("sg-partner", name="web", owner="444455556666")],
                   [inst("i-db", "10.0.0.1", ["db"]), inst("i-web", "10.0.0.2", ["web"]),
                    inst("i-p", "10.0.0.3", ["web"], owner="444455556666")])
    # "web" resolves within the rule's own owner: sg-web, not the partner's web
    expect(w, [P("10.0.0.2", "10.0.0.1", dport=1), P("10.0.0.3", "10.0.0.1", dport=1),
               P("10.0.0.3", "10.0.0.1", dport=2), P("10.0.0.2", "10.0.0.1", dport=2)],
           [(A, "sg-web:eg:0", "by-name"), (D, "sg-partner:eg:0", "default"),
            (A, "sg-partner:eg:0", "by-owner"), (D, "sg-web:eg:0", "default")])


def test_group_peer_other_region_never_matches():
    # A group reference cannot cross regions, and an instance cannot use another region's
    # group; so a member in another region is not expressible except by the world refusing it.
    d = {"version": 1, "region": REGION,
         "security_groups": [sg("sg-db", ingress=[rule("db-from-web", group="sg-web")]),
                             sg("sg-web")],
         "instances": [inst("i-db", "10.0.0.1", ["sg-db"]),
                       inst("i-web", "10.0.0.2", ["sg-web"], region="eu-west-1")]}
    try:
        w = World.from_dict(d)
    except WorldError:
        return
    expect(w, [P("10.0.0.2", "10.0.0.1")], (D, None, "default"))


def test_ports_are_destination_port_for_egress_too():
    w = make_world([sg("sg-a", egress=[rule("a-eg", ports=443, cidr="0.0.0.0/0")])],
                   [inst("i-a", "10.0.0.1", ["sg-a"])])
    expect(w, [P("10.0.0.1", "192.0.2.1", sport=443, dport=40000),
               P("10.0.0.1", "192.0.2.1", sport=40000, dport=443)],
           [(D, "default", None), (A, "a-eg", None)])


def test_port_range_edges_inclusive():
    w = make_world([sg("sg-a", ingress=[rule("r", ports="8000-8080", cidr="0.0.0.0/0"),
                                        rule("u", protocol="udp", ports=53, cidr="0.0.0.0/0")])],
                   [inst("i-a", "10.0.0.1", ["sg-a"])])
    rows = [P("192.0.2.1", "10.0.0.1", dport=p) for p in (7999, 8000, 8080, 8081)]
    rows += [P("192.0.2.1", "10.0.0.1", proto=17, dport=p) for p in (52, 53, 54)]
    rows += [P("192.0.2.1", "10.0.0.1", proto=17, dport=8000)]     # udp is not tcp
    expect(w, rows, [(D, None, "default"), (A, None, "r"), (A, None, "r"), (D, None, "default"),
                     (D, None, "default"), (A, None, "u"), (D, None, "default"),
                     (D, None, "default")])


def test_protocol_all_ignores_ports():
    w = make_world([sg("sg-a", ingress=[rule("all", protocol="all", cidr="192.0.2.0/24"),
                                        rule("m1", protocol="-1", cidr="198.51.100.0/24")])],
                   [inst("i-a", "10.0.0.1", ["sg-a"])])
    expect(w, [P("192.0.2.1", "10.0.0.1", proto=6, dport=1),
               P("192.0.2.1", "10.0.0.1", proto=17, dport=65535),
               P("192.0.2.1", "10.0.0.1", proto=1, icmp_type=3, icmp_code=13),
               P("198.51.100.1", "10.0.0.1", proto=47),
               P("198.51.100.1", "10.0.0.1", proto=0)],
           [(A, None, "all"), (A, None, "all"), (A, None, "all"), (A, None, "m1"),
            (A, None, "m1")])


def test_numeric_protocols():
    w = make_world([sg("sg-a", ingress=[rule("gre", protocol=47, cidr="0.0.0.0/0"),
                                        rule("tcp6", protocol=6, ports=22, cidr="0.0.0.0/0")])],
                   [inst("i-a", "10.0.0.1", ["sg-a"])])
    expect(w, [P("192.0.2.1", "10.0.0.1", proto=47, dport=9),
               P("192.0.2.1", "10.0.0.1", proto=50),
               P("192.0.2.1", "10.0.0.1", proto=6, dport=22),
               P("192.0.2.1", "10.0.0.1", proto=6, dport=23)],
           [(A, None, "gre"), (D, None, "default"), (A, None, "tcp6"), (D, None, "default")])


def test_icmp_type_and_code():
    w = make_world([sg("sg-a", ingress=[rule("echo", protocol="icmp", icmp_type=8, cidr="0.0.0.0/0"),
                                        rule("unr13", protocol="icmp", icmp_type=3, icmp_code=13,
                                             cidr="0.0.0.0/0"),
                                        rule("v6any", protocol="icmpv6", cidr="::/0")])],
                   [inst("i-a", "10.0.0.1", ["sg-a"], private_ipv6="2001:db8::1")])
    expect(w, [P("192.0.2.1", "10.0.0.1", proto=1, icmp_type=8, icmp_code=0),
               P("192.0.2.1", "10.0.0.1", proto=1, icmp_type=8, icmp_code=7),
               P("192.0.2.1", "10.0.0.1", proto=1, icmp_type=3, icmp_code=13),
               P("192.0.2.1", "10.0.0.1", proto=1, icmp_type=3, icmp_code=1),
               P("192.0.2.1", "10.0.0.1", proto=1, icmp_type=0),
               P("2001:db8::9", "2001:db8::1", proto=58, icmp_type=128),
               P("2001:db8::9", "2001:db8::1", proto=1, icmp_type=8)],   # icmpv6 rule != proto 1
           [(A, None, "echo"), (A, None, "echo"), (A, None, "unr13"), (D, None, "default"),
            (D, None, "default"), (A, None, "v6any"), (D, None, "default")])


def test_icmp_code_of_any_type():
    # spec section 1: icmp_type and icmp_code are each "-1 or omitted = any", so a code
    # alone matches that code of every type (AWS refuses such a rule; fastsg worlds may say it)
    w = make_world([sg("sg-a", ingress=[rule("c13", protocol="icmp", icmp_code=13, cidr="0.0.0.0/0"),
                                        rule("c0", protocol="icmpv6", icmp_type=-1, icmp_code=0,
                                             cidr="::/0")])],
                   [inst("i-a", "10.0.0.1", ["sg-a"], private_ipv6="2001:db8::1")])
    expect(w, [P("192.0.2.1", "10.0.0.1", proto=1, icmp_type=3, icmp_code=13),
               P("192.0.2.1", "10.0.0.1", proto=1, icmp_type=0, icmp_code=13),
               P("192.0.2.1", "10.0.0.1", proto=1, icmp_type=255, icmp_code=13),
               P("192.0.2.1", "10.0.0.1", proto=1, icmp_type=3, icmp_code=12),
               P("192.0.2.1", "10.0.0.1", proto=1, icmp_type=3, icmp_code=14),
               P("192.0.2.1", "10.0.0.1", proto=1, icmp_type=3, icmp_code=13, frag=1),
               P("2001:db8::9", "2001:db8::1", proto=58, icmp_type=128, icmp_code=0),
               P("2001:db8::9", "2001:db8::1", proto=58, icmp_type=1, icmp_code=0),
               P("2001:db8::9", "2001:db8::1", proto=58, icmp_type=1, icmp_code=4)],
           [(A, None, "c13"), (A, None, "c13"), (A, None, "c13"), (D, None, "default"),
            (D, None, "default"), (D, None, "default"), (A, None, "c0"), (A, None, "c0"),
            (D, None, "default")])


def test_nonfirst_fragment_matches_only_full_port_range():
    w = make_world([sg("sg-a", ingress=[rule("p80", ports=80, cidr="192.0.2.0/24"),
                                        rule("full", ports="0-65535", cidr="198.51.100.0/24"),
                                        rule("omitted", protocol="udp", cidr="203.0.113.0/24")])],
                   [inst("i-a", "10.0.0.1", ["sg-a"])])
    expect(w, [P("192.0.2.1", "10.0.0.1", dport=80, frag=1),
               P("192.0.2.1", "10.0.0.1", dport=80, frag=0),
               P("198.51.100.1", "10.0.0.1", dport=0, frag=1),
               P("203.0.113.1", "10.0.0.1", proto=17, dport=0, frag=1)],
           [(D, None, "default"), (A, None, "p80"), (A, None, "full"), (A, None, "omitted")])


def test_nonfirst_fragment_icmp_rule_needs_any_type_and_code():
    w = make_world([sg("sg-a", ingress=[rule("t0", protocol="icmp", icmp_type=0, cidr="192.0.2.0/24"),
                                        rule("any", protocol="icmp", cidr="198.51.100.0/24"),
                                        rule("anyx", protocol="icmp", icmp_type=-1, icmp_code=-1,
                                             cidr="203.0.113.0/24")])],
                   [inst("i-a", "10.0.0.1", ["sg-a"])])
    expect(w, [P("192.0.2.1", "10.0.0.1", proto=1, icmp_type=0, frag=1),
               P("198.51.100.1", "10.0.0.1", proto=1, frag=1),
               P("203.0.113.1", "10.0.0.1", proto=1, frag=1)],
           [(D, None, "default"), (A, None, "any"), (A, None, "anyx")])


def test_nonfirst_fragment_matches_all_and_numeric_protocol_rules():
    w = make_world([sg("sg-a", ingress=[rule("all", protocol="all", cidr="192.0.2.0/24"),
                                        rule("gre", protocol=47, cidr="198.51.100.0/24")])],
                   [inst("i-a", "10.0.0.1", ["sg-a"])])
    expect(w, [P("192.0.2.1", "10.0.0.1", dport=0, frag=1),
               P("198.51.100.1", "10.0.0.1", proto=47, frag=1)],
           [(A, None, "all"), (A, None, "gre")])


def test_default_egress_rules_and_ids():
    w = make_world([sg("sg-a", ingress=[{"protocol": "tcp", "ports": 22, "cidr": "0.0.0.0/0"},
                                        {"protocol": "tcp", "ports": 23, "cidr": "::/0"}]),
                    sg("sg-b", egress=[])],
                   [inst("i-a", "10.0.0.1", ["sg-a"], private_ipv6="2001:db8::1"),
                    inst("i-b", "10.0.0.2", ["sg-b"])])
    expect(w, [P("10.0.0.1", "192.0.2.1"), P("2001:db8::1", "2001:db8::9"),
               P("192.0.2.1", "10.0.0.1", dport=22), P("2001:db8::9", "2001:db8::1", dport=23),
               P("10.0.0.2", "192.0.2.1")],
           [(A, "sg-a:eg:0", None), (A, "sg-a:eg:1", None), (A, None, "sg-a:in:0"),
            (A, None, "sg-a:in:1"), (D, "default", None)])


# =======================================================================================
# section 3: the combining order
# =======================================================================================
def _order_world(order, groups_order=("sg-1", "sg-2"), inst_order=None, rules1=(), rules2=()):
    kw = {"order": inst_order} if inst_order else {}
    return make_world([sg("sg-1", ingress=rules1), sg("sg-2", ingress=rules2)],
                      [inst("i-a", "10.0.0.1", list(groups_order), **kw)], order=order)


def test_allow_deny_first_deny_decides():
    rules1 = [rule("allow1", cidr="0.0.0.0/0"), rule("rej1", ports=80, cidr="192.0.2.0/24",
                                                     action="reject")]
    rules2 = [rule("deny2", cidr="192.0.2.0/24", action="deny")]
    # canonical order: sg-1 rules then sg-2 rules -> rej1 comes first
    expect(_order_world("allow,deny", rules1=rules1, rules2=rules2),
           [P("192.0.2.1", "10.0.0.1", dport=80), P("192.0.2.1", "10.0.0.1", dport=81),
            P("198.51.100.1", "10.0.0.1")],
           [(R, None, "rej1"), (D, None, "deny2"), (A, None, "allow1")])
    # groups listed the other way round on the instance: deny2 comes first
    expect(_order_world("allow,deny", ("sg-2", "sg-1"), rules1=rules1, rules2=rules2),
           [P("192.0.2.1", "10.0.0.1", dport=80)], (D, None, "deny2"))


def test_allow_deny_first_allow_is_deciding_rule():
    rules1 = [rule("p80", ports=80, cidr="0.0.0.0/0")]
    rules2 = [rule("any", cidr="0.0.0.0/0")]
    expect(_order_world("allow,deny", ("sg-2", "sg-1"), rules1=rules1, rules2=rules2),
           [P("192.0.2.1", "10.0.0.1", dport=80)], (A, None, "any"))


def test_deny_allow_allow_wins():
    rules1 = [rule("deny1", cidr="0.0.0.0/0", action="deny"),
              rule("rej1", cidr="0.0.0.0/0", action="reject")]
    rules2 = [rule("allow2", ports=80, cidr="192.0.2.0/24"),
              rule("allow3", cidr="192.0.2.0/24")]
    expect(_order_world("deny,allow", rules1=rules1, rules2=rules2),
           [P("192.0.2.1", "10.0.0.1", dport=80), P("192.0.2.1", "10.0.0.1", dport=81),
            P("198.51.100.1", "10.0.0.1")],
           [(A, None, "allow2"), (A, None, "allow3"), (D, None, "deny1")])


def test_deny_allow_first_refusal_when_no_allow():
    rules1 = [rule("rej1", ports=22, cidr="0.0.0.0/0", action="reject")]
    rules2 = [rule("deny2", cidr="0.0.0.0/0", action="deny")]
    expect(_order_world("deny,allow", ("sg-2", "sg-1"), rules1=rules1, rules2=rules2),
           [P("192.0.2.1", "10.0.0.1", dport=22)], (D, None, "deny2"))
    expect(_order_world("deny,allow", ("sg-1", "sg-2"), rules1=rules1, rules2=rules2),
           [P("192.0.2.1", "10.0.0.1", dport=22)], (R, None, "rej1"))


def test_priority_least_priority_decides():
    rules1 = [rule("allow-500", cidr="0.0.0.0/0", priority=500),
              rule("deny-default", cidr="192.0.2.0/24", action="deny")]        # priority 1000
    rules2 = [rule("rej-100", ports=22, cidr="192.0.2.0/24", action="reject", priority=100)]
    expect(_order_world("priority", rules1=rules1, rules2=rules2),
           [P("192.0.2.1", "10.0.0.1", dport=22), P("192.0.2.1", "10.0.0.1", dport=80)],
           [(R, None, "rej-100"), (A, None, "allow-500")])


def test_priority_ties_deny_before_allow():
    rules1 = [rule("allow-7", cidr="0.0.0.0/0", priority=7)]
    rules2 = [rule("deny-7", ports=22, cidr="0.0.0.0/0", action="deny", priority=7),
              rule("rej-7", ports=23, cidr="0.0.0.0/0", action="reject", priority=7)]
    expect(_order_world("priority", rules1=rules1, rules2=rules2),
           [P("192.0.2.1", "10.0.0.1", dport=22), P("192.0.2.1", "10.0.0.1", dport=23),
            P("192.0.2.1", "10.0.0.1", dport=24)],
           [(D, None, "deny-7"), (R, None, "rej-7"), (A, None, "allow-7")])


def test_priority_ties_canonical_position():
    rules1 = [rule("a1", ports=80, cidr="0.0.0.0/0", priority=5),
              rule("d1", ports=22, cidr="0.0.0.0/0", action="deny", priority=5)]
    rules2 = [rule("a2", cidr="0.0.0.0/0", priority=5),
              rule("r2", ports=22, cidr="0.0.0.0/0", action="reject", priority=5)]
    rows = [P("192.0.2.1", "10.0.0.1", dport=80), P("192.0.2.1", "10.0.0.1", dport=22)]
    expect(_order_world("priority", ("sg-1", "sg-2"), rules1=rules1, rules2=rules2), rows,
           [(A, None, "a1"), (D, None, "d1")])
    expect(_order_world("priority", ("sg-2", "sg-1"), rules1=rules1, rules2=rules2), rows,
           [(A, None, "a2"), (R, None, "r2")])


def test_priority_allow_only_is_ec2_behaviour():
    # allow rules only: allow,deny and priority accept and drop the same packets
    rules1 = [rule("x", ports=22, cidr="192.0.2.0/24", priority=9)]
    rules2 = [rule("y", ports=22, cidr="0.0.0.0/0", priority=3)]
    rows = [P("192.0.2.1", "10.0.0.1", dport=22), P("192.0.2.1", "10.0.0.1", dport=23),
            P("198.51.100.1", "10.0.0.1", dport=22)]
    expect(_order_world("allow,deny", rules1=rules1, rules2=rules2), rows,
           [(A, None, "x"), (D, None, "default"), (A, None, "y")])
    expect(_order_world("priority", rules1=rules1, rules2=rules2), rows,
           [(A, None, "y"), (D, None, "default"), (A, None, "y")])


@pytest.mark.parametrize("order,verdict", [("allow,deny", D), ("deny,allow", A), ("priority", D)])
def test_empty_M_default_per_order(order, verdict):
    w = _order_world(order, rules1=[rule("other", ports=22, cidr="0.0.0.0/0", action="deny")])
    expect(w, [P("192.0.2.1", "10.0.0.1", dport=80)], (verdict, None, "default"))


def test_empty_M_deny_allow_default_accept_on_egress():
    w = make_world([sg("sg-a", egress=[])], [inst("i-a", "10.0.0.1", ["sg-a"])],
                   order="deny,allow")
    expect(w, [P("10.0.0.1", "192.0.2.1")], (A, "default", None))


def test_reject_verdict():
    w = make_world([sg("sg-a", ingress=[rule("rej", protocol="udp", cidr="0.0.0.0/0",
                                             action="reject")])],
                   [inst("i-a", "10.0.0.1", ["sg-a"])])
    expect(w, [P("192.0.2.1", "10.0.0.1", proto=17, dport=53)], (R, None, "rej"))


def test_instance_order_overrides_world_order():
    groups = [sg("sg-1", ingress=[rule("allow", cidr="0.0.0.0/0"),
                                  rule("deny", cidr="0.0.0.0/0", action="deny", priority=2000)])]
    w = make_world(groups, [inst("i-ad", "10.0.0.1", ["sg-1"]),
                            inst("i-da", "10.0.0.2", ["sg-1"], order="deny,allow"),
                            inst("i-p", "10.0.0.3", ["sg-1"], order="priority")],
                   order="allow,deny")
    expect(w, [P("192.0.2.1", "10.0.0.1"), P("192.0.2.1", "10.0.0.2"), P("192.0.2.1", "10.0.0.3")],
           [(D, None, "deny"), (A, None, "allow"), (A, None, "allow")])


def test_world_order_defaults_to_allow_deny():
    w = make_world([sg("sg-1", ingress=[rule("allow", cidr="0.0.0.0/0"),
                                        rule("deny", cidr="0.0.0.0/0", action="deny")])],
                   [inst("i-a", "10.0.0.1", ["sg-1"])])
    expect(w, [P("192.0.2.1", "10.0.0.1")], (D, None, "deny"))


# =======================================================================================
# section 6: changes take effect immediately
# =======================================================================================
def _live_world():
    return make_world([sg("sg-db", ingress=[rule("db-from-web", ports=3306, group="sg-web")]),
                       sg("sg-web"), sg("sg-x")],
                      [inst("i-db", "10.0.0.1", ["sg-db"]), inst("i-web", "10.0.0.2", ["sg-web"]),
                       inst("i-x", "10.0.0.3", ["sg-x"])])


def test_membership_is_live_after_launch():
    w = _live_world()
    both = Both(w)
    pkt = [P("10.0.0.9", "10.0.0.1", dport=3306)]
    both.expect(pkt, (D, None, "default"))
    w.launch({"id": "i-new", "private_ip": "10.0.0.9", "groups": ["sg-web"]})
    both.expect(pkt, (A, "sg-web:eg:0", "db-from-web"))


def test_membership_is_live_after_terminate():
    w = _live_world()
    both = Both(w)
    pkt = [P("10.0.0.2", "10.0.0.1", dport=3306)]
    both.expect(pkt, (A, "sg-web:eg:0", "db-from-web"))
    w.terminate("i-web")
    both.expect(pkt, (D, None, "default"))


def test_membership_is_live_after_attach():
    w = _live_world()
    both = Both(w)
    pkt = [P("10.0.0.3", "10.0.0.1", dport=3306)]
    both.expect(pkt, (D, "sg-x:eg:0", "default"))
    w.attach("i-x", "sg-web")
    both.expect(pkt, (A, "sg-x:eg:0", "db-from-web"))


def test_membership_is_live_after_detach():
    w = _live_world()
    both = Both(w)
    pkt = [P("10.0.0.2", "10.0.0.1", dport=3306)]
    w.attach("i-web", "sg-x")
    both.expect(pkt, (A, "sg-web:eg:0", "db-from-web"))
    w.detach("i-web", "sg-web")
    both.expect(pkt, (D, "sg-x:eg:0", "default"))


def test_attach_appends_to_canonical_order():
    w = make_world([sg("sg-1", ingress=[rule("deny1", cidr="0.0.0.0/0", action="deny")]),
                    sg("sg-2", ingress=[rule("rej2", cidr="0.0.0.0/0", action="reject")])],
                   [inst("i-a", "10.0.0.1", ["sg-2"])])
    both = Both(w)
    pkt = [P("192.0.2.1", "10.0.0.1")]
    both.expect(pkt, (R, None, "rej2"))
    w.attach("i-a", "sg-1")              # appended after sg-2: rej2 still first
    both.expect(pkt, (R, None, "rej2"))
    w.detach("i-a", "sg-2")
    both.expect(pkt, (D, None, "deny1"))
    w.attach("i-a", "sg-2")              # now after sg-1
    both.expect(pkt, (D, None, "deny1"))


def test_mutation_visible_to_next_classify():
    w = _live_world()
    both = Both(w)
    pkt = [P("192.0.2.1", "10.0.0.1", dport=22)]
    both.expect(pkt, (D, None, "default"))
    r = w.authorize("sg-db", "ingress", {"protocol": "tcp", "ports": 22, "cidr": "192.0.2.0/24"})
    assert r.id == "sg-db:in:1"
    both.expect(pkt, (A, None, "sg-db:in:1"))
    r2 = w.authorize("sg-db", "ingress", {"protocol": "all", "cidr": "192.0.2.1/32",
                                          "action": "reject", "id": "sgr-block"})
    both.expect(pkt, (R, None, "sgr-block"))
    w.revoke("sg-db", "ingress", rule_id="sgr-block")
    both.expect(pkt, (A, None, "sg-db:in:1"))
    w.revoke("sg-db", "ingress", rule_id="sg-db:in:1")
    both.expect(pkt, (D, None, "default"))
    # ids are never reused
    r3 = w.authorize("sg-db", "ingress", {"protocol": "tcp", "ports": 22, "cidr": "192.0.2.0/24"})
    assert r3.id == "sg-db:in:3" and r2.id == "sgr-block"
    both.expect(pkt, (A, None, "sg-db:in:3"))


def test_egress_authorize_and_revoke_default_rule():
    w = _live_world()
    both = Both(w)
    pkt = [P("10.0.0.3", "192.0.2.1")]
    both.expect(pkt, (A, "sg-x:eg:0", None))
    w.revoke("sg-x", "egress", rule_id="sg-x:eg:0")
    both.expect(pkt, (D, "default", None))
    w.authorize("sg-x", "egress", {"protocol": "tcp", "ports": 80, "cidr": "192.0.2.0/24"})
    both.expect(pkt, (A, "sg-x:eg:2", None))


def test_refused_mutation_changes_nothing():
    w = _live_world()
    both = Both(w)
    pkt = [P("10.0.0.3", "10.0.0.1", dport=3306), P("10.0.0.2", "10.0.0.1", dport=3306)]
    expected = [(D, "sg-x:eg:0", "default"), (A, "sg-web:eg:0", "db-from-web")]
    both.expect(pkt, expected)
    with pytest.raises(WorldError):
        w.attach("i-web", "sg-web")                       # already attached
    with pytest.raises(WorldError):
        w.detach("i-x", "sg-web")                         # not attached
    with pytest.raises(WorldError):
        w.launch({"id": "i-dup", "private_ip": "10.0.0.1", "groups": ["sg-web"]})
    with pytest.raises(WorldError):
        w.revoke("sg-db", "ingress", rule_id="no-such-rule")
    both.expect(pkt, expected)


def test_instance_groups_limit():
    w = make_world([sg(f"sg-{k}") for k in range(6)],
                   [inst("i-a", "10.0.0.1", [f"sg-{k}" for k in range(5)])],
                   limits={"groups_per_instance": 5})
    with pytest.raises(WorldError):
        w.attach("i-a", "sg-5")
    assert w.instances["i-a"].groups == [f"sg-{k}" for k in range(5)]


def test_timeline_events_apply_at_their_time():
    d = {"version": 1, "region": REGION,
         "security_groups": [sg("sg-db", ingress=[rule("db-from-web", group="sg-web")]),
                             sg("sg-web")],
         "instances": [inst("i-db", "10.0.0.1", ["sg-db"]), inst("i-web", "10.0.0.2", ["sg-web"])],
         "timeline": [
             {"at": 20, "terminate": {"instance": "i-web"}},
             {"at": 10, "authorize": {"group": "sg-db", "direction": "ingress",
                                      "rule": {"protocol": "tcp", "ports": 22,
                                               "cidr": "192.0.2.0/24", "id": "sgr-1"}}},
             {"at": 10, "authorize": {"group": "sg-db", "direction": "ingress",
                                      "rule": {"protocol": "tcp", "ports": 22,
                                               "cidr": "0.0.0.0/0", "id": "sgr-2"}}},
             {"at": 15, "revoke": {"group": "sg-db", "direction": "ingress",
                                   "rule_id": "db-from-web"}},
         ]}
    w = World.from_dict(d)
    sec = 1_000_000_000
    rows_ts = [(P("192.0.2.1", "10.0.0.1", dport=22), 9 * sec),
               (P("192.0.2.1", "10.0.0.1", dport=22), 10 * sec),      # ties: sgr-1 before sgr-2
               (P("10.0.0.2", "10.0.0.1", dport=22), 10 * sec),
               (P("10.0.0.2", "10.0.0.1", dport=22), 15 * sec - 1),
               (P("10.0.0.2", "10.0.0.1", dport=22), 15 * sec),       # db-from-web revoked
               (P("10.0.0.2", "10.0.0.1", dport=3306), 19 * sec),
               (P("10.0.0.2", "10.0.0.1", dport=22), 20 * sec)]       # i-web terminated
    batch = batch_from_rows([r for r, _ in rows_ts], ts=[t for _, t in rows_ts])
    got = [r.as_tuple() for r in naive_replay(w, packets_from_batch(batch))]
    assert got == [(D, None, "default"), (A, None, "sgr-1"),
                   (A, "sg-web:eg:0", "db-from-web"), (A, "sg-web:eg:0", "db-from-web"),
                   (A, "sg-web:eg:0", "sgr-2"), (D, "sg-web:eg:0", "default"),
                   (A, None, "sgr-2")]
    # the replay works on a copy: the original world is unchanged
    assert w.instances["i-web"].state == "running"
    assert [r.id for r in w.groups["sg-db"].ingress] == ["db-from-web"]


# =======================================================================================
# batch sizes around the block size
# =======================================================================================
def _size_world():
    return make_world(
        [sg("sg-a", ingress=[rule("a-web", ports="80-443", cidr="0.0.0.0/0"),
                             rule("a-deny", cidr="192.0.2.0/28", action="deny"),
                             rule("a-from-b", protocol="all", group="sg-b")],
            egress=[rule("a-eg", protocol="all", cidr="10.0.0.0/8"),
                    rule("a-rej", protocol="udp", cidr="0.0.0.0/0", action="reject")]),
         sg("sg-b", ingress=[rule("b-icmp", protocol="icmp", icmp_type=8, cidr="0.0.0.0/0"),
                             rule("b-v6", cidr="::/0")])],
        [inst("i-a", "10.0.0.1", ["sg-a"], private_ipv6="2001:db8::1"),
         inst("i-b", "10.0.0.2", ["sg-b", "sg-a"], order="priority"),
         inst("i-c", "10.0.0.3", ["sg-b"], order="deny,allow", private_ipv6="2001:db8::3")])


def _base_rows():
    v4 = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "192.0.2.1", "192.0.2.20", "10.0.0.9"]
    v6 = ["2001:db8::1", "2001:db8::3", "2001:db8::9"]
    rows = []
    for s in v4:
        for d in v4:
            for proto, dport, t in ((6, 80, 0), (6, 22, 0), (17, 53, 0), (1, 0, 8), (47, 0, 0)):
                rows.append(P(s, d, proto=proto, dport=dport, icmp_type=t))
    for s in v6:
        for d in v6:
            rows.append(P(s, d, proto=6, dport=443))
            rows.append(P(s, d, proto=58, icmp_type=128))
    rows.append(P("10.0.0.1", "10.0.0.2", status=1))
    rows.append(P("10.0.0.1", "10.0.0.2", status=2))
    rows.append(P("192.0.2.1", "10.0.0.1", dport=80, frag=1))
    return rows


@pytest.fixture(scope="module")
def size_setup():
    w = _size_world()
    rows = _base_rows()
    base = batch_from_rows(rows)
    naive = [r.as_tuple() for r in naive_classify(w, packets_from_batch(base))]
    assert len(set(naive)) >= 8                  # a varied mix of verdicts and rules
    return w, base, naive


@pytest.mark.parametrize("size", [0, 1, BLOCK_PACKETS - 1, BLOCK_PACKETS, BLOCK_PACKETS + 1])
@pytest.mark.parametrize("threads", [1, 2])
def test_batch_sizes_around_block(size_setup, size, threads):
    if Engine is None:
        pytest.skip("fastsg.Engine not available")
    w, base, naive = size_setup
    rng = np.random.default_rng(size + 7)
    index = rng.integers(0, len(base), size)
    batch = base.take(index)
    engine = Engine(w, stateful=False, threads=threads)
    got = result_tuples(engine.classify(batch))
    expected = [naive[i] for i in index]
    assert len(got) == size
    assert got == expected
    # per-packet classification of the same packets, around the block edges and a sample
    probe = {0, size - 1, size - 2, BLOCK_PACKETS - 1, BLOCK_PACKETS, size // 2}
    probe |= set(rng.integers(0, max(size, 1), 20).tolist())
    for i in sorted(p for p in probe if 0 <= p < size):
        one = result_tuples(engine.classify(batch.take(slice(i, i + 1))))
        assert one == [got[i]], f"packet {i}"
    # the same packets split unevenly must give the same answers
    if size:
        cut = sorted({0, min(size, 3), size // 2, size})
        pieces = []
        for a, b in zip(cut, cut[1:]):
            pieces += result_tuples(engine.classify(batch.take(slice(a, b))))
        assert pieces == got
