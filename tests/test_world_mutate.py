"""World mutations (spec section 6): effects, revisions and the change log, refusals that
change nothing, default rule ids never reused, the timeline as pending changes."""
import copy
import ipaddress
import threading
from pathlib import Path

import pytest
import yaml

from fastsg.errors import WorldError
from fastsg.world import Change, Instance, Rule, TimelineEvent, World, load_world

DATA = Path(__file__).parent / "data" / "worlds"
SMALL = yaml.safe_load((DATA / "small.yaml").read_text())
SSH = {"protocol": "tcp", "ports": 22, "cidr": "198.51.100.7/32"}


@pytest.fixture
def w() -> World:
    return World.from_dict(copy.deepcopy(SMALL))


def refused(w: World, call, path: str, *fragments: str) -> WorldError:
    """``call()`` raises a WorldError with a problem at ``path`` naming ``fragments``, and
    changes nothing (state, revision, change log)."""
    before, revision, changes = w.to_dict(), w.revision, w.changes_since(0)
    with pytest.raises(WorldError) as exc:
        call()
    found = [p for p in exc.value.problems if p.path == path]
    assert found, exc.value.problems
    for fragment in fragments:
        assert fragment in found[0].message, found[0]
    assert w.to_dict() == before
    assert (w.revision, w.changes_since(0)) == (revision, changes)
    return exc.value


# -- authorize ------------------------------------------------------------------------------

def test_authorize_appends_with_default_ids(w):
    r = w.authorize("sg-web", "ingress", SSH)
    assert isinstance(r, Rule)
    assert (r.id, r.explicit_id, r.protocol, r.port_lo, r.port_hi) == ("sg-web:in:2", False, 6,
                                                                       22, 22)
    assert w.groups["sg-web"].ingress[-1] is r
    e = w.authorize("web", "egress", {"protocol": "all", "group": "admin", "action": "deny"})
    assert (e.id, e.group, e.group_ref, e.action) == ("sg-web:eg:2", "sg-admin", "admin", "deny")
    assert w.groups["sg-web"].egress[-1] is e
    assert w.revision == 2
    assert w.changes_since(0) == [Change(1, "rules", group="sg-web"),
                                  Change(2, "rules", group="sg-web")]
    assert w.changes_since(1) == [Change(2, "rules", group="sg-web")]
    assert w.changes_since(2) == []


def test_authorize_explicit_id_and_rule_object(w):
    r = w.authorize("sg-admin", "ingress", {**SSH, "id": "ssh-in"})
    assert (r.id, r.explicit_id) == ("ssh-in", True)
    # a Rule object: its id is used when explicit, else a default id is given
    obj = Rule(id="ignored", protocol=17, port_lo=53, port_hi=53,
               cidr=ipaddress.ip_network("10.0.0.0/8"))
    # n counts every rule added, explicit ids included: ssh-in took n = 0
    assert w.authorize("sg-admin", "ingress", obj).id == "sg-admin:in:1"
    assert w.authorize("sg-admin", "egress", Rule(id="mine", protocol=1, icmp_type=8,
                                                  group="sg-web", explicit_id=True)).id == "mine"
    assert w.groups["sg-admin"].egress[-1].group == "sg-web"


def test_authorize_by_owner_id_and_name(w):
    w.authorize("000000000000/sg-admin", "ingress", SSH)
    w.authorize("admin", "ingress", SSH)       # duplicates are allowed (see World docstring)
    assert len(w.groups["sg-admin"].ingress) == 2


