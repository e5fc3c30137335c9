"""kube-proxy's nftables mode (GA in Kubernetes 1.33), reproduced: topology -> one `nft -f` transaction per node.

The table layout, names and comments follow kube-proxy's nftables proxier: one table
`ip kube-proxy`; the hooks nat-prerouting/nat-output jump to `services`, which dispatches in
one lookup through the verdict maps `service-ips` (ClusterIP . proto . port) and
`service-nodeports` (proto . port, for destinations in the set `nodeport-ips`); a service
port's chain `service-<hash>-ns/name/proto/port` marks off-cluster sources for masquerade and
picks an endpoint chain with `numgen random mod N vmap`; `endpoint-<hash>-...__ip/port`
DNATs. `external-<hash>-...` is a NodePort's entry (mark for masquerade, then the service
chain). Traffic policies Local use `local-<hash>-...` (this node's endpoints only); eTP Local's
external chain keeps the client's address and short-circuits pods and the node itself to the
service chain, and a node without a local endpoint drops through `no-endpoint-nodeports`. Services without endpoints are rejected through `no-endpoint-services` /
`no-endpoint-nodeports`, and ClusterIPs of the service CIDR that nobody owns are dropped.

Where the iptables mode walks KUBE-SERVICES rule by rule, every lookup here is a hash (the
point of the rewrite), which `netns-lab bench` measures side by side.

A sync replaces the whole table in one transaction (add, delete, add: atomic, so no packet
sees a half-built table; conntrack keeps open connections' NAT bindings). kube-proxy flushes
and rewrites chains and deletes stale ones later; the resulting table is the same.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
from dataclasses import dataclass, field

from netns_lab.errors import LabError
from netns_lab.loadbalancer import external_addrs
from netns_lab.policy import categorize
from netns_lab.topology import AddressPlan, Service, ServicePort, Topology

FAMILY = "ip"
TABLE = "kube-proxy"
MASQ_MARK = "0x4000"
T = f"{FAMILY} {TABLE}"  # every command names the table this way

# The table's fixed part, as kube-proxy creates it on start (sets, maps, base and helper chains).
SETS = (
    ("cluster-ips", "ipv4_addr", "Active ClusterIPs"),
    ("nodeport-ips", "ipv4_addr", "IPs that accept NodePort traffic"),
)
MAPS = (
    ("firewall-ips", "ipv4_addr . inet_proto . inet_service", "destinations that are subject to LoadBalancerSourceRanges"),
    ("no-endpoint-nodeports", "inet_proto . inet_service", "vmap to drop or reject packets to service nodeports with no endpoints"),
    ("no-endpoint-services", "ipv4_addr . inet_proto . inet_service", "vmap to drop or reject packets to services with no endpoints"),
    ("service-ips", "ipv4_addr . inet_proto . inet_service", "ClusterIP, ExternalIP and LoadBalancer IP traffic"),
    ("service-nodeports", "inet_proto . inet_service", "NodePort traffic"),
)
# (chain, hook spec or None for a regular chain)
CHAINS = (
    ("cluster-ips-check", None),
    ("filter-prerouting-pre-dnat", "type filter hook prerouting priority -110 ;"),
    ("filter-output-pre-dnat", "type filter hook output priority -110 ;"),
    ("filter-forward", "type filter hook forward priority 0 ;"),
    ("filter-input", "type filter hook input priority 0 ;"),
    ("filter-output", "type filter hook output priority 0 ;"),
    ("firewall-check", None),
    ("mark-for-masquerade", None),
    ("masquerading", None),
    ("nat-output", "type nat hook output priority -100 ;"),
    ("nat-postrouting", "type nat hook postrouting priority 100 ;"),
    ("nat-prerouting", "type nat hook prerouting priority -100 ;"),
    ("nodeport-endpoints-check", None),
    ("reject-chain", 'comment "helper for @no-endpoint-services / @no-endpoint-nodeports" ;'),
    ("services", None),
    ("service-endpoints-check", None),
)


def base_rules(service_cidr: str) -> list[str]:
    """The fixed rules: filter hooks into the endpoint/ClusterIP checks, masquerading, the service dispatch."""
    return [
        f'cluster-ips-check ip daddr @cluster-ips reject comment "Reject traffic to invalid ports of ClusterIPs"',
        f'cluster-ips-check ip daddr {{ {service_cidr} }} drop comment "Drop traffic to unallocated ClusterIPs"',
        "filter-prerouting-pre-dnat ct state new jump firewall-check",
        "filter-forward ct state new jump service-endpoints-check",
        "filter-forward ct state new jump cluster-ips-check",
        "filter-input ct state new jump nodeport-endpoints-check",
        "filter-input ct state new jump service-endpoints-check",
        "filter-output ct state new jump service-endpoints-check",
        "filter-output-pre-dnat ct state new jump firewall-check",
        "filter-output ct state new jump cluster-ips-check",
        "firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips",
        f"mark-for-masquerade mark set mark or {MASQ_MARK}",
        f"masquerading mark and {MASQ_MARK} == 0 return",
        f"masquerading mark set mark xor {MASQ_MARK}",
        "masquerading masquerade fully-random",
        "nat-output jump services",
        "nat-postrouting jump masquerading",
        "nat-prerouting jump services",
        "nodeport-endpoints-check ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports",
        "reject-chain reject",
        "services ip daddr . meta l4proto . th dport vmap @service-ips",
        "services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports",
        "service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services",
    ]


def _hashed(prefix: str, base: str) -> str:
    """kube-proxy's hashAndTruncate: `<prefix>-` + base32(sha256(base))[:8] + `-` + base."""
    return f"{prefix}-{base64.b32encode(hashlib.sha256(base.encode()).digest()).decode()[:8]}-{base}"


