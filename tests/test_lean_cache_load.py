"""The lean loader of cached kernels (``fastsg.lean_cache_load``): cached kernels load
without numba's whole first-use set-up, give the same results, and numba's own loader
takes over whenever the lean load fails or is turned off."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap

import numpy as np

import fastsg  # noqa: F401  (installs the loader through fastsg.config)
from fastsg import lean_cache_load

# A cached kernel in a module of its own, and a probe of what loading it cost: whether
# the kernel came from the cache, and whether numba's lowering registries were imported
# (numba.np.linalg is imported only by the target context's refresh).
_MODULE = '''
import numpy as np
from fastsg.config import njit

@njit()
def total(a):
    s = np.int64(0)
    for i in range(len(a)):
        s += a[i]
    return s
'''

_PROBE = '''
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from fastsg import lean_cache_load
import kernel_mod
value = int(kernel_mod.total(np.arange(1000, dtype=np.int64)))
print(json.dumps({"value": value, "hits": int(sum(kernel_mod.total.stats.cache_hits.values())),
                  "misses": int(sum(kernel_mod.total.stats.cache_misses.values())),
                  "lean": lean_cache_load.installed(),
                  "registries_loaded": "numba.np.linalg" in sys.modules}))
'''


def _probe(tmp_path, lean: bool) -> dict:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache"),
           "FASTSG_LEAN_CACHE_LOAD": "1" if lean else "0"}
    env.pop("FASTSG_NO_CACHE", None)
    proc = subprocess.run([sys.executable, "-c", _PROBE, str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _enabled_by_environment() -> bool:
    from fastsg.config import env_flag
    return env_flag("FASTSG_LEAN_CACHE_LOAD", True)


def test_installed_by_default():
    assert _enabled_by_environment() or not lean_cache_load.installed()
    if _enabled_by_environment():
        assert lean_cache_load.installed()


def test_environment_switch(monkeypatch):
    for off in ("0", "false", "no", "OFF"):
        monkeypatch.setenv("FASTSG_LEAN_CACHE_LOAD", off)
        assert not _enabled_by_environment()
    monkeypatch.setenv("FASTSG_LEAN_CACHE_LOAD", "1")
    assert _enabled_by_environment()


def test_cached_kernel_loads_lean_with_the_same_result(tmp_path):
    (tmp_path / "kernel_mod.py").write_text(textwrap.dedent(_MODULE))
    first = _probe(tmp_path, lean=True)         # compiles and fills the cache
    assert first["misses"] == 1 and first["value"] == 499500
    assert first["registries_loaded"]           # compiling needs them, and loads them
    lean = _probe(tmp_path, lean=True)
    assert lean == {"value": 499500, "hits": 1, "misses": 0, "lean": True,
                    "registries_loaded": False}
    full = _probe(tmp_path, lean=False)
    assert full == {"value": 499500, "hits": 1, "misses": 0, "lean": False,
                    "registries_loaded": True}


class _Context:
    def __init__(self):
        self.refreshed = 0

    def refresh(self):
        self.refreshed += 1


class _Cache:
    """Stands in for numba's Cache: the first load fails, later ones succeed."""

    def __init__(self):
        self.loads = 0

    @contextlib.contextmanager
    def _guard_against_spurious_io_errors(self):
        yield

    def _load_overload(self, sig, target_context):
        self.loads += 1
        if self.loads == 1:
            raise RuntimeError("lean load failed")
        return ("loaded", sig, target_context.refreshed)


def test_a_failed_lean_load_falls_back_to_numbas_loader():
    if not lean_cache_load.installed():
        return                                   # turned off in this environment
    from numba.core import caching
    from fastsg import Engine, PacketBatch, World
    from fastsg.benchmark import single_instance_world
    # run one kernel, so numba's runtime is initialized and the stub context is not used
    Engine(World.from_dict(single_instance_world(5, 0)), stateful=False).classify(
        PacketBatch.from_arrays(np.zeros(1, np.uint32), np.zeros(1, np.uint32), 6))
    cache, ctx = _Cache(), _Context()
    got = caching.Cache.load_overload(cache, "sig", ctx)
    # the lean attempt failed; numba's loader refreshed the context and loaded
    assert got == ("loaded", "sig", 1)
    assert cache.loads == 2


def test_uninstall_and_install_again():
    if not lean_cache_load.installed():
        return
    from numba.core import caching
    lean = caching.Cache.load_overload
    lean_cache_load.uninstall()
    try:
        assert not lean_cache_load.installed()
        assert caching.Cache.load_overload is not lean
    finally:
        assert lean_cache_load.install()
    assert lean_cache_load.installed()
