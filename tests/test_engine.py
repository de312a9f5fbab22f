"""Engine-level properties: incremental recompiles, atomic swaps, thread and cache
equivalence, table sharing between instances, and the PacketBatch constructors."""
from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastsg import Engine, PacketBatch, Verdict, World
from fastsg.compile.linear import build_linear
from fastsg.generate import generate_traffic, generate_world
from fastsg.schema import STATUS_MALFORMED, STATUS_NON_IP
from fastsg.config import FLOW_CACHE_BITS, GROUPED_MISSES_MIN_BYTES, MISS_GROUP
from fastsg.kernels.classify import (MODE_ADDRESSES, MODE_BOTH, MODE_STATELESS, classify_packets,
                                     groups_misses, tables_nbytes)
from fastsg.kernels.linear import _classify_linear

from naive import naive_classify, packets_from_batch
from strategies import packet_batches, result_tuples, world_dicts


def _world(n_roles=3, instances_per_role=4):
    groups = []
    for r in range(n_roles):
        groups.append({"id": f"sg-{r}", "name": f"role{r}",
                       "ingress": [{"protocol": "tcp", "ports": 80 + r, "cidr": "0.0.0.0/0"},
                                   {"protocol": "tcp", "ports": 22, "group": f"sg-{(r + 1) % n_roles}"}]})
    instances = []
    k = 1
    for r in range(n_roles):
        for j in range(instances_per_role):
            instances.append({"id": f"i-{r}-{j}", "private_ip": f"10.0.{r}.{j + 1}", "groups": [f"sg-{r}"]})
            k += 1
    return World.from_dict({"version": 1, "region": "r1", "security_groups": groups, "instances": instances})


def _tuples(engine, batch):
    return result_tuples(engine.classify(batch))


def test_instances_sharing_a_group_list_share_one_policy():
    w = World.from_dict(generate_world(2000, 50, 10_000, seed=3, roles=50))
    engine = Engine(w, stateful=False)
    distinct = {(tuple(i.groups), w.instance_order(i)) for i in w.instances.values() if i.running}
    assert engine.compiled.policies == len(distinct)
    assert engine.compiled.policies <= 60


def test_rule_change_recompiles_only_policies_holding_the_group():
    w = _world()
    engine = Engine(w, stateful=False)
    before = engine._compiler.policies_compiled
    w.authorize("sg-1", "ingress", {"protocol": "udp", "ports": 53, "cidr": "10.0.0.0/8"})
    engine.refresh()
    assert engine._compiler.policies_compiled - before == 1


def test_launch_and_terminate_recompile_nothing_when_the_group_list_exists():
    w = _world()
    engine = Engine(w, stateful=False)
    before = engine._compiler.policies_compiled
    w.launch({"id": "i-new", "private_ip": "10.0.9.9", "groups": ["sg-0"]})
    engine.refresh()
    w.terminate("i-0-0")
    engine.refresh()
    assert engine._compiler.policies_compiled == before


def test_attach_compiles_only_the_new_group_list():
    w = _world()
    engine = Engine(w, stateful=False)
    before = engine._compiler.policies_compiled
    w.attach("i-0-0", "sg-2")
    engine.refresh()
    assert engine._compiler.policies_compiled - before == 1


def test_mutation_visible_to_the_next_classify():
    w = _world()
    engine = Engine(w, stateful=False)
    batch = PacketBatch.from_arrays(src=["192.0.2.1"], dst=["10.0.0.1"], proto=[17], dport=[53])
    assert engine.classify(batch).row(0)[0] == "DROP"
    rule = w.authorize("sg-0", "ingress", {"protocol": "udp", "ports": 53, "cidr": "192.0.2.0/24"})
    assert engine.classify(batch).row(0) == ("ACCEPT", None, rule.id)
    w.revoke("sg-0", "ingress", rule_id=rule.id)
    assert engine.classify(batch).row(0)[0] == "DROP"