@pytest.mark.parametrize("args, path, fragments", [
    (("sg-nope", "ingress", SSH), "authorize.group", ['"sg-nope"']),
    (("sg-web", "inbound", SSH), "authorize.direction",
     ['"inbound" is not one of ingress, egress']),
    (("sg-web", "ingress", {**SSH, "ports": 70000}), "authorize.rule.ports", ["70000"]),
    (("sg-web", "ingress", {**SSH, "cidr": "198.51.100.7/24"}), "authorize.rule.cidr",
     ['"198.51.100.7/24" has host bits set', '"198.51.100.0/24"']),
    (("sg-web", "ingress", {"protocol": "all", "ports": 1, "cidr": "::/0"}),
     "authorize.rule.ports", ["ports 1 given for protocol all"]),
    (("sg-web", "ingress", {"protocol": "tcp", "group": "eu"}), "authorize.rule.group", ['"eu"']),
    (("sg-web", "ingress", {"protocol": "tcp", "group": "sg-eu"}), "authorize.rule.group",
     ['"sg-eu"', "across regions"]),
    (("sg-web", "ingress", {**SSH, "id": "sg-web:in:0"}), "authorize.rule.id",
     ['"sg-web:in:0" is a default rule id already given out']),
    (("sg-web", "ingress", {**SSH, "id": "sg-web:in:1"}), "authorize.rule.id", ['"sg-web:in:1"']),
    (("sg-web", "ingress", {**SSH, "porst": 1}), "authorize.rule.porst",
     ['unknown key "porst"; did you mean "ports"?']),
    (("sg-web", "ingress", "tcp/22"), "authorize.rule", ['"tcp/22" is not a mapping']),
])
def test_authorize_refused(w, args, path, fragments):
    refused(w, lambda: w.authorize(*args), path, *fragments)


def test_authorize_duplicate_rule_id_across_groups(w):
    w.authorize("sg-web", "ingress", {**SSH, "id": "r1"})
    refused(w, lambda: w.authorize("sg-admin", "egress", {**SSH, "id": "r1"}),
            "authorize.rule.id", 'duplicate rule id "r1" (also group sg-web)')


# -- revoke ---------------------------------------------------------------------------------

def test_revoke_by_id(w):
    gone = w.revoke("sg-web", rule_id="sg-web:in:0")
    assert gone.port_lo == 80
    assert [r.id for r in w.groups["sg-web"].ingress] == ["sg-web:in:1"]
    gone = w.revoke("sg-web", "egress", rule_id="sg-web:eg:1")
    assert str(gone.cidr) == "::/0"
    assert w.changes_since(0) == [Change(1, "rules", group="sg-web"),
                                  Change(2, "rules", group="sg-web")]


def test_revoke_by_rule(w):
    w.authorize("sg-web", "ingress", SSH)
    w.authorize("sg-web", "ingress", {**SSH, "log": True, "description": "again"})
    # the first same-match rule goes; log and description do not take part in matching
    gone = w.revoke("sg-web", "ingress", rule={**SSH, "description": "other"})
    assert gone.id == "sg-web:in:2"
    gone = w.revoke("web", "ingress", rule=w.groups["sg-web"].ingress[-1])
    assert gone.id == "sg-web:in:3"
    # group peers compare by the resolved id, whatever the reference's spelling
    gone = w.revoke("sg-web", "ingress",
                    rule={"protocol": 6, "ports": "22-22", "group": "sg-admin"})
    assert gone.id == "sg-web:in:1"


@pytest.mark.parametrize("kwargs, path, fragments", [
    ({"rule_id": "sg-web:in:9"}, "revoke.rule_id",
     ['"sg-web:in:9" is not a rule id of group sg-web']),
    ({"rule_id": "sg-web:in:O"}, "revoke.rule_id", ['did you mean "sg-web:in:']),
    ({"rule_id": "sg-web:in:0", "direction": "egress"}, "revoke.rule_id",
     ['"sg-web:in:0" is not a egress rule']),
    ({"direction": "ingress", "rule": {**SSH, "ports": 23}}, "revoke.rule",
     ["no ingress rule of group sg-web matches", '"ports": 23']),
    ({"direction": "ingress", "rule": {**SSH, "ports": "x"}}, "revoke.rule.ports", ['"x"']),
    ({"rule": SSH}, "revoke.direction", ["needs a direction"]),
    ({}, "revoke", ['exactly one of "rule_id" and "rule"']),
    ({"rule_id": "sg-web:in:0", "rule": SSH}, "revoke", ['exactly one']),
])
def test_revoke_refused(w, kwargs, path, fragments):
    refused(w, lambda: w.revoke("sg-web", **kwargs), path, *fragments)


def test_revoke_rule_of_another_group(w):
    refused(w, lambda: w.revoke("sg-admin", rule_id="sg-web:in:0"), "revoke.rule_id",
            '"sg-web:in:0" is a rule of group sg-web, not of sg-admin')


