"""Metadata, listing and fenced termination (spec section 8): ``fastsg.metadata`` and the
``metadata`` / ``instances`` / ``terminate`` commands, and the atomic rewrite of the world
file, down to a writer killed with SIGKILL at random moments.

What a kill leaves behind (``fastsg.world.files.write_atomic``): the world file is always
the old file or the new one, byte for byte.  A kill after the temporary file was created and
before the rename leaves that temporary file, ``.<name>.<12 hex>.tmp`` next to the world file
(hidden, never read by fastsg, never removed by a later save, which uses a fresh name): it is
debris for the user to delete; these tests check that it is ignored, then remove it.
"""
import copy
import json
import os
import random
import re
import signal
import threading
import time

import click
import pytest
from click.testing import CliRunner

from fastsg import metadata as M
from fastsg.cli import instances_cmd as C
from fastsg.cli.main import _Group
from fastsg.errors import WorldError
from fastsg.world import World, load_world
from fastsg.world import files as world_files

OTHER = "111122223333"

BASE = {
    "version": 1,
    "region": "us-east-1",
    "security_groups": [
        {"id": "sg-web", "name": "web",
         "ingress": [{"protocol": "tcp", "ports": 80, "cidr": "0.0.0.0/0"}]},
        {"id": "sg-db", "name": "db"},
        {"id": "sg-bob", "name": "started-by-bob"},
        # the same name in another account and in another region
        {"id": "sg-bob2", "name": "started-by-bob", "owner": OTHER},
        {"id": "sg-euweb", "name": "web", "region": "eu-west-1"},
        {"id": "sg-empty", "name": "nobody-here"},
    ],
    "instances": [
        {"id": "i-web1", "private_ip": "10.0.0.1", "private_ipv6": "2001:db8::1",
         "groups": ["web", "db", "started-by-bob"], "tags": {"Name": "web-1", "team": "web"}},
        {"id": "i-web2", "private_ip": "10.0.0.2", "public_ip": "54.0.0.2",
         "groups": ["sg-web"], "tags": {"Name": "web-2", "team": "web"}},
        {"id": "i-db1", "private_ip": "10.0.0.3", "groups": ["db", "web"],
         "tags": {"Name": "db-1", "team": "data"}},
        {"id": "i-stopped", "private_ip": "10.0.0.4", "groups": ["web"], "state": "stopped",
         "tags": {"team": "web"}},
        {"id": "i-gone", "private_ip": "10.0.0.5", "groups": ["web", "started-by-bob"],
         "state": "terminated"},
        {"id": "i-bob", "private_ip": "10.0.0.6", "groups": ["started-by-bob"],
         "tags": {"owner": "bob"}},
        {"id": "i-bob-stopped", "private_ip": "10.0.0.7", "groups": ["started-by-bob"],
         "state": "stopped"},
        {"id": "i-other", "private_ip": "10.1.0.1", "owner": OTHER,
         "groups": ["started-by-bob"]},
        {"id": "i-eu", "private_ip": "10.9.0.1", "region": "eu-west-1", "groups": ["web"]},
    ],
}
ALL_IDS = [i["id"] for i in BASE["instances"]]


@pytest.fixture
def w() -> World:
    return World.from_dict(copy.deepcopy(BASE))


@pytest.fixture
def world_file(tmp_path, w):
    path = tmp_path / "world.yaml"
    w.save(path)
    return path


def ids(instances) -> list:
    return [i.id for i in instances]


def unchanged(w: World, call):
    """``call()`` raises WorldError and changes nothing; returns the error."""
    before, revision, changes = w.to_dict(), w.revision, w.changes_since(0)
    with pytest.raises(WorldError) as exc:
        call()
    assert (w.to_dict(), w.revision, w.changes_since(0)) == (before, revision, changes)
    return exc.value


# -- metadata -------------------------------------------------------------------------------

def test_security_groups_are_names_in_instance_order(w):
    assert M.security_groups(w, "i-web1") == ["web", "db", "started-by-bob"]
    assert M.security_groups(w, "i-db1") == ["db", "web"]
    assert M.security_groups(w, "i-web2") == ["web"]        # listed by id in the file
    assert M.security_groups(w, "i-eu") == ["web"]          # eu-west-1's own "web"
    assert M.security_groups(w, "i-gone") == ["web", "started-by-bob"]   # any state
    w.attach("i-db1", "started-by-bob")
    w.detach("i-db1", "db")
    assert M.security_groups(w, "i-db1") == ["web", "started-by-bob"]


