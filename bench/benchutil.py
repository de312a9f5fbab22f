"""Helpers of the benchmark suites (sizes and readable ids), importable from any suite."""
from __future__ import annotations

import os

from fastsg import benchmark as B

DEFAULT_RULES = (100, 1000, 10_000, 100_000)


def bench_rules(default=DEFAULT_RULES) -> tuple:
    """Rule counts to benchmark: ``FASTSG_BENCH_RULES`` (intersected with ``default`` when
    both are given, so each suite keeps its own range), else ``default``."""
    text = os.environ.get("FASTSG_BENCH_RULES")
    if not text:
        return tuple(default)
    wanted = B.parse_sizes(text)
    return tuple(r for r in default if r in wanted) or wanted


def size_id(rules: int) -> str:
    """100 -> '100-rules', 10000 -> '10k-rules'."""
    return (f"{rules // 1000}k" if rules >= 1000 and rules % 1000 == 0 else str(rules)) + "-rules"
