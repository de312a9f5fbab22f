"""Loading world files (spec section 1): the model built, defaults, round trips through YAML
and JSON, the YAML traps, time parsing, and atomic saving (section 8)."""
import copy
import ipaddress
import json
import os
import stat
from pathlib import Path

import pytest
import yaml

import fastsg.world as world_pkg
from fastsg.errors import WorldError
from fastsg.world import Change, Instance, Rule, SecurityGroup, TimelineEvent, World, load_world
from fastsg.world.validate import format_time

DATA = Path(__file__).parent / "data" / "worlds"
EXAMPLE = DATA / "example.yaml"
NS = 10**9


@pytest.fixture
def example() -> World:
    return load_world(EXAMPLE)


def test_package_exports():
    assert set(world_pkg.__all__) == {"World", "load_world", "TimelineEvent", "Rule",
                                      "SecurityGroup", "Instance", "Change"}
    assert all(getattr(world_pkg, n) for n in world_pkg.__all__)


# -- the spec's example ---------------------------------------------------------------------

def test_example_settings(example):
    assert (example.version, example.region, example.order) == (1, "us-east-1", "allow,deny")
    assert example.limits == {"groups_per_instance": 5}
    assert example.conntrack == {"tcp_timeout": 432000, "udp_timeout": 30,
                                 "udp_stream_timeout": 180, "icmp_timeout": 30,
                                 "other_timeout": 600, "capacity": 1000000}
    assert example.logging == {"drops": True, "accepts": False, "aggregation_interval": 60,
                               "max_records": 1000000}
    assert example.revision == 0 and example.changes_since(0) == []


def test_example_groups(example):
    assert list(example.groups) == ["sg-0a1b2c3d", "sg-0db", "sg-0ff1ce"]
    web = example.groups["sg-0a1b2c3d"]
    assert isinstance(web, SecurityGroup)
    assert (web.name, web.owner, web.region, web.description, web.tags) == (
        "webapp", "111122223333", "us-east-1", "web tier", {"team": "web"})
    r = web.ingress
    assert [x.id for x in r] == [f"sg-0a1b2c3d:in:{n}" for n in range(5)] + ["sgr-123"]
    assert [x.explicit_id for x in r] == [False] * 5 + [True]
    assert (r[0].protocol, r[0].port_lo, r[0].port_hi, r[0].cidr) == (
        6, 80, 80, ipaddress.ip_network("0.0.0.0/0"))
    assert (r[1].group, r[1].group_ref, r[1].cidr) == ("sg-0db", "sg-0db", None)
    assert (r[2].group, r[2].group_ref) == ("sg-0ff1ce", "444455556666/sg-0ff1ce")
    assert (r[3].protocol, r[3].icmp_type, r[3].icmp_code, r[3].port_lo, r[3].port_hi) == (
        1, 8, -1, 0, 65535)
    assert (r[4].protocol, r[4].action, r[4].priority) == (-1, "deny", 1000)
    assert (r[5].port_lo, r[5].port_hi, r[5].action, r[5].priority, r[5].log) == (
        1024, 65535, "reject", 100, True)
    assert r[5].cidr == ipaddress.ip_network("2001:db8::/32")
    assert web.next_in == 6


def test_example_default_and_empty_egress(example):
    web, db = example.groups["sg-0a1b2c3d"], example.groups["sg-0db"]
    assert [(e.id, e.protocol, str(e.cidr), e.action) for e in web.egress] == [
        ("sg-0a1b2c3d:eg:0", -1, "0.0.0.0/0", "allow"),
        ("sg-0a1b2c3d:eg:1", -1, "::/0", "allow")]
    assert web.next_eg == 2 and not web.egress_given
    assert db.egress == [] and db.egress_given and db.next_eg == 0
    # a name reference resolves within the rule's group's owner+region
    assert db.ingress[0].group == "sg-0a1b2c3d" and db.ingress[0].group_ref == "webapp"