def test_unknown_instance_is_an_error(w):
    with pytest.raises(WorldError, match=r'"i-web3" is not an instance id; did you mean'):
        M.security_groups(w, "i-web3")
    with pytest.raises(WorldError, match="i-nope"):
        M.peers(w, "i-nope")


def test_peers_exclude_self_and_non_running(w):
    p = M.peers(w, "i-web1")
    assert list(p) == ["sg-web", "sg-db", "sg-bob"]         # the instance's group order
    assert {k: v["name"] for k, v in p.items()} == {"sg-web": "web", "sg-db": "db",
                                                    "sg-bob": "started-by-bob"}
    # not itself, not i-stopped / i-gone / i-bob-stopped; world order
    assert [x["id"] for x in p["sg-web"]["peers"]] == ["i-web2", "i-db1"]
    assert [x["id"] for x in p["sg-db"]["peers"]] == ["i-db1"]
    assert [x["id"] for x in p["sg-bob"]["peers"]] == ["i-bob"]   # not i-other (sg-bob2)
    assert p["sg-web"]["peers"][0] == {"id": "i-web2", "private_ip": "10.0.0.2",
                                       "private_ipv6": None,
                                       "tags": {"Name": "web-2", "team": "web"}}
    q = M.peers(w, "i-db1")
    assert q["sg-web"]["peers"][0] == {"id": "i-web1", "private_ip": "10.0.0.1",
                                       "private_ipv6": "2001:db8::1",
                                       "tags": {"Name": "web-1", "team": "web"}}
    assert M.peers(w, "i-eu") == {"sg-euweb": {"id": "sg-euweb", "name": "web", "peers": []}}
    # membership is live
    w.terminate("i-web2")
    w.launch({"id": "i-web3", "private_ip": "10.0.0.9", "groups": ["web"], "tags": {"a": "b"}})
    assert [x["id"] for x in M.peers(w, "i-web1")["sg-web"]["peers"]] == ["i-db1", "i-web3"]


# -- listing --------------------------------------------------------------------------------

def test_list_all_and_by_group_id_or_name(w):
    assert ids(M.list_instances(w)) == ALL_IDS
    web = ["i-web1", "i-web2", "i-db1", "i-stopped", "i-gone"]
    assert ids(M.list_instances(w, group="sg-web")) == web
    assert ids(M.list_instances(w, group="000000000000/sg-web")) == web
    # a name is resolved in each instance's owner and region: eu-west-1 has its own "web"
    assert ids(M.list_instances(w, group="web")) == web + ["i-eu"]
    assert ids(M.list_instances(w, group="sg-euweb")) == ["i-eu"]
    assert ids(M.list_instances(w, group="started-by-bob")) == [
        "i-web1", "i-gone", "i-bob", "i-bob-stopped", "i-other"]
    assert ids(M.list_instances(w, group="sg-bob")) == ["i-web1", "i-gone", "i-bob",
                                                        "i-bob-stopped"]
    assert ids(M.list_instances(w, group=f"{OTHER}/sg-bob2")) == ["i-other"]
    assert M.list_instances(w, group="nobody-here") == []       # a group without members


def test_list_by_tags(w):
    assert ids(M.list_instances(w, tags={"team": "web"})) == ["i-web1", "i-web2", "i-stopped"]
    assert ids(M.list_instances(w, tags={"team": "web", "Name": "web-2"})) == ["i-web2"]
    assert ids(M.list_instances(w, group="db", tags={"team": "web"})) == ["i-web1"]
    assert M.list_instances(w, tags={"team": "nope"}) == []
    assert M.list_instances(w, tags={"missing": ""}) == []      # absent is not empty
    assert ids(M.list_instances(w, tags={})) == ALL_IDS


def test_list_unknown_group_is_an_error(w):
    with pytest.raises(WorldError, match=r'"wbe" is not a group.*did you mean "web"'):
        M.list_instances(w, group="wbe")
    with pytest.raises(WorldError, match="belongs to owner"):
        M.list_instances(w, group=f"{OTHER}/sg-web")
    with pytest.raises(WorldError):
        M.list_instances(w, group="")


# -- terminate (library) --------------------------------------------------------------------

