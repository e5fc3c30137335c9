"""The lesson's "Enable Calico eBPF" and "Source IP preservation" on real labs (issue 3, lab side).

One lab brought up directly with `up --mode tunnel` is shared by the read-mostly tests
(the pod deletion runs last: it moves the customer pod to a new address). The live
switches between kube-proxy and eBPF get a lab of their own.
"""

from __future__ import annotations

import json
import re

import pytest

from netns_lab import dataplane, kubeproxy, naming

from .conftest import Lab, cli, counter, host_python, running_lab, same_port_twice, unique_lab, wait_for

pytestmark = [pytest.mark.root, pytest.mark.lab]

HOST1 = "198.19.15.254"
NODES = {"control": "198.19.0.1", "node1": "198.19.0.2", "node2": "198.19.0.3"}
LESSON_LINE = re.compile(r'^198\.19\.15\.254 - - \[\d\d/[A-Z][a-z]{2}/\d{4} \d\d:\d\d:\d\d\] "GET / HTTP/1\.1" 200 -$')


@pytest.fixture(scope="module")
def tunnel_lab() -> Lab:
    """A default lab brought up straight into eBPF Tunnel mode (`up --mode tunnel`)."""
    with running_lab("e", "tunnel") as lab:
        yield lab


def new_entries(lab: Lab, pod: str, action) -> list[dict]:
    """Access-log entries a pod gains while `action()` runs (waits briefly for the line to be written)."""
    before = len(lab.log_entries(pod))
    action()
    box: list[dict] = []

    def grown() -> bool:
        box[:] = lab.log_entries(pod)[before:]
        return bool(box)

    wait_for(grown, timeout=5, interval=0.05)
    return box


def kube_rules(lab: Lab, node: str) -> list[str]:
    """Every KUBE-* line of a node's nat and filter tables."""
    return [line for table in ("nat", "filter") for line in kubeproxy.save(lab.netns(node), table).splitlines()
            if "KUBE-" in line]


# --------------------------------------------------------------------------- lab brought up in tunnel mode


def test_up_mode_tunnel_attaches_the_datapath_everywhere(tunnel_lab: Lab) -> None:
    st = tunnel_lab.status()
    assert st["status"] == "ready" and st["mode"] == "tunnel"
    assert st["felix"]["bpfEnabled"] is True and st["felix"]["bpfExternalServiceMode"] == "Tunnel"
    pods_by_node: dict[str, set[str]] = {}
    for p in st["pods"]:
        assert p["running"], p
        pods_by_node.setdefault(p["node"], set()).add(p["host_ifname"])
    dp = st["dataplane"]
    for node in NODES:
        n = dp["nodes"][node]
        assert n["datapath_loaded"] is True
        progs = {(p["interface"], p["hook"], p["program"]) for p in n["programs"]}
        want = {("eth0", "ingress", "from_hep"), ("eth0", "egress", "to_hep")}
        for cali in pods_by_node.get(node, ()):
            want |= {(cali, "ingress", "from_wep"), (cali, "egress", "to_wep")}
        assert progs == want, node
        assert n["kube_proxy_rules"] is False and n["notrack"] is False


def test_curl_via_control_preserves_the_client_address(tunnel_lab: Lab) -> None:
    """The lesson's observation: the customer pod logs host1 (198.19.15.254), not the ingress node."""
    page: list[str] = []
    entries = new_entries(tunnel_lab, "customer", lambda: page.append(tunnel_lab.curl("198.19.0.1:30180")))
    assert "Welcome to YAO Bank" in page[0] and "2389.45 USD" in page[0] and page[0].rstrip().endswith("</html>")
    assert [(e["client"], e["request"], e["status"]) for e in entries] == [(HOST1, "GET / HTTP/1.1", 200)]
    assert LESSON_LINE.match(tunnel_lab.run("logs", "-n", "yaobank", "-l", "app=customer").stdout.splitlines()[-1])


@pytest.mark.parametrize(
    "ingress,what",
    [("node2", "remote backend, another ingress node"), ("node1", "local backend")],
)
def test_curl_via_other_nodes_preserves_the_client_address(tunnel_lab: Lab, ingress: str, what: str) -> None:
    encap_before = counter(tunnel_lab, ingress, "from_hep", "NAT_NEW")
    decap_before = counter(tunnel_lab, "node1", "from_hep", "DECAP")
    entries = new_entries(tunnel_lab, "customer", lambda: tunnel_lab.curl(f"{NODES[ingress]}:30180"))
    assert [e["client"] for e in entries] == [HOST1], what
    assert counter(tunnel_lab, ingress, "from_hep", "NAT_NEW") == encap_before + 1  # the SYN picked the backend there
    decaps = counter(tunnel_lab, "node1", "from_hep", "DECAP") - decap_before
    if ingress == "node1":
        assert decaps == 0  # delivered on the spot, no tunnel
    else:
        assert decaps >= 3  # SYN, ACK, request at least: tunnelled from node2 to node1


