"""The capture reader on the real sample captures, field for field against the reference.

The captures live in ``shared/data/pcaps`` beside the clone (see its MANIFEST.tsv for the
provenance of each file); the tests skip when that folder is absent.
"""
from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pytest

from capture_reference import FIELDS, reference_records
from fastsg.capture import iter_capture, read_capture
from fastsg.schema import STATUS_IP

PCAPS = Path(__file__).resolve().parents[2] / "shared" / "data" / "pcaps"
MANIFEST = PCAPS / "MANIFEST.tsv"

pytestmark = pytest.mark.skipif(
    not MANIFEST.exists(),
    reason=f"sample captures not found: {PCAPS} (shared/ is laid beside the clone in CI)")

logging.getLogger("scapy").setLevel(logging.ERROR)


def _manifest() -> dict[str, dict]:
    if not MANIFEST.exists():
        return {}
    with open(MANIFEST, newline="") as f:
        return {row["file"]: row for row in csv.DictReader(f, delimiter="\t")}


SAMPLES = sorted(_manifest())


@pytest.fixture(scope="module")
def manifest():
    return _manifest()


@pytest.mark.parametrize("name", SAMPLES)
def test_sample_matches_reference(name, manifest):
    path = PCAPS / name
    batch = read_capture(path)
    ref = reference_records(path)
    assert len(batch) == len(ref) == int(manifest[name]["packets"])
    assert batch.source == str(path)
    for field in FIELDS:
        got = batch.columns[field].astype(np.int64) if field not in (
            "src_hi", "src_lo", "dst_hi", "dst_lo", "emb_src_hi", "emb_src_lo", "emb_dst_hi",
            "emb_dst_lo") else batch.columns[field]
        want = np.array([r[field] for r in ref], dtype=got.dtype)
        bad = np.flatnonzero(got != want)
        assert len(bad) == 0, (f"{name}: {field} differs at records {bad[:10].tolist()}: "
                               f"{got[bad[:5]].tolist()} != {want[bad[:5]].tolist()}")
    # rec_offset locates the very bytes the reference read
    raw = path.read_bytes()
    for i, r in enumerate(ref):
        o = int(batch.rec_offset[i])
        assert raw[o:o + int(batch.caplen[i])] == r["data"], f"{name}: record {i} bytes"


@pytest.mark.parametrize("name", SAMPLES)
def test_sample_stats_and_streaming(name, manifest):
    path = PCAPS / name
    whole = read_capture(path)
    it = iter_capture(path, chunk_packets=7)
    chunks = list(it)
    assert all(len(c) <= 7 for c in chunks)
    assert sum(len(c) for c in chunks) == len(whole)
    for field in FIELDS:
        joined = np.concatenate([c.columns[field] for c in chunks]) if chunks else \
            whole.columns[field][:0]
        np.testing.assert_array_equal(joined, whole.columns[field], err_msg=field)
    st = it.stats
    assert st.records == len(whole) == int(manifest[name]["packets"])
    assert st.truncated == 0
    assert st.bytes == path.stat().st_size
    assert st.non_ip == int(np.count_nonzero(whole.status == 1))
    assert st.malformed == int(np.count_nonzero(whole.status == 2))
    assert sum(st.linktypes.values()) == len(whole)
    assert st.format == ("pcapng" if "pcapng" in manifest[name]["format"] else "pcap")


def test_manifest_oddities(manifest):
    """Spot checks of what MANIFEST.tsv says about particular files."""
    def read(name):
        return read_capture(PCAPS / name)

    frag4 = read("seladb-PcapPlusPlus_ip4_fragments.pcap")
    assert int(frag4.frag.sum()) == 41
    frag6 = read("seladb-PcapPlusPlus_ip6_fragments.pcap")
    assert int(frag6.frag.sum()) == 32 and (frag6.ipver == 6).all()
    assert (frag6.sport[frag6.frag == 1] == 0).all()
    qinq = read("zeek-zeek_vlan-qinqinq.pcap")
    assert (qinq.l3_offset == 14 + 3 * 4).all() and (qinq.status == STATUS_IP).all()
    ad = read("the-tcpdump-group-tcpdump_802.1ad_QinQ.pcap")
    assert (ad.status == 1).all()                       # ARP behind 0x88a8 + 0x8100
    null = read("seladb-PcapPlusPlus_null_loopback.pcap")
    assert null.ipver.tolist().count(6) == 1 and null.ipver.tolist().count(4) == 1
    assert null.status.tolist().count(1) == 1           # the junk address family
    ng = iter_capture(PCAPS / "seladb-PcapPlusPlus_pcapng-example.pcapng")
    b = ng.read_all()
    assert set(np.unique(b.linktype).tolist()) == {1, 113}
    assert ng.stats.clamped_ts == int((b.linktype == 113).sum())   # ~2^64 us timestamps
    assert (b.ts[b.linktype == 113] == np.iinfo(np.int64).max).all()
    many = read("seladb-PcapPlusPlus_many_interfaces-1.pcapng")
    assert set(np.unique(many.linktype).tolist()) == {0, 1}
    raw12 = read("seladb-PcapPlusPlus_four_ipv6_http_streams.pcap")
    assert (raw12.linktype == 12).all() and (raw12.ipver == 6).all()
    be = read("seladb-PcapPlusPlus_nanosecs_big_endian.pcap")
    assert (be.ts % 1000 != 0).any()                    # nanosecond digits survive
