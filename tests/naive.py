"""The reference evaluator: SEMANTICS.md written out as plain, slow, obvious Python.

This module decides whether the fast engine is right, so it shares no code with fastsg's
compiler, kernels or engine.  It reads only the world's data model (groups, rules,
instances, orders: ``fastsg.world.model``) and walks the spec one packet at a time:

* section 2 -- which checks a packet meets            -> ``owner_of``, ``classify_one``
* section 3 -- matching and the combining order       -> ``rule_matches``, ``decide``, ``run_check``
* section 4 -- stateful tracking                       -> ``NaiveState(stateful=True)``,
                                                         ``track_check`` (own flow, RELATED,
                                                         capacity, insert, RST, streams)
* section 6 -- changes take effect immediately        -> ``naive_replay`` (timeline events)
* section 7 -- flow logs and rule counters            -> ``naive_flow_log``,
                                                         ``naive_aws_lines``,
                                                         ``naive_jsonl_lines``,
                                                         ``naive_rule_counters``

Section 4 follows the README ("Behaviour where the spec is silent") where the spec is open, and in its
one documented departure: the clock is the latest timestamp seen so far; a flow is live iff ``last + timeout >= now``; capacity
counts live flows only (counted the obvious way, every time).  Section 5 (REJECT answers)
is not modelled here.  Everything is sequential on purpose: packets are processed in
capture order, and each packet sees the world exactly as it is when the packet comes.

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
    non-first fragment.  ``icmp_id`` keys an ICMP echo's flow and the ``emb_*`` fields (an
    ICMP error's quoted header) RELATED lookups (section 4); tcp_seq/tcp_ack/l4_payload_len
    are for REJECT answers (section 5, not modelled here)."""
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
    # --- for stateful tracking (section 4) and REJECT answers (section 5) ---
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
    """A packet's verdict and the deciding rule of each check: a rule id, 'default', a
    conntrack reason, or None where the check did not happen."""
    verdict: str
    egress_rule: Optional[str]
    ingress_rule: Optional[str]

    def as_tuple(self):
        return (self.verdict, self.egress_rule, self.ingress_rule)


@dataclass(frozen=True)
class CheckEvent:
    """One check a packet met (spec section 7 calls it an *event* of the instance), with
    everything a flow record needs, captured when the check happened (the world may change
    later: a revoked rule's ``log`` flag, a launched instance's owner)."""
    packet_index: int
    instance: str
    direction: str          # 'egress' | 'ingress'
    result: str             # ACCEPT | DROP | REJECT (the event's action, see ``action``)
    rule: str               # rule id or a reason: default / conntrack / conntrack-related / conntrack-full
    ts_ns: int = 0
    wirelen: int = 0
    proto: int = 0
    src: object = None
    dst: object = None
    sport: int = 0
    dport: int = 0
    account: str = ""       # the instance's owner when the check happened
    rule_log: bool = False  # the deciding rule is a rule with ``log: true``

    @property
    def action(self) -> str:
        """The event's action.  The egress event is ACCEPT when the packet went on
        to an ingress check or was accepted, else the packet's verdict; the ingress event is
        the packet's verdict.  Both are exactly the check's own result."""
        return self.result


@dataclass
class FlowEntry:
    """One tracked flow of an instance's table."""
    last: int               # ns: the clock when the flow was inserted or last refreshed
    direction: str          # 'egress' | 'ingress': the direction of the inserting packet
    stream: bool = False    # udp: packets have passed both ways