def test_default_ids_never_reused(w):
    ids = set()
    for _ in range(3):
        r = w.authorize("sg-admin", "ingress", SSH)
        assert r.id not in ids
        ids.add(r.id)
        w.revoke("sg-admin", rule_id=r.id)
    assert ids == {"sg-admin:in:0", "sg-admin:in:1", "sg-admin:in:2"}
    assert w.groups["sg-admin"].ingress == [] and w.groups["sg-admin"].next_in == 3
    # the default egress ids too
    w.revoke("sg-web", rule_id="sg-web:eg:1")
    assert w.authorize("sg-web", "egress", SSH).id == "sg-web:eg:2"


def test_revoked_explicit_id_may_be_used_again(w):
    w.authorize("sg-admin", "ingress", {**SSH, "id": "mine"})
    w.revoke("sg-admin", rule_id="mine")
    assert w.authorize("sg-web", "ingress", {**SSH, "id": "mine"}).id == "mine"


# -- attach / detach ------------------------------------------------------------------------

def test_attach_and_detach(w):
    w.attach("i-web1", "admin")
    assert w.instances["i-web1"].groups == ["sg-web", "sg-admin"]
    assert [i.id for i in w.members("sg-admin")] == ["i-web1", "i-admin"]
    w.detach("i-web1", "sg-web")
    assert w.instances["i-web1"].groups == ["sg-admin"]
    assert [i.id for i in w.members("sg-web")] == []       # i-old holds it but is stopped
    w.attach("i-old", "sg-admin")                           # stopped instances may change
    assert w.changes_since(0) == [Change(1, "attach", group="sg-admin", instance="i-web1"),
                                  Change(2, "detach", group="sg-web", instance="i-web1"),
                                  Change(3, "attach", group="sg-admin", instance="i-old")]


def test_attach_limit(w):
    w.limits["groups_per_instance"] = 2
    w.attach("i-web1", "sg-admin")
    refused(w, lambda: w.attach("i-admin", "sg-admin"), "attach.group", "already attached")
    w2 = World.from_dict({**copy.deepcopy(SMALL), "limits": {"groups_per_instance": 1}})
    refused(w2, lambda: w2.attach("i-web1", "sg-admin"), "attach.group",
            '"sg-admin"', "already holds 1 groups", "limits.groups_per_instance = 1")


@pytest.mark.parametrize("method, args, path, fragments", [
    ("attach", ("i-web1", "web"), "attach.group", ['"web": group sg-web is already attached']),
    ("attach", ("i-nope", "web"), "attach.instance", ['"i-nope" is not an instance id']),
    ("attach", ("i-web", "web"), "attach.instance", ['did you mean "i-web1"?']),
    ("attach", ("i-web1", "nope"), "attach.group", ['"nope"']),
    ("attach", ("i-web1", "eu"), "attach.group", ['"eu"']),                # name of another region
    ("attach", ("i-web1", "sg-eu"), "attach.group", ['"sg-eu"', "eu-west-1"]),
    ("detach", ("i-web1", "admin"), "detach.group", ["group sg-admin is not attached"]),
    ("detach", ("i-nope", "web"), "detach.instance", ['"i-nope"']),
    ("detach", ("i-web1", "nope"), "detach.group", ['"nope"']),
])
def test_attach_detach_refused(w, method, args, path, fragments):
    refused(w, lambda: getattr(w, method)(*args), path, *fragments)


def test_terminated_instances_cannot_change(w):
    w.terminate("i-web1")
    refused(w, lambda: w.attach("i-web1", "admin"), "attach.instance", "terminated")
    refused(w, lambda: w.detach("i-web1", "web"), "detach.instance", "terminated")
    refused(w, lambda: w.terminate("i-web1"), "terminate.instance", "terminated")


# -- launch / terminate ---------------------------------------------------------------------

