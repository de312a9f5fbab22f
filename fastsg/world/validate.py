"""Parsing and validation of world data (spec section 1).

Everything that turns plain data (a world file's mapping, or the arguments of a mutation)
into model objects lives here.  Every parser appends each problem it finds to a
``Problems`` collector and returns ``None`` for a part it could not build, so callers
report every problem at once and build nothing when there is any.

A problem is ``Problem(path, message)``: ``path`` is where the value sits in the file
(``security_groups[2].ingress[4].cidr``) or in a mutation's arguments
(``authorize.rule.ports``), and ``message`` quotes the bad value JSON-style.

Decisions where the spec is silent (documented here, tested in tests/test_world_*.py):

* CIDRs need a prefix length (``10.0.0.5`` is refused with a did-you-mean ``/32``), as the
  EC2 API does; zone indexes (``%eth0``) are refused in addresses and networks.
* A CIDR may give a netmask (``10.0.0.0/255.0.0.0``); it is written back as a prefix.
* ``protocol`` names are case-insensitive and may be written as numbers or digit strings.
* ``owner`` may be written as a YAML integer (``owner: 111122223333``); it is read as the
  12-digit account id (zero-padded).
* Rule ids of the form ``<group-id>:in:<n>`` / ``<group-id>:eg:<n>`` are the default ids.
  Written on a rule of that group's list, such an id *pins* the default counter (the rule
  keeps that id, later rules count on from n+1): this is how saved files keep default ids
  stable after revocations.  The form is refused elsewhere (another existing group's list,
  or an n already passed), since it would collide with a default id.
* ``x-next-rule-ids: {ingress: n, egress: m}`` on a group restores the counters when they
  are ahead of the rules written (after revoking the last rules); it is written by ``save``.
* Tag keys are strings; tag values are strings, numbers (stored as their text) or null ("").
* ``at`` (timeline) is seconds since the epoch (int, float, or a numeric string, which keeps
  nanoseconds exactly) or an ISO-8601 date-time (without a zone it is UTC).
"""
from __future__ import annotations

import copy
import datetime as _dt
import difflib
import functools
import ipaddress
import json
import math
import re
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

from ..errors import Problem, WorldError
from .model import (ACTIONS, DEFAULT_CONNTRACK, DEFAULT_LIMITS, DEFAULT_LOGGING,
                    DEFAULT_ORDER, DEFAULT_OWNER, DEFAULT_PRIORITY, DEFAULT_REGION,
                    DIRECTION_TAGS, DIRECTIONS, EVENT_KINDS, ICMP_PROTOCOLS,
                    MAX_GROUPS_PER_INSTANCE, ORDERS, PORT_PROTOCOLS, PROTO_ALL, PROTOCOL_NAMES,
                    PROTOCOL_NUMBERS, REASONS, STATES, Instance, Rule, SecurityGroup,
                    TimelineEvent, default_egress_rules, default_rule_id)

MISSING = object()      # a key absent from a mapping (None is a value: YAML null)

TOP_KEYS = ("version", "region", "order", "limits", "conntrack", "logging", "security_groups",
            "instances", "timeline")
NEXT_IDS_KEY = "x-next-rule-ids"
GROUP_KEYS = ("id", "name", "owner", "region", "description", "tags", "ingress", "egress",
              NEXT_IDS_KEY)
RULE_KEYS = ("id", "protocol", "ports", "icmp_type", "icmp_code", "cidr", "group", "action",
             "priority", "log", "description")
INSTANCE_KEYS = ("id", "private_ip", "private_ipv6", "public_ip", "owner", "region", "groups",
                 "order", "tags", "state")
# (required, optional) argument keys of each timeline event kind; launch takes an instance
EVENT_ARGS = {"authorize": (("group", "direction", "rule"), ()),
              "revoke": (("group",), ("direction", "rule_id", "rule")),
              "attach": (("instance", "group"), ()),
              "detach": (("instance", "group"), ()),
              "terminate": (("instance",), ())}

MAX_SECONDS = 2**31 - 1          # timeouts, intervals: 68 years is plenty
MAX_COUNT = 2**40                # capacities and record limits: far beyond any memory
SECTIONS = {  # name -> {key: (lo, hi) for ints, bool for flags}; defaults in model.py
    "limits": (DEFAULT_LIMITS, {"groups_per_instance": (1, MAX_GROUPS_PER_INSTANCE)}),
    "conntrack": (DEFAULT_CONNTRACK, {"tcp_timeout": (0, MAX_SECONDS),
                                      "udp_timeout": (0, MAX_SECONDS),
                                      "udp_stream_timeout": (0, MAX_SECONDS),
                                      "icmp_timeout": (0, MAX_SECONDS),
                                      "other_timeout": (0, MAX_SECONDS),
                                      "capacity": (1, MAX_COUNT)}),
    "logging": (DEFAULT_LOGGING, {"drops": bool, "accepts": bool,
                                  "aggregation_interval": (1, MAX_SECONDS),
                                  "max_records": (0, MAX_COUNT)}),
}

_DEFAULT_ID_RE = re.compile(r"^(?P<gid>.+):(?P<tag>in|eg):(?P<n>0|[1-9][0-9]*)$")
_PORTS_RE = re.compile(r"^\s*([0-9]+)\s*(?:-\s*([0-9]+)\s*)?$")
_NUMBER_RE = re.compile(r"^\s*[0-9]+(\.[0-9]*)?\s*$")
_ISO_RE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})"
                     r"(?:[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,9}))?)?)?"
                     r"\s*(Z|z|[+-]\d{2}(?::?\d{2})?)?$")