@pytest.mark.parametrize("ingress", ["control", "node1"])
def test_udp_nodeport_round_trip(tunnel_lab: Lab, ingress: str) -> None:
    addr = NODES[ingress]
    script = (
        "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3); "
        f"s.sendto(b'yaobank-echo', ('{addr}', 30107)); data, peer = s.recvfrom(100); print(data.decode(), peer[0], peer[1])"
    )
    assert host_python(tunnel_lab, script).split() == ["yaobank-echo", addr, "30107"]


def test_app_chain_works_with_kube_proxy_rules_deleted(tunnel_lab: Lab) -> None:
    """customer -> summary -> database through ClusterIPs, handled by from_wep/to_wep alone."""
    for node in NODES:
        assert kube_rules(tunnel_lab, node) == [], node
    st = {tunnel_lab.role(p["name"]): p for p in tunnel_lab.status()["pods"]}
    summaries_before = {p: len(tunnel_lab.log_entries(p)) for p in ("summary-1", "summary-2")}
    db_before = len(tunnel_lab.log_entries("database"))
    loop = "for i in $(seq 16); do curl -sS --fail --max-time 10 198.19.0.1:30180 || exit 1; done"
    pages = tunnel_lab.exec("host1", "sh", "-c", loop).stdout
    picks = re.findall(r"summary pod: (summary-[a-z0-9-]+); database pod: database", pages)
    assert len(picks) == 16 and set(picks) == {tunnel_lab.pod("summary-1"), tunnel_lab.pod("summary-2")}
    for pod in ("summary-1", "summary-2"):
        new = tunnel_lab.log_entries(pod)[summaries_before[pod]:]
        assert {e["client"] for e in new} == {st["customer"]["ip"]}, pod  # ClusterIP: DNAT only
    db = tunnel_lab.log_entries("database")[db_before:]
    assert len(db) == 16 and {e["client"] for e in db} <= {st["summary-1"]["ip"], st["summary-2"]["ip"]}


def test_a_thousand_sequential_and_a_hundred_concurrent_requests(tunnel_lab: Lab) -> None:
    script = r"""
import concurrent.futures, http.client, threading
def get(addr):
    c = http.client.HTTPConnection(addr, 30180, timeout=20)
    try:
        c.request("GET", "/", headers={"Connection": "close"})
        r = c.getresponse()
        body = r.read()
        return r.status == 200 and body.rstrip().endswith(b"</html>") and b"2389.45 USD" in body
    except Exception as exc:
        return repr(exc)
    finally:
        c.close()
addrs = ["198.19.0.1", "198.19.0.2", "198.19.0.3"]
seq = [get(addrs[i % 3]) for i in range(1000)]
start = threading.Barrier(100)
def burst(i):
    start.wait()
    return get(addrs[i % 3])
with concurrent.futures.ThreadPoolExecutor(100) as pool:
    conc = list(pool.map(burst, range(100)))
bad = [r for r in seq + conc if r is not True]
print(len(seq), len(conc), len(bad), bad[:3])
"""
    assert host_python(tunnel_lab, script).strip().split(maxsplit=3) == ["1000", "100", "0", "[]"]


CAPTURE_SCRIPT = r"""
import json, select, socket, struct, sys, time
peer, limit = sys.argv[1], float(sys.argv[2])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
s.setsockopt(263, 8, 1)   # SOL_PACKET, PACKET_AUXDATA: tp_status tells a CHECKSUM_PARTIAL skb
print("ready", flush=True)
out, end = [], time.time() + limit
while time.time() < end:   # until stdin closes (the action is done), or the limit
    ready, _, _ = select.select([s, sys.stdin], [], [], 0.2)
    if sys.stdin in ready and not sys.stdin.read(1):
        break
    if s not in ready:
        continue
    data, anc, _, addr = s.recvmsg(65535, socket.CMSG_SPACE(20))
    ip = data[14:]
    if addr[2] == socket.PACKET_OUTGOING or ip[9] not in (6, 17) or socket.inet_aton(peer) not in (ip[12:16], ip[16:20]):
        continue
    status = next((struct.unpack_from("I", d)[0] for lvl, t, d in anc if (lvl, t) == (263, 8)), 0)
    out.append({"hex": data.hex(), "status": status})
print(json.dumps(out))
"""
TP_STATUS_CSUMNOTREADY = 0x8   # the skb is CHECKSUM_PARTIAL: its L4 checksum field holds the pseudo-header sum


