"""World files: YAML/JSON reading and writing, and the model -> file syntax conversion.

``world_to_dict`` writes the smallest file that loads back to the same world: defaults are
left out (rule ``action: allow``, ``priority: 1000``, owner ``000000000000``, region equal to
the world's, ...), and an omitted ``egress`` stays omitted while it still holds the two
default rules.  Default rule ids are written only where they can no longer be derived from
the rule's position (after a revoke), and a group's id counters only when they are ahead of
its rules, as ``x-next-rule-ids`` (see ``validate``), so that load -> save -> load gives an
identical world, mutations included.  Settings (limits, conntrack, logging) are always
written in full.

Reading is strict where YAML 1.1 is treacherous: duplicate keys are errors, ISO timestamps
stay strings (``datetime`` would cut nanoseconds), integers with a leading zero
(``000000000000``, read as octal by YAML 1.1) or a colon (``22:23``, read as base 60) stay
strings, and only true/false are booleans (``yes``, ``no``, ``on``, ``off`` stay strings), as
YAML 1.2 reads them.
"""
from __future__ import annotations

import copy
import json
import os
import re
import secrets
import stat

import yaml

from ..errors import Problem, WorldError
from . import model
from .model import (ANY, DEFAULT_OWNER, DEFAULT_PRIORITY, DIRECTIONS, PROTOCOL_NAMES,
                    Instance, Rule, SecurityGroup, default_egress_rules, default_rule_id)
from .validate import NEXT_IDS_KEY, GroupIndex, format_time

_DEFAULT_ID_N = re.compile(r":(?:in|eg):(0|[1-9][0-9]*)$")


# ---------------------------------------------------------------------------------------
# model -> file syntax

def group_reference(index: GroupIndex, gid: str, owner: str, region: str,
                    preferred: str | None = None) -> str:
    """Text naming group ``gid`` that resolves back to it, and to it alone, for a holder
    (an instance, or a rule's group) of ``owner`` in ``region``: ``preferred`` (the text
    the file used), else the id, else ``owner/id``, else the name.  An id can be ambiguous
    when another group is *named* like it; ``owner/id`` then is not (ids have no "/")."""
    g = index.by_id.get(gid)
    if g is None:
        return preferred or gid
    for text in (preferred, gid, f"{g.owner}/{gid}", g.name):
        if text and index.resolve(text, owner, region) == (gid, None):
            return text
    return gid


def rule_to_dict(r: Rule, with_id: bool = True, ref=None) -> dict:
    """A rule in file syntax (its id only when ``with_id``; ``ref(group_id, text)`` picks
    the text of a group peer, see ``group_reference``)."""
    d = {"id": r.id} if with_id else {}
    d["protocol"] = PROTOCOL_NAMES.get(r.protocol, r.protocol)
    if r.uses_ports and (r.port_lo, r.port_hi) != (0, 65535):
        d["ports"] = r.port_lo if r.port_lo == r.port_hi else f"{r.port_lo}-{r.port_hi}"
    if r.uses_icmp and r.icmp_type != ANY:
        d["icmp_type"] = r.icmp_type
    if r.uses_icmp and r.icmp_code != ANY:
        d["icmp_code"] = r.icmp_code
    if r.cidr is not None:
        d["cidr"] = str(r.cidr)
    else:
        d["group"] = ref(r.group, r.group_ref) if ref else (r.group_ref or r.group)
    if r.action != "allow":
        d["action"] = r.action
    if r.priority != DEFAULT_PRIORITY:
        d["priority"] = r.priority
    if r.log:
        d["log"] = True
    if r.description is not None:
        d["description"] = r.description
    return d


def _rules_to_dicts(g: SecurityGroup, direction: str, ref=None) -> tuple[list, int]:
    """A rule list in file syntax and the id counter a load of it would end with.

    Mirrors ``validate.assign_rule_id``: a default id is left out when the load would give
    it anyway, else written (it then pins the counter on load).
    """
    out, counter = [], 0
    for r in g.rules(direction):
        implied = not r.explicit_id and r.id == default_rule_id(g.id, direction, counter)
        out.append(rule_to_dict(r, with_id=not implied, ref=ref))
        m = None if r.explicit_id else _DEFAULT_ID_N.search(r.id)
        counter = int(m.group(1)) + 1 if m else counter + 1
    return out, counter


def _egress_is_default(g: SecurityGroup) -> bool:
    return not g.egress_given and g.next_eg == 2 and g.egress == default_egress_rules(g.id)


