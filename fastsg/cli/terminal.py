"""All terminal output of the CLI, through rich.

Status, tables and progress go to stderr; machine output (``--json``) goes to stdout, so
``fastsg replay ... --json | jq`` works while progress is shown.
"""
from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from typing import Iterable, Sequence

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.table import Table

err = Console(stderr=True, highlight=False)
out = Console(highlight=False)


def status(message: str) -> None:
    """A status line on stderr."""
    err.print(message)


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/yellow] {message}")


def error(message: str) -> None:
    err.print(f"[bold red]error:[/bold red] {message}", markup=True)


def emit_json(obj, stream=None) -> None:
    """Machine output: one JSON document on stdout (or ``stream``)."""
    text = json.dumps(obj, indent=2, sort_keys=False, default=str)
    (stream or sys.stdout).write(text + "\n")
    (stream or sys.stdout).flush()


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence], justify_right: Sequence[int] = ()) -> None:
    """A rich table on stderr (human output)."""
    t = Table(title=title, title_justify="left")
    for i, c in enumerate(columns):
        t.add_column(c, justify="right" if i in justify_right else "left")
    for r in rows:
        t.add_row(*[str(x) for x in r])
    err.print(t)


def plain(text: str) -> None:
    """Plain text on stdout (for output meant to be piped, e.g. one group name per line)."""
    out.print(text, markup=False, highlight=False, soft_wrap=True)


@contextmanager
def progress(description: str, total: float | None, enabled: bool = True):
    """A progress bar on stderr; yields ``advance(amount)``.  Disabled when not wanted or
    when stderr is not a terminal and the caller says so."""
    if not enabled:
        yield lambda amount=1: None
        return
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda amount=1: bar.advance(task, amount)


def counts_table(title: str, columns: Sequence[str], rows: Iterable[Sequence],
                 total: Sequence | None = None) -> None:
    """A rich table of counts on stderr: the first column left-aligned, the others right-
    aligned, numbers with thousands separators, and an optional ``total`` footer row."""
    t = Table(title=title, title_justify="left", show_footer=total is not None)
    for i, c in enumerate(columns):
        footer = "" if total is None else _count(total[i])
        t.add_column(c, justify="left" if i == 0 else "right", footer=footer)
    for r in rows:
        t.add_row(*[_count(x) for x in r])
    err.print(t)


def _count(x) -> str:
    return f"{x:,}" if isinstance(x, int) and not isinstance(x, bool) else str(x)
