"""Instance commands (spec section 8): ``fastsg metadata``, ``fastsg instances`` and
``fastsg terminate``.

``terminate`` rewrites the world file: atomically (``World.save``: a temporary file in the
same directory, fsync, rename, fsync of the directory), and under an exclusive advisory lock
(``flock``) on the world file taken *before* it is read, so two ``fastsg terminate`` runs on
the same file cannot lose each other's terminations (each re-reads the file the other
wrote).  Writers that do not take the lock (the Python API, other tools) are not held off.
The file is rewritten in fastsg's canonical syntax: comments and layout are not kept.
"""
from __future__ import annotations

import os
from contextlib import contextmanager

import click
from rich.table import Table

from .. import metadata as M
from ..errors import Problem, WorldError
from ..world import load_world
from . import terminal

try:
    import fcntl
except ImportError:         # pragma: no cover - not on POSIX: no lock
    fcntl = None

WORLD_OPTION = click.option("--world", "-w", "world_path", required=True,
                            type=click.Path(dir_okay=False), help="World file (YAML or JSON).")
JSON_OPTION = click.option("--json", "as_json", is_flag=True,
                           help="Print the result as JSON on stdout.")


# ---------------------------------------------------------------------------------------
# fastsg metadata
# ---------------------------------------------------------------------------------------
@click.command("metadata")
@WORLD_OPTION
@click.argument("instance")
@click.argument("what", required=False, default="security-groups",
                type=click.Choice(["security-groups", "peers"]))
@click.option("--quiet", is_flag=True,
              help="security-groups: the names alone, without the 'security-groups: ' key "
                   "(as `ec2-metadata --quiet -s`).")
@JSON_OPTION
def metadata_cmd(world_path, instance, what, quiet, as_json):
    """Metadata of INSTANCE: its security-groups (the default; names one per line in the
    instance's order, exactly as `ec2-metadata -s` prints them: 'security-groups: ' before
    the first, or 'not available' when it holds none) or its peers (for each of its groups,
    the other running members with their private addresses and tags)."""
    world = load_world(world_path)
    if what == "security-groups":
        names = M.security_groups(world, instance)
        if as_json:
            terminal.emit_json({"instance": instance, "security_groups": names})
        else:
            terminal.plain(M.ec2_metadata_text(names, quiet=quiet))
        return
    found = M.peers(world, instance)
    if as_json:
        terminal.emit_json({"instance": instance, "peers": found})
        return
    rows = [(f"{g['name']}\n{g['id']}", p["id"], _lines(p["private_ip"], p["private_ipv6"]),
             _tags(p["tags"])) for g in found.values() for p in g["peers"]]
    lonely = [f"{g['name']} ({g['id']})" for g in found.values() if not g["peers"]]
    if rows:
        _table(f"Peers of {instance}", ["group", "peer", "private addresses", "tags"], rows,
               whole=(1,))
    n = len({p["id"] for g in found.values() for p in g["peers"]})
    line = f"{instance}: {n} peer{'s' if n != 1 else ''} in {len(found)} group" \
           f"{'s' if len(found) != 1 else ''}"
    if lonely:
        line += f"; no other running member in {', '.join(lonely)}"
    terminal.status(line)


# ---------------------------------------------------------------------------------------
# fastsg instances
# ---------------------------------------------------------------------------------------
def _parse_tags(ctx, param, values) -> dict:
    tags = {}
    for v in values:
        key, eq, value = v.partition("=")
        if not eq or not key:
            raise click.BadParameter(f"{v!r} is not KEY=VALUE", ctx=ctx, param=param)
        if key in tags and tags[key] != value:
            raise click.BadParameter(f"tag {key!r} given twice with different values "
                                     f"({tags[key]!r}, {value!r}): no instance can match",
                                     ctx=ctx, param=param)
        tags[key] = value
    return tags


@click.command("instances")
@WORLD_OPTION
@click.option("--group", "-g", default=None,
              help="Only instances holding this group (id, owner/id, or a name in the "
                   "instance's owner and region).")
@click.option("--tag", "-t", "tags", multiple=True, callback=_parse_tags, metavar="KEY=VALUE",
              help="Only instances with this tag (repeat: all must match).")
