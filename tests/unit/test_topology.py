"""Topology data: the default address plan, YAML round trip, and validation errors with field and line."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest

from netns_lab.topology import (
    TopologyError,
    default_topology,
    dump_topology,
    load_topology,
    load_topology_text,
    plan,
    topology_from_dict,
    topology_to_dict,
    upstream_url,
)


def test_default_address_plan_matches_conventions() -> None:
    topo = default_topology()
    p = plan(topo)
    assert {n.name: n.address for n in topo.nodes} == {
        "control": "198.19.0.1",
        "node1": "198.19.0.2",
        "node2": "198.19.0.3",
    }
    assert [h.address for h in topo.hosts] == ["198.19.15.254"]
    assert p.node_blocks == {
        "control": IPv4Network("198.19.16.0/26"),
        "node1": IPv4Network("198.19.16.64/26"),
        "node2": IPv4Network("198.19.16.128/26"),
    }
    assert p.pod_ips == {
        "customer": IPv4Address("198.19.16.65"),
        "summary-1": IPv4Address("198.19.16.66"),
        "summary-2": IPv4Address("198.19.16.129"),
        "database": IPv4Address("198.19.16.130"),
    }
    assert topo.pod_mtu == 1450


def test_default_services_and_backends() -> None:
    topo = default_topology()
    p = plan(topo)
    customer = topo.service("yaobank/customer")
    assert customer.cluster_ip == "198.19.32.10"
    ports = {sp.name: (sp.protocol, sp.port, sp.target, sp.node_port) for sp in customer.ports}
    assert ports == {"http": ("TCP", 80, 80, 30180), "echo": ("UDP", 7, 7, 30107)}
    summary = topo.service("summary")
    assert [(b.pod, b.ip, b.port) for b in p.backends(summary, summary.ports[0])] == [
        ("summary-1", "198.19.16.66", 80),
        ("summary-2", "198.19.16.129", 80),
    ]
    database = topo.service("database")
    assert [(b.pod, b.ip, b.port) for b in p.backends(database, database.ports[0])] == [("database", "198.19.16.130", 2379)]
    assert upstream_url(topo, "customer") == "http://198.19.32.20:80"
    assert upstream_url(topo, "summary") == "http://198.19.32.30:2379"
    assert upstream_url(topo, "database") is None


def test_yaml_round_trip_is_identity() -> None:
    topo = default_topology()
    again = load_topology_text(dump_topology(topo))
    assert again == topo
    assert topology_from_dict(topology_to_dict(topo)) == topo


SMALL = """\
nodes:
  - name: n1
    address: 198.19.0.11
  - name: n2
    address: 198.19.0.12
    podBlock: 198.19.17.0/26
hosts:
  - {name: client, address: 198.19.15.1}
pods:
  - name: db
    node: n2
    app: database
    ports: [{name: http, port: 2379}]
  - name: sum
    node: n1
    app: summary
    ip: 198.19.16.10
    ports: [{name: http, port: 8080}]
services:
  - name: database
    clusterIP: 198.19.32.5
    selector: {app: database}
    ports: [{name: http, port: 2379}]
  - name: summary
    clusterIP: 198.19.32.6
    backends: [sum]
    ports: [{name: http, port: 80, targetPort: 8080, nodePort: 31000}]
