"""The world: security groups, rules, instances (spec section 1), and their mutations (section 6).

This module holds the *mutable* model.  Rules are immutable values; groups and instances are
mutated only through ``World`` methods, which validate first and change nothing on error.
Every successful mutation bumps ``World.revision`` and appends a ``Change`` to the change
log, which compiled engines read to update their tables incrementally.
"""
from __future__ import annotations

import bisect
import copy
import ipaddress
import threading
from dataclasses import dataclass, field, replace
from typing import Optional, Union

from ..errors import Problem, WorldError

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

PROTO_ALL = -1          # protocol "all" / "-1"
ANY = -1                # icmp_type / icmp_code wildcard
PORT_PROTOCOLS = (6, 17)        # protocols whose rules carry a port range
ICMP_PROTOCOLS = (1, 58)        # protocols whose rules carry ICMP type/code
ACTIONS = ("allow", "deny", "reject")
ORDERS = ("allow,deny", "deny,allow", "priority")
STATES = ("running", "stopped", "terminated")
DIRECTIONS = ("ingress", "egress")
DEFAULT_OWNER = "000000000000"
DEFAULT_PRIORITY = 1000
MAX_GROUPS_PER_INSTANCE = 16
# Deciding-rule names that are not rule ids; a rule may not use them as its id.
REASONS = ("default", "conntrack", "conntrack-related", "conntrack-full")


@dataclass(frozen=True)
class Rule:
    """One rule of a group's ingress or egress list.

    ``protocol`` is -1 for all, else 0..255.  ``port_lo``/``port_hi`` are the destination
    port range (tcp/udp; 0-65535 otherwise).  ``icmp_type``/``icmp_code`` are -1 for any
    (icmp/icmpv6 only).  Exactly one of ``cidr`` and ``group`` is set; ``group`` is the
    resolved id of the referenced group and ``group_ref`` the text the file used.
    """
    id: str
    protocol: int
    port_lo: int = 0
    port_hi: int = 65535
    icmp_type: int = ANY
    icmp_code: int = ANY
    cidr: Optional[Network] = None
    group: Optional[str] = None
    action: str = "allow"
    priority: int = DEFAULT_PRIORITY
    log: bool = False
    description: Optional[str] = None
    group_ref: Optional[str] = None
    # True when the rule's id was given in the file/API (saved back), False when defaulted
    explicit_id: bool = False

    @property
    def uses_ports(self) -> bool:
        return self.protocol in PORT_PROTOCOLS

    @property
    def uses_icmp(self) -> bool:
        return self.protocol in ICMP_PROTOCOLS

    def same_match(self, other: "Rule") -> bool:
        """True when both rules match and decide the same way (ids, logs, notes aside)."""
        return (self.protocol, self.port_lo, self.port_hi, self.icmp_type, self.icmp_code,
                self.cidr, self.group, self.action, self.priority) == (
                other.protocol, other.port_lo, other.port_hi, other.icmp_type, other.icmp_code,
                other.cidr, other.group, other.action, other.priority)


@dataclass
class SecurityGroup:
    id: str
    name: str
    owner: str = DEFAULT_OWNER
    region: str = ""
    description: Optional[str] = None
    tags: dict = field(default_factory=dict)
    ingress: list = field(default_factory=list)     # list[Rule], canonical (file) order
    egress: list = field(default_factory=list)      # list[Rule]
    # next n for default rule ids <group-id>:in:<n> / :eg:<n> (never reused)
    next_in: int = 0
    next_eg: int = 0
    # False when the file omitted `egress` (the two default egress rules were added)
    egress_given: bool = True

    def rules(self, direction: str) -> list:
        return self.ingress if direction == "ingress" else self.egress


@dataclass
class Instance:
    id: str
    private_ip: Optional[ipaddress.IPv4Address] = None
    private_ipv6: Optional[ipaddress.IPv6Address] = None
    public_ip: Optional[Address] = None
    owner: str = DEFAULT_OWNER
    region: str = ""
    groups: list = field(default_factory=list)      # list[str]: resolved group ids, in order
    order: Optional[str] = None                     # per-instance override, None = world order
    tags: dict = field(default_factory=dict)
    state: str = "running"

    @property
    def running(self) -> bool:
        return self.state == "running"

    def addresses(self) -> list:
        """The addresses that belong to this instance while it runs (spec section 2)."""
        return [a for a in (self.private_ip, self.private_ipv6, self.public_ip) if a is not None]

    def private_addresses(self) -> list:
        return [a for a in (self.private_ip, self.private_ipv6) if a is not None]


