"""`dump`, `trace` and `explain` on real labs: one curl from host1 to the NodePort on control, watched in the maps.

Two labs (Tunnel and DSR), each brought up through the CLI under a unique name, shared
by the tests of this module and always taken down. Each test makes its own curl from its
own client port (`curl --local-port`, reported back with `-w %{local_port}`), so tests
look at their own connection only. Counter tests reset the counters first and compare
them with the packets conntrack accounted for the same connection.
"""
from __future__ import annotations

import json
import secrets
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Iterator

import pytest

from .conftest import CLI, Lab, cli, running_lab, unique_lab

pytestmark = [pytest.mark.root, pytest.mark.lab, pytest.mark.slow]

CLIENT, CONTROL, NODE1 = "198.19.15.254", "198.19.0.1", "198.19.0.2"
FRONTEND = f"{CONTROL}:30180"


@pytest.fixture(scope="module")
def tunnel_lab() -> Iterator[Lab]:
    with running_lab("st", "tunnel") as lab:
        yield lab


@pytest.fixture(scope="module")
def dsr_lab() -> Iterator[Lab]:
    with running_lab("st", "dsr") as lab:
        yield lab


def curl(lab: Lab) -> int:
    """One GET host1 -> 198.19.0.1:30180 from a fresh client port; returns that port."""
    base = 20000 + secrets.randbelow(9000)
    out = lab.exec("host1", "curl", "-sS", "--fail", "--max-time", "10", "--local-port", f"{base}-{base + 20}",
                   "-o", "/dev/null", "-w", "%{local_port}", f"http://{FRONTEND}/").stdout
    return int(out.strip())


def dump(lab: Lab, kind: str, *args: str) -> dict:
    return json.loads(lab.run("dump", kind, *args, "-o", "json").stdout)


def conn(lab: Lab, port: int) -> dict[str, list[dict]]:
    """Conntrack entries of host1's connection from `port`, per node."""
    doc = dump(lab, "conntrack", "--client", f"{CLIENT}:{port}")
    return {n["node"]: n["entries"] for n in doc["nodes"]}


def settled(lab: Lab, port: int, timeout: float = 10) -> dict[str, list[dict]]:
    """The connection's entries once its packets stopped moving (the last ACK may trail curl's exit)."""
    def packets(entries: dict[str, list[dict]]) -> list:
        return [(n, e["type"], e["packets"], e["bytes"]) for n, es in sorted(entries.items()) for e in es]

    last = conn(lab, port)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = conn(lab, port)
        if packets(now) == packets(last):
            return now
        last = now
    pytest.fail(f"connection from port {port} still moving after {timeout}s: {packets(last)}")


def counters(lab: Lab) -> dict[tuple[str, str, str], int]:
    doc = dump(lab, "counters")
    return {(n["node"], r["hook"], r["reason"]): r["packets"] for n in doc["nodes"] for r in n["counters"]}


def drops(lab: Lab) -> dict[str, int]:
    return {n["node"]: n["drops"]["all"] for n in dump(lab, "counters")["nodes"]}


def by_type(entries: list[dict]) -> dict[str, dict]:
    out = {e["type"]: e for e in entries}
    assert len(out) == len(entries), entries
    return out


# ---- Tunnel ------------------------------------------------------------------------------------