def port_base(svc: Service, sp: ServicePort) -> str:
    """`ns/name/proto/port-name`: the base of a service port's chain names."""
    return f"{svc.namespace}/{svc.name}/{sp.protocol.lower()}/{sp.name}"


def service_chain(svc: Service, sp: ServicePort) -> str:
    """service-<hash>-ns/name/proto/port: the ClusterIP entry of a service port."""
    return _hashed("service", port_base(svc, sp))


def external_chain(svc: Service, sp: ServicePort) -> str:
    """external-<hash>-...: the NodePort entry (same hash as the service chain)."""
    return _hashed("external", port_base(svc, sp))


def endpoint_chain(svc: Service, sp: ServicePort, ip: str, port: int) -> str:
    """endpoint-<hash>-ns/name/proto/port__ip/port: DNAT to one endpoint."""
    return _hashed("endpoint", f"{port_base(svc, sp)}__{ip}/{port}")


@dataclass
class Ruleset:
    """kube-proxy's nftables table for one node: chains it owns, rules (chain first) and map/set elements."""

    chains: list[str] = field(default_factory=list)
    rules: list[str] = field(default_factory=list)
    elements: list[str] = field(default_factory=list)
    service_cidr: str = ""
    node_ips: list[str] = field(default_factory=list)
    sets: list[str] = field(default_factory=list)  # per-service sets (ClientIP affinity), declared before the rules


def _external(rs: Ruleset, svc: Service, sp: ServicePort, ext_c: str, has_external: bool = True) -> None:
    """LoadBalancer IP and external IPs into service-ips (and, for eTP Local without a local endpoint,
    no-endpoint-services' drop); source ranges as a firewall chain in firewall-ips."""
    proto = sp.protocol.lower()
    for addr in external_addrs(svc):
        rs.elements.append(f"service-ips {{ {addr} . {proto} . {sp.port} : goto {ext_c} }}")
        if not has_external:
            rs.elements.append(f'no-endpoint-services {{ {addr} . {proto} . {sp.port} comment "{svc.full_name}:{sp.name}" : drop }}')
    if svc.load_balancer_ip and svc.source_ranges:
        fw_c = _hashed("firewall", port_base(svc, sp))
        rs.chains.append(fw_c)
        rs.rules.append(f'{fw_c} ip saddr != {{ {", ".join(svc.source_ranges)} }} counter drop')
        rs.elements.append(f'firewall-ips {{ {svc.load_balancer_ip} . {proto} . {sp.port} comment "{svc.full_name}:{sp.name}"'
                           f" : goto {fw_c} }}")


def _affinity(rs: Ruleset, svc: Service, chains: list[tuple[str, list[str]]], ep_c: str) -> list[str]:
    """ClientIP affinity as kube-proxy's nftables mode does it: a timed set of clients per endpoint,
    checked in each policy chain holding the endpoint before its random pick, refreshed in the endpoint chain."""
    if svc.affinity_timeout is None:
        return []
    aff = "affinity-" + ep_c.removeprefix("endpoint-")
    rs.sets.append(f"add set {T} {aff} {{ type ipv4_addr ; flags dynamic,timeout ; timeout {svc.affinity_timeout}s ; }}")
    for chain, members in chains:  # the check goes before the chain's numgen pick (inserted, not appended)
        if ep_c in members:
            rs.rules.insert(next(i for i, r in enumerate(rs.rules) if r.startswith(f"{chain} numgen")),
                            f"{chain} ip saddr @{aff} goto {ep_c}")
    return [f"{ep_c} update @{aff} {{ ip saddr }}"]