def test_classify_during_mutations_sees_old_or_new_world_never_a_mix():
    """Authorize/revoke flip-flop in one thread while another classifies: every batch is
    entirely the verdicts of one of the two worlds."""
    w = _world(n_roles=4, instances_per_role=8)
    engine = Engine(w, stateful=False, threads=2)
    dsts = [f"10.0.{r}.{j + 1}" for r in range(4) for j in range(8)] * 500
    batch = PacketBatch.from_arrays(src=["198.51.100.1"] * len(dsts), dst=dsts, proto=[6] * len(dsts),
                                    dport=[443] * len(dsts))
    rule = {"protocol": "tcp", "ports": 443, "cidr": "198.51.100.0/24"}
    stop = threading.Event()

    def flip():
        while not stop.is_set():
            for g in ("sg-0", "sg-1", "sg-2", "sg-3"):
                w.authorize(g, "ingress", rule)
            for g in ("sg-0", "sg-1", "sg-2", "sg-3"):
                w.revoke(g, "ingress", rule=rule)

    t = threading.Thread(target=flip)
    t.start()
    try:
        seen = set()
        for _ in range(40):
            res = engine.classify(batch)
            accepted = res.verdict == Verdict.ACCEPT
            # one snapshot per batch: per role, all of its instances agree
            per_role = accepted.reshape(500, 4, 8)
            assert (per_role == per_role[0]).all()
            assert (per_role[0] == per_role[0][:, :1]).all()
            seen.add(tuple(per_role[0][:, 0]))
    finally:
        stop.set()
        t.join()


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_flow_cache_and_threads_change_nothing(data):
    world = World.from_dict(data.draw(world_dicts()))
    batch = data.draw(packet_batches(world, n_min=0, n_max=60))
    # repeat the packets so the flow cache is hit
    batch = PacketBatch.concat([batch, batch, batch])
    expected = [r.as_tuple() for r in naive_classify(world, packets_from_batch(batch))]
    for kwargs in ({"flow_cache": False, "threads": 1}, {"flow_cache": True, "threads": 1},
                   {"flow_cache": True, "threads": 2}):
        assert _tuples(Engine(world, stateful=False, **kwargs), batch) == expected, kwargs


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_flow_cache_of_any_size_changes_nothing(data):
    # tiny caches make IPv4 keys share a set (both ways, evictions) and IPv6 keys share an
    # entry; every kernel mode that uses the cache must give what the uncached kernel gives
    world = World.from_dict(data.draw(world_dicts()))
    batch = data.draw(packet_batches(world, n_min=1, n_max=40))
    order = data.draw(st.lists(st.integers(0, len(batch) - 1), min_size=1, max_size=150))
    batch = PacketBatch({k: v[np.array(order)] for k, v in batch.columns.items()})
    t = Engine(world, stateful=False).compiled.kernel
    cols = batch.kernel_columns()
    n = len(batch)
    # grouped misses too: tiny caches evict entries whose first packet is still queued
    for mode in (MODE_STATELESS, MODE_BOTH, MODE_ADDRESSES):
        outs = {}
        for bits in (0, 1, 2, 3, 12):
            for grouped in (False, True):
                out = [np.empty(n, np.uint8)] + [np.empty(n, np.int32) for _ in range(4)]
                classify_packets(t, cols, bits, 1, mode, *out, grouped)
                outs[bits, grouped] = out
        for key, out in outs.items():
            for a, b, name in zip(outs[0, False], out, OUTPUT_NAMES):
                if mode != MODE_ADDRESSES or name in ("src_val", "dst_val"):
                    assert (a == b).all(), (mode, key, name)


OUTPUT_NAMES = ("verdict", "egress_rule", "ingress_rule", "src_val", "dst_val")


def _kernel_outputs(t, batch, bits, grouped, mode=MODE_STATELESS):
    n = len(batch)
    out = [np.empty(n, np.uint8)] + [np.empty(n, np.int32) for _ in range(4)]
    classify_packets(t, batch.kernel_columns(), bits, 1, mode, *out, grouped)
    return out


@pytest.mark.filterwarnings("ignore:generate_traffic")    # the drop share is not the point here
@pytest.mark.parametrize("flows", [0, 1, MISS_GROUP - 1, MISS_GROUP, MISS_GROUP + 1,
                                   4 * MISS_GROUP + 1, 9 * MISS_GROUP + 5])