"""


def test_small_yaml_topology_plan() -> None:
    topo = load_topology_text(SMALL, "small.yaml")
    p = plan(topo)
    # n2 asked for a block; n1 gets the first free one of the pool
    assert p.node_blocks == {"n1": IPv4Network("198.19.16.0/26"), "n2": IPv4Network("198.19.17.0/26")}
    assert p.pod_ips == {"db": IPv4Address("198.19.17.1"), "sum": IPv4Address("198.19.16.10")}
    svc = topo.service("summary")
    assert svc.ports[0].protocol == "TCP"  # default
    assert [(b.ip, b.port) for b in p.backends(svc, svc.ports[0])] == [("198.19.16.10", 8080)]


def _error(text: str) -> str:
    with pytest.raises(TopologyError) as exc:
        load_topology_text(text, "t.yaml")
    return str(exc.value)


@pytest.mark.parametrize(
    "old,new,expected",
    [
        # unknown field: named with its path, at the key's line
        ("    ip: 198.19.16.10\n", "    ip: 198.19.16.10\n    colour: red\n", "t.yaml:line 18: topology: pods[1].colour: unknown field"),
        # pod on an unknown node
        ("    node: n2\n    app: database", "    node: n9\n    app: database", "t.yaml:line 11: topology: pods[0].node: unknown node 'n9'"),
        # pod on a host: hosts run no pods
        ("    node: n2\n    app: database", "    node: client\n    app: database", "hosts are outside the cluster"),
        # bad address
        ("address: 198.19.0.11", "address: 198.19.0.300", "t.yaml:line 3: topology: nodes[0].address: '198.19.0.300' is not an IPv4 address"),
        # address outside the fabric
        ("address: 198.19.0.11", "address: 10.0.0.1", "nodes[0].address: 10.0.0.1 is not a usable address of the fabric subnet"),
        # duplicate member name
        ("name: client", "name: n1", "t.yaml:line 8: topology: hosts[0].name: name 'n1' already used at nodes[0].name"),
        # node port out of range
        ("nodePort: 31000", "nodePort: 80", "t.yaml:line 27: topology: services[1].ports[0].nodePort: node port 80 outside 30000-32767"),
        # target port the pod does not serve
        ("targetPort: 8080", "targetPort: 9090", "t.yaml:line 27: topology: services[1].ports[0].targetPort: backend pod sum has no TCP port 9090"),
        # pod IP outside its node's block
        ("ip: 198.19.16.10", "ip: 198.19.17.10", "t.yaml:line 17: topology: pods[1].ip: 198.19.17.10 is not a usable address of node n1's block"),
        # missing required field
        ("    app: summary\n", "", "t.yaml:line 14: topology: pods[1]: missing required field 'app'"),
        # wrong type
        ("port: 2379}]\n  - name: sum", "port: \"2379\"}]\n  - name: sum", "pods[0].ports[0].port: expected an integer, got a string"),
        # unknown app
        ("app: database", "app: redis", "pods[0].app: unknown app 'redis'"),
        # cluster IP outside the service CIDR
        ("clusterIP: 198.19.32.5", "clusterIP: 198.19.16.5", "services[0].clusterIP: 198.19.16.5 is not a usable address of the service CIDR"),
        # selector and backends together
        ("    backends: [sum]\n", "    backends: [sum]\n    selector: {app: summary}\n", "services[1]: give exactly one of 'selector' or 'backends'"),
        # backend that is not a pod
        ("backends: [sum]", "backends: [nope]", "services[1].backends[0]: unknown pod 'nope'"),
        # pod block not in the pool
        ("podBlock: 198.19.17.0/26", "podBlock: 198.19.40.0/26", "nodes[1].podBlock: 198.19.40.0/26 is not a /26 block of the pod pool"),
        # duplicate YAML key
        ("    address: 198.19.0.12\n", "    address: 198.19.0.12\n    address: 198.19.0.13\n", "t.yaml:line 6: topology: nodes[1].address: duplicate field"),
        # an app's upstream service missing
        ("  - name: database\n    clusterIP", "  - name: db2\n    clusterIP", "pods[1].app: app 'summary' calls service 'database'"),
    ],
)
def test_validation_errors_name_field_and_line(old: str, new: str, expected: str) -> None:
    assert old in SMALL
    assert expected in _error(SMALL.replace(old, new, 1))


def test_yaml_syntax_error_has_line() -> None:
    msg = _error("nodes:\n  - name: n1\n    address: [1, 2\n")
    assert msg.startswith("t.yaml:line ")
    assert "invalid YAML" in msg


def test_empty_and_non_mapping_documents() -> None:
    assert "file is empty" in _error("")
    assert "expected a mapping, got a list" in _error("- 1\n- 2\n")


def test_overlapping_pools_rejected() -> None:
    assert "serviceCIDR: 198.19.16.0/20 overlaps podPool" in _error("serviceCIDR: 198.19.16.0/20\n" + SMALL)


def test_full_block_rejected() -> None:
    pods = "".join(
        f"  - {{name: p{i}, node: n1, app: database, ports: [{{name: http, port: 2379}}]}}\n" for i in range(7)
    )
    text = f"blockSize: 29\nnodes:\n  - {{name: n1, address: 198.19.0.11}}\npods:\n{pods}"
    assert "pods[6]: node n1's block 198.19.16.0/29 is full" in _error(text)


def test_load_topology_unreadable_file(tmp_path) -> None:
    from netns_lab.errors import LabError

    with pytest.raises(LabError, match="cannot read topology file"):
        load_topology(tmp_path / "missing.yaml")
