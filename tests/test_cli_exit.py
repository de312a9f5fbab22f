"""The console script's quick exit (``fastsg.cli.main.run``): the process ends right after
the command with its status, and everything the command wrote reaches its streams."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fastsg.cli.main import exit_status


def _fastsg(*args, env=None, **kw):
    return subprocess.run([sys.executable, "-m", "fastsg", *args], capture_output=True,
                          text=True, timeout=600, env={**os.environ, **(env or {})}, **kw)


@pytest.mark.parametrize("full", ["0", "1"])
def test_status_and_output_survive_the_exit(tmp_path, full):
    env = {"FASTSG_FULL_EXIT": full}
    ok = _fastsg("--version", env=env)
    assert ok.returncode == 0 and "fastsg" in ok.stdout
    bad = _fastsg("replay", str(tmp_path / "missing.pcap"), "--world",
                  str(tmp_path / "missing.yaml"), env=env)
    assert bad.returncode != 0 and "missing" in bad.stderr
    usage = _fastsg("no-such-command", env=env)
    assert usage.returncode == 2 and "No such command" in usage.stderr


def test_large_json_output_is_flushed_whole(tmp_path):
    """A command's --json document (block-buffered stdout on a pipe) arrives complete."""
    from fastsg.benchmark import single_instance_world
    from fastsg.packet_build import write_capture
    from fastsg.world.model import World
    from fastsg import PacketBatch
    import numpy as np
    world = World.from_dict(single_instance_world(40, 3))
    world_path = tmp_path / "world.json"
    world.save(world_path)
    n = 500
    batch = PacketBatch.from_arrays(np.full(n, 0x0A000001, np.uint32),
                                    np.full(n, 0x0A000002, np.uint32), 6,
                                    sport=np.arange(n) + 1000, dport=443)
    write_capture(tmp_path / "c.pcap", batch)
    proc = _fastsg("replay", str(tmp_path / "c.pcap"), "--world", str(world_path),
                   "--stateless", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)                      # parses: nothing cut off
    assert doc["packets"] == n and sum(doc["verdicts"].values()) == n


def test_exit_status_maps_like_python():
    assert exit_status(None) == 0
    assert exit_status(0) == 0
    assert exit_status(2) == 2
    assert exit_status(True) == 1
    assert exit_status(256 + 3) == 3
    assert exit_status(-1) == 255
    assert exit_status("message") == 1