def _ext_rules(ext_c: str, local: bool, cluster_c: str | None, external_c: str | None, cluster_cidr: str) -> list[str]:
    """The external-<hash> chain: Cluster policy masquerades everything; Local keeps the client's address and
    short-circuits pods and the node itself (masqueraded) to the cluster-wide chain. Without an endpoint for
    external traffic (external_c None) the rest falls off the chain undNATed, to no-endpoint-nodeports' drop."""
    if not local:
        rules = [f"{ext_c} jump mark-for-masquerade"]
    else:
        rules = []
        if cluster_c:
            rules.append(f'{ext_c} ip saddr {cluster_cidr} goto {cluster_c} comment "short-circuit pod traffic"')
        rules.append(f'{ext_c} fib saddr type local jump mark-for-masquerade comment "masquerade local traffic"')
        if cluster_c:
            rules.append(f'{ext_c} fib saddr type local goto {cluster_c} comment "short-circuit local traffic"')
    if external_c:
        rules.append(f"{ext_c} goto {external_c}")
    return rules


def local_chain(svc: Service, sp: ServicePort) -> str:
    """local-<hash>-...: a service port's endpoints on this node (a Local traffic policy); same hash as service-."""
    return _hashed("local", port_base(svc, sp))


def ruleset(topo: Topology, plan: AddressPlan, node: str) -> Ruleset:
    """The table kube-proxy's nftables mode would program on `node` for the topology's services.

    Traffic policies make it per node, as in kube-proxy's nftables proxier: with externalTrafficPolicy
    (internalTrafficPolicy) Local, external (ClusterIP) traffic goes to local-<hash>, which holds only this
    node's endpoints; a port with no endpoint for its traffic gets a no-endpoint-* element instead:
    `goto reject-chain` when the service has no endpoint at all, `drop` when it only has none on this node.
    """
    me = next((n for n in topo.nodes if n.name == node), None)
    if me is None:
        raise KeyError(node)
    cluster = topo.pod_pool
    rs = Ruleset(service_cidr=topo.service_cidr, node_ips=[me.address])
    for svc in topo.services:
        rs.elements.append(f"cluster-ips {{ {svc.cluster_ip} }}")
        for sp in svc.ports:
            proto = sp.protocol.lower()
            what = f"{svc.full_name}:{sp.name}"
            # usable endpoints, cluster-wide and on this node: ready ones, else the terminating ones (kube-proxy's
            # fallback); a terminating endpoint gets no chain, so no new connection, while its conntrack
            # entries keep open ones going
            eps = categorize(plan.backends(svc, sp), node)
            external = sp.node_port is not None or bool(external_addrs(svc))
            if not eps.any:  # kube-proxy rejects these (a REJECT, i.e. ICMP port unreachable or TCP RST)
                rs.elements.append(f'no-endpoint-services {{ {svc.cluster_ip} . {proto} . {sp.port} comment "{what}" : goto reject-chain }}')
                if sp.node_port is not None:
                    rs.elements.append(f'no-endpoint-nodeports {{ {proto} . {sp.node_port} comment "{what}" : goto reject-chain }}')
                continue
            svc_c, loc_c = service_chain(svc, sp), local_chain(svc, sp)
            uses_cluster = bool(eps.cluster) and (not svc.internal_local or (external and not svc.external_local))
            uses_local = bool(eps.local) and (svc.internal_local or svc.external_local)
            internal_c = loc_c if svc.internal_local else svc_c
            has_internal = bool(eps.local) or not svc.internal_local
            has_external = bool(eps.local) or not svc.external_local
            policy: list[tuple[str, list[str]]] = []  # (chain, its endpoint chains), in the order written
            for chain, members, used in ((svc_c, eps.cluster, uses_cluster), (loc_c, eps.local, uses_local)):
                if not used:
                    continue
                picks = [endpoint_chain(svc, sp, b.ip, b.port) for b in members]
                policy.append((chain, picks))
                rs.chains.append(chain)
                if chain == internal_c:
                    rs.rules.append(f"{chain} ip daddr {svc.cluster_ip} ip saddr != {cluster} jump mark-for-masquerade")
                vmap = " , ".join(f"{i} : goto {c}" for i, c in enumerate(picks))
                rs.rules.append(f"{chain} numgen random mod {len(picks)} vmap {{ {vmap} }}")
            if external:
                ext_c = external_chain(svc, sp)
                rs.chains.append(ext_c)
                rs.rules += _ext_rules(ext_c, svc.external_local, svc_c if uses_cluster else None,
                                       (loc_c if svc.external_local else svc_c) if has_external else None, cluster)
                if sp.node_port is not None:
                    rs.elements.append(f"service-nodeports {{ {proto} . {sp.node_port} : goto {ext_c} }}")
                    if not has_external:  # Local, none here: what the external chain did not short-circuit is dropped
                        rs.elements.append(f'no-endpoint-nodeports {{ {proto} . {sp.node_port} comment "{what}" : drop }}')
                _external(rs, svc, sp, ext_c, has_external)
            seen: set[str] = set()
            for b in [*eps.cluster, *eps.local]:
                c = endpoint_chain(svc, sp, b.ip, b.port)
                if c in seen or not any(c in picks for _, picks in policy):
                    continue
                seen.add(c)
                rs.chains.append(c)
                rs.rules += _affinity(rs, svc, policy, c)
                rs.rules += [f"{c} ip saddr {b.ip} jump mark-for-masquerade", f"{c} meta l4proto {proto} dnat to {b.ip}:{b.port}"]
            if has_internal:
                rs.elements.append(f"service-ips {{ {svc.cluster_ip} . {proto} . {sp.port} : goto {internal_c} }}")
            else:  # iTP Local, none here: the ClusterIP is dropped on this node
                rs.elements.append(f'no-endpoint-services {{ {svc.cluster_ip} . {proto} . {sp.port} comment "{what}" : drop }}')
    return rs


