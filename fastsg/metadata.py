"""Instance metadata, listing by group and tag, and fenced termination (spec section 8).

* ``security_groups``: an instance's group names in its ``groups`` order;
  ``ec2_metadata_text`` prints them exactly as ``ec2-metadata -s`` does.
* ``peers``: beyond EC2, for each of its groups the *other running* members with their id,
  private addresses and tags (what a node needs to find the rest of its cluster).
* ``list_instances``: the instances holding a group and/or carrying tags.
* ``terminate``: terminate instances, all or none, optionally *fenced* by a group: every
  named instance must hold it (``--only-group started-by-bob``), else nothing changes.

Group arguments (``group`` / ``only_group``) are resolved per instance, the way the
instance's own ``groups`` list is: an id (or ``owner/id``) names that group everywhere; a
name names the group of that name in the instance's owner and region (names are unique per
owner and region only, as in EC2).  A reference that names no group of the world at all is
an error (``WorldError`` with a did-you-mean); one that names a group none of the instances
can hold simply matches none.  An ambiguous reference (a name that is also another group's
id) is an error.

"Member" here means *holds the group in its ``groups`` list*, whatever its state: a stopped
instance of the group is listed by ``list_instances(group=...)`` and passes the fence of
``terminate``.  ``peers`` alone is about live traffic and lists running instances only
(``World.members``).  Queries work on instances of any state (a terminated instance still
has its metadata); only ``terminate`` refuses terminated instances (the world does).

Everything reads and mutates under ``world.lock``, so an engine classifying concurrently sees
a ``terminate`` of several instances either not at all or completely.
"""
from __future__ import annotations

from typing import Callable, Iterable, Optional

from .errors import Problem, WorldError
from .world.model import Instance, World
from .world.validate import did_you_mean, quote

__all__ = ["security_groups", "ec2_metadata_text", "peers", "list_instances", "terminate", "instance_dict"]


# ---------------------------------------------------------------------------------------
# metadata

def security_groups(world: World, instance_id: str) -> list[str]:
    """The names of the instance's groups, in its ``groups`` order (``ec2-metadata -s``)."""
    with world.lock:
        inst = _instance(world, instance_id)
        return [world.groups[gid].name for gid in inst.groups]


def ec2_metadata_text(names: list[str], quiet: bool = False) -> str:
    """``names`` as ``ec2-metadata -s`` prints an instance's groups (amazon-ec2-utils: the
    key ``security-groups: `` and the metadata service's answer, one name per line, or
    ``not available`` when there is none); ``quiet`` drops the key, as ``--quiet`` does.
    No trailing newline."""
    text = "\n".join(names) if names else "not available"
    return text if quiet else f"security-groups: {text}"


def peers(world: World, instance_id: str) -> dict:
    """For each group of the instance, in its ``groups`` order, the other running members.

    Returns ``{group_id: {"id": group_id, "name": name, "peers": [peer, ...]}}`` where each
    peer is ``{"id", "private_ip", "private_ipv6", "tags"}`` (addresses as text or None),
    in the world's instance order.  The instance itself is never its own peer; stopped and
    terminated instances are not peers.  Plain data, ready for JSON.
    """
    with world.lock:
        inst = _instance(world, instance_id)
        out = {}
        for gid in inst.groups:
            out[gid] = {"id": gid, "name": world.groups[gid].name,
                        "peers": [_peer(p) for p in world.members(gid) if p.id != inst.id]}
        return out


def _peer(p: Instance) -> dict:
    return {"id": p.id, "private_ip": _text(p.private_ip),
            "private_ipv6": _text(p.private_ipv6), "tags": dict(p.tags)}


def instance_dict(world: World, inst: Instance) -> dict:
    """An instance as plain data (for JSON output): state, addresses, owner, region, groups
    as ``{"id", "name"}`` in order, tags."""
    return {"id": inst.id, "state": inst.state,
            "private_ip": _text(inst.private_ip), "private_ipv6": _text(inst.private_ipv6),
            "public_ip": _text(inst.public_ip),
            "owner": inst.owner, "region": inst.region or world.region,
            "groups": [{"id": gid, "name": world.groups[gid].name} for gid in inst.groups],
            "tags": dict(inst.tags)}


# ---------------------------------------------------------------------------------------
# listing

def list_instances(world: World, group: Optional[str] = None,
                   tags: Optional[dict] = None) -> list[Instance]:
    """The instances (any state, world order) that hold ``group`` (an id, ``owner/id`` or a
    name, resolved in each instance's owner and region) and carry every tag of ``tags``
    (key -> value, exact match).  No filter: every instance.  An unknown group raises
    ``WorldError``."""
    tags = dict(tags or {})
    for k, v in tags.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise WorldError([Problem("tags", f"{quote(k)}: {quote(v)}: tag keys and values "
                                              "are strings")])
    with world.lock:
        holds = _group_filter(world, group, "group") if group is not None else None
        return [i for i in world.instances.values()
                if (holds is None or holds(i))
                and all(k in i.tags and i.tags[k] == v for k, v in tags.items())]


