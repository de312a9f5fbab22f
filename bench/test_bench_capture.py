"""Capture reader benchmarks (pytest-benchmark).

    python -m pytest bench/test_bench_capture.py --benchmark-columns=median,min,max,rounds

* ``read_capture`` on a 1M-packet synthetic Ethernet pcap (generated with numpy into a temp
  folder, so it is in the page cache), with 1 and 2 numba threads; the JIT is warmed first.
  Target: >= 15 M packets/s with 2 threads.
* scapy's ``rdpcap`` and fastsg on a 2k-packet file of the same traffic, for the per-packet
  speed ratio (target >= 1000x).

Packets per second are in each benchmark's ``extra_info``; the last test prints a summary.
"""
from __future__ import annotations

import numba
import numpy as np
import pytest

from fastsg.capture import read_capture

N_BIG = 1_000_000
N_SMALL = 2_000
FRAME = 74                     # Ethernet + IPv4 + TCP (32-byte header) / UDP + payload
_RESULTS: dict[str, float] = {}


def synthetic_ethernet_pcap(path, n: int, seed: int = 0) -> None:
    """Write ``n`` Ethernet/IPv4 frames of 74 bytes (70% TCP SYN-ACK, 30% UDP, random
    addresses and ports) as a little-endian nanosecond pcap, built whole with numpy."""
    rng = np.random.default_rng(seed)
    rec = np.zeros((n, 16 + FRAME), np.uint8)
    hdr = rec[:, :16].view("<u4")
    ts = 1_700_000_000 * 10**9 + np.arange(n, dtype=np.int64) * 1000
    hdr[:, 0], hdr[:, 1] = ts // 10**9, ts % 10**9
    hdr[:, 2] = hdr[:, 3] = FRAME
    f = rec[:, 16:]
    f[:, 12], f[:, 14] = 0x08, 0x45                      # IPv4, IHL 5
    f[:, 17] = FRAME - 14                                # total length
    f[:, 22] = 64                                        # TTL
    udp = rng.random(n) < 0.3
    f[:, 23] = np.where(udp, 17, 6)
    f[:, 26:38] = rng.integers(0, 256, (n, 12), dtype=np.uint8)   # addresses and ports
    f[:, 46] = np.where(udp, 0, 0x80)                    # TCP data offset: 32 bytes
    f[:, 47] = np.where(udp, 0, 0x12)                    # SYN+ACK
    with open(path, "wb") as out:
        out.write(np.array([0xA1B23C4D, 0x00040002, 0, 0, 262144, 1], "<u4").tobytes())
        out.write(rec.tobytes())


@pytest.fixture(scope="module")
def big_pcap(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "synthetic-1m.pcap"
    synthetic_ethernet_pcap(path, N_BIG)
    read_capture(path)                                   # JIT warm-up, page cache
    return path


@pytest.fixture(scope="module")
def small_pcap(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "synthetic-2k.pcap"
    synthetic_ethernet_pcap(path, N_SMALL, seed=1)
    return path


@pytest.fixture
def threads(request):
    before = numba.get_num_threads()
    numba.set_num_threads(min(request.param, numba.config.NUMBA_NUM_THREADS))
    yield numba.get_num_threads()
    numba.set_num_threads(before)


@pytest.mark.parametrize("threads", [1, 2], indirect=True)
def test_read_capture_1m(benchmark, big_pcap, threads):
    batch = benchmark.pedantic(read_capture, args=(big_pcap,), rounds=15, warmup_rounds=2)
    assert len(batch) == N_BIG
    pps = N_BIG / benchmark.stats.stats.median
    benchmark.extra_info.update(threads=threads, packets_per_s=pps)
    _RESULTS[f"fastsg 1M, {threads} thread(s)"] = pps


def test_read_capture_2k(benchmark, small_pcap):
    read_capture(small_pcap)
    benchmark.pedantic(read_capture, args=(small_pcap,), rounds=50, warmup_rounds=2)
    _RESULTS["fastsg 2k"] = N_SMALL / benchmark.stats.stats.median


def test_scapy_rdpcap_2k(benchmark, small_pcap):
    from scapy.utils import rdpcap
    packets = benchmark.pedantic(rdpcap, args=(str(small_pcap),), rounds=3, warmup_rounds=1)
    assert len(packets) == N_SMALL
    _RESULTS["scapy rdpcap 2k"] = N_SMALL / benchmark.stats.stats.median


def test_summary(capsys):
    """Print packets/s and the speed ratio to scapy (no assertion: machines vary)."""
    if "scapy rdpcap 2k" not in _RESULTS:
        pytest.skip("run the whole module for the summary")
    base = _RESULTS["scapy rdpcap 2k"]
    with capsys.disabled():
        print()
        for name, pps in _RESULTS.items():
            print(f"  {name:28s} {pps / 1e6:9.3f} M packets/s   {pps / base:10.0f} x scapy")
