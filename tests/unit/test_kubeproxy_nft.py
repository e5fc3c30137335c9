"""kube-proxy nftables generation: golden transaction, kube-proxy's chain names, numgen picks, no-endpoint rejects."""

from __future__ import annotations

from pathlib import Path

import pytest

from netns_lab import kubeproxy_nft as nft
from netns_lab.topology import Pod, PodPort, Service, ServicePort, default_topology, plan

GOLDEN = Path(__file__).parent / "golden" / "kubeproxy_nft_yaobank.nft"


def _ruleset(node: str = "control", topo=None) -> nft.Ruleset:
    topo = topo or default_topology()
    return nft.ruleset(topo, plan(topo), node)


def test_golden_transaction_for_yaobank() -> None:
    # Reviewed by hand against the layout of kube-proxy's nftables proxier for the same services.
    assert nft.install_text(_ruleset()) == GOLDEN.read_text()


@pytest.mark.parametrize("base,service,endpoint", [
    # known answers: the chains kube-proxy's own proxier names for ns1/svc1 port p80 -> 10.180.0.1:80
    ("ns1/svc1/tcp/p80", "service-ULMVA6XW-ns1/svc1/tcp/p80",
     "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"),
])
def test_chain_names_match_kube_proxy(base: str, service: str, endpoint: str) -> None:
    ns, name, proto, port = base.split("/")
    svc = Service(name, "172.30.0.41", [ServicePort(port, proto.upper(), 80)], namespace=ns)
    sp = svc.ports[0]
    assert nft.service_chain(svc, sp) == service
    assert nft.external_chain(svc, sp) == service.replace("service-", "external-", 1)
    assert nft.endpoint_chain(svc, sp, "10.180.0.1", 80) == endpoint


def test_nodeport_addresses_are_the_node_own() -> None:
    assert _ruleset("control").node_ips == ["198.19.0.1"]
    assert _ruleset("node2").node_ips == ["198.19.0.3"]
    with pytest.raises(KeyError):
        _ruleset("host1")


def test_numgen_picks_every_endpoint_once() -> None:
    topo = default_topology()
    topo.pods.append(Pod("summary-3", "control", "summary", [PodPort("http", "TCP", 80)]))
    rs = _ruleset(topo=topo)
    svc = next(s for s in topo.services if s.name == "summary")
    chain = nft.service_chain(svc, svc.ports[0])
    pick = next(r for r in rs.rules if r.startswith(f"{chain} numgen"))
    assert "numgen random mod 3 vmap" in pick
    for i, b in enumerate(plan(topo).backends(svc, svc.ports[0])):
        assert f"{i} : goto {nft.endpoint_chain(svc, svc.ports[0], b.ip, b.port)}" in pick


def test_service_without_endpoints_is_rejected() -> None:
    topo = default_topology()
    topo.services.append(Service("empty", "198.19.32.99", [ServicePort("http", "TCP", 80, node_port=30999)],
                                 selector={"app": "nothing"}))
    rs = _ruleset(topo=topo)
    assert 'no-endpoint-services { 198.19.32.99 . tcp . 80 comment "yaobank/empty:http" : goto reject-chain }' in rs.elements
    assert 'no-endpoint-nodeports { tcp . 30999 comment "yaobank/empty:http" : goto reject-chain }' in rs.elements
    assert not any("yaobank/empty" in c for c in rs.chains)


def test_transaction_replaces_the_table_atomically() -> None:
    lines = nft.install_text(_ruleset()).splitlines()
    assert lines[:3] == ["add table ip kube-proxy", "delete table ip kube-proxy",
                         'add table ip kube-proxy { comment "rules for kube-proxy" ; }']
    assert nft.removal_text() == "add table ip kube-proxy\ndelete table ip kube-proxy\n"


