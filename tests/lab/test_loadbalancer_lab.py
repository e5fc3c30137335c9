"""LoadBalancer ingress, external IPs, source ranges, ClientIP affinity and Maglev mid-flow failover (issue 14),
in kube-proxy, tunnel and dsr modes, driven from host1 through the LoadBalancer pool route."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import Lab, counter, running_lab

pytestmark = [pytest.mark.root, pytest.mark.lab]
HERE = Path(__file__).resolve().parent
MODES = ["kube-proxy", "kube-proxy-nft", "tunnel", "dsr"]


@pytest.fixture(scope="module")
def lb_lab() -> Lab:
    with running_lab("lb", manifests=[HERE / "lb_services.yaml"]) as lab:
        yield lab


def _mode(lab: Lab, mode: str) -> None:
    if lab.status()["mode"] != mode:
        lab.run("mode", mode, timeout=300)


def _ip(lab: Lab, name: str) -> str:
    svc = json.loads(lab.run("get", "svc", name, "-n", "lb", "-o", "json").stdout)
    return svc["status"]["loadBalancer"]["ingress"][0]["ip"]


def _get(lab: Lab, url: str) -> str | None:
    proc = lab.exec("host1", "curl", "-sS", "--max-time", "2", url, check=False)
    return proc.stdout if proc.returncode == 0 else None


@pytest.mark.parametrize("mode", MODES)
def test_loadbalancer_and_external_ip(lb_lab: Lab, mode: str) -> None:
    _mode(lb_lab, mode)
    out = lb_lab.run("get", "svc", "-n", "lb").stdout
    assert "198.19.48.1,198.19.48.200" in out and "LoadBalancer" in out
    for addr in (_ip(lb_lab, "web"), "198.19.48.200", _ip(lb_lab, "plain")):
        assert (_get(lb_lab, f"{addr}/hostname") or "").startswith("web-"), addr


@pytest.mark.parametrize("mode", MODES)
def test_source_ranges_drop_and_count(lb_lab: Lab, mode: str) -> None:
    _mode(lb_lab, mode)
    # host1 (198.19.15.254) is inside admitted's second range and outside ranged's only one
    assert (_get(lb_lab, f"{_ip(lb_lab, 'admitted')}/hostname") or "").startswith("web-")
    assert _get(lb_lab, f"{_ip(lb_lab, 'ranged')}/hostname") is None
    if mode == "kube-proxy-nft":  # the firewall chain's `counter drop` (kube-proxy's nftables backend)
        table = lb_lab.exec("control", "nft", "list", "table", "ip", "kube-proxy").stdout
        drops = [ln for ln in table.splitlines() if "counter packets" in ln and "drop" in ln and "198.19.15" not in ln]
        assert drops and all(" packets 0 " not in d for d in drops), table
    elif mode == "kube-proxy":
        rules = lb_lab.exec("control", "iptables-save", "-c", "-t", "filter").stdout
        lines = [r for r in rules.splitlines() if "lb/ranged" in r and "-j DROP" in r]
        assert len(lines) == 1 and not lines[0].startswith("[0:"), f"KUBE-PROXY-FIREWALL drop for lb/ranged: {lines}"
    else:
        assert counter(lb_lab, "control", "from_hep", "DROP_SRC_RANGE") > 0


@pytest.mark.parametrize("mode", MODES)
def test_source_ranges_and_pod_clients(lb_lab: Lab, mode: str) -> None:
    """A pod outside `ranged`'s ranges: kube-proxy refuses it too (its rules see every source, as since
    Kubernetes 1.25); the eBPF modes check only traffic from outside the cluster, as Cilium does and Calico
    does not (docs/loadbalancer.md)."""
    _mode(lb_lab, mode)
    client = lb_lab.pod("edge")  # on node2, address in the pod CIDR, not in 10.99.0.0/16
    proc = lb_lab.exec(client, "curl", "-sS", "--max-time", "2", f"{_ip(lb_lab, 'ranged')}/hostname", check=False)
    answered = proc.returncode == 0 and proc.stdout.startswith("web-")
    assert answered == (mode in ("tunnel", "dsr")), (mode, proc.returncode, proc.stdout, proc.stderr)


@pytest.mark.parametrize("mode", MODES)
def test_affinity_holds_then_spreads(lb_lab: Lab, mode: str) -> None:
    _mode(lb_lab, mode)
    url = f"{_ip(lb_lab, 'sticky')}/hostname"
    # 30 curls from one shell in host1, so they come well within the 4 s timeout on a slow (TCG) machine too,
    # where each `netns-lab exec` takes seconds to start
    loop = f'for i in $(seq 30); do curl -sS --max-time 2 {url} || echo FAILED; echo; done'
    answers = lb_lab.exec("host1", "sh", "-c", loop).stdout.split()
    seen = {a if a != "FAILED" else None for a in answers}
    assert len(answers) == 30 and len(seen) == 1 and None not in seen, answers
    if not mode.startswith("kube-proxy"):
        _check_dump_affinity(lb_lab, _ip(lb_lab, "sticky"), lb_lab.pod_ip(next(iter(seen)).strip()))
    spread = set(seen)
    for _ in range(8):  # each request after timeoutSeconds (4) is a fresh pick: 3 backends spread again
        time.sleep(4.5)
        spread.add(_get(lb_lab, url))
        if len(spread) > 1:
            break
    assert len(spread) > 1 and None not in spread, spread


def _check_dump_affinity(lab: Lab, addr: str, backend_ip: str) -> None:
    """`dump affinity` on the ingress node (text and -o json) shows host1 -> the backend it stuck to, with time left."""
    doc = json.loads(lab.run("dump", "affinity", "--node", "control", "-o", "json").stdout)
    assert doc["dump"] == "affinity" and [n["node"] for n in doc["nodes"]] == ["control"], doc
    rows = [r for r in doc["nodes"][0]["affinity"] if r["frontend"] == f"{addr}:80"]
    assert len(rows) == 1, doc
    r = rows[0]
    assert (r["client"], r["backend"], r["timeout_s"]) == (lab.node_address("host1"), f"{backend_ip}:8080", 4), r
    # time left = timeout - time since last use (a slow machine's dump may start after the entry expired: then 0)
    assert 0 <= r["expires_in_s"] <= 4 and abs(r["expires_in_s"] + min(r["age_s"], 4) - 4) <= 0.15, r
    text = lab.run("dump", "affinity", "--node", "control").stdout
    assert f"{addr}:80 client {lab.node_address('host1')} -> {backend_ip}:8080" in text, text


def _move(lab: Lab, addr: str, start: str = "control", to: str = "node2") -> dict:
    """A keep-alive connection from host1 to addr:80 through `start`; a third of the way in, host1's route
    to the pool moves to `to`. What the connection got: requests answered, the error that ended it."""
    lab.exec("host1", "ip", "route", "replace", "198.19.48.0/24", "via", lab.node_address(start))
    proc = subprocess.run(["ip", "netns", "exec", lab.netns("host1"), sys.executable, str(HERE / "lb_route_move.py"),
                           addr, "198.19.48.0/24", lab.node_address(to), "4"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize("mode", ["tunnel", "dsr"])
def test_maglev_connection_survives_route_move(lb_lab: Lab, mode: str) -> None:
    _mode(lb_lab, mode)
    with_maglev = _move(lb_lab, _ip(lb_lab, "web"))   # web's backends are on node1: node2 tunnels to them
    assert with_maglev["moved"] and with_maglev["error"] is None and with_maglev["ok"] > 40, with_maglev
    before = counter(lb_lab, "node2", "from_hep", "DROP_MID_FLOW")
    without = _move(lb_lab, _ip(lb_lab, "plain"))
    assert without["error"] is not None, without  # no Maglev: the new ingress node drops the mid-flow packets
    assert counter(lb_lab, "node2", "from_hep", "DROP_MID_FLOW") > before


@pytest.mark.parametrize("mode", ["tunnel", "dsr"])
def test_maglev_route_move_to_the_backends_node(lb_lab: Lab, mode: str) -> None:
    """edge's backends are all on node2: control tunnels the connection there, then the route moves to node2,
    whose mid-flow Maglev pick is its own pod, the one already serving the connection. node2 becomes the
    connection's ingress node (same 4-tuple for the pod, replies reverse-NATed there) and it goes on."""
    _mode(lb_lab, mode)
    moved = _move(lb_lab, _ip(lb_lab, "edge"))
    assert moved["moved"] and moved["error"] is None and moved["ok"] > 40, moved


@pytest.mark.parametrize("mode", ["tunnel", "dsr"])
def test_maglev_route_move_off_the_backends_node(lb_lab: Lab, mode: str) -> None:
    """The other way: the connection opens through node2 to its own pod, then the route moves to control, which
    tunnels its mid-flow pick to node2; node2 delivers it to the same socket and still answers the client itself."""
    _mode(lb_lab, mode)
    moved = _move(lb_lab, _ip(lb_lab, "edge"), start="node2", to="control")
    assert moved["moved"] and moved["error"] is None and moved["ok"] > 40, moved