def test_example_instances(example):
    assert list(example.instances) == ["i-0abc", "i-0db"]
    i = example.instances["i-0abc"]
    assert isinstance(i, Instance)
    assert i.private_ip == ipaddress.IPv4Address("10.0.1.5")
    assert i.private_ipv6 == ipaddress.IPv6Address("2001:db8::5")
    assert i.public_ip == ipaddress.IPv4Address("54.1.2.3")
    assert (i.owner, i.region, i.groups, i.order, i.tags, i.state) == (
        "111122223333", "us-east-1", ["sg-0a1b2c3d"], "priority", {"Name": "web-1"}, "running")
    assert example.instances["i-0db"].groups == ["sg-0db"]     # name -> id
    assert example.instance_order(i) == "priority"
    assert example.instance_order(example.instances["i-0db"]) == "allow,deny"
    assert [m.id for m in example.members("sg-0db")] == ["i-0db"]


def test_example_timeline(example):
    events = example.timeline
    assert all(isinstance(e, TimelineEvent) for e in events)
    # sorted by time; the ISO revoke ties with the launch at 1700001000 and keeps file order
    assert [(e.index, e.kind) for e in events] == [
        (0, "authorize"), (2, "attach"), (3, "detach"), (1, "revoke"), (4, "launch"),
        (5, "terminate")]
    assert events[0].at_ns == 1700000000 * NS + NS // 2
    assert events[3].at_ns == events[4].at_ns == 1700001000 * NS
    assert events[1].args == {"instance": "i-0abc", "group": "sg-0db"}


def test_example_timeline_replays(example):
    w = example.copy()
    for e in w.timeline:
        w.apply_event(e)
    assert w.revision == 6
    assert [c.kind for c in w.changes_since(0)] == [
        "rules", "attach", "detach", "rules", "launch", "terminate"]
    assert w.instances["i-0abc"].state == "terminated"
    assert w.instances["i-0new"].groups == ["sg-0a1b2c3d"]
    assert [r.id for r in w.groups["sg-0a1b2c3d"].ingress][-1] == "sg-0a1b2c3d:in:6"
    assert example.revision == 0 and "i-0new" not in example.instances    # copy is deep


def test_minimal_world_gets_every_default():
    w = World.from_dict({})
    assert (w.version, w.region, w.order) == (1, "us-east-1", "allow,deny")
    assert w.limits == {"groups_per_instance": 5}
    assert w.conntrack["capacity"] == 1000000 and len(w.conntrack) == 6
    assert w.logging == {"drops": True, "accepts": False, "aggregation_interval": 60,
                         "max_records": 1000000}
    assert w.groups == {} and w.instances == {} and w.timeline == []


def test_partial_settings_keep_other_defaults():
    w = World.from_dict({"conntrack": {"udp_timeout": 5}, "logging": {"accepts": True}})
    assert w.conntrack["udp_timeout"] == 5 and w.conntrack["tcp_timeout"] == 432000
    assert w.logging["accepts"] is True and w.logging["drops"] is True


def test_defaults_for_groups_and_instances():
    w = World.from_dict({"region": "ap-south-1",
                         "security_groups": [{"id": "sg-1", "name": "one"}],
                         "instances": [{"id": "i-1", "private_ip": "10.0.0.1"}]})
    g, i = w.groups["sg-1"], w.instances["i-1"]
    assert (g.owner, g.region, g.ingress, len(g.egress)) == ("000000000000", "ap-south-1", [], 2)
    assert (i.owner, i.region, i.groups, i.state, i.order) == (
        "000000000000", "ap-south-1", [], "running", None)


@pytest.mark.parametrize("written, number", [
    ("tcp", 6), (6, 6), ("6", 6), ("TCP", 6), ("udp", 17), (17, 17), ("icmp", 1), (1, 1),
    ("icmpv6", 58), (58, 58), ("all", -1), (-1, -1), ("-1", -1), (50, 50), (0, 0)])
def test_protocols(written, number):
    rule = {"protocol": written, "cidr": "10.0.0.0/8"}
    w = World.from_dict({"security_groups": [{"id": "sg-1", "name": "a", "ingress": [rule]}]})
    assert w.groups["sg-1"].ingress[0].protocol == number


def test_protocol_6_equals_tcp():
    def world(proto):
        return World.from_dict({"security_groups": [{"id": "sg-1", "name": "a", "ingress": [
            {"protocol": proto, "ports": "22", "cidr": "10.0.0.0/8"}]}]})
    assert world(6) == world("tcp")
    assert world(6).to_dict()["security_groups"][0]["ingress"][0]["protocol"] == "tcp"
    assert world(6).groups["sg-1"].ingress[0] == world("tcp").groups["sg-1"].ingress[0]