@JSON_OPTION
def instances_cmd(world_path, group, tags, as_json):
    """List the instances of WORLD (any state) with their addresses, groups and tags."""
    world = load_world(world_path)
    found = M.list_instances(world, group=group, tags=tags)
    if as_json:
        terminal.emit_json({"instances": [M.instance_dict(world, i) for i in found]})
        return
    rows = [(i.id, i.state,
             _lines(i.private_ip, i.private_ipv6,
                    None if i.public_ip is None else f"{i.public_ip} (public)"),
             "\n".join(world.groups[g].name for g in i.groups) or "-", _tags(i.tags))
            for i in found]
    if rows:
        _table("Instances", ["id", "state", "addresses", "groups", "tags"], rows,
               whole=(0, 1))
    terminal.status(f"{len(found)} instance{'s' if len(found) != 1 else ''} of "
                    f"{len(world.instances)}")


# ---------------------------------------------------------------------------------------
# fastsg terminate
# ---------------------------------------------------------------------------------------
@click.command("terminate")
@WORLD_OPTION
@click.argument("ids", nargs=-1, required=True, metavar="ID...")
@click.option("--only-group", default=None, metavar="GROUP",
              help="Refuse, changing nothing, unless every named instance holds GROUP "
                   "(id, owner/id, or a name in the instance's owner and region).")
@click.option("--dry-run", is_flag=True, help="Check and report; write nothing.")
@JSON_OPTION
def terminate_cmd(world_path, ids, only_group, dry_run, as_json):
    """Terminate the instances ID... of WORLD and rewrite the world file atomically.

    All or none: if any instance is unknown, already terminated, or (with --only-group)
    does not hold the group, nothing is changed or written, every offending instance is
    named, and the exit status is 2.
    """
    with _locked(world_path, exclusive=not dry_run):
        world = load_world(world_path)
        done = M.terminate(world, ids, only_group=only_group, dry_run=dry_run)
        if not dry_run:
            try:
                world.save(world_path)
            except OSError as e:
                raise WorldError([Problem("", f"cannot write the world file (it is "
                                              f"unchanged): {e.strerror or e}")],
                                 source=world_path) from None
    names = [i.id for i in done]
    if as_json:
        terminal.emit_json({"world": world_path, "dry_run": dry_run,
                            "only_group": only_group, "terminated": names,
                            "written": not dry_run})
        return
    fence = f" (all members of {only_group})" if only_group is not None else ""
    if dry_run:
        terminal.status(f"dry run: would terminate {len(names)} instance"
                        f"{'s' if len(names) != 1 else ''}{fence}: {', '.join(names)}; "
                        f"{world_path} not written")
    else:
        terminal.status(f"terminated {len(names)} instance{'s' if len(names) != 1 else ''}"
                        f"{fence}: {', '.join(names)}; {world_path} rewritten")


@contextmanager
def _locked(path: str, exclusive: bool = True):
    """Hold an exclusive ``flock`` on the world file ``path`` (on the file itself: no lock
    file is left behind).

    ``World.save`` replaces the file by a new inode, so a waiter that then gets the lock may
    hold it on the old, replaced file: it checks after locking that ``path`` is still the
    file it locked, and retries on the new one if not.  Without ``exclusive``, or without
    ``fcntl``, or when the file cannot be opened (the load then reports why): no lock.
    """
    if not exclusive or fcntl is None:
        yield
        return
    while True:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            held, now = os.fstat(fd), _stat(path)
            if now is not None and (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino):
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)        # replaced (or removed) while we waited: lock the current file
    try:
        yield
    finally:
        os.close(fd)        # closing releases the lock


def _stat(path: str):
    try:
        return os.stat(path)
    except OSError:
        return None


def _table(title: str, columns, rows, whole=()) -> None:
    """A human table on stderr (``terminal.err``) that never cuts a value short: columns
    ``whole`` (instance ids, states) are never wrapped, the others fold where they must."""
    t = Table(title=title, title_justify="left")
    for n, c in enumerate(columns):
        t.add_column(c, no_wrap=n in whole, overflow="fold")
    for r in rows:
        t.add_row(*[str(x) for x in r])
    terminal.err.print(t)


def _lines(*values) -> str:
    return "\n".join(str(v) for v in values if v is not None) or "-"


def _tags(tags: dict) -> str:
    return "\n".join(f"{k}={v}" for k, v in tags.items()) or "-"


COMMANDS = [metadata_cmd, instances_cmd, terminate_cmd]