# --------------------------------------------------------------------------- nft -f text (pure)


def install_text(rs: Ruleset) -> str:
    """One `nft -f` transaction making the node's kube-proxy table exactly `rs` (replacing any previous one)."""
    lines = [f"add table {T}", f"delete table {T}", f'add table {T} {{ comment "rules for kube-proxy" ; }}']
    lines += [f'add set {T} {name} {{ type {typ} ; comment "{c}" ; }}' for name, typ, c in SETS]
    lines += [f'add map {T} {name} {{ type {typ} : verdict ; comment "{c}" ; }}' for name, typ, c in MAPS]
    lines += [f"add chain {T} {name}" + (f" {{ {spec} }}" if spec else "") for name, spec in CHAINS]
    lines += [f"add chain {T} {c}" for c in rs.chains]
    lines += rs.sets
    lines += [f"add rule {T} {r}" for r in base_rules(rs.service_cidr)]
    lines += [f"add element {T} nodeport-ips {{ {ip} }}" for ip in rs.node_ips]
    lines += [f"add rule {T} {r}" for r in rs.rules]
    lines += [f"add element {T} {e}" for e in rs.elements]
    return "\n".join(lines) + "\n"


def removal_text() -> str:
    """One `nft -f` transaction deleting kube-proxy's table, also when it is not there (add first)."""
    return f"add table {T}\ndelete table {T}\n"


# --------------------------------------------------------------------------- applying inside a node namespace


def _nft(ns: str, args: list[str], stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """nft inside `ns`; LabError with its stderr on failure when `check`."""
    proc = subprocess.run(["ip", "netns", "exec", ns, "nft", *args], input=stdin, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise LabError(f"nft {' '.join(args)} in {ns} failed: {proc.stderr.strip() or proc.returncode}")
    return proc


def install(ns: str, rs: Ruleset) -> None:
    """Program the table into `ns` in one transaction (idempotent; also the resync after endpoint changes)."""
    _nft(ns, ["-f", "-"], install_text(rs))


def remove(ns: str) -> bool:
    """Delete kube-proxy's table from `ns` (what Felix's cleanup does); False if it was not there."""
    had = present(ns)
    if had:
        _nft(ns, ["-f", "-"], removal_text())
    return had


def present(ns: str) -> bool:
    """True when kube-proxy's nftables table exists in `ns`."""
    return _nft(ns, ["list", "table", FAMILY, TABLE], check=False).returncode == 0


def listing(ns: str) -> str:
    """`nft list table ip kube-proxy` in `ns` (what a user reads to see the rules)."""
    return _nft(ns, ["list", "table", FAMILY, TABLE]).stdout
