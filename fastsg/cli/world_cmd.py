"""World commands: ``fastsg check``, ``fastsg classify`` and ``fastsg generate world|traffic``."""
from __future__ import annotations

import os
import warnings
from collections import Counter

import click

from .. import replay as R
from ..engine import Engine
from ..world import World, load_world
from . import terminal


# ---------------------------------------------------------------------------------------
# fastsg check
# ---------------------------------------------------------------------------------------
def world_summary(world: World) -> dict:
    """Counts of a loaded world, and of its compiled form (which also proves it compiles)."""
    groups = list(world.groups.values())
    instances = list(world.instances.values())
    compiled = Engine(world, stateful=False).compiled
    actions = Counter(r.action for g in groups for r in g.ingress + g.egress)
    return {
        "groups": len(groups),
        "rules": {"ingress": sum(len(g.ingress) for g in groups),
                  "egress": sum(len(g.egress) for g in groups),
                  "by_action": {a: actions.get(a, 0) for a in ("allow", "deny", "reject")},
                  "group_peers": sum(r.group is not None for g in groups
                                     for r in g.ingress + g.egress)},
        "instances": dict(Counter(i.state for i in instances)) | {"total": len(instances)},
        "policies": compiled.policies,
        "owners": len({g.owner for g in groups} | {i.owner for i in instances}),
        "regions": sorted({g.region for g in groups} | {i.region for i in instances}),
        "order": world.order,
        "timeline_events": len(world.timeline),
        "compiled_bytes": compiled.nbytes,
    }