NS = 10**9


# ---------------------------------------------------------------------------------------
# problems, paths, messages

class Problems:
    """Collects the problems of one load or one mutation."""

    def __init__(self):
        self.items: list[Problem] = []

    def add(self, path: str, message: str) -> None:
        self.items.append(Problem(path, message))

    def extend(self, problems: Iterable[Problem]) -> None:
        self.items.extend(problems)

    def __len__(self) -> int:
        return len(self.items)

    def raise_if_any(self, source: str | None = None) -> None:
        if self.items:
            raise WorldError(self.items, source)


def quote(value) -> str:
    """The value as messages quote it: JSON-style (strings in double quotes, null, ...)."""
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return repr(value)


def sub(path: str, key) -> str:
    """The path of ``key`` inside the mapping at ``path``."""
    return f"{path}.{key}" if path else str(key)


def item(path: str, i: int) -> str:
    """The path of element ``i`` of the list at ``path``."""
    return f"{path}[{i}]"


def did_you_mean(word, choices) -> str:
    """'; did you mean "x"?' for the closest of ``choices``, or ''."""
    match = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return f"; did you mean {quote(match[0])}?" if match else ""


# ---------------------------------------------------------------------------------------
# scalar checks: each returns the checked value, or None after adding a problem

def want_mapping(value, path: str, probs: Problems) -> Optional[dict]:
    if isinstance(value, dict):
        return value
    probs.add(path, f"{quote(value)} is not a mapping")
    return None


def want_list(value, path: str, probs: Problems) -> Optional[list]:
    if isinstance(value, list):
        return value
    hint = " (write [] for an empty list)" if value is None else ""
    probs.add(path, f"{quote(value)} is not a list{hint}")
    return None


def check_keys(data: dict, allowed, path: str, probs: Problems) -> None:
    """A problem for every key of ``data`` not in ``allowed``, with a did-you-mean."""
    for key in data:
        if key not in allowed:
            probs.add(sub(path, key), f"unknown key {quote(key)}{did_you_mean(key, allowed)}")


def want_str(value, path: str, probs: Problems) -> Optional[str]:
    """A non-empty string."""
    if isinstance(value, str) and value:
        return value
    probs.add(path, f"{quote(value)} is not a non-empty string")
    return None


def want_int(value, path: str, probs: Problems, lo: int, hi: int) -> Optional[int]:
    if isinstance(value, bool) or not isinstance(value, int):
        probs.add(path, f"{quote(value)} is not an integer ({lo}-{hi})")
        return None
    if not lo <= value <= hi:
        probs.add(path, f"{value} is out of range {lo}-{hi}")
        return None
    return value


def want_bool(value, path: str, probs: Problems) -> Optional[bool]:
    if isinstance(value, bool):
        return value
    probs.add(path, f"{quote(value)} is not true or false")
    return None


def want_choice(value, path: str, probs: Problems, choices) -> Optional[str]:
    if isinstance(value, str) and value in choices:
        return value
    probs.add(path, f"{quote(value)} is not one of {', '.join(choices)}"
                    f"{did_you_mean(value, choices)}")
    return None