@pytest.mark.parametrize("ports, lo, hi", [(22, 22, 22), ("22", 22, 22), ("8000-8080", 8000, 8080),
                                           ("0-65535", 0, 65535), ("5 - 6", 5, 6)])
def test_ports(ports, lo, hi):
    rule = {"protocol": "udp", "ports": ports, "cidr": "10.0.0.0/8"}
    w = World.from_dict({"security_groups": [{"id": "sg-1", "name": "a", "ingress": [rule]}]})
    r = w.groups["sg-1"].ingress[0]
    assert (r.port_lo, r.port_hi) == (lo, hi)


# -- round trips ----------------------------------------------------------------------------

def mutated(w: World) -> World:
    """``w`` after one of each mutation, leaving gaps in the default rule ids."""
    w.authorize("sg-0a1b2c3d", "ingress", {"protocol": "udp", "ports": 53, "cidr": "10.0.0.0/8"})
    w.authorize("sg-0a1b2c3d", "ingress", {"protocol": "udp", "ports": 54, "cidr": "10.0.0.0/8"})
    w.revoke("sg-0a1b2c3d", rule_id="sg-0a1b2c3d:in:1")         # a gap in the middle
    w.revoke("sg-0a1b2c3d", rule_id="sg-0a1b2c3d:in:7")         # and the last one
    w.revoke("sg-0db", "ingress", rule_id="sg-0db:in:0")        # the list is empty now
    w.authorize("sg-0ff1ce", "egress", {"protocol": "icmpv6", "icmp_type": 128, "icmp_code": 0,
                                        "cidr": "::/0", "description": "ping out"})
    w.revoke("sg-0ff1ce", "egress", rule_id="sg-0ff1ce:eg:0")   # default egress no more
    w.attach("i-0abc", "sg-0ff1ce")
    w.launch({"id": "i-x", "private_ip": "10.0.3.3", "groups": ["sg-0ff1ce"],
              "tags": {"n": 1}})
    w.terminate("i-0db")
    return w


@pytest.mark.parametrize("ext", ["yaml", "yml", "json"])
@pytest.mark.parametrize("mutate", [False, True])
def test_round_trip(tmp_path, example, ext, mutate):
    w = mutated(example) if mutate else example
    path = tmp_path / f"world.{ext}"
    w.save(path)
    back = load_world(path)
    assert back == w
    assert back.to_dict() == w.to_dict()
    # rule objects, counters and flags survive too, not only the file syntax
    for gid, g in w.groups.items():
        h = back.groups[gid]
        assert (h.ingress, h.egress, h.next_in, h.next_eg) == (g.ingress, g.egress, g.next_in,
                                                               g.next_eg)
    assert back.instances == w.instances
    assert back.timeline == w.timeline
    back.save(path)
    assert load_world(path) == back
    if ext == "json":
        assert json.loads(path.read_text())["version"] == 1
    else:
        assert yaml.safe_load(path.read_text())["version"] == 1


@pytest.mark.parametrize("ext", ["yaml", "json"])
def test_round_trip_when_a_name_is_another_groups_id(tmp_path, ext):
    # group sg-2 is *named* "sg-1": the id sg-1 alone is then ambiguous for an instance or
    # a rule of that owner, so the file says 000000000000/sg-1 (found by a review: the
    # reload failed with "sg-1 is ambiguous")
    d = {"security_groups": [
            {"id": "sg-1", "name": "web"},
            {"id": "sg-2", "name": "sg-1",
             "ingress": [{"protocol": "tcp", "ports": 22, "group": "web"}]},
            {"id": "sg-3", "name": "db",
             "ingress": [{"protocol": "tcp", "ports": 5432, "group": "000000000000/sg-1"}]}],
         "instances": [{"id": "i-1", "private_ip": "10.0.0.1", "groups": ["web", "sg-2"]}]}
    w = World.from_dict(d)
    w.save(tmp_path / f"w.{ext}")
    back = load_world(tmp_path / f"w.{ext}")
    assert back == w and back.to_dict() == w.to_dict()
    assert back.instances["i-1"].groups == ["sg-1", "sg-2"]
    assert back.groups["sg-2"].ingress[0].group == "sg-1"
    assert back.groups["sg-3"].ingress[0].group == "sg-1"
    assert w.to_dict()["instances"][0]["groups"] == ["000000000000/sg-1", "sg-2"]