def test_terminate_fenced_refuses_and_changes_nothing(w):
    err = unchanged(w, lambda: M.terminate(w, ["i-web1", "i-web2", "i-bob", "i-db1"],
                                           only_group="started-by-bob"))
    named = " ".join(p.message for p in err.problems)
    assert len(err.problems) == 2
    assert '"i-web2"' in named and '"i-db1"' in named and "i-bob" not in named
    assert "not a member" in named and "started-by-bob" in named
    # unknown and already terminated instances are named too, all at once
    err = unchanged(w, lambda: M.terminate(w, ["i-bob", "i-nope", "i-gone"],
                                           only_group="started-by-bob"))
    assert [p.path for p in err.problems] == ["terminate.instances[1]", "terminate.instances[2]"]
    assert "i-nope" in str(err) and "already terminated" in str(err)
    unchanged(w, lambda: M.terminate(w, ["i-bob"], only_group="no-such-group"))
    # the other account's group of the same name is not "started-by-bob" for i-bob... but
    # it is for i-other, whose own owner resolves the name to sg-bob2
    unchanged(w, lambda: M.terminate(w, ["i-other"], only_group="sg-bob"))


def test_terminate_success_all(w):
    rev = w.revision
    done = M.terminate(w, ["i-bob", "i-web1", "i-bob"], only_group="started-by-bob")
    assert ids(done) == ["i-bob", "i-web1"]                    # repeated id counts once
    assert all(w.instances[i].state == "terminated" for i in ("i-bob", "i-web1"))
    assert w.revision == rev + 2
    assert [c.kind for c in w.changes_since(rev)] == ["terminate", "terminate"]
    # a stopped member passes the fence; another owner's same-name group too
    M.terminate(w, ["i-bob-stopped", "i-other"], only_group="started-by-bob")
    assert w.instances["i-bob-stopped"].state == w.instances["i-other"].state == "terminated"
    M.terminate(w, ["i-db1"])                                   # no fence
    assert w.instances["i-db1"].state == "terminated"
    # peers follow
    assert M.peers(w, "i-web2")["sg-web"]["peers"] == []


def test_terminate_dry_run_changes_nothing(w):
    before, rev = w.to_dict(), w.revision
    done = M.terminate(w, ["i-web1", "i-bob"], only_group="sg-bob", dry_run=True)
    assert ids(done) == ["i-web1", "i-bob"]
    assert (w.to_dict(), w.revision) == (before, rev)
    assert w.instances["i-web1"].state == "running"
    unchanged(w, lambda: M.terminate(w, ["i-web2"], only_group="sg-bob", dry_run=True))


def test_terminate_refused_by_pending_timeline_changes_nothing(w):
    d = copy.deepcopy(BASE)
    d["timeline"] = [{"at": 100, "attach": {"instance": "i-web2", "group": "db"}}]
    w = World.from_dict(d)
    err = unchanged(w, lambda: M.terminate(w, ["i-bob", "i-web2"]))
    assert "i-web2" in str(err) and "timeline" in str(err)
    assert w.instances["i-bob"].state == "running"              # none, not some
    M.terminate(w, ["i-bob"])
    assert w.instances["i-bob"].state == "terminated"


# -- the commands ---------------------------------------------------------------------------

def cli(*args):
    """Run a command through a group like ``fastsg``'s (its FastsgError -> exit 2)."""
    group = _Group(name="fastsg", commands={c.name: c for c in C.COMMANDS})
    return CliRunner().invoke(group, [str(a) for a in args], catch_exceptions=False)


def test_commands_are_exported():
    assert [c.name for c in C.COMMANDS] == ["metadata", "instances", "terminate"]
    assert all(isinstance(c, click.Command) for c in C.COMMANDS)


def test_metadata_command_security_groups_plain(world_file):
    r = cli("metadata", "--world", world_file, "i-web1")
    assert r.exit_code == 0, r.output
    # as `ec2-metadata -s` prints them (the key, then one name per line), nothing else
    assert r.stdout == "security-groups: web\ndb\nstarted-by-bob\n"
    assert r.stderr == ""
    r2 = cli("metadata", "--world", world_file, "i-web1", "security-groups")
    assert r2.stdout == r.stdout
    r3 = cli("metadata", "--world", world_file, "i-web1", "--quiet")   # ec2-metadata --quiet
    assert r3.exit_code == 0 and r3.stdout == "web\ndb\nstarted-by-bob\n"
    r = cli("metadata", "-w", world_file, "i-db1", "security-groups", "--json")
    assert r.exit_code == 0
    assert json.loads(r.stdout) == {"instance": "i-db1", "security_groups": ["db", "web"]}