@dataclass
class NaiveState:
    """Everything the sequential reference carries from one packet to the next.

    ``events``: every check event, in order (section 7 is a function of them).
    ``stateful``: run section 4.  ``conntrack``: the tracking config (seconds and capacity,
    the keys of ``world.conntrack``); None reads ``world.conntrack`` at each check.
    ``tables``: instance id -> {flow key: FlowEntry}.  ``now``: the tracking clock (ns), the
    latest timestamp seen so far (None before the first packet).
    """
    events: list = field(default_factory=list)
    stateful: bool = False
    conntrack: Optional[dict] = None
    tables: dict = field(default_factory=dict)
    now: Optional[int] = None

    def table(self, instance_id: str) -> dict:
        return self.tables.setdefault(instance_id, {})

    def live_flows(self, world, instance_id: str) -> int:
        """The flows of the instance's table that are live at ``now`` (expired ones do not count)."""
        config = self.config(world)
        return sum(1 for key, entry in self.tables.get(instance_id, {}).items()
                   if is_live(entry, key[0], self.now, config))

    def config(self, world) -> dict:
        return self.conntrack if self.conntrack is not None else world.conntrack


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


def rules_check(world, inst, direction: str, pkt: NaivePacket, peer) -> tuple:
    """Section 3 alone: (ACCEPT|DROP|REJECT, deciding rule id or 'default')."""
    matching = [r for r in rules_in_canonical_order(world, inst, direction)
                if rule_matches(world, r, inst, pkt, peer)]
    return decide(order_of(world, inst), matching)


def rule_has_log(world, inst, direction: str, rule_id: str) -> bool:
    """True when ``rule_id`` is a rule of the instance's groups (this direction) with ``log: true``."""
    return any(r.id == rule_id and r.log for r in rules_in_canonical_order(world, inst, direction))


# ---------------------------------------------------------------------------------------
# section 4: stateful tracking
# ---------------------------------------------------------------------------------------
CONNTRACK = "conntrack"
CONNTRACK_RELATED = "conntrack-related"
CONNTRACK_FULL = "conntrack-full"
REASONS = (DEFAULT_REASON, CONNTRACK, CONNTRACK_RELATED, CONNTRACK_FULL)

TCP_RST = 0x04
ICMP_ECHO_TYPES = {PROTO_ICMP: (8, 0), PROTO_ICMPV6: (128, 129)}
ICMP_ERROR_TYPES = {PROTO_ICMP: (3, 4, 5, 11, 12), PROTO_ICMPV6: (1, 2, 3, 4)}


def seconds_to_ns(t) -> int:
    return int(round(t * 1e9))


def timeout_ns(proto: int, stream: bool, config: dict) -> int:
    """The timeout of a flow of ``proto`` (udp: the stream timeout once packets passed both ways)."""
    if proto == PROTO_TCP:
        return seconds_to_ns(config["tcp_timeout"])
    if proto == PROTO_UDP:
        return seconds_to_ns(config["udp_stream_timeout"] if stream else config["udp_timeout"])
    if proto in ICMP_PROTOCOLS:
        return seconds_to_ns(config["icmp_timeout"])
    return seconds_to_ns(config["other_timeout"])


def is_live(entry: FlowEntry, proto: int, now: int, config: dict) -> bool:
    """Live iff last + timeout >= now (the boundary is live)."""
    return entry.last + timeout_ns(proto, entry.stream, config) >= now


def addr_key(a):
    """An address as an exact key: (version, value); an IPv4 address never equals an IPv6 one."""
    return (a.version, int(a))


def flow_ports(pkt: NaivePacket) -> tuple:
    """(sport, dport) as the flow key sees them: tcp/udp ports; for an ICMP echo the
    identifier stands for both; 0, 0 for anything else."""
    if pkt.proto in PORT_PROTOCOLS:
        return pkt.sport, pkt.dport
    if pkt.proto in ICMP_PROTOCOLS and pkt.icmp_type in ICMP_ECHO_TYPES[pkt.proto]:
        return pkt.icmp_id, pkt.icmp_id
    return 0, 0


def embedded_ports(pkt: NaivePacket) -> tuple:
    """The quoted header's (sport, dport) as a flow key sees them: the quoted ports for
    tcp/udp, the echo identifier (already in emb_sport/emb_dport) or 0 for icmp/icmpv6,
    0, 0 for any other quoted protocol."""
    if pkt.emb_proto in PORT_PROTOCOLS or pkt.emb_proto in ICMP_PROTOCOLS:
        return pkt.emb_sport, pkt.emb_dport
    return 0, 0