def want_owner(value, path: str, probs: Problems) -> Optional[str]:
    """An account id: a string without '/', or an unquoted YAML integer (zero-padded to 12)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return str(value).zfill(12)
    if isinstance(value, str) and value and "/" not in value:
        return value
    probs.add(path, f"{quote(value)} is not an account id")
    return None


def want_tags(value, path: str, probs: Problems) -> Optional[dict]:
    """A mapping of string keys to string values (numbers kept as text, null as "")."""
    data = want_mapping(value, path, probs)
    if data is None:
        return None
    tags, start = {}, len(probs)
    for k, v in data.items():
        if not isinstance(k, str):
            probs.add(sub(path, k), f"tag key {quote(k)} is not a string")
        elif v is None:
            tags[k] = ""
        elif isinstance(v, str):
            tags[k] = v
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            tags[k] = str(v)
        else:
            probs.add(sub(path, k), f"tag value {quote(v)} is not a string")
    return tags if len(probs) == start else None


def optional(data: dict, key: str, path: str, probs: Problems, check, default, *args):
    """``check(data[key], path.key, probs, *args)`` if ``key`` is present, else ``default``."""
    value = data.get(key, MISSING)
    if value is MISSING:
        return default
    return check(value, sub(path, key), probs, *args)


def required(data: dict, key: str, path: str, probs: Problems, check, *args):
    """``check(data[key], ...)``, or a 'missing' problem."""
    value = data.get(key, MISSING)
    if value is MISSING:
        probs.add(sub(path, key), f'missing required key "{key}"')
        return None
    return check(value, sub(path, key), probs, *args)


def want_description(value, path: str, probs: Problems) -> Optional[str]:
    if isinstance(value, str):
        return value
    probs.add(path, f"{quote(value)} is not a string")
    return None


# ---------------------------------------------------------------------------------------
# addresses and networks

def parse_network(value, path: str, probs: Problems):
    """A CIDR, strictly: prefix length required, host bits clear."""
    if not isinstance(value, str):
        probs.add(path, f"{quote(value)} is not an IPv4 or IPv6 network (not a string)")
        return None
    text = value.strip()
    if "%" in text or not text:
        probs.add(path, f"{quote(value)} is not an IPv4 or IPv6 network")
        return None
    if "/" not in text:
        try:
            addr = ipaddress.ip_address(text)
        except ValueError:
            probs.add(path, f"{quote(value)} is not an IPv4 or IPv6 network")
        else:
            probs.add(path, f"{quote(value)} is not an IPv4 or IPv6 network (no prefix length); "
                            f"did you mean \"{addr}/{addr.max_prefixlen}\"?")
        return None
    try:
        return _strict_network(text)
    except ValueError:
        pass
    try:
        meant = ipaddress.ip_network(text, strict=False)
    except ValueError:
        probs.add(path, f"{quote(value)} is not an IPv4 or IPv6 network")
    else:
        probs.add(path, f"{quote(value)} has host bits set; did you mean \"{meant}\"?")
    return None


@functools.lru_cache(maxsize=1 << 16)
def _strict_network(text: str):
    """``ip_network(text, strict=True)``, cached: worlds repeat their CIDRs a lot, and
    parsing is most of the cost of loading a big world (networks are immutable values)."""
    return ipaddress.ip_network(text, strict=True)


def parse_address(value, path: str, probs: Problems, version: int | None = None):
    """An IP address (of ``version`` when given)."""
    kind = f"IPv{version}" if version else "IP"
    if not isinstance(value, str) or "%" in value:
        probs.add(path, f"{quote(value)} is not an {kind} address")
        return None
    try:
        addr = ipaddress.ip_address(value.strip())
    except ValueError:
        probs.add(path, f"{quote(value)} is not an {kind} address")
        return None
    if version and addr.version != version:
        probs.add(path, f"{quote(value)} is not an {kind} address")
        return None
    return addr


# ---------------------------------------------------------------------------------------
# group references

class GroupIndex:
    """Groups by id and by (owner, region, name), to resolve references."""

    def __init__(self, groups: Iterable[SecurityGroup] = ()):
        # False when some group of the file could not be read: an unknown reference may
        # then name it, and is not reported (the group's own problem is)
        self.complete = True
        # groups read with a problem: id -> "header" (its own fields) or "rules" (a rule
        # left out); timeline events that depend on what is missing are not judged
        # against the half-read group (``build_world``)
        self.flawed: dict = {}
        self.by_id: dict[str, SecurityGroup] = {}
        self.by_name: dict[tuple, str] = {}          # (owner, region, name) -> first group id
        self.by_region_name: dict[tuple, list] = {}  # (region, name) -> group ids, any owner
        for g in groups:
            self.add(g)

    def add(self, g: SecurityGroup) -> None:
        self.by_id.setdefault(g.id, g)
        if g.name:
            self.by_name.setdefault((g.owner, g.region, g.name), g.id)
            self.by_region_name.setdefault((g.region, g.name), []).append(g.id)

    def resolve(self, ref: str, owner: Optional[str], region: str):
        """(group id, None) or (None, why not).  ``owner`` None: names of any owner."""
        found, why = [], None
        if ref in self.by_id:
            found.append(ref)
        if "/" in ref:
            ref_owner, _, ref_id = ref.partition("/")
            g = self.by_id.get(ref_id)
            if g is not None and g.owner == ref_owner:
                found.append(ref_id)
            elif g is not None:
                why = f"{quote(ref)}: group {ref_id} belongs to owner {quote(g.owner)}"
        if owner is None:
            found.extend(self.by_region_name.get((region, ref), ()))
        elif (owner, region, ref) in self.by_name:
            found.append(self.by_name[(owner, region, ref)])
        found = list(dict.fromkeys(found))
        if len(found) == 1:
            return found[0], None
        if found:
            return None, f"{quote(ref)} is ambiguous: it names groups {', '.join(found)}"
        if why is None and not self.complete:
            return None, None
        if why is None:
            scope = f"region {region}" if owner is None else f"owner {owner}, region {region}"
            names = [n for (o, r, n) in self.by_name if r == region and owner in (None, o)]
            why = (f"{quote(ref)} is not a group id, \"owner/id\" or a group name in {scope}"
                   f"{did_you_mean(ref, list(self.by_id) + names)}")
        return None, why


def resolve_ref(index: GroupIndex, ref, owner: Optional[str], region: str, path: str,
                probs: Problems) -> Optional[str]:
    """The id of group ``ref`` or None with a problem."""
    ref = want_str(ref, path, probs)
    if ref is None:
        return None
    gid, why = index.resolve(ref, owner, region)
    if why is not None:
        probs.add(path, why)
    return gid


def resolve_in_region(index: GroupIndex, ref, owner: str, region: str, path: str,
                      probs: Problems, holder: str) -> Optional[str]:
    """Like ``resolve_ref`` but the group must be in ``region`` (``holder`` says whose)."""
    gid = resolve_ref(index, ref, owner, region, path, probs)
    if gid is not None and index.by_id[gid].region != region:
        probs.add(path, f"{quote(ref)} is group {gid} of region {index.by_id[gid].region}, "
                        f"but {holder} is in region {region} (references across regions "
                        f"are not allowed)")
        return None
    return gid


def resolve_instance_group(index: GroupIndex, ref, inst: Instance, path: str,
                           probs: Problems) -> Optional[str]:
    """A group of an instance's ``groups`` list: within its owner+region, same region."""
    return resolve_in_region(index, ref, inst.owner, inst.region, path, probs,
                             f"instance {inst.id}")


