"""The reference evaluator: SEMANTICS.md written out as plain, slow, obvious Python.

This module decides whether the fast engine is right, so it shares no code with fastsg's
compiler, kernels or engine.  It reads only the world's data model (groups, rules,
instances, orders: ``fastsg.world.model``) and walks the spec one packet at a time:

* section 2 -- which checks a packet meets            -> ``owner_of``, ``classify_one``
* section 3 -- matching and the combining order       -> ``rule_matches``, ``decide``, ``run_check``
* section 6 -- changes take effect immediately        -> ``naive_replay`` (timeline events)

Sections 4 (stateful tracking), 5 (REJECT answers) and 7 (flow logs) are not implemented
yet; ``NaiveState`` and ``CheckEvent`` are where they will plug in (see the ``TODO(section
N)`` markers).  Everything here is sequential on purpose: packets are processed in capture
order, and each packet sees the world exactly as it is when the packet comes.

Addresses are ``ipaddress`` objects and CIDR matching uses ``ipaddress`` membership.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Optional, Sequence

# Verdict names (the engine's ``fastsg.Verdict`` member names).
ACCEPT = "ACCEPT"
DROP = "DROP"
REJECT = "REJECT"
UNMANAGED = "UNMANAGED"
MALFORMED = "MALFORMED"
VERDICTS = (ACCEPT, DROP, REJECT, UNMANAGED, MALFORMED)

# Packet status values (as strings; ``packets_from_batch`` maps the schema's numbers)
STATUS_NAMES = {0: "ip", 1: "non-ip", 2: "malformed"}

PROTO_TCP, PROTO_UDP, PROTO_ICMP, PROTO_ICMPV6 = 6, 17, 1, 58
PORT_PROTOCOLS = (PROTO_TCP, PROTO_UDP)
ICMP_PROTOCOLS = (PROTO_ICMP, PROTO_ICMPV6)
ALL_PROTOCOLS = -1
ANY = -1

DEFAULT_ORDER = "allow,deny"
DEFAULT_REASON = "default"


# ---------------------------------------------------------------------------------------
# packets and results
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NaivePacket:
    """One packet record, decoded.  ``src``/``dst`` are ``ipaddress`` objects (None for a
    non-IP frame).  ``status`` is 'ip', 'non-ip' or 'malformed'.  ``frag`` is true for a
    non-first fragment.  The fields after ``wirelen`` are not used yet (sections 4, 5)."""
    status: str
    ipver: int
    proto: int
    src: object
    dst: object
    sport: int = 0
    dport: int = 0
    icmp_type: int = 0
    icmp_code: int = 0
    frag: int = 0
    ts_ns: int = 0
    tcp_flags: int = 0
    wirelen: int = 64
    # --- for stateful tracking (section 4) and REJECT answers (section 5), unused yet ---
    icmp_id: int = 0
    tcp_seq: int = 0
    tcp_ack: int = 0
    l4_payload_len: int = 0
    emb_valid: int = 0
    emb_proto: int = 0
    emb_src: object = None
    emb_dst: object = None
    emb_sport: int = 0
    emb_dport: int = 0


@dataclass(frozen=True)
class NaiveResult:
    """A packet's verdict and the deciding rule of each check: a rule id, 'default' (or,
    later, a conntrack reason), or None where the check did not happen."""
    verdict: str
    egress_rule: Optional[str]
    ingress_rule: Optional[str]

    def as_tuple(self):
        return (self.verdict, self.egress_rule, self.ingress_rule)


@dataclass(frozen=True)
class CheckEvent:
    """One check a packet met (spec section 7 calls it an *event* of the instance).
    Recorded now so flow logs (section 7) can be built from it later."""
    packet_index: int
    instance: str
    direction: str          # 'egress' | 'ingress'
    result: str             # ACCEPT | DROP | REJECT
    rule: str               # rule id or 'default' (later: conntrack reasons)


@dataclass
class NaiveState:
    """Everything the sequential reference carries from one packet to the next.

    Now: only the list of check events.  TODO(section 4): per-instance conntrack tables.
    TODO(section 7): flow-log aggregation is a function of ``events``.
    """
    events: list = field(default_factory=list)
    stateful: bool = False


# ---------------------------------------------------------------------------------------
# section 2: which checks a packet meets
# ---------------------------------------------------------------------------------------
def same_address(a, b) -> bool:
    """Equal addresses of the same IP version (an IPv4 address never equals an IPv6 one)."""
    if a is None or b is None:
        return False
    return a.version == b.version and int(a) == int(b)


def owner_of(world, addr):
    """The running instance ``addr`` belongs to (private_ip, private_ipv6 or public_ip), or None.

    Stopped and terminated instances own no address.  A valid world has at most one
    running owner per address; if it ever has more, that is a world bug we refuse to hide.
    """
    owners = []
    for inst in world.instances.values():
        if inst.state != "running":
            continue
        for own in (inst.private_ip, inst.private_ipv6, inst.public_ip):
            if same_address(own, addr):
                owners.append(inst)
                break
    if len(owners) > 1:
        raise AssertionError(f"address {addr} belongs to several running instances: "
                             f"{[i.id for i in owners]}")
    return owners[0] if owners else None


# ---------------------------------------------------------------------------------------
# section 3: matching
# ---------------------------------------------------------------------------------------
def protocol_fields_match(rule, pkt: NaivePacket) -> bool:
    """Protocol, ports (destination port, both directions) and ICMP type/code."""
    if rule.protocol == ALL_PROTOCOLS:
        return True                                   # `all` ignores ports and ICMP fields
    if rule.protocol != pkt.proto:
        return False
    if rule.protocol in PORT_PROTOCOLS:
        if pkt.frag:                                  # a non-first fragment has no ports
            return rule.port_lo == 0 and rule.port_hi == 65535
        return rule.port_lo <= pkt.dport <= rule.port_hi
    if rule.protocol in ICMP_PROTOCOLS:
        if pkt.frag:                                  # ... and no ICMP type/code
            return rule.icmp_type == ANY and rule.icmp_code == ANY
        type_ok = rule.icmp_type == ANY or rule.icmp_type == pkt.icmp_type
        code_ok = rule.icmp_code == ANY or rule.icmp_code == pkt.icmp_code
        return type_ok and code_ok
    return True                                       # other numbers ignore ports/ICMP fields


def group_peer_matches(world, group_id: str, checked, peer) -> bool:
    """The peer is the private_ip or private_ipv6 of a running member of the group, in the
    same region as the checked instance.  Public addresses never match."""
    for inst in world.instances.values():
        if inst.state != "running":
            continue
        if group_id not in inst.groups:
            continue
        if inst.region != checked.region:
            continue
        if same_address(inst.private_ip, peer) or same_address(inst.private_ipv6, peer):
            return True
    return False


def cidr_peer_matches(network, peer) -> bool:
    """The peer lies in the network; a network only matches addresses of its IP version."""
    if network.version != peer.version:
        return False
    return peer in network


def peer_matches(world, rule, checked, peer) -> bool:
    if rule.cidr is not None and rule.group is not None:
        raise AssertionError(f"rule {rule.id} has both a cidr and a group peer")
    if rule.cidr is not None:
        return cidr_peer_matches(rule.cidr, peer)
    if rule.group is not None:
        return group_peer_matches(world, rule.group, checked, peer)
    raise AssertionError(f"rule {rule.id} has no peer")


def rule_matches(world, rule, checked, pkt: NaivePacket, peer) -> bool:
    return protocol_fields_match(rule, pkt) and peer_matches(world, rule, checked, peer)


def rules_in_canonical_order(world, inst, direction: str) -> list:
    """The rules of the instance's groups for one direction: groups in the order of the
    instance's ``groups`` list, rules in file (list) order within a group."""
    out = []
    for gid in inst.groups:
        group = world.groups[gid]
        out.extend(group.egress if direction == "egress" else group.ingress)
    return out


