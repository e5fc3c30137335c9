"""The lesson's targets come from the lab's state: right on the default lab (the manifest), the old topology and a --topology lab."""

from __future__ import annotations

from pathlib import Path

import pytest

from netns_lab.k8s.manifest import default_lab
from netns_lab.lesson import Targets
from netns_lab.state import LabState
from netns_lab.topology import default_topology, load_topology_text, plan

TINY = (Path(__file__).resolve().parents[1] / "topologies" / "two-node.yaml").read_text()  # also tests/lab's


YAOBANK_RESTART = [("yaobank", "customer"), ("yaobank", "summary")]


@pytest.mark.parametrize("topo,want", [
    (default_lab(), Targets("host1", "198.19.15.254", "control", "198.19.0.1", 30180, "customer", "yaobank", "node1",
                            YAOBANK_RESTART)),
    (default_topology(), Targets("host1", "198.19.15.254", "control", "198.19.0.1", 30180, "customer", "yaobank", "node1",
                                 YAOBANK_RESTART)),
    # the backend's node is never the ingress: the tunnel and DSR must be visible on the wire
    (load_topology_text(TINY), Targets("client", "198.19.15.1", "beta", "198.19.0.22", 31080, "customer", "yaobank",
                                       "alpha", YAOBANK_RESTART)),
])
def test_targets_of_a_lab(topo, want: Targets) -> None:
    assert Targets.of(LabState.new("t", topo, plan(topo), "kube-proxy")) == want
