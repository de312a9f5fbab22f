"""The ``fastsg`` command line: replay, check, classify, generate (through click's CliRunner).

The commands are thin; what they compute is tested in test_replay.py.  Here: options,
exit statuses, where output goes (``--json`` on stdout, the rest on stderr), error messages.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from fastsg import World
from fastsg.capture import read_capture
from fastsg.cli.main import main

try:
    from naive import naive_classify, packets_from_batch
except ImportError:                                     # tests/ imported as a package
    from tests.naive import naive_classify, packets_from_batch

DATA = Path(__file__).resolve().parent / "data" / "worlds"


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def said(result, *texts) -> bool:
    """Every text appears on stderr (rich wraps lines at the terminal width: whitespace is
    ignored on both sides)."""
    flat = "".join(result.stderr.split())
    return all("".join(t.split()) in flat for t in texts)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """A world and a capture made by ``fastsg generate``."""
    d = tmp_path_factory.mktemp("cli")
    w = d / "world.yaml"
    r = run("generate", "world", "--rules", 60, "--groups", 8, "--instances", 20,
            "--deny-share", 0.2, "--ipv6-share", 0.2, "--seed", 3, "-o", w)
    assert r.exit_code == 0, r.output
    c = d / "traffic.pcap"
    r = run("generate", "traffic", "--world", w, "--packets", 2000, "--drop-share", 0.2,
            "--stateless", "--seed", 4, "-o", c)
    assert r.exit_code == 0, r.output
    return w, c


# ---------------------------------------------------------------------------------------
# generate
# ---------------------------------------------------------------------------------------
def test_generate_is_deterministic(generated, tmp_path):
    w, c = generated
    w2, c2 = tmp_path / "w2.yaml", tmp_path / "c2.pcap"
    assert run("generate", "world", "--rules", 60, "--groups", 8, "--instances", 20,
               "--deny-share", 0.2, "--ipv6-share", 0.2, "--seed", 3, "-o", w2).exit_code == 0
    assert w2.read_bytes() == w.read_bytes()
    assert run("generate", "traffic", "--world", w, "--packets", 2000, "--drop-share", 0.2,
               "--stateless", "--seed", 4, "-o", c2).exit_code == 0
    assert c2.read_bytes() == c.read_bytes()
    assert len(read_capture(c2)) == 2000
    # another seed, other bytes
    w3 = tmp_path / "w3.yaml"
    assert run("generate", "world", "--rules", 60, "--groups", 8, "--instances", 20,
               "--seed", 4, "-o", w3).exit_code == 0
    assert w3.read_bytes() != w.read_bytes()


def test_generate_json_and_bad_arguments(generated, tmp_path):
    w, _ = generated
    r = run("generate", "traffic", "--world", w, "--packets", 300, "--stateless", "--json",
            "-o", tmp_path / "t.pcap")
    assert r.exit_code == 0
    assert json.loads(r.stdout)["packets"] == 300
    r = run("generate", "world", "--rules", 10, "--groups", 0, "--instances", 1,
            "-o", tmp_path / "x.yaml")
    assert r.exit_code == 2 and not (tmp_path / "x.yaml").exists()


# ---------------------------------------------------------------------------------------
# replay
# ---------------------------------------------------------------------------------------
def test_replay_json_csv_and_split(generated, tmp_path):
    w, c = generated
    v = tmp_path / "v.csv"
    r = run("replay", c, "--world", w, "--stateless", "--verdicts", v, "--split",
            tmp_path / "split", "--json", "--threads", 1)
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)                  # stdout is the JSON document alone
    assert doc["packets"] == 2000 == sum(doc["verdicts"].values())
    assert doc["captures"][0]["records"] == 2000
    with open(v, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["index", "verdict", "egress_rule", "ingress_rule"]
    assert len(rows) == 2001
    world = World.from_dict(_load(w))
    want = [r_.as_tuple() for r_ in naive_classify(world, packets_from_batch(read_capture(c)))]
    assert [(x[1], x[2] or None, x[3] or None) for x in rows[1:]] == want
    for verdict, n in doc["verdicts"].items():
        name = {"ACCEPT": "accepted", "DROP": "dropped", "REJECT": "rejected",
                "UNMANAGED": "unmanaged", "MALFORMED": "malformed"}[verdict]
        assert len(read_capture(tmp_path / "split" / f"{name}.pcap")) == n


def _load(path):
    from fastsg.world.files import parse_text
    return parse_text(Path(path).read_text(), False)


def test_replay_human_summary_on_stderr(generated):
    w, c = generated
    r = run("replay", c, c, "--world", w, "--stateless")
    assert r.exit_code == 0
    assert r.stdout == ""
    assert said(r, "Verdicts", "4,000 packets")


def test_replay_is_stateful_by_default(generated):
    w, c = generated
    r = run("replay", c, "--world", w, "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["stateful"] is True and doc["packets"] == 2000 == sum(doc["verdicts"].values())
    r = run("replay", c, "--world", w)
    assert r.exit_code == 0 and said(r, "stateful")


def test_replay_missing_capture(generated, tmp_path):
    w, _ = generated
    r = run("replay", tmp_path / "nope.pcap", "--world", w, "--stateless")
    assert r.exit_code == 2
    assert said(r, "nope.pcap") and "Traceback" not in r.output


def test_replay_corrupt_capture(generated, tmp_path):
    w, c = generated
    data = bytearray(c.read_bytes())
    pos = 24
    for _ in range(3):
        pos += 16 + int.from_bytes(data[pos + 8:pos + 12], "little")
    data[pos + 8:pos + 12] = (1 << 30).to_bytes(4, "little")
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(bytes(data))
    r = run("replay", bad, "--world", w, "--stateless", "--verdicts", tmp_path / "v.csv")
    assert r.exit_code == 2
    assert said(r, "bad.pcap", "record 3", f"byte offset {pos}")
    assert not (tmp_path / "v.csv").exists()


def test_replay_bad_world(generated, tmp_path):
    _, c = generated
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nsecurity_groups:\n  - id: sg-1\n    name: one\n    ingress:\n"
                   "      - {protocol: tcp, ports: 22, cidr: 10.0.0.300/8}\n")
    r = run("replay", c, "--world", bad, "--stateless")
    assert r.exit_code == 2
    assert said(r, "security_groups[0].ingress[0].cidr", "10.0.0.300/8", "bad.yaml")


def test_replay_needs_a_capture(generated):
    w, _ = generated
    r = run("replay", "--world", w, "--stateless")
    assert r.exit_code == 2


# ---------------------------------------------------------------------------------------
# check
# ---------------------------------------------------------------------------------------
def test_check_valid_world():
    r = run("check", DATA / "example.yaml", "--json")
    assert r.exit_code == 0
    doc = json.loads(r.stdout)
    assert doc["valid"] and doc["groups"] == 3 and doc["instances"]["total"] == 2
    assert doc["timeline_events"] == 6 and doc["policies"] >= 1
    r = run("check", DATA / "example.yaml")
    assert r.exit_code == 0 and said(r, "valid")


def test_check_lists_every_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nsecurity_groups:\n  - id: sg-1\n    name: one\n    ingress:\n"
                   "      - {protocol: tcp, ports: 70000, cidr: 10.0.0.0/8}\n"
                   "      - {protocol: udp, ports: 53, cidr: 10.0.0.1/8}\n")
    r = run("check", bad)
    assert r.exit_code == 2
    assert said(r, "security_groups[0].ingress[0].ports", "security_groups[0].ingress[1].cidr",
                "2 problems")


# ---------------------------------------------------------------------------------------
# classify
# ---------------------------------------------------------------------------------------
def test_classify_one_packet():
    w = DATA / "example.yaml"
    r = run("classify", "--world", w, "--src", "203.0.113.9", "--dst", "10.0.1.5",
            "--proto", "tcp", "--dport", 80, "--json")
    assert r.exit_code == 0
    doc = json.loads(r.stdout)
    assert doc["verdict"] == "ACCEPT" and doc["egress"] is None
    assert doc["ingress"]["instance"] == "i-0abc" and doc["ingress"]["rule"] == "sg-0a1b2c3d:in:0"
    assert doc["ingress"]["rule_detail"]["rule"]["ports"] == 80
    assert doc["ingress"]["rule_detail"]["group"] == "sg-0a1b2c3d"
    # ssh from outside: nothing admits it
    r = run("classify", "--world", w, "--src", "203.0.113.9", "--dst", "10.0.1.5",
            "--dport", 22)
    assert r.exit_code == 0 and r.stdout.strip() == "DROP"
    assert said(r, "default")


def test_classify_at_applies_the_timeline():
    w = DATA / "example.yaml"
    args = ["classify", "--world", w, "--src", "198.51.100.7", "--dst", "10.0.1.5",
            "--dport", 22, "--json"]
    before = json.loads(run(*args, "--at", 1700000000).stdout)
    after = json.loads(run(*args, "--at", 1700000000.5).stdout)
    assert before["verdict"] == "DROP" and after["verdict"] == "ACCEPT"
    assert after["events_applied"] == 1
    # egress check at a managed source, ingress refused: the egress result is ACCEPT
    r = json.loads(run("classify", "--world", w, "--src", "10.0.1.5", "--dst", "10.0.2.7",
                       "--dport", 22, "--json").stdout)
    assert r["egress"]["result"] == "ACCEPT" and r["ingress"]["result"] == r["verdict"] == "DROP"
    # a group-peer rule: the owning group and the peer group are told apart
    r = json.loads(run("classify", "--world", w, "--src", "10.0.1.5", "--dst", "10.0.2.7",
                       "--dport", 3306, "--json").stdout)
    assert r["verdict"] == "ACCEPT" and r["ingress"]["rule_detail"]["group"] == "sg-0db"
    assert r["ingress"]["rule_detail"]["rule"]["group"] == "webapp"


def test_classify_bad_input():
    w = DATA / "example.yaml"
    r = run("classify", "--world", w, "--src", "10.0.0.1", "--dst", "2001:db8::1")
    assert r.exit_code == 2 and said(r, "IP versions")
    r = run("classify", "--world", w, "--src", "10.0.0.1", "--dst", "10.0.0.2", "--proto", "xyz")
    assert r.exit_code == 2 and said(r, "not a protocol")
