"""The bench's labs and services as data: yaobank plus two bench pods, and the services the bench programs itself.

The bench pods run the bench's own servers (iperf3 and a minimal HTTP server) beside an idle
yaobank app, one on the NodePort ingress node `control` (the local backend) and one on `node1`
(the remote backend). Their services, and the N extra services of the scaling runs, are not part
of the lab's topology: a topology service must target a port the pod's app serves, and these
target the bench's servers. The bench programs them itself, through the same two paths the lab
uses: kube-proxy's rule layout (kubeproxy.ruleset) and NodeDatapath.sync.
"""

from __future__ import annotations

import copy
import ipaddress
from dataclasses import dataclass

from netns_lab import kubeproxy, kubeproxy_nft
from netns_lab.topology import Pod, PodPort, Service, ServicePort, Topology, default_topology, plan

INGRESS = "control"              # the node whose NodePort the client uses
LOCAL_POD = "bench-local"        # backend on the ingress node
REMOTE_POD = "bench-remote"      # backend on another node
CLIENT = "host1"                 # external client
HTTP_PORT = 8080                 # the bench's HTTP server in the bench pods
IPERF_PORT = 5201                # iperf3 -s in the bench pods (TCP, and UDP for the packet-rate runs)
RR_PORT = 8081                   # the request/response tool's echo server (rr.c) in the bench pods
APP_PORT = 2379                  # the idle yaobank app of the bench pods (unused by the bench)
BENCH_NS = "bench"
NODE_PORTS = {  # (backend, what) -> node port
    ("local", "http"): 30280,
    ("remote", "http"): 30281,
    ("local", "iperf"): 30201,
    ("remote", "iperf"): 30202,
    ("local", "rr"): 30282,
    ("remote", "rr"): 30283,
}
BENCH_CLUSTER_IPS = {"local": "198.19.33.1", "remote": "198.19.33.2"}
EXTRA_CIDR = "198.19.128.0/17"   # extra services' cluster IPs: never routed, only matched
MAX_EXTRA = ipaddress.IPv4Network(EXTRA_CIDR).num_addresses - 2
BACKEND_POD = {"local": LOCAL_POD, "remote": REMOTE_POD}


def _bench_pods(extra_ports: bool) -> list[Pod]:
    """The two bench pods; with extra_ports also the bench servers' ports (rule generation only)."""
    ports = [PodPort("http", "TCP", APP_PORT)]
    if extra_ports:
        ports += [PodPort("bench-http", "TCP", HTTP_PORT), PodPort("iperf", "TCP", IPERF_PORT),
                  PodPort("iperf-udp", "UDP", IPERF_PORT), PodPort("rr", "TCP", RR_PORT)]
    return [Pod(LOCAL_POD, INGRESS, "database", list(ports)), Pod(REMOTE_POD, "node1", "database", list(ports))]


def lab_topology() -> Topology:
    """yaobank with explicit backends (so the bench pods join no yaobank service) plus the two bench pods."""
    topo = default_topology()
    full = plan(topo)
    for svc in topo.services:
        first = svc.ports[0]
        svc.backends = [b.pod for b in full.backends(svc, first)]
        svc.selector = None
    topo.pods += _bench_pods(extra_ports=False)
    topo.name = "yaobank-bench"
    return topo


def direct_topology() -> Topology:
    """The direct-routing lab: same nodes, client and bench pods, no services, no yaobank."""
    topo = lab_topology()
    topo.pods = _bench_pods(extra_ports=False)
    topo.services = []
    topo.name = "bench-direct"
    return topo


def pod_ip(topo: Topology, pod: str) -> str:
    """Address the plan gives a pod."""
    return str(plan(topo).pod_ips[pod])


# --------------------------------------------------------------------------- the bench's services


@dataclass(frozen=True)
class SvcSpec:
    """One service port the bench programs: frontend, optional node port, one backend."""

    name: str            # namespace/name
    port_name: str
    cluster_ip: str
    port: int
    node_port: int | None
    backend_pod: str
    target_port: int
    protocol: str = "TCP"


def bench_services() -> list[SvcSpec]:
    """The NodePort services the measurements use, to the local and to the remote pod: HTTP, iperf3 (TCP, and
    UDP on the same node port: iperf3's UDP test has a TCP control connection) and the request/response tool."""
    out = []
    for where in ("local", "remote"):
        for what, port, target, proto, np_key in (("http", 80, HTTP_PORT, "TCP", "http"),
                                                  ("iperf", IPERF_PORT, IPERF_PORT, "TCP", "iperf"),
                                                  ("iperf-udp", IPERF_PORT, IPERF_PORT, "UDP", "iperf"),
                                                  ("rr", RR_PORT, RR_PORT, "TCP", "rr")):
            out.append(SvcSpec(f"{BENCH_NS}/{where}", what, BENCH_CLUSTER_IPS[where], port,
                               NODE_PORTS[(where, np_key)], BACKEND_POD[where], target, proto))
    return out