# ---------------------------------------------------------------------------------------
# rules

@dataclass(frozen=True)
class RuleScope:
    """Where a rule lives: its group's id, owner and region, and the groups it may name."""
    group_id: str
    owner: str
    region: str
    index: GroupIndex

    @classmethod
    def of(cls, g: SecurityGroup, index: GroupIndex) -> "RuleScope":
        return cls(g.id, g.owner, g.region, index)


@dataclass(frozen=True)
class RuleDraft:
    """A parsed rule still without its id (the id depends on the list's counter)."""
    fields: dict
    given_id: Optional[str]

    def build(self, rule_id: str, explicit: bool) -> Rule:
        return Rule(id=rule_id, explicit_id=explicit, **self.fields)


def protocol_label(proto: int) -> str:
    return PROTOCOL_NAMES.get(proto, str(proto))


def parse_protocol(value, path: str, probs: Problems) -> Optional[int]:
    """tcp/udp/icmp/icmpv6/all/-1 (any case), a number 0-255, or its digit string."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value == PROTO_ALL or 0 <= value <= 255:
            return value
    elif isinstance(value, str):
        text = value.strip().lower()
        if text in PROTOCOL_NUMBERS:
            return PROTOCOL_NUMBERS[text]
        if text == "-1":
            return PROTO_ALL
        if text.isdigit() and int(text) <= 255:
            return int(text)
    names = list(PROTOCOL_NUMBERS)
    probs.add(path, f"{quote(value)} is not a protocol (tcp, udp, icmp, icmpv6, all, -1 or "
                    f"0-255){did_you_mean(value, names) if isinstance(value, str) else ''}")
    return None


def parse_ports(value, path: str, probs: Problems) -> Optional[tuple]:
    """22, "22" or "8000-8080" -> (lo, hi)."""
    if isinstance(value, int) and not isinstance(value, bool):
        lo = hi = value
    elif isinstance(value, str) and _PORTS_RE.match(value):
        m = _PORTS_RE.match(value)
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
    else:
        probs.add(path, f"{quote(value)} is not a port or port range (22 or \"8000-8080\")")
        return None
    if not (0 <= lo <= 65535 and 0 <= hi <= 65535):
        probs.add(path, f"{quote(value)} is out of range 0-65535")
        return None
    if lo > hi:
        probs.add(path, f"{quote(value)} is reversed; did you mean \"{hi}-{lo}\"?")
        return None
    return lo, hi


def _rule_l4(data: dict, proto: int, path: str, probs: Problems) -> dict:
    """Port range and ICMP fields, refusing those the protocol does not have."""
    out = {}
    ports = data.get("ports", MISSING)
    if proto in PORT_PROTOCOLS:
        if ports is not MISSING:
            rng = parse_ports(ports, sub(path, "ports"), probs)
            if rng is not None:
                out["port_lo"], out["port_hi"] = rng
    elif ports is not MISSING:
        probs.add(sub(path, "ports"), f"ports {quote(ports)} given for protocol "
                                      f"{protocol_label(proto)}; only tcp and udp rules have ports")
    icmp = {k: data.get(k, MISSING) for k in ("icmp_type", "icmp_code")}
    if proto not in ICMP_PROTOCOLS:
        for key, v in icmp.items():
            if v is not MISSING:
                probs.add(sub(path, key), f"{key} {quote(v)} given for protocol "
                                          f"{protocol_label(proto)}; only icmp and icmpv6 rules "
                                          "have ICMP fields")
        return out
    for key, v in icmp.items():
        if v is not MISSING:
            checked = want_int(v, sub(path, key), probs, -1, 255)
            if checked is not None:
                out[key] = checked
    return out


def _rule_peer(data: dict, path: str, probs: Problems, scope: RuleScope) -> dict:
    """``cidr`` or ``group``: exactly one."""
    cidr, group = data.get("cidr", MISSING), data.get("group", MISSING)
    if cidr is MISSING and group is MISSING:
        probs.add(path, 'no peer: give "cidr" or "group"')
        return {}
    if cidr is not MISSING and group is not MISSING:
        probs.add(path, f"both cidr {quote(cidr)} and group {quote(group)} given; give exactly one")
        return {}
    if cidr is not MISSING:
        net = parse_network(cidr, sub(path, "cidr"), probs)
        return {} if net is None else {"cidr": net}
    gid = resolve_in_region(scope.index, group, scope.owner, scope.region, sub(path, "group"),
                            probs, f"group {scope.group_id}")
    return {} if gid is None else {"group": gid, "group_ref": group}


def _rule_decision(data: dict, path: str, probs: Problems) -> dict:
    """action, priority, log and description."""
    out = {
        "action": optional(data, "action", path, probs, want_choice, "allow", ACTIONS),
        "priority": optional(data, "priority", path, probs, want_int, DEFAULT_PRIORITY, 0, 65535),
        "log": optional(data, "log", path, probs, want_bool, False),
        "description": optional(data, "description", path, probs, want_description, None),
    }
    return out


def _rule_given_id(data: dict, path: str, probs: Problems) -> Optional[str]:
    rule_id = optional(data, "id", path, probs, want_str, None)
    if rule_id in REASONS:
        probs.add(sub(path, "id"), f"{quote(rule_id)} is reserved: it names a deciding reason "
                                   f"({', '.join(REASONS)})")
        return None
    return rule_id


def parse_rule(data, path: str, probs: Problems, scope: RuleScope) -> Optional[RuleDraft]:
    """A rule mapping in file syntax -> a ``RuleDraft``, or None with problems added."""
    data = want_mapping(data, path, probs)
    if data is None:
        return None
    start = len(probs)
    check_keys(data, RULE_KEYS, path, probs)
    fields = {}
    proto = required(data, "protocol", path, probs, parse_protocol)
    if proto is not None:
        fields["protocol"] = proto
        fields.update(_rule_l4(data, proto, path, probs))
    fields.update(_rule_peer(data, path, probs, scope))
    fields.update(_rule_decision(data, path, probs))
    given_id = _rule_given_id(data, path, probs)
    if len(probs) > start:
        return None
    return RuleDraft(fields, given_id)


def assign_rule_id(given: Optional[str], group_id: str, direction: str, counter: int, path: str,
                   probs: Problems, taken: Callable[[str], Optional[str]], index: GroupIndex):
    """(rule id, explicit, next counter) for a rule added to a list, or None with a problem.

    ``taken(id)`` says where an id is already used (or None); ``counter`` is the list's next n.
    """
    if given is None:
        rule_id, explicit, nxt = default_rule_id(group_id, direction, counter), False, counter + 1
    else:
        m = _DEFAULT_ID_RE.match(given)
        own = m is not None and m["gid"] == group_id and m["tag"] == DIRECTION_TAGS[direction]
        if own and int(m["n"]) < counter:
            probs.add(path, f"{quote(given)} is a default rule id already given out "
                            f"(the next is \"{default_rule_id(group_id, direction, counter)}\")")
            return None
        if own:     # pins the counter: see the module docstring
            rule_id, explicit, nxt = given, False, int(m["n"]) + 1
        elif m is not None and m["gid"] in index.by_id:
            probs.add(path, f"{quote(given)} has the form of a default rule id of group "
                            f"{m['gid']}; choose another id")
            return None
        else:
            rule_id, explicit, nxt = given, True, counter + 1
    where = taken(rule_id)
    if where is not None:
        probs.add(path, f"duplicate rule id {quote(rule_id)} (also {where})")
        return None
    return rule_id, explicit, nxt


# ---------------------------------------------------------------------------------------
# groups

def parse_group_header(data, path: str, probs: Problems, world_region: str):
    """A group's own fields (no rules yet): ``(shell, known)``, the ``SecurityGroup`` shell
    or None, and whether its identity (id, name, owner, region, and no unknown key that
    may be a misspelt one of them) was read without a problem.  References are resolved
    against known identities only; a problem elsewhere (description, tags) leaves the
    identity known, so it hides no other problem of the file."""
    data = want_mapping(data, path, probs)
    if data is None:
        return None, False
    start = len(probs)
    check_keys(data, GROUP_KEYS, path, probs)
    gid = required(data, "id", path, probs, want_str)
    if gid is not None and "/" in gid:
        probs.add(sub(path, "id"), f"{quote(gid)}: a group id may not contain \"/\"")
        gid = None
    name = required(data, "name", path, probs, want_str)
    owner = optional(data, "owner", path, probs, want_owner, DEFAULT_OWNER)
    region = optional(data, "region", path, probs, want_str, world_region)
    known = len(probs) == start
    description = optional(data, "description", path, probs, want_description, None)
    tags = optional(data, "tags", path, probs, want_tags, {})
    if gid is None:
        return None, False
    return SecurityGroup(id=gid, name=name or "", owner=owner or DEFAULT_OWNER,
                         region=region or world_region, description=description,
                         tags=tags or {}), known


def parse_group_rules(g: SecurityGroup, data: dict, path: str, probs: Problems,
                      index: GroupIndex, taken: dict) -> None:
    """Fill ``g``'s rule lists and id counters from its mapping.  ``taken``: id -> path."""
    scope = RuleScope.of(g, index)
    for direction in DIRECTIONS:
        value = data.get(direction, MISSING)
        if value is MISSING and direction == "egress":
            g.egress, g.next_eg, g.egress_given = default_egress_rules(g.id), 2, False
            for r in g.egress:
                taken.setdefault(r.id, f"{path} (default egress)")
            continue
        rules = [] if value is MISSING else want_list(value, sub(path, direction), probs)
        counter = 0
        for i, raw in enumerate(rules or ()):
            rpath = item(sub(path, direction), i)
            draft = parse_rule(raw, rpath, probs, scope)
            assigned = draft and assign_rule_id(draft.given_id, g.id, direction, counter,
                                                sub(rpath, "id"), probs, taken.get, index)
            if not assigned:
                counter += 1     # keep later default ids where the file means them
                continue
            rule_id, explicit, counter = assigned
            taken[rule_id] = rpath
            g.rules(direction).append(draft.build(rule_id, explicit))
        if value is not MISSING:
            _set_next(g, direction, counter)
    _parse_next_ids(g, data, path, probs)


