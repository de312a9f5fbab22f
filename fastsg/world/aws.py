"""AWS interop: a world from what the EC2 API describes, and security groups back to it.

``import_aws`` reads the JSON of ``aws ec2 describe-security-groups``, ``describe-instances``,
``describe-security-group-rules``, ``describe-managed-prefix-lists`` and
``get-managed-prefix-list-entries`` (the AWS CLI's output, or boto3's response dicts, or
several pages of either concatenated) and builds a world in file syntax, validated by
``World.from_dict``.  ``export_aws`` writes a world's groups back as
``describe-security-groups`` JSON (and, for the rule ids, ``describe-security-group-rules``
JSON), so import -> export -> import gives the same world for everything AWS can express.

Nothing is dropped silently.  Every input value is either imported, deliberately ignored
(fields with no meaning for the firewall: AMI ids, block devices, ... listed in
``IGNORED_*`` below), or reported: malformed input is an *error* (``WorldError``, every
problem listed with its JSON path, nothing built) and what is imported approximately or not
at all is a *warning* (``Problem`` with its JSON path, returned in ``ImportResult.warnings``;
``strict=True`` makes warnings errors).  JSON paths read
``sg.json:SecurityGroups[2].IpPermissions[0].IpRanges[1].CidrIp``; a file holding several
concatenated JSON documents names them ``sg.json#0``, ``sg.json#1``, ...

Mapping (decisions where AWS and fastsg differ are marked *):

* A group: ``GroupId`` -> id, ``GroupName`` -> name, ``OwnerId`` -> owner (else the owner in
  ``SecurityGroupArn``), region from ``SecurityGroupArn``, else the region of the instances
  holding it, else the world region.  ``Description``, ``Tags`` are kept.  ``VpcId`` is not
  part of the fastsg model; it names groups whose names collide (below).
* Rules are allow-only and the world order is ``allow,deny``: EC2's behaviour.  An
  ``IpPermission`` with several peers becomes one fastsg rule per peer, in the order
  ``IpRanges``, ``Ipv6Ranges``, ``UserIdGroupPairs``, ``PrefixListIds``; each peer's
  ``Description`` is the rule's description.
* ``IpProtocol`` ``tcp``/``udp``/``icmp``/``icmpv6`` (any case), ``-1`` or a number 0-255.
  tcp/udp ``FromPort``-``ToPort`` are the port range (both required; ``-1``/``-1`` is read as
  all ports*); icmp/icmpv6 ``FromPort``/``ToPort`` are type/code, -1 or missing = any*;
  other protocols have no ports (ports given anyway are ignored, with a warning, as AWS
  ignores them).
* ``UserIdGroupPairs``: a group of the same owner is referenced as ``sg-id``, another
  account's as ``owner/sg-id``.  A group not in the input becomes a *stub*: a group with that
  id, the pair's ``UserId`` as owner (else the referencing group's), the pair's ``GroupName``
  (else its id) as name, the referencing group's region, no rules and the tag
  ``fastsg:stub`` (a warning says so).  A pair whose ``PeeringStatus`` is not ``active``
  (a stale reference across a deleted VPC peering) matches nothing in AWS: it is not
  imported, with a warning.  A pair giving only a ``GroupName`` is resolved among the input's
  groups of its owner and region (not found: skipped with a warning).
* ``PrefixListIds`` expand into one rule per entry of the list when the list's entries are
  given (``prefix_lists``); otherwise each such rule is skipped with a warning naming it.
* Rule ids: ``SecurityGroupRuleId`` from ``describe-security-group-rules``, matched by group,
  direction, protocol, ports and peer.  A prefix-list rule expanded into n rules gets the ids
  ``<sgr-id>#0`` .. ``<sgr-id>#<n-1>``*.  Rules without a match get fastsg's default ids.
* Group names are unique per VPC in AWS but per (owner, region) in fastsg: every group whose
  name collides (each VPC's ``default``...) is renamed ``<name>@<VpcId>`` (``<name>@<GroupId>``
  without a VpcId)*, with a *note* (lossless: export splits the suffix off again; notes are
  never errors, even with ``strict``).
* An instance: ``InstanceId``; owner = the reservation's ``OwnerId`` (else the primary
  interface's); region from ``Placement.AvailabilityZone`` (``us-east-1a`` -> ``us-east-1``,
  local and wavelength zones too), else the world region.  Addresses: ``PrivateIpAddress``,
  ``PublicIpAddress``, ``Ipv6Address`` (else the primary interface's first IPv6 address).
  Groups*: ``SecurityGroups`` in order, then those of every network interface not listed yet
  (fastsg has one group list per instance, so groups of secondary interfaces apply to all
  of its traffic; a warning says so), then the reservation's ``Groups`` (EC2-Classic).
  Addresses fastsg cannot hold (secondary private IPs, more IPv6 addresses, secondary
  interfaces' addresses, delegated prefixes, carrier and customer-owned IPs) are warnings.
* States*: ``pending`` -> running (the instance already holds its addresses and groups),
  ``running``, ``stopping`` -> stopped, ``stopped``, ``shutting-down`` -> terminated,
  ``terminated``.
* World: ``region`` = ``region`` argument, else the most common region of the input
  (warning when the input names none: us-east-1), ``order: allow,deny``,
  ``limits.groups_per_instance`` = the largest instance group count, at least 5 (AWS's
  default per interface) and at most 16.
* Unknown keys (a newer API, a typo in a hand-written file) are warnings with their path.
"""
from __future__ import annotations

import functools
import ipaddress
import json
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

from ..errors import Problem, WorldError
from .model import (ANY, DEFAULT_CONNTRACK, DEFAULT_LIMITS, DEFAULT_LOGGING, DEFAULT_ORDER,
                    DEFAULT_OWNER, DEFAULT_PRIORITY, DEFAULT_REGION, DIRECTIONS,
                    ICMP_PROTOCOLS, MAX_GROUPS_PER_INSTANCE, PORT_PROTOCOLS, PROTO_ALL, World)
from .files import reject_duplicate_keys
from .validate import did_you_mean, quote

__all__ = ["Document", "ImportResult", "AwsImportError", "ExportResult", "read_documents",
           "parse_documents", "import_aws", "export_aws", "STUB_TAG"]

STUB_TAG = "fastsg:stub"
STUB_TAG_VALUE = "referenced, not in the imported security groups"

# AWS protocol names (IpProtocol values) and their numbers
AWS_PROTOCOLS = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58}
AWS_PROTOCOL_NAMES = {n: name for name, n in AWS_PROTOCOLS.items()}
STATES = {"pending": "running", "running": "running", "stopping": "stopped",
          "stopped": "stopped", "shutting-down": "terminated", "terminated": "terminated"}

# -- the keys of each API shape: used, or known and ignored (no meaning for the firewall) --
PAGE_KEYS = ("NextToken", "ResponseMetadata")
GROUP_KEYS = ("GroupId", "GroupName", "OwnerId", "Description", "Tags", "IpPermissions",
              "IpPermissionsEgress", "VpcId", "SecurityGroupArn")
PERMISSION_KEYS = ("IpProtocol", "FromPort", "ToPort", "IpRanges", "Ipv6Ranges",
                   "UserIdGroupPairs", "PrefixListIds")
IPRANGE_KEYS = ("CidrIp", "Description")
IPV6RANGE_KEYS = ("CidrIpv6", "Description")
PREFIX_LIST_ID_KEYS = ("PrefixListId", "Description")
PAIR_KEYS = ("GroupId", "UserId", "GroupName", "Description", "VpcId",
             "VpcPeeringConnectionId", "PeeringStatus")
TAG_KEYS = ("Key", "Value")
RESERVATION_KEYS = ("ReservationId", "OwnerId", "RequesterId", "Groups", "Instances")
GROUP_IDENTIFIER_KEYS = ("GroupId", "GroupName")
INSTANCE_USED_KEYS = ("InstanceId", "State", "Placement", "PrivateIpAddress", "PublicIpAddress",
                      "Ipv6Address", "NetworkInterfaces", "SecurityGroups", "Tags",
                      "SecondaryInterfaces")