def group_to_dict(g: SecurityGroup, world_region: str, index: GroupIndex | None = None) -> dict:
    """A group in file syntax (``index``: the world's groups, for references that load back
    unambiguously; see ``group_reference``)."""
    ref = None if index is None else (
        lambda gid, text: group_reference(index, gid, g.owner, g.region or world_region, text))
    d = {"id": g.id, "name": g.name}
    if g.owner != DEFAULT_OWNER:
        d["owner"] = g.owner
    if g.region and g.region != world_region:
        d["region"] = g.region
    if g.description is not None:
        d["description"] = g.description
    if g.tags:
        d["tags"] = dict(g.tags)
    ahead = {}
    for direction in DIRECTIONS:
        if direction == "egress" and _egress_is_default(g):
            continue
        d[direction], derived = _rules_to_dicts(g, direction, ref)
        counter = g.next_in if direction == "ingress" else g.next_eg
        if counter != derived:
            ahead[direction] = counter
    if ahead:
        d[NEXT_IDS_KEY] = ahead
    return d


def instance_to_dict(i: Instance, world_region: str, index: GroupIndex | None = None) -> dict:
    """An instance in file syntax (groups as ids; with ``index``, the world's groups, an id
    another group is named like is written ``owner/id``: see ``group_reference``)."""
    d = {"id": i.id}
    for key in ("private_ip", "private_ipv6", "public_ip"):
        if getattr(i, key) is not None:
            d[key] = str(getattr(i, key))
    if i.owner != DEFAULT_OWNER:
        d["owner"] = i.owner
    if i.region and i.region != world_region:   # "" (an Instance made in code): the world's
        d["region"] = i.region
    region = i.region or world_region
    d["groups"] = [group_reference(index, gid, i.owner, region) if index is not None else gid
                   for gid in i.groups]
    if i.order is not None:
        d["order"] = i.order
    if i.tags:
        d["tags"] = dict(i.tags)
    if i.state != "running":
        d["state"] = i.state
    return d


def event_to_dict(e) -> dict:
    return {"at": format_time(e.at_ns), e.kind: copy.deepcopy(e.args)}


def world_to_dict(w) -> dict:
    """The whole world in file syntax; the pending timeline events in file order."""
    index = GroupIndex(w.groups.values())
    d = {"version": w.version, "region": w.region, "order": w.order,
         "limits": dict(w.limits), "conntrack": dict(w.conntrack), "logging": dict(w.logging),
         "security_groups": [group_to_dict(g, w.region, index) for g in w.groups.values()],
         "instances": [instance_to_dict(i, w.region, index) for i in w.instances.values()]}
    pending = w.pending_events()
    if pending:
        d["timeline"] = [event_to_dict(e) for e in sorted(pending, key=lambda e: e.index)]
    return d


# ---------------------------------------------------------------------------------------
# YAML / JSON text

# libyaml's parser and emitter when PyYAML has them (tens of times faster on big worlds)
_BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_BaseDumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class _Loader(_BaseLoader):
    """SafeLoader with YAML 1.2 readings of the YAML 1.1 traps (module docstring)."""


def _construct_mapping(loader: _Loader, node, deep: bool = False):
    seen = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark,
                    f"duplicate key {key!r} (first at line {seen[key].line + 1})",
                    key_node.start_mark)
            seen[key] = key_node.start_mark
        except TypeError:
            pass    # unhashable key: the base constructor reports it
    return loader.construct_mapping(node, deep=deep)


def _construct_int(loader: _Loader, node):
    text = loader.construct_scalar(node)
    if ":" in text or re.fullmatch(r"[-+]?0[0-9_]+", text):
        return text
    return loader.construct_yaml_int(node)


# booleans as YAML 1.2 reads them: true/false only, so a group named ``off`` or a tag
# ``Backup: yes`` stays text (YAML 1.1 reads yes/no/on/off/y/n as booleans)
_BOOL_TAG = "tag:yaml.org,2002:bool"
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _BOOL_TAG]
    for first, resolvers in _BaseLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(_BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor("tag:yaml.org,2002:timestamp", _Loader.construct_yaml_str)
_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)


class _Flow(dict):
    """A mapping YAML writes on one line (rules, settings, tags, timeline events)."""


class _FlowList(list):
    """A list YAML writes on one line (an instance's groups)."""


class _Dumper(_BaseDumper):
    pass


_Dumper.add_representer(_Flow, lambda d, data: d.represent_mapping(
    "tag:yaml.org,2002:map", dict(data), flow_style=True))