def test_default_ids_survive_save_after_revoke(tmp_path, example):
    w = mutated(example)
    ids = [r.id for r in w.groups["sg-0a1b2c3d"].ingress]
    assert "sg-0a1b2c3d:in:1" not in ids and "sg-0a1b2c3d:in:6" in ids
    w.save(tmp_path / "w.yaml")
    back = load_world(tmp_path / "w.yaml")
    assert [r.id for r in back.groups["sg-0a1b2c3d"].ingress] == ids
    # counters are not reset by the reload: new rules never reuse a revoked id
    for world in (w, back):
        assert world.authorize("sg-0a1b2c3d", "ingress", {"protocol": "tcp", "cidr": "10.1.0.0/16"}
                               ).id == "sg-0a1b2c3d:in:8"
        assert world.authorize("sg-0db", "ingress", {"protocol": "tcp", "cidr": "10.1.0.0/16"}
                               ).id == "sg-0db:in:1"
        assert world.authorize("sg-0ff1ce", "egress", {"protocol": "tcp", "cidr": "10.1.0.0/16"}
                               ).id == "sg-0ff1ce:eg:3"


def test_saved_file_is_small(tmp_path, example):
    example.save(tmp_path / "w.yaml")
    d = yaml.safe_load((tmp_path / "w.yaml").read_text())
    web = d["security_groups"][0]
    assert "egress" not in web                       # omitted stays omitted
    assert web["ingress"][0] == {"protocol": "tcp", "ports": 80, "cidr": "0.0.0.0/0"}
    assert web["ingress"][5]["id"] == "sgr-123"       # explicit ids are written
    assert all("x-next-rule-ids" not in g for g in d["security_groups"])
    assert d["security_groups"][1]["egress"] == []
    assert d["timeline"][1] == {"at": 1700001000,
                                "revoke": {"group": "sg-0a1b2c3d", "rule_id": "sgr-123"}}


def test_saved_file_after_revoke_pins_ids(tmp_path, example):
    w = mutated(example)
    d = w.to_dict()
    web = d["security_groups"][0]
    assert web["ingress"][1] == {"id": "sg-0a1b2c3d:in:2", "protocol": "tcp", "ports": 22,
                                 "group": "444455556666/sg-0ff1ce"}
    assert web["x-next-rule-ids"] == {"ingress": 8}
    assert d["security_groups"][1]["x-next-rule-ids"] == {"ingress": 1}
    office = d["security_groups"][2]
    # :eg:1 no longer sits where a load would put it; :eg:2 then follows from it
    assert [r.get("id") for r in office["egress"]] == ["sg-0ff1ce:eg:1", None]


def test_json_and_yaml_files_are_the_same_world(tmp_path, example):
    with open(EXAMPLE) as f:
        data = yaml.safe_load(f)
    # json has no datetime: the ISO time is a string there, as it is in our YAML reading
    data["timeline"][1]["at"] = "2023-11-14T22:30:00Z"
    (tmp_path / "w.json").write_text(json.dumps(data))
    assert load_world(tmp_path / "w.json") == example
    # the format is sniffed when the extension says nothing
    (tmp_path / "w.world").write_text(json.dumps(data))
    assert load_world(tmp_path / "w.world") == example
    (tmp_path / "y.world").write_text(EXAMPLE.read_text())
    assert load_world(tmp_path / "y.world") == example


def test_copy_is_deep_and_equal(example):
    mutated(example)
    c = example.copy()
    assert c == example and c.revision == example.revision
    assert c.changes_since(3) == example.changes_since(3)
    assert c.lock is not example.lock
    c.attach("i-x", "sg-0a1b2c3d")
    c.groups["sg-0db"].tags["x"] = "y"
    assert c != example
    assert "sg-0a1b2c3d" not in example.instances["i-x"].groups
    assert example.groups["sg-0db"].tags == {}


# -- YAML reading ---------------------------------------------------------------------------