def _policy_topo(external: bool = False, internal: bool = False):
    """The default topology, customer (pod on node1, NodePort 30180) with externalTrafficPolicy Local and/or
    summary (pods on node1 and node2) with internalTrafficPolicy Local."""
    topo = default_topology()
    svc = {s.name: s for s in topo.services}
    if external:
        svc["customer"].external_traffic_policy = "Local"
    if internal:
        svc["summary"].internal_traffic_policy = "Local"
    return topo, svc["customer"], svc["summary"]


def test_etp_local_node_with_a_local_endpoint_keeps_the_client() -> None:
    topo, customer, _ = _policy_topo(external=True)
    sp = customer.ports[0]
    rs = _ruleset("node1", topo)
    ext, loc, cl = nft.external_chain(customer, sp), nft.local_chain(customer, sp), nft.service_chain(customer, sp)
    assert loc.startswith("local-") and loc.split("-", 2)[1:] == cl.split("-", 2)[1:]  # same hash and base
    rules = [r for r in rs.rules if r.startswith(f"{ext} ")]
    # no masquerade mark for outside clients: pods and the node itself short-circuit to the cluster chain
    assert rules == [
        f'{ext} ip saddr 198.19.16.0/20 goto {cl} comment "short-circuit pod traffic"',
        f'{ext} fib saddr type local jump mark-for-masquerade comment "masquerade local traffic"',
        f'{ext} fib saddr type local goto {cl} comment "short-circuit local traffic"',
        f"{ext} goto {loc}",
    ], rules
    pick = next(r for r in rs.rules if r.startswith(f"{loc} numgen"))
    assert "mod 1 vmap" in pick and nft.endpoint_chain(customer, sp, plan(topo).backends(customer, sp)[0].ip, 80) in pick
    assert f"service-nodeports {{ tcp . 30180 : goto {ext} }}" in rs.elements
    assert not any(e.startswith("no-endpoint-nodeports") and "30180" in e for e in rs.elements)
    # ClusterIP traffic keeps the Cluster policy
    assert any(e.startswith(f"service-ips {{ {customer.cluster_ip} . tcp . 80 : goto {cl} }}") for e in rs.elements)


def test_etp_local_node_without_a_local_endpoint_drops_outside_clients() -> None:
    topo, customer, _ = _policy_topo(external=True)
    sp = customer.ports[0]
    rs = _ruleset("control", topo)
    ext = nft.external_chain(customer, sp)
    assert nft.local_chain(customer, sp) not in rs.chains
    assert [r for r in rs.rules if r.startswith(f"{ext} ")][-1] == \
        f'{ext} fib saddr type local goto {nft.service_chain(customer, sp)} comment "short-circuit local traffic"'
    assert 'no-endpoint-nodeports { tcp . 30180 comment "yaobank/customer:http" : drop }' in rs.elements
    assert f"service-nodeports {{ tcp . 30180 : goto {ext} }}" in rs.elements  # pods and the node still served


def test_itp_local_goes_to_the_node_local_endpoints_or_drops() -> None:
    topo, _, summary = _policy_topo(internal=True)
    sp = summary.ports[0]
    loc = nft.local_chain(summary, sp)
    rs = _ruleset("node1", topo)
    assert f"service-ips {{ {summary.cluster_ip} . tcp . 80 : goto {loc} }}" in rs.elements
    assert nft.service_chain(summary, sp) not in rs.chains  # no external traffic: no cluster-wide chain
    assert f"{loc} ip daddr {summary.cluster_ip} ip saddr != 198.19.16.0/20 jump mark-for-masquerade" in rs.rules
    pick = next(r for r in rs.rules if r.startswith(f"{loc} numgen"))
    assert "mod 1 vmap" in pick
    rs = _ruleset("control", topo)  # no summary pod on control
    assert f'no-endpoint-services {{ {summary.cluster_ip} . tcp . 80 comment "yaobank/summary:http" : drop }}' in rs.elements
    assert not any(e.startswith(f"service-ips {{ {summary.cluster_ip} ") for e in rs.elements)