def test_ec2_metadata_text():
    assert M.ec2_metadata_text(["web"]) == "security-groups: web"
    assert M.ec2_metadata_text(["web", "db"]) == "security-groups: web\ndb"
    assert M.ec2_metadata_text(["web", "db"], quiet=True) == "web\ndb"
    assert M.ec2_metadata_text([]) == "security-groups: not available"
    assert M.ec2_metadata_text([], quiet=True) == "not available"


def test_metadata_command_peers(world_file):
    r = cli("metadata", "--world", world_file, "i-web1", "peers", "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["instance"] == "i-web1"
    assert data["peers"] == M.peers(load_world(world_file), "i-web1")
    r = cli("metadata", "--world", world_file, "i-web1", "peers")
    assert r.exit_code == 0
    assert r.stdout == ""                                       # human output: stderr only
    assert "i-web2" in r.stderr and "10.0.0.3" in r.stderr
    assert "3 peers in 3 groups" in r.stderr
    r = cli("metadata", "--world", world_file, "i-nope")
    assert r.exit_code == 2 and "i-nope" in r.stderr and r.stdout == ""
    r = cli("metadata", "--world", world_file, "i-web1", "bogus")
    assert r.exit_code == 2


def test_instances_command(world_file):
    r = cli("instances", "--world", world_file, "--group", "web", "--tag", "team=web", "--json")
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout)["instances"]
    assert [i["id"] for i in got] == ["i-web1", "i-web2", "i-stopped"]
    assert got[1] == {"id": "i-web2", "state": "running", "private_ip": "10.0.0.2",
                      "private_ipv6": None, "public_ip": "54.0.0.2", "owner": "000000000000",
                      "region": "us-east-1", "groups": [{"id": "sg-web", "name": "web"}],
                      "tags": {"Name": "web-2", "team": "web"}}
    assert got[2]["state"] == "stopped"
    r = cli("instances", "--world", world_file, "-t", "team=web", "-t", "Name=web-1")
    assert r.exit_code == 0 and r.stdout == ""
    assert "i-web1" in r.stderr and "1 instance of 9" in r.stderr
    r = cli("instances", "--world", world_file)
    assert "9 instances of 9" in r.stderr and "i-gone" in r.stderr and r.stdout == ""
    r = cli("instances", "--world", world_file, "--group", "wbe")
    assert r.exit_code == 2 and "wbe" in r.stderr
    r = cli("instances", "--world", world_file, "--tag", "team")
    assert r.exit_code == 2 and "KEY=VALUE" in r.stderr


def snapshot(path):
    st = os.stat(path)
    return path.read_bytes(), st.st_ino, st.st_mtime_ns, sorted(os.listdir(path.parent))


def test_terminate_command_fenced_refusal_writes_nothing(world_file):
    before = snapshot(world_file)
    r = cli("terminate", "--world", world_file, "i-bob", "i-web2", "i-db1",
            "--only-group", "started-by-bob")
    assert r.exit_code == 2
    assert "i-web2" in r.stderr and "i-db1" in r.stderr and r.stdout == ""
    assert snapshot(world_file) == before                       # bytes, inode, mtime, dir
    r = cli("terminate", "--world", world_file, "i-bob", "--only-group", "nobody-at-all")
    assert r.exit_code == 2 and snapshot(world_file) == before


def test_terminate_command_rewrites_the_file(world_file, w):
    ino = os.stat(world_file).st_ino
    r = cli("terminate", "--world", world_file, "i-web1", "i-bob", "--only-group",
            "started-by-bob")
    assert r.exit_code == 0, r.output
    assert "terminated 2 instances" in r.stderr
    expected = w.copy()
    expected.terminate("i-web1")
    expected.terminate("i-bob")
    back = load_world(world_file)
    assert back == expected
    assert {i.id for i in back.instances.values() if i.state == "terminated"} == {
        "i-web1", "i-bob", "i-gone"}
    assert os.stat(world_file).st_ino != ino                    # replaced by rename
    assert os.listdir(world_file.parent) == ["world.yaml"]      # no temporary file left
    # no fence, JSON report
    r = cli("terminate", "-w", world_file, "i-db1", "--json")
    assert r.exit_code == 0
    assert json.loads(r.stdout) == {"world": str(world_file), "dry_run": False,
                                    "only_group": None, "terminated": ["i-db1"],
                                    "written": True}
    assert load_world(world_file).instances["i-db1"].state == "terminated"
    # terminating again is refused
    assert cli("terminate", "-w", world_file, "i-db1").exit_code == 2