def test_yaml_traps(tmp_path):
    (tmp_path / "w.yaml").write_text(
        "security_groups:\n"
        "  - {id: sg-1, name: a, owner: 000000000000, ingress: [{protocol: tcp, ports: 22:23,"
        " cidr: 10.0.0.0/8}]}\n"
        "  - {id: sg-2, name: b, owner: 111122223333, tags: {since: 2020-01-01}}\n"
        "timeline:\n"
        "  - {at: 2023-11-14T22:30:00.123456789Z, terminate: {instance: i-1}}\n"
        "instances: [{id: i-1, private_ip: 10.0.0.1, owner: 012345670123}]\n")
    with pytest.raises(WorldError) as exc:
        load_world(tmp_path / "w.yaml")
    # 22:23 is not silently the base-60 number 1343
    assert [str(p) for p in exc.value.problems] == [
        'security_groups[0].ingress[0].ports: "22:23" is not a port or port range '
        '(22 or "8000-8080")']
    (tmp_path / "w.yaml").write_text((tmp_path / "w.yaml").read_text().replace("22:23", "22"))
    w = load_world(tmp_path / "w.yaml")
    assert w.groups["sg-1"].owner == "000000000000"
    assert w.groups["sg-2"].owner == "111122223333"
    assert w.groups["sg-2"].tags == {"since": "2020-01-01"}
    assert w.instances["i-1"].owner == "012345670123"       # not octal
    assert w.timeline[0].at_ns == 1700001000 * NS + 123456789


def test_yaml_booleans_are_true_and_false_only(tmp_path):
    # YAML 1.1 reads yes/no/on/off as booleans: a group named "off" or a tag "Backup: yes"
    # would fail to load (found by a review); fastsg reads them as YAML 1.2 does, as text
    (tmp_path / "w.yaml").write_text(
        "security_groups:\n"
        "  - {id: sg-1, name: off, tags: {Backup: yes, Env: no, Tier: On},\n"
        "     ingress: [{protocol: tcp, ports: 22, cidr: 10.0.0.0/8, log: true}]}\n"
        "instances: [{id: i-1, private_ip: 10.0.0.1, groups: [off], tags: {Spot: n}}]\n")
    w = load_world(tmp_path / "w.yaml")
    assert w.groups["sg-1"].name == "off"
    assert w.groups["sg-1"].tags == {"Backup": "yes", "Env": "no", "Tier": "On"}
    assert w.instances["i-1"].tags == {"Spot": "n"} and w.instances["i-1"].groups == ["sg-1"]
    assert w.groups["sg-1"].ingress[0].log is True
    w.save(tmp_path / "back.yaml")
    assert load_world(tmp_path / "back.yaml") == w
    # a boolean setting written the YAML 1.1 way is a clear error, not a silent string
    (tmp_path / "w.yaml").write_text((tmp_path / "w.yaml").read_text().replace("log: true",
                                                                               "log: yes"))
    with pytest.raises(WorldError) as exc:
        load_world(tmp_path / "w.yaml")
    assert [str(p) for p in exc.value.problems] == [
        'security_groups[0].ingress[0].log: "yes" is not true or false']


def test_yaml_duplicate_key(tmp_path):
    (tmp_path / "w.yaml").write_text("region: a\nregion: b\n")
    with pytest.raises(WorldError) as exc:
        load_world(tmp_path / "w.yaml")
    assert exc.value.source == str(tmp_path / "w.yaml")
    assert "duplicate key 'region'" in str(exc.value) and "line 2" in str(exc.value)


def test_json_duplicate_key(tmp_path):
    (tmp_path / "w.json").write_text('{"region": "a", "region": "b"}')
    with pytest.raises(WorldError, match="duplicate key 'region'"):
        load_world(tmp_path / "w.json")


@pytest.mark.parametrize("name, text, fragment", [
    ("w.yaml", "security_groups: [\n", "invalid YAML at line 2"),
    ("w.json", '{"region": }', "invalid JSON at line 1, column 12"),
])
def test_syntax_errors_name_file_and_line(tmp_path, name, text, fragment):
    (tmp_path / name).write_text(text)
    with pytest.raises(WorldError) as exc:
        load_world(tmp_path / name)
    assert str(exc.value).startswith(str(tmp_path / name))
    assert fragment in str(exc.value)


