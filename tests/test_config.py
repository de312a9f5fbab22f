"""numba options from ``fastsg.config``: the one place kernels get them from."""
from __future__ import annotations

import numpy as np

from fastsg import config, flowlog
from fastsg.kernels import classify, track


def test_default_options_count_references():
    opts = config.jit_options()
    assert "_nrt" not in opts
    assert opts["nogil"] is config.NOGIL and opts["fastmath"] is config.FASTMATH


def test_refcounts_false_turns_numba_counting_off():
    assert config.jit_options(refcounts=False)["_nrt"] is False
    assert config.jit_options(parallel=True, refcounts=False)["parallel"] is True


def test_kernel_without_counting_reads_and_writes_arrays():
    @config.njit(refcounts=False)
    def _add_halves(a, out):
        half = a[: len(a) // 2]          # a view: fine without counting
        for i in range(len(half)):
            out[np.uint64(i)] = half[i] + a[len(half) + i]

    a = np.arange(8, dtype=np.int64)
    out = np.zeros(4, np.int64)
    _add_halves(a, out)
    assert out.tolist() == [4, 6, 8, 10]


def test_hot_kernels_are_compiled_without_counting():
    """The tracking walk, the grouped misses and the flow log's event kernels: numba's
    reference counting on their hot paths cost up to a third of the walk (see
    ``config.jit_options``); their allocating wrappers keep it."""
    for kernel in (track._walk_shard, classify._grouped_run, flowlog._select_events_run,
                   flowlog._group_events_run):
        assert kernel.targetoptions.get("_nrt") is False, kernel.py_func.__name__
    for wrapper in (track._walk, classify._classify_block_grouped, flowlog._select_events,
                    flowlog._group_events):
        assert "_nrt" not in wrapper.targetoptions, wrapper.py_func.__name__