def extra_services(n: int, backend_pod: str = LOCAL_POD, cidr: str = EXTRA_CIDR) -> list[SvcSpec]:
    """N ClusterIP services (one port each) that no measured flow uses: the load the scaling runs add."""
    room = ipaddress.IPv4Network(cidr).num_addresses - 2
    if not 0 <= n <= room:
        raise ValueError(f"at most {room} extra services fit in {cidr}, not {n}")
    base = ipaddress.IPv4Network(cidr).network_address
    return [SvcSpec(f"{BENCH_NS}/extra-{i}", "http", str(base + 1 + i), 80, None, backend_pod, HTTP_PORT)
            for i in range(n)]


# --------------------------------------------------------------------------- kube-proxy rules


def _rules_topology(lab_topo: Topology, specs: list[SvcSpec], service_cidr: str) -> Topology:
    """A topology holding `specs` as services, used only to generate kube-proxy's rules for them."""
    ips = plan(lab_topo).pod_ips
    topo = copy.deepcopy(lab_topo)
    topo.pods = _bench_pods(extra_ports=True)
    for p in topo.pods:
        p.ip = str(ips[p.name])  # the addresses the lab gave them
    topo.services = []
    topo.service_cidr = service_cidr
    grouped: dict[str, list[SvcSpec]] = {}
    for s in specs:
        grouped.setdefault(s.name, []).append(s)
    for full, ports in grouped.items():
        ns, name = full.split("/", 1)
        topo.services.append(Service(
            name, ports[0].cluster_ip,
            [ServicePort(s.port_name, s.protocol, s.port, s.target_port, s.node_port) for s in ports],
            namespace=ns, backends=[ports[0].backend_pod]))
    return topo


def _categorise(rs: kubeproxy.Ruleset) -> dict[str, list[str]]:
    """Split a ruleset's rules into kube-proxy's sections, so two rulesets can be merged in order."""
    out: dict[str, list[str]] = {"services": [], "np_jump": [], "nodeports": [], "per_port": [], "tail": []}
    tail_chains = (kubeproxy.KUBE_MARK_MASQ, kubeproxy.KUBE_POSTROUTING)
    for r in rs.rules:
        chain = r.split()[1]
        if chain == kubeproxy.KUBE_SERVICES:
            out["np_jump" if kubeproxy.KUBE_NODEPORTS in r.split("-j ")[-1] else "services"].append(r)
        elif chain == kubeproxy.KUBE_NODEPORTS:
            out["nodeports"].append(r)
        elif chain in tail_chains:
            out["tail"].append(r)
        else:
            out["per_port"].append(r)
    return out


def merge_rulesets(first: kubeproxy.Ruleset, second: kubeproxy.Ruleset) -> kubeproxy.Ruleset:
    """One ruleset with both services, in kube-proxy's order (the NodePort jump stays last in KUBE-SERVICES)."""
    a, b = _categorise(first), _categorise(second)
    chains = list(dict.fromkeys(first.chains + second.chains))
    rules = (a["services"] + b["services"] + a["np_jump"] + a["nodeports"] + b["nodeports"]
             + a["per_port"] + b["per_port"] + a["tail"])
    return kubeproxy.Ruleset(chains=chains, rules=rules, hooks=list(first.hooks),
                             filter_chains=list(first.filter_chains), filter_rules=list(first.filter_rules),
                             filter_hooks=list(first.filter_hooks))


def kubeproxy_ruleset(lab_topo: Topology, node: str, extras: list[SvcSpec], extra_cidr: str = EXTRA_CIDR) -> kubeproxy.Ruleset:
    """kube-proxy's rules for the lab's services, the bench services and `extras`, as one full sync writes them."""
    lab_rs = kubeproxy.ruleset(lab_topo, plan(lab_topo), node)
    bench_topo = _rules_topology(lab_topo, bench_services(), lab_topo.service_cidr)
    rs = merge_rulesets(lab_rs, kubeproxy.ruleset(bench_topo, plan(bench_topo), node))
    if extras:
        extra_topo = _rules_topology(lab_topo, extras, extra_cidr)
        rs = merge_rulesets(rs, kubeproxy.ruleset(extra_topo, plan(extra_topo), node))
    return rs


