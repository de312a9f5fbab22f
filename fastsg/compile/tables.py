"""``KernelTables``: the immutable compiled world the kernels read.

All arrays are read-only.  A *policy direction* is ``pd = policy * 2 + direction``
(direction 0 ingress, 1 egress).  Things read together for one packet sit together:
fixed-size *records* interleave their fields (one cache line instead of several), and
the sections are packed into four typed blobs, so the working set stays small (cache
misses, not instructions, set the speed at 10k rules and more).
"""
from __future__ import annotations

from collections import namedtuple

import numpy as np

# Record layouts: field offsets within a record, and the record stride.
PD_RANK_START, PD_SLOT_START, PD_DEFAULT_ACCEPT = 0, 1, 2
# The SLOT records of the common protocols are copied into the PD record (tcp at PD_INLINE,
# udp 3 further, ...), saving the protocol map and the slot record: two cache lines a check.
PD_INLINE_PROTOCOLS = (6, 17, 1, 58)    # the classify kernel spells this order out
PD_INLINE = 4
PD_STRIDE = 16
SLOT_WILD, SLOT_PT_START, SLOT_PT_LEN, SLOT_STRIDE = 0, 1, 2, 3
CLS_V4_START, CLS_V4_LEN, CLS_V6_START, CLS_V6_LEN, CLS_GRP_START, CLS_GRP_LEN = range(6)
# A class's IPv4 table of at most CLS_INLINE entries is also copied into its record (starts
# as int32 bit patterns, then ranks), so the common small table costs no extra cache lines.
CLS_INLINE = 5
CLS_V4_INLINE_START = 6
CLS_V4_INLINE_RANK = CLS_V4_INLINE_START + CLS_INLINE
CLS_STRIDE = CLS_V4_INLINE_RANK + CLS_INLINE        # 16 int32: one 64-byte record
GRP_RANK, GRP_GROUP, GRP_STRIDE = 0, 1, 2
RANK_RULE, RANK_ACTION, RANK_STRIDE = 0, 1, 2
INST_POLICY, INST_REGION, INST_GROUPS_START, INST_NGROUPS, INST_STRIDE = range(5)

# Sections of the flat table blobs, by element type.  The kernels receive four arrays
# (one per type) and the start of every section in ``off``: passing a few flat arrays keeps
# numba from reference-counting dozens of arrays per packet.
I32_SECTIONS = (
    "pd",                # PD records: rank start, slot start, 1 when no match means ACCEPT
    "rank",              # RANK records: global rule index (into rule_names), action 0/1/2
    "slot",              # SLOT records: wild class (-1 none), port table start, its length
    "pt_start_key",      # first port key of each port interval
    "pt_class",          # class of each port interval, -1 none
    "cls",               # CLS records: IPv4/IPv6 interval table and group list (start, length)
    "v4_rank",           # least rank on each IPv4 interval (0x7FFFFFFF none)
    "v6_rank",
    "grp",               # GRP records (rank, group index), by rank within a class
    "inst",              # INST records: policy, region, start/count in inst_group_list
    "inst_group_list",   # group indexes of each instance, in order
    "addr6_val",         # IPv6 address hash values: inst*2 + is_public, -1 empty
)
U32_SECTIONS = ("v4_start",)
U64_SECTIONS = (
    "addr4",             # IPv4 address hash slots: address << 32 | (inst*2 + is_public); empty: low half all ones
    "v6_start_hi", "v6_start_lo", "addr6_hi", "addr6_lo",
)
U8_SECTIONS = ("pd_proto_slot",)   # 256 per pd: protocol -> slot within the pd
SECTIONS = I32_SECTIONS + U32_SECTIONS + U64_SECTIONS + U8_SECTIONS
SECTION = {name: i for i, name in enumerate(SECTIONS)}
SECTION_DTYPE = {**{n: np.int32 for n in I32_SECTIONS}, **{n: np.uint32 for n in U32_SECTIONS},
                 **{n: np.uint64 for n in U64_SECTIONS}, **{n: np.uint8 for n in U8_SECTIONS}}

# i32/u32/u64/u8: the blobs; off: int64[len(SECTIONS)] section starts;
# addr4_shift/addr6_shift: 64 - log2(hash table size).
KernelTables = namedtuple("KernelTables", ["i32", "u32", "u64", "u8", "off", "addr4_shift",
                                           "addr6_shift"])

MAX_GROUPS = 16         # max groups per instance (spec: limits.groups_per_instance <= 16)
ADDR4_EMPTY_VAL = 0xFFFFFFFF   # low half of an empty addr4 slot (-1 as uint32)


def pack(arrays: dict, addr4_shift: int, addr6_shift: int) -> KernelTables:
    """Section arrays (by name) -> read-only ``KernelTables``."""
    off = np.zeros(len(SECTIONS), np.int64)
    blobs = []
    for group, dtype in ((I32_SECTIONS, np.int32), (U32_SECTIONS, np.uint32),
                         (U64_SECTIONS, np.uint64), (U8_SECTIONS, np.uint8)):
        parts, pos = [], 0
        for name in group:
            a = np.asarray(arrays[name], dtype=dtype).reshape(-1)
            off[SECTION[name]] = pos
            parts.append(a)
            pos += len(a)
        blob = np.concatenate(parts + [np.zeros(1, dtype)])   # never empty
        blob.flags.writeable = False
        blobs.append(blob)
    off.flags.writeable = False
    return KernelTables(*blobs, off, np.int64(addr4_shift), np.int64(addr6_shift))


def section(t: KernelTables, name: str) -> np.ndarray:
    """A view of one section (for inspection and tests)."""
    names = {np.int32: I32_SECTIONS, np.uint32: U32_SECTIONS, np.uint64: U64_SECTIONS,
             np.uint8: U8_SECTIONS}
    dtype = SECTION_DTYPE[name]
    group = names[dtype]
    blob = {np.int32: t.i32, np.uint32: t.u32, np.uint64: t.u64, np.uint8: t.u8}[dtype]
    k = group.index(name)
    start = t.off[SECTION[name]]
    end = t.off[SECTION[group[k + 1]]] if k + 1 < len(group) else len(blob) - 1
    return blob[start:end]
