"""The compiler's first build fills every instance row in bulk (``Compiler._fill_rows``);
mutations update one row at a time (``_update_row``).  Both must give the same rows,
registry indexes and tables."""
from __future__ import annotations

import numpy as np

from fastsg.benchmark import build_case
from fastsg.compile.compiler import Compiler


def _rows(compiler):
    r = compiler.rows
    n = r.n
    return (n, r.running[:n].tolist(), r.region[:n].tolist(), r.ngroups[:n].tolist(),
            r.groups[:n].tolist(), r.addr_hi[:n].tolist(), r.addr_lo[:n].tolist(),
            r.addr_ver[:n].tolist(), r.key[:n], compiler.instances.names,
            compiler.groups.names, compiler.regions.names)


def test_bulk_rows_equal_row_by_row():
    world = build_case(1000).world       # IPv4 and IPv6, public addresses, stopped instances
    bulk = Compiler(world)
    first = bulk.refresh()
    one_by_one = Compiler(world)
    for inst in world.instances.values():
        one_by_one._update_row(inst)
    assert _rows(bulk) == _rows(one_by_one)
    again = one_by_one._link()
    for a, b in zip(first.kernel, again.kernel):
        if isinstance(a, np.ndarray):
            assert np.array_equal(a, b)
        else:
            assert a == b


def test_bulk_rows_of_no_instances():
    compiler = Compiler(build_case(100).world)
    compiler._fill_rows([])
    assert compiler.rows.n == 0 and compiler.instances.names == []