def flow_key(proto, x_addr, x_port, peer_addr, peer_port) -> tuple:
    """(protocol, X's address, X-side port, peer address, peer-side port)."""
    return (proto, addr_key(x_addr), x_port, addr_key(peer_addr), peer_port)


def is_icmp_error(pkt: NaivePacket) -> bool:
    return pkt.proto in ICMP_PROTOCOLS and pkt.icmp_type in ICMP_ERROR_TYPES[pkt.proto]


def track_check(world, state: NaiveState, inst, direction: str, pkt: NaivePacket,
                rules_result: tuple) -> tuple:
    """One stateful check at ``inst`` (the steps of spec section 4): (result, deciding rule).
    ``rules_result`` is what the rules alone say (section 3)."""
    if pkt.frag:                                           # 1. fragments bypass tracking
        return rules_result
    config = state.config(world)
    now = state.now
    table = state.table(inst.id)
    sport, dport = flow_ports(pkt)
    if direction == "egress":
        key = flow_key(pkt.proto, pkt.src, sport, pkt.dst, dport)
    else:
        key = flow_key(pkt.proto, pkt.dst, dport, pkt.src, sport)

    entry = table.get(key)                                 # 2. the packet's own flow
    if entry is not None and is_live(entry, pkt.proto, now, config):
        entry.last = now
        if pkt.proto == PROTO_UDP and direction != entry.direction:
            entry.stream = True
        if pkt.proto == PROTO_TCP and pkt.tcp_flags & TCP_RST:
            del table[key]                                 # the RST ends the flow
        return ACCEPT, CONNTRACK

    if is_icmp_error(pkt) and pkt.emb_valid:               # 3. RELATED, either orientation
        esport, edport = embedded_ports(pkt)
        for x_addr, x_port, p_addr, p_port in ((pkt.emb_src, esport, pkt.emb_dst, edport),
                                               (pkt.emb_dst, edport, pkt.emb_src, esport)):
            related = table.get(flow_key(pkt.emb_proto, x_addr, x_port, p_addr, p_port))
            if related is not None and is_live(related, pkt.emb_proto, now, config):
                return ACCEPT, CONNTRACK_RELATED           # no refresh, no insert

    result, rule = rules_result                            # 4. the rules
    if result != ACCEPT:
        return result, rule
    if state.live_flows(world, inst.id) >= config["capacity"]:
        return DROP, CONNTRACK_FULL
    if pkt.proto == PROTO_TCP and pkt.tcp_flags & TCP_RST:
        table.pop(key, None)                # inserted and removed after the packet: nothing remains
    else:
        table[key] = FlowEntry(last=now, direction=direction)   # replaces an expired entry
    return result, rule


def run_check(world, state: NaiveState, inst, direction: str, pkt: NaivePacket, peer) -> tuple:
    """One check at ``inst``: returns (ACCEPT|DROP|REJECT, deciding rule)."""
    rules_result = rules_check(world, inst, direction, pkt, peer)
    if not state.stateful:
        return rules_result
    return track_check(world, state, inst, direction, pkt, rules_result)


def _record(world, state, index, inst, direction, pkt, result, rule) -> None:
    state.events.append(CheckEvent(
        index, inst.id, direction, result, rule, ts_ns=pkt.ts_ns, wirelen=pkt.wirelen,
        proto=pkt.proto, src=pkt.src, dst=pkt.dst, sport=pkt.sport, dport=pkt.dport,
        account=inst.owner, rule_log=rule_has_log(world, inst, direction, rule)))


