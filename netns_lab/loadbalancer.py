"""LoadBalancer services and external IPs: the address pool, host routes, validation, allocation.

The lab has no cloud load balancer: a LoadBalancer service gets the lowest free address of the
topology's pool (loadBalancerPool, default 198.19.48.0/24), published as
status.loadBalancer.ingress, and every host routes the pool to the cluster: via one node
(loadBalancerRoute: a node name, default the first node) or ECMP over all nodes ("ecmp"), as
a BGP-advertised service range or a MetalLB L3 setup would. The nodes then serve it as
kube-proxy or the eBPF datapath program it. spec.externalIPs are routed the same way when
they fall in the pool; other external IPs need a route the user adds.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from netns_lab.topology import Service, Topology

DEFAULT_LB_POOL = "198.19.48.0/24"
ECMP = "ecmp"
MAGLEV_ANNOTATION = "lb.projectcalico.org/external-traffic-strategy"
MAX_AFFINITY_TIMEOUT = 86400  # Kubernetes' limit for sessionAffinityConfig.clientIP.timeoutSeconds
DEFAULT_AFFINITY_TIMEOUT = 10800


def pool(topo: Topology) -> IPv4Network:
    """The LoadBalancer address pool of a topology."""
    return IPv4Network(topo.lb_pool or DEFAULT_LB_POOL)


def route_via(topo: Topology) -> list[str]:
    """Fabric addresses of the nodes hosts route the pool through (several: ECMP)."""
    choice = topo.lb_route or topo.nodes[0].name
    if choice == ECMP:
        return [n.address for n in topo.nodes]
    return [topo.node(choice).address]


def external_addrs(svc: Service) -> list[str]:
    """The service's external frontend addresses: its LoadBalancer ingress, then its external IPs."""
    return ([svc.load_balancer_ip] if svc.load_balancer_ip else []) + list(svc.external_ips)


def free_address(topo: Topology, exclude: Service | None = None) -> str | None:
    """The lowest pool address no service holds (as LoadBalancer ingress or external IP); None: pool full."""
    used = {a for s in topo.services if s is not exclude for a in external_addrs(s)}
    return next((str(ip) for ip in pool(topo).hosts() if str(ip) not in used), None)


def check(topo: Topology, error: Any) -> None:
    """Validate the pool, the route choice and every service's external fields; `error(path, msg)` raises."""
    try:
        lb_pool = pool(topo)
    except ValueError as exc:
        raise error(("loadBalancerPool",), f"{topo.lb_pool!r} is not an IPv4 network ({exc})")
    for other, path in ((topo.pod_pool, "podPool"), (topo.service_cidr, "serviceCIDR"), (topo.fabric.subnet, "fabric.subnet")):
        if lb_pool.overlaps(IPv4Network(other)):
            raise error(("loadBalancerPool",), f"{lb_pool} overlaps {path} {other}")
    if topo.lb_route is not None and topo.lb_route != ECMP and topo.lb_route not in {n.name for n in topo.nodes}:
        raise error(("loadBalancerRoute",), f"{topo.lb_route!r} is neither a node nor {ECMP!r}")
    held: dict[str, str] = {}
    private = [IPv4Network(topo.pod_pool), IPv4Network(topo.service_cidr), IPv4Network(topo.fabric.subnet)]
    for i, s in enumerate(topo.services):
        spath = ("services", i)
        if s.load_balancer_ip is not None:
            ip = _addr(s.load_balancer_ip, spath + ("loadBalancerIP",), error)
            if ip not in lb_pool:
                raise error(spath + ("loadBalancerIP",), f"{ip} is not in the LoadBalancer pool {lb_pool}")
        for j, a in enumerate(s.external_ips):
            ip = _addr(a, spath + ("externalIPs", j), error)
            if any(ip in net for net in private) or ip.is_unspecified or ip.is_multicast:
                raise error(spath + ("externalIPs", j), f"{ip} cannot be an external IP (pod, service or fabric address)")
        for a in external_addrs(s):
            if a in held and held[a] != s.full_name:
                raise error(spath, f"{a} is already used by service {held[a]}")
            held[a] = s.full_name
        for j, cidr in enumerate(s.source_ranges):
            try:
                IPv4Network(cidr)
            except ValueError as exc:
                raise error(spath + ("loadBalancerSourceRanges", j), f"{cidr!r} is not an IPv4 network ({exc})")
        if s.affinity_timeout is not None and not 1 <= s.affinity_timeout <= MAX_AFFINITY_TIMEOUT:
            raise error(spath + ("sessionAffinityTimeout",),
                        f"timeoutSeconds {s.affinity_timeout} out of range 1-{MAX_AFFINITY_TIMEOUT}")


def _addr(value: str, path: tuple, error: Any) -> IPv4Address:
    try:
        return IPv4Address(value)
    except ValueError:
        raise error(path, f"{value!r} is not an IPv4 address") from None
