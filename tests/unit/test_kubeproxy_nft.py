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