def test_conntrack_holds_the_tunnelled_connection(tunnel_lab: Lab) -> None:
    backend = f"{tunnel_lab.pod_ip('customer')}:80"
    port = curl(tunnel_lab)
    entries = settled(tunnel_lab, port)
    assert entries["node2"] == []
    control = by_type(entries["control"])
    assert set(control) == {"NAT_FWD", "NAT_REV"}
    for e in control.values():
        assert (e["client"], e["frontend"], e["backend"]) == (f"{CLIENT}:{port}", FRONTEND, backend)
        assert (e["proto"], e["service"]) == ("tcp", "yaobank/customer")
        assert (e["tunnel_peer"], e["tunnel_peer_node"]) == (NODE1, "node1")
        assert e["tunnel"] is True and e["dsr"] is False and "DSR" not in e["flags"]
    rev = control["NAT_REV"]
    # The connection opened (SYN both ways, ACKs) and curl closed it: nothing else is a success.
    assert {"SYN", "ACK"} <= set(rev["tcp_flags"]["client"]) and {"SYN", "ACK"} <= set(rev["tcp_flags"]["server"])
    assert rev["state"] in ("established", "FINs seen")
    assert not rev["expired"] and rev["expires_in_s"] > 0

    [normal] = entries["node1"]
    assert (normal["type"], normal["client"], normal["frontend"], normal["backend"]) == (
        "NORMAL", f"{CLIENT}:{port}", FRONTEND, backend)
    assert (normal["tunnel_peer_node"], normal["dsr"]) == ("control", False) and "FROM_TUNNEL" in normal["flags"]
    # Each packet is accounted once per node: the ingress node's reverse entry and the backend
    # node's entry saw the same packets and bytes in each direction.
    assert rev["packets"] == normal["packets"] and rev["bytes"] == normal["bytes"]
    assert rev["packets"]["from_client"] >= 3 and rev["packets"]["to_client"] >= 2


def test_counters_rise_as_the_packets_go(tunnel_lab: Lab) -> None:
    reset = dump(tunnel_lab, "counters", "--reset")
    assert reset["reset"] is True
    assert all(v == 0 for v in counters(tunnel_lab).values())
    port = curl(tunnel_lab)
    pk = by_type(settled(tunnel_lab, port)["control"])["NAT_REV"]["packets"]
    c = counters(tunnel_lab)
    assert c[("control", "from_hep", "NAT_NEW")] == 1
    assert c[("control", "from_hep", "ENCAP")] == pk["from_client"] - 1      # later requests: NAT_FWD hit
    assert c[("control", "from_hep", "REV_NAT")] == pk["to_client"]          # tunnelled replies
    assert c[("node1", "from_hep", "DECAP")] == pk["from_client"]
    assert c[("node1", "from_wep", "ENCAP")] == pk["to_client"]
    assert c[("node1", "from_wep", "DSR_REPLY")] == 0
    assert drops(tunnel_lab) == {"control": 0, "node1": 0, "node2": 0}


