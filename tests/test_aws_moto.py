"""AWS import end to end against moto's in-process mock of EC2: build VPCs, security groups
(CIDR, IPv6, group references, another account's group, a prefix list) and instances with
boto3, describe them with boto3 (and as the AWS CLI prints them), import, classify packets
and compare with the verdicts EC2 would give.  Skipped when boto3 or moto is missing."""
from __future__ import annotations

import copy
import json

import pytest

boto3 = pytest.importorskip("boto3")
moto = pytest.importorskip("moto")

from click.testing import CliRunner  # noqa: E402

from fastsg.cli import aws_cmd as C  # noqa: E402
from fastsg.cli.main import _Group  # noqa: E402
from fastsg.replay import classify_packet  # noqa: E402
from fastsg.world import load_world  # noqa: E402
from fastsg.world.aws import STUB_TAG, Document, export_aws, import_aws  # noqa: E402

REGION = "us-east-1"
A = "123456789012"          # moto's default account
B = "444455556666"          # the ops account, reached by assuming a role in it


def cross_account_groups(monkeypatch):
    """Let a rule name another account's group, as EC2 does across peered VPCs: moto looks
    referenced groups up in the caller's account only, so fall back to the other accounts of
    the same region."""
    from moto.ec2.models import ec2_backends
    from moto.ec2.models.security_groups import SecurityGroupBackend
    own = SecurityGroupBackend.get_security_group_from_id

    def lookup(self, group_id):
        found = own(self, group_id)
        if found is None:
            for _, region, backend in list(ec2_backends.iter_backends()):
                if backend is not self and region == self.region_name:
                    found = own(backend, group_id)
                    if found is not None:
                        break
        return found
    monkeypatch.setattr(SecurityGroupBackend, "get_security_group_from_id", lookup)


def _describe(ec2, call, **kw):
    """All pages of a describe call (boto3 responses)."""
    return list(ec2.get_paginator(call).paginate(**kw))


