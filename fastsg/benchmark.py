"""``fastsg bench``: scenarios, measurements, baselines, peers, JSON and plots (library).

The CLI (``fastsg/cli/bench_cmd.py``) only parses options, renders what this module returns
and writes files; everything measured is measured here, so ``bench/`` and notebooks can
call ``run(Settings(...))`` too.

Scenarios (``SCENARIOS``):

* ``rules``   rule-count scaling on generated realistic worlds: Mpps with 1 and all threads,
  full compile time, table bytes; baselines on the same packets in the same run: the linear
  scan (iptables model, ``fastsg.kernels.linear``) and the pure-Python reference
  (``tests/naive.py``, only present in a source checkout).
* ``order``   allow-only vs 10% / 50% deny under each combining order.
* ``updates`` latency from a World mutation to the next classify's tables (incremental)
  vs a full compile.
* ``capture`` reading and stateless end-to-end replay of captures (bundled ``pcaps/`` and a
  generated one), with scapy's ``rdpcap`` as the baseline.
* ``logging`` flow-log cost: classify with the flow log on (the world's settings) vs off,
  at 1% and 50% drops, stateless and stateful, with the records produced.
* ``state``   connection tracking: stateless vs stateful on the same traffic (1 and all
  threads; 1- and 2-thread verdicts verified identical), and a live table of 1 M flows
  (``--quick``: 50k) on one thread: inserting pass, steady-state lookups, bytes per flow.
* ``peers``   tcpdump (BPF) and DPDK ``dpdk-test-acl`` on equivalent inputs, when installed.

How things are timed: every kernel is warmed up first (``warm_up``: a small classify per
code path, so the JIT, or the on-disk cache load, is not timed); each measurement keeps
every repeat's wall time (``time.perf_counter``; throughput samples repeat the classify for
at least ``Plan.sample_seconds`` and keep the time per call) and reports the median with
min/max as the spread; variants compared with each other are timed round-robin
(``time_interleaved``); ratios compare medians measured in the same run on the same
packets, and are always "how many times faster the subject is than the baseline" (>1:
faster).  Machine load skews all of it: the JSON keeps the load average and each
scenario's CPU time next to its wall time.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import namedtuple
from dataclasses import dataclass, field
from pathlib import Path

import numba
import numpy as np

from . import __version__
from .batch import PacketBatch
from .config import max_threads, resolve_threads
from .engine import Engine, Verdict
from .world import World

SCENARIOS = ("rules", "order", "updates", "capture", "logging", "state", "peers")
ORDERS = ("allow,deny", "deny,allow", "priority")
DENY_SHARES = (0.0, 0.1, 0.5)
INSTANCE_CAP = 20_000             # generated worlds: instances ~ rules/5, at most this many
PYTHON_REFERENCE = "python-reference"

# A table for the terminal: title, column names, rows (lists of str), right-aligned columns.
TableSpec = namedtuple("TableSpec", ["title", "columns", "rows", "right"])


# ==========================================================================================
# settings and the concrete plan of a run
# ==========================================================================================

@dataclass(frozen=True)
class Settings:
    """What the user asked for (``None``: the default of the mode)."""
    scenarios: tuple = SCENARIOS
    quick: bool = False
    repeats: int | None = None
    threads: int | None = None
    rules: tuple | None = None
    packets: int | None = None
    seed: int = 0


@dataclass(frozen=True)
class Plan:
    """Concrete sizes of one run.  The defaults keep ``fastsg bench`` (no arguments) within
    about 3 minutes on 2 cores once the kernels are cached, and ``--quick`` within ~30 s."""
    scenarios: tuple
    quick: bool
    repeats: int
    threads: int                  # "all threads"
    rule_sizes: tuple             # rules scenario
    packets: int                  # packets per throughput sample (rules scenario)
    order_rules: int
    order_packets: int
    update_sizes: tuple
    capture_rules: int
    capture_packets: int
    scapy_packets: int
    linear_seconds: float         # target wall time of one linear-scan repeat
    naive_seconds: float          # target wall time of the Python-reference sample
    naive_max: int                # at most this many packets for the Python reference
    compile_seconds: float        # stop repeating a full compile after this much time
    sample_seconds: float         # a throughput sample repeats a classify for at least this long
    tcpdump_rules: int
    dpdk_rules: int
    peer_packets: int
    peer_process_packets: int     # whole-process comparison with tcpdump (target: 10 M)
    state_rules: int              # state scenario: stateless vs stateful at this rule count
    state_packets: int
    live_flows: int               # state scenario: flows in the live table (target: 1 M)
    live_packets: int             # packets per steady-state sample of the live table
    logging_rules: int
    logging_packets: int
    seed: int


def make_plan(settings: Settings) -> Plan:
    """Settings -> Plan: the mode's defaults, overridden by what the user gave."""
    quick = settings.quick
    sizes = tuple(settings.rules) if settings.rules else ((100, 1000) if quick
                                                         else (100, 1000, 10_000, 100_000))
    packets = settings.packets or (100_000 if quick else 500_000)
    unknown = [s for s in settings.scenarios if s not in SCENARIOS]
    if unknown:
        raise ValueError(f"unknown scenario(s) {unknown}; choose from {list(SCENARIOS)}")
    mid = _pick_size(sizes, 1000 if quick else 10_000)
    big = tuple(s for s in sizes if s >= 1000) or (max(sizes),)
    updates = (big[:1] if quick else big) if settings.rules else ((1000,) if quick else
                                                                   (1000, 10_000, 100_000))
    return Plan(
        scenarios=tuple(s for s in SCENARIOS if s in settings.scenarios),
        quick=quick,
        repeats=settings.repeats or (3 if quick else 5),
        threads=resolve_threads(settings.threads),
        rule_sizes=sizes,
        packets=packets,
        order_rules=mid,
        order_packets=settings.packets or (100_000 if quick else 500_000),
        update_sizes=updates,
        capture_rules=_pick_size(sizes, 1000),      # cached from the rules scenario
        capture_packets=settings.packets or (50_000 if quick else 1_000_000),
        scapy_packets=1000 if quick else 2000,
        linear_seconds=0.1 if quick else 0.3,
        naive_seconds=0.3 if quick else 1.0,
        naive_max=50 if quick else 200,
        compile_seconds=1.0 if quick else 3.0,
        sample_seconds=0.05 if quick else 0.2,
        tcpdump_rules=20 if quick else 50,
        dpdk_rules=1000 if quick else 10_000,
        peer_packets=settings.packets or (50_000 if quick else 200_000),
        peer_process_packets=settings.packets or (50_000 if quick else 10_000_000),
        state_rules=_pick_size(sizes, 10_000),
        state_packets=settings.packets or (100_000 if quick else 500_000),
        live_flows=50_000 if quick else 1_000_000,
        live_packets=settings.packets or (100_000 if quick else 1_000_000),
        logging_rules=_pick_size(sizes, 10_000),
        logging_packets=settings.packets or (100_000 if quick else 500_000),
        seed=settings.seed,
    )


def _pick_size(sizes, want: int) -> int:
    """The largest of ``sizes`` not above ``want`` (else the smallest)."""
    below = [s for s in sizes if s <= want]
    return max(below) if below else min(sizes)


def parse_sizes(text: str) -> tuple:
    """``"100,1k,10000,0.1M"`` -> (100, 1000, 10000, 100000)."""
    out = []
    for part in text.split(","):
        part = part.strip().lower()
        if not part:
            continue
        scale = {"k": 1000, "m": 1_000_000}.get(part[-1], 1)
        number = part[:-1] if scale > 1 else part
        try:
            value = int(round(float(number) * scale))
        except ValueError:
            raise ValueError(f"{part!r} is not a size (e.g. 100, 1k, 10000)") from None
        if value < 1:
            raise ValueError(f"{part!r}: sizes must be >= 1")
        out.append(value)
    if not out:
        raise ValueError("no sizes given")
    return tuple(out)


# ==========================================================================================
# measurements and results
# ==========================================================================================

@dataclass
class Measurement:
    """One measured quantity: every repeat's wall time in seconds (``samples``).

    ``packets`` (packets handled per sample) makes it a throughput; ``ratios`` maps a
    baseline label to how many times faster this is than that baseline: median vs median,
    or, for two measurements timed round-robin in one ``time_interleaved`` call, the median
    of the per-round ratios (``paired_speedup``).
    """
    scenario: str
    engine: str
    metric: str
    samples: list = field(default_factory=list)
    packets: int | None = None
    rules: int | None = None
    threads: int | None = None
    params: dict = field(default_factory=dict)
    ratios: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    status: str = "ok"              # ok | skipped | pending | failed
    note: str = ""

    @property
    def median(self) -> float | None:
        return float(np.median(self.samples)) if self.samples else None

    @property
    def mpps(self) -> float | None:
        """Million packets per second at the median (None when not a throughput)."""
        m = self.median
        return self.packets / m / 1e6 if self.packets and m else None

    def mpps_range(self) -> tuple | None:
        """(slowest, fastest) Mpps over the repeats."""
        if not (self.packets and self.samples):
            return None
        return self.packets / max(self.samples) / 1e6, self.packets / min(self.samples) / 1e6

    def to_dict(self) -> dict:
        d = {"scenario": self.scenario, "engine": self.engine, "metric": self.metric,
             "status": self.status, "params": self.params, "rules": self.rules,
             "threads": self.threads, "packets": self.packets, "repeats": len(self.samples),
             "median_s": self.median, "min_s": min(self.samples) if self.samples else None,
             "max_s": max(self.samples) if self.samples else None,
             "samples_s": [float(s) for s in self.samples]}
        if self.packets and self.samples:
            lo, hi = self.mpps_range()
            d.update(mpps=self.mpps, mpps_min=lo, mpps_max=hi)
        d["ratio_to_baseline"] = {k: float(v) for k, v in self.ratios.items()}
        d["extra"] = self.extra
        if self.note:
            d["note"] = self.note
        return _plain(d)


@dataclass
class ScenarioResult:
    """What one scenario produced: measurements, tables for the terminal, notes."""
    name: str
    status: str = "ok"              # ok | pending | skipped | failed
    note: str = ""
    seconds: float = 0.0
    cpu_seconds: float = 0.0        # process CPU time: wall >> cpu/threads means a busy machine
    measurements: list = field(default_factory=list)
    tables: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    def add(self, m: Measurement) -> Measurement:
        self.measurements.append(m)
        return m

    def to_dict(self) -> dict:
        return _plain({"name": self.name, "status": self.status, "note": self.note,
                       "seconds": self.seconds, "cpu_seconds": self.cpu_seconds,
                       "notes": self.notes})


@dataclass
class Report:
    """A whole run: plan, machine, warm-up, scenario results."""
    plan: Plan
    machine: dict
    warmup_seconds: float = 0.0
    seconds: float = 0.0
    scenarios: list = field(default_factory=list)

    @property
    def failed(self) -> list:
        return [s.name for s in self.scenarios if s.status == "failed"]

    def to_dict(self) -> dict:
        plan = {k: getattr(self.plan, k) for k in self.plan.__dataclass_fields__}
        return _plain({
            "fastsg_bench": 1, "fastsg_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": self.machine, "settings": plan,
            "warmup_seconds": self.warmup_seconds, "total_seconds": self.seconds,
            "conventions": {
                "times": "seconds of wall time per repeat; median_s is reported, min_s/max_s are the spread",
                "mpps": "packets / median_s / 1e6 (mpps_min/mpps_max from the slowest/fastest repeat)",
                "ratio_to_baseline": "baseline label -> how many times faster this measurement is "
                                     "than that baseline (same run, same packets): for two "
                                     "measurements timed round-robin (order, state, logging) the "
                                     "median over rounds of the ratio of that round's times; "
                                     "otherwise median vs median",
            },
            "scenarios": [s.to_dict() for s in self.scenarios],
            "measurements": [m.to_dict() for s in self.scenarios for m in s.measurements],
        })


