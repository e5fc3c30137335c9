"""The lesson's targets come from the lab's state: right on the default lab and on a --topology lab."""

from __future__ import annotations

import pytest

from netns_lab.lesson import Targets
from netns_lab.state import LabState
from netns_lab.topology import default_topology, load_topology_text, plan

TINY = """\
nodes:
  - {name: alpha, address: 198.19.0.21}
  - {name: beta, address: 198.19.0.22}
hosts:
  - {name: client, address: 198.19.15.1}
pods:
  - {name: web, node: alpha, app: customer, ports: [{name: http, protocol: TCP, port: 80}]}
  - {name: api, node: beta, app: summary, ports: [{name: http, port: 80}]}
  - {name: db, node: alpha, app: database, ports: [{name: http, port: 2379}]}
services:
  - {name: summary, clusterIP: 198.19.32.20, selector: {app: summary}, ports: [{name: http, port: 80}]}
  - {name: database, clusterIP: 198.19.32.30, selector: {app: database}, ports: [{name: http, port: 2379}]}
  - {name: web, namespace: shop, clusterIP: 198.19.32.40, backends: [web],
     ports: [{name: http, port: 8080, targetPort: 80, nodePort: 31080}]}
"""


@pytest.mark.parametrize("topo,want", [
    (default_topology(), Targets("host1", "198.19.15.254", "control", "198.19.0.1", 30180, "customer", "node1",
                                 ["customer", "summary"])),
    # the backend's node is never the ingress: the tunnel and DSR must be visible on the wire
    (load_topology_text(TINY), Targets("client", "198.19.15.1", "beta", "198.19.0.22", 31080, "web", "alpha",
                                       ["customer", "summary"])),
])
def test_targets_of_a_lab(topo, want: Targets) -> None:
    assert Targets.of(LabState.new("t", topo, plan(topo), "kube-proxy")) == want
