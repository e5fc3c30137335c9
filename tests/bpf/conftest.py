"""Fixtures for the BPF_PROG_TEST_RUN tests: one loaded datapath per simulated node.

The cluster costs one compile (~1-2 s; the other nodes get relocated copies, ~60 ms
each), so it is session-scoped; every test starts
from the base view (resynced), empty conntrack and the default cfg. Pins live under
/sys/fs/bpf/netns-lab/ut<random>/ (topo.pin_root) and are removed at the end of the
session, also when tests fail (and `netns-lab down --all` finds them after a crash). Runs
happen in a private, empty network namespace (ebpf_nodeport.netns.Netns.private).
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "tests/bpf need root (BPF_PROG_TEST_RUN, bpffs pins)"
    try:
        import bcc  # noqa: F401  (Debian's python3-bpfcc)
    except ImportError:
        return "tests/bpf need BCC: install python3-bpfcc and use a venv with --system-site-packages"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = _skip_reason()
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.root)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def netns():
    from ebpf_nodeport.netns import Netns

    ns = Netns.private()
    yield ns
    ns.close()


@contextlib.contextmanager
def loaded_cluster(netns, defines: dict | None = None):
    """The table's cluster compiled with `defines`, loaded in netns under its own pins; closed after."""
    from ebpf_nodeport.testrun import SimCluster

    from .topo import base_view, pin_root

    cluster = SimCluster(base_view(), pin_root=pin_root(), defines=defines)
    try:
        with netns.inside():
            cluster.load()
        yield cluster
    finally:
        cluster.close()


@contextlib.contextmanager
def reset_cluster(cluster, netns):
    """A loaded cluster at the base view with empty conntrack, netns entered; reset again after."""
    from .topo import base_view

    with netns.inside():
        _reset(cluster, base_view())
        yield cluster
        _reset(cluster, base_view())


@pytest.fixture(scope="session")
def _cluster(netns):
    with loaded_cluster(netns) as cluster:
        yield cluster


@pytest.fixture
def cluster(_cluster, netns):
    """The session cluster, reset to the base view with empty conntrack, entered netns."""
    with reset_cluster(_cluster, netns) as cl:
        yield cl


def _reset(cluster, view) -> None:
    cluster.sync(view)
    for node in cluster.nodes.values():
        node.set_cfg(fabric_mtu=1500)
        node.dp.set_flags(trace=False, enabled=True)
    cluster.clear_ct()