@dataclass(frozen=True)
class Change:
    """One entry of the world's change log.

    kind: 'rules' (group's rule lists changed), 'attach', 'detach', 'launch', 'terminate'.
    """
    revision: int
    kind: str
    group: Optional[str] = None
    instance: Optional[str] = None


@dataclass(frozen=True)
class TimelineEvent:
    """One change of the world's timeline (spec sections 1 and 6).

    ``at_ns`` is the event time in integer nanoseconds since the epoch, ``kind`` one of
    ``EVENT_KINDS``, ``args`` the event's mapping as written in the file (for ``launch`` the
    instance mapping itself), ``index`` its position in the file's ``timeline`` list (-1 for
    an event made in code).  ``args`` is shared by a world's copies: treat it as read-only.
    """
    at_ns: int
    kind: str
    args: dict
    index: int = -1


# ---------------------------------------------------------------------------------------
# World-level defaults (spec section 1)
DEFAULT_REGION = "us-east-1"     # the spec's example region; a file may name its own
DEFAULT_ORDER = "allow,deny"
DEFAULT_LIMITS = {"groups_per_instance": 5}
DEFAULT_CONNTRACK = {"tcp_timeout": 432000, "udp_timeout": 30, "udp_stream_timeout": 180,
                     "icmp_timeout": 30, "other_timeout": 600, "capacity": 1000000}
DEFAULT_LOGGING = {"drops": True, "accepts": False, "aggregation_interval": 60,
                   "max_records": 1000000}
EVENT_KINDS = ("authorize", "revoke", "attach", "detach", "launch", "terminate")
DIRECTION_TAGS = {"ingress": "in", "egress": "eg"}      # the middle part of default rule ids
PROTOCOL_NUMBERS = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58, "all": PROTO_ALL}
PROTOCOL_NAMES = {n: name for name, n in PROTOCOL_NUMBERS.items()}


def default_rule_id(group_id: str, direction: str, n: int) -> str:
    """``<group-id>:in:<n>`` / ``<group-id>:eg:<n>``: the id of a rule given none."""
    return f"{group_id}:{DIRECTION_TAGS[direction]}:{n}"


def default_egress_rules(group_id: str) -> list:
    """The egress list of a group whose file omits ``egress``: allow all to 0.0.0.0/0 and ::/0."""
    return [Rule(id=default_rule_id(group_id, "egress", n), protocol=PROTO_ALL,
                 cidr=ipaddress.ip_network(net))
            for n, net in enumerate(("0.0.0.0/0", "::/0"))]


# validate and files build the value classes above and are used by World below; importing
# them here (not at the top) lets them import this module without a cycle.
from . import files as _files        # noqa: E402
from . import validate as _v         # noqa: E402


