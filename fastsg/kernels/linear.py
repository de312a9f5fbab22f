"""Baseline: classify by walking a rule list (the iptables model).

``scan_all=True`` walks every rule of every policy, each rule testing its own policy
direction first, as one flat iptables chain of ``-d <instance set> ... -j`` rules would;
``scan_all=False`` walks only the rules of the packet's policy direction, as a per-instance
chain reached by a jump would.  Same verdicts and deciding rules as ``classify._classify_stateless``; only the rule
lookup differs (a walk over all rules instead of two interval-table searches).
"""
from __future__ import annotations

from numba import prange

from ..compile import tables as T
from ..config import BLOCK_PACKETS, njit
from ..schema import STATUS_IP, STATUS_MALFORMED
from .lookup import (_INST, _INST_GROUP_LIST, _PD, _RANK, ACCEPT, MALFORMED, NO_RANK, UNMANAGED,
                     find_instance, port_key, ranked_outcome)


@njit(parallel=True)
def _classify_linear(t, L, p, scan_all, verdict, egress_rule, ingress_rule):
    """t: KernelTables; L: LinearTables; p: PacketColumns.  Outputs as the fast kernel."""
    I, U64, O = t.i32, t.u64, t.off
    o_inst, o_groups, o_pd, o_rank = O[_INST], O[_INST_GROUP_LIST], O[_PD], O[_RANK]
    n = len(p.status)
    nblocks = (n + BLOCK_PACKETS - 1) // BLOCK_PACKETS
    for b in prange(nblocks):
        for i in range(b * BLOCK_PACKETS, min(n, (b + 1) * BLOCK_PACKETS)):
            st = p.status[i]
            egress_rule[i] = -1
            ingress_rule[i] = -1
            if st != STATUS_IP:
                verdict[i] = MALFORMED if st == STATUS_MALFORMED else UNMANAGED
                continue
            ver = p.ipver[i]
            s_val = find_instance(I, U64, O, t.addr4_shift, t.addr6_shift, ver, p.src_hi[i], p.src_lo[i])
            d_val = find_instance(I, U64, O, t.addr4_shift, t.addr6_shift, ver, p.dst_hi[i], p.dst_lo[i])
            if s_val < 0 and d_val < 0:
                verdict[i] = UNMANAGED
                continue
            pr = p.proto[i]
            key = port_key(pr, p.dport[i], p.icmp_type[i], p.icmp_code[i], p.frag[i])
            v = ACCEPT
            for side in range(2):
                if side == 0:
                    if s_val < 0:
                        continue
                    inst, direction, phi, plo, pval = s_val >> 1, 1, p.dst_hi[i], p.dst_lo[i], d_val
                else:
                    if d_val < 0 or v != ACCEPT:
                        continue
                    inst, direction, phi, plo, pval = d_val >> 1, 0, p.src_hi[i], p.src_lo[i], s_val
                irec = o_inst + inst * T.INST_STRIDE
                pd = I[irec + T.INST_POLICY] * 2 + direction
                peer = -1
                if pval >= 0 and (pval & 1) == 0:
                    peer = pval >> 1
                    if I[o_inst + peer * T.INST_STRIDE + T.INST_REGION] != I[irec + T.INST_REGION]:
                        peer = -1
                best = NO_RANK
                r0, r1 = L.pd_start[pd], L.pd_start[pd + 1]
                if scan_all:
                    r0, r1 = 0, len(L.rank)
                for r in range(r0, r1):
                    if L.pd[r] != pd or L.rank[r] >= best:
                        continue
                    rp = L.proto[r]
                    if (rp != -1 and rp != pr) or key < L.key_lo[r] or key > L.key_hi[r]:
                        continue
                    if L.key_code[r] >= 0 and (key & 255) != L.key_code[r]:
                        continue            # an ICMP code of any type
                    kind = L.kind[r]
                    hit = False
                    if kind == 0:
                        if peer >= 0:
                            prec = o_inst + peer * T.INST_STRIDE
                            g0 = o_groups + I[prec + T.INST_GROUPS_START]
                            for q in range(I[prec + T.INST_NGROUPS]):
                                if I[g0 + q] == L.group[r]:
                                    hit = True
                    elif kind == ver:
                        a_hi, a_lo = L.bounds[4 * r], L.bounds[4 * r + 1]
                        z_hi, z_lo = L.bounds[4 * r + 2], L.bounds[4 * r + 3]
                        above = phi > a_hi or (phi == a_hi and plo >= a_lo)
                        below = phi < z_hi or (phi == z_hi and plo <= z_lo)
                        hit = above and below
                    if hit:
                        best = L.rank[r]
                v, rule = ranked_outcome(I, o_rank, o_pd + pd * T.PD_STRIDE, best)
                if side == 0:
                    egress_rule[i] = rule
                else:
                    ingress_rule[i] = rule
            verdict[i] = v
