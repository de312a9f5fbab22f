"""Fuzzing the capture reader (in-process, hypothesis).

1. Framing: bit flips, truncations and absurd length fields in sample and generated files
   must only ever give a batch (with sane offsets) or a ``CaptureError`` -- no other
   exception, no hang, no crash.
2. Headers: random damage to the *packet bytes* inside intact framing must decode exactly
   as the independent reference decodes it.
"""
from __future__ import annotations

import logging
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, UDPerror
from scapy.layers.inet6 import ICMPv6DestUnreach, ICMPv6EchoRequest, IPv6, IPerror6
from scapy.layers.l2 import CookedLinux, Ether

from capture_reference import FIELDS, PcapngBuilder, decode, pcap_bytes
from fastsg.capture import iter_capture, read_capture
from fastsg.errors import CaptureError

logging.getLogger("scapy").setLevel(logging.ERROR)

PCAPS = Path(__file__).resolve().parents[2] / "shared" / "data" / "pcaps"
# derandomized: the same examples on every run (CI stays reproducible); < 30 s in all
FUZZ = dict(deadline=None, derandomize=True,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                   HealthCheck.data_too_large])

FRAMES = [
    bytes(Ether() / IP(src="10.0.0.1", dst="10.0.0.2", options=[b"\x01" * 4])
          / TCP(sport=1, dport=2, flags="S") / b"x"),
    bytes(Ether() / IPv6(src="::1", dst="::2", nh=0, plen=16)) + bytes([17, 0]) + bytes(6)
    + bytes(UDP(sport=3, dport=4, len=8)),
    bytes(Ether(type=0x8100) / b"\x00\x05\x08\x00" / IP() / ICMP(type=3) / IPerror()
          / UDPerror(sport=5, dport=6)),
    bytes(Ether() / IPv6() / ICMPv6DestUnreach() / IPerror6() / ICMPv6EchoRequest(id=9)),
    bytes(CookedLinux(proto=0x800) / IP(frag=3) / b"frag"),
]


def _generated() -> list[bytes]:
    frames = [(f, 10**18 + i) for i, f in enumerate(FRAMES)]
    ng = PcapngBuilder().shb().idb(1, tsresol=0x80 | 20, tsoffset=5)
    for f, t in frames:
        ng.epb(0, f, t)
    ng.spb(FRAMES[0]).shb(big=True).idb(113, snaplen=30).pb(0, FRAMES[4], 1).spb(FRAMES[4])
    return [pcap_bytes(frames), pcap_bytes(frames, big=True, nano=True), ng.bytes()]


def _samples() -> list[bytes]:
    if not PCAPS.exists():
        return []
    return [p.read_bytes() for p in sorted(PCAPS.glob("*.pcap*")) if p.stat().st_size < 40_000]


SEEDS = _generated() + _samples()
ABSURD = [0, 1, 11, 12, 13, 0xFFFFFFFF, 0x7FFFFFFF, 0x10000001, 262145, 0x0A0D0D0A]


@st.composite
def damaged(draw):
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "byte", "u32", "cut"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if not data:
            break
        if kind == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte":
            data[pos] = draw(st.integers(0, 255))
        elif kind == "u32":
            data[pos:pos + 4] = struct.pack(draw(st.sampled_from(["<I", ">I"])),
                                            draw(st.sampled_from(ABSURD)))
        else:
            del data[pos:]
    return bytes(data)


def _check_batch(batch, size):
    n = len(batch)
    if n == 0:
        return
    off = batch.rec_offset.astype(np.int64)
    assert (off >= 0).all() and (off + batch.caplen <= size).all()
    assert set(np.unique(batch.status).tolist()) <= {0, 1, 2}
    assert set(np.unique(batch.ipver).tolist()) <= {0, 4, 6}
    ip = batch.status == 0
    assert (batch.ipver[ip] != 0).all()
    l3 = batch.l3_offset.astype(np.int64)
    assert ((l3 == -1) | ((l3 >= 0) & (l3 <= batch.caplen))).all()


@settings(max_examples=150, **FUZZ)
@given(data=damaged(), chunk=st.sampled_from([1, 3, 1 << 20]))
def test_damaged_files_give_a_batch_or_capture_error(tmp_path, data, chunk):
    path = tmp_path / "fuzz.cap"
    path.write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            it = iter_capture(path, chunk_packets=chunk)
            batches = list(it)
        except CaptureError as e:
            assert e.path == str(path)
            return
    for b in batches:
        _check_batch(b, len(data))
    assert it.stats.records == sum(len(b) for b in batches)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            whole = read_capture(path)
        except CaptureError:
            pytest.fail("read_capture failed where iter_capture did not")
    assert len(whole) == it.stats.records


@st.composite
def damaged_packet(draw):
    frame = bytearray(draw(st.sampled_from(FRAMES)))
    for _ in range(draw(st.integers(0, 4))):
        pos = draw(st.integers(0, len(frame) - 1))
        frame[pos] = draw(st.one_of(st.integers(0, 255), st.sampled_from([0, 4, 5, 6, 0x45,
                                                                            0x60, 44, 51])))
    cut = draw(st.integers(0, len(frame)))
    lt = draw(st.sampled_from([1, 0, 101, 113, 229, 276]))
    return bytes(frame[:cut]), lt


@settings(max_examples=100, **FUZZ)
@given(packets=st.lists(damaged_packet(), min_size=1, max_size=8))
def test_damaged_packets_decode_as_the_reference(tmp_path, packets):
    by_lt: dict[int, list] = {}
    for frame, lt in packets:
        by_lt.setdefault(lt, []).append(frame)
    for lt, frames in by_lt.items():
        path = tmp_path / f"pkt{lt}.pcap"
        path.write_bytes(pcap_bytes([(f, 0, 1500) for f in frames], linktype=lt))
        batch = read_capture(path)
        for i, f in enumerate(frames):
            want = decode(f, lt)
            got = {k: int(batch.columns[k][i]) for k in FIELDS if k not in ("ts", "wirelen")}
            assert got == {k: want[k] for k in got}, (lt, f.hex())
