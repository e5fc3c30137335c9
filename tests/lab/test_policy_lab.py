"""Traffic policies and no-endpoint services, side by side in kube-proxy and the eBPF modes, on a real lab.

One lab for the module: yaobank plus a NodePort service selecting nothing (yaobank/nobody,
30190); customer patched to externalTrafficPolicy Local (its pod is on node1, none on control)
and summary to internalTrafficPolicy Local. Each case is one row of CASES, checked in every mode.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import Lab, counter, running_lab

pytestmark = [pytest.mark.root, pytest.mark.lab]

NOBODY = Path(__file__).parent / "data" / "nobody-service.yaml"
HOST1 = "198.19.15.254"
MODES = ("kube-proxy", "kube-proxy-nft", "tunnel", "dsr")
KUBE_PROXY = ("kube-proxy", "kube-proxy-nft")
CURL_TIMEOUT, CURL_REFUSED = 28, 7


@pytest.fixture(scope="module")
def plab() -> Iterator[Lab]:
    """yaobank + nobody, customer eTP Local (patched live), summary iTP Local."""
    with running_lab("pol") as lab:
        lab.run("apply", "-f", str(NOBODY))
        out = lab.run("patch", "service", "customer", "-n", "yaobank", "-p",
                      '{"spec": {"externalTrafficPolicy": "Local", "healthCheckNodePort": 30000}}').stdout
        assert "service/customer patched" in out
        lab.run("patch", "svc", "summary", "-n", "yaobank", "-p", '{"spec": {"internalTrafficPolicy": "Local"}}')
        yield lab


def curl(lab: Lab, url: str, member: str = "host1") -> tuple[int, str]:
    """curl's exit status and body (2 s limit)."""
    p = lab.exec(member, "curl", "-sS", "-m", "2", url, check=False)
    return p.returncode, p.stdout


def health(lab: Lab, node: str) -> tuple[int, dict]:
    """The health check node port of node, asked from host1: (status, JSON body)."""
    p = lab.exec("host1", "curl", "-sS", "-m", "2", "-w", "\n%{http_code}", f"{lab.node_address(node)}:30000")
    body, _, code = p.stdout.rpartition("\n")
    return int(code), json.loads(body)


def icmp_unreach_sent(lab: Lab, node: str) -> int:
    """ICMP destination unreachables the node's kernel sent (/proc/net/snmp Icmp OutDestUnreachs)."""
    lines = [l.split() for l in lab.exec(node, "cat", "/proc/net/snmp").stdout.splitlines() if l.startswith("Icmp:")]
    return int(lines[1][lines[0].index("OutDestUnreachs")])


def rejected(lab: Lab, node: str, mode: str) -> int | None:
    """Refusals counted on node: kube-proxy's REJECT/DROP rule packets, or the datapath's DROP_NO_BACKEND.
    kube-proxy's nftables table has no counters: its REJECTs are counted by the kernel's ICMP statistics,
    its drops by nothing (None)."""
    if mode == "kube-proxy-nft":
        return None
    if mode == "kube-proxy":
        out = lab.exec(node, "iptables", "-t", "filter", "-L", "KUBE-EXTERNAL-SERVICES", "-v", "-n", "-x").stdout
        return sum(int(line.split()[0]) for line in out.splitlines()[2:] if line.strip())
    return counter(lab, node, "from_hep", "DROP_NO_BACKEND")


@pytest.mark.parametrize("mode", MODES)
def test_policies(plab: Lab, mode: str) -> None:
    """Every case of docs/traffic-policies.md in one mode (the modes run in order on one lab)."""
    plab.run("mode", mode, timeout=300)
    ctl, n1 = plab.node_address("control"), plab.node_address("node1")

    # eTP Local via node1 (local endpoint): served, the pod sees host1 itself.
    assert curl(plab, f"http://{n1}:30180/")[0] == 0
    assert plab.log_entries("customer")[-1]["client"] == HOST1

    # eTP Local via control (no local endpoint): kube-proxy drops (timeout), eBPF refuses (ICMP).
    before = rejected(plab, "control", mode)
    code, _ = curl(plab, f"http://{ctl}:30180/")
    assert code == (CURL_TIMEOUT if mode in KUBE_PROXY else CURL_REFUSED)
    if before is not None:
        assert rejected(plab, "control", mode) > before

    # healthCheckNodePort on both nodes, as kube-proxy's health server answers.
    assert health(plab, "control") == (503, {"service": {"namespace": "yaobank", "name": "customer"},
                                             "localEndpoints": 0, "serviceProxyHealthy": True})
    assert health(plab, "node1")[0] == 200 and health(plab, "node1")[1]["localEndpoints"] == 1

    # A service with no endpoints: refused (ICMP port unreachable) in every mode, and counted.
    before, icmp = rejected(plab, "control", mode), icmp_unreach_sent(plab, "control")
    assert curl(plab, f"http://{ctl}:30190/")[0] == CURL_REFUSED
    if before is not None:
        assert rejected(plab, "control", mode) > before
    if mode == "kube-proxy-nft":
        assert icmp_unreach_sent(plab, "control") > icmp
    nobody_ip = json.loads(plab.run("get", "svc", "nobody", "-n", "yaobank", "-o", "json").stdout)["spec"]["clusterIP"]
    assert curl(plab, f"http://{nobody_ip}:80/", plab.pod("customer"))[0] == CURL_REFUSED

    # iTP Local: the customer pod (node1) reaches only node1's summary pod through the ClusterIP.
    far = len(plab.log_entries("summary-2"))
    near = len(plab.log_entries("summary-1"))
    for _ in range(6):
        assert curl(plab, "http://198.19.32.11:80/", plab.pod("customer"))[0] == 0
    assert len(plab.log_entries("summary-2")) == far
    assert len(plab.log_entries("summary-1")) >= near + 6
