"""Tables for the linear-scan baseline: every rule of a policy direction, one after another.

This is the iptables model (each packet walks a rule list), used by ``fastsg bench`` and
``bench/`` as the baseline the interval tables are measured against.  It reuses the
instance and address tables of a ``CompiledWorld`` and the same ranks, so it decides
exactly like the real classifier.
"""
from __future__ import annotations

from collections import namedtuple

import numpy as np

from .compiler import DIRECTIONS, Compiler
from .policy import FRAG_KEY, ICMP_PROTOCOLS, PORT_PROTOCOLS, rank_rules

# pd_start int64[npd+1]: rules of pd k are [pd_start[k], pd_start[k+1]).  Per rule: pd int32
# (its policy direction), proto int16
# (-1 all), key_lo/key_hi int32 (port key range, FRAG_KEY included when the rule ignores
# ports), key_code int16 (an ICMP code of any type: the key's low byte must be it; else -1),
# kind uint8 (4 IPv4 CIDR, 6 IPv6 CIDR, 0 group), lo/hi uint64[4 per rule] (IPv4:
# [0, lo, 0, hi]; IPv6: lo_hi, lo_lo, hi_hi, hi_lo), group int32, rank int32.
LinearTables = namedtuple("LinearTables", ["pd_start", "pd", "proto", "key_lo", "key_hi", "key_code",
                                           "kind", "bounds", "group", "rank"])


def _key_range(rule) -> tuple[int, int, int]:
    """(key_lo, key_hi, key_code) of a rule (see LinearTables)."""
    if rule.protocol in PORT_PROTOCOLS and not (rule.port_lo == 0 and rule.port_hi == 65535):
        return rule.port_lo, rule.port_hi, -1
    if rule.protocol in ICMP_PROTOCOLS and rule.icmp_type >= 0:
        if rule.icmp_code < 0:
            return rule.icmp_type * 256, rule.icmp_type * 256 + 255, -1
        k = rule.icmp_type * 256 + rule.icmp_code
        return k, k, -1
    if rule.protocol in ICMP_PROTOCOLS and rule.icmp_code >= 0:
        return 0, FRAG_KEY - 1, rule.icmp_code       # any type: every ICMP key, this code
    return 0, FRAG_KEY, -1


def build_linear(compiler: Compiler) -> LinearTables:
    """Linear tables for the policies of the compiler's current ``CompiledWorld``."""
    compiler.refresh()
    cols = {k: [] for k in ("pd", "proto", "key_lo", "key_hi", "key_code", "kind", "bounds", "group",
                            "rank")}
    pd_start = [0]
    for policy, (group_ids, order) in enumerate(compiler.policy_keys):
        for direction in DIRECTIONS:
            rules = compiler.canonical_rules(policy, direction)
            ranks = rank_rules(rules, order) if rules else []
            for rule, rank in zip(rules, ranks):
                lo, hi, code = _key_range(rule)
                cols["pd"].append(len(pd_start) - 1)
                cols["proto"].append(rule.protocol)
                cols["key_lo"].append(lo)
                cols["key_hi"].append(hi)
                cols["key_code"].append(code)
                if rule.group is not None:
                    cols["kind"].append(0)
                    cols["bounds"].append((0, 0, 0, 0))
                    cols["group"].append(compiler.groups.get(rule.group))
                else:
                    a, z = int(rule.cidr.network_address), int(rule.cidr.broadcast_address)
                    m = 0xFFFFFFFFFFFFFFFF
                    cols["kind"].append(rule.cidr.version)
                    cols["bounds"].append((a >> 64, a & m, z >> 64, z & m))
                    cols["group"].append(-1)
                cols["rank"].append(int(rank))
            pd_start.append(pd_start[-1] + len(rules))
    return LinearTables(
        pd_start=np.array(pd_start, np.int64), pd=np.array(cols["pd"], np.int32), proto=np.array(cols["proto"], np.int16),
        key_lo=np.array(cols["key_lo"], np.int32), key_hi=np.array(cols["key_hi"], np.int32),
        key_code=np.array(cols["key_code"], np.int16),
        kind=np.array(cols["kind"], np.uint8),
        bounds=np.array(cols["bounds"], np.uint64).reshape(-1) if cols["bounds"] else np.zeros(0, np.uint64),
        group=np.array(cols["group"], np.int32), rank=np.array(cols["rank"], np.int32))