def _plain(obj):
    """numpy scalars/arrays and tuples -> JSON-friendly Python values."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return obj


def write_json(data: dict, path) -> None:
    """Write a report dict (``Report.to_dict()``) as indented JSON."""
    Path(path).write_text(json.dumps(data, indent=2) + "\n")


def machine_info() -> dict:
    """CPU model, cores, versions: what a reader needs to compare two reports."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    info = {"cpu_model": cpu, "cores": os.cpu_count(), "usable_cores": usable,
            "numba_threads": max_threads(), "python": platform.python_version(),
            "numpy": np.__version__, "numba": numba.__version__,
            "platform": platform.platform(), "fastsg": __version__}
    if hasattr(os, "getloadavg"):
        # others' work on the machine skews timings: keep the load next to the numbers
        info["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    return info


# ==========================================================================================
# progress reporting (the CLI renders; the library only calls these)
# ==========================================================================================

class Reporter:
    """Callbacks of a run; this one ignores everything (library and pytest use)."""

    def status(self, message: str) -> None:
        """A one-line status update."""

    def scenario_started(self, name: str, steps: int) -> None:
        """A scenario begins; ``steps`` calls to ``step`` will follow."""

    def step(self, label: str = "") -> None:
        """One step of the current scenario is done."""

    def scenario_finished(self, result: ScenarioResult) -> None:
        """A scenario ended (any status)."""


# ==========================================================================================
# timing helpers
# ==========================================================================================

def time_repeats(fn, repeats: int, budget_s: float | None = None) -> list:
    """Wall time of ``fn()`` for ``repeats`` calls; stops early (after at least one call)
    once ``budget_s`` seconds have been spent.  Returns the list of seconds."""
    samples = []
    start = time.perf_counter()
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
        if budget_s is not None and time.perf_counter() - start >= budget_s:
            break
    return samples


def calls_per_sample(fn, min_seconds: float) -> int:
    """How many back-to-back calls of ``fn`` make one sample last at least ``min_seconds``
    (a classify of a few hundred thousand packets takes ~20 ms: too short to time alone
    against scheduler noise).  Calls ``fn`` once to find out."""
    t0 = time.perf_counter()
    fn()
    return max(1, math.ceil(min_seconds / max(time.perf_counter() - t0, 1e-9)))


def time_interleaved(fns: dict, repeats: int, min_seconds: float = 0.0,
                     setup: dict | None = None) -> dict:
    """Wall time per call of several callables, round-robin: repeat r of every callable runs
    before repeat r+1 of any, so a busy spell on the machine hits all of them alike and their
    medians stay comparable.  Each sample runs a callable ``calls_per_sample`` times and
    records the mean per call.  ``setup`` ({key: callable}, optional): run before every
    call of that key, untimed.  Returns {key: [seconds per call, ...]}."""
    setup = setup or {}
    calls = {k: calls_per_sample(fn, min_seconds) if min_seconds else 1 for k, fn in fns.items()}
    samples = {k: [] for k in fns}
    for _ in range(max(1, repeats)):
        for k, fn in fns.items():
            prepare = setup.get(k)
            spent = 0.0
            if prepare is None:
                t0 = time.perf_counter()
                for _ in range(calls[k]):
                    fn()
                spent = time.perf_counter() - t0
            else:
                for _ in range(calls[k]):
                    prepare()
                    t0 = time.perf_counter()
                    fn()
                    spent += time.perf_counter() - t0
            samples[k].append(spent / calls[k])
    return samples


def paired_speedup(m: "Measurement", base: "Measurement") -> float:
    """How many times faster ``m`` is than ``base``, both timed round-robin by one
    ``time_interleaved`` call: the median over rounds of base time / m time.  Calls of one
    round run seconds apart, so a slow spell of the machine scales both alike and cancels
    in their ratio; the ratio of two medians can pair a fast sample with a slow one."""
    if len(m.samples) != len(base.samples) or not m.samples:
        return base.median / m.median
    return float(np.median(np.asarray(base.samples) / np.asarray(m.samples)))


def _sized(per_item_s: float, target_s: float, lo: int, hi: int) -> int:
    """How many items make one repeat last about ``target_s``, clamped to [lo, hi]."""
    if per_item_s <= 0:
        return hi
    return int(min(hi, max(lo, target_s / per_item_s)))


class _Threads:
    """Context manager pinning numba's thread count (kernels called outside Engine)."""

    def __init__(self, n: int):
        self.n = n

    def __enter__(self):
        self.previous = numba.get_num_threads()
        numba.set_num_threads(self.n)

    def __exit__(self, *exc):
        numba.set_num_threads(self.previous)


# ==========================================================================================
# worlds, traffic and baselines
# ==========================================================================================

def world_shape(rules: int) -> dict:
    """The generated-world parameters used for ``rules`` rules: ~rules/50 groups and
    ~rules/5 instances (capped), so group lists and policies grow with the rule count."""
    return {"rules": rules, "groups": max(2, rules // 50),
            "instances": min(max(10, rules // 5), INSTANCE_CAP)}


@dataclass
class Case:
    """A generated world with its compiled Engine (and traffic once asked for)."""
    rules: int
    deny_share: float
    order: str
    world_dict: dict
    world: World
    engine: Engine
    setup: dict                                   # generate / load / compile seconds
    compile_samples: list = field(default_factory=list)
    traffic: PacketBatch | None = None


def build_case(rules: int, deny_share: float = 0.1, order: str = "allow,deny", seed: int = 0,
               world_dict: dict | None = None, world: World | None = None) -> Case:
    """Generate (or take) a world, load it and compile it; times each step.  ``world``: an
    already loaded world of that shape, used as a copy under ``order`` (see ``with_order``)."""
    from .generate import generate_world
    t0 = time.perf_counter()
    if world is None and world_dict is None:
        world_dict = generate_world(**world_shape(rules), deny_share=deny_share, order=order,
                                    seed=seed)
    t1 = time.perf_counter()
    world = with_order(world, order) if world is not None else World.from_dict(world_dict)
    t2 = time.perf_counter()
    engine = Engine(world, stateful=False, flow_log=False)
    t3 = time.perf_counter()
    setup = {"generate_s": t1 - t0, "load_s": t2 - t1, "compile_s": t3 - t2}
    return Case(rules, deny_share, order, world_dict, world, engine, setup, [t3 - t2])


def with_order(world: World, order: str) -> World:
    """A copy of ``world`` under another world-wide combining order.

    ``World.copy`` is ~15x faster than loading the file again (no validation), and the
    order is only read when policies are compiled, so setting it on a fresh copy, before
    any Engine sees it, is safe."""
    if order not in ORDERS:
        raise ValueError(f"unknown order {order!r}")
    copy = world.copy()
    copy.order = order
    return copy


def traffic(world: World, packets: int, seed: int = 0, **kw) -> PacketBatch:
    """Generated stateless traffic with flow locality (``generate_traffic``).

    ``calibrate=False``: calibration would compile a second Engine just to fine-tune the
    drop share, which a throughput benchmark does not need (the verdicts actually seen are
    reported).  The generator's drop-share warning is silenced for the same reason."""
    import warnings
    from .generate import generate_traffic
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return generate_traffic(world, packets, seed=seed, stateful=False, calibrate=False, **kw)


def case_traffic(case: Case, packets: int, seed: int = 0) -> PacketBatch:
    """Traffic for the case's world (cached on the case; a smaller ask takes a prefix)."""
    if case.traffic is None or len(case.traffic) < packets:
        case.traffic = traffic(case.world, packets, seed)
    return case.traffic if len(case.traffic) == packets else case.traffic.take(slice(0, packets))


_NAIVE = None


def load_python_reference():
    """``tests/naive.py`` of a source checkout, or None (an installed package has no tests/)."""
    global _NAIVE
    if _NAIVE is None:
        import fastsg
        path = Path(fastsg.__file__).resolve().parents[1] / "tests" / "naive.py"
        _NAIVE = False
        if path.is_file():
            name = "fastsg_bench_naive"
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module          # dataclasses look their module up here
            try:
                spec.loader.exec_module(module)
                # an installed package's parent is site-packages, where some other project's
                # "tests" may sit: use it only if it is ours
                if hasattr(module, "naive_classify") and hasattr(module, "packets_from_batch"):
                    _NAIVE = module
            except Exception:                   # a broken checkout: report as unavailable
                sys.modules.pop(name, None)
    return _NAIVE or None


def linear_classify(engine: Engine, linear, batch: PacketBatch, scan_all: bool):
    """Verdicts of ``batch`` by the linear-scan baseline kernel (same outputs as classify)."""
    from .kernels.linear import _classify_linear
    n = len(batch)
    verdict = np.empty(n, np.uint8)
    egress = np.empty(n, np.int32)
    ingress = np.empty(n, np.int32)
    _classify_linear(engine.refresh().kernel, linear, batch.kernel_columns(), scan_all,
                     verdict, egress, ingress)
    return verdict, egress, ingress


def same_as_fastsg(result, verdict, egress, ingress) -> bool:
    """Whether a baseline decided every packet exactly as ``result`` (rules included)."""
    return (np.array_equal(result.verdict, verdict) and np.array_equal(result.egress_rule, egress)
            and np.array_equal(result.ingress_rule, ingress))


def warm_up(threads: int) -> float:
    """Run every kernel the benchmark times once on a tiny input, so JIT compilation (or
    loading numba's on-disk cache) is never timed.  Returns the seconds it took."""
    from .capture import read_capture
    from .compile.linear import build_linear
    from .packet_build import write_capture
    t0 = time.perf_counter()
    case = build_case(60, deny_share=0.2, seed=12345)
    batch = traffic(case.world, 2000, seed=1)
    for t in sorted({1, threads}):
        case.engine.classify(batch, threads=t)
    linear = build_linear(case.engine._compiler)
    with _Threads(1):
        for scan_all in (True, False):
            linear_classify(case.engine, linear, batch.take(slice(0, 200)), scan_all)
    with tempfile.TemporaryDirectory(prefix="fastsg-bench-") as tmp:
        path = Path(tmp) / "warm.pcap"
        write_capture(path, batch)
        read_capture(path)
    return time.perf_counter() - t0


# ==========================================================================================
# formatting (tables are built here; the CLI only prints them)
# ==========================================================================================

def fmt_mpps(m: Measurement | None) -> str:
    """'7.76 ±4%': median Mpps and the spread over repeats (half the min-max range, relative
    to the median; the JSON has the exact min and max)."""
    if m is None or m.mpps is None:
        return "-" if m is None or m.status == "ok" else m.status
    return _sig(m.mpps) + _pm(m)


def _pm(m: Measurement) -> str:
    """' ±4%' from the spread of the samples ('' for a single sample)."""
    if len(m.samples) < 2:
        return ""
    return f" ±{(max(m.samples) - min(m.samples)) / 2 / m.median:.0%}"


def _sig(x: float) -> str:
    """Three significant digits, no exponent (12.3, 1.23, 0.123)."""
    return f"{x:.0f}" if x >= 100 else f"{x:.3g}"


def fmt_rate(pps: float | None) -> str:
    """Packets per second in a readable unit."""
    if pps is None:
        return "-"
    if pps >= 1e6:
        return f"{pps / 1e6:.2f} Mpps"
    if pps >= 1e3:
        return f"{pps / 1e3:.1f} kpps"
    return f"{pps:.0f} pps"


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "-"
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.1f} ms"
    if s >= 1e-6:
        return f"{s * 1e6:.1f} µs"
    return f"{s * 1e9:.0f} ns"


def fmt_spread(m: Measurement | None) -> str:
    """'12.3 ms ±4%': the median time and the spread (see ``fmt_mpps``)."""
    if m is None or not m.samples:
        return "-" if m is None else m.status
    return fmt_seconds(m.median) + _pm(m)


def fmt_ratio(x: float | None) -> str:
    if x is None:
        return "-"
    if x >= 100:
        return f"{x:,.0f}×"
    return f"{x:.1f}×" if x >= 10 else f"{x:.2f}×"


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


# ==========================================================================================
# the runner
# ==========================================================================================

class _Context:
    """Shared state of one run: plan, reporter, cached worlds, a temp directory."""

    def __init__(self, plan: Plan, reporter: Reporter, tmp: Path):
        self.plan = plan
        self.reporter = reporter
        self.tmp = tmp
        self.cases: dict = {}
        self.features_warmup: float | None = None    # warm_up_features seconds, once a run

    def warm_features(self) -> float:
        """``warm_up_features`` once per run (state and logging both need it)."""
        if self.features_warmup is None:
            self.features_warmup = warm_up_features(self.plan.threads)
        return self.features_warmup

    def case(self, rules: int, deny_share: float = 0.1, order: str = "allow,deny") -> Case:
        """A generated world (cached by size, deny share and order)."""
        key = (rules, deny_share, order)
        if key not in self.cases:
            self.cases[key] = build_case(rules, deny_share, order, seed=self.plan.seed)
        return self.cases[key]

    def release(self, remaining) -> None:
        """Drop the cached worlds no remaining scenario uses (a 100k-rule world with its
        traffic holds hundreds of MB)."""
        keep = set()
        if "updates" in remaining:
            keep.update(self.plan.update_sizes)
        if "capture" in remaining:
            keep.add(self.plan.capture_rules)
        if "state" in remaining:
            keep.add(self.plan.state_rules)
        if "logging" in remaining:
            keep.add(self.plan.logging_rules)
        for key in [k for k in self.cases if k[0] not in keep]:
            del self.cases[key]


def run(settings: Settings | Plan, reporter: Reporter | None = None) -> Report:
    """Run the selected scenarios and return the report (nothing is printed here)."""
    plan = settings if isinstance(settings, Plan) else make_plan(settings)
    reporter = reporter or Reporter()
    report = Report(plan=plan, machine=machine_info())
    t0 = time.perf_counter()
    reporter.status("warming up the kernels (JIT, or numba's on-disk cache after the first run)")
    report.warmup_seconds = warm_up(plan.threads)
    with tempfile.TemporaryDirectory(prefix="fastsg-bench-") as tmp:
        ctx = _Context(plan, reporter, Path(tmp))
        for k, name in enumerate(plan.scenarios):
            report.scenarios.append(_run_scenario(ctx, name))
            ctx.release(plan.scenarios[k + 1:])
    if hasattr(os, "getloadavg"):
        report.machine["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    try:
        import resource
        report.machine["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    except ImportError:                         # not on Windows
        pass
    report.seconds = time.perf_counter() - t0
    return report


def _run_scenario(ctx: _Context, name: str) -> ScenarioResult:
    """One scenario; an unexpected error fails that scenario only (the others still run)."""
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        result = _SCENARIO_FUNCS[name](ctx)
    except Exception as exc:                  # report, keep going: a bench is a survey
        result = ScenarioResult(name, status="failed", note=f"{type(exc).__name__}: {exc}")
        result.tables.append(TableSpec(f"{name}: failed", ["error"], [[result.note]], ()))
    result.seconds = time.perf_counter() - t0
    result.cpu_seconds = time.process_time() - c0
    ctx.reporter.scenario_finished(result)
    return result


# ==========================================================================================
# scenario: rules (rule-count scaling, with the baselines)
# ==========================================================================================

def _scenario_rules(ctx: _Context) -> ScenarioResult:
    plan = ctx.plan
    res = ScenarioResult("rules")
    naive = load_python_reference()
    threads = sorted({1, plan.threads})
    per_size = 7
    ctx.reporter.scenario_started("rules", per_size * len(plan.rule_sizes))
    if naive is None:
        res.notes.append("python reference skipped: tests/naive.py is not available "
                         "(installed package without the source checkout)")
    for rules in plan.rule_sizes:
        _rules_one_size(ctx, res, rules, threads, naive)
    res.tables = _rules_tables(res, plan, threads)
    return res


def _rules_one_size(ctx, res, rules, threads, naive):
    plan, rep = ctx.plan, ctx.reporter
    case = ctx.case(rules)
    rep.step(f"{rules} rules: world")
    compiled = case.engine.refresh()
    _measure_compile(case, plan)
    rep.step(f"{rules} rules: compile")
    batch = case_traffic(case, plan.packets, plan.seed)
    rep.step(f"{rules} rules: traffic")
    base = {"world": world_shape(rules), "deny_share": 0.1, "order": "allow,deny",
            "policies": compiled.policies, "rules": compiled.rules}
    res.add(Measurement("rules", "fastsg", "compile", list(case.compile_samples), rules=compiled.rules,
                        params=base, extra={"table_bytes": compiled.nbytes,
                                            "bytes_per_rule": compiled.nbytes / max(1, compiled.rules),
                                            "setup_s": case.setup}))
    fast = _rules_fastsg(ctx, res, case, batch, base, threads)
    rep.step(f"{rules} rules: fastsg")
    _rules_linear(ctx, res, case, batch, base, fast[1])
    rep.step(f"{rules} rules: linear scan")
    rep.step(f"{rules} rules: linear chain")
    _rules_naive(ctx, res, case, batch, base, fast[1], naive)
    rep.step(f"{rules} rules: python reference")


def _rules_fastsg(ctx, res, case, batch, base, threads) -> dict:
    """fastsg on 1 and all threads, and on 1 thread with its per-call flow cache off (the
    interval tables alone: the cache's gain depends on the traffic's flow locality, and the
    baselines have no cache), timed round-robin.  Returns {threads: Measurement}."""
    engine = case.engine
    for t in threads:
        engine.classify(batch.take(slice(0, 1000)), threads=t)     # warm this thread count
    fns = {t: (lambda t=t: engine.classify(batch, threads=t)) for t in threads}
    has_cache = hasattr(engine, "flow_cache")
    if has_cache:
        fns["no-cache"] = lambda: _without_flow_cache(engine, batch)
    timings = time_interleaved(fns, ctx.plan.repeats, ctx.plan.sample_seconds)
    counts = engine.classify(batch).counts()
    fast = {t: res.add(Measurement("rules", "fastsg", "classify", timings[t], packets=len(batch),
                                   rules=base["rules"], threads=t, params=base,
                                   extra={"verdicts": counts}))
            for t in threads}
    if has_cache:
        m = res.add(Measurement("rules", "fastsg-no-flow-cache", "classify", timings["no-cache"],
                                packets=len(batch), rules=base["rules"], threads=1, params=base))
        fast[1].ratios["fastsg-no-flow-cache"] = fast[1].mpps / m.mpps
    return fast


def _without_flow_cache(engine: Engine, batch: PacketBatch):
    engine.flow_cache = False              # read per classify call; no recompile
    try:
        return engine.classify(batch, threads=1)
    finally:
        engine.flow_cache = True


def _measure_compile(case: Case, plan: Plan) -> None:
    """More full-compile samples (a fresh Engine each) while the budget lasts."""
    spent = sum(case.compile_samples)
    while len(case.compile_samples) < plan.repeats and spent < plan.compile_seconds:
        t0 = time.perf_counter()
        Engine(case.world, stateful=False, flow_log=False)
        dt = time.perf_counter() - t0
        case.compile_samples.append(dt)
        spent += dt


def _rules_linear(ctx, res, case, batch, base, fast1):
    """The iptables-model baselines on a sample sized to ``plan.linear_seconds`` a repeat:
    scan_all=True walks every rule of every policy (one flat chain), False only the
    packet's policy (a per-instance chain).  Single-threaded, compared with fastsg on 1
    thread; verdicts are checked against fastsg's on the same sample."""
    from .compile.linear import build_linear
    plan = ctx.plan
    t0 = time.perf_counter()
    linear = build_linear(case.engine._compiler)
    build_s = time.perf_counter() - t0
    for scan_all, name in ((True, "linear-scan"), (False, "linear-chain")):
        with _Threads(1):
            probe = batch.take(slice(0, 64))
            t0 = time.perf_counter()
            linear_classify(case.engine, linear, probe, scan_all)
            per = (time.perf_counter() - t0) / len(probe)
            n = _sized(per, plan.linear_seconds, 64, len(batch))
            sample = batch.take(slice(0, n))
            out = []
            samples = time_repeats(lambda: out.append(linear_classify(case.engine, linear, sample, scan_all)),
                                   min(3, plan.repeats))
        ok = same_as_fastsg(case.engine.classify(sample), *out[-1])
        m = res.add(Measurement("rules", name, "classify", samples, packets=n, rules=fast1.rules,
                                threads=1, params={**base, "scan_all": scan_all},
                                extra={"build_s": build_s, "verified_same_verdicts": ok,
                                       "rows": int(len(linear.rank))}))
        # the subject of the ratio is fastsg: how many times faster than this baseline
        fast1.ratios[name] = fast1.mpps / m.mpps
        if not ok:
            res.notes.append(f"{name} at {case.rules} rules disagreed with fastsg (a bug!)")


def _rules_naive(ctx, res, case, batch, base, fast1, naive):
    """The pure-Python reference on a small sample (µs per packet), verified vs fastsg."""
    if naive is None:
        res.add(Measurement("rules", PYTHON_REFERENCE, "classify", rules=fast1.rules, threads=1,
                            params=base, status="skipped",
                            note="tests/naive.py not available (installed package)"))
        return
    plan = ctx.plan
    probe = naive.packets_from_batch(batch.take(slice(0, 3)))
    t0 = time.perf_counter()
    naive.naive_classify(case.world, probe)
    per = (time.perf_counter() - t0) / len(probe)
    n = _sized(per, plan.naive_seconds, 3, plan.naive_max)
    sample = batch.take(slice(0, n))
    packets = naive.packets_from_batch(sample)      # conversion is not part of the timing
    out = []
    samples = time_repeats(lambda: out.append(naive.naive_classify(case.world, packets)), 1)
    fast = case.engine.classify(sample)
    ok = all((r.verdict, r.egress_rule, r.ingress_rule) == fast.row(i) for i, r in enumerate(out[-1]))
    m = res.add(Measurement("rules", PYTHON_REFERENCE, "classify", samples, packets=n,
                            rules=fast1.rules, threads=1, params=base,
                            extra={"us_per_packet": samples[0] / n * 1e6,
                                   "verified_same_verdicts": ok}))
    fast1.ratios[PYTHON_REFERENCE] = fast1.mpps / m.mpps
    if not ok:
        res.notes.append(f"python reference at {case.rules} rules disagreed with fastsg")


def _rules_tables(res: ScenarioResult, plan: Plan, threads) -> list:
    """Two tables: fastsg per size; the baselines per size (fastsg × = fastsg on 1 thread
    vs that baseline, same packets)."""
    rows, brows = [], []
    by = lambda engine, rules: next((m for m in res.measurements if m.engine == engine
                                     and m.metric == "classify" and m.params["world"]["rules"] == rules), None)
    for rules in plan.rule_sizes:
        comp = next(m for m in res.measurements if m.metric == "compile"
                    and m.params["world"]["rules"] == rules)
        fast = {m.threads: m for m in res.measurements if m.engine == "fastsg"
                and m.metric == "classify" and m.params["world"]["rules"] == rules}
        rows.append([f"{comp.rules:,}", str(comp.params["policies"]), fmt_seconds(comp.median),
                     fmt_bytes(comp.extra["table_bytes"]), f"{comp.extra['bytes_per_rule']:.0f}"]
                    + [fmt_mpps(fast[t]) for t in threads] + [fmt_mpps(by("fastsg-no-flow-cache", rules))])
        brow = [f"{comp.rules:,}"]
        for engine in ("linear-scan", "linear-chain", PYTHON_REFERENCE):
            m = by(engine, rules)
            if m is None or m.status != "ok":
                brow += ["skipped", "-"]
                continue
            rate = fmt_seconds(m.median / m.packets) + "/pkt" if engine == PYTHON_REFERENCE \
                else fmt_rate(m.mpps * 1e6)
            brow += [rate, fmt_ratio(fast[1].ratios.get(engine))]
        brows.append(brow)
    cols = ["rules", "policies", "compile", "tables", "B/rule"] + [
        f"Mpps {t} thr" for t in threads] + ["Mpps 1 thr no cache"]
    t1 = TableSpec(f"rules: fastsg vs rule count ({plan.packets:,} packets, 10% deny; "
                   f"median ±spread of {plan.repeats})", cols, rows, tuple(range(len(cols))))
    t2 = TableSpec("rules: baselines, 1 thread (× = fastsg 1 thr faster by)",
                   ["rules", "linear scan", "×", "per-policy chain", "×", "python ref", "×"],
                   brows, tuple(range(7)))
    checked = [m for m in res.measurements if "verified_same_verdicts" in m.extra]
    bad = [f"{m.engine}@{m.rules}" for m in checked if not m.extra["verified_same_verdicts"]]
    res.notes.append("linear scan = every rule of every policy (one iptables chain); per-policy "
                     "chain = only the packet's policy; no cache = fastsg's per-call flow cache off")
    res.notes.append(f"baselines run on a prefix of the same packets sized to ~{plan.linear_seconds:g} s "
                     f"(linear) / ~{plan.naive_seconds:g} s (python) and are compared by Mpps; " +
                     (f"verdicts and deciding rules identical to fastsg on all {len(checked)} samples"
                      if not bad else f"DISAGREEMENT with fastsg: {', '.join(bad)}"))
    return [t1, t2]


# ==========================================================================================
# scenario: order (deny rules and the combining orders)
# ==========================================================================================

def _scenario_order(ctx: _Context) -> ScenarioResult:
    """Allow-only vs 10% / 50% deny under each order, all on the same packets.

    Generated worlds of one shape and seed share their groups, instances and addresses and
    differ only in their rules, so one batch (generated for the 10%-deny world) is valid
    traffic for all of them; each world is loaded once per order (only ``order`` differs).
    What changes between cells is therefore only the rules' actions and the order.  The
    nine cells are timed round-robin (``time_interleaved``) so machine noise hits all alike."""
    from .generate import generate_world
    plan = ctx.plan
    res = ScenarioResult("order")
    rules = plan.order_rules
    ctx.reporter.scenario_started("order", 2 + len(DENY_SHARES) * len(ORDERS))
    worlds = {deny: World.from_dict(generate_world(**world_shape(rules), deny_share=deny,
                                                   seed=plan.seed))
              for deny in DENY_SHARES}
    batch = traffic(worlds[0.1], plan.order_packets, plan.seed)
    ctx.reporter.step("worlds and traffic")
    cases = {}
    for deny in DENY_SHARES:
        for order in ORDERS:
            case = build_case(rules, deny, order, world=worlds[deny])
            case.engine.classify(batch.take(slice(0, 1000)), threads=plan.threads)   # warm
            cases[deny, order] = case
            ctx.reporter.step(f"compile {deny:.0%} deny, {order}")
    fns = {k: (lambda c=c: c.engine.classify(batch, threads=plan.threads)) for k, c in cases.items()}
    timings = time_interleaved(fns, plan.repeats, plan.sample_seconds)
    ctx.reporter.step("classify (interleaved)")
    for key, case in cases.items():
        counts = case.engine.classify(batch, threads=plan.threads).counts()
        res.add(Measurement("order", "fastsg", "classify", timings[key], packets=len(batch),
                            rules=case.engine.refresh().rules, threads=plan.threads,
                            params={"order": case.order, "deny_share": case.deny_share,
                                    "world": world_shape(rules)},
                            extra={"verdicts": counts, "compile_s": case.setup["compile_s"]}))
    _order_ratios(res)
    res.tables = [_order_table(res, plan)]
    return res


def _refused(m: Measurement) -> float:
    return (m.extra["verdicts"]["DROP"] + m.extra["verdicts"]["REJECT"]) / m.packets


def _order_ratios(res: ScenarioResult) -> None:
    """Each deny measurement relative to allow-only under the same order."""
    for m in res.measurements:
        base = next(b for b in res.measurements if b.params["order"] == m.params["order"]
                    and b.params["deny_share"] == 0.0)
        if m is not base:
            m.ratios["allow-only"] = paired_speedup(m, base)


def _order_table(res: ScenarioResult, plan: Plan) -> TableSpec:
    rows = []
    for order in ORDERS:
        row = [order]
        for deny in DENY_SHARES:
            m = next(x for x in res.measurements if x.params["order"] == order
                     and x.params["deny_share"] == deny)
            row.append(fmt_mpps(m))
            if deny:
                row.append(f"{(m.ratios['allow-only'] - 1) * 100:+.0f}%")
        row.append(" / ".join(f"{_refused(x):.0%}" for x in res.measurements
                              if x.params["order"] == order))
        rows.append(row)
    cols = ["order", "allow-only Mpps", "10% deny", "Δ", "50% deny", "Δ", "refused 0/10/50"]
    res.notes.append("same packets in every cell, timed round-robin; Δ = speed change vs "
                     "allow-only under the same order (median over rounds of the round's "
                     "ratio); refused = DROP+REJECT share of the packets at 0/10/50% deny rules")
    return TableSpec(f"order: deny rules x combining order ({plan.order_rules:,} rules, "
                     f"{plan.order_packets:,} packets, {plan.threads} thr)", cols, rows,
                     (1, 2, 3, 4, 5, 6))


# ==========================================================================================
# scenario: updates (mutation -> next classify's tables)
# ==========================================================================================

UPDATE_KINDS = ("authorize", "revoke", "attach", "detach", "launch", "terminate")


def _scenario_updates(ctx: _Context) -> ScenarioResult:
    """Latency from a World mutation to ``engine.refresh()`` returning the new tables (what
    the next classify runs on), median over repeats, vs a full compile of the same world.
    Each operation is paired with its inverse (authorize/revoke, attach/detach,
    launch/terminate) so the world keeps its size across repeats."""
    plan = ctx.plan
    res = ScenarioResult("updates")
    ctx.reporter.scenario_started("updates", len(plan.update_sizes) * 4)
    for rules in plan.update_sizes:
        case = ctx.case(rules)
        ctx.reporter.step(f"{rules} rules: world")
        _measure_compile(case, plan)
        full = res.add(Measurement("updates", "fastsg", "full-compile", list(case.compile_samples),
                                   rules=case.engine.refresh().rules, params={"world": world_shape(rules)}))
        for kinds, fn in ((("authorize", "revoke"), _time_rules_update),
                          (("attach", "detach"), _time_attach),
                          (("launch", "terminate"), _time_launch)):
            try:
                timings, info = fn(case, plan.repeats)
            except LookupError as exc:          # a tiny world may offer nothing to attach
                for kind in kinds:
                    res.add(Measurement("updates", "fastsg", kind, rules=full.rules,
                                        params={"world": world_shape(rules)}, status="skipped",
                                        note=str(exc)))
                ctx.reporter.step(f"{rules} rules: {'/'.join(kinds)} skipped")
                continue
            for kind in kinds:
                m = res.add(Measurement("updates", "fastsg", kind, timings[kind], rules=full.rules,
                                        params={"world": world_shape(rules), **info},
                                        extra={"refresh_only_median_s": float(np.median(timings[kind + ":refresh"]))}))
                m.ratios["full-compile"] = full.median / m.median
            ctx.reporter.step(f"{rules} rules: {'/'.join(kinds)}")
    res.tables = [_updates_table(res, plan)]
    return res


def _timed_mutation(case: Case, mutate, timings: dict, kind: str):
    """Time ``mutate()`` + ``engine.refresh()``; record total and refresh-only seconds."""
    t0 = time.perf_counter()
    out = mutate()
    t1 = time.perf_counter()
    case.engine.refresh()
    t2 = time.perf_counter()
    timings.setdefault(kind, []).append(t2 - t0)
    timings.setdefault(kind + ":refresh", []).append(t2 - t1)
    return out


def _busy_instance(case: Case):
    """A running instance holding at least one group and room for one more (deterministic)."""
    w = case.world
    limit = w.limits["groups_per_instance"]
    for inst in w.instances.values():
        if inst.running and 0 < len(inst.groups) < limit:
            return inst
    raise LookupError("no running instance with a group and a free group slot")


def _time_rules_update(case: Case, repeats: int):
    """authorize a /32 rule into a group in use, then revoke it by id."""
    w = case.world
    inst = _busy_instance(case)
    gid = inst.groups[0]
    users = sum(1 for i in w.instances.values() if i.running and gid in i.groups)
    timings = {}
    for k in range(repeats):
        rule = {"protocol": "tcp", "ports": 20000 + k, "cidr": "198.51.100.7/32"}
        added = _timed_mutation(case, lambda: w.authorize(gid, "ingress", rule), timings, "authorize")
        _timed_mutation(case, lambda: w.revoke(gid, rule_id=added.id), timings, "revoke")
    return timings, {"group_instances": users}


def _time_attach(case: Case, repeats: int):
    """attach a group of the instance's region to it, then detach it."""
    w = case.world
    inst = _busy_instance(case)
    gid = next((g.id for g in w.groups.values() if g.id not in inst.groups
                and g.region == inst.region and g.owner == inst.owner), None)
    if gid is None:
        raise LookupError(f"no group of {inst.id}'s owner and region left to attach")
    timings = {}
    for _ in range(repeats):
        _timed_mutation(case, lambda: w.attach(inst.id, gid), timings, "attach")
        _timed_mutation(case, lambda: w.detach(inst.id, gid), timings, "detach")
    return timings, {}


def _time_launch(case: Case, repeats: int):
    """launch a new instance (fresh id and address) into an existing group list, then
    terminate it."""
    w = case.world
    inst = _busy_instance(case)
    timings = {}
    for k in range(repeats):
        spec = {"id": f"i-bench{os.getpid():x}{k:04d}{int(time.time() * 1e3) % 100000:05d}",
                "private_ip": f"100.64.{(k >> 8) & 255}.{k & 255}", "owner": inst.owner,
                "region": inst.region, "groups": list(inst.groups)}
        new = _timed_mutation(case, lambda: w.launch(spec), timings, "launch")
        _timed_mutation(case, lambda: w.terminate(new.id), timings, "terminate")
    return timings, {}


def _updates_table(res: ScenarioResult, plan: Plan) -> TableSpec:
    rows = []
    for rules in plan.update_sizes:
        ms = [m for m in res.measurements if m.params["world"]["rules"] == rules]
        full = next(m for m in ms if m.metric == "full-compile")
        row = [f"{full.rules:,}", fmt_seconds(full.median)]
        kinds = [next(x for x in ms if x.metric == kind) for kind in UPDATE_KINDS]
        row += [fmt_seconds(m.median) if m.samples else m.status for m in kinds]
        speed = [m.ratios["full-compile"] for m in kinds if "full-compile" in m.ratios]
        row.append(f"{fmt_ratio(min(speed))}-{fmt_ratio(max(speed))}" if speed else "-")
        rows.append(row)
    res.notes.append("latency = World mutation + engine.refresh() (the tables the next classify "
                     "uses), median of the repeats; × = how much faster than a full compile")
    return TableSpec(f"updates: mutation -> next classify (median of {plan.repeats})",
                     ["rules", "full compile"] + list(UPDATE_KINDS) + ["×"], rows,
                     tuple(range(len(UPDATE_KINDS) + 3)))


# ==========================================================================================
# scenario: capture (reading and replay)
# ==========================================================================================

def bundled_captures(root=None) -> list:
    """The captures bundled with a source checkout (``pcaps/*.pcap*``), or []."""
    if root is None:
        import fastsg
        root = Path(fastsg.__file__).resolve().parents[1] / "pcaps"
    root = Path(root)
    return sorted(p for p in root.glob("*.pcap*") if p.is_file()) if root.is_dir() else []


def library_replay(world: World, path, threads: int):
    """Stateless end-to-end replay as a library call (``fastsg.replay.replay``: copy the
    world, compile, stream the capture through the engine, tally).  Returns the summary."""
    from .replay import replay
    return replay(world, [path], stateful=False, threads=threads)


def _scenario_capture(ctx: _Context) -> ScenarioResult:
    plan = ctx.plan
    res = ScenarioResult("capture")
    bundled = bundled_captures()
    ctx.reporter.scenario_started("capture", 3 + len(bundled))
    case = ctx.case(plan.capture_rules)
    _capture_generated(ctx, res, case, ctx.tmp / "generated.pcap")
    if not bundled:
        res.notes.append("no bundled captures (pcaps/*.pcap* not found): skipped")
    for path in bundled:
        world = _world_next_to(path)
        label = path.name
        _capture_file(ctx, res, path, label, world, min(3, plan.repeats))
        ctx.reporter.step(path.name)
    if bundled:
        res.notes.append("bundled captures are small: their times are mostly per-call overhead; "
                         "they are replayed only against a world file next to them "
                         "(<name>.yaml/.yml/.json or world.yaml in pcaps/)")
    res.tables = [_capture_table(res)]
    return res


def _world_next_to(path: Path) -> World | None:
    """The world file that goes with a bundled capture, if any (else None: read only)."""
    from .world import load_world
    stem = path.name.split(".pcap")[0]
    for candidate in [path.with_name(stem + ext) for ext in (".yaml", ".yml", ".json")] + \
            [path.with_name("world" + ext) for ext in (".yaml", ".yml", ".json")]:
        if candidate.is_file():
            return load_world(candidate)
    return None


def _capture_generated(ctx, res, case, path):
    """Write the generated capture, then time reading, replay and scapy's rdpcap."""
    from .packet_build import write_capture
    plan = ctx.plan
    batch = case_traffic(case, plan.capture_packets, plan.seed)
    t0 = time.perf_counter()
    write_capture(path, batch)
    write_s = time.perf_counter() - t0
    ctx.reporter.step("write generated capture")
    label = f"generated ({case.rules:,}-rule world)"
    read, _ = _capture_file(ctx, res, path, label, case.world, plan.repeats,
                            extra={"write_s": write_s, "world_rules": case.rules})
    ctx.reporter.step("read + replay generated capture")
    _capture_scapy(ctx, res, batch, read)
    ctx.reporter.step("scapy rdpcap")


def _capture_file(ctx, res, path, label, world, repeats, extra=None):
    """read_capture and (with a world) the stateless library replay of one file; a file the
    reader refuses is reported, not fatal.  Returns (read, replay) measurements."""
    from .capture import read_capture
    from .errors import FastsgError
    plan = ctx.plan
    info = {"file": label, "bytes": path.stat().st_size}
    try:
        n = len(read_capture(path))             # warm (page cache, allocations)
    except FastsgError as exc:
        res.add(Measurement("capture", "fastsg", "read", params=info, status="failed", note=str(exc)))
        return None, None
    read = res.add(Measurement("capture", "fastsg", "read",
                               time_repeats(lambda: read_capture(path), repeats),
                               packets=n, params=info, extra=dict(extra or {})))
    if world is None:
        return read, None
    runs = []
    samples = time_repeats(lambda: runs.append(library_replay(world, path, plan.threads)), repeats)
    replay = res.add(Measurement("capture", "fastsg", "replay", samples, packets=n,
                                 threads=plan.threads, params={**info, "stateless": True},
                                 extra={"verdicts": runs[-1].verdicts,
                                        "timings_s": _median_timings(runs)}))
    return read, replay


def _median_timings(summaries) -> dict:
    """Median of each phase time (compile, read, classify, ...) over replay summaries."""
    keys = summaries[0].timings
    return {k: float(np.median([s.timings.get(k, 0.0) for s in summaries])) for k in keys}


def _capture_scapy(ctx, res, batch, read):
    """scapy's rdpcap on a sample (it is ~1000× slower, a whole file would take minutes)."""
    from .packet_build import write_capture
    if read is None:
        return
    try:
        import logging
        import scapy.layers.inet, scapy.layers.inet6, scapy.layers.l2  # noqa: F401  (decode, as users do)
        from scapy.utils import rdpcap
        logging.getLogger("scapy.runtime").setLevel(logging.ERROR)
    except ImportError:
        res.add(Measurement("capture", "scapy", "read", status="skipped", note="scapy not installed"))
        return
    sample = ctx.tmp / "scapy-sample.pcap"
    n = min(ctx.plan.scapy_packets, len(batch))
    write_capture(sample, batch.take(slice(0, n)))
    samples = time_repeats(lambda: rdpcap(str(sample)), min(3, ctx.plan.repeats), budget_s=2.0)
    m = res.add(Measurement("capture", "scapy", "read", samples, packets=n,
                            params={"file": f"generated, first {n:,} packets"}))
    read.ratios["scapy"] = read.mpps / m.mpps


def _capture_table(res: ScenarioResult) -> TableSpec:
    """One row per capture read by fastsg (with its replay), one for scapy's sample."""
    rows = []
    for m in (x for x in res.measurements if x.metric == "read"):
        name = m.params.get("file", m.engine)
        if m.status != "ok":
            rows.append([name, m.engine, "-", "-", f"{m.status}: {m.note}", "-", "-", "-"])
            continue
        if m.engine != "fastsg":
            rows.append([f"{name}", m.engine + " rdpcap", f"{m.packets:,}", "-",
                         fmt_rate(m.mpps * 1e6), "-", "-", "-"])
            continue
        replay = next((r for r in res.measurements if r.metric == "replay"
                       and r.params.get("file") == name), None)
        net = "-"
        if replay is not None:
            compile_s = replay.extra["timings_s"].get("compile", 0.0)
            net = fmt_rate(replay.packets / max(replay.median - compile_s, 1e-9))
        rows.append([name, "fastsg", f"{m.packets:,}", fmt_bytes(m.params.get("bytes", 0)),
                     _fmt_io(m), _fmt_io(replay) if replay else "-", net,
                     fmt_ratio(m.ratios.get("scapy"))])
    res.notes.append("replay = fastsg.replay.replay(stateless): copy + compile the world, stream "
                     "the capture through the engine, tally; 'w/o compile' subtracts its compile "
                     "phase; × = read_capture faster than scapy's rdpcap by")
    return TableSpec("capture: reading and stateless replay", ["capture", "reader", "packets",
                                                               "size", "read", "replay",
                                                               "w/o compile", "×"],
                     rows, (2, 3, 4, 5, 6, 7))


def _fmt_io(m: Measurement) -> str:
    """A rate for a capture big enough to measure one; the time per file otherwise."""
    if m.packets >= 10_000:
        return fmt_rate(m.mpps * 1e6) + _pm(m)
    return fmt_seconds(m.median) + "/file"


# ==========================================================================================
# scenarios: state (connection tracking) and logging (flow logs)
# ==========================================================================================

STATE_COST_TARGET = 2.0           # stateful / stateless time per packet at 10k rules: at most
STATE_TARGET_RULES = 10_000       # ... the rule count that target is stated for
LIVE_MPPS_TARGET = 8.0            # Mpps on one thread with 1 M live flows: at least
LIVE_TARGET_FLOWS = 1_000_000     # ... the table size that target is stated for
BYTES_PER_FLOW_TARGET = 64        # tracking table bytes per flow: at most
LOG_COST_TARGET = 0.10            # flow logging at a 1% drop rate: at most 10% slower
LOG_TARGET_DROPS = 0.01
LOG_DROP_SHARES = (0.001, 0.01, 0.1, 0.5)   # the drop shares the logging scenario measures
LOG_MODES = ("stateless", "stateful")
LIVE_PORT = 443
LIVE_CLIENTS = "100.64.0.0/10"    # shared address space: never the instance's own address


def warm_up_features(threads: int) -> float:
    """``warm_up`` for the kernels only the state and logging scenarios run: tracking (one
    thread, and its sharding for more), partition growth and rehash, flow-log event
    selection and aggregation.  Those scenarios call it before timing anything (the other
    scenarios never pay for it).  Returns the seconds it took."""
    t0 = time.perf_counter()
    case = build_case(60, deny_share=0.2, seed=12345)
    batch, _ = feature_traffic(case.world, 2000, 1, stateful=True, drop_share=0.2)
    for stateful in (False, True):
        engine = Engine(case.world, stateful=stateful, flow_log=None)
        for t in sorted({1, threads}):
            fresh_stream(engine, batch, t)
        engine.tracking_stats()
    world = World.from_dict(live_table_world(300, 12345))
    insert, steady = live_flow_batches(world, 300, 1000, 1)
    engine = Engine(world, stateful=True, flow_log=False)
    fresh_stream(engine, insert, 1)               # one partition grows several times
    engine.classify(steady, threads=1)
    engine.tracking_stats()
    return time.perf_counter() - t0


def feature_traffic(world: World, packets: int, seed: int, stateful: bool,
                    drop_share: float = 0.1) -> tuple:
    """(batch, generator details) for the state and logging scenarios.

    ``calibrate=False``: calibrating classifies the batch up to five times on a second
    engine (minutes at 10k rules and 500k stateful packets); the scenarios classify it
    anyway and report the share really refused next to the generator's prediction."""
    import warnings
    from .generate import generate_traffic
    details: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        batch = generate_traffic(world, packets, seed=seed, stateful=stateful,
                                 drop_share=drop_share, calibrate=False, details=details)
    return batch, details


def fresh_stream(engine: Engine, batch: PacketBatch, threads: int = 1, log=None):
    """Classify ``batch`` as a stream of its own: empty tracking tables and clock (stateful)
    and, when the engine logs, a new flow log (or ``log``, a ``FlowLog`` kept by the caller
    across calls), so every call does the same work, like a replay of the same capture.
    The resets cost microseconds."""
    from .flowlog import FlowLog
    if engine.stateful:
        engine.reset_tracking()
    if engine.flow_log is not None:
        engine.flow_log = log if log is not None else FlowLog(engine.world)
    return engine.classify(batch, threads=threads)


def same_results(a, b) -> bool:
    """Whether two classify results agree on every verdict and deciding rule."""
    return (np.array_equal(a.verdict, b.verdict) and np.array_equal(a.egress_rule, b.egress_rule)
            and np.array_equal(a.ingress_rule, b.ingress_rule))


def refused_share(counts: dict) -> float:
    """DROP + REJECT share of a ``Result.counts()``."""
    n = sum(counts.values())
    return (counts["DROP"] + counts["REJECT"]) / n if n else 0.0


def _traffic_info(details: dict, stateful: bool, drop_share: float) -> dict:
    return {"generator": f"generate_traffic(stateful={stateful}, calibrate=False)",
            "target_drop_share": drop_share,
            "predicted_drop_share": details.get("predicted_drop_share"),
            "flows": details.get("flows"), "reply_packets": details.get("reply_packets"),
            "fragments": details.get("fragments"), "icmp_errors": details.get("icmp_errors"),
            "ipv6_packets": details.get("ipv6_packets")}


def live_table_world(flows: int, seed: int) -> dict:
    """``single_instance_world(100)`` plus a rule admitting tcp/443 from ``LIVE_CLIENTS``,
    with conntrack capacity for ``flows`` (the default, 1 M, is exactly the 1 M target; the
    TCP timeout stays 5 days, so every flow stays live)."""
    d = single_instance_world(100, seed)
    d["security_groups"][0]["ingress"].append({"protocol": "tcp", "ports": LIVE_PORT,
                                               "cidr": LIVE_CLIENTS})
    d["conntrack"] = {**d.get("conntrack", {}), "capacity": max(1_000_000, 2 * flows)}
    return d


def live_flow_batches(world: World, flows: int, packets: int, seed: int,
                      reply_share: float = 0.5) -> tuple:
    """(insert, steady) batches for the live-table measurement.

    ``insert``: one SYN per flow, ``flows`` distinct TCP flows from client address/port pairs
    in ``LIVE_CLIENTS`` (16 ports per address) to the instance's port 443, in shuffled order,
    1 µs apart.  ``steady``: ``packets`` packets of flows drawn uniformly at random (so
    lookups go all over the table), ``reply_share`` of them the instance's replies (its
    egress check), timestamped after the inserts."""
    import ipaddress
    x = int(next(i for i in world.instances.values() if i.running).private_ip)
    net = ipaddress.ip_network(LIVE_CLIENTS)
    if flows > net.num_addresses * 16:
        raise ValueError(f"at most {net.num_addresses * 16} live flows")
    rng = np.random.default_rng(seed + 0x11FE)
    k = rng.permutation(flows).astype(np.int64)
    client = (int(net.network_address) + (k >> 4)).astype(np.uint32)
    cport = 32768 + (k & 15) * 2048 + ((k >> 4) & 2047)
    t0 = 1_700_000_000 * 10**9
    insert = PacketBatch.from_arrays(client, np.full(flows, x, np.uint32), 6, sport=cport,
                                     dport=LIVE_PORT, ts=t0 + np.arange(flows) * 1000,
                                     tcp_flags=0x02, wirelen=74)
    pick = rng.integers(0, flows, packets)
    reply = rng.random(packets) < reply_share
    src = np.where(reply, x, client[pick]).astype(np.uint32)
    dst = np.where(reply, client[pick], x).astype(np.uint32)
    steady = PacketBatch.from_arrays(
        src, dst, 6, sport=np.where(reply, LIVE_PORT, cport[pick]),
        dport=np.where(reply, cport[pick], LIVE_PORT),
        ts=t0 + (flows + 1 + np.arange(packets)) * 1000, tcp_flags=0x10,
        wirelen=np.where(reply, 1500, 200))
    return insert, steady


def _scenario_state(ctx: _Context) -> ScenarioResult:
    """Stateless vs stateful classify of the same generated traffic at ``state_rules``
    rules (1 and all threads), then a live table of ``live_flows`` flows on one thread:
    the inserting pass, steady-state lookups, table bytes per flow."""
    plan = ctx.plan
    res = ScenarioResult("state")
    threads = sorted({1, plan.threads})
    ctx.reporter.scenario_started("state", 7)
    warm = ctx.warm_features()
    ctx.reporter.step("warm-up")
    _state_vs_stateless(ctx, res, threads)
    _state_live(ctx, res)
    res.tables = _state_tables(res, plan, threads)
    res.notes.append(f"tracking and flow-log kernels warmed up first ({warm:.1f} s, not timed)")
    return res


def _state_vs_stateless(ctx, res, threads) -> None:
    plan, rep = ctx.plan, ctx.reporter
    case = ctx.case(plan.state_rules)
    world = case.world
    rep.step(f"{plan.state_rules} rules: world")
    batch, details = feature_traffic(world, plan.state_packets, plan.seed, stateful=True)
    rep.step("traffic")
    stateless = case.engine                         # Engine(world, stateful=False, flow_log=False)
    stateful = Engine(world, stateful=True, flow_log=False)
    small = batch.take(slice(0, 1000))
    for t in threads:                               # warm each thread count on these tables
        stateless.classify(small, threads=t)
        fresh_stream(stateful, small, t)
    fns = {}
    for t in threads:
        fns["stateless", t] = lambda t=t: stateless.classify(batch, threads=t)
        fns["stateful", t] = lambda t=t: fresh_stream(stateful, batch, t)
    timings = time_interleaved(fns, plan.repeats, plan.sample_seconds)
    rep.step("classify (interleaved)")
    # 1 and 2 threads (and all, if more) must decide every packet alike
    check = sorted({1, min(2, max_threads()), *threads})
    outs = {t: fresh_stream(stateful, batch, t) for t in check}
    stats = stateful.tracking_stats()
    same = all(same_results(outs[1], outs[t]) for t in check)
    if not same:
        res.notes.append(f"stateful verdicts differ between {check} threads (a bug!)")
    sl_counts = stateless.classify(batch, threads=1).counts()
    sf_counts = outs[1].counts()
    rules = stateless.refresh().rules
    base = {"world": world_shape(plan.state_rules), "deny_share": 0.1, "order": "allow,deny",
            "rules": rules, "traffic": _traffic_info(details, True, 0.1)}
    for t in threads:
        sl = res.add(Measurement("state", "fastsg", "classify", timings["stateless", t],
                                 packets=len(batch), rules=rules, threads=t,
                                 params={**base, "mode": "stateless"},
                                 extra={"verdicts": sl_counts,
                                        "refused_share": refused_share(sl_counts)}))
        sf = res.add(Measurement(
            "state", "fastsg", "classify", timings["stateful", t], packets=len(batch),
            rules=rules, threads=t,
            params={**base, "mode": "stateful",
                    "per_call": "reset_tracking() + classify: each call is a fresh stream"},
            extra={"verdicts": sf_counts, "refused_share": refused_share(sf_counts),
                   "tracking": stats, "verified_same_verdicts": same, "verified_threads": check}))
        sf.ratios["stateless"] = paired_speedup(sf, sl)
        cost = 1.0 / sf.ratios["stateless"]
        sf.extra.update(cost_ratio=cost, cost_target=STATE_COST_TARGET,
                        target_rules=STATE_TARGET_RULES,
                        meets_target=cost <= STATE_COST_TARGET if rules >= STATE_TARGET_RULES
                        else None)
    _state_continued(ctx, res, world, stateless, stateful, base)


def _state_continued(ctx, res, world, stateless, stateful, base) -> None:
    """The second half of a stream twice as long, after its first half (untimed): the
    tables hold the stream's flows and every packet of a known flow is accepted by them,
    while new flows keep coming, as in every chunk of a long replay after the first; one
    thread, stateless vs stateful on the same packets, round-robin."""
    plan, rep = ctx.plan, ctx.reporter
    half = plan.state_packets
    longer, details = feature_traffic(world, 2 * half, plan.seed + 1, stateful=True)
    head, tail = longer.take(slice(0, half)), longer.take(slice(half, 2 * half))
    samples = time_interleaved({"stateless": lambda: stateless.classify(tail, threads=1),
                                "stateful": lambda: stateful.classify(tail, threads=1)},
                               plan.repeats, plan.sample_seconds,
                               setup={"stateful": lambda: fresh_stream(stateful, head, 1)})
    fresh_stream(stateful, head, 1)
    held = stateful.tracking_stats()["flows"]
    result = stateful.classify(tail, threads=1)
    new_flows = stateful.tracking_stats()["flows"] - held
    rep.step("stream continued (interleaved)")
    params = {**base, "stream": "continued", "traffic": _traffic_info(details, True, 0.1),
              "per_call": "reset_tracking() + classify(first half), untimed; classify(second "
                          "half), timed"}
    sl_counts = stateless.classify(tail, threads=1).counts()
    sl = res.add(Measurement("state", "fastsg", "classify-continued", samples["stateless"],
                             packets=len(tail), rules=base["rules"], threads=1,
                             params={**params, "mode": "stateless"},
                             extra={"verdicts": sl_counts,
                                    "refused_share": refused_share(sl_counts)}))
    sf = res.add(Measurement("state", "fastsg", "classify-continued", samples["stateful"],
                             packets=len(tail), rules=base["rules"], threads=1,
                             params={**params, "mode": "stateful"},
                             extra={"verdicts": result.counts(),
                                    "refused_share": refused_share(result.counts()),
                                    "tracking": stateful.tracking_stats(),
                                    "new_flows": new_flows}))
    sf.ratios["stateless"] = paired_speedup(sf, sl)
    sf.extra["cost_ratio"] = 1.0 / sf.ratios["stateless"]


def _state_live(ctx, res) -> None:
    """A table of ``live_flows`` flows at one instance: build it (timed: the inserting
    pass, a fresh table each repeat; the last one stays), then time classify of packets of
    those flows (steady state: every packet a hit, the table keeps its size), on one
    thread, next to the stateless engine on the same packets."""
    plan, rep = ctx.plan, ctx.reporter
    flows = plan.live_flows
    world = World.from_dict(live_table_world(flows, plan.seed + 1))
    insert, steady = live_flow_batches(world, flows, plan.live_packets, plan.seed)
    engine = Engine(world, stateful=True, flow_log=False)
    stateless = Engine(world, stateful=False, flow_log=False)
    last = []
    ins = time_repeats(lambda: last.__setitem__(slice(None), [fresh_stream(engine, insert, 1)]),
                       min(3, plan.repeats))
    inserted = last[0].counts()
    built = engine.tracking_stats()
    rep.step(f"{flows:,} live flows: insert")
    engine.classify(steady, threads=1)             # the first steady call, untimed
    stateless.classify(steady, threads=1)
    timings = time_interleaved({"stateful": lambda: engine.classify(steady, threads=1),
                                "stateless": lambda: stateless.classify(steady, threads=1)},
                               plan.repeats, plan.sample_seconds)
    result = engine.classify(steady, threads=1)
    stats = engine.tracking_stats()
    ct = result.rule_names.index("conntrack")
    by_conntrack = float(np.mean((result.egress_rule == ct) | (result.ingress_rule == ct)))
    rep.step(f"{flows:,} live flows: steady state")
    scaled = flows < LIVE_TARGET_FLOWS
    params = {"world": "single_instance_world(100) + tcp/443 from " + LIVE_CLIENTS,
              "flows": flows, "instances": 1, "target_flows": LIVE_TARGET_FLOWS,
              "scaled_down": scaled, "capacity": world.conntrack["capacity"]}
    bpf = built["bytes_per_flow"]
    res.add(Measurement("state", "fastsg", "live-insert", ins, packets=flows, rules=None,
                        threads=1, params={**params, "mode": "stateful",
                                           "what": "one SYN per new flow into an empty table"},
                        extra={"verdicts": inserted, "tracking": built,
                               "all_inserted": built["flows"] == flows}))
    sf = res.add(Measurement(
        "state", "fastsg", "live-classify", timings["stateful"], packets=len(steady), threads=1,
        params={**params, "mode": "stateful", "reply_share": 0.5,
                "what": "packets of random live flows (steady state, table kept)"},
        extra={"verdicts": result.counts(), "accepted_by_conntrack": by_conntrack,
               "tracking": stats, "bytes_per_flow": stats["bytes_per_flow"],
               "arena_bytes_per_flow": stats["arena_bytes"] / max(1, stats["flows"]),
               "bytes_per_flow_target": BYTES_PER_FLOW_TARGET,
               "meets_bytes_target": stats["bytes_per_flow"] <= BYTES_PER_FLOW_TARGET,
               "mpps_target": LIVE_MPPS_TARGET,
               "table_unchanged": stats["flows"] == built["flows"] and bpf == stats["bytes_per_flow"]}))
    sl = res.add(Measurement("state", "fastsg", "live-classify", timings["stateless"],
                             packets=len(steady), threads=1,
                             params={**params, "mode": "stateless", "reply_share": 0.5,
                                     "what": "the same packets, rules only"}))
    sf.ratios["stateless"] = paired_speedup(sf, sl)
    sf.extra["meets_mpps_target"] = sf.mpps >= LIVE_MPPS_TARGET if not scaled else None


def _state_tables(res: ScenarioResult, plan: Plan, threads) -> list:
    ms = res.measurements
    pick = lambda metric, mode, t=1: next((m for m in ms if m.metric == metric
                                           and m.params["mode"] == mode and m.threads == t), None)
    rows = []
    for t in threads:
        sl, sf = pick("classify", "stateless", t), pick("classify", "stateful", t)
        rows.append([str(t), fmt_mpps(sl), fmt_mpps(sf),
                     fmt_ratio(sf.extra["cost_ratio"]) + _mark(sf.extra["meets_target"]),
                     f"{sl.extra['refused_share']:.1%} / {sf.extra['refused_share']:.1%}",
                     f"{sf.extra['tracking']['flows']:,}",
                     "✓" if sf.extra["verified_same_verdicts"] else "✗ DIFFER"])
    cont = {m.params["mode"]: m for m in ms if m.metric == "classify-continued"}
    if cont:
        sl, sf = cont["stateless"], cont["stateful"]
        rows.append(["1, continued", fmt_mpps(sl), fmt_mpps(sf), fmt_ratio(sf.extra["cost_ratio"]),
                     f"{sl.extra['refused_share']:.1%} / {sf.extra['refused_share']:.1%}",
                     f"{sf.extra['tracking']['flows']:,}", "-"])
    sf1 = pick("classify", "stateful")
    t1 = TableSpec(f"state: stateless vs stateful, Mpps ({sf1.rules:,} rules, {sf1.packets:,} "
                   f"packets; median ±spread of {plan.repeats}; cost target ≤ "
                   f"{STATE_COST_TARGET:g}× at {STATE_TARGET_RULES // 1000}k rules)",
                   ["thr", "stateless", "stateful", "cost", "refused sl/sf", "flows",
                    "1=2 thr"], rows, (0, 1, 2, 3, 5))
    ins = next(m for m in ms if m.metric == "live-insert")
    live, base = pick("live-classify", "stateful"), pick("live-classify", "stateless")
    bpf = live.extra["bytes_per_flow"]
    rows = [["insert (new flows)", f"{ins.packets:,}", fmt_spread(ins), fmt_rate(ins.mpps * 1e6),
             f"{ins.extra['tracking']['flows']:,}",
             f"{ins.extra['tracking']['bytes_per_flow']:.1f}"],
            ["steady, stateful", f"{live.packets:,}", fmt_spread(live),
             fmt_rate(live.mpps * 1e6) + _mark(live.extra["meets_mpps_target"]),
             f"{live.extra['tracking']['flows']:,}",
             f"{bpf:.1f}" + _mark(live.extra["meets_bytes_target"])],
            ["steady, stateless", f"{base.packets:,}", fmt_spread(base),
             fmt_rate(base.mpps * 1e6), "-", "-"]]
    flows = live.params["flows"]
    t2 = TableSpec(f"state: {flows:,} live flows at one instance, 1 thread (targets: ≥ "
                   f"{LIVE_MPPS_TARGET:g} Mpps at {LIVE_TARGET_FLOWS // 1_000_000} M flows, ≤ "
                   f"{BYTES_PER_FLOW_TARGET} B/flow)",
                   ["pass", "packets", "time", "rate", "flows held", "B/flow"], rows,
                   (1, 2, 3, 4, 5))
    res.notes.append("cost = stateful / stateless time per packet, same packets and threads, "
                     "timed round-robin (median over rounds of the round's ratio); "
                     "each stateful call is a fresh stream (reset_tracking, so its table "
                     "grows from empty), flow logs off; continued = the second half of "
                     "a stream twice as long, its first half classified before (untimed): "
                     "the tables hold its flows, new ones keep coming, as in a long "
                     "replay's later chunks (the target is judged on the fresh stream); "
                     "refused = DROP+REJECT share; "
                     "1=2 thr: stateful 1 vs 2 threads gave every packet the same verdict "
                     "and deciding rules")
    res.notes.append(f"live table: {live.extra['accepted_by_conntrack']:.1%} of the steady "
                     "packets accepted by conntrack, half of them the instance's replies; "
                     f"B/flow = table bytes / flows held (the arena with its growth slack: "
                     f"{live.extra['arena_bytes_per_flow']:.0f} B/flow)")
    if live.params["scaled_down"]:
        res.notes.append(f"{flows:,} live flows, scaled down from {LIVE_TARGET_FLOWS:,}: the "
                         f"Mpps target is for {LIVE_TARGET_FLOWS:,} flows and is not judged here")
    if sf1.rules < STATE_TARGET_RULES:
        res.notes.append(f"{sf1.rules:,} rules: the cost target is stated for "
                         f"{STATE_TARGET_RULES:,} rules and is not judged here")
    return [t1, t2]


def _mark(ok) -> str:
    """' ✓' / ' ✗' for a met / missed target, '' when it does not apply."""
    return "" if ok is None else (" ✓" if ok else " ✗")


def _scenario_logging(ctx: _Context) -> ScenarioResult:
    """Flow logging on (the world's settings: drops logged) vs off, on fresh engines of the
    same mode, at 0.1%, 1%, 10% and 50% drop rates, stateless (logging cost alone) and stateful;
    one thread, each call a fresh stream (a new log: every record is created, the costlier
    case; a long stream also aggregates into records it already holds)."""
    plan, rep = ctx.plan, ctx.reporter
    res = ScenarioResult("logging")
    rep.scenario_started("logging", 2 + len(LOG_DROP_SHARES) * len(LOG_MODES))
    warm = ctx.warm_features()
    rep.step("warm-up")
    case = ctx.case(plan.logging_rules)
    world = case.world
    engines = {(mode, on): Engine(world, stateful=mode == "stateful", flow_log=None if on else False)
               for mode in LOG_MODES for on in (False, True)}
    rules = engines["stateless", False].refresh().rules
    rep.step(f"{plan.logging_rules} rules: world and engines")
    for drop in LOG_DROP_SHARES:
        for mode in LOG_MODES:
            _logging_cell(ctx, res, world, engines, rules, drop, mode)
            rep.step(f"{drop * 100:g}% drops, {mode}")
    res.tables = [_logging_table(res, plan)]
    res.notes.append(f"tracking and flow-log kernels warmed up first ({warm:.1f} s, not timed)")
    return res


def _logging_cell(ctx, res, world, engines, rules, drop, mode) -> None:
    """Off vs on for one drop share and mode, timed round-robin.  On is timed twice: with a
    new log per call (every record created each time, plus the log's per-stream setup) and
    with one log kept across calls (after the first call every event aggregates into a
    record it already holds: a long stream's steady state; the target is judged on it)."""
    from .flowlog import FlowLog
    plan = ctx.plan
    stateful = mode == "stateful"
    batch, details = feature_traffic(world, plan.logging_packets, plan.seed, stateful, drop)
    off, on = engines[mode, False], engines[mode, True]
    kept = FlowLog(world)
    small = batch.take(slice(0, 1000))
    fresh_stream(off, small)
    fresh_stream(on, small)
    fresh_stream(on, batch, log=kept)               # the kept log's records, untimed
    timings = time_interleaved({"off": lambda: fresh_stream(off, batch),
                                "new-log": lambda: fresh_stream(on, batch),
                                "kept-log": lambda: fresh_stream(on, batch, log=kept)},
                               plan.repeats, plan.sample_seconds)
    r_off, r_on = fresh_stream(off, batch), fresh_stream(on, batch)
    log = on.flow_log                               # the records of one call
    counts = r_on.counts()
    base = {"world": world_shape(plan.logging_rules), "rules": rules, "mode": mode,
            "drop_share": drop, "logging": dict(world.logging),
            "traffic": _traffic_info(details, stateful, drop),
            "per_call": "reset_tracking() + classify" if stateful else "classify"}
    m_off = res.add(Measurement("logging", "fastsg", "classify", timings["off"], packets=len(batch),
                                rules=rules, threads=1, params={**base, "flow_log": "off"},
                                extra={"verdicts": r_off.counts(),
                                       "refused_share": refused_share(r_off.counts())}))
    same = same_results(r_off, r_on)
    for variant in ("new-log", "kept-log"):
        m = res.add(Measurement(
            "logging", "fastsg", "classify", timings[variant], packets=len(batch), rules=rules,
            threads=1, params={**base, "flow_log": variant},
            extra={"verdicts": counts, "refused_share": refused_share(counts),
                   "records": len(log), "logged_events": log.logged_events,
                   "skipped_packets": log.skipped_packets, "verified_same_verdicts": same}))
        m.ratios["flow-log-off"] = paired_speedup(m, m_off)
        cost = 1.0 / m.ratios["flow-log-off"]
        m.extra.update(cost_ratio=cost, overhead=cost - 1.0)
        if drop == LOG_TARGET_DROPS and variant == "kept-log":
            m.extra.update(overhead_target=LOG_COST_TARGET,
                           meets_target=cost - 1.0 <= LOG_COST_TARGET)
    if not same:
        res.notes.append(f"logging changed verdicts ({mode}, {drop * 100:g}% drops): a bug!")


def _logging_table(res: ScenarioResult, plan: Plan) -> TableSpec:
    rows = []
    for drop in LOG_DROP_SHARES:
        for mode in LOG_MODES:
            cell = {m.params["flow_log"]: m for m in res.measurements
                    if m.params["drop_share"] == drop and m.params["mode"] == mode}
            off, new, kept = cell["off"], cell["new-log"], cell["kept-log"]
            rows.append([mode, f"{drop * 100:g}% ({new.extra['refused_share']:.1%})", fmt_mpps(off),
                         fmt_mpps(kept),
                         f"{kept.extra['overhead']:+.0%}" + _mark(kept.extra.get("meets_target")),
                         f"{new.extra['overhead']:+.0%}",
                         f"{new.extra['records']:,}", f"{new.extra['logged_events']:,}"])
    first = res.measurements[0]
    res.notes.append("cost = extra time per packet with the flow log (the world's settings: "
                     "drops logged, accepts not) vs without, same packets, fresh engines of the "
                     "same mode, timed round-robin (median over rounds of the round's ratio); "
                     "kept log = one log across calls (a long "
                     "stream: events aggregate into records it holds; the target is judged "
                     "here); new log = a new log per call (every record created, plus the "
                     "log's per-stream setup); drops = target (DROP+REJECT share seen, "
                     "generator not calibrated); records / events: one call's")
    return TableSpec(f"logging: flow log cost, Mpps ({first.rules:,} rules, {first.packets:,} "
                     f"packets, 1 thr; median ±spread of {plan.repeats}; target ≤ "
                     f"+{LOG_COST_TARGET:.0%} at {LOG_TARGET_DROPS:.0%} drops)",
                     ["mode", "drops", "log off", "log on", "cost", "new log", "records",
                      "events"], rows, (1, 2, 3, 4, 5, 6, 7))


# ==========================================================================================
# scenario: peers (tcpdump, DPDK ACL)
# ==========================================================================================

def _scenario_peers(ctx: _Context) -> ScenarioResult:
    res = ScenarioResult("peers")
    ctx.reporter.scenario_started("peers", 2)
    for fn in (_peer_tcpdump, _peer_dpdk):
        try:
            fn(ctx, res)
        except Exception as exc:                # a peer tool misbehaving is not our failure
            res.add(Measurement("peers", fn.__name__.replace("_peer_", ""), "run", status="failed",
                                note=f"{type(exc).__name__}: {exc}"))
        ctx.reporter.step(fn.__name__)
    res.tables = [_peers_table(res)]
    return res


def single_instance_world(rules: int, seed: int, five_tuple_only: bool = False) -> dict:
    """An allow-only world of one IPv4 instance in one group, CIDR peers only.

    Peers express policy differently, so the rules are restricted to what they can state
    exactly: IPv4 CIDRs (no group peers, no IPv6); with ``five_tuple_only`` (DPDK ACL) also
    no ICMP rules (an ACL 5-tuple has no ICMP type).  Drawn with some slack, trimmed to
    ``rules``."""
    from .generate import generate_world
    d = generate_world(int(rules * 1.5) + 10, 1, 1, deny_share=0.0, group_peer_share=0.0,
                       ipv6_share=0.0, egress_share=0.0, accounts=1, stopped_share=0.0, seed=seed)
    group = d["security_groups"][0]
    keep = []
    for r in group.get("ingress", []):
        cidr = str(r.get("cidr", ""))
        proto = str(r.get("protocol", "all"))
        if not cidr or ":" in cidr or proto in ("icmpv6", "58"):
            continue
        if five_tuple_only and proto in ("icmp", "1"):
            continue
        if _wide_open(cidr, proto, r.get("ports")):
            continue
        keep.append(r)
    group["ingress"] = keep[:rules]
    inst = d["instances"][0]
    for k in ("private_ipv6", "public_ip"):
        inst.pop(k, None)
    return d


def _wide_open(cidr: str, proto: str, ports) -> bool:
    """A rule from anywhere (/0) for all protocols or a wide port range: it would accept
    nearly every packet, leaving the peers' verdicts nothing to disagree on."""
    if not cidr.endswith("/0"):
        return False
    if proto in ("all", "-1"):
        return True
    if ports is None:
        return proto in ("tcp", "udp", "6", "17")
    lo, _, hi = str(ports).partition("-")
    return bool(hi) and int(hi) - int(lo) > 1024


def _peer_traffic(world: World, packets: int, seed: int) -> PacketBatch:
    """IPv4 traffic for a single-instance world: generated flows (flow locality, replies,
    fragments) with one uniformly random inbound 5-tuple (a scan) in five mixed in, so
    accepted and refused packets both occur."""
    x = int(next(i for i in world.instances.values() if i.running).private_ip)
    gen = traffic(world, packets - packets // 5, seed, ipv6_share=0.0)
    gen = gen.take(gen.ipver == 4)
    rng = np.random.default_rng(seed + 0xAC1)
    k = packets - len(gen)
    t0, t1 = (int(gen.ts[0]), int(gen.ts[-1])) if len(gen) else (0, 1)
    rand = PacketBatch.from_arrays(
        rng.integers(1 << 24, 224 << 24, k, dtype=np.int64).astype(np.uint32), np.full(k, x, np.uint32),
        rng.choice(np.array([6, 17, 6, 17, 47]), k), sport=rng.integers(1024, 65536, k),
        dport=rng.integers(0, 65536, k), ts=np.sort(rng.integers(t0, t1 + 1, k)))
    both = PacketBatch.concat([gen, rand])
    # in time order: the generated packets keep their order (locality), scans interleave
    return both.take(np.argsort(both.ts, kind="stable"))


def bpf_filter(world: World) -> str:
    """A BPF expression accepting exactly the packets fastsg ACCEPTs for a single-instance,
    IPv4, CIDR-only world (``single_instance_world``).

    ACCEPT <=> the packet involves the instance X and each check it meets passes:
    ``(src X or dst X) and (not src X or EGRESS) and (not dst X or INGRESS)``.  Port
    primitives of libpcap only match first fragments, like port-restricted rules; a
    full-range rule becomes a bare protocol test so it matches fragments too (spec 3)."""
    inst = next(i for i in world.instances.values() if i.running)
    x = str(inst.private_ip)
    rules = {d: [r for g in inst.groups for r in world.groups[g].rules(d)]
             for d in ("ingress", "egress")}
    ing = _bpf_any([_bpf_rule(r, "src") for r in rules["ingress"]])
    egr = _bpf_any([_bpf_rule(r, "dst") for r in rules["egress"]])
    return (f"(ip src host {x} or ip dst host {x}) and (not ip src host {x} or {egr}) "
            f"and (not ip dst host {x} or {ing})")


def _bpf_any(clauses: list) -> str:
    # an empty rule list matches nothing; "ip and not ip" is BPF's false
    return "(" + " or ".join(c for c in clauses if c) + ")" if any(clauses) else "(ip and not ip)"


def _bpf_rule(rule, peer: str) -> str | None:
    """One rule as a BPF clause (IPv4 only; None for a rule that cannot match IPv4)."""
    if rule.cidr is None or rule.cidr.version != 4:
        return None
    p = rule.protocol
    if p in (-1, None):
        parts = ["ip"]
    elif p in (6, 17):
        name = "tcp" if p == 6 else "udp"
        if rule.port_lo == 0 and rule.port_hi == 65535:
            parts = [f"ip proto {p}"]
        elif rule.port_lo == rule.port_hi:
            parts = [f"{name} dst port {rule.port_lo}"]
        else:
            parts = [f"{name} dst portrange {rule.port_lo}-{rule.port_hi}"]
    elif p == 1:
        parts = ["icmp"]
        if rule.icmp_type >= 0:
            # a non-first fragment has no ICMP header: typed rules never match it
            parts += ["ip[6:2] & 0x1fff = 0", f"icmp[0] = {rule.icmp_type}"]
            if rule.icmp_code >= 0:
                parts.append(f"icmp[1] = {rule.icmp_code}")
    else:
        parts = [f"ip proto {p}"]
    if rule.cidr.prefixlen:
        parts.append(f"{peer} net {rule.cidr}")
    return "(" + " and ".join(parts) + ")"


def _run(cmd: list, timeout: float = 300) -> tuple:
    """Run a command; (seconds, CompletedProcess)."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    return time.perf_counter() - t0, proc


def _fastsg_cli() -> list:
    """argv prefix running this fastsg's CLI in a new process, as the ``fastsg`` console
    script does (``fastsg.cli.main.run``)."""
    return [sys.executable, "-c", "from fastsg.cli.main import run; run()"]


def _peer_tcpdump(ctx: _Context, res: ScenarioResult) -> None:
    """tcpdump -r FILE -w /dev/null 'BPF' vs fastsg on the same capture and policy."""
    from .capture import read_capture
    from .packet_build import write_capture
    tool = shutil.which("tcpdump")
    if tool is None:
        res.add(Measurement("peers", "tcpdump", "filter", status="skipped",
                            note="tcpdump not installed (e.g. apt-get install tcpdump)"))
        return
    plan = ctx.plan
    d = single_instance_world(plan.tcpdump_rules, plan.seed)
    world = World.from_dict(d)
    batch = _peer_traffic(world, plan.peer_packets, plan.seed)
    pcap, wfile, out = ctx.tmp / "peer.pcap", ctx.tmp / "peer-world.json", ctx.tmp / "tcpdump-out.pcap"
    write_capture(pcap, batch)
    world.save(wfile)
    expr = bpf_filter(world)
    _, proc = _run([tool, "-r", str(pcap), "-w", str(out), expr])
    if proc.returncode != 0:
        raise RuntimeError(f"tcpdump failed: {proc.stderr.strip()[-300:]}")
    their = len(read_capture(out))
    samples = [_run([tool, "-r", str(pcap), "-w", "/dev/null", expr])[0]
               for _ in range(min(3, plan.repeats))]
    # fastsg: the library's end-to-end time (compile + read + classify) ...
    lib = []
    lib_samples = time_repeats(lambda: lib.append(library_replay(world, pcap, plan.threads)),
                               min(3, plan.repeats))
    ours = lib[-1].verdicts["ACCEPT"]
    n = len(batch)
    info = {"rules": len(d["security_groups"][0]["ingress"]), "bpf_chars": len(expr)}
    tm = res.add(Measurement("peers", "tcpdump", "filter-process", samples, packets=n,
                             rules=info["rules"], params={**info, "what": "BPF filter, process"},
                             extra={"accepted": their, "fastsg_accepted": ours,
                                    "same_count": their == ours, "version": _tool_version([tool, "--version"])}))
    fl = res.add(Measurement("peers", "fastsg", "replay-library",
                             lib_samples, packets=n, rules=info["rules"], threads=plan.threads,
                             params={**info, "what": "replay, library"}, extra={"accepted": ours, "timings_s": _median_timings(lib)}))
    fl.ratios["tcpdump"] = tm.median / fl.median
    _peer_processes(ctx, res, tool, expr, pcap, wfile, n, their, info)


def tiled_capture(src, dst, copies: int) -> None:
    """A classic pcap file holding ``copies`` back-to-back copies of ``src``'s records (the
    same header), written in bounded memory: a large capture of known content."""
    with open(src, "rb") as f:
        head = f.read(24)
        body = f.read()
    with open(dst, "wb") as out:
        out.write(head)
        for _ in range(copies):
            out.write(body)


def _peer_processes(ctx, res, tool, expr, pcap, wfile, n, their, info) -> None:
    """tcpdump and ``fastsg replay --stateless --json`` as whole processes (interpreter
    start, imports, kernel cache load, world load and compile included for fastsg), timed
    in turn on a capture of ``peer_process_packets`` records: the peer capture repeated,
    so tcpdump's accepted count is its count on one copy times the copies."""
    if importlib.util.find_spec("fastsg.cli.replay_cmd") is None:
        res.notes.append("fastsg replay (CLI) not available: whole-process comparison skipped")
        return
    copies = max(1, round(ctx.plan.peer_process_packets / max(n, 1)))
    big = pcap
    if copies > 1:
        big = ctx.tmp / "peer-big.pcap"
        tiled_capture(pcap, big, copies)
    cmd = _fastsg_cli() + ["replay", str(big), "--world", str(wfile), "--stateless", "--json"]
    tcmd = [tool, "-r", str(big), "-w", "/dev/null", expr]
    # untimed first runs: fastsg's checks the result and fills numba's cache for any kernel
    # not cached yet (a cold JIT would otherwise dominate); both warm the page cache
    _run(tcmd)
    _, first = _run(cmd)
    if first.returncode != 0:
        res.notes.append(f"fastsg replay (CLI) failed: {(first.stderr or first.stdout).strip()[-200:]}")
        return
    try:
        accepted = json.loads(first.stdout)["verdicts"]["ACCEPT"]
    except (ValueError, KeyError, TypeError):
        accepted = None
    theirs, ours = [], []
    for _ in range(1 if ctx.plan.quick else 3):
        theirs.append(_run(tcmd)[0])
        ours.append(_run(cmd)[0])
    packets = n * copies
    tm = res.add(Measurement("peers", "tcpdump", "filter-process", theirs, packets=packets,
                             rules=info["rules"],
                             params={**info, "what": "BPF filter, process", "copies": copies},
                             extra={"accepted": their * copies}))
    m = res.add(Measurement("peers", "fastsg", "replay-process", ours, packets=packets,
                            rules=info["rules"],
                            params={**info, "what": "replay --stateless, process",
                                    "copies": copies},
                            extra={"accepted": accepted,
                                   "same_count": accepted == their * copies}))
    m.ratios["tcpdump"] = tm.median / m.median
    if copies > 1:
        big.unlink()
    # the floor under any whole-process replay: start-up, world load and compile, one packet
    from .capture import read_capture
    from .capture.writer import copy_records
    one = ctx.tmp / "peer-one.pcap"
    copy_records(pcap, read_capture(pcap), np.arange(n) == 0, one)
    floor = [_run(_fastsg_cli() + ["replay", str(one), "--world", str(wfile), "--stateless",
                                   "--json"])[0] for _ in range(1 if ctx.plan.quick else 3)]
    res.add(Measurement("peers", "fastsg", "replay-process-floor", floor, packets=1,
                        rules=info["rules"],
                        params={**info, "what": "replay of 1 packet, process (start-up)"}))


def _tool_version(cmd: list) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        text = (proc.stdout + proc.stderr).strip().splitlines()
        return text[0] if text else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def classbench_rules(world: World) -> tuple:
    """(ClassBench rule lines for dpdk-test-acl, instance address as int).

    One ACL rule per ingress rule, in canonical order: src = the rule's CIDR, dst = the
    instance /32, any source port, the rule's destination ports, protocol/mask.  Allow-only,
    so "some rule matches" (DPDK's result != no match) is exactly fastsg's ACCEPT."""
    inst = next(i for i in world.instances.values() if i.running)
    x = str(inst.private_ip)
    lines = []
    for rule in (r for g in inst.groups for r in world.groups[g].rules("ingress")):
        p = rule.protocol
        lo, hi = (rule.port_lo, rule.port_hi) if p in (6, 17) else (0, 65535)
        proto = "0/0x00" if p in (-1, None) else f"{p}/0xff"
        lines.append(f"@{rule.cidr.network_address}/{rule.cidr.prefixlen} {x}/32 "
                     f"0 : 65535 {lo} : {hi} {proto}")
    return lines, int(inst.private_ip)


def classbench_trace(batch: PacketBatch) -> list:
    """ClassBench trace lines (src dst sport dport proto, host-order integers)."""
    ports = np.isin(batch.proto, (6, 17))
    sport = np.where(ports, batch.sport, 0)
    dport = np.where(ports, batch.dport, 0)
    cols = np.stack([batch.src_lo.astype(np.int64), batch.dst_lo.astype(np.int64),
                     sport.astype(np.int64), dport.astype(np.int64),
                     batch.proto.astype(np.int64)], axis=1)
    return [" ".join(map(str, row)) for row in cols.tolist()]


_DPDK_RATE = re.compile(r"(\d+) pkts, .*?\(([\d.]+) sec\), ([\d.]+) cycles/pkt, ([\d.]+) pkt/sec")


def acl_trace_batch(world: World, packets: int, seed: int) -> PacketBatch:
    """The packets the ACL peer judges: inbound IPv4 packets to the single instance (its
    ingress check), without non-first fragments (they have no 5-tuple)."""
    x = int(next(i for i in world.instances.values() if i.running).private_ip)
    batch = _peer_traffic(world, packets, seed)
    return batch.take((batch.dst_lo == x) & (batch.frag == 0) & (batch.status == 0))


def _peer_dpdk(ctx: _Context, res: ScenarioResult) -> None:
    """dpdk-test-acl (DPDK's ACL library) on the ClassBench form of a single-instance
    policy and a trace of packets to it, vs fastsg on the same packets.

    DPDK returns the highest-priority matching rule, and test-acl gives rule k (file order)
    priority MAX-k: the first match, which is exactly fastsg's deciding rule for an
    allow-only policy; so every packet's *rule* is compared, not just the counts."""
    tool = shutil.which("dpdk-test-acl")
    if tool is None:
        res.add(Measurement("peers", "dpdk-acl", "classify", status="skipped",
                            note="dpdk-test-acl not installed (e.g. apt-get install dpdk)"))
        return
    plan = ctx.plan
    d = single_instance_world(plan.dpdk_rules, plan.seed, five_tuple_only=True)
    world = World.from_dict(d)
    rules, _ = classbench_rules(world)
    batch = acl_trace_batch(world, plan.peer_packets, plan.seed)
    rfile, tfile = ctx.tmp / "acl.rules", ctx.tmp / "acl.trace"
    rfile.write_text("\n".join(rules) + "\n")
    tfile.write_text("\n".join(classbench_trace(batch)) + "\n")
    n = len(batch)
    base = [tool, "--no-pci", "--no-huge", "-l", "0", "-m", "2048", "--log-level", "lib.eal:error",
            "--", f"--rulesf={rfile}", f"--tracef={tfile}", f"--rulenum={len(rules) + 1}",
            f"--tracenum={n}"]
    their_rules = _dpdk_results(base, n)
    engine = Engine(world, stateful=False, flow_log=False)
    compile_s = engine.last_compile_seconds
    engine.classify(batch.take(slice(0, 1000)), threads=1)
    # one thread, and every thread (the target compares fastsg on 2 threads with DPDK on
    # one lcore)
    thread_counts = sorted({1, plan.threads})
    fast = time_interleaved({t: (lambda t=t: engine.classify(batch, threads=t))
                             for t in thread_counts}, plan.repeats, plan.sample_seconds)
    same, ours, their = _compare_acl(engine.classify(batch, threads=1), world, their_rules)
    iters = max(1, int(5e6 / max(n, 1)))            # ~5 M lookups (~0.3 s) per timing run
    timing = [_dpdk_timing(base + [f"--iter={iters}", "--verbose=0"])
              for _ in range(min(2, plan.repeats))]
    info = {"rules": len(rules), "trace_packets": n, "iterations": iters,
            "dpdk": "test-acl, 1 lcore, --no-huge (4 KiB pages), default classify method"}
    dm = res.add(Measurement("peers", "dpdk-acl", "classify",
                             [t["classify_s"] / iters for t in timing], packets=n, rules=len(rules),
                             threads=1, params={**info, "what": "ACL classify, 1 lcore"},
                             extra={"accepted": their, "fastsg_accepted": ours, "same_count": same,
                                    "same_rule_per_packet": same,
                                    "cycles_per_pkt": [t["cycles_per_pkt"] for t in timing],
                                    "whole_process_s": [t["process_s"] for t in timing]}))
    for t in thread_counts:
        fm = res.add(Measurement("peers", "fastsg", "classify", fast[t],
                                 packets=n, rules=len(rules), threads=t,
                                 params={**info, "what": f"classify, {t} thr"},
                                 extra={"accepted": ours, "compile_s": compile_s}))
        fm.ratios["dpdk-acl"] = fm.mpps / dm.mpps


def _dpdk_results(base: list, n: int) -> np.ndarray:
    """Per-packet result of dpdk-test-acl (0-based rule line, -1: no match), from one
    --verbose=2 run (one "result:" line per trace record)."""
    _, proc = _run(base + ["--verbose=2"])
    if proc.returncode != 0:
        raise RuntimeError(f"dpdk-test-acl failed: {(proc.stderr or proc.stdout).strip()[-300:]}")
    found = np.array(re.findall(r"result: (\d+)", proc.stdout), dtype=np.int64)
    if len(found) != n:
        raise RuntimeError(f"dpdk-test-acl printed {len(found)} results for {n} trace records")
    return np.where(found == 0xFFFFFFFF, -1, found)


def _compare_acl(result, world: World, their_rules: np.ndarray) -> tuple:
    """(every packet's deciding rule equal, fastsg accepted, DPDK matched)."""
    inst = next(i for i in world.instances.values() if i.running)
    line = {r.id: k for k, r in enumerate(r for g in inst.groups for r in world.groups[g].rules("ingress"))}
    names = result.rule_names
    ours_rules = np.array([line.get(names[i], -1) if i >= 0 else -1 for i in result.ingress_rule.tolist()])
    accepted = int((result.verdict == Verdict.ACCEPT).sum())
    same = bool(np.array_equal(ours_rules, their_rules)) and accepted == int((their_rules >= 0).sum())
    return same, accepted, int((their_rules >= 0).sum())


def _dpdk_timing(cmd: list) -> dict:
    seconds, proc = _run(cmd)
    m = _DPDK_RATE.search(proc.stdout)
    if proc.returncode != 0 or m is None:
        raise RuntimeError(f"dpdk-test-acl gave no timing: {(proc.stderr or proc.stdout).strip()[-300:]}")
    # the "(S sec)" field has 10 ms resolution; pkt/sec is exact: time = packets / rate
    return {"classify_s": int(m.group(1)) / float(m.group(4)), "cycles_per_pkt": float(m.group(3)),
            "process_s": seconds}


def _peers_table(res: ScenarioResult) -> TableSpec:
    rows = []
    for m in res.measurements:
        if m.status != "ok":
            rows.append([m.engine, m.metric, "-", "-", "-", "-", "-", f"{m.status}: {m.note}"])
            continue
        acc = m.extra.get("accepted")
        same = m.extra.get("same_count")
        mark = "" if same is None else (" ✓" if same else
                                        f" ✗ MISMATCH (fastsg {m.extra.get('fastsg_accepted')})")
        ratio = next(iter(m.ratios.values()), None)
        rows.append([m.engine, m.params.get("what", m.metric), f"{m.rules:,}" if m.rules else "-",
                     f"{m.packets:,}",
                     fmt_spread(m),
                     "-" if m.metric == "replay-process-floor" else fmt_rate(m.mpps * 1e6),
                     fmt_ratio(ratio) if ratio else "",
                     f"{acc:,}{mark}" if acc is not None else "-"])
    res.notes.append("allow-only single-instance IPv4 policies; tcpdump: the equivalent BPF "
                     "filter, ✓ = same accepted count as fastsg; DPDK: dpdk-test-acl on the "
                     "ClassBench form, ✓ = same deciding rule for every packet; × = fastsg faster "
                     "than the nearest peer row above it; the process rows replay a capture "
                     "of that many packets (the peer capture repeated), so start-up counts "
                     "as it would for a real capture; the 1-packet row is the start-up floor "
                     "of any fastsg process")
    return TableSpec("peers: tcpdump and DPDK ACL", ["tool", "what", "rules", "packets", "time",
                                                     "rate", "×", "accepted"],
                     rows, (2, 3, 4, 5, 6, 7))


_SCENARIO_FUNCS = {"rules": _scenario_rules, "order": _scenario_order, "updates": _scenario_updates,
                   "capture": _scenario_capture, "logging": _scenario_logging,
                   "state": _scenario_state, "peers": _scenario_peers}


# ==========================================================================================
# plots
# ==========================================================================================

def plot(data: dict, path) -> None:
    """Save a PNG from a report dict (``Report.to_dict()`` or a loaded JSON): throughput vs
    rule count per engine (log-log), feature-overhead bars, update latency.  Agg backend,
    no pyplot state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    ms = data["measurements"]
    panels = [p for p in (_plot_rules, _plot_features, _plot_updates) if p(None, ms)]
    fig = Figure(figsize=(6.5 * max(1, len(panels)), 5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, max(1, len(panels)), squeeze=False)[0]
    for ax, panel in zip(axes, panels):
        panel(ax, ms)
    if not panels:
        axes[0].text(0.5, 0.5, "nothing to plot", ha="center", va="center")
    m = data.get("machine", {})
    fig.suptitle(f"fastsg {data.get('fastsg_version', '')} bench — {m.get('cpu_model', '?')}, "
                 f"{m.get('numba_threads', '?')} threads", fontsize=10)
    fig.savefig(path, dpi=110)


def _plot_rules(ax, ms) -> bool:
    series = {}
    for m in ms:
        if m["scenario"] == "rules" and m["metric"] == "classify" and m.get("mpps"):
            label = m["engine"] + (f" ({m['threads']} thr)" if m["engine"] == "fastsg" else "")
            series.setdefault(label, []).append((m["rules"], m["mpps"], m["mpps_min"], m["mpps_max"]))
    if ax is None or not series:
        return bool(series)
    for label, pts in sorted(series.items()):
        pts.sort()
        x = [p[0] for p in pts]
        y = [p[1] for p in pts]
        err = [[p[1] - p[2] for p in pts], [p[3] - p[1] for p in pts]]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("rules in the world")
    ax.set_ylabel("Mpps (median, min-max)")
    ax.set_title("throughput vs rule count")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return True


def _plot_features(ax, ms) -> bool:
    """Bars: deny rules x order, stateless vs stateful, flow log off vs on (stateless)."""
    bars = []                   # (label, measurement, color)
    palette = {0.0: "tab:green", 0.1: "tab:orange", 0.5: "tab:red"}
    order = [m for m in ms if m["scenario"] == "order" and m.get("mpps")]
    for o in ORDERS:
        for m in (x for x in order if x["params"]["order"] == o):
            bars.append((f"{o}, {m['params']['deny_share']:.0%} deny", m,
                         palette.get(m["params"]["deny_share"], "tab:blue")))
    for m in ms:
        if m["scenario"] == "state" and m["metric"] == "classify" and m.get("mpps"):
            mode = m["params"]["mode"]
            bars.append((f"{mode}, {m['threads']} thr", m,
                         "tab:purple" if mode == "stateful" else "tab:gray"))
    for m in ms:
        if (m["scenario"] == "logging" and m["params"].get("mode") == "stateless"
                and m["params"].get("flow_log") in ("off", "kept-log") and m.get("mpps")):
            on = m["params"]["flow_log"] != "off"
            bars.append((f"log {'on' if on else 'off'}, {m['params']['drop_share'] * 100:g}% drops", m,
                         "tab:cyan" if on else "tab:gray"))
    if ax is None or not bars:
        return bool(bars)
    values = [m["mpps"] for _, m, _ in bars]
    err = [[m["mpps"] - m["mpps_min"] for _, m, _ in bars],
           [m["mpps_max"] - m["mpps"] for _, m, _ in bars]]
    ax.bar(range(len(bars)), values, color=[c for _, _, c in bars], yerr=err, capsize=2)
    # one-line labels turned upright: two-line labels at an angle ran into each other
    ax.set_xticks(range(len(bars)), [label for label, _, _ in bars], fontsize=7, rotation=90)
    ax.set_ylabel("Mpps (median, min-max)")
    ax.set_title("feature overhead: deny rules x order, tracking, flow logs")
    ax.grid(True, axis="y", alpha=0.3)
    return True


def _plot_updates(ax, ms) -> bool:
    ups = [m for m in ms if m["scenario"] == "updates" and m.get("median_s")]
    if ax is None or not ups:
        return bool(ups)
    sizes = sorted({m["params"]["world"]["rules"] for m in ups})
    kinds = ["full-compile"] + list(UPDATE_KINDS)
    width = 0.8 / len(kinds)
    for k, kind in enumerate(kinds):
        ys = [next((m["median_s"] * 1e3 for m in ups if m["metric"] == kind
                    and m["params"]["world"]["rules"] == s), 0) for s in sizes]
        ax.bar([i + k * width for i in range(len(sizes))], ys, width, label=kind)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(sizes))], [f"{s:,} rules" for s in sizes])
    ax.set_yscale("log")
    ax.set_ylabel("ms (median)")
    ax.set_title("update latency vs full compile")
    ax.legend(fontsize=7)
    ax.grid(True, axis="y", alpha=0.3)
    return True
