"""Placeholder until the `fastsg bench` command lands (another engineer owns this file)."""
COMMANDS = []
