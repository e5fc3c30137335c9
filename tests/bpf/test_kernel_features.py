"""The load-time kernel probe against the running kernel: it must tell present from missing helpers."""
from __future__ import annotations

import os

import pytest

from ebpf_nodeport import kernel

BPF_FUNC_KTIME_GET_NS = 5  # in every kernel that has BPF


@pytest.mark.parametrize("helper_id,present", [(BPF_FUNC_KTIME_GET_NS, True), (100_000, False)])
def test_probe_tells_present_from_missing(helper_id: int, present: bool) -> None:
    f = kernel.Feature("HAVE_X", "x", helper_id, "1.0", "none")
    assert kernel._probe_helper(f) is present


@pytest.mark.parametrize("feature", kernel.FEATURES, ids=lambda f: f.define)
def test_probe_matches_the_mainline_version(feature: kernel.Feature) -> None:
    """On the matrix's Debian kernels (no backports of these helpers) presence follows the release."""
    assert kernel.features()[feature.define] is kernel._release_at_least(feature.since, os.uname().release)


def test_defines_are_the_present_features() -> None:
    assert kernel.feature_defines() == {d: 1 for d, ok in kernel.features().items() if ok}


def test_checksum_complete_probe_matches_the_mainline_version() -> None:
    """6.11 added BPF_F_TEST_SKB_CHECKSUM_COMPLETE; 5.10 refuses it and 6.1 ignores it (both: False)."""
    assert kernel.test_run_checksum_complete() is kernel._release_at_least("6.11", os.uname().release)
