"""A node's own connections to services (issue 15): connect-time load balancing and the per-packet path.

Every case runs in kube-proxy mode (the reference: its OUTPUT-chain DNAT serves a node's
own sockets) and in both eBPF modes. In eBPF mode a TCP socket of `exec NODE` is given its
backend in connect() (the node's to_hep counts no NAT for it); UDP, under Calico's default
bpfConnectTimeLoadBalancing TCP, is NATed per packet by to_hep; with Disabled everything is.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from ebpf_nodeport.sync import Backend, Service
from netns_lab import cgroups, dataplane

from .conftest import Lab, counter, running_lab, wait_for

pytestmark = [pytest.mark.root, pytest.mark.lab]

CUSTOMER_CIP = "198.19.32.10"
NODES = {"control": "198.19.0.1", "node1": "198.19.0.2", "node2": "198.19.0.3"}

# What the application sees: the peer of a TCP connection and the source of a UDP reply.
PEER_SCRIPT = r"""
import json, socket, sys
addr, tcp_port, udp_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
t = socket.create_connection((addr, tcp_port), timeout=5)
t.sendall(b"GET / HTTP/1.0\r\n\r\n")
page = b""
while True:
    chunk = t.recv(65536)
    if not chunk:
        break
    page += chunk
peer = t.getpeername()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(5)
u.sendto(b"ping-issue15", (addr, udp_port))
data, src = u.recvfrom(100)
print(json.dumps({"tcp_peer": list(peer), "page": b"2389.45 USD" in page, "udp": data.decode(), "udp_src": list(src)}))
"""


@pytest.fixture(scope="module", params=["kube-proxy", "tunnel", "dsr"])
def lab(request) -> Iterator[Lab]:
    """One default lab per mode."""
    with running_lab("h", request.param) as lab:
        lab.mode = request.param  # type: ignore[attr-defined]
        yield lab


def cluster_ip(lab: Lab, service: str) -> str:
    """A service's cluster IP as the lab allocated it (`status`)."""
    return next(s["cluster_ip"] for s in lab.status()["services"] if s["name"] == service)


def ebpf(lab: Lab) -> bool:
    return lab.mode != "kube-proxy"  # type: ignore[attr-defined]


def app_view(lab: Lab, node: str, addr: str, tcp_port: int, udp_port: int) -> dict:
    """Run PEER_SCRIPT on a node through `exec` (so in the node's cgroup)."""
    out = lab.exec(node, "python3", "-c", PEER_SCRIPT, addr, str(tcp_port), str(udp_port)).stdout
    return json.loads(out)


def to_hep_nat(lab: Lab, node: str) -> int:
    """New connections the node's to_hep NATed per packet."""
    return counter(lab, node, "to_hep", "NAT_NEW")


def patch(lab: Lab, spec: dict) -> None:
    lab.run("patch", "felixconfiguration", "default", "--patch", json.dumps({"spec": spec}))


@pytest.mark.parametrize("node,addr,tcp_port,udp_port,per_packet", [
    ("node2", CUSTOMER_CIP, 80, 7, 1),         # ClusterIP, backend on another node
    ("node1", CUSTOMER_CIP, 80, 7, 1),         # ClusterIP, backend a pod of this node
    ("node1", NODES["control"], 30180, 30107, 1),   # another node's NodePort, backend on this node
    ("node2", NODES["node2"], 30180, 30107, 0),     # its own NodePort: via lo, so UDP is balanced at sendmsg too
])
def test_node_reaches_a_service_and_sees_the_frontend(lab: Lab, node: str, addr: str, tcp_port: int,
                                                      udp_port: int, per_packet: int) -> None:
    before = to_hep_nat(lab, node) if ebpf(lab) else 0
    seen = app_view(lab, node, addr, tcp_port, udp_port)
    assert seen == {"tcp_peer": [addr, tcp_port], "page": True, "udp": "ping-issue15", "udp_src": [addr, udp_port]}
    if ebpf(lab):
        # TCP was balanced at connect(); UDP (bpfConnectTimeLoadBalancing TCP) per packet: one new flow
        assert to_hep_nat(lab, node) - before == per_packet