class Cloud:
    """The two accounts, built once per test with boto3 against moto."""

    def __init__(self):
        self.ec2 = boto3.client("ec2", region_name=REGION)
        sts = boto3.client("sts", region_name=REGION)
        cred = sts.assume_role(RoleArn=f"arn:aws:iam::{B}:role/ops",
                               RoleSessionName="fastsg-test")["Credentials"]
        self.ops = boto3.client("ec2", region_name=REGION, aws_access_key_id=cred["AccessKeyId"],
                                aws_secret_access_key=cred["SecretAccessKey"],
                                aws_session_token=cred["SessionToken"])
        self._ops_account()
        self._main_account()
        # what the accounts look like now (tests may change them afterwards)
        self.described = {ops: self._dumps(ops) for ops in (True, False)}

    def _ops_account(self):
        ops = self.ops
        vpc = ops.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
        sub = ops.create_subnet(VpcId=vpc, CidrBlock="10.9.0.0/24",
                                AvailabilityZone="us-east-1c")["Subnet"]["SubnetId"]
        self.bastion_sg = ops.create_security_group(GroupName="bastion", Description="ops",
                                                    VpcId=vpc)["GroupId"]
        ops.authorize_security_group_ingress(GroupId=self.bastion_sg, IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
             "IpRanges": [{"CidrIp": "198.51.100.0/24", "Description": "office"}]}])
        ops.run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1, SubnetId=sub,
                          PrivateIpAddress="10.9.0.9", SecurityGroupIds=[self.bastion_sg])

    def _main_account(self):
        ec2 = self.ec2
        vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16", AmazonProvidedIpv6CidrBlock=True)["Vpc"]
        v6 = vpc["Ipv6CidrBlockAssociationSet"][0]["Ipv6CidrBlock"].replace("/56", "/64")
        vpc_id = vpc["VpcId"]
        sub = ec2.create_subnet(VpcId=vpc_id, CidrBlock="10.0.1.0/24", Ipv6CidrBlock=v6,
                                AvailabilityZone="us-east-1a")["Subnet"]["SubnetId"]
        mk = lambda name: ec2.create_security_group(  # noqa: E731
            GroupName=name, Description=f"{name} tier", VpcId=vpc_id,
            TagSpecifications=[{"ResourceType": "security-group",
                                "Tags": [{"Key": "tier", "Value": name}]}])["GroupId"]
        self.web, self.app, self.db = mk("web"), mk("app"), mk("db")
        self.pl = ec2.create_managed_prefix_list(
            PrefixListName="office", MaxEntries=5, AddressFamily="IPv4",
            Entries=[{"Cidr": "198.51.100.0/24", "Description": "HQ"}]
        )["PrefixList"]["PrefixListId"]
        ec2.authorize_security_group_ingress(GroupId=self.web, IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": 80, "ToPort": 80,
             "IpRanges": [{"CidrIp": "0.0.0.0/0", "Description": "http"}],
             "Ipv6Ranges": [{"CidrIpv6": "::/0", "Description": "http6"}]},
            {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
             "UserIdGroupPairs": [{"GroupId": self.bastion_sg, "UserId": B,
                                   "Description": "ops bastion"}]},
            {"IpProtocol": "icmp", "FromPort": 8, "ToPort": -1,
             "IpRanges": [{"CidrIp": "10.0.0.0/8"}]},
            {"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443,
             "PrefixListIds": [{"PrefixListId": self.pl, "Description": "office"}]}])
        ec2.authorize_security_group_ingress(GroupId=self.app, IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": 8000, "ToPort": 8080,
             "UserIdGroupPairs": [{"GroupId": self.web}]}])
        ec2.authorize_security_group_ingress(GroupId=self.db, IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": 5432, "ToPort": 5432,
             "UserIdGroupPairs": [{"GroupId": self.app}]},
            {"IpProtocol": "udp", "FromPort": 53, "ToPort": 53,
             "IpRanges": [{"CidrIp": "10.0.0.0/16"}]}])
        # db may only talk https out
        ec2.revoke_security_group_egress(GroupId=self.db, IpPermissions=[
            {"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}],
             "Ipv6Ranges": [{"CidrIpv6": "::/0"}]}])
        ec2.authorize_security_group_egress(GroupId=self.db, IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443,
             "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])

        def run(ip, groups, name, **kw):
            i = ec2.run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1, SubnetId=sub,
                                  PrivateIpAddress=ip, SecurityGroupIds=groups,
                                  TagSpecifications=[{"ResourceType": "instance",
                                                      "Tags": [{"Key": "Name", "Value": name}]}],
                                  **kw)["Instances"][0]
            return i["InstanceId"]
        self.web1 = run("10.0.1.10", [self.web], "web-1", Ipv6AddressCount=1)
        self.app1 = run("10.0.1.20", [self.app, self.web], "app-1")     # several groups
        self.db1 = run("10.0.1.30", [self.db], "db-1")
        self.web2 = run("10.0.1.40", [self.web], "web-2")
        ec2.stop_instances(InstanceIds=[self.web2])
        desc = ec2.describe_instances(InstanceIds=[self.web1])["Reservations"][0]["Instances"][0]
        self.web1_v6 = desc["NetworkInterfaces"][0]["Ipv6Addresses"][0]["Ipv6Address"]

    # -- what `aws ec2 describe-...` gives ------------------------------------------------

    def dumps(self, ops: bool = True) -> dict:
        """The describe outputs (as import_aws arguments), with the ops account or without."""
        return copy.deepcopy(self.described[ops])

    def _dumps(self, ops: bool) -> dict:
        ec2 = self.ec2
        out = {"security_groups": _describe(ec2, "describe_security_groups"),
               "instances": _describe(ec2, "describe_instances"),
               "rules": _describe(ec2, "describe_security_group_rules"),
               "prefix_lists": _describe(ec2, "describe_managed_prefix_lists")}
        entries = ec2.get_managed_prefix_list_entries(PrefixListId=self.pl)
        out["prefix_lists"].append(Document("entries", entries, prefix_list_id=self.pl))
        if ops:
            out["security_groups"] += _describe(self.ops, "describe_security_groups")
            out["instances"] += _describe(self.ops, "describe_instances")
            out["rules"] += _describe(self.ops, "describe_security_group_rules")
        return out