@click.command("check")
@click.argument("world_path", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
def check_cmd(world_path, as_json):
    """Validate WORLD and summarise it (every problem is listed on error, exit status 2)."""
    summary = world_summary(load_world(world_path))
    if as_json:
        terminal.emit_json({"world": world_path, "valid": True, **summary})
        return
    rules = summary["rules"]
    inst = summary["instances"]
    rows = [("security groups", f"{summary['groups']:,}"),
            ("rules (ingress + egress)", f"{rules['ingress'] + rules['egress']:,} "
                                         f"({rules['ingress']:,} + {rules['egress']:,})"),
            ("  allow / deny / reject", " / ".join(f"{rules['by_action'][a]:,}"
                                                   for a in ("allow", "deny", "reject"))),
            ("  group peers", f"{rules['group_peers']:,}"),
            ("instances", f"{inst['total']:,} ("
             + ", ".join(f"{inst.get(s, 0):,} {s}" for s in ("running", "stopped", "terminated"))
             + ")"),
            ("policies (distinct group lists x order)", f"{summary['policies']:,}"),
            ("owners / regions", f"{summary['owners']} / {', '.join(summary['regions'])}"),
            ("default order", summary["order"]),
            ("timeline events", f"{summary['timeline_events']:,}"),
            ("compiled tables", f"{summary['compiled_bytes']:,} bytes")]
    terminal.table(f"{world_path}: valid", ["", ""], rows)


# ---------------------------------------------------------------------------------------
# fastsg classify
# ---------------------------------------------------------------------------------------
@click.command("classify")
@click.option("--world", "-w", "world_path", required=True, type=click.Path(dir_okay=False))
@click.option("--src", required=True, help="Source address (IPv4 or IPv6).")
@click.option("--dst", required=True, help="Destination address.")
@click.option("--proto", default="tcp", show_default=True,
              help="tcp, udp, icmp, icmpv6 or a protocol number.")
@click.option("--sport", type=click.IntRange(0, 65535), default=40000, show_default=True,
              help="Source port (ICMP echo: the identifier).")
@click.option("--dport", type=click.IntRange(0, 65535), default=0, show_default=True)
@click.option("--icmp-type", type=click.IntRange(0, 255), default=None,
              help="ICMP type (default: echo request).")
@click.option("--icmp-code", type=click.IntRange(0, 255), default=0, show_default=True)
@click.option("--fragment", is_flag=True, help="A non-first fragment (no ports).")
@click.option("--at", "at", default=None,
              help="Apply the timeline events a packet at this time would see (epoch seconds "
                   "or ISO-8601).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
def classify_cmd(world_path, src, dst, proto, sport, dport, icmp_type, icmp_code, fragment, at,
                 as_json):
    """Classify one packet against WORLD and show the deciding rule of each check."""
    world = load_world(world_path)
    try:
        result = R.classify_packet(world, src=src, dst=dst, proto=proto, sport=sport,
                                   dport=dport, icmp_type=icmp_type, icmp_code=icmp_code,
                                   fragment=fragment, at_ns=_time_ns(at))
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    if as_json:
        terminal.emit_json(result)
        return
    rows = []
    for direction in ("egress", "ingress"):
        check = result[direction]
        if check is None:
            rows.append((direction, "-", "not checked", "", ""))
            continue
        d = check["rule_detail"]
        rows.append((direction, check["instance"], check["result"], check["rule"],
                     f"{_rule_text(d['rule'])} (group {d['group']} {d['group_name']})" if d
                     else "no rule matched"))
    terminal.table("Checks", ["check", "instance", "result", "deciding rule", "rule"], rows)
    terminal.plain(result["verdict"])


def _rule_text(rule: dict) -> str:
    """A rule in one line: ``deny tcp 22 from 10.0.0.0/8`` (the peer as written)."""
    parts = [rule.get("action", "allow"), str(rule["protocol"])]
    if "ports" in rule:
        parts.append(str(rule["ports"]))
    if "icmp_type" in rule:
        parts.append(f"type {rule['icmp_type']}" + (f" code {rule['icmp_code']}"
                                                    if "icmp_code" in rule else ""))
    parts.append(f"peer {rule['cidr']}" if "cidr" in rule else f"peer group {rule['group']}")
    if "priority" in rule:
        parts.append(f"priority {rule['priority']}")
    return " ".join(parts)


def _time_ns(text):
    """``--at`` -> ns, read the way world files read ``at``."""
    if text is None:
        return None
    from ..world.validate import Problems, parse_time
    probs = Problems()
    ns = parse_time(text, "--at", probs)
    if probs:
        raise click.BadParameter(str(probs.items[0]))
    return ns


# ---------------------------------------------------------------------------------------
# fastsg generate world | traffic
# ---------------------------------------------------------------------------------------
@click.group("generate")
def generate_cmd():
    """Seeded synthetic worlds and traffic (same arguments and seed: same bytes)."""


SHARE = click.FloatRange(0.0, 1.0)


@generate_cmd.command("world")
@click.option("--rules", type=click.IntRange(min=0), required=True,
              help="Rule entries in all (ingress + explicit egress).")
@click.option("--groups", type=click.IntRange(min=1), required=True)
@click.option("--instances", type=click.IntRange(min=0), required=True)
@click.option("--deny-share", type=SHARE, default=0.0, show_default=True)
@click.option("--group-peer-share", type=SHARE, default=0.2, show_default=True)
@click.option("--ipv6-share", type=SHARE, default=0.1, show_default=True)
@click.option("--accounts", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--regions", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--order", type=click.Choice(["allow,deny", "deny,allow", "priority"]),
              default="allow,deny", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="World file to write (.json: JSON, else YAML).")
def generate_world_cmd(rules, groups, instances, deny_share, group_peer_share, ipv6_share,
                       accounts, regions, order, seed, output):
    """Write a realistic synthetic world file."""
    from ..generate import generate_world
    try:
        d = generate_world(rules, groups, instances, deny_share=deny_share,
                           group_peer_share=group_peer_share, ipv6_share=ipv6_share, seed=seed,
                           accounts=accounts, order=order, regions=regions)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    # through the model: validated (never a file that would not load back), written in the
    # canonical file syntax, atomically
    world = World.from_dict(d)
    world.save(output)
    n_rules = sum(len(g.ingress) + len(g.egress) for g in world.groups.values())
    terminal.status(f"wrote {output}: {len(world.groups):,} groups, {n_rules:,} rules "
                    f"(default egress rules included), {len(world.instances):,} instances")


@generate_cmd.command("traffic")
@click.option("--world", "-w", "world_path", required=True, type=click.Path(dir_okay=False))
@click.option("--packets", type=click.IntRange(min=0), required=True)
@click.option("--drop-share", type=SHARE, default=0.1, show_default=True,
              help="Share of packets refused (DROP or REJECT).")
@click.option("--flows", type=click.IntRange(min=1), default=None,
              help="Flows (default: packets / 20).")
@click.option("--ipv6-share", type=SHARE, default=None,
              help="Share of IPv6 flows (default 0.1 when the world has IPv6 instances).")
@click.option("--stateless", is_flag=True,
              help="Aim the drop share at stateless replay (default: stateful, as replay will be).")
@click.option("--link", type=click.Choice(["ethernet", "raw"]), default="ethernet",
              show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print what was generated as JSON on stdout.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Capture to write (classic pcap, nanosecond timestamps).")
def generate_traffic_cmd(world_path, packets, drop_share, flows, ipv6_share, stateless, link,
                         seed, as_json, output):
    """Write a synthetic capture of traffic for WORLD."""
    from ..generate import generate_traffic
    from ..packet_build import write_capture
    world = load_world(world_path)
    details: dict = {}
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            batch = generate_traffic(world, packets, drop_share=drop_share, flows=flows,
                                     ipv6_share=ipv6_share, seed=seed, stateful=not stateless,
                                     details=details)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    for w in caught:
        terminal.warn(str(w.message))
    tmp = f"{output}.{os.getpid()}.tmp"
    try:
        write_capture(tmp, batch, link=link)
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    if as_json:
        terminal.emit_json({"output": output, **details})
        return
    achieved = details.get("engine_drop_share", details.get("predicted_drop_share"))
    terminal.status(f"wrote {output}: {len(batch):,} packets, {details.get('flows', 0):,} flows"
                    + (f", drop share {achieved:.4f}" if achieved is not None else ""))


COMMANDS = [check_cmd, classify_cmd, generate_cmd]
