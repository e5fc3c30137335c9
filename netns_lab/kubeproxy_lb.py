"""kube-proxy's iptables rules for LoadBalancer ingress, external IPs, source ranges and ClientIP affinity.

As kube-proxy's iptables proxier writes them (kept apart from kubeproxy.py so the base rules stay
readable): KUBE-SERVICES sends `<svc> loadbalancer IP` to KUBE-EXT-<hash>, or to KUBE-FW-<hash>
when loadBalancerSourceRanges are set; KUBE-FW accepts each range into KUBE-EXT and lets the rest
fall through undNATed, to be dropped (and counted) by the filter table's KUBE-PROXY-FIREWALL,
hooked for ctstate NEW. `<svc> external IP` rules go straight to KUBE-EXT. ClientIP affinity is the
`recent` match: KUBE-SVC checks each endpoint's list (--rcheck --seconds T --reap) before the
random choice, and KUBE-SEP adds the client to its list (--set) as it DNATs.
"""

from __future__ import annotations

import base64
import hashlib

from netns_lab.loadbalancer import external_addrs
from netns_lab.topology import Service

KUBE_PROXY_FIREWALL = "KUBE-PROXY-FIREWALL"
FIREWALL_HOOKS = [
    f'-A {chain} -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j {KUBE_PROXY_FIREWALL}'
    for chain in ("INPUT", "FORWARD", "OUTPUT")
]


def fw_chain(service_port_name: str, protocol: str) -> str:
    """KUBE-FW-<hash>: the source-range firewall of a service port's LoadBalancer IP (same hash as KUBE-SVC)."""
    return "KUBE-FW-" + base64.b32encode(hashlib.sha256((service_port_name + protocol).encode()).digest()).decode()[:16]


def external_rules(svc: Service, name: str, proto: str, port: int, ext_c: str,
                   services: list[str], per_port: list[str], chains: list[str], filter_rules: list[str]) -> None:
    """KUBE-SERVICES entries for the LoadBalancer IP and external IPs, and the KUBE-FW chain, appended in place."""
    match = f"-m {proto} -p {proto}"
    target = ext_c
    if svc.load_balancer_ip and svc.source_ranges:
        target = fw_chain(name, proto)
        chains.append(target)
        for cidr in svc.source_ranges:
            per_port.append(f'-A {target} -m comment --comment "{name} loadbalancer IP" -s {cidr} -j {ext_c}')
        per_port.append(f'-A {target} -m comment --comment "other traffic to {name} will be dropped by {KUBE_PROXY_FIREWALL}"')
        filter_rules.append(f'-A {KUBE_PROXY_FIREWALL} -m comment --comment "{name} traffic not accepted by {target}" '
                            f"{match} -d {svc.load_balancer_ip}/32 --dport {port} -j DROP")
    if svc.load_balancer_ip:
        services.append(f'-A KUBE-SERVICES -m comment --comment "{name} loadbalancer IP" {match} '
                        f"-d {svc.load_balancer_ip}/32 --dport {port} -j {target}")
    for addr in svc.external_ips:
        services.append(f'-A KUBE-SERVICES -m comment --comment "{name} external IP" {match} '
                        f"-d {addr}/32 --dport {port} -j {ext_c}")


def has_external(svc: Service) -> bool:
    """Does the service need its KUBE-EXT chain for an external address?"""
    return bool(external_addrs(svc))


def affinity_check(svc: Service, name: str, svc_c: str, sep_c: str) -> list[str]:
    """KUBE-SVC's rule sending a client seen within the timeout back to endpoint sep_c ([] without affinity)."""
    if svc.affinity_timeout is None:
        return []
    return [f'-A {svc_c} -m comment --comment "{name} -> {sep_c}" -m recent --name {sep_c} --mask 255.255.255.255 '
            f"--rsource --rcheck --seconds {svc.affinity_timeout} --reap -j {sep_c}"]


def affinity_set(svc: Service, sep_c: str) -> str:
    """The `recent --set` match KUBE-SEP's DNAT rule carries under affinity ("" without)."""
    if svc.affinity_timeout is None:
        return ""
    return f"-m recent --set --name {sep_c} --mask 255.255.255.255 --rsource "