@pytest.mark.parametrize("repeat", [1, 3, 4 * MISS_GROUP + 2])
def test_grouped_misses_at_group_edges(flows, repeat):
    """Grouped misses (the big-table path, forced here) give what one packet at a time
    gives: distinct flows around the group size (a last partial group, a full one, one
    more), each repeated so that its later packets wait for the queued first one, up to
    more waiters than the wait list holds; IPv4, IPv6 and non-IP packets mixed."""
    w = World.from_dict(generate_world(300, 12, 40, deny_share=0.2, seed=3))
    base = generate_traffic(w, max(flows, 1) * 3, stateful=False, seed=4)
    rng = np.random.default_rng(flows * 1000 + repeat)
    distinct = np.unique(np.asarray(base.columns["src_lo"]) * 7 + np.asarray(base.columns["dport"]),
                         return_index=True)[1][:flows]
    index = np.repeat(rng.permutation(distinct), repeat)
    batch = base.take(index)
    if len(batch):
        status = np.asarray(batch.columns["status"]).copy()
        status[::7] = STATUS_NON_IP
        status[3::11] = STATUS_MALFORMED
        batch = PacketBatch({**batch.columns, "status": status})
    t = Engine(w, stateful=False).compiled.kernel
    for mode in (MODE_STATELESS, MODE_BOTH):
        for bits in (12, 1):
            expect = _kernel_outputs(t, batch, bits, False, mode)
            got = _kernel_outputs(t, batch, bits, True, mode)
            for a, b, name in zip(expect, got, OUTPUT_NAMES):
                assert (a == b).all(), (mode, bits, name)
    res = Engine(w, stateful=False).classify(batch)
    assert result_tuples(res) == [r.as_tuple() for r in naive_classify(w, packets_from_batch(batch))]


