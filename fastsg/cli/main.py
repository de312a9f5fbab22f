"""``fastsg``: the command group.  Each command lives in its own module and is registered here."""
from __future__ import annotations

import os
import sys

import click

from .. import __version__
from ..config import env_flag
from ..errors import FastsgError
from . import terminal


class _Group(click.Group):
    """Turns fastsg's own errors (bad world file, bad capture...) into a clear message and
    exit status 2, instead of a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except FastsgError as exc:
            terminal.error(str(exc))
            sys.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fastsg")
def main():
    """Evaluate security-group policy against real and synthetic traffic, fast."""


def _register():
    from . import aws_cmd, bench_cmd, instances_cmd, replay_cmd, world_cmd
    for module in (bench_cmd, replay_cmd, world_cmd, instances_cmd, aws_cmd):
        for command in module.COMMANDS:
            main.add_command(command)


_register()


def run() -> None:
    """The ``fastsg`` console script (and ``python -m fastsg``): the command group, then a
    quick exit.

    Tearing the interpreter down after a command costs 0.3 s here, numba's and llvmlite's
    finalization mostly (0.13 s after ``import numba`` alone): more than many commands
    take, and a third of a whole-process replay of a million packets.  Every command
    closes and renames its output files before it returns, so once the command group is
    done the standard streams are flushed and the process ends at once (``os._exit``)
    with the command's status.  ``FASTSG_FULL_EXIT=1`` keeps the normal interpreter exit.
    """
    try:
        main(prog_name="fastsg")
        code = None
    except SystemExit as exc:
        code = exc.code
    if env_flag("FASTSG_FULL_EXIT", False):
        sys.exit(code)
    status = exit_status(code)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            status = status or 120          # what Python's own exit reports for this
    os._exit(status)


def exit_status(code) -> int:
    """A ``SystemExit`` code as a process status, as Python's own exit maps it: None 0,
    an integer itself (low 8 bits), anything else printed to stderr and 1."""
    if code is None:
        return 0
    if not isinstance(code, int):
        sys.stderr.write(f"{code}\n")
        return 1
    return code & 0xFF