def classify_one(world, pkt: NaivePacket, state: Optional[NaiveState] = None,
                 index: int = 0) -> NaiveResult:
    """Section 2: the checks one packet meets, egress first, and its verdict."""
    if state is None:
        state = NaiveState()
    # the tracking clock: the latest timestamp seen so far, every record included
    state.now = pkt.ts_ns if state.now is None else max(state.now, pkt.ts_ns)
    if state.stateful:
        # a terminated (or vanished) instance's table is gone (instance ids are never reused)
        for iid in list(state.tables):
            inst = world.instances.get(iid)
            if inst is None or inst.state != "running":
                del state.tables[iid]
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
        _record(world, state, index, source, "egress", pkt, result, egress_rule)
        if result != ACCEPT:
            return NaiveResult(result, egress_rule, None)       # ingress never happens
    if dest is not None:
        result, ingress_rule = run_check(world, state, dest, "ingress", pkt, peer=pkt.src)
        _record(world, state, index, dest, "ingress", pkt, result, ingress_rule)
        if result != ACCEPT:
            return NaiveResult(result, egress_rule, ingress_rule)
    return NaiveResult(ACCEPT, egress_rule, ingress_rule)


def naive_classify(world, packets: Sequence[NaivePacket],
                   state: Optional[NaiveState] = None) -> list:
    """Classify packets in order against the world as it is (no timeline).  Pass the same
    ``state`` to continue one capture-ordered stream over several calls."""
    if state is None:
        state = NaiveState()
    return [classify_one(world, p, state, i) for i, p in enumerate(packets)]


# ---------------------------------------------------------------------------------------
# section 6: the timeline
# ---------------------------------------------------------------------------------------
def naive_replay(world, packets: Sequence[NaivePacket], state: Optional[NaiveState] = None,
                 live: Optional[object] = None) -> list:
    """Replay packets against a *copy* of the world, applying ``world.timeline`` events as
    time passes: an event at time T applies before the first packet whose ts_ns >= T
    (events sorted by time, ties in file order).  The given world is not changed; pass
    ``live`` (an empty list) to get the copy back (``live[0]``, the world after the replay)."""
    if state is None:
        state = NaiveState()
    copy_ = world.copy()
    if live is not None:
        live.append(copy_)
    events = sorted(world.pending_events(), key=lambda ev: (ev.at_ns, ev.index))
    pending = 0
    results = []
    for i, pkt in enumerate(packets):
        while pending < len(events) and events[pending].at_ns <= pkt.ts_ns:
            ev = events[pending]
            copy_.apply_event(ev)
            if ev.kind == "terminate":
                state.tables.pop(ev.args["instance"], None)     # the table is discarded
            pending += 1
        results.append(classify_one(copy_, pkt, state, i))
    return results


# ---------------------------------------------------------------------------------------
# section 7: flow logs and rule counters
# ---------------------------------------------------------------------------------------
FLOW_RECORD_FIELDS = ("window_start", "account", "instance", "direction", "protocol", "srcaddr",
                      "dstaddr", "srcport", "dstport", "packets", "bytes", "start", "end",
                      "action", "rule", "log_status")


def is_logged(event: CheckEvent, logging: dict) -> bool:
    if event.action != ACCEPT and logging["drops"]:
        return True
    if event.action == ACCEPT and logging["accepts"]:
        return True
    return event.rule_log