def test_launch(w):
    inst = w.launch({"id": "i-new", "private_ip": "10.0.0.9", "public_ip": "2001:db8::99",
                     "groups": ["web", "sg-admin"], "tags": {"Name": "n"}})
    assert isinstance(inst, Instance) and w.instances["i-new"] is inst
    assert (inst.state, inst.groups, inst.owner, inst.region) == (
        "running", ["sg-web", "sg-admin"], "000000000000", "us-east-1")
    assert [i.id for i in w.members("sg-web")] == ["i-web1", "i-new"]
    assert w.changes_since(0) == [Change(1, "launch", instance="i-new")]
    # an Instance object works too
    obj = Instance(id="i-obj", private_ip=ipaddress.IPv4Address("10.0.0.10"), groups=["sg-web"])
    assert w.launch(obj).groups == ["sg-web"]


def test_launch_reuses_address_of_terminated_instance(w):
    w.terminate("i-web1")
    assert w.launch({"id": "i-new", "private_ip": "10.0.0.1"}).private_ip == \
        ipaddress.IPv4Address("10.0.0.1")


@pytest.mark.parametrize("inst, path, fragments", [
    ({"id": "i-web1", "private_ip": "10.0.0.9"}, "launch.id", ['duplicate instance id "i-web1"']),
    ({"id": "i-old", "private_ip": "10.0.0.9"}, "launch.id", ['"i-old"']),   # even if stopped
    ({"id": "i-n", "private_ip": "10.0.0.1"}, "launch.private_ip",
     ['"10.0.0.1" is already used by running instance i-web1']),
    ({"id": "i-n", "private_ip": "10.0.0.9", "public_ip": "54.0.0.2"}, "launch.public_ip",
     ['"54.0.0.2"', "i-admin"]),
    ({"id": "i-n", "private_ip": "10.0.0.9", "public_ip": "10.0.0.9"}, "launch.public_ip",
     ['"10.0.0.9" is already used']),
    ({"id": "i-n"}, "launch.private_ip", ["needs a private_ip"]),
    ({"id": "i-n", "private_ip": "10.0.0.9", "state": "stopped"}, "launch.state", ['"stopped"']),
    ({"id": "i-n", "private_ip": "10.0.0.9", "groups": ["eu"]}, "launch.groups[0]", ['"eu"']),
    ({"id": "i-n", "private_ip": "10.0.0.9", "groups": ["web"] * 2}, "launch.groups[1]",
     ['"web" repeats group sg-web']),
    ({"id": "i-n", "private_ip": "10.0.0.9", "grups": []}, "launch.grups",
     ['did you mean "groups"?']),
    ("i-n", "launch", ['"i-n" is not a mapping']),
])
def test_launch_refused(w, inst, path, fragments):
    refused(w, lambda: w.launch(inst), path, *fragments)


def test_terminate(w):
    inst = w.terminate("i-admin")
    assert inst.state == "terminated" and not inst.running
    assert w.members("sg-admin") == []
    assert w.changes_since(0) == [Change(1, "terminate", instance="i-admin")]
    refused(w, lambda: w.terminate("i-zzz"), "terminate.instance", '"i-zzz"')
    w.terminate("i-old")                                   # stopped -> terminated
    assert w.instances["i-old"].state == "terminated"


# -- revisions, locking, apply_event ----------------------------------------------------------

def test_revision_counts_only_successful_mutations(w):
    w.authorize("sg-web", "ingress", SSH)
    with pytest.raises(WorldError):
        w.attach("i-web1", "web")
    w.terminate("i-web1")
    assert w.revision == 2
    assert [c.revision for c in w.changes_since(0)] == [1, 2]


def test_mutations_hold_the_lock(w):
    """A mutation waits while another thread holds the world's lock."""
    done = threading.Event()
    with w.lock:
        t = threading.Thread(target=lambda: (w.attach("i-web1", "admin"), done.set()))
        t.start()
        assert not done.wait(0.2)
        assert w.revision == 0
    t.join(5)
    assert done.is_set() and w.revision == 1


def test_concurrent_authorizations_get_distinct_ids(w):
    def work():
        for _ in range(50):
            w.authorize("sg-admin", "ingress", SSH)
    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [r.id for r in w.groups["sg-admin"].ingress]
    assert len(set(ids)) == 200 and w.revision == 200


