"""``fastsg``: the command group.  Each command lives in its own module and is registered here."""
from __future__ import annotations

import sys

import click

from .. import __version__
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