# ---------------------------------------------------------------------------------------
# termination

def terminate(world: World, ids: Iterable[str], only_group: Optional[str] = None,
              dry_run: bool = False) -> list[Instance]:
    """Terminate the instances ``ids``, all or none.

    Refused with a ``WorldError`` naming every offending instance, changing nothing, when
    an id is unknown, an instance is already terminated, an instance does not hold
    ``only_group`` (when given), or a pending timeline event would no longer apply.  A
    repeated id counts once.  ``dry_run``: the same checks, nothing changed.

    Returns the instances (the world's own objects, in the order named): terminated now,
    or, for a dry run, as they are (still to be terminated).  Only the state changes; the
    caller saves the world if it came from a file.
    """
    ids = list(dict.fromkeys(ids))
    with world.lock:
        probs: list[Problem] = []
        holds = None
        if only_group is not None:
            holds = _group_filter(world, only_group, "terminate.only_group")
        targets = []
        for k, iid in enumerate(ids):
            path = f"terminate.instances[{k}]"
            inst = world.instances.get(iid) if isinstance(iid, str) else None
            if inst is None:
                probs.append(Problem(path, f"{quote(iid)} is not an instance id"
                                           f"{did_you_mean(iid, world.instances)}"))
            elif inst.state == "terminated":
                probs.append(Problem(path, f"{quote(iid)}: instance is already terminated"))
            elif holds is not None and not holds(inst):
                probs.append(Problem(path, f"{quote(iid)}: instance is not a member of group "
                                           f"{quote(only_group)} (its groups: "
                                           f"{_group_names(world, inst)})"))
            else:
                targets.append(inst)
        if not probs and world.pending_events():
            probs = _simulate(world, ids)
        if probs:
            raise WorldError(probs)
        if not dry_run:
            # cannot fail: the same terminations were checked (and, with pending timeline
            # events, tried on a copy) under the lock we still hold
            for inst in targets:
                world.terminate(inst.id)
        return targets


def _simulate(world: World, ids: list) -> list[Problem]:
    """The problems of terminating ``ids`` one after another, tried on a copy of ``world``
    (a pending timeline event that would no longer apply refuses a termination)."""
    sim = world.copy()
    probs = []
    for k, iid in enumerate(ids):
        try:
            sim.terminate(iid)
        except WorldError as e:
            probs.extend(Problem(f"terminate.instances[{k}]", f"{quote(iid)}: {p}")
                         for p in e.problems)
    return probs


def _group_names(world: World, inst: Instance) -> str:
    return ", ".join(f"{world.groups[g].name} ({g})" for g in inst.groups) or "none"


# ---------------------------------------------------------------------------------------
# helpers

def _text(value) -> Optional[str]:
    return None if value is None else str(value)


def _instance(world: World, instance_id: str) -> Instance:
    inst = world.instances.get(instance_id) if isinstance(instance_id, str) else None
    if inst is None:
        raise WorldError([Problem("instance", f"{quote(instance_id)} is not an instance id"
                                              f"{did_you_mean(instance_id, world.instances)}")])
    return inst


def _group_filter(world: World, ref: str, path: str) -> Callable[[Instance], bool]:
    """``holds(instance)``: does the instance hold group ``ref``, resolved in its owner and
    region?  Raises ``WorldError`` (at ``path``) when ``ref`` names no group of the world,
    or is ambiguous where an instance would resolve it."""
    if not isinstance(ref, str) or not ref:
        raise WorldError([Problem(path, f"{quote(ref)} is not a non-empty string")])
    if not _known(world, ref):
        world.resolve_group(ref, None, world.region, path=path)     # raises, with a hint
        raise WorldError([Problem(path, f"{quote(ref)} is not a group")])   # pragma: no cover
    resolved: dict[tuple, Optional[str]] = {}       # (owner, region) -> group id or None

    def in_scope(owner: str, region: str) -> Optional[str]:
        key = (owner, region)
        if key not in resolved:
            try:
                resolved[key] = world.resolve_group(ref, owner, region, path=path)
            except WorldError:
                named_here = "/" in ref or ref in world.groups or any(
                    g.name == ref and g.owner == owner and g.region == region
                    for g in world.groups.values())
                if named_here:      # ambiguous, or owner/id of another owner: an error
                    raise
                resolved[key] = None    # no such group where this instance lives
        return resolved[key]

    def holds(inst: Instance) -> bool:
        gid = in_scope(inst.owner, inst.region or world.region)
        return gid is not None and gid in inst.groups

    return holds


def _known(world: World, ref: str) -> bool:
    """Does ``ref`` name some group of the world (id, ``owner/id`` or a name anywhere)?"""
    if ref in world.groups:
        return True
    owner, slash, gid = ref.partition("/")
    if slash and gid in world.groups and world.groups[gid].owner == owner:
        return True
    return any(g.name == ref for g in world.groups.values())