def test_trace_emits_the_nat_and_tunnel_decisions(tunnel_lab: Lab) -> None:
    backend = f"{tunnel_lab.pod_ip('customer')}:80"
    base = 30000 + secrets.randbelow(2000)
    proc = subprocess.Popen([*CLI, "trace", "--name", tunnel_lab.name, "--client", CLIENT, "--duration", "60",
                             "-o", "json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        started = proc.stderr.readline()
        assert started.startswith("tracing control, node1, node2 of lab"), started
        assert all(n["config"]["trace"] for n in dump(tunnel_lab, "config")["nodes"])
        # One reader per ring buffer: a second trace of the same node is refused with one line.
        second = tunnel_lab.run("trace", "--node", "node1", "--duration", "1", check=False)
        assert second.returncode == 1 and "already being traced" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
        out = tunnel_lab.exec("host1", "curl", "-sS", "--fail", "--max-time", "10", "--local-port",
                              f"{base}-{base + 20}", "-o", "/dev/null", "-w", "%{local_port}", f"http://{FRONTEND}/")
        port = int(out.stdout)
    finally:
        proc.send_signal(signal.SIGINT)                  # Ctrl-C: the flag must go off again
        stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    events = [json.loads(line) for line in stdout.splitlines()]
    ours = [e for e in events if port in (e["sport"], e["dport"])]
    assert ours, stdout
    first = ours[0]
    assert (first["node"], first["hook"], first["reason"]) == ("control", "from_hep", "NAT_NEW")
    assert (first["src"], first["dst"], first["nat_dst"]) == (f"{CLIENT}:{port}", FRONTEND, backend)
    assert (first["tunnel_peer"], first["tunnel"]) == (NODE1, "to")
    assert first["line"] == (f"control from_hep {CLIENT}:{port} -> {FRONTEND} NAT -> {backend} "
                             f"via tunnel to {NODE1} (node1) [NAT_NEW]")
    seen = {(e["node"], e["hook"], e["reason"]) for e in ours}
    assert {("node1", "from_hep", "DECAP"), ("node1", "to_wep", "CT_EST"), ("node1", "from_wep", "ENCAP"),
            ("control", "from_hep", "REV_NAT"), ("control", "from_hep", "ENCAP")} <= seen
    rev = next(e for e in ours if e["reason"] == "REV_NAT")
    assert (rev["src"], rev["nat_src"], rev["dst"], rev["tunnel"]) == (backend, FRONTEND, f"{CLIENT}:{port}", "from")
    assert all(not e["drop"] for e in ours)
    assert not any(n["config"]["trace"] for n in dump(tunnel_lab, "config")["nodes"])


def test_explain_tells_the_tunnel_story(tunnel_lab: Lab) -> None:
    doc = json.loads(tunnel_lab.run("explain", "-o", "json", timeout=60).stdout)
    assert (doc["mode"], doc["http_code"], doc["frontend"], doc["client"]) == ("tunnel", "200", FRONTEND, CLIENT)
    steps = [(s["node"], s["hook"], s["reason"]) for s in doc["steps"]]
    assert steps[0] == ("control", "from_hep", "NAT_NEW")
    assert steps.index(("node1", "from_hep", "DECAP")) < steps.index(("node1", "from_wep", "ENCAP")) \
        < steps.index(("control", "from_hep", "REV_NAT"))
    assert {e["type"] for n in doc["conntrack"] for e in n["entries"]} == {"NAT_FWD", "NAT_REV", "NORMAL"}
    assert doc["backend_pod"] == tunnel_lab.pod("customer") and doc["backend_log"].startswith(f"{CLIENT} - - [")
    assert not any(n["config"]["trace"] for n in dump(tunnel_lab, "config")["nodes"])
    text = tunnel_lab.run("explain", timeout=60).stdout
    assert "the source IP is preserved" in text and "VXLAN" in text


def test_nat_routes_config_dumps(tunnel_lab: Lab) -> None:
    nat = {n["node"]: n["frontends"] for n in dump(tunnel_lab, "nat")["nodes"]}
    np = next(f for f in nat["control"] if f["frontend"] == "*:30180")
    assert (np["service"], np["proto"], np["backend_count"], np["local_count"]) == ("yaobank/customer", "tcp", 1, 0)
    assert [(b["backend"], b["node"]) for b in np["backends"]] == [(f"{tunnel_lab.pod_ip('customer')}:80", "node1")]
    assert next(f for f in nat["node1"] if f["frontend"] == "*:30180")["local_count"] == 1
    routes = dump(tunnel_lab, "routes", "--node", "node1")["nodes"]
    assert [n["node"] for n in routes] == ["node1"]
    assert {(b["cidr"], b["node"], b["local"]) for b in routes[0]["pod_blocks"]} == {
        ("198.19.16.0/26", "control", False), ("198.19.16.64/26", "node1", True), ("198.19.16.128/26", "node2", False)}
    assert {a["node"] for a in routes[0]["node_addresses"]} == {"control", "node1", "node2"}
    cfg = {n["node"]: n["config"] for n in dump(tunnel_lab, "config")["nodes"]}
    assert {n: (c["mode"], c["enabled"], c["node_ip"]) for n, c in cfg.items()} == {
        "control": ("tunnel", True, CONTROL), "node1": ("tunnel", True, NODE1), "node2": ("tunnel", True, "198.19.0.3")}
    table = tunnel_lab.run("dump", "nat", "--node", "control").stdout
    assert "*:30180" in table and "yaobank/customer:80/tcp" in table


def test_bpftool_reads_the_pinned_conntrack_map_with_field_names(tunnel_lab: Lab) -> None:
    port = curl(tunnel_lab)
    path = f"/sys/fs/bpf/netns-lab/{tunnel_lab.name}/control/ct"
    out = subprocess.run(["bpftool", "-j", "map", "dump", "pinned", path], capture_output=True, text=True, check=True)
    entries = json.loads(out.stdout)
    keys = [e.get("formatted", e)["key"] for e in entries]
    values = [e.get("formatted", e)["value"] for e in entries]
    assert set(keys[0]) >= {"addr_a", "addr_b", "port_a", "port_b", "proto"}
    assert set(values[0]) >= {"created_ns", "last_seen_ns", "type", "flags", "tcp_a", "tcp_b", "nat_addr",
                              "nat_port", "tun_peer", "packets_ab", "packets_ba", "bytes_ab", "bytes_ba"}

    # bpftool prints big-endian fields as host-order integers: the bytes are the address.
    def ip(v: int) -> str:
        return socket.inet_ntoa(struct.pack("=I", v))

    def port_of(v: int) -> int:
        return socket.ntohs(v)

    ours = [(k, v) for k, v in zip(keys, values)
            if CLIENT in (ip(k["addr_a"]), ip(k["addr_b"])) and port in (port_of(k["port_a"]), port_of(k["port_b"]))]
    assert sorted(v["type"] for _, v in ours) == [1, 2]                       # NAT_FWD, NAT_REV
    assert {ip(v["tun_peer"]) for _, v in ours} == {NODE1}


def test_errors_are_one_line(tunnel_lab: Lab) -> None:
    for args, msg in ((("dump", "nat", "--node", "host1"), "unknown node 'host1'"),
                      (("trace", "--node", "nope", "--duration", "1"), "unknown node 'nope'")):
        res = tunnel_lab.run(*args, check=False)
        assert res.returncode == 1 and msg in res.stderr and len(res.stderr.strip().splitlines()) == 1
    res = cli("dump", "conntrack", "--name", unique_lab("x"), check=False)
    assert res.returncode == 1 and "no lab named" in res.stderr


def test_kube_proxy_lab_has_no_maps(lab_factory) -> None:
    lab = lab_factory("kube-proxy")
    for args in (("dump", "conntrack"), ("trace", "--duration", "1"), ("explain",)):
        res = lab.run(*args, check=False)
        assert res.returncode == 1, args
        assert "runs mode kube-proxy: no BPF maps" in res.stderr and len(res.stderr.strip().splitlines()) == 1


# ---- DSR -------------------------------------------------------------------------------------------


def test_dsr_connection_carries_the_dsr_flag_and_replies_skip_control(dsr_lab: Lab) -> None:
    dump(dsr_lab, "counters", "--reset")
    port = curl(dsr_lab)
    entries = settled(dsr_lab, port)
    control = by_type(entries["control"])
    for e in control.values():
        assert e["dsr"] is True and "DSR" in e["flags"] and e["tunnel_peer_node"] == "node1"
        assert (e["frontend"], e["backend"]) == (FRONTEND, f"{dsr_lab.pod_ip('customer')}:80")
    [normal] = entries["node1"]
    assert normal["dsr"] is True and normal["frontend"] == FRONTEND and normal["tunnel_peer_node"] == "control"
    rev = control["NAT_REV"]
    # The ingress node never sees a reply; the backend node sends them all straight to the client.
    assert rev["packets"]["to_client"] == 0 and normal["packets"]["to_client"] >= 2
    assert normal["packets"]["from_client"] == rev["packets"]["from_client"]
    c = counters(dsr_lab)
    assert c[("node1", "from_wep", "DSR_REPLY")] == normal["packets"]["to_client"]
    assert c[("control", "from_hep", "REV_NAT")] == 0 and c[("node1", "from_wep", "ENCAP")] == 0
    assert c[("control", "from_hep", "NAT_NEW")] == 1
    assert drops(dsr_lab) == {"control": 0, "node1": 0, "node2": 0}
    cfg = dump(dsr_lab, "config")["nodes"]
    assert all(n["config"]["mode"] == "dsr" and "DSR" in n["config"]["flags"] for n in cfg)


def test_explain_tells_the_dsr_story(dsr_lab: Lab) -> None:
    doc = json.loads(dsr_lab.run("explain", "-o", "json", timeout=60).stdout)
    assert doc["mode"] == "dsr" and doc["http_code"] == "200"
    steps = {(s["node"], s["hook"], s["reason"]) for s in doc["steps"]}
    assert ("node1", "from_wep", "DSR_REPLY") in steps
    assert ("control", "from_hep", "REV_NAT") not in steps
    dsr = next(s for s in doc["steps"] if s["reason"] == "DSR_REPLY")
    assert dsr["first"]["nat_src"] == FRONTEND and "straight for the client" in dsr["explanation"]
    assert doc["backend_log"].startswith(f"{CLIENT} - - [")
