"""The lesson's first section on a real lab: NodePort through kube-proxy loses the client's source IP.

One kube-proxy lab (default yaobank topology) is shared by this module's tests.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading

import pytest

from netns_lab import kubeproxy, naming
from netns_lab.k8s.manifest import default_lab
from netns_lab.topology import plan

from .conftest import CLI, Lab, wait_for

pytestmark = [pytest.mark.root, pytest.mark.lab]

# The lesson's log line, e.g. 198.19.0.1 - - [20/Oct/2020 23:58:06] "GET / HTTP/1.1" 200 -
LESSON_LINE = re.compile(r'^(\S+) - - \[\d\d/[A-Z][a-z]{2}/\d{4} \d\d:\d\d:\d\d\] "GET / HTTP/1\.1" 200 -$')


def new_entries(lab: Lab, pod: str, action) -> list[dict]:
    """Access-log entries a pod gains while `action()` runs."""
    before = len(lab.log_entries(pod))
    action()
    # the app writes its line after sending the reply: give it a moment
    entries: list[dict] = []

    def grown() -> bool:
        nonlocal entries
        entries = lab.log_entries(pod)[before:]
        return bool(entries)

    wait_for(grown, timeout=5, interval=0.05)
    return entries


def test_status_reports_mode_addresses_and_running_apps(yaobank: Lab) -> None:
    st = yaobank.status()
    assert st["status"] == "ready"
    assert st["mode"] == "kube-proxy"
    assert st["felix"]["bpfEnabled"] is False
    assert {n["name"]: n["address"] for n in st["nodes"]} == {"control": "198.19.0.1", "node1": "198.19.0.2", "node2": "198.19.0.3"}
    assert {h["name"]: h["address"] for h in st["hosts"]} == {"host1": "198.19.15.254"}
    pods = {p["name"]: p for p in st["pods"]}
    # the addresses of docs/conventions.md, now for the Deployments' pods of examples/yaobank.yaml
    assert {yaobank.role(name): p["ip"] for name, p in pods.items()} == {
        "customer": "198.19.16.65",
        "summary-1": "198.19.16.66",
        "summary-2": "198.19.16.129",
        "database": "198.19.16.130",
    }
    assert all(p["running"] for p in pods.values())
    assert all(n["present"] for n in st["nodes"] + st["hosts"])


def test_nodeport_via_control_serves_the_bank_page(yaobank: Lab) -> None:
    page = yaobank.curl("198.19.0.1:30180")
    assert "Welcome to YAO Bank" in page
    assert "Spike Curtis" in page and "2389.45 USD" in page  # the database's data, through summary
    assert re.search(r"summary pod: summary-[a-z0-9]+-[a-z0-9]{5}; database pod: database-[a-z0-9]+-[a-z0-9]{5}", page)


def test_customer_log_shows_the_ingress_node_not_the_client(yaobank: Lab) -> None:
    """The lesson: kube-proxy SNATs NodePort traffic on the ingress node, so the pod logs 198.19.0.1."""
    entries = new_entries(yaobank, "customer", lambda: yaobank.curl("198.19.0.1:30180"))
    assert [(e["client"], e["request"], e["status"]) for e in entries] == [("198.19.0.1", "GET / HTTP/1.1", 200)]
    raw = yaobank.run("logs", "-n", "yaobank", "-l", "app=customer").stdout.splitlines()[-1]
    assert LESSON_LINE.match(raw), raw
    assert raw.startswith("198.19.0.1 - - [")


def test_local_backend_via_node1_is_masqueraded_too(yaobank: Lab) -> None:
    """kube-proxy marks every NodePort packet (KUBE-EXT -> KUBE-MARK-MASQ), even with a local backend:
    MASQUERADE picks node1's own address, so the pod still does not see host1."""
    entries = new_entries(yaobank, "customer", lambda: yaobank.curl("198.19.0.2:30180"))
    assert [e["client"] for e in entries] == ["198.19.0.2"]


def test_nodeport_via_node2_shows_node2(yaobank: Lab) -> None:
    entries = new_entries(yaobank, "customer", lambda: yaobank.curl("198.19.0.3:30180"))
    assert [e["client"] for e in entries] == ["198.19.0.3"]


def test_both_summary_replicas_get_traffic(yaobank: Lab) -> None:
    before = {p: len(yaobank.log_entries(p)) for p in ("summary-1", "summary-2")}
    # 24 separate connections (P(one replica never picked) = 2 * 0.5**24), in one exec to keep it quick
    loop = "for i in $(seq 24); do curl -sS --fail --max-time 10 198.19.0.1:30180 || exit 1; done"
    pages = yaobank.exec("host1", "sh", "-c", loop).stdout
    picks = re.findall(r"summary pod: (summary-[a-z0-9-]+);", pages)
    assert len(picks) == 24
    assert set(picks) == {yaobank.pod("summary-1"), yaobank.pod("summary-2")}
    for pod in ("summary-1", "summary-2"):
        new = yaobank.log_entries(pod)[before[pod]:]
        assert new, pod
        # pod -> ClusterIP is DNAT only: the summary pods see the customer pod's own address
        assert {e["client"] for e in new} == {"198.19.16.65"}


def test_udp_nodeport_echo(yaobank: Lab) -> None:
    script = (
        "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3); "
        "s.sendto(b'yaobank-echo', ('198.19.0.1', 30107)); data, peer = s.recvfrom(100); print(data.decode(), peer[0], peer[1])"
    )
    out = yaobank.exec("host1", "python3", "-c", script).stdout.split()
    assert out == ["yaobank-echo", "198.19.0.1", "30107"]