IGNORED_INSTANCE_KEYS = (
    "Architecture", "BlockDeviceMappings", "ClientToken", "EbsOptimized", "EnaSupport",
    "Hypervisor", "IamInstanceProfile", "InstanceLifecycle", "ElasticGpuAssociations",
    "ElasticInferenceAcceleratorAssociations", "OutpostArn", "RootDeviceName",
    "RootDeviceType", "SourceDestCheck", "SpotInstanceRequestId", "SriovNetSupport",
    "StateReason", "VirtualizationType", "CpuOptions", "CapacityBlockId",
    "CapacityReservationId", "CapacityReservationSpecification", "HibernationOptions",
    "Licenses", "MetadataOptions", "EnclaveOptions", "BootMode", "PlatformDetails",
    "UsageOperation", "UsageOperationUpdateTime", "PrivateDnsNameOptions", "TpmSupport",
    "MaintenanceOptions", "CurrentInstanceBootMode", "NetworkPerformanceOptions", "Operator",
    "ImageId", "PrivateDnsName", "PublicDnsName", "StateTransitionReason", "KeyName",
    "AmiLaunchIndex", "ProductCodes", "InstanceType", "LaunchTime", "KernelId", "RamdiskId",
    "Platform", "Monitoring", "SubnetId", "VpcId")
STATE_KEYS = ("Name", "Code")
PLACEMENT_USED_KEYS = ("AvailabilityZone",)
IGNORED_PLACEMENT_KEYS = ("AvailabilityZoneId", "Affinity", "GroupName", "PartitionNumber",
                          "HostId", "Tenancy", "SpreadDomain", "HostResourceGroupArn", "GroupId")
INTERFACE_USED_KEYS = ("Association", "Attachment", "Groups", "Ipv6Addresses", "OwnerId",
                       "PrivateIpAddress", "PrivateIpAddresses", "Ipv4Prefixes", "Ipv6Prefixes",
                       "ConnectionTrackingConfiguration", "NetworkInterfaceId")
IGNORED_INTERFACE_KEYS = ("Description", "MacAddress", "PrivateDnsName", "SourceDestCheck",
                          "Status", "SubnetId", "VpcId", "InterfaceType", "Operator")
ASSOCIATION_USED_KEYS = ("PublicIp", "CarrierIp", "CustomerOwnedIp")
IGNORED_ASSOCIATION_KEYS = ("IpOwnerId", "PublicDnsName")
ATTACHMENT_USED_KEYS = ("DeviceIndex",)
IGNORED_ATTACHMENT_KEYS = ("AttachTime", "AttachmentId", "DeleteOnTermination", "Status",
                           "NetworkCardIndex", "EnaSrdSpecification", "EnaQueueCount")
PRIVATE_IP_KEYS = ("PrivateIpAddress", "Primary", "Association", "PrivateDnsName")
IPV6_ADDRESS_KEYS = ("Ipv6Address", "IsPrimaryIpv6")
SG_RULE_KEYS = ("SecurityGroupRuleId", "GroupId", "GroupOwnerId", "IsEgress", "IpProtocol",
                "FromPort", "ToPort", "CidrIpv4", "CidrIpv6", "PrefixListId",
                "ReferencedGroupInfo", "Description", "Tags", "SecurityGroupRuleArn")
REFERENCED_GROUP_KEYS = ("GroupId", "UserId", "VpcId", "VpcPeeringConnectionId", "PeeringStatus")
PREFIX_LIST_KEYS = ("PrefixListId", "AddressFamily", "State", "StateMessage", "PrefixListArn",
                    "PrefixListName", "MaxEntries", "Version", "Tags", "OwnerId",
                    "IpamPrefixListResolverTargetId", "IpamPrefixListResolverSyncEnabled")
ENTRIES_DOC_KEYS = ("Entries", "PrefixListId") + PAGE_KEYS
PREFIX_ENTRY_KEYS = ("Cidr", "Description")

_REGION_RE = re.compile(r"^([a-z]{2}(?:-[a-z]+)+-\d+)")
_ARN_RE = re.compile(r"^arn:(?P<partition>[^:]+):ec2:(?P<region>[^:]*):(?P<owner>[^:]*):"
                     r"security-group/(?P<id>.+)$")
_PL_ID_RE = re.compile(r"^pl-[0-9a-zA-Z]+$")
_VPC_RE = re.compile(r"^vpc-[0-9a-zA-Z]+$")
_KIND = {str: "a string", int: "an integer", bool: "true or false", list: "a list",
         dict: "a mapping"}
_MISSING = object()


# =========================================================================================
# documents

@dataclass(frozen=True)
class Document:
    """One JSON document of the input: ``name`` starts its JSON paths (a file name, with
    ``#k`` when the file holds several documents); ``data`` is the parsed JSON (or a boto3
    response dict).  ``prefix_list_id`` names the list that a ``get-managed-prefix-list-entries``
    document describes (that output does not say)."""
    name: str
    data: Any
    prefix_list_id: Optional[str] = None


def read_documents(path, prefix_list_id: str | None = None) -> list:
    """The JSON documents of a file (one, or several concatenated: paginated output);
    ``-`` reads standard input.

    A file named like a prefix list id (``pl-0123abcd.json``) holds that list's entries.
    Unreadable or invalid JSON is a ``WorldError`` naming the file, line and column.
    """
    path = os.fspath(path)
    name = "<stdin>" if path == "-" else path
    try:
        if path == "-":
            text = sys.stdin.buffer.read().decode("utf-8-sig")
        else:
            with open(path, "rb") as f:
                text = f.read().decode("utf-8-sig")
    except OSError as e:
        raise WorldError([Problem(name, f"cannot read: {e.strerror or e}")]) from None
    except UnicodeDecodeError as e:
        raise WorldError([Problem(name, f"not UTF-8 text (byte offset {e.start})")]) from None
    if prefix_list_id is None:
        stem = os.path.splitext(os.path.basename(path))[0]
        prefix_list_id = stem if _PL_ID_RE.match(stem) else None
    datas = parse_documents(text, name)
    many = len(datas) > 1
    return [Document(f"{name}#{k}" if many else name, d, prefix_list_id)
            for k, d in enumerate(datas)]


def parse_documents(text: str, name: str = "<input>") -> list:
    """The JSON values of ``text``, one after another (whitespace between them)."""
    decoder = json.JSONDecoder(object_pairs_hook=reject_duplicate_keys)
    out, pos, n = [], 0, len(text)
    while True:
        while pos < n and text[pos] in " \t\r\n":
            pos += 1
        if pos >= n:
            break
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise WorldError([Problem(name, f"invalid JSON at line {e.lineno}, column "
                                            f"{e.colno}: {e.msg}")]) from None
        except ValueError as e:     # a duplicate key
            raise WorldError([Problem(name, f"invalid JSON: {e}")]) from None
        out.append(value)
    if not out:
        raise WorldError([Problem(name, "no JSON document (the file is empty)")])
    return out


def _documents(items, default_name: str, page_keys: tuple) -> list:
    """Documents, parsed JSON values or boto3 responses -> ``Document``s.

    ``items`` is one document or a list of them; a list is one document (a bare list of
    entries, or of pages) unless every element is a ``Document`` or a page (a mapping with
    one of ``page_keys``)."""
    if items is None:
        return []
    if isinstance(items, (dict, Document)):
        items = [items]
    else:
        items = list(items)
        if not all(isinstance(it, Document) or (isinstance(it, dict) and
                                                any(k in it for k in page_keys))
                   for it in items):
            items = [items]
    out = []
    for k, it in enumerate(items):
        if isinstance(it, Document):
            out.append(it)
        else:
            out.append(Document(default_name if len(items) == 1 else f"{default_name}#{k}", it))
    return out


# =========================================================================================
# paths and problems

def _key(path: str, key) -> str:
    return f"{path}{key}" if path.endswith(":") else f"{path}.{key}"


def _idx(path: str, i: int) -> str:
    return f"{path}[{i}]"