def capture(lab: Lab, member: str, peer: str, action, limit_s: float = 300.0) -> list[tuple[bytes, bool]]:
    """TCP and UDP frames from or to `peer` a member receives while `action()` runs: (frame, CHECKSUM_PARTIAL?).
    The capture lasts as long as the action (its stdin is closed after it), however slow the machine: a
    fixed window ended before the traffic under TCG, where each CLI call of the action takes seconds."""
    import subprocess
    import sys

    proc = subprocess.Popen(["ip", "netns", "exec", lab.netns(member), sys.executable, "-c", CAPTURE_SCRIPT,
                             peer, str(limit_s)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        action()
        out, err = proc.communicate(input="", timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    return [(bytes.fromhex(f["hex"]), bool(f["status"] & TP_STATUS_CSUMNOTREADY)) for f in json.loads(out)]


def l4_csum_problem(frame: bytes, partial: bool) -> str | None:
    """None when the TCP/UDP checksum field is what the skb's state needs: a CHECKSUM_PARTIAL skb's field
    is the pseudo-header sum (the device completes it over the segment), any other's the full checksum
    (or, UDP, 0: none)."""
    import struct

    from ebpf_nodeport.testrun import csum16

    ip = frame[14:]
    ihl, tot = (ip[0] & 15) * 4, struct.unpack_from("!H", ip, 2)[0]
    seg, proto = ip[ihl:tot], ip[9]
    pseudo = csum16(ip[12:20] + struct.pack("!BBH", 0, proto, len(seg)))
    field = struct.unpack_from("!H", seg, 16 if proto == 6 else 6)[0]
    if proto == 17 and field == 0:
        return None
    if partial:
        return None if field % 0xFFFF == pseudo % 0xFFFF else f"partial: field {field:#06x}, pseudo-header sum {pseudo:#06x}"
    return None if csum16(seg, pseudo) == 0xFFFF else f"full checksum wrong (field {field:#06x})"


def test_nat_keeps_partial_and_full_l4_checksums_right(tunnel_lab: Lab) -> None:
    """NodePort requests (DNAT in from_hep) and their replies (reverse NAT in from_wep), TCP and UDP, change
    address and port;
    the port's checksum update is arithmetic for a full checksum only, told from CHECKSUM_PARTIAL by the
    address helper's own update (bpf/lib/csum.h). veth traffic is CHECKSUM_PARTIAL and a local socket never
    checks it, so a curl would pass either way: the frames the pod and host1 receive are checked instead."""
    echo = ("import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3); "
            "s.sendto(b'yaobank-echo', (__import__('sys').argv[1], 30107)); print(s.recvfrom(100)[0].decode())")
    node = next(p["node"] for p in tunnel_lab.status()["pods"] if p["name"] == tunnel_lab.pod("customer"))
    addr = NODES[node]
    frames: dict[str, list] = {}
    frames["customer"] = capture(tunnel_lab, "customer", HOST1, lambda: frames.__setitem__(
        "host1", capture(tunnel_lab, "host1", addr, lambda: (tunnel_lab.curl(f"{addr}:30180"),
                                                             host_python(tunnel_lab, echo, addr)))))
    for member, got in frames.items():
        for proto in (6, 17):   # what this test is about: PARTIAL skbs NATed, TCP and UDP
            assert any(partial for f, partial in got if f[14 + 9] == proto), (member, proto, len(got))
        problems = [(i, p) for i, (f, partial) in enumerate(got) if (p := l4_csum_problem(f, partial))]
        assert problems == [], (member, problems)


@pytest.mark.parametrize("first,second,port", [
    ("control", "node2", 41001),   # both tunnelled to node1: the backend node replaces the port
    ("control", "node1", 41002),   # tunnelled, then node1's own NodePort: node1 as ingress replaces it
    ("node1", "control", 41003),   # local first, then tunnelled
])
def test_same_client_port_through_two_nodes_at_once(tunnel_lab: Lab, first: str, second: str, port: int) -> None:
    """One client port, two live connections through two nodes to the one customer pod: the pod
    would see one 4-tuple. The second gets a PSNAT port on node1; both keep answering."""
    psnat_before = counter(tunnel_lab, "node1", "from_hep", "PSNAT")
    box: list[str] = []
    entries = new_entries(tunnel_lab, "customer",
                          lambda: box.extend(same_port_twice(tunnel_lab, NODES[first], NODES[second], port)))
    assert box == ["ok", "ok", "ok", "ok"], box
    assert counter(tunnel_lab, "node1", "from_hep", "PSNAT") == psnat_before + 1
    assert {e["client"] for e in entries} == {HOST1}  # the client's address is still preserved


def test_bad_patches_are_refused_and_change_nothing(tunnel_lab: Lab) -> None:
    before = tunnel_lab.status()
    cases = [
        (["patch", "felixconfiguration", "default", "--patch", "{not json"], "not valid JSON"),
        (["patch", "felixconfiguration", "default", "--patch", '{"spec": {"bpfEnabeld": true}}'], "unknown field spec.bpfEnabeld; valid fields: bpfEnabled"),
        (["patch", "felixconfiguration", "default", "--patch", '{"spec": {"bpfExternalServiceMode": "dsr"}}'], "must be one of Tunnel, DSR"),
        (["patch", "felixconfiguration", "default", "--patch", '{"spec": {"bpfDSROptoutCIDRs": ["host1"]}}'], "not an IPv4 CIDR"),
        (["patch", "felixconfiguration", "other", "--patch", '{"spec": {}}'], "not found"),
        (["patch", "ippool", "default", "--patch", '{"spec": {}}'], "unknown resource kind"),
        (["mode", "dsrr"], "is not one of"),
        (["delete", "pod", "custmer"], "unknown pod 'custmer'"),
        (["delete", "service", "customer"], "unknown resource kind 'service': delete pods"),
        (["delete", "pod", "-n", "nope", "-l", "app=customer"], "no namespace 'nope'"),
        (["get", "pods", "-n", "nope"], "namespace 'nope' not found"),
    ]
    for args, message in cases:
        proc = tunnel_lab.run(*args, check=False)
        assert proc.returncode != 0, args
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (args, proc.stderr)
    after = tunnel_lab.status()
    assert (after["mode"], after["felix"]) == (before["mode"], before["felix"])
    missing = unique_lab("x")
    for args in (["mode", "tunnel"], ["patch", "felixconfiguration", "default", "-p", '{"spec": {}}'], ["delete", "pod", "customer"]):
        proc = cli(args[0], "--name", missing, *args[1:], check=False)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and len(lines) == 1, args
        assert lines[0].startswith(f"netns-lab: error: no lab named '{missing}'"), lines
        assert not naming.run_dir(missing).exists(), args  # not even a lock directory
    assert [(p["name"], p["ip"], p["pid"]) for p in after["pods"]] == [(p["name"], p["ip"], p["pid"]) for p in before["pods"]]
    st = tunnel_lab.api().state()
    assert all(dataplane.is_loaded(st, n) for n in NODES)


def test_get_felixconfiguration(tunnel_lab: Lab) -> None:
    doc = json.loads(tunnel_lab.run("get", "felixconfiguration", "default", "-o", "json").stdout)
    assert doc["kind"] == "FelixConfiguration" and doc["metadata"]["name"] == "default"
    assert doc["spec"] == {"bpfEnabled": True, "bpfExternalServiceMode": "Tunnel",
                           "bpfKubeProxyIptablesCleanupEnabled": True, "bpfDSROptoutCIDRs": [],
                           "bpfConnectTimeLoadBalancing": "TCP", "bpfMapSizeConntrack": 512000}
    text = tunnel_lab.run("get", "felixconfiguration", "default").stdout
    assert "kind: FelixConfiguration" in text and "bpfEnabled: true" in text


def test_delete_pod_customer_then_curl_works_again(tunnel_lab: Lab) -> None:
    """The lesson restarts the pods after enabling eBPF: a new pod, a new address, backends follow."""
    old = {p["name"]: p for p in tunnel_lab.status()["pods"]}[tunnel_lab.pod("customer")]
    out = tunnel_lab.run("delete", "pod", "-n", "yaobank", "-l", "app=customer").stdout
    assert f'pod "{old["name"]}" deleted; its ReplicaSet made pod "' in out
    st = tunnel_lab.status()
    new = {p["name"]: p for p in st["pods"]}[tunnel_lab.pod("customer")]
    assert old["name"] not in {p["name"] for p in st["pods"]}
    # a ReplicaSet's replacement: same Deployment and ReplicaSet, a new name, a new address
    assert new["name"].rsplit("-", 1)[0] == old["name"].rsplit("-", 1)[0] and new["name"] != old["name"]
    assert new["ip"] != old["ip"] and new["pid"] != old["pid"] and new["running"]
    svc = {s["name"]: s for s in st["services"]}["yaobank/customer"]
    assert [b["ip"] for sp in svc["ports"] for b in sp["backends"]] == [new["ip"], new["ip"]]
    progs = {(p["interface"], p["program"]) for p in st["dataplane"]["nodes"]["node1"]["programs"]}
    assert {(new["host_ifname"], "from_wep"), (new["host_ifname"], "to_wep")} <= progs
    for addr in NODES.values():
        entries = new_entries(tunnel_lab, "customer", lambda: tunnel_lab.curl(f"{addr}:30180"))
        assert [e["client"] for e in entries] == [HOST1], addr
    # the datapath's backend is the new address; the old one is gone from every node's maps
    for node in NODES:
        with tunnel_lab.api().datapath(node).maps() as m:
            addrs = {str(v.to_dict().get("addr")) for _, v in m.nat_be.items()}
        assert new["ip"] in addrs and old["ip"] not in addrs, (node, addrs)


# --------------------------------------------------------------------------- live switching on one running lab


def test_live_switch_kube_proxy_tunnel_kube_proxy(lab_factory) -> None:
    """kube-proxy -> eBPF (rules kept, then cleaned up) -> kube-proxy, curl working with the expected source each time."""
    lab = lab_factory("kube-proxy", tag="s")

    probes = iter(range(1, 1000))

    def source() -> str:
        """The client the customer pod logs for one curl through control's NodePort. The curl is
        told apart by its query: the one refused on purpose below may still be logged late."""
        tag = f"/?probe={next(probes)}"
        before = len(lab.log_entries("customer"))
        lab.curl(f"198.19.0.1:30180{tag}")
        mine: list[dict] = []

        def logged() -> bool:
            mine[:] = [e for e in lab.log_entries("customer")[before:] if e["path"] == tag]
            return bool(mine)

        wait_for(logged, timeout=5, interval=0.05)
        assert len(mine) == 1, mine
        return mine[0]["client"]

    assert source() == "198.19.0.1"

    # the lesson: keep kube-proxy's rules, then switch eBPF on
    lab.run("patch", "felixconfiguration", "default", '--patch={"spec": {"bpfKubeProxyIptablesCleanupEnabled": false}}')
    assert lab.status()["mode"] == "kube-proxy"
    out = lab.run("patch", "felixconfiguration", "default", "--patch", '{"spec": {"bpfEnabled": true}}').stdout
    assert "Successfully patched 1 'FelixConfiguration' resource" in out
    st = lab.status()
    assert st["mode"] == "tunnel"
    for node in NODES:
        n = st["dataplane"]["nodes"][node]
        assert n["datapath_loaded"] and n["kube_proxy_rules"] and n["notrack"], node
        assert "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP" in kube_rules(lab, node)
    assert source() == HOST1
    assert "database pod: database" in lab.curl("198.19.0.2:30180")

    # why the NOTRACK rule is there: without it kube-proxy's INVALID drop kills the flows BPF hands over
    dataplane.set_notrack(lab.api().state(), False)
    proc = lab.exec("host1", "curl", "-sS", "--fail", "--max-time", "3", "198.19.0.1:30180/notrack-probe", check=False)
    assert proc.returncode != 0
    lab.run("mode", "tunnel")  # re-applying the mode puts it back
    assert all(n["notrack"] for n in lab.status()["dataplane"]["nodes"].values())
    assert source() == HOST1

    lab.run("mode", "kube-proxy")
    st = lab.status()
    assert st["mode"] == "kube-proxy" and not naming.bpf_dir(lab.name).exists()
    assert all(n["kube_proxy_rules"] and not n["notrack"] and not n["programs"] for n in st["dataplane"]["nodes"].values())
    assert source() == "198.19.0.1"

    # with the cleanup enabled (Calico's default) eBPF mode removes kube-proxy's rules, and kube-proxy mode restores them
    lab.run("patch", "felixconfiguration", "default", "-p", '{"spec": {"bpfKubeProxyIptablesCleanupEnabled": true}}')
    lab.run("mode", "tunnel")
    assert all(kube_rules(lab, n) == [] for n in NODES)
    assert source() == HOST1
    lab.run("mode", "kube-proxy")
    assert all(kube_rules(lab, n) for n in NODES)
    assert source() == "198.19.0.1"
    # kube-proxy mode follows a recreated pod too
    lab.run("delete", "pod", "-n", "yaobank", "-l", "app=customer")
    assert source() == "198.19.0.1"