def test_kube_proxy_chains_are_in_every_node(yaobank: Lab) -> None:
    topo = default_lab()
    rs = kubeproxy.ruleset(topo, plan(topo), "control")
    for node in ("control", "node1", "node2"):
        saved = kubeproxy.save(yaobank.netns(node))
        for chain in rs.chains:
            assert f":{chain} - " in saved, (node, chain)
        assert saved.count("-j KUBE-SERVICES") == 2  # PREROUTING and OUTPUT, once each
        assert saved.count("-j KUBE-POSTROUTING") == 1
        assert "--mode random --probability 0.50000000000" in saved
    # hosts are not cluster members: no kube-proxy there
    assert "KUBE-" not in kubeproxy.save(yaobank.netns("host1"))


def test_pod_plumbing_is_calico_style(yaobank: Lab) -> None:
    ns = yaobank.netns("customer")
    link = subprocess.run(["ip", "-n", ns, "-o", "link", "show", "eth0"], capture_output=True, text=True, check=True).stdout
    assert " mtu 1450 " in link
    addr = subprocess.run(["ip", "-n", ns, "-o", "-4", "addr", "show", "eth0"], capture_output=True, text=True, check=True).stdout
    assert "inet 198.19.16.65/32 " in addr
    routes = subprocess.run(["ip", "-n", ns, "route"], capture_output=True, text=True, check=True).stdout
    assert "default via 169.254.1.1 dev eth0" in routes and "onlink" in routes
    cali = naming.cali_ifname(yaobank.name, yaobank.pod("customer"))
    sysctls = yaobank.exec(
        "node1",
        "cat",
        f"/proc/sys/net/ipv4/conf/{cali}/proxy_arp",
        "/proc/sys/net/ipv4/ip_forward",
        "/proc/sys/net/ipv4/conf/eth0/arp_ignore",
        "/proc/sys/net/ipv4/conf/eth0/arp_announce",
    ).stdout.split()
    assert sysctls == ["1", "1", "1", "2"]
    node_routes = subprocess.run(
        ["ip", "-n", yaobank.netns("node1"), "route"], capture_output=True, text=True, check=True
    ).stdout
    assert f"198.19.16.65 dev {cali} " in node_routes
    assert "198.19.16.0/26 via 198.19.0.1 dev eth0" in node_routes
    assert "198.19.16.128/26 via 198.19.0.3 dev eth0" in node_routes


def test_root_namespace_has_no_lab_route_or_interface(yaobank: Lab) -> None:
    routes = subprocess.run(["ip", "route", "show", "table", "all"], capture_output=True, text=True, check=True).stdout
    assert "198.19." not in routes
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    assert naming.cali_ifname(yaobank.name, yaobank.pod("customer")) not in links


def test_second_up_changes_nothing(yaobank: Lab) -> None:
    before = yaobank.status()
    rules_before = kubeproxy.save(yaobank.netns("control"))
    proc = yaobank.run("up")
    assert "already up" in proc.stdout and "nothing changed" in proc.stdout
    after = yaobank.status()
    assert [p["pid"] for p in after["pods"]] == [p["pid"] for p in before["pods"]]
    assert _rules(kubeproxy.save(yaobank.netns("control"))) == _rules(rules_before)
    # asking for another mode on a lab that is up is refused, nothing changed
    other = yaobank.run("up", "--mode", "tunnel", check=False)
    assert other.returncode != 0
    assert yaobank.status()["mode"] == "kube-proxy"


def _rules(saved: str) -> list[str]:
    """iptables-save output without its timestamped comment lines."""
    return [line for line in saved.splitlines() if not line.startswith("#")]


def test_exec_passes_exit_status_and_rejects_unknown_members(yaobank: Lab) -> None:
    assert yaobank.exec("host1", "sh", "-c", "exit 7", check=False).returncode == 7
    proc = yaobank.exec("node9", "true", check=False)
    assert proc.returncode == 1
    members = sorted(["control", "fabric", "host1", "node1", "node2",
                      *(yaobank.pod(r) for r in ("customer", "summary-1", "summary-2", "database"))])
    assert proc.stderr.strip().splitlines() == [
        f"netns-lab: error: unknown member 'node9' of lab '{yaobank.name}' (members: {', '.join(members)})"
    ]
    # the member runs in its own namespace: host1's only address is its fabric one
    addrs = yaobank.exec("host1", "ip", "-o", "-4", "addr", "show", "eth0").stdout
    assert "198.19.15.254/20" in addrs


def test_logs_follow_streams_new_requests(yaobank: Lab) -> None:
    """Like the lesson's `kubectl logs --follow`: existing lines first, then each new request as it happens."""
    existing = len(yaobank.log_entries("customer"))
    follower = subprocess.Popen(
        [*CLI, "logs", "--name", yaobank.name, "-n", "yaobank", "-l", "app=customer", "--follow", "-o", "json"],
        stdout=subprocess.PIPE, text=True
    )
    try:
        assert follower.stdout is not None
        for _ in range(existing):
            assert follower.stdout.readline()
        yaobank.curl("198.19.0.1:30180")
        box: list[str] = []
        reader = threading.Thread(target=lambda: box.append(follower.stdout.readline()), daemon=True)
        reader.start()
        reader.join(10)
        assert box, "no new line within 10s"
        entry = json.loads(box[0])
        assert (entry["client"], entry["request"], entry["status"]) == ("198.19.0.1", "GET / HTTP/1.1", 200)
    finally:
        follower.terminate()
        follower.wait(5)