def test_customer_log_shows_the_node_for_a_balanced_curl(lab: Lab) -> None:
    """`exec node2 -- curl 198.19.32.10`: the customer pod sees node2's own address as client."""
    before = len(lab.log_entries("customer"))
    assert "2389.45 USD" in lab.curl(f"http://{CUSTOMER_CIP}/", member="node2")
    assert wait_for(lambda: len(lab.log_entries("customer")) > before, timeout=5, interval=0.05)
    entries = lab.log_entries("customer")[before:]
    assert NODES["node2"] in {e["client"] for e in entries}, entries


def test_cgroup_programs_follow_the_setting(lab: Lab) -> None:
    """TCP (default): four programs on each node's cgroup; Disabled: none, and to_hep NATs TCP too."""
    if not ebpf(lab):
        st = lab.status()
        assert all(not n["ctlb_programs"] for n in st["dataplane"]["nodes"].values())
        return
    st = lab.status()
    assert st["dataplane"]["cgroup2"] == str(cgroups.find_cgroup2())
    assert st["dataplane"]["connect_time_lb"] == "TCP"
    for node, n in st["dataplane"]["nodes"].items():
        assert n["cgroup"] == str(cgroups.node_cgroup(lab.name, node))
        assert {p["hook"] for p in n["ctlb_programs"]} == {
            "cgroup_inet4_connect", "cgroup_udp4_sendmsg", "cgroup_udp4_recvmsg", "cgroup_inet4_getpeername"}
    try:
        patch(lab, {"bpfConnectTimeLoadBalancing": "Disabled"})
        st = lab.status()
        assert st["dataplane"]["connect_time_lb"] == "Disabled"
        assert all(not n["ctlb_programs"] for n in st["dataplane"]["nodes"].values())
        before = to_hep_nat(lab, "node2")
        seen = app_view(lab, "node2", CUSTOMER_CIP, 80, 7)
        assert seen["page"] and seen["tcp_peer"] == [CUSTOMER_CIP, 80] and seen["udp_src"] == [CUSTOMER_CIP, 7]
        assert to_hep_nat(lab, "node2") - before == 2   # TCP and UDP, both per packet now

        patch(lab, {"bpfConnectTimeLoadBalancing": "Enabled"})
        before = to_hep_nat(lab, "node2")
        seen = app_view(lab, "node2", CUSTOMER_CIP, 80, 7)
        assert seen["page"] and seen["udp_src"] == [CUSTOMER_CIP, 7]
        assert to_hep_nat(lab, "node2") == before       # both balanced at connect()/sendmsg()
    finally:
        patch(lab, {"bpfConnectTimeLoadBalancing": "TCP"})


def test_bad_ctlb_value_is_refused(lab: Lab) -> None:
    proc = lab.run("patch", "felixconfiguration", "default", "--patch",
                   '{"spec": {"bpfConnectTimeLoadBalancing": "UDP"}}', check=False)
    assert proc.returncode != 0
    assert "bpfConnectTimeLoadBalancing must be one of TCP, Enabled, Disabled" in proc.stderr


def test_pod_reaching_its_own_service_gets_every_answer(lab: Lab) -> None:
    """summary-1 curls the summary service: every request answered, also the ones it serves itself,
    which it sees coming from its node's address (SNAT, as kube-proxy's MASQUERADE does)."""
    summary = lab.pod("summary-1")
    url = f"http://{cluster_ip(lab, 'yaobank/summary')}/"
    for _ in range(6):
        lab.exec(summary, "curl", "-sS", "--fail", "--max-time", "5", "-o", "/dev/null", url)
    before = len(lab.log_entries(summary))
    # two backends, chosen by hash or at random: well within 40 tries one lands on summary-1
    for _ in range(40):
        lab.exec(summary, "curl", "-sS", "--fail", "--max-time", "5", "-o", "/dev/null", url)
        if wait_for(lambda: len(lab.log_entries(summary)) > before, timeout=0.3, interval=0.05):
            break
    mine = lab.log_entries(summary)[before:]
    assert mine, "summary-1 never served its own request"
    assert {e["client"] for e in mine} == {NODES["node1"]}


