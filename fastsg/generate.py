"""Seeded synthetic worlds and traffic, for tests, ``bench/`` and ``fastsg generate``/``bench``.

Two entry points, both pure functions of their arguments (same seed -> identical output):

* ``generate_world(rules, groups, instances, ...) -> dict``: a world in the file syntax of
  SEMANTICS.md section 1 (what ``World.from_dict`` loads).  Groups have lognormal rule counts
  and a role kind (web, db, cache, dns, bastion ... plus a few shared groups such as base or
  monitoring-agent) that biases their service ports; CIDRs come from nested pools (0.0.0.0/0,
  10.0.0.0/8, VPC /16s, role /24s, instance /32s, reused external /32 "offices", IPv6 /0../128);
  instances get the group list of their role, so a world of N roles has about N distinct group
  lists.  Private IPv4s are unique in 10.0.0.0/8 (one /16-aligned "VPC" per owner x region,
  consecutive /24s per role, hosts .4-.254); IPv6 in 2600:1f18::/32 for dual-stack roles;
  public IPv4s in 54.64.0.0/10.
* ``generate_traffic(world, packets, ...) -> PacketBatch``: ClassBench-style traffic for that
  world: a set of flows with Pareto sizes, packets interleaved in time, replies (TCP handshake,
  data, FIN/RST), ICMP echo flows, ICMP errors quoting an earlier flow (``emb_*``), non-first
  fragments, and a chosen share of refused packets.

What ``rules`` counts in ``generate_world``: every rule entry written in the file, ingress
plus *explicit* egress lists.  The two default egress rules of a group whose ``egress`` is
omitted are not counted (they are not in the file).

How the refused share is reached (``drop_share``; "refused" = verdict DROP or REJECT):

1. *By construction.*  Every flow is drawn as a candidate and judged by a small stateless
   rule evaluator (``_evaluate``: spec sections 2-3 incl. egress checks, group peers by region,
   deny/reject, the three combining orders, fragments).  Admitted candidates are built from
   allow rules (the peer inside the rule's CIDR or a running member of the referenced group,
   the destination port inside its range) or are instance -> internet calls; refused ones are
   internet scans, east-west probes of unopened ports and blocked outbound attempts.  A
   candidate is kept only when the evaluator gives the outcome wanted.  Whole flows (Pareto
   sizes) get the refused role until their packets reach the target.
2. *Predicted rebalance.*  The refused packets are predicted per flow (``stateful=True``: the
   first packet decides the flow and replies ride on tracking; ``False``: each direction by
   its own rules; non-first fragments and ICMP errors by their own keys, and their parents are
   chosen so that about ``drop_share`` of them are refused).  Whole unpinned flows are then
   re-keyed to copies of flows of the other outcome (fresh source port: rules never look at
   it, so the copy's verdict is the original's) until within ``tolerance``.
3. *Engine calibration* (when ``fastsg.Engine`` can classify in the wanted mode and
   ``calibrate`` is not False): the batch is classified by the real Engine (fresh tracking
   state), flows re-keyed as in step 2 from the measured per-flow drops, at most 5 rounds.
   ``details["engine_drop_share"]`` reports what the Engine saw; a warning is issued when the
   result is more than 1 percentage point off (the world lacks flows of the needed outcome).
"""
from __future__ import annotations

import gc
import warnings
from dataclasses import dataclass

import numpy as np

from . import schema
from .batch import PacketBatch
from .config import njit

# ------------------------------------------------------------------------------------------
# constants shared by the world and traffic generators
# ------------------------------------------------------------------------------------------

REGIONS = ("us-east-1", "us-west-2", "eu-west-1", "eu-central-1", "ap-southeast-2",
           "ap-northeast-1", "sa-east-1", "ca-central-1")
ORDERS = ("allow,deny", "deny,allow", "priority")
GROUPS_PER_INSTANCE = 5          # the limit written into generated worlds

# (kind, tcp service ports, udp service ports, internet facing)
ROLE_KINDS = (
    ("web", (80, 443), (), True),
    ("api", (443, 8080, 8443), (), True),
    ("app", (8080, 8000, 9000), (), False),
    ("db", (5432, 3306), (), False),
    ("cache", (6379, 11211), (), False),
    ("search", (9200, 9300), (), False),
    ("queue", (5672, 9092, 2181), (), False),
    ("dns", (53,), (53,), True),
    ("ntp", (), (123,), False),
    ("bastion", (22,), (), True),
    ("k8s", (6443, 10250), (8472,), False),
    ("monitoring", (9090, 3000, 9093), (), False),
    ("mail", (25, 587, 993), (), True),
    ("ldap", (389, 636), (), False),
    ("vpn", (443,), (1194, 500, 4500), True),
    ("nfs", (2049, 111), (2049, 111), False),
)
SHARED_KINDS = (
    ("base", (22,), (), False),
    ("monitoring-agent", (9100, 9256), (), False),
    ("default", (), (), False),
    ("ssh-admin", (22, 3389), (), False),
)
COMMON_TCP = np.array([22, 80, 443, 3306, 5432, 6379, 8080, 9200, 8443, 3389, 27017, 5601,
                       9090, 25, 8000, 2049, 5672, 9092, 11211, 6443])
COMMON_TCP_W = 1.0 / np.arange(1, len(COMMON_TCP) + 1) ** 0.8
COMMON_UDP = np.array([53, 123, 161, 514, 1194, 500, 4500, 4789, 5353, 2049, 8472, 51820])
COMMON_UDP_W = 1.0 / np.arange(1, len(COMMON_UDP) + 1) ** 0.8
TCP_RANGES = np.array([(1024, 65535), (0, 65535), (8000, 8099), (30000, 32767), (6000, 6063),
                       (9000, 9999), (49152, 65535), (3000, 3010)])
TCP_RANGES_W = np.array([0.3, 0.12, 0.15, 0.1, 0.05, 0.1, 0.1, 0.08])
UDP_RANGES = np.array([(1024, 65535), (0, 65535), (60000, 61000), (33434, 33534)])
UDP_RANGES_W = np.array([0.4, 0.2, 0.2, 0.2])
OTHER_PROTOCOLS = np.array([47, 50, 89, 112, 132])    # GRE, ESP, OSPF, VRRP, SCTP (not AH: an IPv6 extension header)
# ports scanners and misconfigured clients hit; refused flows draw from these
SCAN_TCP = np.array([23, 445, 3389, 1433, 5900, 135, 139, 21, 25, 110, 8888, 27017, 11211,
                     6379, 9200, 2375, 5984, 1521, 7001, 8081, 4444, 5555])
SCAN_UDP = np.array([161, 1900, 5060, 69, 137, 11211, 19, 1434])
# first octets of "internet" IPv4 addresses (no private, loopback, multicast, our 54/8 pool)
PUBLIC_OCTETS = np.array([o for o in range(1, 224) if o not in (10, 54, 100, 127, 169, 172, 192, 198)])
V6_INSTANCE_PREFIX = 0x26001F18          # 2600:1f18::/32, where instance IPv6 addresses live
V6_EXTERNAL_PREFIX = 0x20010DB8          # 2001:db8::/32 for external IPv6 peers
EPHEMERAL_LO, EPHEMERAL_HI = 32768, 60999   # Linux ephemeral port range
HOSTS_PER_SUBNET = 251                    # .4 .. .254 (AWS reserves .0-.3 and .255)
M64 = (1 << 64) - 1


# ------------------------------------------------------------------------------------------
# small helpers
# ------------------------------------------------------------------------------------------

def _allocate(rng: np.random.Generator, total: int, weights: np.ndarray, at_least_one: bool = True) -> np.ndarray:
    """Split ``total`` into ``len(weights)`` integer parts (int64) proportional to ``weights``.

    Multinomial, so the parts sum to ``total`` exactly; each part is >= 1 when ``at_least_one``
    and ``total >= len(weights)``.
    """
    n = len(weights)
    if n == 0:
        return np.zeros(0, np.int64)
    p = np.asarray(weights, np.float64)
    p = p / p.sum()
    if at_least_one and total >= n:
        return 1 + rng.multinomial(total - n, p).astype(np.int64)
    return rng.multinomial(total, p).astype(np.int64)


def _hex_ids(prefix: str, n: int, salt: int) -> list[str]:
    """``n`` distinct AWS-looking ids (``sg-0`` + 16 hex digits).

    A bijective 64-bit mix (add, odd multiply, xorshift) of the index, so ids are unique
    without any bookkeeping and differ between seeds through ``salt``.
    """
    x = np.arange(n, dtype=np.uint64) + np.uint64(salt & M64)
    x = x * np.uint64(0x9E3779B97F4A7C15)
    x ^= x >> np.uint64(29)
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(32)
    return [f"{prefix}-0{v:016x}" for v in x.tolist()]


def _v4_strings(addr: np.ndarray, prefix: np.ndarray | None = None) -> list[str]:
    """uint32-valued int64 array -> dotted quads (with ``/prefix`` when given)."""
    a = addr.astype(np.int64).tolist()
    if prefix is None:
        return [f"{x >> 24}.{(x >> 16) & 255}.{(x >> 8) & 255}.{x & 255}" for x in a]
    return [f"{x >> 24}.{(x >> 16) & 255}.{(x >> 8) & 255}.{x & 255}/{p}"
            for x, p in zip(a, prefix.tolist())]


def _v4_mask(prefix: np.ndarray) -> np.ndarray:
    """Prefix lengths -> IPv4 netmasks as int64."""
    p = np.asarray(prefix, np.int64)
    return np.where(p == 0, 0, (0xFFFFFFFF << (32 - p)) & 0xFFFFFFFF)