class _Report:
    """Errors and warnings of one import, and checked reads of JSON values."""

    def __init__(self):
        self.errors: list[Problem] = []
        self.warnings: list[Problem] = []
        self.notes: list[Problem] = []

    def note(self, path: str, message: str) -> None:
        """A lossless adjustment worth knowing (never an error, even with ``strict``)."""
        self.notes.append(Problem(path, message))

    def error(self, path: str, message: str) -> None:
        self.errors.append(Problem(path, message))

    def warn(self, path: str, message: str) -> None:
        self.warnings.append(Problem(path, message))

    def keys(self, d: dict, path: str, used: Iterable, ignored: Iterable = ()) -> None:
        """A warning for each key of ``d`` that is neither used nor known-and-ignored."""
        known = tuple(used) + tuple(ignored)
        for k in d:
            if k not in known:
                self.warn(_key(path, k), f"unknown key {quote(k)}, not imported"
                                         f"{did_you_mean(k, known)}")

    def mapping(self, value, path: str, what: str = "a mapping") -> Optional[dict]:
        if isinstance(value, dict):
            return value
        self.error(path, f"{_q(value)} is not {what}")
        return None

    def get(self, d: dict, key: str, path: str, kind, required: bool = False):
        """``d[key]`` checked to be of ``kind``; ``_MISSING`` when absent or wrong."""
        value = d.get(key, _MISSING)
        if value is _MISSING:
            if required:
                self.error(_key(path, key), f'missing required key "{key}"')
            return _MISSING
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            self.error(_key(path, key), f"{_q(value)} is not {_KIND[kind]}")
            return _MISSING
        if kind is str and required and not value:
            self.error(_key(path, key), "empty (a non-empty string is needed)")
            return _MISSING
        return value

    def items(self, d: dict, key: str, path: str, required: bool = False):
        """(element, path) of the list ``d[key]`` (none when absent or not a list)."""
        value = self.get(d, key, path, list, required)
        if value is _MISSING:
            return []
        return [(v, _idx(_key(path, key), i)) for i, v in enumerate(value)]

    def tags(self, d: dict, path: str) -> dict:
        """``Tags: [{Key, Value}]`` -> {key: value}."""
        out = {}
        for t, tpath in self.items(d, "Tags", path):
            t = self.mapping(t, tpath, "a tag ({Key, Value})")
            if t is None:
                continue
            self.keys(t, tpath, TAG_KEYS)
            k = self.get(t, "Key", tpath, str, required=True)
            v = self.get(t, "Value", tpath, str)
            if k is _MISSING:
                continue
            if k in out:
                self.warn(_key(tpath, "Key"), f"tag {quote(k)} repeats; the last value is kept")
            out[k] = "" if v is _MISSING else v
        return out


