"""Single-packet table (cases.py): every row through its program, checked by expect.check_result."""
from __future__ import annotations

import pytest

from .cases import CASES, Case
from .expect import check_result
from .topo import base_view


@pytest.mark.parametrize("c", CASES, ids=[f"{c.group}:{c.name}" for c in CASES])
def test_case(cluster, c: Case) -> None:
    if c.view:
        cluster.sync(base_view(**c.view))
    res = cluster.run(c.node, c.entry, c.pkt())
    check_result(res, c.verdict, c.reason, c.out, c.ct, where=f"{c.name} ({c.exercises})")
    if c.no_ct:
        assert res.ct is not None and not res.ct.added, \
            f"{c.name}: created conntrack entries {[k.to_dict() for k in res.ct.added]}"


def test_case_names_unique() -> None:
    names = [c.name for c in CASES]
    assert len(names) == len(set(names)), sorted({n for n in names if names.count(n) > 1})