def _random_public_v4(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` random "internet" IPv4 addresses (int64), never private, multicast or ours."""
    first = rng.choice(PUBLIC_OCTETS, n)
    return (first.astype(np.int64) << 24) | rng.integers(0, 1 << 24, n, dtype=np.int64)


def _account_id(a: int) -> str:
    return f"{(a + 1) * 111111111111:012d}" if a < 9 else f"{200000000000 + a:012d}"


def _region_name(r: int) -> str:
    return REGIONS[r] if r < len(REGIONS) else f"xx-region-{r}"


# ------------------------------------------------------------------------------------------
# generate_world
# ------------------------------------------------------------------------------------------

@dataclass
class _Plan:
    """Everything about a world except its rules: buckets (account x region), groups, roles
    and instances, as numpy arrays indexed by group / role / instance."""
    n_buckets: int
    regions: int
    g_bucket: np.ndarray            # int64[G] bucket of each group (groups sorted by bucket)
    g_kind: np.ndarray              # int64[G] index into KINDS (shared kinds first)
    g_name: list
    g_id: list
    b_gstart: np.ndarray            # int64[nb+1] groups of bucket b: g_bstart[b]:g_bstart[b+1]
    role_bucket: np.ndarray         # int64[roles]
    role_groups: list               # list[list[int]] group list of each role
    role_kind: list                 # role name prefix
    role_v6: np.ndarray             # bool[roles] dual-stack role
    role_subnet: np.ndarray         # int64[roles] first /24 index (within 10/8) of the role
    b_subnet0: np.ndarray           # int64[nb] first /24 index of each bucket (a /16 boundary)
    i_role: np.ndarray              # int64[I]
    i_ip: np.ndarray                # int64[I] private IPv4
    i_v6: list                      # list[str | None]
    i_pub: list                     # list[str | None]
    i_stopped: np.ndarray           # bool[I]
    i_id: list
    i_name: list


KINDS = SHARED_KINDS + ROLE_KINDS
N_SHARED_KINDS = len(SHARED_KINDS)


def generate_world(rules: int, groups: int, instances: int, *, deny_share: float = 0.0,
                   group_peer_share: float = 0.2, ipv6_share: float = 0.1, seed: int = 0,
                   accounts: int = 3, order: str = "allow,deny", regions: int = 1,
                   roles: int | None = None, egress_share: float = 0.15,
                   stopped_share: float = 0.01) -> dict:
    """A realistic world dict in the file syntax of SEMANTICS.md section 1.

    ``rules`` entries in all (ingress + explicit egress lists; omitted egress = the default
    rules, not counted) spread over ``groups`` security groups with lognormal sizes;
    ``instances`` instances in ``roles`` role combinations (default: one per non-shared
    group), each role with 1-5 groups, so instances of a role share one group list.
    ``deny_share`` of the rules are deny (80%) or reject (20%); ``group_peer_share`` use a
    group as peer (some of them another account's, ``owner/sg-id``); ``ipv6_share`` of the
    CIDR peers are IPv6.  Groups and instances are spread over ``accounts`` x ``regions``
    (owner, region) buckets; group references never cross regions.  Same arguments -> same dict.
    """
    _check_world_args(rules, groups, instances, deny_share, group_peer_share, ipv6_share,
                      accounts, order, regions, roles)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5EC6]))
    # building ~10^5 small dicts: the cyclic GC would rescan them over and over (no cycles here)
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        plan = _plan_world(rng, groups, instances, accounts, regions, roles, ipv6_share,
                           stopped_share)
        sizes, n_in = _rule_sizes(rng, rules, groups, egress_share)
        rule_dicts = _draw_rules(rng, plan, sizes, n_in, deny_share, group_peer_share, ipv6_share)
        return _assemble(plan, sizes, n_in, rule_dicts, order, regions)
    finally:
        if gc_was_on:
            gc.enable()


def _check_world_args(rules, groups, instances, deny_share, group_peer_share, ipv6_share,
                      accounts, order, regions, roles):
    if groups < 1:
        raise ValueError("generate_world: groups must be >= 1")
    if rules < 0 or instances < 0:
        raise ValueError("generate_world: rules and instances must be >= 0")
    for name, v in (("deny_share", deny_share), ("group_peer_share", group_peer_share),
                    ("ipv6_share", ipv6_share)):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"generate_world: {name}={v} is not in [0, 1]")
    if accounts < 1 or regions < 1:
        raise ValueError("generate_world: accounts and regions must be >= 1")
    if order not in ORDERS:
        raise ValueError(f"generate_world: order {order!r} is not one of {ORDERS}")
    if roles is not None and roles < 1:
        raise ValueError("generate_world: roles must be >= 1")


def _plan_world(rng, n_groups, n_inst, accounts, regions, roles, ipv6_share, stopped_share) -> _Plan:
    """Buckets, groups, roles and instances (addresses included); see ``_Plan``."""
    nb = accounts * regions
    # bucket b = account * regions + region; the first account holds most groups
    bw = np.array([1.0 / (b // regions + 1) / (b % regions + 1) for b in range(nb)])
    g_bucket = np.empty(n_groups, np.int64)
    k = min(n_groups, nb)
    g_bucket[:k] = np.arange(k)
    g_bucket[k:] = rng.choice(nb, n_groups - k, p=bw / bw.sum())
    g_bucket.sort()
    b_gstart = np.searchsorted(g_bucket, np.arange(nb + 1))
    g_kind = np.empty(n_groups, np.int64)
    g_name = [""] * n_groups
    role_groups_by_bucket = []
    shared_by_bucket = []
    for b in range(nb):
        gs = np.arange(b_gstart[b], b_gstart[b + 1])
        n_shared = int(min(round(0.15 * len(gs)), max(len(gs) - 1, 0)))
        shared, role_gs = gs[:n_shared], gs[n_shared:]
        g_kind[shared] = np.arange(n_shared) % N_SHARED_KINDS
        off = int(rng.integers(len(ROLE_KINDS)))
        g_kind[role_gs] = N_SHARED_KINDS + (np.arange(len(role_gs)) + off) % len(ROLE_KINDS)
        for j, g in enumerate(gs.tolist()):
            g_name[g] = f"{KINDS[g_kind[g]][0]}-{j}"
        role_groups_by_bucket.append(role_gs.tolist())
        shared_by_bucket.append(shared.tolist())
    g_id = _hex_ids("sg", n_groups, int(rng.integers(1 << 62)))

    role_bucket, role_groups = _plan_roles(rng, roles, role_groups_by_bucket, shared_by_bucket)
    n_roles = len(role_bucket)
    role_kind = [KINDS[g_kind[gl[0]]][0] for gl in role_groups]
    role_v6 = rng.random(n_roles) < min(1.0, 2.0 * ipv6_share)
    per_role = _allocate(rng, n_inst, rng.lognormal(0.0, 1.0, n_roles))
    # instances sorted by role, roles by bucket: addresses are laid out subnet by subnet
    i_role = np.repeat(np.arange(n_roles), per_role)
    role_subnet, b_subnet0 = _plan_subnets(role_bucket, per_role, nb)
    first = np.concatenate(([0], np.cumsum(per_role)))
    k_in_role = np.arange(n_inst) - first[i_role]
    subnet = role_subnet[i_role] + k_in_role // HOSTS_PER_SUBNET
    host = 4 + k_in_role % HOSTS_PER_SUBNET
    i_ip = (10 << 24) | (subnet << 8) | host
    i_bucket = role_bucket[i_role]
    local = subnet - b_subnet0[i_bucket]
    has_v6 = role_v6[i_role]
    i_v6 = [f"2600:1f18:{b:x}:{s:x}::{h:x}" if v else None
            for b, s, h, v in zip(i_bucket.tolist(), local.tolist(), host.tolist(), has_v6.tolist())]
    facing = np.array([KINDS[g_kind[gl[0]]][3] for gl in role_groups], bool)
    pub = rng.random(n_inst) < np.where(facing[i_role], 0.7, 0.05)
    pub_addr = (54 << 24) | (64 << 16) | (np.cumsum(pub) + 1)     # unique within 54.64.0.0/10
    if pub.sum() > (1 << 22) - 2:
        raise ValueError("generate_world: too many public addresses for 54.64.0.0/10")
    pub_s = _v4_strings(pub_addr)
    i_pub = [s if p else None for s, p in zip(pub_s, pub.tolist())]
    i_stopped = rng.random(n_inst) < stopped_share
    i_id = _hex_ids("i", n_inst, int(rng.integers(1 << 62)))
    i_name = [f"{role_kind[r]}-{k}" for r, k in zip(i_role.tolist(), k_in_role.tolist())]
    return _Plan(nb, regions, g_bucket, g_kind, g_name, g_id, b_gstart, role_bucket, role_groups,
                 role_kind, role_v6, role_subnet, b_subnet0, i_role, i_ip, i_v6, i_pub,
                 i_stopped, i_id, i_name)


def _plan_roles(rng, roles, role_groups_by_bucket, shared_by_bucket):
    """Role combinations: per bucket, role j takes role group j (and j+R, j+2R while fewer roles
    than role groups, so most groups get members), sometimes one more role group, and 0-3 of
    the bucket's shared groups; at most GROUPS_PER_INSTANCE groups.

    Returns (role_bucket int64[roles], role_groups list of group index lists).
    """
    nb = len(role_groups_by_bucket)
    counts = np.array([len(x) for x in role_groups_by_bucket], np.int64)
    if roles is None:
        per_bucket = counts
    else:
        per_bucket = np.floor(roles * counts / counts.sum()).astype(np.int64)
        rest = roles - per_bucket.sum()
        frac = roles * counts / counts.sum() - per_bucket
        for b in np.argsort(-frac, kind="stable")[:rest]:
            per_bucket[b] += 1
    role_bucket, role_groups = [], []
    for b in range(nb):
        rg, sh, nr = role_groups_by_bucket[b], shared_by_bucket[b], int(per_bucket[b])
        for j in range(nr):
            gl = [rg[j % len(rg)]]
            k = j + nr
            while k < len(rg) and len(gl) < 3:
                gl.append(rg[k])
                k += nr
            if len(rg) > 1 and rng.random() < 0.15:
                extra = rg[int(rng.integers(len(rg)))]
                if extra not in gl:
                    gl.append(extra)
            n_sh = min(len(sh), int(rng.choice(4, p=[0.2, 0.4, 0.3, 0.1])), GROUPS_PER_INSTANCE - len(gl))
            if n_sh > 0:
                gl.extend(int(x) for x in rng.choice(sh, n_sh, replace=False))
            role_bucket.append(b)
            role_groups.append(gl)
    return np.array(role_bucket, np.int64), role_groups


def _plan_subnets(role_bucket, per_role, nb):
    """Give each role consecutive /24s (HOSTS_PER_SUBNET hosts each) inside 10.0.0.0/8; each
    bucket (a "VPC") starts on a /16 boundary from 10.1.0.0.

    Returns (role_subnet int64[roles], b_subnet0 int64[nb]): /24 indices (``10.0.0.0 + i*256``).
    """
    need = -(-per_role // HOSTS_PER_SUBNET)
    need = np.maximum(need, 1)       # a role without instances still owns a subnet for its rules
    role_subnet = np.zeros(len(role_bucket), np.int64)
    b_subnet0 = np.zeros(nb, np.int64)
    cur = 256
    for b in range(nb):
        cur = -(-cur // 256) * 256
        b_subnet0[b] = cur
        for r in np.nonzero(role_bucket == b)[0]:
            role_subnet[r] = cur
            cur += need[r]
    if cur > 1 << 16:
        raise ValueError("generate_world: too many instances for 10.0.0.0/8")
    return role_subnet, b_subnet0


def _rule_sizes(rng, rules, groups, egress_share):
    """Rules per group (lognormal, sum exactly ``rules``) and how many of them are ingress.

    Returns (sizes int64[G], n_in int64[G], explicit egress bool[G] implied by n_in < sizes).
    """
    sizes = _allocate(rng, rules, rng.lognormal(0.0, 1.1, groups))
    explicit = (rng.random(groups) < egress_share) & (sizes >= 2)
    eg = np.where(explicit, np.maximum(1, np.round(sizes * rng.uniform(0.2, 0.5, groups))), 0)
    eg = np.clip(eg, 0, np.maximum(sizes - 1, 0)).astype(np.int64)
    return sizes, sizes - eg


def _draw_rules(rng, plan: _Plan, sizes, n_in, deny_share, group_peer_share, ipv6_share) -> list:
    """All rules as file-syntax dicts, group after group, ingress then egress (list of dict)."""
    n = int(sizes.sum())
    if n == 0:
        return []
    rg = np.repeat(np.arange(len(sizes)), sizes)
    # action: 0 allow, 1 deny, 2 reject
    act = np.where(rng.random(n) < deny_share, np.where(rng.random(n) < 0.8, 1, 2), 0)
    proto, plo, phi, ity, ico = _draw_matches(rng, plan, rg, act)
    peer = _draw_peers(rng, plan, rg, act, proto, plo, group_peer_share, ipv6_share)
    # an ICMP rule with an IPv6 peer is written as icmpv6 (type 8 -> 128 etc.)
    v6 = peer["v6"]
    proto = np.where((proto == 1) & v6, 58, proto)
    ity = np.where((proto == 58) & (ity == 8), 128, ity)
    ity = np.where((proto == 58) & (ity == 3), 1, ity)
    ity = np.where((proto == 58) & (ity == 0), 129, ity)
    ity = np.where((proto == 58) & (ity == 11), 3, ity)
    prio = np.full(n, -1)
    dp = (act > 0) & (rng.random(n) < 0.4)
    prio[dp] = rng.choice([100, 200, 300, 500, 900], dp.sum())
    ap = (act == 0) & (rng.random(n) < 0.05)
    prio[ap] = rng.choice([50, 1500, 2000, 5000], ap.sum())
    log = (act > 0) & (rng.random(n) < 0.1)
    return _rule_dict_list(proto, plo, phi, ity, ico, peer, act, prio, log)


def _draw_matches(rng, plan, rg, act):
    """Protocol, port range and ICMP type/code of each rule (arrays of int64; -1 = any).

    Kinds: single service port (tcp/udp, biased to the group's role), ranges (ephemeral,
    0-65535, app ranges), ICMP (echo, type 3 any code, all), protocol all, other protocols.
    """
    n = len(rg)
    allow_p = [0.66, 0.08, 0.10, 0.04, 0.08, 0.03, 0.01]
    deny_p = [0.40, 0.10, 0.12, 0.00, 0.05, 0.33, 0.00]
    kind = np.where(act == 0, rng.choice(7, n, p=allow_p), rng.choice(7, n, p=deny_p))
    gk = plan.g_kind[rg]
    tcp_svc = _kind_ports(rng, gk, 1)
    udp_svc = _kind_ports(rng, gk, 2)
    use_svc = rng.random(n) < 0.6
    tcp_port = np.where(use_svc & (tcp_svc >= 0), tcp_svc,
                        rng.choice(COMMON_TCP, n, p=COMMON_TCP_W / COMMON_TCP_W.sum()))
    deny_tcp = rng.choice(np.concatenate((SCAN_TCP[:8], [22, 3389])), n)
    tcp_port = np.where(act > 0, deny_tcp, tcp_port)
    udp_port = np.where(use_svc & (udp_svc >= 0), udp_svc,
                        rng.choice(COMMON_UDP, n, p=COMMON_UDP_W / COMMON_UDP_W.sum()))
    tr = TCP_RANGES[rng.choice(len(TCP_RANGES), n, p=TCP_RANGES_W)]
    ur = UDP_RANGES[rng.choice(len(UDP_RANGES), n, p=UDP_RANGES_W)]
    proto = np.select([kind <= 0, kind == 1, kind == 2, kind == 3, kind == 4, kind == 5],
                      [6, 17, 6, 17, 1, -1], rng.choice(OTHER_PROTOCOLS, n))
    plo = np.select([kind == 0, kind == 1, kind == 2, kind == 3], [tcp_port, udp_port, tr[:, 0], ur[:, 0]], 0)
    phi = np.select([kind == 0, kind == 1, kind == 2, kind == 3], [tcp_port, udp_port, tr[:, 1], ur[:, 1]], 65535)
    # icmp: echo request any code, type 3 any code (path MTU!), everything, echo reply, time exceeded
    it = rng.choice([8, 3, -1, 0, 11], n, p=[0.5, 0.2, 0.2, 0.05, 0.05])
    ity = np.where(kind == 4, it, -1)
    ico = np.full(n, -1)
    return proto, plo, phi, ity, ico


def _kind_ports(rng, gk, col):
    """A random service port of each rule's group kind (``col`` 1 = tcp, 2 = udp); -1 if none."""
    width = max(len(k[col]) for k in KINDS)
    table = np.full((len(KINDS), width), -1, np.int64)
    cnt = np.zeros(len(KINDS), np.int64)
    for i, k in enumerate(KINDS):
        table[i, :len(k[col])] = k[col]
        cnt[i] = len(k[col])
    c = cnt[gk]
    j = (rng.random(len(gk)) * np.maximum(c, 1)).astype(np.int64)
    return np.where(c > 0, table[gk, j], -1)


def _draw_peers(rng, plan: _Plan, rg, act, proto, plo, group_peer_share, ipv6_share) -> dict:
    """Peer of each rule: {'group': list[str|None], 'cidr': list[str|None], 'v6': bool[n]}.

    Group peers: the rule's own group (30%), another group of the same bucket, or (20%, with
    several accounts) a group of another account in the same region as ``owner/sg-id``.
    IPv4 CIDRs are drawn from nested pools (0.0.0.0/0, 10.0.0.0/8, the bucket's /16, role /24s,
    random sub-blocks, instance /32s, external /32 and /24 "offices" reused across rules);
    deny rules prefer external blocklists and a quarantine subnet.
    """
    n = len(rg)
    is_group = rng.random(n) < np.where(proto == -1, min(1.0, 2.5 * group_peer_share), group_peer_share)
    is_group &= (act == 0) | (rng.random(n) < 0.3)
    v6 = ~is_group & (rng.random(n) < ipv6_share)
    groups = _group_refs(rng, plan, rg, is_group)
    cidr = [None] * n
    v4 = ~is_group & ~v6
    i4 = np.nonzero(v4)[0]
    for i, s in zip(i4.tolist(), _v4_cidrs(rng, plan, rg[i4], act[i4], plo[i4])):
        cidr[i] = s
    i6 = np.nonzero(v6)[0]
    for i, s in zip(i6.tolist(), _v6_cidrs(rng, plan, rg[i6])):
        cidr[i] = s
    return {"group": groups, "cidr": cidr, "v6": v6}


def _group_refs(rng, plan: _Plan, rg, is_group) -> list:
    """Group reference strings for the rules flagged ``is_group`` (None elsewhere)."""
    out = [None] * len(rg)
    idx = np.nonzero(is_group)[0]
    if len(idx) == 0:
        return out
    g = rg[idx]
    b = plan.g_bucket[g]
    start, cnt = plan.b_gstart[b], plan.b_gstart[b + 1] - plan.b_gstart[b]
    target = start + (rng.random(len(idx)) * cnt).astype(np.int64)
    target = np.where(rng.random(len(idx)) < 0.3, g, target)
    cross = np.zeros(len(idx), bool)
    regions = plan.regions
    if plan.n_buckets > regions:
        cross = rng.random(len(idx)) < 0.2
        for bb in range(plan.n_buckets):
            m = cross & (b == bb)
            others = [x for x in range(plan.n_buckets) if x % regions == bb % regions and x != bb
                      and plan.b_gstart[x + 1] > plan.b_gstart[x]]
            if not m.any():
                continue
            if not others:
                cross[m] = False
                continue
            pool = np.concatenate([np.arange(plan.b_gstart[x], plan.b_gstart[x + 1]) for x in others])
            target[m] = rng.choice(pool, m.sum())
    ids = plan.g_id
    owners = [_account_id(a) for a in range(plan.n_buckets // regions)]
    t_owner = (plan.g_bucket[target] // regions).tolist()
    for i, t, c, o in zip(idx.tolist(), target.tolist(), cross.tolist(), t_owner):
        out[i] = f"{owners[o]}/{ids[t]}" if c else ids[t]
    return out


def _v4_cidrs(rng, plan: _Plan, rg, act, plo) -> list[str]:
    """IPv4 CIDR strings for rules of groups ``rg`` (see ``_draw_peers``)."""
    n = len(rg)
    b = plan.g_bucket[rg]
    # offices/partners: a small pool of external addresses shared by many rules (overlaps)
    office = _random_public_v4(rng, max(16, n // 40))
    ext_blocks = _random_public_v4(rng, max(8, n // 100))
    # roles of the rule's bucket -> its subnets
    # a random role of the rule's bucket (roles are sorted by bucket) -> its first /24
    r_start = np.searchsorted(plan.role_bucket, np.arange(plan.n_buckets + 1))
    r_cnt = (r_start[1:] - r_start[:-1])[b]
    rb = np.where(r_cnt > 0, r_start[b] + (rng.random(n) * r_cnt).astype(np.int64), -1)
    subnet24 = np.where(rb >= 0, (10 << 24) | (plan.role_subnet[np.maximum(rb, 0)] << 8), 10 << 24)
    vpc16 = (10 << 24) | (plan.b_subnet0[b] << 8)
    web = (plo == 80) | (plo == 443)
    p_any = np.where(web, 0.6, 0.12)
    u = rng.random(n)
    cat_allow = rng.choice(9, n, p=[0.10, 0.16, 0.20, 0.06, 0.05, 0.2, 0.12, 0.06, 0.05])
    cat_deny = rng.choice(9, n, p=[0.0, 0.0, 0.0, 0.0, 0.05, 0.45, 0.3, 0.0, 0.2])
    cat = np.where(act > 0, cat_deny, np.where(u < p_any, -1, cat_allow))
    sub_prefix = rng.integers(20, 29, n)
    sub_base = vpc16 | (rng.integers(0, 1 << 16, n) & _v4_mask(sub_prefix) & 0xFFFF)
    inst_addr = subnet24 | rng.integers(4, 4 + HOSTS_PER_SUBNET, n)
    ext_prefix = rng.choice([24, 22, 20, 16], n, p=[0.6, 0.15, 0.15, 0.1])
    ext = ext_blocks[rng.integers(0, len(ext_blocks), n)] & _v4_mask(ext_prefix)
    private = np.array([(10 << 24, 8), (172 << 24 | 16 << 16, 12), (192 << 24 | 168 << 16, 16)])
    pv = private[rng.choice(3, n, p=[0.7, 0.15, 0.15])]
    quarantine = (10 << 24) | (66 << 16)
    addr = np.select([cat == -1, cat == 0, cat == 1, cat == 2, cat == 3, cat == 4, cat == 5, cat == 6, cat == 7],
                     [0, pv[:, 0], vpc16, subnet24, sub_base, inst_addr,
                      office[rng.integers(0, len(office), n)], ext, 10 << 24], quarantine)
    prefix = np.select([cat == -1, cat == 0, cat == 1, cat == 2, cat == 3, cat == 4, cat == 5, cat == 6, cat == 7],
                       [0, pv[:, 1], 16, 24, sub_prefix, 32, 32, ext_prefix, 8], 16)
    return _v4_strings(addr & _v4_mask(prefix), prefix)


def _v6_cidrs(rng, plan: _Plan, rg) -> list[str]:
    """IPv6 CIDR strings (/0, /32 .. /128) in the instances' 2600:1f18::/32 or external space."""
    out = []
    n = len(rg)
    prefix = rng.choice([0, 32, 48, 56, 64, 128], n, p=[0.1, 0.15, 0.2, 0.15, 0.25, 0.15])
    inside = rng.random(n) < 0.6
    rnd = rng.integers(0, 1 << 63, (n, 2), dtype=np.int64)
    b = plan.g_bucket[rg]
    sub = rng.integers(0, 64, n)
    for i in range(n):
        p = int(prefix[i])
        if inside[i]:
            v = (V6_INSTANCE_PREFIX << 96) | (int(b[i]) << 80) | (int(sub[i]) << 64) | (4 + int(rnd[i, 1]) % 32)
        else:
            v = (V6_EXTERNAL_PREFIX << 96) | (int(rnd[i, 0]) << 32) | int(rnd[i, 1])
        mask = ((1 << 128) - 1) ^ ((1 << (128 - p)) - 1)
        out.append(f"{_v6_text(v & mask)}/{p}")
    return out


def _v6_text(v: int) -> str:
    """An IPv6 address (int) in RFC 5952 text: the longest run of zero groups as '::'."""
    groups = [(v >> (112 - 16 * k)) & 0xFFFF for k in range(8)]
    best, best_len, run, run_len = -1, 1, -1, 0
    for k, g in enumerate(groups):
        if g == 0:
            if run < 0:
                run, run_len = k, 0
            run_len += 1
            if run_len > best_len:
                best, best_len = run, run_len
        else:
            run = -1
    hexes = [f"{g:x}" for g in groups]
    if best < 0:
        return ":".join(hexes)
    return ":".join(hexes[:best]) + "::" + ":".join(hexes[best + best_len:])


def _rule_dict_list(proto, plo, phi, ity, ico, peer, act, prio, log) -> list:
    """Columns -> list of rule dicts in file syntax (only non-default keys are written)."""
    names = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmpv6", -1: "all"}
    actions = ("allow", "deny", "reject")
    out = []
    for p, lo, hi, it, ic, g, c, a, pr, lg in zip(proto.tolist(), plo.tolist(), phi.tolist(),
                                                   ity.tolist(), ico.tolist(), peer["group"],
                                                   peer["cidr"], act.tolist(), prio.tolist(), log.tolist()):
        d = {"protocol": names.get(p, p)}
        if p in (6, 17):
            d["ports"] = lo if lo == hi else f"{lo}-{hi}"
        elif p in (1, 58):
            if it >= 0:
                d["icmp_type"] = it
            if ic >= 0:
                d["icmp_code"] = ic
        if g is not None:
            d["group"] = g
        else:
            d["cidr"] = c
        if a:
            d["action"] = actions[a]
        if pr >= 0:
            d["priority"] = pr
        if lg:
            d["log"] = True
        out.append(d)
    return out


def _assemble(plan: _Plan, sizes, n_in, rule_dicts, order, regions) -> dict:
    """Groups, instances and header -> the world dict."""
    region0 = _region_name(0)
    owners = [_account_id(b // regions) for b in range(plan.n_buckets)]
    region_of = [_region_name(b % regions) for b in range(plan.n_buckets)]
    starts = np.concatenate(([0], np.cumsum(sizes))).tolist()
    sgs = []
    g_bucket, g_kind = plan.g_bucket.tolist(), plan.g_kind.tolist()
    for g in range(len(sizes)):
        b = g_bucket[g]
        kind = KINDS[g_kind[g]][0]
        d = {"id": plan.g_id[g], "name": plan.g_name[g], "owner": owners[b]}
        if regions > 1:
            d["region"] = region_of[b]
        d["description"] = f"{kind} tier"
        d["tags"] = {"role": kind}
        s, k = starts[g], int(n_in[g])
        d["ingress"] = rule_dicts[s:s + k]
        if k < sizes[g]:
            d["egress"] = rule_dicts[s + k:starts[g + 1]]
        sgs.append(d)
    insts = []
    role_gids = [[plan.g_id[g] for g in gl] for gl in plan.role_groups]
    role_bucket = plan.role_bucket.tolist()
    stopped = plan.i_stopped.tolist()
    for i, (r, ip) in enumerate(zip(plan.i_role.tolist(), _v4_strings(plan.i_ip))):
        b = role_bucket[r]
        d = {"id": plan.i_id[i], "private_ip": ip}
        if plan.i_v6[i] is not None:
            d["private_ipv6"] = plan.i_v6[i]
        if plan.i_pub[i] is not None:
            d["public_ip"] = plan.i_pub[i]
        d["owner"] = owners[b]
        if regions > 1:
            d["region"] = region_of[b]
        d["groups"] = list(role_gids[r])
        d["tags"] = {"Name": plan.i_name[i], "role": plan.role_kind[r]}
        if stopped[i]:
            d["state"] = "stopped"
        insts.append(d)
    return {"version": 1, "region": region0, "order": order,
            "limits": {"groups_per_instance": GROUPS_PER_INSTANCE},
            "security_groups": sgs, "instances": insts}


# ------------------------------------------------------------------------------------------
# generate_traffic: the world as flat tables + a small stateless evaluator
# ------------------------------------------------------------------------------------------

@dataclass
class _Tables:
    """The world flattened for sampling and for ``_evaluate`` (index = instance position).

    Rules are laid out per (role combination, direction) in canonical order: ``cr_ptr[2c+d]``
    .. ``cr_ptr[2c+d+1]`` (d = 0 ingress, 1 egress).  Peer kinds ``r_pk``: 4/6 = IPv4/IPv6
    CIDR (``r_n*`` network, ``r_m*`` mask halves), 7 = group ``r_grp``.
    """
    n_inst: int
    running: np.ndarray
    v4: np.ndarray                  # int64, -1 = none
    has_v6: np.ndarray
    v6_hi: np.ndarray
    v6_lo: np.ndarray
    pub_ver: np.ndarray             # uint8, 0 = no public address
    pub_hi: np.ndarray
    pub_lo: np.ndarray
    combo: np.ndarray               # int32 role combination of each instance
    cg_ptr: np.ndarray              # groups of combination c: cg_grp[cg_ptr[c]:cg_ptr[c+1]]
    cg_grp: np.ndarray
    cr_ptr: np.ndarray
    rules: dict                     # r_act, r_prio, r_proto, r_plo, r_phi, r_ity, r_ico, r_pk, r_n/m hi/lo, r_grp
    gm_ptr: np.ndarray              # running members of group g: gm_inst[gm_ptr[g]:gm_ptr[g+1]]
    gm_inst: np.ndarray
    run_idx: np.ndarray             # running instances, and those with IPv6
    run6_idx: np.ndarray
    kernel: tuple                   # what _evaluate takes (see _kernel_tuple)


RULE_COLUMNS = ("r_act", "r_prio", "r_proto", "r_plo", "r_phi", "r_ity", "r_ico", "r_pk",
                "r_nhi", "r_nlo", "r_mhi", "r_mlo", "r_grp")
RULE_DTYPES = (np.int8, np.int32, np.int16, np.int32, np.int32, np.int16, np.int16, np.int8,
               np.uint64, np.uint64, np.uint64, np.uint64, np.int32)


def _as_world(world):
    """A ``World`` (returned as is) or a world dict (loaded with ``World.from_dict``)."""
    from .world import World
    if isinstance(world, World):
        return world
    if isinstance(world, dict):
        return World.from_dict(world)
    raise TypeError(f"expected a World or a world dict, not {type(world).__name__}")


def _rule_row(rule, gpos) -> tuple:
    """A world ``Rule`` -> one row of RULE_COLUMNS."""
    act = 0 if rule.action == "allow" else 1
    proto = int(rule.protocol)
    lo, hi = (rule.port_lo, rule.port_hi) if proto in (6, 17) else (0, 65535)
    ity, ico = (rule.icmp_type, rule.icmp_code) if proto in (1, 58) else (-1, -1)
    if rule.cidr is not None:
        net = rule.cidr
        v = int(net.network_address)
        m = int(net.netmask)
        pk = net.version
        return (act, rule.priority, proto, lo, hi, ity, ico, pk,
                v >> 64, v & M64, m >> 64, m & M64, -1)
    return (act, rule.priority, proto, lo, hi, ity, ico, 7, 0, 0, 0, 0, gpos.get(rule.group, -1))


def _tables(W) -> _Tables:
    """Flatten world ``W`` (a ``fastsg.world.World``) into ``_Tables``."""
    gids = list(W.groups)
    gpos = {g: i for i, g in enumerate(gids)}
    # every group's rule rows, once
    g_rows = [[[_rule_row(r, gpos) for r in sg.ingress], [_rule_row(r, gpos) for r in sg.egress]]
              for sg in W.groups.values()]
    insts = list(W.instances.values())
    n = len(insts)
    regions, combos = {}, {}
    region = np.zeros(n, np.int32)
    combo = np.zeros(n, np.int32)
    order = np.zeros(n, np.int8)
    running = np.zeros(n, bool)
    v4 = np.full(n, -1, np.int64)
    has_v6 = np.zeros(n, bool)
    v6 = [0] * n
    pub_ver = np.zeros(n, np.uint8)
    pub = [0] * n
    for i, inst in enumerate(insts):
        region[i] = regions.setdefault(inst.region, len(regions))
        combo[i] = combos.setdefault(tuple(gpos[g] for g in inst.groups), len(combos))
        order[i] = ORDERS.index(W.instance_order(inst))
        running[i] = inst.running
        if inst.private_ip is not None:
            v4[i] = int(inst.private_ip)
        if inst.private_ipv6 is not None:
            has_v6[i] = True
            v6[i] = int(inst.private_ipv6)
        if inst.public_ip is not None:
            pub_ver[i] = inst.public_ip.version
            pub[i] = int(inst.public_ip)
    v6_hi, v6_lo = _split128(v6)
    pub_hi, pub_lo = _split128(pub)
    combo_list = list(combos)
    cg_ptr = np.concatenate(([0], np.cumsum([len(c) for c in combo_list]))).astype(np.int64)
    cg_grp = np.array([g for c in combo_list for g in c], np.int32)
    rows, cr_ptr = [], [0]
    for c in combo_list:
        for d in (0, 1):
            for g in c:
                rows.extend(g_rows[g][d])
            cr_ptr.append(len(rows))
    cols = list(zip(*rows)) if rows else [()] * len(RULE_COLUMNS)
    rules = {name: np.array(col, dtype=dt) if name not in ("r_nhi", "r_nlo", "r_mhi", "r_mlo")
             else np.array([int(x) for x in col], dtype=np.uint64)
             for name, col, dt in zip(RULE_COLUMNS, cols, RULE_DTYPES)}
    member_lists = [[] for _ in gids]
    for i, inst in enumerate(insts):
        if inst.running:
            for g in inst.groups:
                member_lists[gpos[g]].append(i)
    gm_ptr = np.concatenate(([0], np.cumsum([len(m) for m in member_lists]))).astype(np.int64)
    gm_inst = np.array([i for m in member_lists for i in m], np.int64)
    t = _Tables(n, running, v4, has_v6, v6_hi, v6_lo, pub_ver, pub_hi, pub_lo, combo, cg_ptr,
                cg_grp, np.array(cr_ptr, np.int64), rules, gm_ptr, gm_inst,
                np.nonzero(running & (v4 >= 0))[0], np.nonzero(running & has_v6 & (v4 >= 0))[0], ())
    t.kernel = _kernel_tuple(t, region, order)
    return t


def _split128(values: list) -> tuple[np.ndarray, np.ndarray]:
    """Python ints (< 2**128) -> (hi, lo) uint64 arrays."""
    hi = np.array([v >> 64 for v in values], np.uint64)
    lo = np.array([v & M64 for v in values], np.uint64)
    return hi, lo


def _kernel_tuple(t: _Tables, region, order) -> tuple:
    """The arrays ``_evaluate`` takes after the queries, in its parameter order: the sorted
    address table of running instances (ver, hi, lo, [instance, private]), per-instance
    [region, combo, order], the CSR pointers, and the rules as an int64 matrix (RULE_INTS
    columns) plus a uint64 matrix of [net hi, net lo, mask hi, mask lo].

    (Few, 2-D arguments rather than one array per column: numba's compile time grows fast
    with the number of arguments.)
    """
    run = t.running
    parts = [(np.full(run.sum(), 4), np.zeros(run.sum(), np.uint64), t.v4[run], np.nonzero(run)[0], 1)]
    m6 = run & t.has_v6
    parts.append((np.full(m6.sum(), 6), t.v6_hi[m6], t.v6_lo[m6], np.nonzero(m6)[0], 1))
    mp = run & (t.pub_ver > 0)
    parts.append((t.pub_ver[mp], t.pub_hi[mp], t.pub_lo[mp], np.nonzero(mp)[0], 0))
    k_ver = np.concatenate([p[0] for p in parts]).astype(np.uint8)
    # (every part is uint64 already: a float64 part would round the 64-bit halves)
    k_hi = np.concatenate([np.asarray(p[1], np.uint64) for p in parts])
    k_lo = np.concatenate([np.asarray(p[2]).astype(np.uint64) for p in parts])
    k_inst = np.concatenate([p[3] for p in parts]).astype(np.int64)
    k_priv = np.concatenate([np.full(len(p[3]), p[4]) for p in parts]).astype(np.int64)
    # instances without a private IPv4 (v4 == -1) must not enter the table
    keep = ~((k_ver == 4) & (k_priv == 1) & (t.v4[k_inst] < 0))
    k_ver, k_hi, k_lo, k_inst, k_priv = k_ver[keep], k_hi[keep], k_lo[keep], k_inst[keep], k_priv[keep]
    o = np.lexsort((k_lo, k_hi, k_ver))
    r = t.rules
    rint = np.stack([r[c].astype(np.int64) for c in RULE_INTS], axis=1) if len(r["r_act"]) \
        else np.zeros((0, len(RULE_INTS)), np.int64)
    rnet = np.stack([r[c] for c in ("r_nhi", "r_nlo", "r_mhi", "r_mlo")], axis=1) if len(r["r_act"]) \
        else np.zeros((0, 4), np.uint64)
    inst = np.stack([region, t.combo, order], axis=1).astype(np.int64)
    return (k_ver[o], k_hi[o], k_lo[o], np.stack([k_inst[o], k_priv[o]], axis=1), inst,
            t.cg_ptr, t.cg_grp.astype(np.int64), t.cr_ptr, rint, np.ascontiguousarray(rnet))


# columns of the int64 rule matrix given to the kernel
RULE_INTS = ("r_act", "r_prio", "r_proto", "r_plo", "r_phi", "r_ity", "r_ico", "r_pk", "r_grp")
R_ACT, R_PRIO, R_PROTO, R_PLO, R_PHI, R_ITY, R_ICO, R_PK, R_GRP = range(len(RULE_INTS))


@njit()
def _find(ver, hi, lo, k_ver, k_hi, k_lo):
    """Index of address (ver, hi, lo) in the sorted key table, -1 if absent."""
    a = 0
    b = k_ver.shape[0]
    while a < b:
        m = (a + b) >> 1
        if k_ver[m] < ver or (k_ver[m] == ver and (k_hi[m] < hi or (k_hi[m] == hi and k_lo[m] < lo))):
            a = m + 1
        else:
            b = m
    if a < k_ver.shape[0] and k_ver[a] == ver and k_hi[a] == hi and k_lo[a] == lo:
        return a
    return -1


@njit()
def _check(x, dirn, ver, p_hi, p_lo, peer_k, proto, dport, ity, ico, frag,
           k_info, inst, cg_ptr, cg_grp, cr_ptr, rint, rnet):
    """One check (spec section 3) at instance ``x`` (dirn 0 ingress, 1 egress): True = ACCEPT."""
    c = inst[x, 1]
    od = inst[x, 2]
    first_allow = -1
    any_deny = False
    best = -1
    best_p = 0
    best_k = 0
    for i in range(cr_ptr[2 * c + dirn], cr_ptr[2 * c + dirn + 1]):
        rp = rint[i, R_PROTO]
        if rp != -1 and rp != proto:
            continue
        if rp == 6 or rp == 17:
            if frag != 0:
                if rint[i, R_PLO] != 0 or rint[i, R_PHI] != 65535:
                    continue
            elif dport < rint[i, R_PLO] or dport > rint[i, R_PHI]:
                continue
        elif rp == 1 or rp == 58:
            if frag != 0:
                if rint[i, R_ITY] != -1 or rint[i, R_ICO] != -1:
                    continue
            else:
                if rint[i, R_ITY] != -1 and rint[i, R_ITY] != ity:
                    continue
                if rint[i, R_ICO] != -1 and rint[i, R_ICO] != ico:
                    continue
        kind = rint[i, R_PK]
        if kind == 4:
            if ver != 4 or (p_lo & rnet[i, 3]) != rnet[i, 1]:
                continue
        elif kind == 6:
            if ver != 6 or (p_hi & rnet[i, 2]) != rnet[i, 0] or (p_lo & rnet[i, 3]) != rnet[i, 1]:
                continue
        else:
            # group peer: a private address of a running member in the checked instance's region
            if peer_k < 0 or k_info[peer_k, 1] == 0:
                continue
            p = k_info[peer_k, 0]
            if inst[p, 0] != inst[x, 0]:
                continue
            g = rint[i, R_GRP]
            found = False
            for j in range(cg_ptr[inst[p, 1]], cg_ptr[inst[p, 1] + 1]):
                if cg_grp[j] == g:
                    found = True
                    break
            if not found:
                continue
        # the rule matches: combine per the instance's order
        allow = rint[i, R_ACT] == 0
        if od == 0:
            if not allow:
                return False
            if first_allow < 0:
                first_allow = i
        elif od == 1:
            if allow:
                return True
            any_deny = True
        else:
            k = 1 if allow else 0
            pr = rint[i, R_PRIO]
            if best < 0 or pr < best_p or (pr == best_p and k < best_k):
                best = i
                best_p = pr
                best_k = k
    if od == 0:
        return first_allow >= 0
    if od == 1:
        return not any_deny
    return best >= 0 and rint[best, R_ACT] == 0


@njit()
def _evaluate(q, qaddr, out, k_ver, k_hi, k_lo, k_info, inst, cg_ptr, cg_grp, cr_ptr, rint, rnet):
    """Stateless verdicts (spec sections 2-3): out[i] = 1 ACCEPT, 0 refused, 2 UNMANAGED.

    q: int64[n, 7] (ver, proto, dport, icmp type, icmp code, frag, unused);
    qaddr: uint64[n, 4] (src hi, src lo, dst hi, dst lo).
    """
    for i in range(q.shape[0]):
        ver = q[i, 0]
        sk = _find(ver, qaddr[i, 0], qaddr[i, 1], k_ver, k_hi, k_lo)
        dk = _find(ver, qaddr[i, 2], qaddr[i, 3], k_ver, k_hi, k_lo)
        if sk < 0 and dk < 0:
            out[i] = 2
            continue
        ok = True
        if sk >= 0:
            ok = _check(k_info[sk, 0], 1, ver, qaddr[i, 2], qaddr[i, 3], dk, q[i, 1], q[i, 2],
                        q[i, 3], q[i, 4], q[i, 5], k_info, inst, cg_ptr, cg_grp, cr_ptr, rint, rnet)
        if ok and dk >= 0:
            ok = _check(k_info[dk, 0], 0, ver, qaddr[i, 0], qaddr[i, 1], sk, q[i, 1], q[i, 2],
                        q[i, 3], q[i, 4], q[i, 5], k_info, inst, cg_ptr, cg_grp, cr_ptr, rint, rnet)
        out[i] = 1 if ok else 0


def _eval(t: _Tables, ver, s_hi, s_lo, d_hi, d_lo, proto, dport, ity, ico, frag) -> np.ndarray:
    """``_evaluate`` over numpy arrays (any int dtypes) -> uint8 verdicts (1/0/2)."""
    n = len(ver)
    out = np.zeros(n, np.uint8)
    if n:
        q = np.zeros((n, 7), np.int64)
        for j, v in enumerate((ver, proto, dport, ity, ico, frag)):
            q[:, j] = v
        qaddr = np.stack([np.asarray(x).astype(np.uint64) for x in (s_hi, s_lo, d_hi, d_lo)], axis=1)
        _evaluate(q, qaddr, out, *t.kernel)
    return out


# ------------------------------------------------------------------------------------------
# traffic: candidate flows
# ------------------------------------------------------------------------------------------

CLS_PORTS, CLS_ECHO = 0, 1          # flow classes: tcp/udp/other protocols, ICMP echo
FLOW_KEYS = ("ver", "src_hi", "src_lo", "dst_hi", "dst_lo", "proto", "sport", "dport", "ity",
             "ico", "cls", "fwd_ok", "rev_ok", "frag_ok", "err_ok")
OUTBOUND = np.array([(6, 443), (6, 80), (17, 53), (17, 123), (6, 22), (6, 5432), (6, 8443)])
OUTBOUND_W = np.array([0.5, 0.15, 0.15, 0.05, 0.05, 0.05, 0.05])


def _rule_lists(t: _Tables) -> dict:
    """Per (class, IP version): for each combination, its *ingress allow* rules usable to build
    an admitted flow of that class and version, as CSR (ptr int64[nc+1], idx int64)."""
    r = t.rules
    p, ity, ico, pk = r["r_proto"], r["r_ity"], r["r_ico"], r["r_pk"]
    allow = r["r_act"] == 0
    ports = allow & ~np.isin(p, (1, 58))
    echo = allow & ((p == -1) | ((p == 1) & np.isin(ity, (-1, 8)) & np.isin(ico, (-1, 0)))
                    | ((p == 58) & np.isin(ity, (-1, 128)) & np.isin(ico, (-1, 0))))
    ok_ver = {4: np.isin(pk, (4, 7)) & (p != 58), 6: np.isin(pk, (6, 7)) & (p != 1)}
    nc = len(t.cg_ptr) - 1
    out = {}
    for cls, m in ((CLS_PORTS, ports), (CLS_ECHO, echo)):
        for ver in (4, 6):
            mm = m & ok_ver[ver]
            lists = [np.nonzero(mm[t.cr_ptr[2 * c]:t.cr_ptr[2 * c + 1]])[0] + t.cr_ptr[2 * c]
                     for c in range(nc)]
            ptr = np.concatenate(([0], np.cumsum([len(x) for x in lists]))).astype(np.int64)
            idx = np.concatenate(lists).astype(np.int64) if lists else np.zeros(0, np.int64)
            out[cls, ver] = (ptr, idx)
    return out


def _pick_instances(rng, t: _Tables, n, want6, weights) -> np.ndarray:
    """``n`` running instances, popularity-weighted; IPv6-capable ones where ``want6``."""
    x = t.run_idx[_weighted(rng, weights[t.run_idx], n)]
    if len(t.run6_idx) and want6.any():
        x6 = t.run6_idx[_weighted(rng, weights[t.run6_idx], int(want6.sum()))]
        x[want6] = x6
    return x


def _weighted(rng, w, n) -> np.ndarray:
    """``n`` indexes drawn with probability proportional to ``w``."""
    c = np.cumsum(w)
    return np.minimum(np.searchsorted(c, rng.random(n) * c[-1], side="right"), len(w) - 1)


def _inst_addr(t: _Tables, x, ver, public=None):
    """(hi, lo) of instances ``x``: private IPv4 / IPv6 by ``ver``; public IPv4 where asked."""
    hi = np.where(ver == 6, t.v6_hi[x], np.uint64(0)).astype(np.uint64)
    lo = np.where(ver == 6, t.v6_lo[x], t.v4[x].astype(np.uint64)).astype(np.uint64)
    if public is not None:
        use = public & (ver == 4) & (t.pub_ver[x] == 4)
        lo = np.where(use, t.pub_lo[x], lo)
    return hi, lo


def _external(rng, n, ver):
    """Random internet addresses of version ``ver`` (IPv6 in 2a00::/12-like global space)."""
    lo4 = _random_public_v4(rng, n).astype(np.uint64)
    hi6 = (np.uint64(0x2A00) << np.uint64(48)) | rng.integers(0, 1 << 48, n, dtype=np.int64).astype(np.uint64)
    lo6 = rng.integers(0, 1 << 63, n, dtype=np.int64).astype(np.uint64)
    return np.where(ver == 6, hi6, np.uint64(0)), np.where(ver == 6, lo6, lo4)


def _ports_for(rng, proto, lo, hi, n):
    """Destination ports inside [lo, hi]: a common service port when one fits (half the time)."""
    tcp = rng.choice(COMMON_TCP, n, p=COMMON_TCP_W / COMMON_TCP_W.sum())
    udp = rng.choice(COMMON_UDP, n, p=COMMON_UDP_W / COMMON_UDP_W.sum())
    common = np.where(proto == 17, udp, tcp)
    uni = lo + (rng.random(n) * (hi - lo + 1)).astype(np.int64)
    fits = (common >= lo) & (common <= hi) & (rng.random(n) < 0.7)
    return np.where(lo == hi, lo, np.where(fits, common, uni))


def _finish(rng, c: dict, cls, n) -> dict:
    """Source ports / echo ids and ICMP fields common to every candidate kind."""
    echo = cls == CLS_ECHO
    c["cls"] = np.full(n, cls, np.int64)
    eph = rng.integers(EPHEMERAL_LO, EPHEMERAL_HI + 1, n)
    ident = rng.integers(1, 65536, n)
    ports = np.isin(c["proto"], (6, 17))
    c["sport"] = np.where(echo, ident, np.where(ports, eph, 0))
    c["dport"] = np.where(echo, ident, np.where(ports, c["dport"], 0))
    c["ity"] = np.where(echo, np.where(c["ver"] == 6, 128, 8), 0)
    c["ico"] = np.zeros(n, np.int64)
    return c


def _cand_admitted(rng, t: _Tables, lists, n, cls, want6, weights) -> dict:
    """Flows built from the ingress allow rules of a random running instance R: peer inside
    the rule's CIDR (or a running member of its group), destination port inside its range."""
    R = _pick_instances(rng, t, n, want6, weights)
    c = t.combo[R]
    ptr6, idx6 = lists[cls, 6]
    ptr4, idx4 = lists[cls, 4]
    n6 = (ptr6[c + 1] - ptr6[c])
    n4 = (ptr4[c + 1] - ptr4[c])
    use6 = want6 & t.has_v6[R] & (n6 > 0)
    cnt = np.where(use6, n6, n4)
    k = (rng.random(n) * np.maximum(cnt, 1)).astype(np.int64)
    rule = np.where(use6, idx6[np.minimum(ptr6[c] + k, len(idx6) - 1)] if len(idx6) else 0,
                    idx4[np.minimum(ptr4[c] + k, len(idx4) - 1)] if len(idx4) else 0)
    valid = cnt > 0
    r = t.rules
    pk = r["r_pk"][rule]
    ver = np.where(pk == 6, 6, np.where(pk == 4, 4, np.where(use6, 6, 4)))
    # group peers: a running member of the group
    g = np.maximum(r["r_grp"][rule], 0)
    gcnt = t.gm_ptr[g + 1] - t.gm_ptr[g]
    mem = t.gm_inst[np.minimum(t.gm_ptr[g] + (rng.random(n) * np.maximum(gcnt, 1)).astype(np.int64),
                               max(len(t.gm_inst) - 1, 0))] if len(t.gm_inst) else np.zeros(n, np.int64)
    is_grp = pk == 7
    valid &= ~is_grp | (gcnt > 0)
    ver = np.where(is_grp & (ver == 6) & ~t.has_v6[mem], 4, ver)
    valid &= (ver == 4) | t.has_v6[R]
    ext_hi, ext_lo = _external(rng, n, ver)
    # inside the CIDR: network bits from the rule, host bits random ("internet"-looking)
    c_hi = r["r_nhi"][rule] | (ext_hi & ~r["r_mhi"][rule])
    c_lo = r["r_nlo"][rule] | (ext_lo & ~r["r_mlo"][rule] & np.where(ver == 4, np.uint64(0xFFFFFFFF), np.uint64(M64)))
    m_hi, m_lo = _inst_addr(t, mem, ver)
    src_hi = np.where(is_grp, m_hi, c_hi)
    src_lo = np.where(is_grp, m_lo, c_lo)
    dst_hi, dst_lo = _inst_addr(t, R, ver, public=~is_grp & (rng.random(n) < 0.5))
    rp = r["r_proto"][rule].astype(np.int64)
    if cls == CLS_ECHO:
        proto = np.where(rp == -1, np.where(ver == 6, 58, 1), rp)
        valid &= np.where(ver == 6, proto == 58, proto == 1)
        dport = np.zeros(n, np.int64)
    else:
        proto = np.where(rp == -1, np.where(rng.random(n) < 0.65, 6, 17), rp)
        dport = _ports_for(rng, proto, r["r_plo"][rule].astype(np.int64), r["r_phi"][rule].astype(np.int64), n)
    cand = {"ver": ver, "src_hi": src_hi, "src_lo": src_lo, "dst_hi": dst_hi, "dst_lo": dst_lo,
            "proto": proto, "dport": dport}
    _finish(rng, cand, cls, n)
    cand["valid"] = valid
    return cand


def _cand_outbound(rng, t: _Tables, n, cls, want6, weights) -> dict:
    """Flows from a running instance to the internet (API calls, DNS, NTP, pings)."""
    S = _pick_instances(rng, t, n, want6, weights)
    ver = np.where(want6 & t.has_v6[S], 6, 4)
    src_hi, src_lo = _inst_addr(t, S, ver)
    dst_hi, dst_lo = _external(rng, n, ver)
    svc = OUTBOUND[rng.choice(len(OUTBOUND), n, p=OUTBOUND_W)]
    proto = np.where(cls == CLS_ECHO, np.where(ver == 6, 58, 1), svc[:, 0])
    cand = {"ver": ver, "src_hi": src_hi, "src_lo": src_lo, "dst_hi": dst_hi, "dst_lo": dst_lo,
            "proto": proto, "dport": svc[:, 1]}
    _finish(rng, cand, cls, n)
    cand["valid"] = np.ones(n, bool)
    return cand


def _cand_refused(rng, t: _Tables, n, cls, want6, weights) -> dict:
    """Flows no rule is likely to admit: scans from the internet, east-west probes to ports
    nobody opened, and outbound attempts (refused when the sender's egress is explicit)."""
    R = _pick_instances(rng, t, n, want6, weights)
    S = _pick_instances(rng, t, n, want6, weights)
    kind = rng.choice(3, n, p=[0.6, 0.3, 0.1])
    ver = np.where(want6 & t.has_v6[R] & ((kind != 1) | t.has_v6[S]), 6, 4)
    ext_hi, ext_lo = _external(rng, n, ver)
    r_hi, r_lo = _inst_addr(t, R, ver, public=rng.random(n) < 0.3)
    s_hi, s_lo = _inst_addr(t, S, ver)
    src_hi = np.where(kind == 0, ext_hi, s_hi)
    src_lo = np.where(kind == 0, ext_lo, s_lo)
    dst_hi = np.where(kind == 2, ext_hi, r_hi)
    dst_lo = np.where(kind == 2, ext_lo, r_lo)
    tcp = rng.random(n) < 0.75
    scan = np.where(tcp, rng.choice(SCAN_TCP, n), rng.choice(SCAN_UDP, n))
    dport = np.where(rng.random(n) < 0.6, scan, rng.integers(1, 65536, n))
    proto = np.where(cls == CLS_ECHO, np.where(ver == 6, 58, 1), np.where(tcp, 6, 17))
    cand = {"ver": ver, "src_hi": src_hi, "src_lo": src_lo, "dst_hi": dst_hi, "dst_lo": dst_lo,
            "proto": proto, "dport": dport}
    _finish(rng, cand, cls, n)
    cand["valid"] = (src_hi != dst_hi) | (src_lo != dst_lo)
    return cand


def _judge(t: _Tables, c: dict, stateful: bool) -> None:
    """Fill fwd_ok / rev_ok / frag_ok / err_ok (uint8 1/0/2) of candidates ``c`` in place.

    fwd: the first packet; rev: a reply (addresses and ports swapped, echo reply type);
    frag: a non-first fragment of the forward direction (no ports); err: an ICMP error sent
    back by the destination quoting the flow (stateful: rides RELATED, so equals fwd).
    """
    n = len(c["ver"])
    v6 = c["ver"] == 6
    echo = c["cls"] == CLS_ECHO
    c["fwd_ok"] = _eval(t, c["ver"], c["src_hi"], c["src_lo"], c["dst_hi"], c["dst_lo"], c["proto"],
                        c["dport"], c["ity"], c["ico"], 0)
    rty = np.where(echo, np.where(v6, 129, 0), c["ity"])
    c["rev_ok"] = _eval(t, c["ver"], c["dst_hi"], c["dst_lo"], c["src_hi"], c["src_lo"], c["proto"],
                        c["sport"], rty, c["ico"], 0)
    c["frag_ok"] = _eval(t, c["ver"], c["src_hi"], c["src_lo"], c["dst_hi"], c["dst_lo"], c["proto"],
                         np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, np.int64), 1)
    if stateful:
        c["err_ok"] = c["fwd_ok"].copy()
    else:
        ety, eco = _error_type(c["ver"], c["proto"])
        c["err_ok"] = _eval(t, c["ver"], c["dst_hi"], c["dst_lo"], c["src_hi"], c["src_lo"],
                            np.where(v6, 58, 1), np.zeros(n, np.int64), ety, eco, 0)


def _error_type(ver, proto):
    """ICMP error (type, code) a host sends back: port unreachable for UDP, administratively
    prohibited otherwise (v4 3/3 and 3/13; v6 1/4 and 1/1)."""
    udp = proto == 17
    ety = np.where(ver == 6, 1, 3)
    eco = np.where(ver == 6, np.where(udp, 4, 1), np.where(udp, 3, 13))
    return ety, eco


def _pool(rng, t: _Tables, lists, need, admitted, cls, want6_share, stateful, weights) -> dict:
    """At least ``need`` judged candidates of one (outcome, class), or as many as 8 rounds of
    sampling find.  Admitted: fwd_ok == 1; refused: fwd_ok == 0."""
    got, total = [], 0
    for _ in range(8):
        if total >= need:
            break
        m = int((need - total) * 1.5) + 32
        want6 = rng.random(m) < want6_share
        if admitted:
            out = rng.random(m) < 0.2
            a = _cand_admitted(rng, t, lists, m, cls, want6, weights)
            b = _cand_outbound(rng, t, m, cls, want6, weights)
            c = {k: np.where(out, b[k], a[k]) for k in a}
        else:
            c = _cand_refused(rng, t, m, cls, want6, weights)
        c = {k: v[c["valid"]] for k, v in c.items()}
        _judge(t, c, stateful)
        keep = c["fwd_ok"] == (1 if admitted else 0)
        c = {k: v[keep] for k, v in c.items()}
        got.append(c)
        total += int(keep.sum())
    return {k: np.concatenate([g[k] for g in got]) for k in FLOW_KEYS}


# ------------------------------------------------------------------------------------------
# traffic: flows -> packets
# ------------------------------------------------------------------------------------------

@dataclass
class _Traffic:
    """Flows and their packets, kept apart so flows can be re-keyed and re-rendered.

    ``ft``: flow columns (FLOW_KEYS + size, reply, refpat, rst, isn_f, isn_r, pinned).
    ``pk``: per flow-packet draws fixed once (flow, pos, u_dir, u_pay, pay, ts), in flow order.
    ``fr``: non-first fragments (parent flow, payload, ts); ``er``: ICMP errors (flow, ts).
    ``perm``: capture order (sort by ts) of the generation-order rows
    [flow packets, fragments, errors].
    """
    ft: dict
    pk: dict
    fr: dict
    er: dict
    perm: np.ndarray
    stateful: bool


def generate_traffic(world, packets: int, *, drop_share: float = 0.1, flows: int | None = None,
                     ipv6_share: float | None = None, seed: int = 0, icmp_share: float = 0.02,
                     fragment_share: float = 0.01, start_ts_ns: int = 1_700_000_000 * 10**9,
                     stateful: bool = True, calibrate: bool | None = None,
                     rate_pps: float = 200_000.0, tolerance: float = 0.005,
                     details: dict | None = None) -> PacketBatch:
    """ClassBench-style traffic for ``world`` (a ``World`` or a world dict): exactly ``packets`` rows.

    ``flows`` 5-tuples (default packets//20) with Pareto sizes, interleaved in time (~``rate_pps``
    packets per second from ``start_ts_ns``); admitted flows get replies (TCP handshake, data,
    FIN), refused ones are retransmitted SYNs / repeated datagrams; ``icmp_share`` of the
    packets are ICMP (echo flows, and one fifth ICMP errors quoting an earlier flow, with the
    ``emb_*`` columns); ``fragment_share`` are non-first fragments of earlier flows;
    ``ipv6_share`` of the flows are IPv6 where the world has IPv6 (default 0.1 when any instance
    has an IPv6 address).  About ``drop_share`` of the packets are refused (DROP or REJECT)
    under ``stateful`` (True: spec section 4 tracking; False: every packet judged by rules);
    see the module docstring for the method, ``calibrate`` (None: use the Engine when it can
    classify in that mode) and ``tolerance`` (fraction of packets).  ``details``, if given, is
    filled with what was achieved.  Same arguments -> identical arrays.
    """
    if packets < 0:
        raise ValueError("generate_traffic: packets must be >= 0")
    for name, v in (("drop_share", drop_share), ("icmp_share", icmp_share),
                    ("fragment_share", fragment_share)):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"generate_traffic: {name}={v} is not in [0, 1]")
    W = _as_world(world)
    t = _tables(W)
    if len(t.run_idx) == 0:
        raise ValueError("generate_traffic: the world has no running instance with a private IPv4")
    if ipv6_share is None:
        ipv6_share = 0.1 if len(t.run6_idx) else 0.0
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x7AFF1C]))
    info = details if details is not None else {}
    if packets == 0:
        info.update(packets=0, flows=0)
        return PacketBatch(schema.empty_columns(0))
    tr = _build_traffic(rng, t, packets, drop_share, flows, ipv6_share, icmp_share,
                        fragment_share, start_ts_ns, stateful, rate_pps)
    target = int(round(drop_share * packets))
    tol = max(1, int(tolerance * packets))
    # step 2: rebalance on the predicted verdicts
    for _ in range(6):
        drop = _predicted_drops(tr)
        info["predicted_drop_share"] = float(drop.sum() / packets)
        if abs(int(drop.sum()) - target) <= tol or not _rebalance(rng, tr, drop, target, tol):
            break
    # step 3: calibrate on the Engine's verdicts
    info["calibrated"] = False
    engine = _engine_factory(W, stateful) if calibrate is not False else None
    if calibrate and engine is None:
        warnings.warn("generate_traffic: calibrate=True but the Engine cannot classify "
                      f"{'statefully' if stateful else 'statelessly'}; using predictions only")
    if engine is not None:
        for it in range(5):
            drop = _engine_drops(engine, tr)
            info["calibrated"] = True
            info["engine_drop_share"] = float(drop.sum() / packets)
            info["calibration_rounds"] = it + 1
            if abs(int(drop.sum()) - target) <= tol or not _rebalance(rng, tr, drop, target, tol):
                break
    cols = _render(tr)
    batch = PacketBatch({k: v[tr.perm] for k, v in cols.items()})
    info.update(packets=packets, flows=len(tr.ft["size"]), target_drop_share=drop_share,
                fragments=len(tr.fr["flow"]), icmp_errors=len(tr.er["flow"]),
                reply_packets=int(_directions(tr).sum()), stateful=stateful,
                ipv6_packets=int((batch.ipver == 6).sum()))
    achieved = info.get("engine_drop_share", info.get("predicted_drop_share"))
    if achieved is not None and abs(achieved - drop_share) > max(0.01, tol / packets) + 1e-9:
        warnings.warn(f"generate_traffic: drop share {achieved:.4f} differs from the target "
                      f"{drop_share} by more than 1 percentage point (the world lacks flows of "
                      "the needed outcome)")
    return batch


def _build_traffic(rng, t, n, drop_share, flows, ipv6_share, icmp_share, fragment_share,
                   start_ts_ns, stateful, rate_pps) -> _Traffic:
    """Step 1 (construction): flow sizes, classes and outcomes, candidates, packet draws."""
    n_icmp = int(round(n * icmp_share))
    n_err = min(max(n_icmp // 5, 1 if n_icmp >= 2 else 0), max(n - 1, 0))
    n_frag = min(int(round(n * fragment_share)), max(n - 1 - n_err, 0))
    n_flow_pk = n - n_err - n_frag
    F = max(1, min(n_flow_pk, flows if flows else max(1, n // 20)))
    size = _flow_sizes(rng, n_flow_pk, F)
    # ICMP echo flows: short ones, until their packets reach the echo budget
    short = np.nonzero(size <= 20)[0]
    echo = np.zeros(F, bool)
    echo[_pick_budget(rng, size, short, n_icmp - n_err, 0)] = True
    refused = np.zeros(F, bool)
    refused[_pick_budget(rng, size, np.arange(F), int(round(drop_share * n)), 0)] = True
    weights = rng.lognormal(0.0, 1.0, t.n_inst)
    lists = _rule_lists(t)
    ft = {k: np.zeros(F, np.int64) for k in FLOW_KEYS}
    for adm in (True, False):
        for cls in (CLS_PORTS, CLS_ECHO):
            want = np.nonzero((refused != adm) & (echo == (cls == CLS_ECHO)))[0]
            _fill(rng, t, lists, ft, want, adm, cls, ipv6_share, stateful, weights)
    ft["size"] = size
    ft["refpat"] = ft["fwd_ok"] != 1
    p_reply = np.where(ft["proto"] == 6, 0.8, np.where(ft["cls"] == CLS_ECHO, 0.9, 0.5))
    reply = (~ft["refpat"]) & (size >= 2) & (rng.random(F) < p_reply) & np.isin(ft["proto"], (1, 6, 17, 58))
    if not stateful:
        reply &= ft["rev_ok"] == 1
    ft["reply"] = reply
    ft["rst"] = (ft["proto"] == 6) & reply & (rng.random(F) < 0.05)
    ft["isn_f"] = rng.integers(0, 1 << 32, F)
    ft["isn_r"] = rng.integers(0, 1 << 32, F)
    pk = _packet_draws(rng, size, n, start_ts_ns, rate_pps)
    tr = _Traffic(ft, pk, {}, {}, np.zeros(0, np.int64), stateful)
    _attach_fragments(rng, tr, n_frag, drop_share)
    _attach_errors(rng, tr, n_err, drop_share)
    ts = np.concatenate((pk["ts"], tr.fr["ts"], tr.er["ts"]))
    tr.perm = np.argsort(ts, kind="stable")
    return tr


def _flow_sizes(rng, total, F) -> np.ndarray:
    """Pareto (alpha 1.2) flow sizes >= 1 summing to ``total`` (int64[F]); the 0.1% tail is
    clipped so one flow never dominates a small trace."""
    w = rng.pareto(1.2, F) + 1.0
    w = np.minimum(w, np.quantile(w, 0.999))
    return _allocate(rng, total, w)


def _pick_budget(rng, gains, eligible, budget, tol) -> np.ndarray:
    """Indexes from ``eligible`` (random order) whose ``gains`` sum to ``budget`` within ``tol``,
    never more than budget + tol (a few greedy passes over what still fits)."""
    order = rng.permutation(np.asarray(eligible, np.int64))
    order = order[gains[order] > 0]
    chosen, remaining = [], int(budget)
    for _ in range(8):
        if remaining <= tol or len(order) == 0:
            break
        cs = np.cumsum(gains[order])
        k = int(np.searchsorted(cs, remaining + tol, side="right"))
        if k:
            chosen.append(order[:k])
            remaining -= int(cs[k - 1])
        rest = order[k:]
        order = rest[gains[rest] <= remaining + tol]
    return np.concatenate(chosen) if chosen else np.zeros(0, np.int64)


def _fill(rng, t, lists, ft, want, admitted, cls, ipv6_share, stateful, weights) -> None:
    """Key the flows ``want`` with judged candidates of that outcome and class; when the world
    has too few, the same outcome of the other class, then the other outcome."""
    if len(want) == 0:
        return
    todo = want
    for adm, c in ((admitted, cls), (admitted, 1 - cls), (not admitted, cls), (not admitted, 1 - cls)):
        pool = _pool(rng, t, lists, len(todo), adm, c, ipv6_share, stateful, weights)
        k = min(len(todo), len(pool["ver"]))
        for key in FLOW_KEYS:
            ft[key][todo[:k]] = pool[key][:k]
        todo = todo[k:]
        if len(todo) == 0:
            return
    raise ValueError("generate_traffic: could not build any flow for this world")


def _packet_draws(rng, size, n, start_ts_ns, rate_pps) -> dict:
    """Per flow-packet random draws fixed for all renders (dict of arrays, flow order).

    Timestamps: flows start uniformly over the trace (n / rate_pps seconds); a flow's packets
    follow with exponential gaps (flow median ~0.5 ms, squeezed so the flow ends by the end of
    the trace, >= 1 us so a flow's own packets never tie).
    """
    F = len(size)
    m = int(size.sum())
    flow = np.repeat(np.arange(F), size)
    start = np.concatenate(([0], np.cumsum(size)[:-1]))
    pos = np.arange(m) - start[flow]
    dur = max(n / rate_pps * 1e9, 1e3)
    f_start = rng.random(F) * dur
    gap = rng.lognormal(np.log(5e5), 1.0, F)
    gap = np.maximum(np.minimum(gap, (dur - f_start) / np.maximum(size, 1)), 1e3)
    g = np.maximum(gap[flow] * rng.exponential(1.0, m), 1e3).astype(np.int64)
    g[start] = 0
    cs = np.cumsum(g)
    ts = start_ts_ns + f_start.astype(np.int64)[flow] + cs - cs[start][flow]
    pay = np.clip(rng.lognormal(6.0, 1.3, m), 1, 1448).astype(np.int64)
    return {"flow": flow, "pos": pos, "start": start, "u_dir": rng.random(m),
            "u_pay": rng.random(m), "pay": pay, "ts": ts}


def _attach_fragments(rng, tr: _Traffic, n_frag, drop_share) -> None:
    """Non-first fragments of earlier flows (UDP preferred): a share 1-drop_share of them from
    flows whose fragments are admitted, so fragments do not skew the refused share; their
    parents are pinned (never re-keyed)."""
    ft, pk = tr.ft, tr.pk
    F = len(ft["size"])
    ft["pinned"] = np.zeros(F, bool)
    parents = _pick_parents(rng, ft, n_frag, drop_share, ft["frag_ok"] == 1,
                            np.isin(ft["proto"], (1, 6, 17, 58)), ft["proto"] == 17)
    ft["pinned"][parents] = True
    # the fragment follows a random packet of its flow by 0.5-1.5 us
    k = (rng.random(len(parents)) * ft["size"][parents]).astype(np.int64)
    ts = pk["ts"][pk["start"][parents] + k] + rng.integers(500, 1500, len(parents))
    pay = 8 * rng.integers(8, 186, len(parents))
    tr.fr = {"flow": parents, "pay": pay, "ts": ts}


def _attach_errors(rng, tr: _Traffic, n_err, drop_share) -> None:
    """ICMP errors sent back by the destination of an earlier admitted TCP/UDP flow (not one
    ended by RST), 50 us - 2 ms after its first packet; parents pinned."""
    ft, pk = tr.ft, tr.pk
    base = (ft["fwd_ok"] == 1) & ~ft["rst"]
    parents = _pick_parents(rng, ft, n_err, drop_share, ft["err_ok"] == 1, base,
                            base & np.isin(ft["proto"], (6, 17)))
    ft["pinned"][parents] = True
    ts = pk["ts"][pk["start"][parents]] + rng.integers(50_000, 2_000_000, len(parents))
    tr.er = {"flow": parents, "ts": ts}


def _pick_parents(rng, ft, n, drop_share, ok, eligible, preferred) -> np.ndarray:
    """``n`` parent flows (with repetition): round(n*(1-drop_share)) among ``ok`` flows, the
    rest among the others, restricted to ``preferred`` when any qualify, else ``eligible``,
    else any flow."""
    if n == 0:
        return np.zeros(0, np.int64)
    F = len(ft["size"])
    n_ok = int(round(n * (1 - drop_share)))
    out = []
    for want_ok, k in ((True, n_ok), (False, n - n_ok)):
        if k == 0:
            continue
        for cand in (preferred & (ok == want_ok), eligible & (ok == want_ok), preferred,
                     eligible, np.ones(F, bool)):
            idx = np.nonzero(cand)[0]
            if len(idx):
                out.append(rng.choice(idx, k))
                break
    return np.concatenate(out)


def _directions(tr: _Traffic) -> np.ndarray:
    """bool per flow packet: True for a reply (destination -> source)."""
    ft, pk = tr.ft, tr.pk
    pos = pk["pos"]
    return ft["reply"][pk["flow"]] & ((pos == 1) | ((pos >= 2) & (pk["u_dir"] < 0.45)))


def _predicted_drops(tr: _Traffic) -> np.ndarray:
    """bool per generation-order row: predicted refused (from the candidates' judged keys)."""
    ft, pk = tr.ft, tr.pk
    f = pk["flow"]
    rev = _directions(tr)
    fwd_bad = ft["fwd_ok"][f] == 0
    if tr.stateful:
        flow_drop = fwd_bad      # the first packet decides; later ones and replies ride tracking
    else:
        flow_drop = np.where(rev, ft["rev_ok"][f] == 0, fwd_bad)
    return np.concatenate((flow_drop, ft["frag_ok"][tr.fr["flow"]] == 0,
                           ft["err_ok"][tr.er["flow"]] == 0))


def _rebalance(rng, tr: _Traffic, drop, target, tol) -> bool:
    """Re-key whole unpinned flows to copies of flows of the other outcome so the refused
    packets move toward ``target``; ``drop`` is bool per generation-order row.  Returns False
    when nothing could be changed."""
    ft, pk = tr.ft, tr.pk
    F = len(ft["size"])
    nfp = len(pk["flow"])
    d = np.bincount(pk["flow"], weights=drop[:nfp], minlength=F).astype(np.int64)
    size = ft["size"]
    excess = int(drop.sum()) - target
    free = ~ft["pinned"]
    if excess > 0:      # too many refused: turn refused flows into admitted ones
        gains, eligible = d, np.nonzero(free & (d > 0))[0]
        tmpl = np.nonzero((d == 0) & ~ft["refpat"])[0]
    else:               # too few: turn admitted flows into refused ones
        gains, eligible = size - d, np.nonzero(free & (d < size))[0]
        tmpl = np.nonzero((d == size) & ft["refpat"])[0]
    if len(tmpl) == 0 or len(eligible) == 0:
        return False
    pick = _pick_budget(rng, gains, eligible, abs(excess), tol)
    if len(pick) == 0:
        return False
    # prefer a template of the same class (keeps the ICMP share)
    src = tmpl[rng.integers(0, len(tmpl), len(pick))]
    for cls in (CLS_PORTS, CLS_ECHO):
        same = tmpl[ft["cls"][tmpl] == cls]
        m = ft["cls"][pick] == cls
        if len(same) and m.any():
            src[m] = same[rng.integers(0, len(same), m.sum())]
    keep_reply = ft["reply"][pick] & (ft["reply"][src] | tr.stateful) & (excess > 0)
    for key in FLOW_KEYS:
        ft[key][pick] = ft[key][src]
    ft["reply"][pick] = keep_reply
    ft["refpat"][pick] = ft["refpat"][src]
    ft["rst"][pick] &= keep_reply
    # a fresh source port / echo id: a new flow for tracking, the same verdict for the rules
    ident = rng.integers(EPHEMERAL_LO, EPHEMERAL_HI + 1, len(pick))
    echo = ft["cls"][pick] == CLS_ECHO
    ports = np.isin(ft["proto"][pick], (6, 17))
    ft["sport"][pick] = np.where(echo | ports, ident, 0)
    ft["dport"][pick] = np.where(echo, ident, ft["dport"][pick])
    return True


def _engine_factory(W, stateful):
    """A callable giving an Engine for ``W`` in the wanted mode with fresh tracking state
    (stateless engines are reused), or None when the Engine cannot classify in that mode."""
    try:
        from .engine import Engine
        first = [Engine(W, stateful=stateful, flow_log=False)]
    except (ImportError, NotImplementedError):
        return None

    def make():
        if first:
            return first[0] if not stateful else first.pop()
        return Engine(W, stateful=stateful, flow_log=False)
    return make


def _engine_drops(engine, tr: _Traffic) -> np.ndarray:
    """bool per generation-order row: refused (DROP or REJECT) by a fresh Engine."""
    from .engine import Verdict
    cols = _render(tr)
    batch = PacketBatch({k: v[tr.perm] for k, v in cols.items()})
    v = engine().classify(batch).verdict
    drop = np.empty(len(v), bool)
    drop[tr.perm] = (v == Verdict.DROP) | (v == Verdict.REJECT)
    return drop


def _render(tr: _Traffic) -> dict:
    """Schema columns of every row in generation order [flow packets, fragments, errors]."""
    n = len(tr.pk["flow"]) + len(tr.fr["flow"]) + len(tr.er["flow"])
    cols = schema.empty_columns(n)
    a = len(tr.pk["flow"])
    b = a + len(tr.fr["flow"])
    _render_flow_packets(tr, cols, slice(0, a))
    _render_fragments(tr, cols, slice(a, b))
    _render_errors(tr, cols, slice(b, n))
    cols["status"][:] = schema.STATUS_IP
    cols["caplen"][:] = cols["wirelen"]
    return cols


def _put(cols, sl, **values) -> None:
    """cols[name][sl] = value for each keyword (numpy casts to the schema dtype)."""
    for k, v in values.items():
        cols[k][sl] = v


def _l3_len(ver) -> np.ndarray:
    return np.where(ver == 6, 40, 20)


def _render_flow_packets(tr: _Traffic, cols, sl) -> None:
    """Headers of the flow packets: direction, TCP flags/seq/ack, echo types, lengths."""
    ft, pk = tr.ft, tr.pk
    f, pos = pk["flow"], pk["pos"]
    rev = _directions(tr)
    size = ft["size"][f]
    ver, proto = ft["ver"][f], ft["proto"][f]
    tcp, udp = proto == 6, proto == 17
    echo = ft["cls"][f] == CLS_ECHO
    refpat = ft["refpat"][f]
    src_hi, src_lo, dst_hi, dst_lo = (ft[k][f] for k in ("src_hi", "src_lo", "dst_hi", "dst_lo"))
    sport, dport = ft["sport"][f], ft["dport"][f]
    last = (pos == size - 1) & (pos >= 2)
    syn = (pos == 0) | refpat
    synack = (pos == 1) & rev
    fin = last & ~refpat
    data = ~syn & ~synack & ~fin
    pay = np.where(tcp, np.where(data & (pk["u_pay"] >= 0.35), pk["pay"], 0),
                   np.where(udp, np.clip(pk["pay"], 16, 1472),
                            np.where(echo, 56, np.clip(pk["pay"], 20, 1400))))
    flags = np.select([syn, synack, fin & ft["rst"][f], fin],
                      [schema.TCP_SYN, schema.TCP_SYN | schema.TCP_ACK, schema.TCP_RST | schema.TCP_ACK,
                       schema.TCP_FIN | schema.TCP_ACK],
                      schema.TCP_ACK | np.where(pay > 0, schema.TCP_PSH, 0))
    seq, ack = _seq_ack(tr, rev, pay, pos)
    l4 = np.where(tcp, 20, np.where(udp | echo, 8, 0))
    ity = np.where(echo, np.where(rev, np.where(ver == 6, 129, 0), ft["ity"][f]), 0)
    _put(cols, sl, ipver=ver, proto=proto,
         src_hi=np.where(rev, dst_hi, src_hi), src_lo=np.where(rev, dst_lo, src_lo),
         dst_hi=np.where(rev, src_hi, dst_hi), dst_lo=np.where(rev, src_lo, dst_lo),
         sport=np.where(rev, dport, sport), dport=np.where(rev, sport, dport),
         icmp_type=ity, icmp_id=np.where(echo, sport, 0),
         tcp_flags=np.where(tcp, flags, 0), tcp_seq=np.where(tcp & ~refpat, seq, np.where(tcp, ft["isn_f"][f], 0)),
         tcp_ack=np.where(tcp & ~refpat & (pos > 0), ack, 0),
         l4_payload_len=pay, wirelen=14 + _l3_len(ver) + l4 + pay, ts=pk["ts"])


def _seq_ack(tr: _Traffic, rev, pay, pos):
    """TCP sequence/acknowledgement numbers (uint32 as int64) from the bytes each side sent
    before the packet; the SYN and SYN-ACK count one each."""
    ft, pk = tr.ft, tr.pk
    f, start = pk["flow"], pk["start"][pk["flow"]]
    pf = np.where(rev, 0, pay)
    pr = np.where(rev, pay, 0)
    cf = np.cumsum(pf) - pf
    cr = np.cumsum(pr) - pr
    cf = cf - cf[start]
    cr = cr - cr[start]
    seq = np.where(rev, ft["isn_r"][f] + (pos > 1) + cr, ft["isn_f"][f] + (pos > 0) + cf)
    ack = np.where(rev, ft["isn_f"][f] + 1 + cf, ft["isn_r"][f] + 1 + cr)
    return seq & 0xFFFFFFFF, ack & 0xFFFFFFFF


def _render_fragments(tr: _Traffic, cols, sl) -> None:
    """Non-first fragments: the parent's addresses and protocol, no ports (frag = 1)."""
    ft, fr = tr.ft, tr.fr
    f = fr["flow"]
    ver = ft["ver"][f]
    _put(cols, sl, ipver=ver, proto=ft["proto"][f], src_hi=ft["src_hi"][f], src_lo=ft["src_lo"][f],
         dst_hi=ft["dst_hi"][f], dst_lo=ft["dst_lo"][f], frag=1, l4_payload_len=fr["pay"],
         wirelen=14 + _l3_len(ver) + np.where(ver == 6, 8, 0) + fr["pay"], ts=fr["ts"])


def _render_errors(tr: _Traffic, cols, sl) -> None:
    """ICMP errors from the flow's destination back to its source, quoting the first packet's
    header (``emb_*``); the ICMP payload is the quote (v4: 20 + 8 bytes, v6: 40 + 8)."""
    ft, er = tr.ft, tr.er
    f = er["flow"]
    ver, proto = ft["ver"][f], ft["proto"][f]
    ety, eco = _error_type(ver, proto)
    quote = np.where(ver == 6, 48, 28)
    _put(cols, sl, ipver=ver, proto=np.where(ver == 6, 58, 1), src_hi=ft["dst_hi"][f],
         src_lo=ft["dst_lo"][f], dst_hi=ft["src_hi"][f], dst_lo=ft["src_lo"][f], icmp_type=ety,
         icmp_code=eco, emb_valid=1, emb_proto=proto, emb_src_hi=ft["src_hi"][f],
         emb_src_lo=ft["src_lo"][f], emb_dst_hi=ft["dst_hi"][f], emb_dst_lo=ft["dst_lo"][f],
         emb_sport=ft["sport"][f], emb_dport=ft["dport"][f], l4_payload_len=quote,
         wirelen=14 + _l3_len(ver) + 8 + quote, ts=er["ts"])