def _set_next(g: SecurityGroup, direction: str, n: int) -> None:
    if direction == "ingress":
        g.next_in = n
    else:
        g.next_eg = n


def _parse_next_ids(g: SecurityGroup, data: dict, path: str, probs: Problems) -> None:
    """``x-next-rule-ids``: counters ahead of the rules (see the module docstring)."""
    value = data.get(NEXT_IDS_KEY, MISSING)
    if value is MISSING:
        return
    npath = sub(path, NEXT_IDS_KEY)
    counters = want_mapping(value, npath, probs)
    if counters is None:
        return
    check_keys(counters, DIRECTIONS, npath, probs)
    for direction in DIRECTIONS:
        least = g.next_in if direction == "ingress" else g.next_eg
        n = optional(counters, direction, npath, probs, want_int, None, least, 2**62)
        if n is not None:
            _set_next(g, direction, n)


def parse_groups(value, probs: Problems, world_region: str) -> tuple[list, GroupIndex]:
    """The ``security_groups`` list -> (groups, their index); duplicates and bad references
    are problems."""
    entries = want_list(value, "security_groups", probs)
    index, shells, first_at = GroupIndex(), [], {}
    index.complete = entries is not None
    for i, data in enumerate(entries or ()):
        path = item("security_groups", i)
        start = len(probs)
        g, known = parse_group_header(data, path, probs, world_region)
        index.complete &= known
        if g is None:
            continue
        if len(probs) > start:
            index.flawed[g.id] = "header"
        if g.id in first_at:
            probs.add(sub(path, "id"), f"duplicate group id {quote(g.id)} (also "
                                       f"{first_at[g.id]})")
            continue
        other = index.by_name.get((g.owner, g.region, g.name))
        if other is not None:
            probs.add(sub(path, "name"), f"duplicate group name {quote(g.name)} in owner "
                                         f"{g.owner}, region {g.region} (also group {other})")
        first_at[g.id] = path
        index.add(g)
        shells.append((g, data, path))
    taken: dict[str, str] = {}
    for g, data, path in shells:
        start = len(probs)
        parse_group_rules(g, data, path, probs, index, taken)
        if len(probs) > start:
            index.flawed.setdefault(g.id, "rules")
    return [g for g, _, _ in shells], index


