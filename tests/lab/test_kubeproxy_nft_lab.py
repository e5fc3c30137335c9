"""kube-proxy's nftables mode (`--mode kube-proxy-nft`) on a real lab: the lesson's first section through
verdict maps instead of KUBE-SERVICES, endpoint resyncs, and live moves to and from the eBPF modes.

One kube-proxy-nft lab is shared by the module; tests that switch modes put it back in kube-proxy-nft.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator

import pytest

from netns_lab import kubeproxy, kubeproxy_nft
from netns_lab.lesson import Walk

from .conftest import Lab, running_lab
from .test_kubeproxy_lab import new_entries

pytestmark = [pytest.mark.root, pytest.mark.lab]

NODES = ("control", "node1", "node2")


@pytest.fixture(scope="module")
def nftlab() -> Iterator[Lab]:
    """A default lab brought up in kube-proxy-nft mode."""
    with running_lab("nft", "kube-proxy-nft") as lab:
        yield lab


def backends(lab: Lab) -> dict[str, list[str]]:
    """Node -> kube-proxy backends `status -o json` reports there."""
    return {node: doc["kube_proxy_backends"] for node, doc in lab.status()["dataplane"]["nodes"].items()}


def test_only_the_nft_table_exists(nftlab: Lab) -> None:
    """kube-proxy-nft: the table `ip kube-proxy` on every node, and none of kube-proxy's iptables chains."""
    st = nftlab.status()
    assert st["mode"] == "kube-proxy-nft" and st["felix"]["bpfEnabled"] is False
    assert st["kubeproxy"]["mode"] == "nftables"
    assert backends(nftlab) == {n: ["nftables"] for n in NODES}
    for node in NODES:
        ns = nftlab.netns(node)
        assert kubeproxy_nft.present(ns) and not kubeproxy.present(ns), node
        assert "KUBE-" not in kubeproxy.save(ns), node
        listing = kubeproxy_nft.listing(ns)
        assert "map service-ips" in listing and "numgen random mod 2 vmap" in listing  # the two summary pods


def test_nodeport_via_a_node_without_the_backend_shows_the_ingress_node(nftlab: Lab) -> None:
    """host1 -> node2:30180 (customer runs on node1): DNAT by the nft table, masquerade to node2's address."""
    entries = new_entries(nftlab, "customer", lambda: nftlab.curl("198.19.0.3:30180"))
    assert [(e["client"], e["status"]) for e in entries] == [("198.19.0.3", 200)]


def test_clusterip_from_a_pod(nftlab: Lab) -> None:
    """customer -> summary's ClusterIP: DNAT only (pod sources are in the cluster CIDR), both replicas picked."""
    st = nftlab.api().state()
    summary = next(s for s in st.services if s.name == "yaobank/summary")
    url = f"{summary.cluster_ip}:{summary.ports[0].port}"
    before = {r: len(nftlab.log_entries(r)) for r in ("summary-1", "summary-2")}
    loop = f"for i in $(seq 16); do curl -sS --fail --max-time 10 {url} >/dev/null || exit 1; done"
    nftlab.exec(nftlab.pod("customer"), "sh", "-c", loop)
    seen = {r: {e["client"] for e in nftlab.log_entries(r)[before[r]:]} for r in before}
    assert set().union(*seen.values()) == {nftlab.pod_ip("customer")}
    assert all(seen.values()), seen  # P(one replica never picked) = 2 * 0.5**16


def test_a_deleted_pods_replacement_is_served(nftlab: Lab) -> None:
    """delete pod: the table is resynced, the NodePort reaches the replacement at its new address."""
    old = nftlab.pod_ip("customer")
    nftlab.run("delete", "pod", "-n", "yaobank", "-l", "app=customer")
    new = nftlab.pod_ip("customer")
    assert new != old
    listing = kubeproxy_nft.listing(nftlab.netns("control"))
    assert f"dnat to {new}:" in listing and f"dnat to {old}:" not in listing
    entries = new_entries(nftlab, "customer", lambda: nftlab.curl("198.19.0.1:30180"))
    assert [e["client"] for e in entries] == ["198.19.0.1"]


def test_lesson_first_section_on_nft(nftlab: Lab) -> None:
    """The lesson's kube-proxy step keeps a kube-proxy-nft lab in nftables mode and sees the SNAT both ways."""
    from rich.console import Console

    walk = Walk(nftlab.name, Console(file=io.StringIO(), width=200))
    assert walk.lab_setup() is False
    walk.kube_proxy()
    cap = walk.snoop()
    t = walk.targets
    assert not walk.problems, walk.problems
    assert nftlab.status()["mode"] == "kube-proxy-nft"
    to_np = [p for p in cap.between(t.client, t.ingress_ip) if p.dport == t.node_port]
    from_np = [p for p in cap.between(t.ingress_ip, t.client) if p.sport == t.node_port]
    assert to_np and from_np