@pytest.fixture(scope="module")
def cloud():
    with pytest.MonkeyPatch.context() as mp:
        for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                     "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": REGION}.items():
            mp.setenv(k, v)
        cross_account_groups(mp)
        with moto.mock_aws():
            yield Cloud()


def verdict(world, src, dst, proto="tcp", dport=0):
    c = classify_packet(world, src=src, dst=dst, proto=proto, dport=dport)
    return c["verdict"], (c["ingress"] or {}).get("rule"), (c["egress"] or {}).get("rule")


def test_imported_world_gives_ec2_verdicts(cloud):
    r = import_aws(**cloud.dumps())
    w = r.world
    assert [str(x) for x in r.warnings] == []
    # the groups and their references
    web = w.groups[cloud.web]
    assert (web.name, web.owner, web.region, web.tags) == ("web", A, REGION, {"tier": "web"})
    assert [(x.port_lo, str(x.cidr) if x.cidr else x.group_ref) for x in web.ingress] == [
        (80, "0.0.0.0/0"), (80, "::/0"), (22, f"{B}/{cloud.bastion_sg}"), (0, "10.0.0.0/8"),
        (443, "198.51.100.0/24")]
    assert all(x.id.startswith("sgr-") for g in w.groups.values() for x in g.ingress + g.egress)
    assert web.ingress[4].id.endswith("#0")           # the prefix list rule, expanded
    assert w.groups[cloud.bastion_sg].owner == B
    # the instances
    assert w.instances[cloud.app1].groups == [cloud.app, cloud.web]
    assert str(w.instances[cloud.web1].private_ipv6) == cloud.web1_v6
    assert w.instances[cloud.web2].state == "stopped"
    assert w.instances[cloud.web1].tags == {"Name": "web-1"}

    web1, app1, db1, web2 = "10.0.1.10", "10.0.1.20", "10.0.1.30", "10.0.1.40"
    cases = [
        ("203.0.113.5", web1, "tcp", 80, "ACCEPT"),
        ("2600::1", cloud.web1_v6, "tcp", 80, "ACCEPT"),
        ("203.0.113.5", web1, "tcp", 22, "DROP"),
        ("10.9.0.9", web1, "tcp", 22, "ACCEPT"),           # the other account's bastion
        ("10.9.0.9", db1, "tcp", 22, "DROP"),
        ("198.51.100.7", web1, "tcp", 443, "ACCEPT"),      # the prefix list
        ("192.0.2.1", web1, "tcp", 443, "DROP"),
        ("10.5.5.5", web1, "icmp", 0, "ACCEPT"),
        ("11.1.1.1", web1, "icmp", 0, "DROP"),
        (web1, app1, "tcp", 8080, "ACCEPT"),
        (web1, app1, "tcp", 8081, "DROP"),
        (app1, app1.replace("20", "21"), "tcp", 1, "ACCEPT"),   # egress open, nobody there
        (app1, db1, "tcp", 5432, "ACCEPT"),
        (web1, db1, "tcp", 5432, "DROP"),
        (web2, app1, "tcp", 8080, "DROP"),                 # stopped: no longer a member
        (web1, db1, "udp", 53, "ACCEPT"),
        (db1, "8.8.8.8", "udp", 53, "DROP"),               # db's egress: https only
        (db1, "1.1.1.1", "tcp", 443, "ACCEPT"),
    ]
    got = [(s, d, p, port, verdict(w, s, d, p, port)[0]) for s, d, p, port, _ in cases]
    assert got == cases