# ---------------------------------------------------------------------------------------
# instances

def parse_instance(data, path: str, probs: Problems, *, world_region: str, limit: int,
                   index: GroupIndex) -> Optional[Instance]:
    """An instance mapping -> ``Instance`` (groups resolved to ids), or None."""
    inst, ok = _read_instance(data, path, probs, world_region=world_region, limit=limit,
                              index=index)
    return inst if ok else None


def _read_instance(data, path: str, probs: Problems, *, world_region: str, limit: int,
                   index: GroupIndex) -> tuple[Optional[Instance], bool]:
    """``(instance, ok)``: the instance as far as it could be read (None when the entry is
    not a mapping) and whether it was read without a problem.  An instance with a problem
    still has its id and addresses checked against the others, so that every problem of
    the file is reported at once."""
    data = want_mapping(data, path, probs)
    if data is None:
        return None, False
    start = len(probs)
    check_keys(data, INSTANCE_KEYS, path, probs)
    inst = Instance(
        id=required(data, "id", path, probs, want_str) or "",
        private_ip=optional(data, "private_ip", path, probs, parse_address, None, 4),
        private_ipv6=optional(data, "private_ipv6", path, probs, parse_address, None, 6),
        public_ip=optional(data, "public_ip", path, probs, parse_address, None),
        owner=optional(data, "owner", path, probs, want_owner, DEFAULT_OWNER) or DEFAULT_OWNER,
        region=optional(data, "region", path, probs, want_str, world_region) or world_region,
        order=optional(data, "order", path, probs, want_choice, None, ORDERS),
        tags=optional(data, "tags", path, probs, want_tags, {}) or {},
        state=optional(data, "state", path, probs, want_choice, "running", STATES) or "running",
    )
    if inst.running and inst.private_ip is None and "private_ip" not in data:
        probs.add(sub(path, "private_ip"), "missing: a running instance needs a private_ip")
    refs = optional(data, "groups", path, probs, want_list, [])
    if refs:
        inst.groups = _instance_groups(refs, inst, sub(path, "groups"), probs, limit, index)
    return inst, len(probs) == start


def _instance_groups(refs: list, inst: Instance, path: str, probs: Problems, limit: int,
                     index: GroupIndex) -> list:
    """An instance's group references -> ids: same region, no repeats, at most ``limit``."""
    gids = []
    for k, ref in enumerate(refs):
        gid = resolve_instance_group(index, ref, inst, item(path, k), probs)
        if gid is None:
            continue
        if gid in gids:
            probs.add(item(path, k), f"{quote(ref)} repeats group {gid}")
            continue
        gids.append(gid)
    if len(refs) > limit:
        probs.add(path, f"{len(refs)} groups {quote(refs)} exceed "
                        f"limits.groups_per_instance ({limit})")
    return gids


def check_addresses(inst: Instance, path: str, probs: Problems, taken: dict,
                    register: bool) -> None:
    """Problems for addresses of running ``inst`` already used (``taken``: address -> id)."""
    if not inst.running:
        return
    own: dict = {}
    for key in ("private_ip", "private_ipv6", "public_ip"):
        addr = getattr(inst, key)
        if addr is None:
            continue
        other = taken.get(addr, own.get(addr))
        if other is not None:
            probs.add(sub(path, key), f"address \"{addr}\" is already used by running "
                                      f"instance {other}")
            continue
        own[addr] = inst.id
    if register:
        taken.update(own)