def test_terminate_command_dry_run_writes_nothing(world_file):
    before = snapshot(world_file)
    r = cli("terminate", "--world", world_file, "i-web1", "i-bob", "--only-group", "sg-bob",
            "--dry-run")
    assert r.exit_code == 0, r.output
    assert "would terminate 2 instances" in r.stderr and "i-web1" in r.stderr
    assert snapshot(world_file) == before
    r = cli("terminate", "--world", world_file, "i-web2", "--only-group", "sg-bob",
            "--dry-run")
    assert r.exit_code == 2 and "i-web2" in r.stderr
    assert snapshot(world_file) == before


def test_terminate_command_json_world_stays_json(tmp_path, w):
    path = tmp_path / "world.json"
    w.save(path)
    assert cli("terminate", "-w", path, "i-eu").exit_code == 0
    assert path.read_text().lstrip().startswith("{")
    assert load_world(path).instances["i-eu"].state == "terminated"


def test_concurrent_terminates_lose_nothing(world_file):
    """Each run locks the world file before reading it: none overwrites another's change."""
    targets = ["i-web1", "i-web2", "i-db1", "i-bob", "i-other", "i-eu"]
    errors = []

    def run(iid):
        try:
            C.terminate_cmd.callback(world_path=str(world_file), ids=(iid,), only_group=None,
                                     dry_run=False, as_json=False)
        except BaseException as e:      # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    back = load_world(world_file)
    assert all(back.instances[i].state == "terminated" for i in targets)
    assert os.listdir(world_file.parent) == ["world.yaml"]


# -- a writer killed mid-way: the old file or the new one, never a torn one -----------------

TMP_NAME = re.compile(r"^\.world\.yaml\.[0-9a-f]{12}\.tmp$")


def big_world(n: int) -> dict:
    groups = [{"id": f"sg-{g:04x}", "name": f"group-{g}",
               "ingress": [{"protocol": "tcp", "ports": 22 + g, "cidr": "10.0.0.0/8"}]}
              for g in range(40)]
    instances = [{"id": f"i-{k:08x}", "private_ip": f"10.{k >> 16}.{(k >> 8) & 255}.{k & 255}",
                  "groups": [f"sg-{k % 40:04x}", f"sg-{(k * 7 + 1) % 40:04x}"],
                  "tags": {"Name": f"node-{k}", "team": f"team-{k % 9}"}}
                 for k in range(1, n + 1)]
    return {"version": 1, "region": "us-east-1", "security_groups": groups,
            "instances": instances}


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """(old world, old bytes, new world, new bytes, seconds one save takes)."""
    old = World.from_dict(big_world(1500))
    new = old.copy()
    M.terminate(new, [i for n, i in enumerate(old.instances) if n % 3 == 0])
    d = tmp_path_factory.mktemp("big")
    old.save(d / "world.yaml")
    t0 = time.perf_counter()
    new.save(d / "new.yaml")
    took = time.perf_counter() - t0
    old_bytes, new_bytes = (d / "world.yaml").read_bytes(), (d / "new.yaml").read_bytes()
    assert old_bytes != new_bytes
    # the bytes are the worlds: checked once here, by bytes in each trial below
    assert load_world(d / "world.yaml") == old and load_world(d / "new.yaml") == new
    return old, old_bytes, new, new_bytes, took


def kill_writer(path, world: World, delay=None, stall=None) -> int:
    """Fork a process that runs ``world.save(path)``; SIGKILL it after ``delay`` seconds, or
    once it reaches ``stall`` (it then hangs there), or (neither) let it finish.  Returns
    the wait status."""
    r, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:        # the writer
        code = 1
        try:
            os.close(r)
            if stall is not None:
                _install_stall(stall, wfd)
            world.save(path)
            code = 0
        finally:
            os._exit(code)
    os.close(wfd)
    if stall is not None:
        assert os.read(r, 1) == b"!", "the writer never reached the stall point"
    elif delay is not None:
        time.sleep(delay)
    os.close(r)
    if stall is not None or delay is not None:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert not (os.WIFEXITED(status) and os.WEXITSTATUS(status)), "the writer failed"
    return status


