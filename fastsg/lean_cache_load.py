"""Loading cached kernels without numba's whole first-use set-up (shorter process start).

numba's cache loader, ``numba.core.caching.Cache.load_overload``, refreshes the target
context before every load.  The first refresh imports and registers every lowering numba
has (numpy functions, typed containers, random, linalg...): 0.3-0.5 s on this project's
2-core machine, paid by every fastsg process, though loading object code from the cache
needs only numba's runtime (NRT).  Compiling does need the lowerings, and numba's compiler
refreshes the contexts itself (``CompilerBase.__init__``), as does a lowering lookup that
misses (``BaseContext.get_function``); so a kernel that is not cached yet still compiles
as before.

``install()`` (called by ``fastsg.config`` at import, unless ``FASTSG_LEAN_CACHE_LOAD``
says no) replaces the loader with one that
initializes the runtime and loads.  Should the lean load raise anything, numba's own loader
runs instead, so the worst case is the old start-up time.  It installs only where numba
has the methods it relies on.
Measured (``/usr/bin/time`` on ``fastsg replay`` of a one-packet capture, three runs each,
alternating): 1.15-1.75 s before, 0.83-0.93 s after.
"""
from __future__ import annotations

_ORIGINAL = None


def installed() -> bool:
    """Whether the lean loader is in place."""
    return _ORIGINAL is not None


def install() -> bool:
    """Put the lean loader in place (idempotent); returns whether it is installed."""
    global _ORIGINAL
    if _ORIGINAL is not None:
        return True
    try:
        from numba.core import caching
        from numba.core.runtime import rtsys
    except ImportError:
        return False
    cache_cls = getattr(caching, "Cache", None)
    needed = ("load_overload", "_load_overload", "_guard_against_spurious_io_errors")
    if cache_cls is None or not all(hasattr(cache_cls, name) for name in needed) \
            or not hasattr(rtsys, "initialize"):
        return False            # a numba this was not written for: keep its loader
    original = cache_cls.load_overload

    def load_overload(self, sig, target_context):
        try:
            rtsys.initialize(target_context)        # what cached code needs at run time
            with self._guard_against_spurious_io_errors():
                return self._load_overload(sig, target_context)
        except Exception:                           # anything odd: numba's own way
            return original(self, sig, target_context)

    load_overload.__doc__ = original.__doc__
    cache_cls.load_overload = load_overload
    _ORIGINAL = original
    return True


def uninstall() -> None:
    """Put numba's own loader back (tests)."""
    global _ORIGINAL
    if _ORIGINAL is None:
        return
    from numba.core import caching
    caching.Cache.load_overload = _ORIGINAL
    _ORIGINAL = None
