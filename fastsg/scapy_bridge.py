"""scapy packet -> one row of schema values (for ``PacketBatch.from_scapy``).

Slow by nature (scapy is pure Python); meant for tests and small hand-made batches.
"""
from __future__ import annotations

from . import schema

ICMP4_ERRORS = (3, 4, 5, 11, 12)
ICMP6_ERRORS = (1, 2, 3, 4)
ECHO = {1: (8, 0), 58: (128, 129)}
IPV6_EXT = (0, 43, 44, 51, 60, 135, 139, 140)


def _split(value: int) -> tuple[int, int]:
    return value >> 64, value & 0xFFFFFFFFFFFFFFFF


def header_row(pkt) -> dict:
    """Schema values of one scapy packet (Ether, or IP/IPv6 first)."""
    from scapy.layers.inet import IP
    from scapy.layers.inet6 import IPv6

    raw = bytes(pkt)
    row = {"ts": int(round(float(getattr(pkt, "time", 0)) * 1e9)), "wirelen": len(raw),
           "caplen": len(raw)}
    ip = pkt.getlayer(IP) if pkt.haslayer(IP) else None
    ip6 = pkt.getlayer(IPv6) if pkt.haslayer(IPv6) else None
    # the outermost IP layer is the packet's own header
    layer = None
    for candidate in (ip, ip6):
        if candidate is not None and (layer is None or _depth(pkt, candidate) < _depth(pkt, layer)):
            layer = candidate
    if layer is None:
        row["status"] = schema.STATUS_NON_IP
        return row
    row["status"] = schema.STATUS_IP
    if layer is ip:
        row.update(_ipv4(layer))
    else:
        row.update(_ipv6(layer))
    return row


def _depth(pkt, layer) -> int:
    d, cur = 0, pkt
    while cur is not None and cur is not layer:
        cur = cur.payload if cur.payload else None
        d += 1
    return d


def _ipv4(ip) -> dict:
    import ipaddress
    row = {"ipver": 4, "proto": ip.proto, "src_lo": int(ipaddress.IPv4Address(ip.src)),
           "dst_lo": int(ipaddress.IPv4Address(ip.dst))}
    if ip.frag > 0:
        row["frag"] = 1
        return row
    row.update(_l4(ip.proto, ip.payload, 4))
    return row


def _ipv6(ip6) -> dict:
    import ipaddress
    s_hi, s_lo = _split(int(ipaddress.IPv6Address(ip6.src)))
    d_hi, d_lo = _split(int(ipaddress.IPv6Address(ip6.dst)))
    row = {"ipver": 6, "src_hi": s_hi, "src_lo": s_lo, "dst_hi": d_hi, "dst_lo": d_lo}
    nh, layer = ip6.nh, ip6.payload
    while nh in IPV6_EXT and layer is not None and hasattr(layer, "nh"):
        if nh == 44 and getattr(layer, "offset", 0) > 0:
            row["proto"] = layer.nh
            row["frag"] = 1
            return row
        nh, layer = layer.nh, layer.payload
    row["proto"] = nh
    row.update(_l4(nh, layer, 6))
    return row


def _l4(proto: int, l4, ipver: int) -> dict:
    row = {}
    if proto in (6, 17) and hasattr(l4, "sport"):
        row["sport"], row["dport"] = l4.sport, l4.dport
        if proto == 6:
            row["tcp_flags"] = int(l4.flags) & 0xFF
            row["tcp_seq"], row["tcp_ack"] = l4.seq, l4.ack
        row["l4_payload_len"] = len(bytes(l4.payload))
    elif proto in (1, 58) and hasattr(l4, "type"):
        row["icmp_type"], row["icmp_code"] = l4.type, getattr(l4, "code", 0)
        if l4.type in ECHO[proto]:
            ident = getattr(l4, "id", 0)
            row["icmp_id"] = row["sport"] = row["dport"] = ident
        errors = ICMP4_ERRORS if proto == 1 else ICMP6_ERRORS
        if l4.type in errors:
            row.update(_embedded(l4.payload))
    return row


def _embedded(inner) -> dict:
    """The header quoted by an ICMP error (scapy's IPerror / IPv6 in ICMPv6 errors)."""
    import ipaddress
    if inner is None or not hasattr(inner, "src") or not hasattr(inner, "dst"):
        return {}
    version = getattr(inner, "version", 4)
    try:
        src = int(ipaddress.ip_address(inner.src))
        dst = int(ipaddress.ip_address(inner.dst))
    except ValueError:
        return {}
    proto = inner.proto if version == 4 else inner.nh
    row = {"emb_valid": 1, "emb_proto": proto}
    row["emb_src_hi"], row["emb_src_lo"] = _split(src)
    row["emb_dst_hi"], row["emb_dst_lo"] = _split(dst)
    l4 = inner.payload
    if proto in (6, 17) and hasattr(l4, "sport"):
        row["emb_sport"], row["emb_dport"] = l4.sport, l4.dport
    elif proto in (1, 58) and hasattr(l4, "id"):
        row["emb_sport"] = row["emb_dport"] = l4.id
    return row