def naive_flow_log(world, events: Sequence[CheckEvent], logging: Optional[dict] = None) -> list:
    """The flow records of the logged events, in output order, as dicts with the fields of
    ``FLOW_RECORD_FIELDS`` (addresses as str; None for a SKIPDATA record's missing values)."""
    if logging is None:
        logging = world.logging
    interval = logging["aggregation_interval"]
    interval_ns = int(round(interval * 1e9))
    max_records = logging["max_records"]
    records = {}            # key -> dict (with '_seq', the sequence number of its first event)
    ok_records = 0
    seq = 0
    for ev in events:
        if not is_logged(ev, logging):
            continue
        window = ev.ts_ns // interval_ns
        if ev.proto in PORT_PROTOCOLS:
            sport, dport = ev.sport, ev.dport
        else:
            sport, dport = 0, 0
        key = ("OK", window, ev.instance, ev.direction, ev.proto, addr_key(ev.src),
               addr_key(ev.dst), sport, dport, ev.action, ev.rule)
        if key not in records:
            if ok_records >= max_records:
                key = ("SKIPDATA", window, ev.instance)
            else:
                ok_records += 1
        if key not in records:
            ok = key[0] == "OK"
            records[key] = {
                "window_start": window * interval, "account": ev.account,
                "instance": ev.instance,
                "direction": ev.direction if ok else None,
                "protocol": ev.proto if ok else None,
                "srcaddr": str(ev.src) if ok else None,
                "dstaddr": str(ev.dst) if ok else None,
                "srcport": sport if ok else None, "dstport": dport if ok else None,
                "packets": 0, "bytes": 0, "start": None, "end": None,
                "action": ev.action if ok else None, "rule": ev.rule if ok else None,
                "log_status": "OK" if ok else "SKIPDATA",
                "_seq": seq, "_window": window, "_min": ev.ts_ns, "_max": ev.ts_ns}
        rec = records[key]
        rec["packets"] += 1
        rec["bytes"] += ev.wirelen
        rec["_min"] = min(rec["_min"], ev.ts_ns)
        rec["_max"] = max(rec["_max"], ev.ts_ns)
        seq += 1
    out = []
    for rec in sorted(records.values(), key=lambda r: (r["_window"], r["_seq"])):
        rec["start"] = rec["_min"] // 10**9
        rec["end"] = rec["_max"] // 10**9
        if isinstance(rec["window_start"], float) and rec["window_start"].is_integer():
            rec["window_start"] = int(rec["window_start"])
        out.append({k: rec[k] for k in FLOW_RECORD_FIELDS})
    return out


def naive_skipped_packets(world, events: Sequence[CheckEvent], logging: Optional[dict] = None) -> int:
    """Packets (events) counted in SKIPDATA records."""
    return sum(r["packets"] for r in naive_flow_log(world, events, logging)
               if r["log_status"] == "SKIPDATA")


def naive_aws_lines(records: Sequence[dict]) -> list:
    """VPC Flow Logs v2 default lines (no trailing newline); DROP is written REJECT."""
    lines = []
    for r in records:
        if r["log_status"] == "SKIPDATA":
            lines.append(f"2 {r['account']} {r['instance']} - - - - - {r['packets']} "
                         f"{r['bytes']} {r['start']} {r['end']} - SKIPDATA")
            continue
        action = "ACCEPT" if r["action"] == ACCEPT else "REJECT"
        lines.append(f"2 {r['account']} {r['instance']} {r['srcaddr']} {r['dstaddr']} "
                     f"{r['srcport']} {r['dstport']} {r['protocol']} {r['packets']} "
                     f"{r['bytes']} {r['start']} {r['end']} {action} {r['log_status']}")
    return lines


def naive_jsonl_lines(records: Sequence[dict]) -> list:
    import json
    return [json.dumps({k: r[k] for k in FLOW_RECORD_FIELDS}, separators=(",", ":"))
            for r in records]


def naive_rule_counters(world, events: Sequence[CheckEvent]) -> dict:
    """name -> (packets, bytes) over every event (logged or not): every rule id of the
    world as it is now and the four reasons, zeros included.  A rule that decided events
    and is gone from the world (revoked) is reported too (its counts are not lost)."""
    counts = {}
    for g in world.groups.values():
        for r in list(g.ingress) + list(g.egress):
            counts[r.id] = (0, 0)
    for reason in REASONS:
        counts[reason] = (0, 0)
    for ev in events:
        p, b = counts.get(ev.rule, (0, 0))
        counts[ev.rule] = (p + 1, b + ev.wirelen)
    return counts


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
