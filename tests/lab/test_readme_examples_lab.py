"""The README's example manifests (examples/nginx.yaml, loadbalancer.yaml, local-traffic.yaml) do what the
README says, per mode: `apply -f` them onto the lesson's lab, then curl from host1 (and from node2)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import Lab, running_lab

pytestmark = [pytest.mark.root, pytest.mark.lab]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
HOST1 = "198.19.15.254"
CONTROL, NODE1, NODE2 = "198.19.0.1", "198.19.0.2", "198.19.0.3"
MODES = ["kube-proxy", "kube-proxy-nft", "tunnel", "dsr"]


@pytest.fixture(scope="module")
def examples_lab() -> Iterator[Lab]:
    """The default lab with the README's three example manifests applied live (as the README does)."""
    with running_lab("rx") as lab:
        for name in ("nginx", "loadbalancer", "local-traffic"):
            lab.run("apply", "-f", str(EXAMPLES / f"{name}.yaml"))
        yield lab


def curl(lab: Lab, url: str, member: str = "host1") -> tuple[int, str]:
    """curl's exit status and body (3 s at most: a dropped packet is exit 28, a refusal exit 7)."""
    proc = lab.exec(member, "curl", "-s", "--max-time", "3", url, check=False)
    return proc.returncode, proc.stdout


def source(body: str) -> str:
    """The address of a /clientip answer (`ip:port`)."""
    return body.rsplit(":", 1)[0]


def test_loadbalancer_addresses_in_get_svc(examples_lab: Lab) -> None:
    rows = {line.split()[0]: line.split() for line in examples_lab.run("get", "svc", "-n", "lb").stdout.splitlines()[1:]}
    assert {name: (row[1], row[3]) for name, row in rows.items()} == {
        "web": ("LoadBalancer", "198.19.48.1"), "ranged": ("LoadBalancer", "198.19.48.2"),
        "sticky": ("LoadBalancer", "198.19.48.3")}


@pytest.mark.parametrize("mode", MODES)
def test_readme_examples(examples_lab: Lab, mode: str) -> None:
    lab = examples_lab
    if lab.status()["mode"] != mode:
        lab.run("mode", mode, timeout=300)
    ebpf = mode in ("tunnel", "dsr")
    web = {p["metadata"]["name"] for p in json.loads(lab.run("get", "pods", "-n", "lb", "-o", "json").stdout)["items"]}
    # nginx: SNAT to the ingress node in kube-proxy mode, host1 itself in the eBPF modes
    code, body = curl(lab, f"{CONTROL}:30080/clientip")
    assert (code, source(body)) == (0, HOST1 if ebpf else CONTROL), body
    # Maglev service: answered by one of the lb pods
    code, body = curl(lab, "198.19.48.1/hostname")
    assert code == 0 and body.strip() in web, body
    # source ranges: host1 is in 198.19.15.0/24; node2 is refused by kube-proxy, let through by eBPF
    assert curl(lab, "198.19.48.2/clientip")[0] == 0
    code, body = curl(lab, "198.19.48.2/clientip", member="node2")
    assert (code == 0) == ebpf, (code, body)
    # ClientIP affinity: one pod for every curl of host1
    picks = {curl(lab, "198.19.48.3/hostname")[1].strip() for _ in range(6)}
    assert len(picks) == 1 and picks <= web, picks
    if ebpf:
        rows = json.loads(lab.run("dump", "affinity", "--node", "control", "-o", "json").stdout)["nodes"][0]["affinity"]
        assert [r["expires_in_s"] > 0 for r in rows if r["frontend"] == "198.19.48.3:80"] == [True], rows
    # externalTrafficPolicy Local: no SNAT through node1 (its pod); node2 has none: dropped / refused
    code, body = curl(lab, f"{NODE1}:30280/clientip")
    assert (code, source(body)) == (0, HOST1), body
    assert curl(lab, f"{NODE2}:30280/clientip")[0] == (7 if ebpf else 28)
    # healthCheckNodePort: 200 with a local endpoint, 503 without
    for node, status, local in ((NODE1, "200", 1), (NODE2, "503", 0)):
        proc = lab.exec("host1", "curl", "-s", "--max-time", "3", "-w", "\n%{http_code}", f"{node}:30281")
        body, _, code = proc.stdout.rpartition("\n")
        assert (code, json.loads(body)["localEndpoints"]) == (status, local), proc.stdout
