"""Capture files: read pcap/pcapng into ``PacketBatch`` columns, write pcap files.

``read_capture(path)`` reads a whole file; ``iter_capture(path, chunk_packets)`` streams it
in bounded memory and exposes ``.stats``; ``PcapWriter``, ``copy_records`` and
``write_raw_ip`` write classic pcap.
"""
from .reader import CaptureIterator, CaptureStats, iter_capture, read_capture
from .writer import PcapWriter, copy_records, write_raw_ip

__all__ = ["CaptureIterator", "CaptureStats", "iter_capture", "read_capture", "PcapWriter",
           "copy_records", "write_raw_ip"]