def _install_stall(point: str, wfd: int) -> None:
    """In the forked writer: hang (after telling the parent) at ``point`` of write_atomic."""
    def hang():
        os.write(wfd, b"!")
        time.sleep(60)

    if point == "mid-write":            # half the bytes in the temporary file
        real_fdopen = os.fdopen

        class Half:
            def __init__(self, f):
                self.f = f

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return self.f.__exit__(*exc)

            def write(self, data):
                self.f.write(data[:len(data) // 2])
                self.f.flush()
                hang()

        os.fdopen = lambda *a, **k: Half(real_fdopen(*a, **k))
    elif point == "fsync":              # all written, not yet synced nor renamed
        real_fsync = os.fsync
        os.fsync = lambda fd: (hang(), real_fsync(fd))
    elif point == "rename":             # synced, not yet renamed
        os.replace = lambda *a: hang()
    elif point == "dir-fsync":          # renamed, directory not yet synced
        world_files._fsync_dir = lambda d: hang()
    else:
        raise AssertionError(point)


def outcome(path, old_bytes, new_bytes) -> tuple:
    """('old' | 'new', leftover temporary files); asserts nothing else is there."""
    data = path.read_bytes()
    assert data in (old_bytes, new_bytes), "torn world file"
    others = [n for n in os.listdir(path.parent) if n != path.name]
    assert all(TMP_NAME.match(n) for n in others), others
    return ("old" if data == old_bytes else "new"), others


def reset(path, old_bytes):
    for n in os.listdir(path.parent):
        os.unlink(path.parent / n)
    path.write_bytes(old_bytes)


@pytest.mark.parametrize("stall, expect", [("mid-write", "old"), ("fsync", "old"),
                                           ("rename", "old"), ("dir-fsync", "new")])
def test_writer_killed_at_each_step(tmp_path, big, stall, expect):
    old, old_bytes, new, new_bytes, _ = big
    path = tmp_path / "world.yaml"
    reset(path, old_bytes)
    status = kill_writer(path, new, stall=stall)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    got, leftovers = outcome(path, old_bytes, new_bytes)
    assert got == expect
    if expect == "new":
        assert leftovers == []
        return
    # the kill left the temporary file: hidden, uniquely named, holding (part of) the new
    # bytes.  Loading reads the world file only; the next save neither needs nor removes it.
    assert len(leftovers) == 1
    tmp = (path.parent / leftovers[0]).read_bytes()
    assert new_bytes.startswith(tmp) and (len(tmp) < len(new_bytes)) == (stall == "mid-write")
    if stall == "rename":
        assert load_world(path) == old
        new.save(path)
        assert path.read_bytes() == new_bytes
        assert sorted(os.listdir(tmp_path)) == sorted(["world.yaml", leftovers[0]])
    os.unlink(path.parent / leftovers[0])                       # the user's to clean


def test_writer_killed_at_random_moments(tmp_path, big):
    old, old_bytes, new, new_bytes, took = big
    path = tmp_path / "world.yaml"
    rng = random.Random(8)
    # how long the forked writer takes here and now (the machine may be busy)
    reset(path, old_bytes)
    t0 = time.perf_counter()
    assert os.WIFEXITED(kill_writer(path, new, delay=None))
    took = time.perf_counter() - t0
    assert outcome(path, old_bytes, new_bytes) == ("new", [])
    fractions = [0.02, 0.3, 0.6, 0.8, 0.95, 1.05, 1.4]
    rng.shuffle(fractions)
    seen = []
    for f in fractions:
        reset(path, old_bytes)
        delay = took * f * rng.uniform(0.9, 1.1)
        status = kill_writer(path, new, delay=delay)
        got, leftovers = outcome(path, old_bytes, new_bytes)
        assert len(leftovers) <= 1
        if got == "new":
            assert leftovers == []          # the rename consumed the temporary file
        finished = os.WIFEXITED(status)
        if finished:
            assert (got, leftovers) == ("new", [])
        seen.append((round(delay, 3), got, len(leftovers), finished))
    print(f"writer takes {took:.3f} s; kills (delay s, file, temp files left, finished):",
          sorted(seen))