def test_missing_file(tmp_path):
    with pytest.raises(WorldError) as exc:
        load_world(tmp_path / "nope.yaml")
    assert exc.value.source == str(tmp_path / "nope.yaml") and "cannot read" in str(exc.value)


# -- times ----------------------------------------------------------------------------------

@pytest.mark.parametrize("at, ns", [
    (1700000000, 1700000000 * NS),
    (1700000000.5, 1700000000 * NS + NS // 2),
    (0.000000001, 1),
    ("1700000000.123456789", 1700000000 * NS + 123456789),
    ("2023-11-14T22:13:20Z", 1700000000 * NS),
    ("2023-11-14T22:13:20.25Z", 1700000000 * NS + NS // 4),
    ("2023-11-14T23:13:20+01:00", 1700000000 * NS),
    ("2023-11-14T22:13:20", 1700000000 * NS),          # no zone: UTC
    ("2023-11-14", 1699920000 * NS),
])
def test_event_times(at, ns):
    w = World.from_dict({"instances": [{"id": "i-1", "private_ip": "10.0.0.1"}],
                         "timeline": [{"at": at, "terminate": {"instance": "i-1"}}]})
    assert w.timeline[0].at_ns == ns


@pytest.mark.parametrize("ns", [0, NS, 1700000000 * NS + NS // 2, 1700000000 * NS + 123456789, 1])
def test_format_time_round_trips(ns):
    w = World.from_dict({"instances": [{"id": "i-1", "private_ip": "10.0.0.1"}],
                         "timeline": [{"at": format_time(ns), "terminate": {"instance": "i-1"}}]})
    assert w.timeline[0].at_ns == ns


@pytest.mark.parametrize("at", ["soon", True, -5, "2023-13-01T00:00:00Z", float("nan"), [1]])
def test_bad_event_times(at):
    with pytest.raises(WorldError) as exc:
        World.from_dict({"instances": [{"id": "i-1", "private_ip": "10.0.0.1"}],
                         "timeline": [{"at": at, "terminate": {"instance": "i-1"}}]})
    assert [p.path for p in exc.value.problems] == ["timeline[0].at"]


# -- atomic save ----------------------------------------------------------------------------

def test_save_replaces_via_rename(tmp_path, example, monkeypatch):
    target = tmp_path / "w.yaml"
    target.write_text("old")
    os.chmod(target, 0o640)
    calls = []
    real_replace = os.replace

    def spy(src, dst):
        calls.append((src, dst, Path(src).read_text()))
        assert Path(dst).read_text() == "old"       # untouched until the rename
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    example.save(target)
    assert len(calls) == 1
    src, dst, content = calls[0]
    assert Path(src).parent == tmp_path and Path(src).name != "w.yaml"
    assert dst == str(target)
    assert content == target.read_text()
    assert os.listdir(tmp_path) == ["w.yaml"]           # no temporary file left behind
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o640   # permissions kept
    assert load_world(target) == example


def test_failed_save_leaves_old_file_and_no_temp(tmp_path, example, monkeypatch):
    target = tmp_path / "w.json"
    target.write_text("old")

    def fail(src, dst):
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk on fire"):
        example.save(target)
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["w.json"]


def test_save_new_file_and_through_symlink(tmp_path, example):
    real = tmp_path / "real.yaml"
    example.save(real)
    link = tmp_path / "link.yaml"
    link.symlink_to(real)
    w = mutated(example.copy())
    w.save(link)
    assert link.is_symlink() and load_world(real) == w
    assert sorted(os.listdir(tmp_path)) == ["link.yaml", "real.yaml"]


def test_world_objects_are_not_shared_with_the_input():
    with open(EXAMPLE) as f:
        data = yaml.safe_load(f)
    before = copy.deepcopy(data)
    w = World.from_dict(data)
    assert data == before
    w.authorize("sg-0db", "egress", {"protocol": "tcp", "cidr": "10.0.0.0/8"})
    assert data == before


def test_model_values():
    r = Rule(id="x", protocol=6)
    assert r.uses_ports and not r.uses_icmp
    assert Change(1, "rules", group="g") == Change(1, "rules", "g", None)