def order_of(world, inst) -> str:
    """The instance's ``order`` if it has one, else the world's."""
    if inst.order:
        return inst.order
    return world.order or DEFAULT_ORDER


def refusal(rule) -> str:
    """The verdict of a deny or reject rule."""
    if rule.action == "deny":
        return DROP
    if rule.action == "reject":
        return REJECT
    raise AssertionError(f"rule {rule.id}: not a refusal: {rule.action!r}")


def decide(order: str, matching: Sequence) -> tuple:
    """The combining-order table of section 3.  ``matching`` is M in canonical order.
    Returns (ACCEPT|DROP|REJECT, deciding rule id or 'default')."""
    allows = [r for r in matching if r.action == "allow"]
    refusals = [r for r in matching if r.action in ("deny", "reject")]
    if len(allows) + len(refusals) != len(matching):
        raise AssertionError(f"unknown action in {[r.action for r in matching]}")
    if order == "allow,deny":
        if refusals:
            return refusal(refusals[0]), refusals[0].id
        if allows:
            return ACCEPT, allows[0].id
        return DROP, DEFAULT_REASON
    if order == "deny,allow":
        if allows:
            return ACCEPT, allows[0].id
        if refusals:
            return refusal(refusals[0]), refusals[0].id
        return ACCEPT, DEFAULT_REASON
    if order == "priority":
        if not matching:
            return DROP, DEFAULT_REASON
        best_key, best = None, None
        for position, rule in enumerate(matching):
            key = (rule.priority, 0 if rule.action in ("deny", "reject") else 1, position)
            if best_key is None or key < best_key:
                best_key, best = key, rule
        if best.action == "allow":
            return ACCEPT, best.id
        return refusal(best), best.id
    raise AssertionError(f"unknown order {order!r}")


def run_check(world, state: NaiveState, inst, direction: str, pkt: NaivePacket, peer) -> tuple:
    """One check at ``inst``: returns (ACCEPT|DROP|REJECT, deciding rule)."""
    # TODO(section 4): when state.stateful, look the flow up in inst's table first
    # (own flow, then RELATED for ICMP errors), and insert it after a rules ACCEPT.
    matching = [r for r in rules_in_canonical_order(world, inst, direction)
                if rule_matches(world, r, inst, pkt, peer)]
    return decide(order_of(world, inst), matching)