def test_without_the_other_account_its_group_is_a_stub(cloud):
    r = import_aws(**cloud.dumps(ops=False))
    stub = r.world.groups[cloud.bastion_sg]
    assert (stub.owner, stub.ingress, stub.egress) == (B, [], [])
    assert STUB_TAG in stub.tags
    assert len(r.warnings) == 1 and "IpPermissions[1].UserIdGroupPairs[0].GroupId" in \
        r.warnings[0].path
    assert verdict(r.world, "10.9.0.9", "10.0.1.10", "tcp", 22)[0] == "DROP"
    assert verdict(r.world, "203.0.113.5", "10.0.1.10", "tcp", 80)[0] == "ACCEPT"


def test_without_prefix_lists_the_rule_is_reported(cloud):
    d = cloud.dumps()
    d.pop("prefix_lists")
    r = import_aws(**d)
    assert [w.message.split(" skipped")[0] for w in r.warnings] == [
        f"ingress rule tcp 443 of group {cloud.web} from prefix list {cloud.pl}"]
    assert verdict(r.world, "198.51.100.7", "10.0.1.10", "tcp", 443)[0] == "DROP"


def _cli_json(pages) -> str:
    """Pages as `aws ec2 describe-...` prints them (timestamps as text), concatenated."""
    return "".join(json.dumps({k: v for k, v in p.items() if k != "ResponseMetadata"},
                              default=str, indent=4) + "\n" for p in pages)


def test_cli_json_files_through_the_command(cloud, tmp_path):
    d = cloud.dumps()
    files = {}
    # a paginated dump: `aws ec2 describe-security-groups --max-items 3 ...` pages, concatenated
    groups = [g for page in d["security_groups"] for g in page["SecurityGroups"]]
    assert len(groups) > 3
    d["security_groups"] = [{"SecurityGroups": groups[:3], "NextToken": "page-2"},
                            {"SecurityGroups": groups[3:]}]
    for kind in ("security_groups", "instances", "rules"):
        files[kind] = tmp_path / f"{kind}.json"
        files[kind].write_text(_cli_json(d[kind]))
    pls = tmp_path / "prefix-lists.json"
    pls.write_text(_cli_json(d["prefix_lists"][:-1]))
    entries = tmp_path / f"{cloud.pl}.json"
    entries.write_text(_cli_json([d["prefix_lists"][-1].data]))
    out = tmp_path / "world.yaml"
    group = _Group(name="fastsg", commands={c.name: c for c in C.COMMANDS})
    res = CliRunner().invoke(group, ["import", "aws", "-g", str(files["security_groups"]),
                                     "-i", str(files["instances"]), "-r", str(files["rules"]),
                                     "--prefix-lists", str(pls), "--prefix-lists", str(entries),
                                     "--strict", "-o", str(out)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert load_world(out) == import_aws(**d).world


def test_export_then_import_is_identical(cloud):
    d = cloud.dumps()
    first = import_aws(**d)
    out = export_aws(first.world)
    assert out.lossy == []
    again = import_aws(out.security_groups, d["instances"], out.rules)
    assert again.world == first.world
    # and the export is what EC2 accepts back: re-create the groups' rules in a fresh VPC
    ec2 = cloud.ec2
    vpc = ec2.create_vpc(CidrBlock="10.7.0.0/16")["Vpc"]["VpcId"]
    web = next(g for g in out.security_groups["SecurityGroups"] if g["GroupId"] == cloud.web)
    copy_id = ec2.create_security_group(GroupName="web-copy", Description="copy",
                                        VpcId=vpc)["GroupId"]
    ec2.authorize_security_group_ingress(GroupId=copy_id, IpPermissions=web["IpPermissions"])
    copied = ec2.describe_security_groups(GroupIds=[copy_id])["SecurityGroups"][0]
    rebuilt = import_aws({"SecurityGroups": [{**copied, "IpPermissionsEgress": []}]}).world
    assert [x.same_match(y) for x, y in zip(rebuilt.groups[copy_id].ingress,
                                            first.world.groups[cloud.web].ingress)] \
        == [True] * 5