def test_switch_nft_to_tunnel_and_back(nftlab: Lab) -> None:
    """nft -> tunnel (cleanup false: table kept, no NOTRACK needed) -> cleanup true (table gone) -> nft -> iptables -> nft."""
    nftlab.run("patch", "felixconfiguration", "default", '--patch={"spec": {"bpfKubeProxyIptablesCleanupEnabled": false}}')
    try:
        nftlab.run("mode", "tunnel", timeout=300)
        st = nftlab.status()
        assert st["mode"] == "tunnel" and st["kubeproxy"]["mode"] == "nftables"
        assert backends(nftlab) == {n: ["nftables"] for n in NODES}
        assert not any(doc["notrack"] for doc in st["dataplane"]["nodes"].values())
        # BPF serves the NodePort ahead of the table: host1's address is preserved
        entries = new_entries(nftlab, "customer", lambda: nftlab.curl("198.19.0.3:30180"))
        assert [e["client"] for e in entries] == ["198.19.15.254"]
        nftlab.run("patch", "felixconfiguration", "default", '--patch={"spec": {"bpfKubeProxyIptablesCleanupEnabled": true}}')
        assert backends(nftlab) == {n: [] for n in NODES}
    finally:
        nftlab.run("patch", "felixconfiguration", "default", '--patch={"spec": {"bpfKubeProxyIptablesCleanupEnabled": true}}')
        nftlab.run("mode", "kube-proxy-nft")
    assert backends(nftlab) == {n: ["nftables"] for n in NODES}
    entries = new_entries(nftlab, "customer", lambda: nftlab.curl("198.19.0.3:30180"))
    assert [e["client"] for e in entries] == ["198.19.0.3"]
    try:
        nftlab.run("mode", "kube-proxy")
        assert nftlab.status()["mode"] == "kube-proxy"
        assert backends(nftlab) == {n: ["iptables"] for n in NODES}  # no nft table in iptables mode
        entries = new_entries(nftlab, "customer", lambda: nftlab.curl("198.19.0.3:30180"))
        assert [e["client"] for e in entries] == ["198.19.0.3"]
    finally:
        nftlab.run("mode", "kube-proxy-nft")
    assert backends(nftlab) == {n: ["nftables"] for n in NODES}


def icmp_unreachables(lab: Lab, member: str) -> int:
    """ICMP destination-unreachable messages `member` has received (Icmp InDestUnreachs of /proc/net/snmp)."""
    lines = [ln.split() for ln in lab.exec(member, "cat", "/proc/net/snmp").stdout.splitlines() if ln.startswith("Icmp:")]
    return int(dict(zip(lines[0], lines[1]))["InDestUnreachs"])


def timed_curl(lab: Lab, member: str, url: str) -> tuple[int, float, str]:
    """curl from `member` (5 s limit): (curl's exit code, seconds it took by its own clock, its error line).
    curl's clock, not the caller's: starting `netns-lab exec` alone takes seconds on a slow (TCG) machine."""
    proc = lab.exec(member, "curl", "-sS", "-o", "/dev/null", "-w", "%{time_total}", "--max-time", "5", url,
                    check=False)
    return proc.returncode, float(proc.stdout.strip() or "inf"), proc.stderr.strip()


def test_service_without_endpoints_is_rejected_fast(nftlab: Lab) -> None:
    """customer scaled to 0: its NodePort (from host1) and ClusterIP (from a pod) are refused at once through the
    table's reject-chain (ICMP port unreachable: curl cannot connect, exit 7), not left to time out;
    scaled back to 1, both are served again."""
    st = nftlab.api().state()
    customer = next(s for s in st.services if s.name == "yaobank/customer")
    cluster_url = f"{customer.cluster_ip}:{customer.ports[0].port}"
    summary = nftlab.pod("summary-1")
    nftlab.run("scale", "deployment/customer", "-n", "yaobank", "--replicas", "0")
    try:
        listing = kubeproxy_nft.listing(nftlab.netns("control"))
        assert "goto reject-chain" in listing and "yaobank/customer:http" in listing
        before = icmp_unreachables(nftlab, "host1")
        code, secs, err = timed_curl(nftlab, "host1", "198.19.0.1:30180")
        assert code == 7, err  # couldn't connect (refused), not 28 (timed out)
        assert secs < 2.0, secs
        assert icmp_unreachables(nftlab, "host1") > before  # the reject's ICMP, not a TCP RST from the node
        code, secs, err = timed_curl(nftlab, summary, cluster_url)
        assert code == 7, err  # couldn't connect (refused), not 28 (timed out)
        assert secs < 2.0, secs
    finally:
        nftlab.run("scale", "deployment/customer", "-n", "yaobank", "--replicas", "1")
    entries = new_entries(nftlab, "customer", lambda: nftlab.curl("198.19.0.1:30180"))
    assert [e["client"] for e in entries] == ["198.19.0.1"]


def test_itp_local_holds_for_the_node_own_connections(nftlab: Lab) -> None:
    """summary with internalTrafficPolicy Local: node1's own curls reach only node1's summary pod (nat-output
    -> services -> local-<hash>), control's get no answer (no-endpoint-services `drop` in filter-output)."""
    url = "http://198.19.32.11/"   # yaobank/summary
    nftlab.run("patch", "svc", "summary", "-n", "yaobank", "-p", '{"spec": {"internalTrafficPolicy": "Local"}}')
    try:
        far, near = len(nftlab.log_entries("summary-2")), len(nftlab.log_entries("summary-1"))
        for _ in range(8):   # numgen random over both pods would send about half to node2's
            nftlab.exec("node1", "curl", "-sS", "--fail", "--max-time", "5", "-o", "/dev/null", url)
        deadline = time.monotonic() + 5
        while len(nftlab.log_entries("summary-1")) < near + 8 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(nftlab.log_entries("summary-1")) >= near + 8
        assert len(nftlab.log_entries("summary-2")) == far
        assert nftlab.exec("control", "curl", "-sS", "--max-time", "2", url, check=False).returncode == 28
    finally:
        nftlab.run("patch", "svc", "summary", "-n", "yaobank", "-p", '{"spec": {"internalTrafficPolicy": "Cluster"}}')