def classify_one(world, pkt: NaivePacket, state: Optional[NaiveState] = None,
                 index: int = 0) -> NaiveResult:
    """Section 2: the checks one packet meets, egress first, and its verdict."""
    if state is None:
        state = NaiveState()
    if pkt.status == "malformed":
        return NaiveResult(MALFORMED, None, None)
    if pkt.status == "non-ip":
        return NaiveResult(UNMANAGED, None, None)
    if pkt.status != "ip":
        raise AssertionError(f"unknown packet status {pkt.status!r}")

    source = owner_of(world, pkt.src)
    dest = owner_of(world, pkt.dst)
    if source is None and dest is None:
        return NaiveResult(UNMANAGED, None, None)

    egress_rule = ingress_rule = None
    if source is not None:
        result, egress_rule = run_check(world, state, source, "egress", pkt, peer=pkt.dst)
        state.events.append(CheckEvent(index, source.id, "egress", result, egress_rule))
        if result != ACCEPT:
            return NaiveResult(result, egress_rule, None)       # ingress never happens
    if dest is not None:
        result, ingress_rule = run_check(world, state, dest, "ingress", pkt, peer=pkt.src)
        state.events.append(CheckEvent(index, dest.id, "ingress", result, ingress_rule))
        if result != ACCEPT:
            return NaiveResult(result, egress_rule, ingress_rule)
    return NaiveResult(ACCEPT, egress_rule, ingress_rule)


def naive_classify(world, packets: Sequence[NaivePacket],
                   state: Optional[NaiveState] = None) -> list:
    """Classify packets in order against the world as it is (no timeline)."""
    if state is None:
        state = NaiveState()
    return [classify_one(world, p, state, i) for i, p in enumerate(packets)]


# ---------------------------------------------------------------------------------------
# section 6: the timeline
# ---------------------------------------------------------------------------------------
def naive_replay(world, packets: Sequence[NaivePacket], state: Optional[NaiveState] = None) -> list:
    """Replay packets against a *copy* of the world, applying ``world.timeline`` events as
    time passes: an event at time T applies before the first packet whose ts_ns >= T
    (events sorted by time, ties in file order).  The given world is not changed."""
    if state is None:
        state = NaiveState()
    live = world.copy()
    events = sorted(world.timeline, key=lambda ev: (ev.at_ns, ev.index))
    pending = 0
    results = []
    for i, pkt in enumerate(packets):
        while pending < len(events) and events[pending].at_ns <= pkt.ts_ns:
            live.apply_event(events[pending])
            # TODO(section 4): terminate discards the instance's tracking table.
            pending += 1
        results.append(classify_one(live, pkt, state, i))
    return results


# ---------------------------------------------------------------------------------------
# batches -> packets (own decoding: no fastsg code involved)
# ---------------------------------------------------------------------------------------
def _address(hi: int, lo: int, ipver: int):
    if ipver == 4:
        return ipaddress.IPv4Address(int(lo) & 0xFFFFFFFF)
    if ipver == 6:
        return ipaddress.IPv6Address((int(hi) << 64) | int(lo))
    return None


def packets_from_batch(batch) -> list:
    """A ``PacketBatch`` (struct of arrays) -> list of ``NaivePacket``."""
    c = {name: col.tolist() for name, col in batch.columns.items()}
    out = []
    for i in range(len(batch)):
        status = STATUS_NAMES.get(c["status"][i])
        if status is None:
            raise AssertionError(f"packet {i}: unknown status {c['status'][i]}")
        ipver = c["ipver"][i]
        emb_ver = ipver
        out.append(NaivePacket(
            status=status, ipver=ipver, proto=c["proto"][i],
            src=_address(c["src_hi"][i], c["src_lo"][i], ipver),
            dst=_address(c["dst_hi"][i], c["dst_lo"][i], ipver),
            sport=c["sport"][i], dport=c["dport"][i],
            icmp_type=c["icmp_type"][i], icmp_code=c["icmp_code"][i],
            frag=c["frag"][i], ts_ns=c["ts"][i], tcp_flags=c["tcp_flags"][i],
            wirelen=c["wirelen"][i],
            icmp_id=c["icmp_id"][i], tcp_seq=c["tcp_seq"][i], tcp_ack=c["tcp_ack"][i],
            l4_payload_len=c["l4_payload_len"][i], emb_valid=c["emb_valid"][i],
            emb_proto=c["emb_proto"][i],
            emb_src=_address(c["emb_src_hi"][i], c["emb_src_lo"][i], emb_ver) if c["emb_valid"][i] else None,
            emb_dst=_address(c["emb_dst_hi"][i], c["emb_dst_lo"][i], emb_ver) if c["emb_valid"][i] else None,
            emb_sport=c["emb_sport"][i], emb_dport=c["emb_dport"][i],
        ))
    return out
