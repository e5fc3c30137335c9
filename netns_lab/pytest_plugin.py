"""pytest plugin: the `netns_lab` fixture, labs brought up under unique names and always taken down.

Installed with the package (entry point `pytest11` in pyproject.toml), so a project that
depends on ebpf-nodeport gets the fixture without a conftest. Each call of the factory
brings one lab up through the lab API (netns_lab.lab.Lab) and returns it; every lab made in
a test is removed after it, also when the test or the bring-up fails:

    def test_nodeport_preserves_the_client_address(netns_lab):
        lab = netns_lab(mode="tunnel")
        assert lab.run("host1", "curl", "-s", "198.19.0.1:30180").returncode == 0
        (customer,) = lab.state().select_pods((), "app=customer", "yaobank")
        last = Path(lab.state().pods[customer].log).read_text().splitlines()[-1]
        assert last.startswith("198.19.15.254 ")

Tests using it need root (namespaces, iptables, BPF); without root they are skipped.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from netns_lab import naming
from netns_lab.lab import Lab
from netns_lab.topology import Topology, default_topology, load_topology


def unique_name(prefix: str = "pt", tag: str = "") -> str:
    """A lab name nobody else uses: prefix + tag + random hex, at most 12 characters (the naming rule)."""
    return naming.check_lab_name(f"{prefix}{tag}{secrets.token_hex(4)}"[:12])


@contextlib.contextmanager
def running_lab(name: str | None = None, mode: str | None = None, topology: Topology | str | Path | None = None,
                manifests: list[str | Path] | None = None) -> Iterator[Lab]:
    """A lab up for the block (a unique name unless given); always taken down, also when `up` or the block fails.
    `manifests`: Kubernetes YAML run on the topology's nodes (default: the lesson's nodes)."""
    lab = Lab(name or unique_name())
    topo = load_topology(topology) if isinstance(topology, (str, Path)) else topology
    if manifests:
        from netns_lab.k8s import manifest

        topo = manifest.load([str(m) for m in manifests], topo or manifest.nodes_only(default_topology())).topology
    try:
        lab.up(mode, topo)
        yield lab
    finally:
        if lab.exists():
            lab.down()


@pytest.fixture
def netns_lab() -> Iterator[Callable[..., Lab]]:
    """Factory: netns_lab(mode=None, topology=None, name=None, manifests=None) -> a running Lab, removed after the test."""
    if os.geteuid() != 0:
        pytest.skip("netns_lab needs root (namespaces, iptables, BPF)")
    with contextlib.ExitStack() as labs:

        def make(mode: str | None = None, topology: Topology | str | Path | None = None, name: str | None = None,
                 manifests: list[str | Path] | None = None) -> Lab:
            return labs.enter_context(running_lab(name, mode, topology, manifests))

        yield make
