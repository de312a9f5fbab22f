"""AWS interop commands: ``fastsg import aws`` and ``fastsg export aws``.

``import aws`` reads what ``aws ec2 describe-security-groups`` (and ``describe-instances``,
``describe-security-group-rules``, ``describe-managed-prefix-lists`` /
``get-managed-prefix-list-entries``) print and writes a world file; ``export aws`` writes a
world's groups back in ``describe-security-groups`` shape.  The mapping is documented in
``fastsg.world.aws``.  Warnings and the summary go to stderr; the world (when no ``-o`` is
given) or the exported JSON goes to stdout.
"""
from __future__ import annotations

import functools
import json
import os
import sys

import click
from rich.markup import escape

from ..errors import FastsgError
from ..world import load_world
from ..world import aws as A
from ..world.files import write_atomic
from . import terminal


def _fastsg_errors(fn):
    """fastsg's own errors -> a clear message and exit status 2 (as ``fastsg`` does), so the
    commands behave the same when invoked on their own."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FastsgError as exc:
            for w in getattr(exc, "warnings", ()):
                terminal.warn(escape(str(w)))
            terminal.error(escape(str(exc)))
            sys.exit(2)
    return wrapper


def _write_json(path: str, obj) -> None:
    """``obj`` as JSON: on stdout for ``-``, else atomically to ``path``."""
    if path == "-":
        terminal.emit_json(obj)
    else:
        write_atomic(path, (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode())


# ---------------------------------------------------------------------------------------
# fastsg import aws
# ---------------------------------------------------------------------------------------
@click.group("import")
def import_group():
    """Build a world from another system's description of its firewall."""


def _prefix_list_docs(specs) -> list:
    docs = []
    for spec in specs:
        plid, sep, path = spec.partition("=")
        if not sep or os.path.exists(spec) or not A._PL_ID_RE.match(plid):
            plid, path = None, spec
        docs += A.read_documents(path, prefix_list_id=plid)
    return docs


@import_group.command("aws")
@click.option("--security-groups", "-g", "sg_files", multiple=True, required=True,
              type=click.Path(dir_okay=False), metavar="FILE",
              help="`aws ec2 describe-security-groups` output (repeatable: several accounts, "
                   "regions or pages; - reads standard input).")
@click.option("--instances", "-i", "inst_files", multiple=True, type=click.Path(dir_okay=False),
              metavar="FILE", help="`aws ec2 describe-instances` output (repeatable).")
@click.option("--rules", "-r", "rule_files", multiple=True, type=click.Path(dir_okay=False),
              metavar="FILE", help="`aws ec2 describe-security-group-rules` output: rule ids "
                                   "(repeatable).")
@click.option("--prefix-lists", "pl_specs", multiple=True, metavar="[PL_ID=]FILE",
              help="`aws ec2 describe-managed-prefix-lists` or "
                   "`get-managed-prefix-list-entries` output (repeatable); entries name their "
                   "list by PL_ID=, by a file named <pl-id>.json, or by a PrefixListId key.")
@click.option("--region", default=None,
              help="Region of whatever the input does not place, and the world's default "
                   "(default: the input's most common region).")
@click.option("--strict", is_flag=True, help="Refuse (exit status 2) when there is any warning.")
@click.option("-o", "--output", default="-", show_default=True, metavar="WORLD",
              help="World file to write (.json: JSON, else YAML); - prints it as JSON on "
                   "stdout.")
@click.option("--json", "as_json", is_flag=True,
              help="Print a JSON summary (counts, warnings) on stdout; needs -o.")
@_fastsg_errors
def import_aws_cmd(sg_files, inst_files, rule_files, pl_specs, region, strict, output,
                   as_json):
    """Import real security groups (and instances) from the AWS CLI's JSON into a world.

    \b
    aws ec2 describe-security-groups > sg.json
    aws ec2 describe-instances > instances.json
    fastsg import aws -g sg.json -i instances.json -o world.yaml
    """
    if as_json and output == "-":
        raise click.UsageError("--json prints the summary on stdout: give the world file "
                               "with -o")
    if sum(f == "-" for f in (*sg_files, *inst_files, *rule_files, *pl_specs)) > 1:
        raise click.UsageError("only one input can be - (standard input)")
    read = A.read_documents
    result = A.import_aws([d for f in sg_files for d in read(f)],
                          [d for f in inst_files for d in read(f)],
                          [d for f in rule_files for d in read(f)],
                          _prefix_list_docs(pl_specs), region=region, strict=strict)
    for note in result.notes:
        terminal.status(escape(f"note: {note}"))
    for w in result.warnings:
        terminal.warn(escape(str(w)))
    if output == "-":
        terminal.emit_json(result.data)
    else:
        result.world.save(output)
    s = result.stats
    terminal.status(escape(f"imported {s['groups']} security groups"
                    + (f" (+{s['stub_groups']} stubs)" if s["stub_groups"] else "")
                    + f", {s['rules']} rules, {s['instances']} instances"
                    + (f" -> {output}" if output != "-" else "")
                    + f"; {s['warnings']} warning{'s' if s['warnings'] != 1 else ''}"))
    if as_json:
        terminal.emit_json({"world": output, **s,
                            "warning_list": [{"path": w.path, "message": w.message}
                                             for w in result.warnings],
                            "notes": [{"path": n.path, "message": n.message}
                                      for n in result.notes]})


# ---------------------------------------------------------------------------------------
# fastsg export aws
# ---------------------------------------------------------------------------------------
@click.group("export")
def export_group():
    """Write a world in another system's format."""


@export_group.command("aws")
@click.argument("world_path", metavar="WORLD", type=click.Path(dir_okay=False))
@click.option("-o", "--output", default="-", show_default=True, metavar="FILE",
              help="Where to write the describe-security-groups JSON (- = stdout).")
@click.option("--rules-output", default=None, metavar="FILE",
              help="Also write describe-security-group-rules JSON (the rule ids), for "
                   "`fastsg import aws --rules`.")
@click.option("--allow-lossy", is_flag=True,
              help="Export what AWS can express and warn about the rest (deny/reject rules "
                   "are left out; orders, priorities, log flags ignored).")
@_fastsg_errors
def export_aws_cmd(world_path, output, rules_output, allow_lossy):
    """Write WORLD's security groups as `aws ec2 describe-security-groups` prints them.

    AWS rules are allow-only under EC2's combining order: a world using deny/reject rules,
    another order, priorities or log flags is refused (exit status 2, every such thing
    listed) unless --allow-lossy.
    """
    if rules_output == "-" and output == "-":
        raise click.UsageError("only one of -o and --rules-output can be stdout")
    world = load_world(world_path)
    result = A.export_aws(world, allow_lossy=allow_lossy)
    for p in result.lossy:
        terminal.warn(escape(f"{p} (not exported)"))
    _write_json(output, result.security_groups)
    if rules_output is not None:
        _write_json(rules_output, result.rules)
    n = len(result.security_groups["SecurityGroups"])
    terminal.status(escape(f"exported {n} security group{'s' if n != 1 else ''}, "
                    f"{len(result.rules['SecurityGroupRules'])} rules"
                    + (f" -> {output}" if output != "-" else "")
                    + (f"; {len(result.stubs)} stub group(s) left out (referenced only)"
                       if result.stubs else "")
                    + (f"; {len(world.instances)} instance(s) not exported (security groups "
                       "only)" if world.instances else "")))


COMMANDS = [import_group, export_group]