def test_apply_event_dispatches(w):
    events = [
        TimelineEvent(1, "authorize", {"group": "sg-web", "direction": "ingress", "rule": SSH}),
        TimelineEvent(2, "attach", {"instance": "i-web1", "group": "admin"}),
        TimelineEvent(3, "detach", {"instance": "i-web1", "group": "admin"}),
        TimelineEvent(4, "revoke", {"group": "sg-web", "rule_id": "sg-web:in:2"}),
        TimelineEvent(5, "launch", {"id": "i-n", "private_ip": "10.0.0.9"}),
        TimelineEvent(6, "terminate", {"instance": "i-n"}),
    ]
    for e in events:
        w.apply_event(e)
    assert [c.kind for c in w.changes_since(0)] == ["rules", "attach", "detach", "rules",
                                                    "launch", "terminate"]
    with pytest.raises(WorldError) as exc:
        w.apply_event(TimelineEvent(7, "attach", {"instance": "i-n", "group": "web"}))
    assert str(exc.value.problems[0]).startswith('timeline.attach.instance: "i-n": instance is '
                                                 'terminated')


# -- the timeline is pending change --------------------------------------------------------------

TIMELINE = [
    {"at": 10, "attach": {"instance": "i-web1", "group": "admin"}},
    {"at": 20, "launch": {"id": "i-new", "private_ip": "10.0.0.9", "groups": ["web"]}},
    {"at": 30, "revoke": {"group": "sg-web", "rule_id": "sg-web:in:1"}},
]


@pytest.fixture
def tw() -> World:
    return World.from_dict({**copy.deepcopy(SMALL), "timeline": copy.deepcopy(TIMELINE)})


@pytest.mark.parametrize("call, fragment", [
    (lambda w: w.attach("i-web1", "admin"), "timeline[0].attach.group"),
    (lambda w: w.launch({"id": "i-new", "private_ip": "10.0.0.50"}), "timeline[1].launch.id"),
    (lambda w: w.launch({"id": "i-x", "private_ip": "10.0.0.9"}), "timeline[1].launch.private_ip"),
    (lambda w: w.revoke("sg-web", rule_id="sg-web:in:1"), "timeline[2].revoke.rule_id"),
    (lambda w: w.terminate("i-web1"), "timeline[0].attach.instance"),
])
def test_mutation_breaking_the_timeline_is_refused(tw, call, fragment):
    kind = call.__code__.co_names[0]
    err = refused(tw, lambda: call(tw), kind, "the timeline would no longer apply")
    assert fragment in str(err)


def test_event_made_in_code_breaking_the_timeline_is_refused(tw):
    # an event that is not one of the world's timeline is a mutation like the others
    # (found by a review: apply_event skipped the pending-timeline check for it)
    before = tw.to_dict()
    with pytest.raises(WorldError) as exc:
        tw.apply_event(TimelineEvent(5, "revoke", {"group": "sg-web", "rule_id": "sg-web:in:1"}))
    assert "the timeline would no longer apply" in str(exc.value)
    assert "timeline[2].revoke.rule_id" in str(exc.value)
    assert tw.to_dict() == before and tw.revision == 0
    tw.apply_event(TimelineEvent(5, "attach", {"instance": "i-admin", "group": "web"}))
    assert tw.revision == 1 and len(tw.pending_events()) == 3


def test_mutation_compatible_with_the_timeline(tw):
    tw.authorize("sg-web", "ingress", SSH)
    tw.attach("i-admin", "web")
    assert tw.revision == 2


def test_applied_events_leave_the_saved_timeline(tw, tmp_path):
    first = tw.timeline[0]
    tw.apply_event(first)
    assert tw.pending_events() == tw.timeline[1:]
    assert [e["at"] for e in tw.to_dict()["timeline"]] == [20, 30]
    with pytest.raises(WorldError, match="already applied"):
        tw.apply_event(first)
    # saved mid-replay, it loads back to the same world, and the rest still applies
    tw.save(tmp_path / "w.yaml")
    back = load_world(tmp_path / "w.yaml")
    assert back == tw
    for e in back.timeline:
        back.apply_event(e)
    for e in tw.pending_events():
        tw.apply_event(e)
    assert back == tw and "timeline" not in tw.to_dict()
    # with nothing pending, any valid mutation goes again
    tw.attach("i-new", "admin")
