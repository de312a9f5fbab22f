"""fastsg: evaluate cloud firewall policy (security groups) against real and synthetic traffic.

Public names only; everything else is internal.
"""
from .batch import PacketBatch
from .engine import Engine, Result, Verdict
from .errors import CaptureError, FastsgError, Problem, WorldError
from .world import World, load_world

__all__ = ["CaptureError", "Engine", "FastsgError", "PacketBatch", "Problem", "Result", "Verdict",
           "World", "WorldError", "load_world", "read_capture", "iter_capture"]

__version__ = "0.1.0"


def __getattr__(name):
    # the capture reader pulls in its kernels only when first used
    if name in ("read_capture", "iter_capture"):
        from . import capture
        return getattr(capture, name)
    raise AttributeError(f"module 'fastsg' has no attribute {name!r}")