def test_grouped_misses_only_for_big_tables_with_the_cache():
    small = Engine(_world(), stateful=False).compiled.kernel
    assert not groups_misses(small, FLOW_CACHE_BITS)
    assert tables_nbytes(small) < GROUPED_MISSES_MIN_BYTES
    big = small._replace(i32=np.zeros(GROUPED_MISSES_MIN_BYTES // 4, np.int32))
    assert groups_misses(big, FLOW_CACHE_BITS)
    assert not groups_misses(big, 0)


def _assert_linear_decides_like(engine, batch):
    """The linear baseline (both scan modes) gives the engine's verdicts and rules."""
    res = engine.classify(batch)
    tables = build_linear(engine._compiler)
    for scan_all in (False, True):
        v = np.empty(len(batch), np.uint8)
        e = np.empty(len(batch), np.int32)
        i = np.empty(len(batch), np.int32)
        _classify_linear(engine.compiled.kernel, tables, batch.kernel_columns(), scan_all, v, e, i)
        assert (v == res.verdict).all() and (e == res.egress_rule).all() and (i == res.ingress_rule).all()


def test_linear_baseline_decides_like_the_engine():
    w = World.from_dict(generate_world(500, 20, 100, deny_share=0.2, seed=5))
    engine = Engine(w, stateful=False)
    batch = generate_traffic(w, 5000, stateful=False, seed=6)
    _assert_linear_decides_like(engine, batch)


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_linear_baseline_decides_like_the_engine_on_random_worlds(data):
    # random worlds hold every rule shape the spec allows (ICMP codes of any type included)
    world = World.from_dict(data.draw(world_dicts()))
    batch = data.draw(packet_batches(world, n_min=1, n_max=60))
    engine = Engine(world, stateful=False)
    _assert_linear_decides_like(engine, batch)


def test_engine_is_stateful_by_default():
    engine = Engine(_world())
    assert engine.stateful and engine.tracker is not None
    assert Engine(_world(), stateful=False).tracker is None


def test_classify_rejects_non_batches():
    with pytest.raises(TypeError):
        Engine(_world()).classify([1, 2, 3])


def test_result_counts_add_up():
    w = _world()
    batch = PacketBatch.from_arrays(src=["10.0.0.1", "1.2.3.4", "1.2.3.4"], dst=["10.0.1.1", "10.0.0.2", "5.6.7.8"],
                                    proto=[6, 6, 6], dport=[22, 80, 80])
    res = Engine(w, stateful=False).classify(batch)
    counts = res.counts()
    assert sum(counts.values()) == len(batch)
    assert counts["UNMANAGED"] == 1
    assert res.verdict.dtype == np.uint8
    assert res.egress_rule.dtype == np.int32 and res.ingress_rule.dtype == np.int32
    assert res.rule_names[:4] == ("default", "conntrack", "conntrack-related", "conntrack-full")


def test_from_arrays_accepts_uint32_and_strings():
    a = PacketBatch.from_arrays(src=np.array([0x0A000001], np.uint32), dst=np.array([0x0A000002], np.uint32),
                                proto=[6], dport=[80])
    b = PacketBatch.from_arrays(src=["10.0.0.1"], dst=["10.0.0.2"], proto=[6], dport=[80])
    for name in a.columns:
        assert (a.columns[name] == b.columns[name]).all(), name
    assert str(b.address(0, "dst")) == "10.0.0.2"


def test_from_arrays_rejects_mixed_versions_and_bad_lengths():
    with pytest.raises(ValueError, match="different IP versions"):
        PacketBatch.from_arrays(src=["10.0.0.1"], dst=["2001:db8::1"], proto=[6])
    with pytest.raises(ValueError, match="entries"):
        PacketBatch.from_arrays(src=["10.0.0.1"], dst=["10.0.0.2"], proto=[6, 6])
    with pytest.raises(ValueError, match="out of range"):
        PacketBatch.from_arrays(src=["10.0.0.1"], dst=["10.0.0.2"], proto=[6], dport=[70000])


def test_from_scapy_reads_headers_and_marks_non_ip():
    from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, UDPerror
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import ARP, Dot1Q, Ether

    pkts = [Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1234, dport=80, flags="S", seq=7),
            IP(src="10.0.0.1", dst="10.0.0.2", frag=10, proto=17) / (b"x" * 8),
            Ether() / Dot1Q(vlan=5) / IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP(sport=5, dport=53),
            Ether() / ARP(),
            IP(src="10.0.0.2", dst="10.0.0.1") / ICMP(type=3, code=3) / IPerror(src="10.0.0.1", dst="10.0.0.2")
            / UDPerror(sport=40000, dport=53),
            IP(src="10.0.0.1", dst="10.0.0.2") / ICMP(type=8, id=77)]
    for i, p in enumerate(pkts):
        p.time = 1700000000 + i
    b = PacketBatch.from_scapy(pkts)
    assert list(b.status) == [0, 0, 0, 1, 0, 0]
    assert (b.proto[0], b.dport[0], b.sport[0], b.tcp_flags[0], b.tcp_seq[0]) == (6, 80, 1234, 2, 7)
    assert b.frag[1] == 1 and b.dport[1] == 0
    assert b.ipver[2] == 6 and b.dport[2] == 53 and str(b.address(2, "src")) == "2001:db8::1"
    assert b.emb_valid[4] == 1 and b.emb_proto[4] == 17 and b.emb_dport[4] == 53 and b.emb_sport[4] == 40000
    assert b.icmp_id[5] == 77 and b.sport[5] == 77 and b.dport[5] == 77
    assert b.ts[3] == (1700000000 + 3) * 10**9
    res = Engine(_world(), stateful=False).classify(b)
    assert Verdict(int(res.verdict[3])) is Verdict.UNMANAGED


def test_both_port_key_forms_agree_on_every_protocol_and_edge():
    # the stateless kernel's branch-free form and the walk's branchy one
    from numba import njit as plain_njit
    from fastsg.kernels.lookup import port_key, port_key_select

    @plain_njit
    def both(proto, dport, itype, icode, frag):
        return port_key(proto, dport, itype, icode, frag), port_key_select(proto, dport, itype, icode, frag)

    for proto in range(256):
        for dport, itype, icode in ((0, 0, 0), (1, 3, 13), (65535, 255, 255), (443, 8, 0)):
            for frag in (0, 1):
                a, b = both(np.uint8(proto), np.uint16(dport), np.uint8(itype), np.uint8(icode),
                            np.uint8(frag))
                assert a == b, (proto, dport, itype, icode, frag)