_Dumper.add_representer(_FlowList, lambda d, data: d.represent_sequence(
    "tag:yaml.org,2002:seq", list(data), flow_style=True))


def _flowed(d: dict) -> dict:
    """A copy of a world dict with the small mappings marked for one-line YAML."""
    out = dict(d)
    for key in ("limits", "conntrack", "logging"):
        out[key] = _Flow(d[key])
    out["security_groups"] = [_flow_group(g) for g in d["security_groups"]]
    out["instances"] = [{**_flow_tags(i), "groups": _FlowList(i["groups"])}
                        for i in d["instances"]]
    if "timeline" in d:
        out["timeline"] = [_Flow(e) for e in d["timeline"]]
    return out


def _flow_group(g: dict) -> dict:
    g = _flow_tags(g)
    for direction in DIRECTIONS:
        if direction in g:
            g[direction] = [_Flow(r) for r in g[direction]]
    if NEXT_IDS_KEY in g:
        g[NEXT_IDS_KEY] = _Flow(g[NEXT_IDS_KEY])
    return g


def _flow_tags(d: dict) -> dict:
    d = dict(d)
    if "tags" in d:
        d["tags"] = _Flow(d["tags"])
    return d


def dump_yaml(d: dict) -> str:
    return yaml.dump(_flowed(d), Dumper=_Dumper, sort_keys=False, allow_unicode=True,
                     default_flow_style=False, width=100)


def dump_json(d: dict) -> str:
    return json.dumps(d, indent=2, ensure_ascii=False) + "\n"


def _is_json(path: str, text: str | None = None) -> bool:
    ext = os.path.splitext(path)[1].lower()
    if ext == ".json":
        return True
    if ext in (".yaml", ".yml") or text is None:
        return False
    return text.lstrip().startswith("{")


def reject_duplicate_keys(pairs):
    """``json`` object_pairs_hook: a key given twice is an error, not a silent overwrite."""
    d = {}
    for k, v in pairs:
        if k in d:
            raise ValueError(f"duplicate key {k!r}")
        d[k] = v
    return d


def parse_text(text: str, as_json: bool):
    """World file text -> data; a syntax error is a ``WorldError`` with line and column."""
    try:
        if as_json:
            return json.loads(text, object_pairs_hook=reject_duplicate_keys)
        return yaml.load(text, Loader=_Loader)      # noqa: S506 - a SafeLoader subclass
    except json.JSONDecodeError as e:
        raise WorldError([Problem("", f"invalid JSON at line {e.lineno}, column {e.colno}: "
                                      f"{e.msg}")]) from None
    except ValueError as e:     # duplicate JSON key
        raise WorldError([Problem("", f"invalid JSON: {e}")]) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = getattr(e, "problem", None) or str(e)
        raise WorldError([Problem("", f"invalid YAML{where}: {what}")]) from None


# ---------------------------------------------------------------------------------------
# files

def load_world(path) -> "model.World":
    """Read a world file (JSON for ``.json`` or text starting with ``{``, else YAML).

    Every problem is reported in one ``WorldError`` whose ``source`` is the file.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
    except OSError as e:
        raise WorldError([Problem("", f"cannot read: {e.strerror or e}")], source=path) from None
    except UnicodeDecodeError as e:
        raise WorldError([Problem("", f"not UTF-8 text (byte offset {e.start})")],
                         source=path) from None
    try:
        data = parse_text(text, _is_json(path, text))
    except WorldError as e:
        raise WorldError(e.problems, source=path) from None
    return model.World.from_dict(data, source=path)


def save_world(world, path) -> None:
    """Write ``world`` to ``path`` (``.json``: JSON, anything else: YAML), atomically."""
    path = os.fspath(path)
    data = world.to_dict()
    text = dump_json(data) if _is_json(path) else dump_yaml(data)
    write_atomic(path, text.encode("utf-8"))


def write_atomic(path: str, data: bytes) -> None:
    """Replace ``path`` with ``data`` so readers see the old file or the new one, never a part.

    A temporary file in the same directory (same file system, so the rename is atomic) is
    written and fsync-ed, then renamed over the target; the directory is fsync-ed so the
    rename survives a crash.  A symlink is followed (the link stays); an existing file's
    permissions are kept.  On any error the temporary file is removed.
    """
    target = os.path.realpath(path)
    directory = os.path.dirname(target)
    tmp = os.path.join(directory, f".{os.path.basename(target)}.{secrets.token_hex(6)}.tmp")
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        mode = None
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(directory)


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return      # not every platform opens directories
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
