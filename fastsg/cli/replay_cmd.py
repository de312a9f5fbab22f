"""``fastsg replay``: parse the options, call ``fastsg.replay.replay``, print the summary."""
from __future__ import annotations

import os

import click

from .. import replay as R
from ..world import load_world
from . import terminal

PROGRESS_MIN_BYTES = 32 << 20      # below this a replay is over before a bar would help
TOP = 10                           # rows of the human tables of rules and instances


@click.command("replay")
@click.argument("captures", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--world", "-w", "world_path", required=True, type=click.Path(dir_okay=False),
              help="World file (YAML or JSON).")
@click.option("--stateless", is_flag=True,
              help="Judge every packet by the rules alone (no connection tracking).")
@click.option("--threads", type=click.IntRange(min=0), default=None,
              help="Classifier threads (default and 0: all cores).")
@click.option("--verdicts", "verdicts_path", type=click.Path(dir_okay=False),
              help="Write the per-packet verdict CSV here.")
@click.option("--split", "split_dir", type=click.Path(file_okay=False),
              help="Write accepted/dropped/rejected/unmanaged/malformed.pcap into this directory.")
@click.option("--flow-log", "flow_log_path", type=click.Path(dir_okay=False),
              help="Write the flow log (logged check events, per the world's logging settings) here.")
@click.option("--log-format", type=click.Choice(R.FLOW_LOG_FORMATS), default="aws",
              show_default=True, help="Flow-log format: VPC Flow Logs v2 lines, or JSON lines.")
@click.option("--responses", "responses_path", type=click.Path(dir_okay=False),
              help="Write the answers to REJECTed packets (TCP RST / ICMP unreachable) as a "
                   "raw-IP pcap here.")
@click.option("--rule-stats", is_flag=True,
              help="Print every rule's hit counters (packets and bytes) as a table on stderr.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
@click.option("--chunk-packets", type=click.IntRange(min=1), default=R.DEFAULT_CHUNK_PACKETS,
              show_default=True, help="Packets read and classified at a time (bounds memory).")
def replay_cmd(captures, world_path, stateless, threads, verdicts_path, split_dir,
               flow_log_path, log_format, responses_path, rule_stats, as_json, chunk_packets):
    """Classify every packet of CAPTURE... (pcap/pcapng, in the order given) against WORLD.

    Connection tracking is on (--stateless turns it off).  Timeline events of the world
    apply as the capture's time passes them.  Outputs are written only when the whole
    replay succeeds.
    """
    world = load_world(world_path)
    total = sum(_size(p) for p in captures)
    show_bar = total >= PROGRESS_MIN_BYTES and terminal.err.is_terminal
    with terminal.progress("replay", total, enabled=show_bar) as advance:
        summary = R.replay(world, captures, stateful=not stateless, threads=threads,
                           chunk_packets=chunk_packets, verdicts=verdicts_path,
                           split_dir=split_dir, flow_log=flow_log_path, log_format=log_format,
                           responses=responses_path, progress=advance,
                           on_warning=terminal.warn)
    if rule_stats:
        print_rule_stats(summary)
    if as_json:
        terminal.emit_json(summary.to_dict())
    else:
        print_summary(summary, top_rules=not rule_stats)


def _size(path) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0        # the replay itself reports the missing file


def print_rule_stats(summary: R.ReplaySummary) -> None:
    """Every rule's hit counters, busiest first (then by name), with their total."""
    counters = summary.rule_counters
    rows = sorted(((k, v["packets"], v["bytes"]) for k, v in counters.items()),
                  key=lambda r: (-r[1], -r[2], r[0]))
    terminal.counts_table(f"Rule counters ({len(rows)} rules and reasons)",
                          ["rule", "packets", "bytes"], rows,
                          total=("total", sum(r[1] for r in rows), sum(r[2] for r in rows)))


def print_summary(summary: R.ReplaySummary, top_rules: bool = True) -> None:
    """The human summary, on stderr (``top_rules``: the busiest deciding rules)."""
    n = summary.packets
    terminal.table("Verdicts", ["verdict", "packets", "share"],
                   [(v, f"{c:,}", f"{100 * c / n:.2f}%" if n else "-")
                    for v, c in summary.verdicts.items()], justify_right=(1, 2))
    terminal.table("Captures", ["capture", "format", "records", "truncated", "clamped ts",
                                "non-IP", "malformed"],
                   [(c["path"], c["format"], f"{c['records']:,}", c["truncated"],
                     c["clamped_timestamps"], f"{c['non_ip']:,}", f"{c['malformed']:,}")
                    for c in summary.captures], justify_right=(2, 3, 4, 5, 6))
    hit = sorted(((k, v) for k, v in summary.rule_counters.items() if v["packets"]),
                 key=lambda kv: -kv[1]["packets"])
    if hit and top_rules:
        terminal.table(f"Deciding rules (top {min(TOP, len(hit))} of {len(hit)} hit)",
                       ["rule", "checks", "bytes"],
                       [(k, f"{v['packets']:,}", f"{v['bytes']:,}") for k, v in hit[:TOP]],
                       justify_right=(1, 2))
    if summary.instances:
        def total(counts):
            return sum(sum(d.values()) for d in counts.values())
        busiest = sorted(summary.instances.items(), key=lambda kv: -total(kv[1]))[:TOP]
        terminal.table(f"Instances (top {len(busiest)} of {len(summary.instances)} checked)",
                       ["instance", "egress A/D/R", "ingress A/D/R"],
                       [(i, _adr(c["egress"]), _adr(c["ingress"])) for i, c in busiest],
                       justify_right=(1, 2))
    line = (f"{n:,} packets in {summary.elapsed_seconds:.2f} s "
            f"({summary.packets_per_second:,.0f} packets/s, "
            f"{'stateful' if summary.stateful else 'stateless'}, {summary.threads} threads)")
    if summary.events_applied or summary.events_pending:
        line += (f"; timeline: {summary.events_applied} events applied, "
                 f"{summary.events_pending} after the last packet")
    terminal.status(line)
    if "verdicts" in summary.outputs:
        terminal.status(f"verdicts written to {summary.outputs['verdicts']}")
    if summary.flow_log is not None:
        fl = summary.flow_log
        terminal.status(f"flow log written to {summary.outputs['flow_log']} ({fl['format']}): "
                        f"{fl['records']:,} records of {fl['logged_events']:,} logged events"
                        + (f", {fl['skipped_packets']:,} past max_records (SKIPDATA)"
                           if fl["skipped_packets"] else ""))
    if summary.responses is not None:
        terminal.status(f"{summary.responses['written']:,} REJECT answers written to "
                        f"{summary.outputs['responses']}")
    if "split" in summary.outputs:
        files = [p for paths in summary.outputs["split"].values() for p in paths]
        terminal.status(f"split captures written: {', '.join(files)}")


def _adr(counts: dict) -> str:
    return "/".join(f"{counts[v]:,}" for v in ("ACCEPT", "DROP", "REJECT"))


COMMANDS = [replay_cmd]