def _q(value) -> str:
    """A value quoted for a message, shortened."""
    text = quote(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _opt(value):
    return None if value is _MISSING else value


# =========================================================================================
# import

class AwsImportError(WorldError):
    """The input cannot be imported: ``problems`` (JSON paths) says why; ``warnings`` are
    those found on the way (shown before the errors: a typo reported as an unknown key may
    explain one)."""

    def __init__(self, problems, warnings=()):
        super().__init__(problems)
        self.warnings = list(warnings)


@dataclass
class ImportResult:
    """What ``import_aws`` built: the ``world``, the ``warnings`` (``Problem`` with JSON
    paths: imported approximately or not at all), ``notes`` (lossless adjustments: renamed
    groups) and counts for a summary.  ``data`` is the world in file syntax."""
    world: World
    warnings: list
    notes: list = field(default_factory=list)
    stats: dict = field(default_factory=dict)

    @functools.cached_property
    def data(self) -> dict:
        return self.world.to_dict()


@dataclass
class _Group:
    id: str
    path: str
    name: str = ""
    owner: str = DEFAULT_OWNER
    region: Optional[str] = None
    arn_region: Optional[str] = None
    vpc: Optional[str] = None
    description: Optional[str] = None
    tags: dict = field(default_factory=dict)
    data: Optional[dict] = None
    stub: bool = False
    rules: dict = field(default_factory=lambda: {"ingress": [], "egress": []})
    # world sub-path (ingress[3].cidr) -> JSON path, to report validation problems
    origins: dict = field(default_factory=dict)
    name_path: str = ""


@dataclass
class _Instance:
    id: str
    path: str
    entry: dict
    origins: dict
    groups: list        # [(group id, name or None, JSON path)]
    region: Optional[str]


def import_aws(security_groups, instances=None, rules=None, prefix_lists=None, *,
               region: str | None = None, strict: bool = False) -> ImportResult:
    """A world from AWS's descriptions of security groups (and instances, rule ids, prefix
    lists); see the module docstring for the mapping.

    Each argument is one or several documents: ``Document``s (``read_documents``), parsed
    JSON values or boto3 response dicts.  ``region`` is the region of whatever the input
    does not place, and the world's default region.  Raises ``WorldError`` listing every
    error (with ``strict``, the warnings too); returns the world and the warnings.
    """
    imp = _Importer(region)
    return imp.run(_documents(security_groups, "security-groups", ("SecurityGroups",)),
                   _documents(instances, "instances", ("Reservations",)),
                   _documents(rules, "rules", ("SecurityGroupRules",)),
                   _documents(prefix_lists, "prefix-lists", ("PrefixLists", "Entries")),
                   strict)


class _Importer:
    def __init__(self, region: Optional[str]):
        self.r = _Report()
        self.region_arg = region
        self.groups: dict[str, _Group] = {}
        self.stubs: list[str] = []
        self.instances: list[_Instance] = []
        self.prefix_lists: dict[str, dict] = {}     # id -> {"entries": [...], "family", ...}
        self.rule_ids: dict[tuple, list] = {}       # match key -> [(sgr id, path)]
        self.rule_ids_seen: dict[str, str] = {}    # sgr id -> path
        self.instance_at: dict[str, "_Instance"] = {}
        self.rules_given = False
        self.last_page: dict = {}       # list key (or entries, list id) -> (last page, path)
        self.world_region = region or DEFAULT_REGION

    # -- the whole import -----------------------------------------------------------------

    def run(self, sg_docs, inst_docs, rule_docs, pl_docs, strict: bool) -> ImportResult:
        r = self.r
        self.rules_given = bool(rule_docs)
        if not sg_docs:
            r.error("", "no security groups given (describe-security-groups output)")
        for doc in sg_docs:
            self._read_group_doc(doc)
        for doc in inst_docs:
            self._read_instance_doc(doc)
        for doc in rule_docs:
            self._read_rules_doc(doc)
        for doc in pl_docs:
            self._read_prefix_list_doc(doc)
        for page, p in self.last_page.values():
            if "NextToken" in page:
                r.warn(_key(p, "NextToken"), "the last page has a NextToken: more pages exist "
                                             "that the input does not hold")
        self._regions()
        for g in list(self.groups.values()):
            if not g.stub:
                self._group_rules(g)
        self._instance_groups()
        self._unused_rule_ids(bool(rule_docs))
        self._unique_names()
        data, origins = self._world_dict()
        try:
            world = World.from_dict(data)
        except WorldError as e:
            # what was read is checked even when parts could not be: every problem at once
            r.errors += [_translate(p, origins) for p in e.problems]
        if r.errors:
            raise AwsImportError(r.errors, r.warnings)
        if strict and r.warnings:
            raise AwsImportError([Problem(w.path, f"{w.message} (strict: warnings are errors)")
                                  for w in r.warnings], [])
        stats = {"groups": sum(not g.stub for g in self.groups.values()),
                 "stub_groups": len(self.stubs),
                 "rules": sum(len(g.ingress) + len(g.egress) for g in world.groups.values()),
                 "instances": len(world.instances), "warnings": len(r.warnings),
                 "region": world.region}
        return ImportResult(world, list(r.warnings), list(r.notes), stats)

    # -- reading the documents ----------------------------------------------------------------

    def _pages(self, doc: Document, key: str, item_key: str, command: str):
        """(entry, path) of the list ``key`` of each page in ``doc`` (a page, a list of pages,
        or a bare list of entries recognised by ``item_key``)."""
        r, root = self.r, f"{doc.name}:"
        data = doc.data
        pages = []
        if isinstance(data, list):
            for i, el in enumerate(data):
                p = _idx(root, i)
                if isinstance(el, dict) and key in el:
                    pages.append((el, p))
                elif isinstance(el, dict) and item_key in el:
                    yield el, p
                else:
                    r.error(p, f"{_q(el)} is neither {command} output (with {quote(key)}) "
                               f"nor an entry of it (with {quote(item_key)})")
        elif isinstance(data, dict) and key in data:
            pages.append((data, root))
        else:
            keys = list(data)[:6] if isinstance(data, dict) else None
            got = f"a mapping with keys {quote(keys)}" if keys is not None else _q(data)
            r.error(root, f"not {command} output: expected a mapping with {quote(key)}, "
                          f"got {got}")
        for page, p in pages:
            r.keys(page, p, (key,) + PAGE_KEYS)
            self.last_page[key] = (page, p)
            yield from r.items(page, key, p, required=True)

    def _read_group_doc(self, doc: Document) -> None:
        r = self.r
        for data, path in self._pages(doc, "SecurityGroups", "GroupId",
                                      "describe-security-groups"):
            data = r.mapping(data, path, "a security group")
            if data is None:
                continue
            r.keys(data, path, GROUP_KEYS)
            gid = r.get(data, "GroupId", path, str, required=True)
            if gid is _MISSING:
                continue
            if "/" in gid:
                r.error(_key(path, "GroupId"), f"{quote(gid)}: a group id may not contain \"/\"")
                continue
            if gid in self.groups:
                prev = self.groups[gid]
                if prev.data == data:
                    r.warn(path, f"group {gid} repeats {prev.path} (identical): read once")
                else:
                    r.error(path, f"group {gid} repeats {prev.path} with other contents")
                continue
            g = _Group(id=gid, path=path, data=data)
            name = r.get(data, "GroupName", path, str)
            g.name_path = _key(path, "GroupName")
            if name is _MISSING or not name:
                if "GroupName" not in data or name == "":
                    r.warn(_key(path, "GroupName"), f"missing or empty: group {gid} is named "
                                                    "by its id")
                name = gid
            g.name = name
            arn = r.get(data, "SecurityGroupArn", path, str)
            arn_owner = None
            if arn is not _MISSING:
                m = _ARN_RE.match(arn)
                if m is None or m["id"] != gid:
                    r.warn(_key(path, "SecurityGroupArn"),
                           f"{quote(arn)} is not the ARN of security group {gid}; not used")
                else:
                    g.arn_region = m["region"] or None
                    arn_owner = m["owner"] or None
            owner = r.get(data, "OwnerId", path, str)
            if owner is _MISSING:
                if "OwnerId" not in data and arn_owner is None:
                    r.warn(_key(path, "OwnerId"), f"missing: group {gid} gets the owner "
                                                  f"{DEFAULT_OWNER}")
                owner = arn_owner or DEFAULT_OWNER
            elif arn_owner is not None and arn_owner != owner:
                r.warn(_key(path, "SecurityGroupArn"), f"the ARN names owner {arn_owner}, "
                                                       f"OwnerId {owner}; OwnerId is used")
            if "/" in owner:
                r.error(_key(path, "OwnerId"), f"{quote(owner)} is not an account id")
                owner = DEFAULT_OWNER
            g.owner = owner
            g.vpc = _opt(r.get(data, "VpcId", path, str))
            g.description = _opt(r.get(data, "Description", path, str))
            g.tags = r.tags(data, path)
            self.groups[gid] = g

    def _read_instance_doc(self, doc: Document) -> None:
        r = self.r
        for res, rpath in self._pages(doc, "Reservations", "Instances", "describe-instances"):
            res = r.mapping(res, rpath, "a reservation")
            if res is None:
                continue
            r.keys(res, rpath, RESERVATION_KEYS)
            owner = _opt(r.get(res, "OwnerId", rpath, str))
            extra = self._group_identifiers(res, "Groups", rpath)
            for inst, ipath in r.items(res, "Instances", rpath, required=True):
                self._read_instance(inst, ipath, owner, extra)

    def _group_identifiers(self, d: dict, key: str, path: str) -> list:
        out = []
        for gi, gpath in self.r.items(d, key, path):
            gi = self.r.mapping(gi, gpath, "a group identifier ({GroupId, GroupName})")
            if gi is None:
                continue
            self.r.keys(gi, gpath, GROUP_IDENTIFIER_KEYS)
            gid = self.r.get(gi, "GroupId", gpath, str, required=True)
            if gid is not _MISSING:
                out.append((gid, _opt(self.r.get(gi, "GroupName", gpath, str)), gpath))
        return out

    def _read_instance(self, inst, path: str, res_owner: Optional[str], res_groups: list):
        r = self.r
        inst = r.mapping(inst, path, "an instance")
        if inst is None:
            return
        r.keys(inst, path, INSTANCE_USED_KEYS, IGNORED_INSTANCE_KEYS)
        iid = r.get(inst, "InstanceId", path, str, required=True)
        state_path = _key(path, "State")
        state = r.get(inst, "State", path, dict, required=True)
        name = _MISSING
        if state is not _MISSING:
            r.keys(state, state_path, STATE_KEYS)
            name = r.get(state, "Name", state_path, str, required=True)
            if name is not _MISSING and name not in STATES:
                r.error(_key(state_path, "Name"), f"{quote(name)} is not an instance state "
                                                  f"({', '.join(STATES)})"
                                                  f"{did_you_mean(name, STATES)}")
                name = _MISSING
        if iid is _MISSING:
            return
        other = self.instance_at.get(iid)
        if other is not None:
            if other.entry["_raw"] == inst:
                r.warn(path, f"instance {iid} repeats {other.path} (identical): read once")
            else:
                r.error(path, f"instance {iid} repeats {other.path} with other contents")
            return
        entry: dict = {"id": iid, "_raw": inst}
        origins = {"id": _key(path, "InstanceId")}
        if name is not _MISSING:
            entry["state"] = STATES[name]
            origins["state"] = _key(state_path, "Name")
        region = None
        placement = r.get(inst, "Placement", path, dict)
        if placement is not _MISSING:
            ppath = _key(path, "Placement")
            r.keys(placement, ppath, PLACEMENT_USED_KEYS, IGNORED_PLACEMENT_KEYS)
            az = r.get(placement, "AvailabilityZone", ppath, str)
            if az is not _MISSING:
                m = _REGION_RE.match(az)
                if m is None:
                    r.warn(_key(ppath, "AvailabilityZone"), f"{quote(az)}: no region in this "
                                                            "availability zone; not used")
                else:
                    region = m.group(1)
                    origins["region"] = _key(ppath, "AvailabilityZone")
        addrs = {}      # world key -> (value, JSON path)
        for key, wkey in (("PrivateIpAddress", "private_ip"), ("PublicIpAddress", "public_ip"),
                          ("Ipv6Address", "private_ipv6")):
            v = r.get(inst, key, path, str)
            if v is not _MISSING:
                addrs[wkey] = (v, _key(path, key))
        groups = self._group_identifiers(inst, "SecurityGroups", path)
        owner = res_owner
        nis = [(ni, p) for ni, p in r.items(inst, "NetworkInterfaces", path)
               if r.mapping(ni, p, "a network interface") is not None]
        nis.sort(key=lambda e: _device_index(e[0]))
        primary_groups = None
        for k, (ni, npath) in enumerate(nis):
            ni_groups, ni_owner = self._interface(ni, npath, k == 0, addrs)
            if owner is None and ni_owner is not None:
                owner = ni_owner
            if k == 0:
                primary_groups = {gid for gid, _, _ in ni_groups}
            elif any(gid not in primary_groups for gid, _, _ in ni_groups):
                r.warn(_key(npath, "Groups"), "fastsg has one group list per instance: the "
                                              "groups of this secondary interface are added "
                                              "to it and apply to all of the instance's "
                                              "traffic")
            groups += ni_groups
        for sec, spath in r.items(inst, "SecondaryInterfaces", path):
            r.warn(spath, "secondary interfaces are not modelled; not imported")
        groups += res_groups
        seen, ordered = set(), []
        for gid, gname, gpath in groups:
            if gid not in seen:
                seen.add(gid)
                ordered.append((gid, gname, gpath))
        for wkey, (v, p) in addrs.items():
            entry[wkey] = v
            origins[wkey] = p
        if owner is None:
            r.warn(path, f"no OwnerId for instance {iid} (reservation or interface): it gets "
                         f"the owner {DEFAULT_OWNER}")
        else:
            entry["owner"] = owner
        entry["tags"] = r.tags(inst, path)
        origins["tags"] = _key(path, "Tags")
        self.instances.append(_Instance(iid, path, entry, origins, ordered, region))
        self.instance_at[iid] = self.instances[-1]

    def _interface(self, ni: dict, path: str, primary: bool, addrs: dict):
        """Groups and owner of a network interface; its addresses go to ``addrs`` (primary)
        or are reported (what fastsg cannot hold)."""
        r = self.r
        r.keys(ni, path, INTERFACE_USED_KEYS, IGNORED_INTERFACE_KEYS)
        att = r.get(ni, "Attachment", path, dict)
        if att is not _MISSING:
            apath = _key(path, "Attachment")
            r.keys(att, apath, ATTACHMENT_USED_KEYS, IGNORED_ATTACHMENT_KEYS)
            r.get(att, "DeviceIndex", apath, int)
        owner = _opt(r.get(ni, "OwnerId", path, str))
        groups = self._group_identifiers(ni, "Groups", path)
        who = "the primary interface" if primary else "a secondary interface"

        def offer(wkey: str, value: str, vpath: str) -> None:
            have = addrs.get(wkey)
            if primary and have is None:
                addrs[wkey] = (value, vpath)
            elif have is None or have[0] != value:
                kind = {"private_ip": "private IPv4", "public_ip": "public IPv4",
                        "private_ipv6": "IPv6"}[wkey]
                r.warn(vpath, f"{kind} address {value} of {who}: fastsg holds one {kind} "
                              f"address per instance; not imported")

        main_ip = r.get(ni, "PrivateIpAddress", path, str)
        if main_ip is not _MISSING:
            offer("private_ip", main_ip, _key(path, "PrivateIpAddress"))
        self._association(ni, path, offer)
        for pip, ppath in r.items(ni, "PrivateIpAddresses", path):
            pip = r.mapping(pip, ppath, "a private IP address")
            if pip is None:
                continue
            r.keys(pip, ppath, PRIVATE_IP_KEYS)
            is_primary = r.get(pip, "Primary", ppath, bool)
            ip = r.get(pip, "PrivateIpAddress", ppath, str)
            if ip is not _MISSING and (is_primary is not True or ip != _opt(main_ip)):
                offer("private_ip", ip, _key(ppath, "PrivateIpAddress"))
            self._association(pip, ppath, offer)
        v6 = []
        for a, apath in r.items(ni, "Ipv6Addresses", path):
            a = r.mapping(a, apath, "an IPv6 address")
            if a is None:
                continue
            r.keys(a, apath, IPV6_ADDRESS_KEYS)
            ip = r.get(a, "Ipv6Address", apath, str, required=True)
            first = r.get(a, "IsPrimaryIpv6", apath, bool) is True
            if ip is not _MISSING:
                v6.append((not first, len(v6), ip, _key(apath, "Ipv6Address")))
        for _, _, ip, ipath in sorted(v6):     # the primary IPv6 address first
            offer("private_ipv6", ip, ipath)
        for key in ("Ipv4Prefixes", "Ipv6Prefixes"):
            for _, ppath in r.items(ni, key, path):
                r.warn(ppath, "delegated prefixes are not modelled; not imported")
        if "ConnectionTrackingConfiguration" in ni:
            r.warn(_key(path, "ConnectionTrackingConfiguration"),
                   "per-interface conntrack timeouts are not imported (the world's conntrack "
                   "settings apply to every instance)")
        return groups, owner

    def _association(self, d: dict, path: str, offer) -> None:
        r = self.r
        assoc = r.get(d, "Association", path, dict)
        if assoc is _MISSING:
            return
        apath = _key(path, "Association")
        r.keys(assoc, apath, ASSOCIATION_USED_KEYS, IGNORED_ASSOCIATION_KEYS)
        ip = r.get(assoc, "PublicIp", apath, str)
        if ip is not _MISSING:
            offer("public_ip", ip, _key(apath, "PublicIp"))
        for key in ("CarrierIp", "CustomerOwnedIp"):
            v = r.get(assoc, key, apath, str)
            if v is not _MISSING:
                r.warn(_key(apath, key), f"{key} {v} is not modelled; not imported")

    def _read_rules_doc(self, doc: Document) -> None:
        r = self.r
        for data, path in self._pages(doc, "SecurityGroupRules", "SecurityGroupRuleId",
                                      "describe-security-group-rules"):
            data = r.mapping(data, path, "a security group rule")
            if data is None:
                continue
            r.keys(data, path, SG_RULE_KEYS)
            sgr = r.get(data, "SecurityGroupRuleId", path, str, required=True)
            gid = r.get(data, "GroupId", path, str, required=True)
            egress = r.get(data, "IsEgress", path, bool, required=True)
            proto = self._protocol(data, path)
            peers = [k for k in ("CidrIpv4", "CidrIpv6", "ReferencedGroupInfo", "PrefixListId")
                     if k in data]
            if len(peers) != 1:
                r.error(path, "a rule needs exactly one of CidrIpv4, CidrIpv6, "
                              f"ReferencedGroupInfo, PrefixListId; found {quote(peers)}")
                continue
            peer = None
            if peers[0] == "ReferencedGroupInfo":
                ref = r.get(data, "ReferencedGroupInfo", path, dict)
                if ref is not _MISSING:
                    rpath = _key(path, "ReferencedGroupInfo")
                    r.keys(ref, rpath, REFERENCED_GROUP_KEYS)
                    ref_gid = r.get(ref, "GroupId", rpath, str, required=True)
                    if ref_gid is not _MISSING:
                        peer = ("group", ref_gid)
            else:
                v = r.get(data, peers[0], path, str)
                if v is not _MISSING:
                    peer = ("pl", v) if peers[0] == "PrefixListId" else ("cidr", _norm_cidr(v))
            l4 = self._rule_l4(data, proto, path, warn_ignored=False)
            if any(x is _MISSING for x in (sgr, gid, egress)) or proto is None or peer is None \
                    or l4 is None:
                continue
            for _, tpath in r.items(data, "Tags", path):
                r.warn(tpath, "rule tags are not modelled; not imported")
            direction = "egress" if egress else "ingress"
            key = (gid, direction, proto, l4, peer)
            if sgr in self.rule_ids_seen:
                r.warn(path, f"rule {sgr} repeats {self.rule_ids_seen[sgr]}: read once")
                continue
            self.rule_ids_seen[sgr] = path
            self.rule_ids.setdefault(key, []).append((sgr, path))

    def _read_prefix_list_doc(self, doc: Document) -> None:
        r, root, data = self.r, f"{doc.name}:", doc.data
        if isinstance(data, dict) and "PrefixLists" in data:
            for pl, path in self._pages(doc, "PrefixLists", "PrefixListId",
                                        "describe-managed-prefix-lists"):
                pl = r.mapping(pl, path, "a prefix list")
                if pl is None:
                    continue
                r.keys(pl, path, PREFIX_LIST_KEYS)
                plid = r.get(pl, "PrefixListId", path, str, required=True)
                if plid is _MISSING:
                    continue
                info = self.prefix_lists.setdefault(plid, {"entries": None})
                info["path"] = path
                info["name"] = _opt(r.get(pl, "PrefixListName", path, str))
                info["family"] = _opt(r.get(pl, "AddressFamily", path, str))
            return
        if not (isinstance(data, dict) and "Entries" in data):
            r.error(root, "not describe-managed-prefix-lists output (with \"PrefixLists\") nor "
                          "get-managed-prefix-list-entries output (with \"Entries\")")
            return
        r.keys(data, root, ENTRIES_DOC_KEYS)
        plid = r.get(data, "PrefixListId", root, str)
        if plid is _MISSING:
            plid = doc.prefix_list_id
        if plid is None:
            r.error(root, "get-managed-prefix-list-entries output does not say which prefix "
                          "list it holds: give it as PL_ID=FILE, name the file <pl-id>.json, or "
                          "add \"PrefixListId\"")
            return
        self.last_page[("Entries", plid)] = (data, root)
        info = self.prefix_lists.setdefault(plid, {"entries": None})
        entries = info["entries"] if info["entries"] is not None else []
        for e, epath in r.items(data, "Entries", root, required=True):
            e = r.mapping(e, epath, "a prefix list entry")
            if e is None:
                continue
            r.keys(e, epath, PREFIX_ENTRY_KEYS)
            cidr = r.get(e, "Cidr", epath, str, required=True)
            if cidr is not _MISSING:
                entries.append((cidr, _key(epath, "Cidr")))
        info["entries"] = entries

    # -- regions ---------------------------------------------------------------------------

    def _regions(self) -> None:
        """The world region and each group's."""
        seen = [g.arn_region for g in self.groups.values() if g.arn_region]
        seen += [i.region for i in self.instances if i.region]
        if self.region_arg:
            self.world_region = self.region_arg
        elif seen:
            self.world_region = Counter(seen).most_common(1)[0][0]
        else:
            self.r.warn("", f"the input names no region (no SecurityGroupArn, no availability "
                            f"zone): {DEFAULT_REGION} is used; give --region to choose")
            self.world_region = DEFAULT_REGION
        holders: dict[str, set] = {}
        for inst in self.instances:
            for gid, _, _ in inst.groups:
                holders.setdefault(gid, set()).add(inst.region or self.world_region)
        for g in self.groups.values():
            near = holders.get(g.id, set())
            g.region = g.arn_region or (next(iter(near)) if len(near) == 1 else
                                        self.world_region)

    # -- rules ---------------------------------------------------------------------------

    def _group_rules(self, g: _Group) -> None:
        r = self.r
        for direction, key in (("ingress", "IpPermissions"), ("egress", "IpPermissionsEgress")):
            if key not in g.data:
                if direction == "ingress":
                    r.warn(_key(g.path, key), f"missing: group {g.id} gets no ingress rules")
                else:
                    r.warn(_key(g.path, key), f"missing: group {g.id} gets fastsg's default "
                                              "egress rules (allow all to 0.0.0.0/0 and ::/0, "
                                              "as EC2-Classic groups had)")
                    for cidr in ("0.0.0.0/0", "::/0"):
                        self._add_rule(g, "egress", {"protocol": "all", "cidr": cidr},
                                       _key(g.path, key), {})
                continue
            for perm, ppath in r.items(g.data, key, g.path):
                perm = r.mapping(perm, ppath, "an IpPermission")
                if perm is not None:
                    self._permission(g, direction, perm, ppath)

    def _protocol(self, d: dict, path: str) -> Optional[int]:
        value = d.get("IpProtocol", _MISSING)
        ppath = _key(path, "IpProtocol")
        if value is _MISSING:
            self.r.error(ppath, 'missing required key "IpProtocol"')
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            if value == -1 or 0 <= value <= 255:
                return value
        elif isinstance(value, str):
            text = value.strip().lower()
            if text in AWS_PROTOCOLS:
                return AWS_PROTOCOLS[text]
            if text == "-1":
                return PROTO_ALL
            if text.isdigit() and int(text) <= 255:
                return int(text)
        hint = did_you_mean(value, list(AWS_PROTOCOLS)) if isinstance(value, str) else ""
        self.r.error(ppath, f"{_q(value)} is not an IP protocol (tcp, udp, icmp, icmpv6, -1 or "
                            f"a number 0-255){hint}")
        return None

    def _rule_l4(self, d: dict, proto: Optional[int], path: str, warn_ignored: bool = True):
        """(lo, hi) for tcp/udp, (type, code) for icmp/icmpv6, () otherwise; None on error."""
        r = self.r
        lo = r.get(d, "FromPort", path, int)
        hi = r.get(d, "ToPort", path, int)
        bad = any(k in d and v is _MISSING for k, v in (("FromPort", lo), ("ToPort", hi)))
        if proto is None or bad:
            return None
        if proto in PORT_PROTOCOLS:
            missing = [k for k, v in (("FromPort", lo), ("ToPort", hi)) if v is _MISSING]
            for k in missing:
                r.error(_key(path, k), f'missing required key "{k}" (a tcp or udp rule gives '
                                       "its port range)")
            if missing:
                return None
            if (lo, hi) == (-1, -1):
                return (0, 65535)
            return (lo, hi)
        if proto in ICMP_PROTOCOLS:
            t, c = (ANY if lo is _MISSING else lo, ANY if hi is _MISSING else hi)
            if t == ANY and c != ANY:
                # fastsg worlds may say this (any type, one code); AWS refuses it
                r.error(_key(path, "ToPort"), f"icmp_code {c} needs an icmp_type (AWS refuses "
                                              "an ICMP code with all types)")
                return None
            return (t, c)
        if warn_ignored:
            for k, v in (("FromPort", lo), ("ToPort", hi)):
                if v is not _MISSING and v != -1:
                    r.warn(_key(path, k), f"{k} {v} ignored: protocol {proto} has no ports "
                                          "(AWS allows all ports)")
        return ()

    def _permission(self, g: _Group, direction: str, perm: dict, path: str) -> None:
        r = self.r
        r.keys(perm, path, PERMISSION_KEYS)
        proto = self._protocol(perm, path)
        l4 = self._rule_l4(perm, proto, path)
        if proto is None or l4 is None:
            return
        base = {"protocol": AWS_PROTOCOL_NAMES.get(proto, "all" if proto == PROTO_ALL else proto)}
        fields = {"protocol": _key(path, "IpProtocol")}
        if proto in PORT_PROTOCOLS:
            lo, hi = l4
            base["ports"] = lo if lo == hi else f"{lo}-{hi}"
            fields["ports"] = _key(path, "FromPort")
        elif proto in ICMP_PROTOCOLS:
            t, c = l4
            if t != ANY:
                base["icmp_type"] = t
            if c != ANY:
                base["icmp_code"] = c
            fields["icmp_type"] = _key(path, "FromPort")
            fields["icmp_code"] = _key(path, "ToPort")
        peers, errors = 0, len(r.errors)
        for key, cidr_key, version, entry_keys in (("IpRanges", "CidrIp", 4, IPRANGE_KEYS),
                                                   ("Ipv6Ranges", "CidrIpv6", 6, IPV6RANGE_KEYS)):
            for e, epath in r.items(perm, key, path):
                peers += 1
                e = r.mapping(e, epath, f"an {key[:-1]} ({{{cidr_key}, Description}})")
                if e is None:
                    continue
                r.keys(e, epath, entry_keys)
                cidr = r.get(e, cidr_key, epath, str, required=True)
                desc = r.get(e, "Description", epath, str)
                if cidr is _MISSING:
                    continue
                cpath = _key(epath, cidr_key)
                net = _network(cidr)    # None: World.from_dict says what is wrong with it
                if net is not None and net.version != version:
                    r.error(cpath, f"{quote(cidr)} is not an IPv{version} network ({key} holds "
                                   f"IPv{version} networks)")
                    continue
                rule = {**base, "cidr": cidr}
                self._add_rule(g, direction, rule, epath, {**fields, "cidr": cpath},
                               desc, (proto, l4, ("cidr", str(net) if net else cidr)))
        for e, epath in r.items(perm, "UserIdGroupPairs", path):
            peers += 1
            self._pair(g, direction, base, fields, e, epath, (proto, l4))
        for e, epath in r.items(perm, "PrefixListIds", path):
            peers += 1
            self._prefix_list_rule(g, direction, base, fields, e, epath, (proto, l4))
        if peers == 0 and len(r.errors) == errors:
            r.warn(path, "no peer (IpRanges, Ipv6Ranges, UserIdGroupPairs, PrefixListIds are "
                         "all empty): this permission allows nothing; nothing imported")

    def _pair(self, g, direction, base, fields, e, epath, l4key) -> None:
        r = self.r
        e = r.mapping(e, epath, "a UserIdGroupPair")
        if e is None:
            return
        r.keys(e, epath, PAIR_KEYS)
        gid = r.get(e, "GroupId", epath, str)
        user = _opt(r.get(e, "UserId", epath, str))
        name = _opt(r.get(e, "GroupName", epath, str))
        desc = r.get(e, "Description", epath, str)
        status = _opt(r.get(e, "PeeringStatus", epath, str))
        pcx = _opt(r.get(e, "VpcPeeringConnectionId", epath, str))
        r.get(e, "VpcId", epath, str)
        if "GroupId" in e and gid is _MISSING:
            return
        label = gid if gid is not _MISSING else name
        if status is not None and status != "active":
            r.warn(_key(epath, "PeeringStatus"),
                   f"stale reference to group {label}"
                   + (f" across VPC peering {pcx}" if pcx else "")
                   + f" (peering status {quote(status)}): AWS matches nothing with it; "
                   "rule not imported")
            if gid is not _MISSING:     # its rule id too: consumed, reported here
                self._take_id((g.id, direction, *l4key, ("group", gid)))
            return
        if gid is _MISSING:
            if name is None:
                r.error(epath, "a UserIdGroupPair needs a GroupId (or a GroupName)")
                return
            owner = user or g.owner
            found = [x.id for x in self.groups.values()
                     if not x.stub and x.name == name and x.owner == owner
                     and x.region == g.region and (x.vpc == g.vpc or None in (x.vpc, g.vpc))]
            if len(found) != 1:
                why = "not found" if not found else f"ambiguous ({', '.join(found)})"
                r.warn(_key(epath, "GroupName"), f"group name {quote(name)} of owner {owner} is "
                                                 f"{why} among the imported groups; rule not "
                                                 "imported")
                return
            gid = found[0]
        target = self.groups.get(gid)
        if target is None:
            target = self._stub(gid, user or g.owner, g.region, name, _key(epath, "GroupId"))
        elif user is not None and user != target.owner:
            r.warn(_key(epath, "UserId"), f"UserId {user} differs from group {gid}'s OwnerId "
                                          f"{target.owner}; the group's OwnerId is used")
        ref = gid if target.owner == g.owner else f"{target.owner}/{gid}"
        gpath = _key(epath, "GroupId") if "GroupId" in e else _key(epath, "GroupName")
        self._add_rule(g, direction, {**base, "group": ref}, epath, {**fields, "group": gpath},
                       desc, (*l4key, ("group", gid)))

    def _prefix_list_rule(self, g, direction, base, fields, e, epath, l4key) -> None:
        r = self.r
        e = r.mapping(e, epath, "a PrefixListId ({PrefixListId, Description})")
        if e is None:
            return
        r.keys(e, epath, PREFIX_LIST_ID_KEYS)
        plid = r.get(e, "PrefixListId", epath, str, required=True)
        desc = r.get(e, "Description", epath, str)
        if plid is _MISSING:
            return
        info = self.prefix_lists.get(plid)
        what = (f"{direction} rule {base['protocol']}"
                + (f" {base['ports']}" if "ports" in base else "") + f" of group {g.id} "
                f"from prefix list {plid}")
        if info is None or info["entries"] is None:
            r.warn(epath, f"{what} skipped: the prefix list's entries are not given "
                          "(--prefix-lists: describe-managed-prefix-lists and "
                          "get-managed-prefix-list-entries output)")
            self._take_id((g.id, direction, *l4key, ("pl", plid)))     # consumed, not reported
            return
        if not info["entries"]:
            r.warn(epath, f"{what}: the prefix list has no entries; nothing imported")
        sgr = self._take_id((g.id, direction, *l4key, ("pl", plid)))
        if sgr is None and self.rules_given and info["entries"]:
            g.origins.setdefault("_no_id", []).append(epath)
        for k, (cidr, cpath) in enumerate(info["entries"]):
            rule = {**base, "cidr": cidr}
            if sgr is not None:
                rule["id"] = f"{sgr}#{k}"
            self._add_rule(g, direction, rule, epath, {**fields, "cidr": cpath}, desc)

    def _take_id(self, key) -> Optional[str]:
        ids = self.rule_ids.get(key)
        if not ids:
            return None
        sgr, _ = ids.pop(0)
        return sgr

    def _add_rule(self, g: _Group, direction: str, rule: dict, path: str, fields: dict,
                  desc=_MISSING, match_key=None) -> None:
        if desc is not _MISSING:
            rule["description"] = desc
        if match_key is not None and "id" not in rule:
            sgr = self._take_id((g.id, direction, *match_key))
            if sgr is not None:
                rule["id"] = sgr
            elif self.rules_given:
                g.origins.setdefault("_no_id", []).append(path)
        rules = g.rules[direction]
        wpath = f"{direction}[{len(rules)}]"
        g.origins[wpath] = path
        for k, p in fields.items():
            g.origins[f"{wpath}.{k}"] = p
        if "id" in rule:
            g.origins[f"{wpath}.id"] = path
        rules.append(rule)

    def _unused_rule_ids(self, given: bool) -> None:
        if not given:
            return
        for key, ids in self.rule_ids.items():
            for sgr, path in ids:
                gid, direction = key[0], key[1]
                where = "no such group in the input" if gid not in self.groups or \
                    self.groups[gid].stub else f"no {direction} rule of group {gid} matches it"
                self.r.warn(path, f"rule {sgr}: {where}; its id is not used")
        for g in self.groups.values():
            missing = g.origins.pop("_no_id", None)
            if missing:
                self.r.warn(missing[0], f"{len(missing)} rule(s) of group {g.id} have no "
                                        "SecurityGroupRuleId in the rules input: fastsg's "
                                        "default ids are used")

    # -- groups not in the input, names ---------------------------------------------------------

    def _stub(self, gid: str, owner: str, region: str, name: Optional[str], path: str) -> _Group:
        g = _Group(id=gid, path=path, name=name or gid, owner=owner, region=region, stub=True,
                   tags={STUB_TAG: STUB_TAG_VALUE}, name_path=path)
        self.groups[gid] = g
        self.stubs.append(gid)
        self.r.warn(path, f"group {gid} (owner {owner}) is not in the security groups input: "
                          f"imported as a stub with no rules (tag {STUB_TAG}); add its "
                          "account's describe-security-groups output to import its rules")
        return g

    def _instance_groups(self) -> None:
        for inst in self.instances:
            region = inst.region or self.world_region
            owner = inst.entry.get("owner", DEFAULT_OWNER)
            for gid, gname, gpath in inst.groups:
                if gid not in self.groups:
                    self._stub(gid, owner, region, gname, _key(gpath, "GroupId"))

    def _unique_names(self) -> None:
        count = Counter((g.owner, g.region, g.name) for g in self.groups.values())
        for g in self.groups.values():
            if count[(g.owner, g.region, g.name)] < 2:
                continue
            suffix = g.vpc if g.vpc else g.id
            new = f"{g.name}@{suffix}"
            if sum(x.owner == g.owner and x.region == g.region and x.name == g.name
                   and x.vpc == g.vpc for x in self.groups.values()) > 1:
                new = f"{g.name}@{g.id}"
            self.r.note(g.name_path, f"group name {quote(g.name)} is used by several groups of "
                                     f"owner {g.owner} in region {g.region} (fastsg names are "
                                     f"unique per owner and region): group {g.id} is named "
                                     f"{quote(new)}")
            g.name = new

    # -- the world file ----------------------------------------------------------------------

    def _world_dict(self):
        origins = {}
        groups = []
        for i, g in enumerate(self.groups.values()):
            d = {"id": g.id, "name": g.name, "owner": g.owner, "region": g.region}
            if g.description is not None:
                d["description"] = g.description
            if g.tags:
                d["tags"] = g.tags
            d["ingress"] = g.rules["ingress"]
            d["egress"] = g.rules["egress"]
            base = f"security_groups[{i}]"
            origins[base] = g.path
            origins[f"{base}.id"] = _key(g.path, "GroupId") if not g.stub else g.path
            origins[f"{base}.name"] = g.name_path
            for k, p in g.origins.items():
                origins[f"{base}.{k}"] = p
            groups.append(d)
        instances = []
        limit = DEFAULT_LIMITS["groups_per_instance"]
        for k, inst in enumerate(self.instances):
            e = {key: v for key, v in inst.entry.items() if not key.startswith("_")}
            e["region"] = inst.region or self.world_region
            e["groups"] = [gid for gid, _, _ in inst.groups]
            if not e.get("tags"):
                e.pop("tags", None)
            limit = max(limit, min(len(e["groups"]), MAX_GROUPS_PER_INSTANCE))
            base = f"instances[{k}]"
            origins[base] = inst.path
            for key, p in inst.origins.items():
                origins[f"{base}.{key}"] = p
            for n, (_, _, gpath) in enumerate(inst.groups):
                origins[f"{base}.groups[{n}]"] = gpath
            origins[f"{base}.groups"] = inst.path
            instances.append(e)
        data = {"version": 1, "region": self.world_region, "order": DEFAULT_ORDER,
                "limits": {"groups_per_instance": limit},
                "security_groups": groups, "instances": instances}
        return data, origins


def _device_index(ni) -> int:
    att = ni.get("Attachment") if isinstance(ni, dict) else None
    idx = att.get("DeviceIndex") if isinstance(att, dict) else None
    return idx if isinstance(idx, int) and not isinstance(idx, bool) else 1 << 30


@functools.lru_cache(maxsize=1 << 16)
def _network(text: str):
    """The network ``text`` names (host bits dropped), or None."""
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        return None


def _norm_cidr(text: str) -> str:
    net = _network(text)
    return str(net) if net is not None else text


def _translate(p: Problem, origins: dict) -> Problem:
    """A problem of the generated world file -> the same problem at its JSON path."""
    path = p.path
    probe = path
    while probe:
        if probe in origins:
            where = origins[probe]
            if probe == path:
                return Problem(where, p.message)
            return Problem(where, f"{path}: {p.message}")
        cut = max(probe.rfind("."), probe.rfind("["))
        probe = probe[:cut] if cut > 0 else ""
    return Problem(path, p.message)


# =========================================================================================
# export

@dataclass
class ExportResult:
    """``security_groups``: describe-security-groups output; ``rules``:
    describe-security-group-rules output (carrying the rule ids); ``lossy``: what AWS cannot
    express (``Problem`` at world-file paths), left out or ignored; ``stubs``: the stub groups
    left out (they were never described, only referenced)."""
    security_groups: dict
    rules: dict
    lossy: list
    stubs: list


def export_aws(world: World, *, allow_lossy: bool = False) -> ExportResult:
    """A world's security groups as AWS describes them.

    AWS rules are allow-only under EC2's order: deny/reject rules, orders other than
    ``allow,deny``, rule priorities and ``log`` flags, ICMP rules with a code and any type,
    non-default conntrack/logging settings and pending timeline events cannot be exported.
    They are listed in ``lossy``; unless ``allow_lossy``, a ``WorldError`` listing them is
    raised instead.  With ``allow_lossy``, deny/reject rules and code-only ICMP rules are
    left out and the rest ignored.  Instances are not exported.
    """
    with world.lock:
        lossy = _lossy(world)
        if lossy and not allow_lossy:
            raise WorldError([Problem(p.path, f"{p.message} (not exportable to AWS; "
                                              "--allow-lossy exports the rest)")
                              for p in lossy])
        groups, rules, stubs = [], [], []
        for g in world.groups.values():
            if g.tags.get(STUB_TAG) == STUB_TAG_VALUE:
                stubs.append(g.id)
                continue
            groups.append(_export_group(world, g, rules))
    return ExportResult({"SecurityGroups": groups}, {"SecurityGroupRules": rules}, lossy, stubs)


def _lossy(world: World) -> list:
    out = []
    if world.order != DEFAULT_ORDER:
        out.append(Problem("order", f"order {quote(world.order)}: AWS always combines as "
                                    "allow,deny"))
    for k, inst in enumerate(world.instances.values()):
        if inst.order is not None and inst.order != DEFAULT_ORDER:
            out.append(Problem(f"instances[{k}].order", f"instance {inst.id} has order "
                                                        f"{quote(inst.order)}: AWS always "
                                                        "combines as allow,deny"))
    for name, defaults in (("conntrack", DEFAULT_CONNTRACK), ("logging", DEFAULT_LOGGING)):
        for key, v in getattr(world, name).items():
            if defaults.get(key) != v:
                out.append(Problem(f"{name}.{key}", f"{v} (default {defaults.get(key)}): "
                                                    "not a security group setting"))
    pending = world.pending_events()
    if pending:
        out.append(Problem("timeline", f"{len(pending)} pending timeline event(s): AWS "
                                       "describes a state, not changes"))
    for i, g in enumerate(world.groups.values()):
        for direction in DIRECTIONS:
            for j, rule in enumerate(g.rules(direction)):
                path = f"security_groups[{i}].{direction}[{j}]"
                if rule.action != "allow":
                    out.append(Problem(f"{path}.action", f"{rule.action} rule {rule.id} of "
                                                         f"group {g.id}: AWS rules are "
                                                         "allow-only (left out)"))
                if rule.priority != DEFAULT_PRIORITY:
                    out.append(Problem(f"{path}.priority", f"rule {rule.id} has priority "
                                                           f"{rule.priority}: AWS rules have "
                                                           "no priorities"))
                if rule.log:
                    out.append(Problem(f"{path}.log", f"rule {rule.id} logs its packets: AWS "
                                                      "rules have no log flag"))
                if _code_only(rule):
                    out.append(Problem(f"{path}.icmp_code", f"rule {rule.id} matches ICMP code "
                                                            f"{rule.icmp_code} of any type: AWS "
                                                            "needs a type for a code (left out)"))
    return out


def _code_only(rule) -> bool:
    """An ICMP rule with a code and any type, which AWS cannot express."""
    return rule.uses_icmp and rule.icmp_type == ANY and rule.icmp_code != ANY


def _arn(region: str, owner: str, gid: str) -> str:
    partition = ("aws-cn" if region.startswith("cn-") else
                 "aws-us-gov" if region.startswith("us-gov-") else "aws")
    return f"arn:{partition}:ec2:{region}:{owner}:security-group/{gid}"


def _aws_name(g) -> tuple:
    """(GroupName, VpcId or None): the import's ``name@vpc-id`` / ``name@sg-id`` undone."""
    base, sep, suffix = g.name.rpartition("@")
    if sep and base and _VPC_RE.match(suffix):
        return base, suffix
    if sep and base and suffix == g.id:
        return base, None
    return g.name, None


def _export_group(world: World, g, rules_out: list) -> dict:
    name, vpc = _aws_name(g)
    d = {"Description": g.description} if g.description is not None else {}
    d["GroupName"] = name
    d["IpPermissions"] = _permissions(world, g, "ingress", rules_out)
    d["OwnerId"] = g.owner
    d["GroupId"] = g.id
    d["IpPermissionsEgress"] = _permissions(world, g, "egress", rules_out)
    if g.tags:
        d["Tags"] = [{"Key": k, "Value": v} for k, v in g.tags.items()]
    if vpc is not None:
        d["VpcId"] = vpc
    d["SecurityGroupArn"] = _arn(g.region or world.region, g.owner, g.id)
    return d


def _l4(rule) -> dict:
    if rule.protocol == PROTO_ALL:
        return {"IpProtocol": "-1"}
    proto = AWS_PROTOCOL_NAMES.get(rule.protocol, str(rule.protocol))
    if rule.uses_ports:
        return {"IpProtocol": proto, "FromPort": rule.port_lo, "ToPort": rule.port_hi}
    if rule.uses_icmp:
        return {"IpProtocol": proto, "FromPort": rule.icmp_type, "ToPort": rule.icmp_code}
    return {"IpProtocol": proto}


def _peer_kind(rule) -> int:
    if rule.cidr is not None:
        return 0 if rule.cidr.version == 4 else 1
    return 2


def _permissions(world: World, g, direction: str, rules_out: list) -> list:
    """The allow rules of a list as IpPermissions that import back in the same order:
    consecutive rules with the same protocol and ports share one permission while their
    peers come in the import's order (IPv4, IPv6, groups)."""
    perms, cur, cur_l4, cur_kind = [], None, None, -1
    for rule in g.rules(direction):
        if rule.action != "allow" or _code_only(rule):
            continue
        l4, kind = _l4(rule), _peer_kind(rule)
        if cur is None or l4 != cur_l4 or kind < cur_kind:
            cur = {**l4, "UserIdGroupPairs": [], "IpRanges": [], "Ipv6Ranges": [],
                   "PrefixListIds": []}
            cur_l4 = l4
            perms.append(cur)
        cur_kind = kind
        desc = {"Description": rule.description} if rule.description is not None else {}
        entry = {"SecurityGroupRuleId": rule.id, "GroupId": g.id, "GroupOwnerId": g.owner,
                 "IsEgress": direction == "egress", "IpProtocol": l4["IpProtocol"],
                 "FromPort": l4.get("FromPort", -1), "ToPort": l4.get("ToPort", -1)}
        if kind == 0:
            cur["IpRanges"].append({**desc, "CidrIp": str(rule.cidr)})
            entry["CidrIpv4"] = str(rule.cidr)
        elif kind == 1:
            cur["Ipv6Ranges"].append({**desc, "CidrIpv6": str(rule.cidr)})
            entry["CidrIpv6"] = str(rule.cidr)
        else:
            target = world.groups[rule.group]
            pair = {**desc, "UserId": target.owner, "GroupId": target.id}
            if target.tags.get(STUB_TAG) == STUB_TAG_VALUE and target.name != target.id:
                pair["GroupName"] = target.name
            cur["UserIdGroupPairs"].append(pair)
            entry["ReferencedGroupInfo"] = {"GroupId": target.id, "UserId": target.owner}
        rules_out.append({**entry, **desc, "Tags": []})
    return perms