class World:
    """The state of one cloud: groups, instances, settings and a timeline (spec section 1).

    Build one with ``World.from_dict`` or ``load_world``; change it only through the
    mutation methods (``authorize``, ``revoke``, ``attach``, ``detach``, ``launch``,
    ``terminate``, ``apply_event``).  Each mutation holds ``lock``, validates its arguments
    against the current state first and raises ``WorldError`` changing nothing when they are
    invalid; on success it bumps ``revision`` and logs a ``Change``.  Readers (engines) take
    ``lock`` while they read.

    Decisions where the spec is silent:

    * ``revoke`` by rule removes the first rule of that direction that ``same_match``-es it
      (a rule dict that also gives an ``id`` must match that id too).  Duplicate rules are
      allowed: with priorities and orders they are not redundant the way they are in EC2.
    * ``terminate`` of an already terminated instance, and ``attach``/``detach`` on one, are
      errors (a no-op mutation would still log a change).  Stopped instances may be attached
      to, detached from and terminated.  An instance may hold no group at all.
    * ``launch`` ids must be new among *all* instances, terminated ones included (EC2 never
      reuses an instance id); a ``state`` other than running is refused.
    * Group arguments of ``authorize``/``revoke`` resolve like rule references, with names
      looked up in the world region among all owners (ambiguous if two owners use the name).
    * The timeline is the world's *pending* changes.  ``apply_event`` marks a timeline event
      applied; ``to_dict``/``save`` write only the pending ones (the applied ones are in the
      state), so a world saved in the middle of a replay loads back to the same world.  A
      direct mutation that would make a pending event fail is refused (such a world could
      not be loaded again); ``timeline`` itself keeps every event, in time order.
    """

    def __init__(self, *, version: int = 1, region: str = DEFAULT_REGION,
                 order: str = DEFAULT_ORDER, limits: dict | None = None,
                 conntrack: dict | None = None, logging: dict | None = None,
                 groups=None, instances=None, timeline=None):
        self.version = version
        self.region = region
        self.order = order
        self.limits = {**DEFAULT_LIMITS, **(limits or {})}
        self.conntrack = {**DEFAULT_CONNTRACK, **(conntrack or {})}
        self.logging = {**DEFAULT_LOGGING, **(logging or {})}
        self.groups: dict[str, SecurityGroup] = _by_id(groups)
        self.instances: dict[str, Instance] = _by_id(instances)
        self.timeline: list[TimelineEvent] = sorted(timeline or (),
                                                    key=lambda e: (e.at_ns, e.index))
        self.revision = 0
        self.lock = threading.RLock()
        self._changes: list[Change] = []
        self._applied: set[int] = set()     # indexes of timeline events applied to the state
        self._events_by_index: Optional[tuple] = None    # (list identity, {index: event})
        self._reindex()

    def _reindex(self) -> None:
        """Rebuild the lookup indexes the mutations keep up to date: groups by id and name,
        rule ids (world-wide unique) and the addresses of running instances."""
        self._index = _v.GroupIndex(self.groups.values())
        self._rule_ids = {r.id: g.id for g in self.groups.values() for r in g.ingress + g.egress}
        self._addresses = {a: i.id for i in self.instances.values() if i.running
                           for a in i.addresses()}

    # -- construction, files, comparison -------------------------------------------------

    @classmethod
    def from_dict(cls, d: dict, source: str | None = None) -> "World":
        """A world from a world file's mapping; raises ``WorldError`` listing every problem."""
        return _v.build_world(cls, d, source)

    def to_dict(self) -> dict:
        """The world in file syntax (plain dicts/lists/str/int/float/bool)."""
        with self.lock:
            return _files.world_to_dict(self)

    def save(self, path) -> None:
        """Write the world file atomically (``.json`` -> JSON, else YAML)."""
        _files.save_world(self, path)

    def __eq__(self, other):
        if not isinstance(other, World):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None     # mutable

    def __repr__(self) -> str:
        return (f"<World region={self.region} groups={len(self.groups)} "
                f"instances={len(self.instances)} revision={self.revision}>")

    def copy(self) -> "World":
        """A deep copy with a fresh lock, the same revision and change log."""
        with self.lock:
            w = World(version=self.version, region=self.region, order=self.order,
                      limits=self.limits, conntrack=self.conntrack, logging=self.logging,
                      groups=[_copy_group(g) for g in self.groups.values()],
                      instances=[_copy_instance(i) for i in self.instances.values()],
                      timeline=self.timeline)
            w.revision = self.revision
            w._changes = list(self._changes)
            w._applied = set(self._applied)
            return w

    # -- queries ------------------------------------------------------------------------

    def changes_since(self, revision: int) -> list:
        """The changes made after ``revision``, oldest first."""
        with self.lock:
            start = bisect.bisect_right(self._changes, revision, key=lambda c: c.revision)
            return self._changes[start:]

    def resolve_group(self, ref: str, owner: str, region: str, *, path: str = "group") -> str:
        """Group ``ref`` (an id, ``owner/id`` or a name within ``owner`` + ``region``) -> its id.

        Ids resolve world-wide; the caller checks regions where they matter.
        """
        probs = _v.Problems()
        gid = _v.resolve_ref(self._index, ref, owner, region, path, probs)
        probs.raise_if_any()
        return gid

    def instance_order(self, inst: Instance) -> str:
        """The combining order that applies at ``inst``."""
        return inst.order or self.order

    def members(self, group_id: str) -> list:
        """The running instances holding group ``group_id``, in instance order."""
        with self.lock:
            return [i for i in self.instances.values() if i.running and group_id in i.groups]

    # -- mutations (spec section 6) -----------------------------------------------------

    def authorize(self, group: str, direction: str, rule) -> Rule:
        """Append ``rule`` (file-syntax dict or ``Rule``) to a group's ``direction`` list.
        Its default id is ``<group-id>:in:<n>`` / ``:eg:<n>``.  Change kind 'rules'."""
        return self._checked("authorize", lambda w: w._authorize(group, direction, rule))

    def revoke(self, group: str, direction: str | None = None, rule_id: str | None = None,
               rule=None) -> Rule:
        """Remove a rule of a group: by ``rule_id`` (``direction`` optional) or the first rule
        of ``direction`` that ``same_match``-es ``rule``.  Returns it.  Change kind 'rules'."""
        return self._checked("revoke", lambda w: w._revoke(group, direction, rule_id, rule))

    def attach(self, instance: str, group: str) -> None:
        """Append ``group`` to the end of the instance's ``groups``.  Change kind 'attach'."""
        return self._checked("attach", lambda w: w._attach(instance, group))

    def detach(self, instance: str, group: str) -> None:
        """Remove ``group`` from the instance's ``groups``.  Change kind 'detach'."""
        return self._checked("detach", lambda w: w._detach(instance, group))

    def launch(self, instance) -> Instance:
        """Add a running instance (file-syntax dict or ``Instance``).  Change kind 'launch'."""
        return self._checked("launch", lambda w: w._launch(instance))

    def terminate(self, instance: str) -> Instance:
        """Set the instance's state to terminated, releasing its addresses.  Change kind
        'terminate'."""
        return self._checked("terminate", lambda w: w._terminate(instance))

    def apply_event(self, event: TimelineEvent) -> None:
        """Apply a timeline event through the mutation of its kind.

        Problem paths are those of the file: ``timeline[<index>].<kind>.<arg>...``.  An event
        of ``self.timeline`` is then *applied*: it is no longer pending, so ``to_dict``/``save``
        leave it out (its effect is in the state now) and applying it again is an error.
        """
        prefix = f"timeline[{event.index}]" if event.index >= 0 else "timeline"
        with self.lock:
            own = self._timeline_event(event)
            probs = _v.Problems()
            if own and event.index in self._applied:
                probs.add(prefix, "this timeline event was already applied")
            _v.check_event_args(event.kind, event.args, event.kind, probs)

            def mutate(world):
                if event.kind == "launch":
                    return world._launch(event.args)
                return getattr(world, f"_{event.kind}")(**event.args)
            try:
                probs.raise_if_any()
                if own:
                    mutate(self)        # the timeline's own event, applied in its turn
                else:
                    # an event made in code is a mutation like any other: refused if it
                    # would make a pending event of the timeline fail
                    self._checked(event.kind, mutate)
            except WorldError as e:
                raise WorldError([Problem(_v.sub(prefix, p.path), p.message)
                                  for p in e.problems]) from None
            if own:
                self._applied.add(event.index)

    def pending_events(self) -> list:
        """The timeline events not applied yet, in time order."""
        with self.lock:
            return [e for e in self.timeline if e.index not in self._applied]

    def _timeline_event(self, event: TimelineEvent) -> bool:
        """True when ``event`` is one of ``self.timeline`` (applying it is then recorded)."""
        if event.index < 0:
            return False
        key = (id(self.timeline), len(self.timeline))     # rebuilt if the list is replaced
        if self._events_by_index is None or self._events_by_index[0] != key:
            self._events_by_index = (key, {e.index: e for e in self.timeline})
        return self._events_by_index[1].get(event.index) == event

    def _checked(self, kind: str, mutate):
        """Run ``mutate(world)`` on this world under the lock.

        While timeline events are pending, the mutation is first tried on a copy and the
        pending events applied after it: a mutation that would make one of them fail makes
        the world invalid (its file would no longer load), so it is refused like any other
        invalid mutation, changing nothing.
        """
        with self.lock:
            pending = self.pending_events()
            if pending:
                sim = self.copy()
                mutate(sim)             # raises, changing nothing, if invalid by itself
                probs = _v.Problems()
                _v.simulate_timeline(sim, pending, probs, copy_first=False)
                if probs:
                    raise WorldError([Problem(kind, f"refused: the timeline would no longer "
                                                    f"apply: {p}") for p in probs.items])
            return mutate(self)

    # -- the mutations themselves: check everything, then change (lock held by caller)

    def _authorize(self, group: str, direction: str, rule) -> Rule:
        """Append ``rule`` (file-syntax dict or ``Rule``) to a group's ``direction`` list."""
        probs = _v.Problems()
        sg = self._group_arg(group, "authorize.group", probs)
        direction = _v.want_choice(direction, "authorize.direction", probs, DIRECTIONS)
        new = None
        if sg is not None and direction is not None:
            new = self._new_rule(sg, direction, rule, "authorize.rule", probs)
        probs.raise_if_any()
        rule, counter = new
        sg.rules(direction).append(rule)
        _set_counter(sg, direction, counter)
        self._rule_ids[rule.id] = sg.id
        self._commit("rules", group=sg.id)
        return rule

    def _revoke(self, group: str, direction: str | None = None, rule_id: str | None = None,
                rule=None) -> Rule:
        """Remove a rule of a group: by ``rule_id`` (``direction`` optional) or by a rule
        that ``same_match``-es ``rule`` in ``direction``.  Returns the removed rule."""
        probs = _v.Problems()
        sg = self._group_arg(group, "revoke.group", probs)
        if direction is not None:
            direction = _v.want_choice(direction, "revoke.direction", probs, DIRECTIONS)
        if (rule_id is None) == (rule is None):
            probs.add("revoke", 'give exactly one of "rule_id" and "rule"')
        elif rule is not None and direction is None:
            probs.add("revoke.direction", "revoking by rule needs a direction")
        found = None
        if sg is not None and not probs:
            if rule_id is not None:
                found = self._find_rule_id(sg, direction, rule_id, probs)
            else:
                found = self._find_rule_match(sg, direction, rule, probs)
        probs.raise_if_any()
        where, pos = found
        removed = sg.rules(where).pop(pos)
        del self._rule_ids[removed.id]
        self._commit("rules", group=sg.id)
        return removed

    def _attach(self, instance: str, group: str) -> None:
        """Append ``group`` to the end of the instance's ``groups`` list."""
        probs = _v.Problems()
        inst = self._instance_arg(instance, "attach.instance", probs)
        gid = None
        if inst is not None:
            gid = _v.resolve_instance_group(self._index, group, inst, "attach.group", probs)
        if gid is not None:
            limit = self.limits["groups_per_instance"]
            if gid in inst.groups:
                probs.add("attach.group", f"{_v.quote(group)}: group {gid} is already "
                                          f"attached to instance {inst.id}")
            elif len(inst.groups) >= limit:
                probs.add("attach.group", f"{_v.quote(group)}: instance {inst.id} already "
                                          f"holds {len(inst.groups)} groups, the limit "
                                          f"(limits.groups_per_instance = {limit})")
        probs.raise_if_any()
        inst.groups.append(gid)
        self._commit("attach", group=gid, instance=inst.id)

    def _detach(self, instance: str, group: str) -> None:
        """Remove ``group`` from the instance's ``groups`` list."""
        probs = _v.Problems()
        inst = self._instance_arg(instance, "detach.instance", probs)
        gid = None
        if inst is not None:
            gid = _v.resolve_ref(self._index, group, inst.owner, inst.region,
                                 "detach.group", probs)
        if gid is not None and gid not in inst.groups:
            probs.add("detach.group", f"{_v.quote(group)}: group {gid} is not attached "
                                      f"to instance {inst.id}")
        probs.raise_if_any()
        inst.groups.remove(gid)
        self._commit("detach", group=gid, instance=inst.id)

    def _launch(self, instance) -> Instance:
        """Add a running instance (file-syntax dict or ``Instance``)."""
        probs = _v.Problems()
        if isinstance(instance, Instance):
            instance = _files.instance_to_dict(instance, self.region)
        inst = _v.parse_instance(instance, "launch", probs, world_region=self.region,
                                 limit=self.limits["groups_per_instance"], index=self._index)
        if inst is not None:
            if inst.state != "running":
                probs.add("launch.state", f"{_v.quote(inst.state)}: launch makes a running "
                                          "instance")
            if inst.id in self.instances:
                probs.add("launch.id", f"duplicate instance id {_v.quote(inst.id)} (instance "
                                       "ids are never reused, even after termination)")
            _v.check_addresses(inst, "launch", probs, self._addresses, register=False)
        probs.raise_if_any()
        self.instances[inst.id] = inst
        self._addresses.update((a, inst.id) for a in inst.addresses())
        self._commit("launch", instance=inst.id)
        return inst

    def _terminate(self, instance: str) -> Instance:
        """Set the instance's state to terminated (its addresses are released)."""
        probs = _v.Problems()
        inst = self._instance_arg(instance, "terminate.instance", probs)
        probs.raise_if_any()
        for a in inst.addresses():
            if self._addresses.get(a) == inst.id:
                del self._addresses[a]
        inst.state = "terminated"
        self._commit("terminate", instance=inst.id)
        return inst

    # -- helpers of the mutations -------------------------------------------------------

    def _commit(self, kind: str, group: str | None = None, instance: str | None = None) -> None:
        self.revision += 1
        self._changes.append(Change(self.revision, kind, group=group, instance=instance))

    def _group_arg(self, ref, path: str, probs) -> Optional[SecurityGroup]:
        """The group a mutation names (owner: any, region: the world region for names)."""
        gid = _v.resolve_ref(self._index, ref, None, self.region, path, probs)
        return None if gid is None else self.groups[gid]

    def _instance_arg(self, ref, path: str, probs) -> Optional[Instance]:
        """The (not terminated) instance a mutation names by id."""
        iid = _v.want_str(ref, path, probs)
        if iid is None:
            return None
        inst = self.instances.get(iid)
        if inst is None:
            probs.add(path, f"{_v.quote(iid)} is not an instance id"
                            f"{_v.did_you_mean(iid, self.instances)}")
        elif inst.state == "terminated":
            probs.add(path, f"{_v.quote(iid)}: instance is terminated")
            return None
        return inst

    def _new_rule(self, sg: SecurityGroup, direction: str, rule, path: str, probs):
        """(the rule to append, the next id counter) or None with problems added."""
        if isinstance(rule, Rule):
            rule = _files.rule_to_dict(rule, with_id=rule.explicit_id)
        draft = _v.parse_rule(rule, path, probs, _v.RuleScope.of(sg, self._index))
        if draft is None:
            return None
        assigned = _v.assign_rule_id(draft.given_id, sg.id, direction, _counter(sg, direction),
                                     _v.sub(path, "id"), probs, self._rule_owner, self._index)
        if assigned is None:
            return None
        rule_id, explicit, counter = assigned
        return draft.build(rule_id, explicit), counter

    def _rule_owner(self, rule_id: str) -> Optional[str]:
        """Where rule id ``rule_id`` is in use ('group <id>'), or None."""
        gid = self._rule_ids.get(rule_id)
        return None if gid is None else f"group {gid}"

    def _find_rule_id(self, sg: SecurityGroup, direction, rule_id, probs):
        """(direction, position) of rule ``rule_id`` in ``sg``, or None with a problem."""
        rid = _v.want_str(rule_id, "revoke.rule_id", probs)
        if rid is None:
            return None
        for d in (direction,) if direction else DIRECTIONS:
            for pos, r in enumerate(sg.rules(d)):
                if r.id == rid:
                    return d, pos
        owner = self._rule_ids.get(rid)
        if owner is not None and owner != sg.id:
            msg = f"{_v.quote(rid)} is a rule of group {owner}, not of {sg.id}"
        elif owner is not None:
            msg = f"{_v.quote(rid)} is not a {direction} rule of group {sg.id}"
        else:
            ids = [r.id for d in DIRECTIONS for r in sg.rules(d)]
            msg = f"{_v.quote(rid)} is not a rule id of group {sg.id}{_v.did_you_mean(rid, ids)}"
        probs.add("revoke.rule_id", msg)
        return None

    def _find_rule_match(self, sg: SecurityGroup, direction: str, rule, probs):
        """(direction, position) of the first rule of ``sg`` matching ``rule``, or None."""
        if isinstance(rule, Rule):
            rule = _files.rule_to_dict(rule, with_id=rule.explicit_id)
        draft = _v.parse_rule(rule, "revoke.rule", probs, _v.RuleScope.of(sg, self._index))
        if draft is None:
            return None
        probe = draft.build(draft.given_id or "", draft.given_id is not None)
        for pos, r in enumerate(sg.rules(direction)):
            if r.same_match(probe) and (draft.given_id is None or r.id == draft.given_id):
                return direction, pos
        probs.add("revoke.rule", f"no {direction} rule of group {sg.id} matches {_v.quote(rule)}")
        return None


def _by_id(items) -> dict:
    """A dict by id from a dict or a sequence of objects with ``id``."""
    if items is None:
        return {}
    if isinstance(items, dict):
        return dict(items)
    return {x.id: x for x in items}


def _counter(sg: SecurityGroup, direction: str) -> int:
    return sg.next_in if direction == "ingress" else sg.next_eg


def _set_counter(sg: SecurityGroup, direction: str, n: int) -> None:
    if direction == "ingress":
        sg.next_in = n
    else:
        sg.next_eg = n


def _copy_group(g: SecurityGroup) -> SecurityGroup:
    # rules are frozen values and can be shared; the lists and tags are the group's own
    return replace(g, tags=copy.deepcopy(g.tags), ingress=list(g.ingress), egress=list(g.egress))


def _copy_instance(i: Instance) -> Instance:
    return replace(i, groups=list(i.groups), tags=copy.deepcopy(i.tags))
