"""Synthetic worlds, traffic and packet bytes (fastsg.generate, fastsg.packet_build)."""
from __future__ import annotations

import ipaddress
from collections import Counter

import numpy as np
import pytest

from fastsg import schema
from fastsg.batch import PacketBatch
from fastsg.generate import generate_traffic, generate_world
from fastsg.packet_build import build_frames, frame_lengths, write_capture

try:
    from fastsg.world import World
except ImportError:      # pragma: no cover - the world model is written concurrently
    World = None

needs_world = pytest.mark.skipif(World is None, reason="fastsg.world is not importable yet")


def rule_count(w: dict) -> int:
    """Rules written in the file: ingress + explicit egress (the counted quantity)."""
    return sum(len(g["ingress"]) + len(g.get("egress", [])) for g in w["security_groups"])


def all_rules(w: dict):
    for g in w["security_groups"]:
        yield from g["ingress"]
        yield from g.get("egress", [])


# ------------------------------------------------------------------------------------------
# worlds
# ------------------------------------------------------------------------------------------

def test_world_same_seed_same_dict_other_seed_differs():
    a = generate_world(500, 30, 200, deny_share=0.1, seed=7)
    b = generate_world(500, 30, 200, deny_share=0.1, seed=7)
    c = generate_world(500, 30, 200, deny_share=0.1, seed=8)
    assert a == b
    assert a != c


@pytest.mark.parametrize("rules,groups,instances", [(100, 10, 50), (100, 2000, 10), (1000, 50, 0),
                                                   (7777, 300, 1234), (100_000, 2000, 100)])
def test_world_rule_count_is_exact(rules, groups, instances):
    w = generate_world(rules, groups, instances, deny_share=0.1, accounts=2, regions=2)
    assert rule_count(w) == rules
    assert len(w["security_groups"]) == groups
    assert len(w["instances"]) == instances


@needs_world
@pytest.mark.parametrize("args,kw", [
    ((100, 10, 50), {}),
    ((100, 200, 10), {"accounts": 1}),
    ((2000, 100, 2000), {"deny_share": 0.3, "regions": 3, "accounts": 4, "order": "priority"}),
    ((5000, 300, 3000), {"ipv6_share": 0.5, "group_peer_share": 0.6, "order": "deny,allow"}),
])
def test_world_loads(args, kw):
    w = generate_world(*args, **kw)
    world = World.from_dict(w)
    assert len(world.groups) == args[1]
    assert len(world.instances) == args[2]
    n = sum(len(g.ingress) + (len(g.egress) if g.egress_given else 0) for g in world.groups.values())
    assert n == args[0]