def test_host_network_endpoint_answers_through_the_nodeport(lab: Lab) -> None:
    """A NodePort whose endpoint is node2's own address (a host-network server): host1 reaches it
    through control and gets the answer from control's NodePort, its own address preserved."""
    if not ebpf(lab):
        pytest.skip("kube-proxy's rules come from the topology, which has no host-network endpoint")
    st = lab.api().state()
    view = dataplane.cluster_view(st, st.felix)
    view.services.append(Service("test/hostnet", "tcp", "198.19.32.60", 9000, 30600,
                                 [Backend(NODES["node2"], 9000)]))
    server = subprocess.Popen(["ip", "netns", "exec", lab.netns("node2"), sys.executable, "-m", "http.server",
                               "9000", "--bind", NODES["node2"]], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: lab.exec("node2", "curl", "-s", "-o", "/dev/null", f"http://{NODES['node2']}:9000/",
                                         check=False).returncode == 0, timeout=10, interval=0.1)
        for node in NODES:
            dataplane.datapath(st, node).sync(view)
        for ingress in ("control", "node2"):
            lab.exec("host1", "curl", "-sS", "--fail", "--max-time", "5", "-o", "/dev/null",
                     f"http://{NODES[ingress]}:30600/")
    finally:
        server.terminate()
        _, log = server.communicate(timeout=10)
        original = dataplane.cluster_view(st, st.felix)
        for node in NODES:
            dataplane.datapath(st, node).sync(original)
    clients = [line.split()[0] for line in log.splitlines() if '"GET / HTTP' in line]
    assert clients.count("198.19.15.254") == 2, log   # both through the NodePort, source preserved


FRAG_SCRIPT = r"""
import socket, sys
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.setsockopt(socket.IPPROTO_IP, 10, 0)   # IP_MTU_DISCOVER = IP_PMTUDISC_DONT: DF clear
u.settimeout(5)
msg = bytes(i % 251 for i in range(int(sys.argv[3])))
u.sendto(msg, (sys.argv[1], int(sys.argv[2])))
data, src = u.recvfrom(65536)
print(len(data), data == msg, src[0], src[1])
"""


@pytest.mark.parametrize("ingress", ["control", "node1"])   # backend on another node / on the ingress node
def test_fragmented_datagram_through_the_nodeport_comes_back_whole(lab: Lab, ingress: str) -> None:
    """4,000 bytes of UDP from host1 with DF clear: three fragments there, echoed back whole."""
    out = lab.exec("host1", "python3", "-c", FRAG_SCRIPT, NODES[ingress], "30107", "4000").stdout.split()
    assert out == ["4000", "True", NODES[ingress], "30107"]


@pytest.mark.parametrize("ctlb", ["TCP", "Disabled"])
def test_itp_local_holds_for_the_node_own_connections(lab: Lab, ctlb: str) -> None:
    """summary with internalTrafficPolicy Local: node1's own connections to its ClusterIP reach only node1's
    summary pod, and control (no summary pod) gets no answer, as kube-proxy's OUTPUT chain treats a node's
    sockets (KUBE-SVL, "has no local endpoints" DROP). eBPF: at connect() (ctlb TCP) and per packet in
    to_hep (Disabled)."""
    if not ebpf(lab) and ctlb != "TCP":
        pytest.skip("connect-time LB is an eBPF-mode setting")
    url = f"http://{cluster_ip(lab, 'yaobank/summary')}/"
    lab.run("patch", "svc", "summary", "-n", "yaobank", "-p", '{"spec": {"internalTrafficPolicy": "Local"}}')
    if ctlb != "TCP":
        patch(lab, {"bpfConnectTimeLoadBalancing": ctlb})
    try:
        far, near = len(lab.log_entries("summary-2")), len(lab.log_entries("summary-1"))
        for _ in range(8):   # at random or by hash over both pods, about half would go to node2's
            lab.exec("node1", "curl", "-sS", "--fail", "--max-time", "5", "-o", "/dev/null", url)
        assert wait_for(lambda: len(lab.log_entries("summary-1")) >= near + 8, timeout=5, interval=0.05)
        assert len(lab.log_entries("summary-2")) == far
        assert lab.exec("control", "curl", "-sS", "--max-time", "2", url, check=False).returncode == 28
    finally:
        lab.run("patch", "svc", "summary", "-n", "yaobank", "-p", '{"spec": {"internalTrafficPolicy": "Cluster"}}')
        if ctlb != "TCP":
            patch(lab, {"bpfConnectTimeLoadBalancing": "TCP"})