def parse_instances(value, probs: Problems, world_region: str, limit: int,
                    index: GroupIndex, flawed: list | None = None) -> list:
    """The ``instances`` list; ids unique, addresses unique among running instances.
    ``flawed`` (out): the instances read with a problem, as far as they were read, and
    None for an entry whose id could not be read."""
    entries = want_list(value, "instances", probs) or []
    out, first_at, addresses = [], {}, {}
    for i, data in enumerate(entries):
        path = item("instances", i)
        inst, ok = _read_instance(data, path, probs, world_region=world_region, limit=limit,
                                  index=index)
        if flawed is not None and not ok:
            flawed.append(inst if inst is not None and inst.id else None)
        if inst is None or not inst.id:
            continue
        if inst.id in first_at:
            probs.add(sub(path, "id"), f"duplicate instance id {quote(inst.id)} (also "
                                       f"{first_at[inst.id]})")
            continue
        first_at[inst.id] = path
        check_addresses(inst, path, probs, addresses, register=True)
        if ok:
            out.append(inst)
    return out


# ---------------------------------------------------------------------------------------
# settings

def parse_settings(data: dict, probs: Problems) -> dict:
    """version, region, order, limits, conntrack and logging, defaults filled in."""
    settings = {
        "version": optional(data, "version", "", probs, want_int, 1, 1, 1),
        "region": optional(data, "region", "", probs, want_str, DEFAULT_REGION) or DEFAULT_REGION,
        "order": optional(data, "order", "", probs, want_choice, DEFAULT_ORDER, ORDERS),
    }
    for name, (defaults, spec) in SECTIONS.items():
        settings[name] = _parse_section(data.get(name, MISSING), name, defaults, spec, probs)
    return settings


def _parse_section(value, name: str, defaults: dict, spec: dict, probs: Problems) -> dict:
    out = dict(defaults)
    if value is MISSING:
        return out
    data = want_mapping(value, name, probs)
    if data is None:
        return out
    check_keys(data, spec, name, probs)
    for key, kind in spec.items():
        if key not in data:
            continue
        path = sub(name, key)
        checked = (want_bool(data[key], path, probs) if kind is bool
                   else want_int(data[key], path, probs, *kind))
        if checked is not None:
            out[key] = checked
    return out


# ---------------------------------------------------------------------------------------
# timeline

def parse_time(value, path: str, probs: Problems) -> Optional[int]:
    """``at`` -> integer nanoseconds since the epoch (see the module docstring)."""
    ns = _time_ns(value)
    if ns is None:
        probs.add(path, f"{quote(value)} is not a time (seconds since the epoch, or an "
                        "ISO-8601 date-time like \"2023-11-14T22:30:00Z\")")
    elif ns < 0:
        probs.add(path, f"{quote(value)} is before the epoch")
        return None
    return ns


def _time_ns(value) -> Optional[int]:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value * NS
    if isinstance(value, float):
        # the shortest repr is what the file said: 1700000000.5 -> exactly .5 s
        return _decimal_ns(repr(value)) if math.isfinite(value) else None
    if isinstance(value, _dt.datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=_dt.timezone.utc)
        delta = aware - _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
        return (delta.days * 86400 + delta.seconds) * NS + delta.microseconds * 1000
    if isinstance(value, _dt.date):
        return _time_ns(_dt.datetime(value.year, value.month, value.day))
    if isinstance(value, str):
        if _NUMBER_RE.match(value):
            return _decimal_ns(value.strip())
        return _iso_ns(value.strip())
    return None


def _decimal_ns(text: str) -> Optional[int]:
    # imported here: decimal's C module costs tens of milliseconds of every start-up
    from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
    try:
        return int((Decimal(text) * NS).to_integral_value(rounding=ROUND_HALF_EVEN))
    except InvalidOperation:
        return None


def _iso_ns(text: str) -> Optional[int]:
    """ISO-8601 with up to nanosecond fractions (``datetime`` stops at microseconds)."""
    m = _ISO_RE.match(text)
    if m is None:
        return None
    year, month, day, hour, minute, second, frac, zone = m.groups()
    try:
        base = _dt.datetime(int(year), int(month), int(day), int(hour or 0), int(minute or 0),
                            int(second or 0))
    except ValueError:
        return None
    offset = 0
    if zone and zone not in "Zz":
        digits = zone[1:].replace(":", "")
        offset = int(digits[:2]) * 3600 + int(digits[2:4] or 0) * 60
        offset = -offset if zone[0] == "-" else offset
    seconds = _time_ns(base) // NS - offset
    return seconds * NS + (int(frac.ljust(9, "0")) if frac else 0)


