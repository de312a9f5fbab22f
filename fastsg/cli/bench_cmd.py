"""``fastsg bench``: parse the options, call ``fastsg.benchmark.run``, render its tables,
write the JSON and the plot.  All measuring lives in ``fastsg.benchmark``."""
from __future__ import annotations

import sys
from contextlib import ExitStack

import click

from .. import benchmark as B
from . import terminal


class _TerminalReporter(B.Reporter):
    """Progress bar per scenario and its tables as soon as it ends (all on stderr)."""

    def __init__(self):
        self._stack = ExitStack()
        self._advance = None

    def status(self, message: str) -> None:
        terminal.status(f"[dim]{message}[/dim]")

    def scenario_started(self, name: str, steps: int) -> None:
        self._close()
        if steps:
            self._advance = self._stack.enter_context(terminal.progress(f"bench {name}", steps))

    def step(self, label: str = "") -> None:
        if self._advance is not None:
            self._advance(1)

    def scenario_finished(self, result: B.ScenarioResult) -> None:
        self._close()
        for t in result.tables:
            terminal.table(t.title, t.columns, t.rows, justify_right=t.right)
        for note in result.notes:
            terminal.status(f"  [dim]note:[/dim] {note}")
        if result.status == "failed":
            terminal.error(f"scenario {result.name} failed: {result.note}")
        else:
            terminal.status(f"  [dim]{result.name}: {result.seconds:.1f} s "
                            f"(CPU {result.cpu_seconds:.1f} s)[/dim]")

    def _close(self) -> None:
        self._stack.close()
        self._stack = ExitStack()
        self._advance = None


def _sizes(ctx, param, value):
    if value is None:
        return None
    try:
        return B.parse_sizes(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command("bench")
@click.option("--scenario", "scenarios", multiple=True, type=click.Choice(B.SCENARIOS),
              help="Run only this scenario (repeatable; default: all).")
@click.option("--quick", is_flag=True, help="Small sizes, a smoke test (< 30 s).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, allow_dash=True),
              help="Write every measurement as JSON to this file ('-': stdout).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False),
              help="Save a PNG: throughput vs rule count, feature overhead, update latency.")
@click.option("--repeats", type=click.IntRange(1, 100), help="Timed repeats per measurement "
              "(default 5, quick 3).")
@click.option("--threads", type=click.IntRange(1, None), help="The 'all threads' count "
              "(default: all cores).")
@click.option("--rules", "rules", callback=_sizes, metavar="N,N,...",
              help="Rule counts of the rules scenario, e.g. 100,1k,10k,100k.")
@click.option("--packets", type=click.IntRange(1, None),
              help="Packets per throughput sample and in the generated capture.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of generated worlds/traffic.")
def bench(scenarios, quick, json_path, plot_path, repeats, threads, rules, packets, seed):
    """Measure policy evaluation: rule-count scaling, deny ordering, update latency, capture
    reading, flow-log cost and connection tracking (stateless vs stateful, a table of 1 M
    live flows), against a linear scan, the Python reference and (when installed) tcpdump
    and DPDK ACL."""
    settings = B.Settings(scenarios=tuple(scenarios) or B.SCENARIOS, quick=quick,
                          repeats=repeats, threads=threads, rules=rules, packets=packets, seed=seed)
    plan = B.make_plan(settings)
    info = B.machine_info()
    terminal.status(f"fastsg bench: {info['cpu_model']}, {info['cores']} cores, numba "
                    f"{info['numba']}, numpy {info['numpy']}, python {info['python']}; "
                    f"scenarios: {', '.join(plan.scenarios)}")
    report = B.run(plan, _TerminalReporter())
    terminal.status(f"kernel warm-up {report.warmup_seconds:.1f} s (not timed; the first run after "
                    f"an install also compiles the kernels), total {report.seconds:.1f} s")
    data = report.to_dict()
    if json_path == "-":
        terminal.emit_json(data)
    elif json_path:
        B.write_json(data, json_path)
        terminal.status(f"measurements written to {json_path}")
    if plot_path:
        B.plot(data, plot_path)
        terminal.status(f"plot written to {plot_path}")
    if report.failed:
        terminal.error(f"failed scenario(s): {', '.join(report.failed)}")
        sys.exit(1)


COMMANDS = [bench]