def kubeproxy_update_text(lab_topo: Topology, node: str, spec: SvcSpec, new_backend: str) -> tuple[str, str]:
    """kube-proxy's minimal sync for one service whose endpoint moved: (restore text, restore text undoing it)."""

    def text(old: str, new: str) -> str:
        tp = _rules_topology(lab_topo, [spec], EXTRA_CIDR)
        ips = plan(tp).pod_ips
        name = f"{spec.name}:{spec.port_name}"
        svc = kubeproxy.svc_chain(name, "tcp")
        old_sep = kubeproxy.sep_chain(name, "tcp", f"{ips[old]}:{spec.target_port}")
        new_sep = kubeproxy.sep_chain(name, "tcp", f"{ips[new]}:{spec.target_port}")
        m = "-m tcp -p tcp"
        return "\n".join([
            "*nat", f":{svc} - [0:0]", f":{new_sep} - [0:0]",
            f'-A {svc} -m comment --comment "{name} cluster IP" {m} -d {spec.cluster_ip}/32 --dport {spec.port} '
            f"! -s {tp.pod_pool} -j {kubeproxy.KUBE_MARK_MASQ}",
            f'-A {svc} -m comment --comment "{name} -> {ips[new]}:{spec.target_port}" -j {new_sep}',
            f'-A {new_sep} -m comment --comment "{name}" -s {ips[new]}/32 -j {kubeproxy.KUBE_MARK_MASQ}',
            f'-A {new_sep} -m comment --comment "{name}" {m} -j DNAT --to-destination {ips[new]}:{spec.target_port}',
            f"-F {old_sep}", f"-X {old_sep}", "COMMIT", ""])

    return text(spec.backend_pod, new_backend), text(new_backend, spec.backend_pod)


# --------------------------------------------------------------------------- kube-proxy nftables rules


def _nft_rules(lab_topo: Topology, specs: list[SvcSpec], service_cidr: str, node: str) -> kubeproxy_nft.Ruleset:
    """kube-proxy nftables' per-service part for `specs` on `node`."""
    tp = _rules_topology(lab_topo, specs, service_cidr)
    return kubeproxy_nft.ruleset(tp, plan(tp), node)


def nft_ruleset(lab_topo: Topology, node: str, extras: list[SvcSpec], extra_cidr: str = EXTRA_CIDR) -> kubeproxy_nft.Ruleset:
    """kube-proxy nftables' table for the lab's services, the bench services and `extras` (one `nft -f` writes it)."""
    rs = kubeproxy_nft.ruleset(lab_topo, plan(lab_topo), node)
    parts = [_nft_rules(lab_topo, bench_services(), lab_topo.service_cidr, node)]
    if extras:
        parts.append(_nft_rules(lab_topo, extras, extra_cidr, node))
    for p in parts:
        rs.chains += p.chains
        rs.rules += p.rules
        rs.elements += p.elements
    return rs


def nft_update_text(lab_topo: Topology, spec: SvcSpec, new_backend: str) -> tuple[str, str]:
    """kube-proxy nftables' partial sync for one service whose endpoint moved: (nft -f text, text undoing it).

    As kube-proxy does it: the new endpoint chain added, the service chain flushed and rewritten
    to pick it, the old endpoint chain flushed and deleted; one transaction."""
    T = kubeproxy_nft.T

    def text(old: str, new: str) -> str:
        tp = _rules_topology(lab_topo, [spec], EXTRA_CIDR)
        ips = plan(tp).pod_ips
        svc, sp = tp.services[0], tp.services[0].ports[0]
        svc_c = kubeproxy_nft.service_chain(svc, sp)
        old_ep = kubeproxy_nft.endpoint_chain(svc, sp, str(ips[old]), spec.target_port)
        new_ep = kubeproxy_nft.endpoint_chain(svc, sp, str(ips[new]), spec.target_port)
        proto = spec.protocol.lower()
        return "\n".join([
            f"add chain {T} {new_ep}",
            f"add rule {T} {new_ep} ip saddr {ips[new]} jump mark-for-masquerade",
            f"add rule {T} {new_ep} meta l4proto {proto} dnat to {ips[new]}:{spec.target_port}",
            f"flush chain {T} {svc_c}",
            f"add rule {T} {svc_c} ip daddr {spec.cluster_ip} ip saddr != {tp.pod_pool} jump mark-for-masquerade",
            f"add rule {T} {svc_c} numgen random mod 1 vmap {{ 0 : goto {new_ep} }}",
            f"flush chain {T} {old_ep}", f"delete chain {T} {old_ep}", ""])

    return text(spec.backend_pod, new_backend), text(new_backend, spec.backend_pod)