def format_time(at_ns: int):
    """Nanoseconds -> the ``at`` a file writes: int seconds, a float when that is exact, else
    an ISO-8601 string with nanoseconds."""
    if at_ns % NS == 0:
        return at_ns // NS
    as_float = at_ns / NS
    if _time_ns(as_float) == at_ns:
        return as_float
    seconds, frac = divmod(at_ns, NS)
    stamp = _dt.datetime.fromtimestamp(seconds, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{frac:09d}Z"


def check_event_args(kind: str, args, path: str, probs: Problems) -> None:
    """The argument mapping of an event: known keys, required ones present."""
    if kind == "launch":
        want_mapping(args, path, probs)     # the instance's own keys: parse_instance
        return
    args = want_mapping(args, path, probs)
    if args is None:
        return
    needed, extra = EVENT_ARGS[kind]
    check_keys(args, needed + extra, path, probs)
    for key in needed:
        if key not in args:
            probs.add(sub(path, key), f'missing required key "{key}"')
    if kind == "revoke" and ("rule_id" in args) == ("rule" in args):
        probs.add(path, 'give exactly one of "rule_id" and "rule"')


def parse_event(data, index: int, probs: Problems) -> Optional[TimelineEvent]:
    """``{at: T, <kind>: {...}}`` -> ``TimelineEvent``, or None."""
    path = item("timeline", index)
    data = want_mapping(data, path, probs)
    if data is None:
        return None
    start = len(probs)
    check_keys(data, ("at",) + EVENT_KINDS, path, probs)
    at_ns = required(data, "at", path, probs, parse_time)
    kinds = [k for k in EVENT_KINDS if k in data]
    if len(kinds) != 1:
        probs.add(path, f"an event needs exactly one of {', '.join(EVENT_KINDS)}; "
                        f"found {quote(kinds)}")
    else:
        check_event_args(kinds[0], data[kinds[0]], sub(path, kinds[0]), probs)
    if len(probs) > start:
        return None
    # a copy: the world must not share mutable data with its caller
    return TimelineEvent(at_ns=at_ns, kind=kinds[0], args=copy.deepcopy(data[kinds[0]]),
                         index=index)


def parse_timeline(value, probs: Problems) -> list:
    entries = want_list(value, "timeline", probs) or []
    events = [parse_event(data, i, probs) for i, data in enumerate(entries)]
    return sorted((e for e in events if e is not None), key=lambda e: (e.at_ns, e.index))


def simulate_timeline(world, events: list, probs: Problems, copy_first: bool = True) -> None:
    """Apply ``events`` in time order to ``world`` (to a copy when ``copy_first``); each
    refused event is a problem (so later events may use what earlier ones launched or
    authorized)."""
    sim = world.copy() if copy_first else world
    for ev in events:
        try:
            sim.apply_event(ev)
        except WorldError as e:
            probs.extend(e.problems)


def _event_refs(ev) -> tuple[set, set]:
    """The group references (text) and instance ids an event names."""
    args = ev.args if isinstance(ev.args, dict) else {}
    groups, instances = set(), set()
    if ev.kind == "launch":
        if isinstance(args.get("id"), str):
            instances.add(args["id"])
        refs = args.get("groups")
        groups.update(r for r in (refs if isinstance(refs, list) else ()) if isinstance(r, str))
    else:
        if isinstance(args.get("group"), str):
            groups.add(args["group"])
        if isinstance(args.get("instance"), str):
            instances.add(args["instance"])
        rule = args.get("rule")
        if isinstance(rule, dict) and isinstance(rule.get("group"), str):
            groups.add(rule["group"])
    return groups, instances


def _judge_timeline_anyway(cls, groups, instances, flawed, index, settings, events,
                           probs: Problems) -> None:
    """The timeline's problems when the rest of the file has some too, so that one load
    lists every problem (spec section 1).  The events are applied to the world as far as
    it was read; an event that depends on what a problem left out (an instance read with a
    problem, or one such an event launched; a group whose own fields had a problem; the
    rules of a group that lost one) is not judged, since its problem could be a mere
    echo.  Nothing is judged when a group's or instance's identity could not be read (any
    unknown name might be that one)."""
    if not index.complete or any(inst is None for inst in flawed):
        return
    read = {i.id for i in instances}
    try:
        world = cls(groups=groups, instances=instances + [i for i in flawed if i.id not in read],
                    **settings)
    except Exception:           # the half-read parts do not even make a world: judge nothing
        return
    bad_instances = {i.id for i in flawed}
    for ev in events:
        refs, ids = _event_refs(ev)
        named = set()
        for ref in refs:
            gid, _ = index.resolve(ref, None, world.region)
            named.update([gid] if gid is not None else [])
            named.update(g for g in index.by_region_name.get((world.region, ref), ()))
        # a group whose header had a problem taints every event naming it; one that lost
        # a rule, only the events about its rules
        echo = bool(ids & bad_instances) or any(
            index.flawed.get(g) == "header"
            or (index.flawed.get(g) == "rules" and ev.kind in ("authorize", "revoke"))
            for g in named)
        try:
            world.apply_event(ev)
        except WorldError as e:
            if echo:
                bad_instances |= ids            # what it launched or changed is unknown now
            else:
                probs.extend(e.problems)


# ---------------------------------------------------------------------------------------
# the whole world

def build_world(cls, data, source: str | None = None):
    """A world file's mapping -> ``cls`` (World), or ``WorldError`` with every problem."""
    probs = Problems()
    if not isinstance(data, dict):
        probs.add("", f"a world file holds a mapping, not {quote(data)}")
        probs.raise_if_any(source)
    check_keys(data, TOP_KEYS, "", probs)
    settings = parse_settings(data, probs)
    region, limit = settings["region"], settings["limits"]["groups_per_instance"]
    groups, index = parse_groups(data.get("security_groups", []), probs, region)
    flawed: list = []
    instances = parse_instances(data.get("instances", []), probs, region, limit, index, flawed)
    events = parse_timeline(data.get("timeline", []), probs)
    if probs and events:
        _judge_timeline_anyway(cls, groups, instances, flawed, index, settings, events, probs)
    probs.raise_if_any(source)
    world = cls(groups=groups, instances=instances, **settings)
    if events:
        simulate_timeline(world, events, probs)
        probs.raise_if_any(source)
        world.timeline = events
    return world
