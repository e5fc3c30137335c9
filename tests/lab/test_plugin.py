"""The pytest plugin as another project uses it: its fixture brings a lab up and removes it, also after a failure."""

from __future__ import annotations

from pathlib import Path

import pytest

from netns_lab import cleanup

from .conftest import unique_lab

pytestmark = [pytest.mark.root, pytest.mark.lab]

INNER = """
from pathlib import Path

def test_uses_a_lab(netns_lab):
    lab = netns_lab(name={name!r})
    assert lab.run("host1", "curl", "-sf", "198.19.0.1:30180").returncode == 0
    Path({marker!r}).write_text(lab.state().mode)
    assert False, "fails on purpose: the lab must still be removed"
"""


def test_a_failing_test_still_has_its_lab_removed(pytester: pytest.Pytester, tmp_path: Path) -> None:
    name, marker = unique_lab("pl"), tmp_path / "mode"
    pytester.makepyfile(INNER.format(name=name, marker=str(marker)))
    try:
        result = pytester.runpytest_subprocess("-p", "netns_lab.pytest_plugin", "-q")
        result.assert_outcomes(failed=1)
        assert marker.read_text() == "kube-proxy"  # the lab was up inside the test
        assert not cleanup.lab_exists(name)
    finally:
        if cleanup.lab_exists(name):
            cleanup.teardown(name)