def test_world_has_the_realistic_ingredients():
    w = generate_world(5000, 200, 3000, deny_share=0.1, ipv6_share=0.2, accounts=3, seed=3)
    rules = list(all_rules(w))
    protos = Counter(str(r["protocol"]) for r in rules)
    assert {"tcp", "udp", "icmp", "all", "icmpv6"} <= set(protos)
    ports = {r.get("ports") for r in rules}
    assert {22, 80, 443, "1024-65535", "0-65535"} <= ports
    assert any(r.get("icmp_type") == 8 for r in rules)
    assert any(r["protocol"] == "icmp" and r.get("icmp_type") == 3 and "icmp_code" not in r for r in rules)
    prefixes = Counter(ipaddress.ip_network(r["cidr"]).prefixlen for r in rules if "cidr" in r)
    assert {0, 8, 16, 24, 32} <= set(prefixes)
    v6 = [r for r in rules if "cidr" in r and ":" in r["cidr"]]
    assert 0.05 < len(v6) / len(rules) < 0.35
    groups = [r["group"] for r in rules if "group" in r]
    assert 0.1 < len(groups) / len(rules) < 0.4
    assert any("/" in g for g in groups)          # another account's group
    actions = Counter(r.get("action", "allow") for r in rules)
    assert 0.06 < (actions["deny"] + actions["reject"]) / len(rules) < 0.14
    assert actions["deny"] > actions["reject"] > 0
    assert any("priority" in r for r in rules)
    with_egress = [g for g in w["security_groups"] if "egress" in g]
    assert 0 < len(with_egress) < 0.4 * len(w["security_groups"])
    sizes = sorted(len(g["ingress"]) + len(g.get("egress", [])) for g in w["security_groups"])
    assert sizes[-1] > 5 * sizes[len(sizes) // 2]       # skewed sizes
    inst = w["instances"]
    ips = [i["private_ip"] for i in inst]
    assert len(set(ips)) == len(ips)
    assert all(ipaddress.ip_address(a) in ipaddress.ip_network("10.0.0.0/8") for a in ips)
    assert any("public_ip" in i for i in inst) and any("private_ipv6" in i for i in inst)
    assert any(i.get("state") == "stopped" for i in inst)
    assert all(1 <= len(i["groups"]) <= 5 for i in inst)


def test_roles_share_group_lists():
    w = generate_world(3000, 120, 10_000, roles=50, seed=1)
    assert len({tuple(i["groups"]) for i in w["instances"]}) <= 60
    w = generate_world(3000, 50, 10_000, seed=1)        # default: one role per non-shared group
    assert len({tuple(i["groups"]) for i in w["instances"]}) <= 50


def test_world_argument_errors():
    with pytest.raises(ValueError):
        generate_world(10, 0, 10)
    with pytest.raises(ValueError):
        generate_world(10, 5, 10, order="first-match")
    with pytest.raises(ValueError):
        generate_world(10, 5, 10, deny_share=1.5)


# ------------------------------------------------------------------------------------------
# traffic
# ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def world():
    if World is None:
        pytest.skip("fastsg.world is not importable yet")
    return World.from_dict(generate_world(3000, 120, 2000, deny_share=0.1, ipv6_share=0.3,
                                          group_peer_share=0.3, seed=11))


@pytest.fixture(scope="module")
def traffic(world):
    info = {}
    batch = generate_traffic(world, 20_000, seed=5, icmp_share=0.05, fragment_share=0.02,
                             calibrate=False, details=info)
    return batch, info


def test_traffic_shape(traffic):
    b, info = traffic
    assert len(b) == 20_000
    assert (b.status == schema.STATUS_IP).all()
    assert (np.diff(b.ts) >= 0).all()
    assert b.ts[0] >= 1_700_000_000 * 10**9
    assert info["flows"] == 1000
    # ICMP: echo flows and errors quoting a flow, about icmp_share of the packets
    icmp = (b.proto == 1) | (b.proto == 58)
    assert 0.03 < icmp.mean() < 0.07
    echo = icmp & np.isin(b.icmp_type, (0, 8, 128, 129))
    assert echo.any() and (b.icmp_id[echo] == b.sport[echo]).all()
    err = b.emb_valid == 1
    assert err.sum() == info["icmp_errors"] > 0
    assert np.isin(b.icmp_type[err], (1, 3)).all()
    # non-first fragments carry no ports
    fr = b.frag == 1
    assert fr.sum() == 400
    assert (b.sport[fr] == 0).all() and (b.dport[fr] == 0).all()
    assert (b.ipver == 6).any()
    assert ((b.tcp_flags & schema.TCP_SYN) != 0).any() and ((b.tcp_flags & schema.TCP_FIN) != 0).any()
    assert (b.caplen == b.wirelen).all()


def test_traffic_has_replies(traffic):
    b, _ = traffic
    tcp = np.nonzero(b.proto == 6)[0]
    fwd = {(b.src_lo[i], b.dst_lo[i], b.sport[i], b.dport[i]) for i in tcp}
    back = sum((b.dst_lo[i], b.src_lo[i], b.dport[i], b.sport[i]) in fwd for i in tcp)
    assert back > 0.1 * len(tcp)
    synack = (b.tcp_flags == schema.TCP_SYN | schema.TCP_ACK)
    assert synack.any()


def test_errors_quote_an_earlier_flow(traffic):
    b, _ = traffic
    first = {}
    for i in np.nonzero((b.emb_valid == 0) & (b.frag == 0))[0][::-1]:
        first[(b.src_lo[i], b.dst_lo[i], b.sport[i], b.dport[i], b.proto[i])] = b.ts[i]
    for i in np.nonzero(b.emb_valid == 1)[0]:
        key = (b.emb_src_lo[i], b.emb_dst_lo[i], b.emb_sport[i], b.emb_dport[i], b.emb_proto[i])
        assert key in first and first[key] < b.ts[i]
        assert (b.src_lo[i], b.dst_lo[i]) == (b.emb_dst_lo[i], b.emb_src_lo[i])


def test_traffic_deterministic(world):
    a = generate_traffic(world, 3000, seed=9, calibrate=False)
    b = generate_traffic(world, 3000, seed=9, calibrate=False)
    c = generate_traffic(world, 3000, seed=10, calibrate=False)
    for name in schema.FIELD_NAMES:
        assert np.array_equal(a.columns[name], b.columns[name]), name
    assert not np.array_equal(a.src_lo, c.src_lo)


def test_traffic_accepts_a_world_dict():
    w = generate_world(300, 20, 100, seed=2)
    b = generate_traffic(w, 500, seed=1, calibrate=False, flows=40)
    assert len(b) == 500


@pytest.mark.parametrize("share", [0.0, 0.1, 0.5])
def test_predicted_drop_share(world, share):
    info = {}
    generate_traffic(world, 10_000, drop_share=share, seed=3, calibrate=False, details=info)
    assert abs(info["predicted_drop_share"] - share) <= 0.01


def _engine_or_skip(world, stateful=False):
    try:
        from fastsg import Engine
        return Engine(world, stateful=stateful)
    except (ImportError, NotImplementedError) as e:
        pytest.skip(f"Engine cannot classify here: {e}")


@pytest.mark.parametrize("share", [0.05, 0.3])
def test_engine_drop_share_stateless(world, share):
    from fastsg import Verdict
    engine = _engine_or_skip(world)
    info = {}
    b = generate_traffic(world, 20_000, drop_share=share, stateful=False, seed=4, details=info)
    assert info["calibrated"]
    v = engine.classify(b).verdict
    refused = np.isin(v, (Verdict.DROP, Verdict.REJECT)).mean()
    assert abs(refused - share) <= 0.01
    assert not (v == Verdict.UNMANAGED).any()


def test_engine_drop_share_stateful(world):
    from fastsg import Verdict
    engine = _engine_or_skip(world, stateful=True)
    b = generate_traffic(world, 20_000, drop_share=0.2, stateful=True, seed=4)
    v = engine.classify(b).verdict
    assert abs(np.isin(v, (Verdict.DROP, Verdict.REJECT)).mean() - 0.2) <= 0.01


def test_evaluator_agrees_with_engine(world, traffic):
    """The generator's own stateless evaluator and the Engine give the same verdicts."""
    from fastsg import Verdict
    from fastsg.generate import _eval, _tables
    engine = _engine_or_skip(world)
    b, _ = traffic
    mine = _eval(_tables(world), b.ipver, b.src_hi, b.src_lo, b.dst_hi, b.dst_lo, b.proto,
                 b.dport, b.icmp_type, b.icmp_code, b.frag)
    v = engine.classify(b).verdict
    theirs = np.select([v == Verdict.ACCEPT, v == Verdict.UNMANAGED], [1, 2], 0)
    assert np.array_equal(mine, theirs)


# ------------------------------------------------------------------------------------------
# packet bytes
# ------------------------------------------------------------------------------------------

def _odd_rows() -> PacketBatch:
    """An ARP-ish non-IP row, a MALFORMED row and a GRE packet."""
    cols = schema.empty_columns(3)
    cols["status"][:] = [schema.STATUS_NON_IP, schema.STATUS_MALFORMED, schema.STATUS_IP]
    cols["ipver"][2] = 4
    cols["proto"][2] = 47
    cols["src_lo"][:] = 0x0A000001
    cols["dst_lo"][:] = 0x0A000002
    cols["l4_payload_len"][2] = 100
    cols["ts"][:] = 1
    return PacketBatch(cols)


def _scapy_checksums_ok(pkt, wire: bytes) -> bool:
    """Rebuild with scapy after dropping every checksum it can recompute; same bytes = valid.

    The quoted L4 header inside an ICMP error is left alone (it is cut, scapy cannot redo it).
    """
    q = pkt.copy()
    layer = q
    while layer is not None and layer.name != "NoPayload":
        cls = type(layer).__name__
        if not cls.endswith(("TCPerror", "UDPerror", "ICMPerror")):
            for f in ("chksum", "cksum"):
                if f in layer.fields:
                    del layer.fields[f]
        layer = layer.payload if layer.payload.name != "NoPayload" else None
    return bytes(q) == wire


@pytest.mark.parametrize("link", ["ethernet", "raw"])
def test_frames_parse_back_with_scapy(traffic, link):
    from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, TCPerror, UDPerror
    from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, IPerror6
    from scapy.layers.l2 import Ether
    b, _ = traffic
    rng = np.random.default_rng(0)
    rows = np.unique(np.concatenate((rng.choice(len(b), 400, replace=False),
                                     np.nonzero(b.frag == 1)[0][:40], np.nonzero(b.emb_valid == 1)[0][:60],
                                     np.nonzero(b.ipver == 6)[0][:100])))
    sub = b.take(rows)
    buf, off = build_frames(sub, link=link)
    wire = frame_lengths(sub, link=link)
    assert (np.diff(off) <= np.maximum(128, 14 + 40 + 8 + 48)).all()
    if link == "ethernet":
        assert np.array_equal(wire, sub.wirelen)
    for i in range(len(sub)):
        data = bytes(buf[off[i]:off[i + 1]])
        full = data + bytes(int(wire[i]) - len(data))    # the payload is zeros
        pkt = Ether(full) if link == "ethernet" else (IP(full) if full[0] >> 4 == 4 else IPv6(full))
        assert _scapy_checksums_ok(pkt, full), pkt.summary()
        src, dst = sub.address(i, "src"), sub.address(i, "dst")
        proto = int(sub.proto[i])
        if sub.ipver[i] == 4:
            ip = pkt[IP]
            assert (ip.src, ip.dst, ip.proto) == (str(src), str(dst), proto)
            assert (ip.frag > 0) == bool(sub.frag[i])
        else:
            ip = pkt[IPv6]
            assert (ip.src, ip.dst) == (str(src), str(dst))
            if sub.frag[i]:
                fh = pkt[IPv6ExtHdrFragment]
                assert fh.offset > 0 and fh.nh == proto
                continue
            assert ip.nh == proto
        if sub.frag[i]:
            continue
        if proto == 6:
            t = pkt[TCP]
            assert (t.sport, t.dport, int(t.flags), t.seq, t.ack) == (
                sub.sport[i], sub.dport[i], sub.tcp_flags[i], sub.tcp_seq[i], sub.tcp_ack[i])
        elif proto == 17:
            assert (pkt[UDP].sport, pkt[UDP].dport) == (sub.sport[i], sub.dport[i])
        elif proto in (1, 58):
            icmp = pkt[ICMP] if proto == 1 else ip.payload
            assert (icmp.type, icmp.code) == (sub.icmp_type[i], sub.icmp_code[i])
            if sub.emb_valid[i]:
                inner = pkt[IPerror] if proto == 1 else pkt[IPerror6]
                e_src = sub.address(i, "src").__class__(int(sub.emb_src_lo[i]) if proto == 1 else
                                                       (int(sub.emb_src_hi[i]) << 64) | int(sub.emb_src_lo[i]))
                assert inner.src == str(e_src)
                quoted = pkt[TCPerror] if sub.emb_proto[i] == 6 else pkt[UDPerror]
                assert (quoted.sport, quoted.dport) == (sub.emb_sport[i], sub.emb_dport[i])
            elif sub.icmp_type[i] in (0, 8, 128, 129):
                assert icmp.id == sub.icmp_id[i]


def test_odd_rows_and_determinism(traffic):
    from scapy.layers.inet import IP
    from scapy.layers.l2 import ARP, Ether
    odd = _odd_rows()
    buf, off = build_frames(odd)
    arp = Ether(bytes(buf[off[0]:off[1]]))
    assert arp.haslayer(ARP) and arp[ARP].psrc == "10.0.0.1"
    assert off[2] - off[1] == 14 + 12
    gre = Ether(bytes(buf[off[2]:off[3]]))
    assert gre[IP].proto == 47 and gre[IP].len == 120
    with pytest.raises(ValueError):
        build_frames(odd, link="raw")
    b, _ = traffic
    x = build_frames(b.take(slice(0, 2000)))
    y = build_frames(b.take(slice(0, 2000)))
    assert np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1])


@pytest.mark.parametrize("link", ["ethernet", "raw"])
def test_capture_round_trip(traffic, tmp_path, link):
    """write_capture -> the project's reader gives back the same header columns."""
    try:
        from fastsg.capture import read_capture
    except ImportError:
        pytest.skip("fastsg.capture.read_capture is not importable")
    b, _ = traffic
    path = tmp_path / f"gen_{link}.pcap"
    assert write_capture(path, b, link=link) == len(b)
    r = read_capture(path)
    assert len(r) == len(b)
    skip = {"caplen", "linktype", "l3_offset", "rec_offset"} | ({"wirelen"} if link == "raw" else set())
    for name in schema.FIELD_NAMES:
        if name not in skip:
            assert np.array_equal(r.columns[name], b.columns[name]), name
    if link == "raw":
        assert np.array_equal(r.wirelen, b.wirelen - 14)
