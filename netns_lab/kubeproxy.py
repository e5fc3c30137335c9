"""kube-proxy's iptables mode, reproduced: topology -> one iptables-restore batch per node, and its removal.

The chain layout, names and comments follow kube-proxy's proxier (nat table only):
PREROUTING/OUTPUT -> KUBE-SERVICES -> KUBE-SVC-<hash> (cluster IPs) or, last, KUBE-NODEPORTS
(addrtype LOCAL) -> KUBE-EXT-<hash> (mark for SNAT) -> KUBE-SVC-<hash> -> KUBE-SEP-<hash>
(picked with `statistic --mode random`) -> DNAT; POSTROUTING -> KUBE-POSTROUTING MASQUERADEs
packets marked 0x4000 by KUBE-MARK-MASQ. That SNAT is what hides the client's address from the
pod in the lesson's first section.

Rules are added with `iptables-restore --noflush` so nothing else in the node's tables is
touched, and removal deletes exactly the chains and hook rules this module generates.
"""

from __future__ import annotations

import base64
import hashlib
import re
import subprocess
from dataclasses import dataclass, field

from netns_lab import kubeproxy_lb
from netns_lab.errors import LabError
from netns_lab.policy import categorize
from netns_lab.topology import AddressPlan, Topology

MASQ_MARK = "0x4000"
KUBE_SERVICES = "KUBE-SERVICES"
KUBE_NODEPORTS = "KUBE-NODEPORTS"
KUBE_POSTROUTING = "KUBE-POSTROUTING"
KUBE_MARK_MASQ = "KUBE-MARK-MASQ"
KUBE_FORWARD = "KUBE-FORWARD"
KUBE_EXTERNAL_SERVICES = "KUBE-EXTERNAL-SERVICES"
BASE_CHAINS = (KUBE_SERVICES, KUBE_NODEPORTS, KUBE_POSTROUTING, KUBE_MARK_MASQ)
BUILTIN_CHAINS = ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")
# per-service chains kube-proxy creates and deletes as services and endpoints come and go
SERVICE_CHAIN_RE = re.compile(r"^KUBE-(SVC|SVL|SEP|EXT|FW)-[A-Z2-7]{16}$")


def _hash16(text: str) -> str:
    """kube-proxy's chain suffix: base32(sha256(text)), first 16 characters."""
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()[:16]


def service_port_name(full_name: str, port_name: str) -> str:
    """kube-proxy's ServicePortName.String(): `ns/name:port`, or `ns/name` for an unnamed port (no trailing colon)."""
    return f"{full_name}:{port_name}" if port_name else full_name


def svc_chain(service_port_name: str, protocol: str) -> str:
    """KUBE-SVC-<hash> for `ns/name:port` and lowercase protocol (kube-proxy's portProtoHash)."""
    return "KUBE-SVC-" + _hash16(service_port_name + protocol)


def ext_chain(service_port_name: str, protocol: str) -> str:
    """KUBE-EXT-<hash>: the external (NodePort) entry of a service port; same hash as KUBE-SVC."""
    return "KUBE-EXT-" + _hash16(service_port_name + protocol)


def svl_chain(service_port_name: str, protocol: str) -> str:
    """KUBE-SVL-<hash>: a service port's node-local endpoints (Local traffic policy); same hash as KUBE-SVC."""
    return "KUBE-SVL-" + _hash16(service_port_name + protocol)


def sep_chain(service_port_name: str, protocol: str, endpoint: str) -> str:
    """KUBE-SEP-<hash> for one endpoint `ip:port` of a service port."""
    return "KUBE-SEP-" + _hash16(service_port_name + protocol + endpoint)


@dataclass
class Ruleset:
    """kube-proxy's rules for one node: chains it owns, rules in them, hooks from built-in chains.

    `chains`/`rules`/`hooks` are the nat table; `filter_*` the filter table (KUBE-FORWARD).
    """

    chains: list[str] = field(default_factory=list)
    rules: list[str] = field(default_factory=list)
    hooks: list[str] = field(default_factory=list)
    filter_chains: list[str] = field(default_factory=list)
    filter_rules: list[str] = field(default_factory=list)
    filter_hooks: list[str] = field(default_factory=list)


def _probability(n: int) -> str:
    """kube-proxy's computeProbability: 1/n with ten decimals."""
    return f"{1.0 / n:0.10f}"


def ruleset(topo: Topology, plan: AddressPlan, node: str) -> Ruleset:
    """The nat and filter rules kube-proxy would program on `node` for the topology's services.

    Traffic policies make the rules per node: with externalTrafficPolicy (or internalTrafficPolicy)
    Local the external (internal) traffic goes to KUBE-SVL-<hash>, which holds only this node's
    endpoints; a port with no endpoint for its traffic gets a filter rule instead: REJECT when the
    service has no endpoint at all, DROP when it only has none on this node (kube-proxy's own split).
    """
    topo.node(node)  # KeyError for an unknown node
    cluster_cidr = topo.pod_pool
    rs = Ruleset(chains=list(BASE_CHAINS))
    services: list[str] = []
    nodeports: list[str] = []
    per_port: list[str] = []
    f_services: list[str] = []
    f_external: list[str] = []
    f_nodeports: list[str] = []
    firewall: list[str] = []  # KUBE-PROXY-FIREWALL (filter table): loadBalancerSourceRanges' drops
    for svc in topo.services:
        if svc.headless:
            continue  # no cluster IP: kube-proxy programs nothing for it
        if svc.health_check_node_port:
            f_nodeports.append(f'-A {KUBE_NODEPORTS} -m comment --comment "{svc.full_name} health check node port" '
                               f"-m tcp -p tcp --dport {svc.health_check_node_port} -j ACCEPT")
        for sp in svc.ports:
            name = service_port_name(svc.full_name, sp.name)
            proto = sp.protocol.lower()
            match = f"-m {proto} -p {proto}"
            eps = categorize(plan.backends(svc, sp), node)
            svc_c, svl_c = svc_chain(name, proto), svl_chain(name, proto)
            external = sp.node_port is not None or kubeproxy_lb.has_external(svc)
            uses_cluster = bool(eps.cluster) and (not svc.internal_local or (external and not svc.external_local))
            uses_local = bool(eps.local) and (svc.internal_local or svc.external_local)
            internal_c = svl_c if svc.internal_local else svc_c
            external_c = svl_c if svc.external_local else svc_c
            has_internal = bool(eps.local if svc.internal_local else eps.cluster)
            has_external = bool(eps.local if svc.external_local else eps.cluster)
            if has_internal:
                services.append(
                    f'-A {KUBE_SERVICES} -m comment --comment "{name} cluster IP" {match} '
                    f"-d {svc.cluster_ip}/32 --dport {sp.port} -j {internal_c}"
                )
            else:
                comment, target = _no_endpoints(name, eps.any)
                f_services.append(f'-A {KUBE_SERVICES} -m comment --comment "{comment}" {match} '
                                  f"-d {svc.cluster_ip}/32 --dport {sp.port} -j {target}")
            rs.chains += [c for c, used in ((svc_c, uses_cluster), (svl_c, uses_local)) if used]
            if external:
                ext_c = ext_chain(name, proto)
                if eps.any:
                    rs.chains.append(ext_c)
                    kubeproxy_lb.external_rules(svc, name, proto, sp.port, ext_c, services, per_port, rs.chains, firewall)
                    if sp.node_port is not None:
                        nodeports.append(f'-A {KUBE_NODEPORTS} -m comment --comment "{name}" {match} --dport {sp.node_port} -j {ext_c}')
                    per_port += _ext_rules(ext_c, name, svc.external_local, svc_c if uses_cluster else None, cluster_cidr)
                    if has_external:
                        per_port.append(f"-A {ext_c} -j {external_c}")
                if not has_external and sp.node_port is not None:
                    comment, target = _no_endpoints(name, eps.any)
                    f_external.append(f'-A {KUBE_EXTERNAL_SERVICES} -m comment --comment "{comment}" '
                                      f"-m addrtype --dst-type LOCAL {match} --dport {sp.node_port} -j {target}")
            if has_internal:
                per_port.append(
                    f'-A {internal_c} -m comment --comment "{name} cluster IP" {match} -d {svc.cluster_ip}/32 '
                    f"--dport {sp.port} ! -s {cluster_cidr} -j {KUBE_MARK_MASQ}"
                )
            seps: dict[str, str] = {}
            for chain, members, used in ((svc_c, eps.cluster, uses_cluster), (svl_c, eps.local, uses_local)):
                if not used:
                    continue
                for be in members:  # ClientIP affinity: a client seen lately goes back to its endpoint
                    endpoint = f"{be.ip}:{be.port}"
                    sep_c = seps.setdefault(endpoint, sep_chain(name, proto, endpoint))
                    per_port += kubeproxy_lb.affinity_check(svc, name, chain, sep_c)
                for i, be in enumerate(members):
                    endpoint = f"{be.ip}:{be.port}"
                    sep_c = seps.setdefault(endpoint, sep_chain(name, proto, endpoint))
                    remaining = len(members) - i
                    stat = f"-m statistic --mode random --probability {_probability(remaining)} " if remaining > 1 else ""
                    per_port.append(f'-A {chain} -m comment --comment "{name} -> {endpoint}" {stat}-j {sep_c}')
            for endpoint, sep_c in seps.items():
                ip = endpoint.split(":")[0]
                rs.chains.append(sep_c)
                per_port.append(f'-A {sep_c} -m comment --comment "{name}" -s {ip}/32 -j {KUBE_MARK_MASQ}')
                per_port.append(f'-A {sep_c} -m comment --comment "{name}" {kubeproxy_lb.affinity_set(svc, sep_c)}'
                                f'{match} -j DNAT --to-destination {endpoint}')
    rs.rules = (
        services
        + [
            f'-A {KUBE_SERVICES} -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule '
            f'in this chain" -m addrtype --dst-type LOCAL -j {KUBE_NODEPORTS}'
        ]
        + nodeports
        + per_port
        + [
            f"-A {KUBE_MARK_MASQ} -j MARK --or-mark {MASQ_MARK}",
            f"-A {KUBE_POSTROUTING} -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN",
            f"-A {KUBE_POSTROUTING} -j MARK --xor-mark {MASQ_MARK}",
            f'-A {KUBE_POSTROUTING} -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully',
        ]
    )
    rs.hooks = [
        f'-A PREROUTING -m comment --comment "kubernetes service portals" -j {KUBE_SERVICES}',
        f'-A OUTPUT -m comment --comment "kubernetes service portals" -j {KUBE_SERVICES}',
        f'-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j {KUBE_POSTROUTING}',
    ]
    rs.filter_chains = [KUBE_FORWARD, KUBE_SERVICES, KUBE_EXTERNAL_SERVICES, KUBE_NODEPORTS, kubeproxy_lb.KUBE_PROXY_FIREWALL]
    rs.filter_rules = [
        *firewall,
        *f_services,
        *f_external,
        *f_nodeports,
        f"-A {KUBE_FORWARD} -m conntrack --ctstate INVALID -j DROP",
        f'-A {KUBE_FORWARD} -m comment --comment "kubernetes forwarding rules" -m mark --mark {MASQ_MARK}/{MASQ_MARK} -j ACCEPT',
        f'-A {KUBE_FORWARD} -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT',
    ]
    rs.filter_hooks = [
        f'-A INPUT -m comment --comment "kubernetes health check service ports" -j {KUBE_NODEPORTS}',
        f'-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" '
        f"-j {KUBE_EXTERNAL_SERVICES}",
        f'-A FORWARD -m comment --comment "kubernetes forwarding rules" -j {KUBE_FORWARD}',
        f'-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j {KUBE_SERVICES}',
        f'-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" '
        f"-j {KUBE_EXTERNAL_SERVICES}",
        f'-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j {KUBE_SERVICES}',
        *kubeproxy_lb.FIREWALL_HOOKS,
    ]
    return rs


def _no_endpoints(name: str, has_endpoints: bool) -> tuple[str, str]:
    """kube-proxy's filter rule for traffic with no endpoint: (comment, target). No endpoint at all:
    REJECT (ICMP port unreachable); endpoints, but none on this node for a Local policy: DROP."""
    if has_endpoints:
        return f"{name} has no local endpoints", "DROP"
    return f"{name} has no endpoints", "REJECT"


def _ext_rules(ext_c: str, name: str, local: bool, cluster_c: str | None, cluster_cidr: str) -> list[str]:
    """The head of KUBE-EXT-<hash>: Cluster policy masquerades everything; Local keeps the client's
    address, sending only pods and the node itself (masqueraded) to the cluster-wide chain."""
    if not local:
        return [f'-A {ext_c} -m comment --comment "masquerade traffic for {name} external destinations" -j {KUBE_MARK_MASQ}']
    rules = []
    if cluster_c:
        rules.append(f'-A {ext_c} -m comment --comment "pod traffic for {name} external destinations" '
                     f"-s {cluster_cidr} -j {cluster_c}")
    rules.append(f'-A {ext_c} -m comment --comment "masquerade LOCAL traffic for {name} external destinations" '
                 f"-m addrtype --src-type LOCAL -j {KUBE_MARK_MASQ}")
    if cluster_c:
        rules.append(f'-A {ext_c} -m comment --comment "route LOCAL traffic for {name} external destinations" '
                     f"-m addrtype --src-type LOCAL -j {cluster_c}")
    return rules


# --------------------------------------------------------------------------- restore text (pure)

_RULE_RE = re.compile(r"^-A (\S+) .*-j (\S+)")


def _saved_table(saved: str, table: str) -> tuple[set[str], list[str]]:
    """Chains declared and rules (`-A ...` lines) of one table in iptables-save output."""
    chains: set[str] = set()
    rules: list[str] = []
    inside = False
    for line in saved.splitlines():
        if line.startswith("*"):
            inside = line.strip() == f"*{table}"
        elif inside and line.startswith(":"):
            chains.add(line[1:].split()[0])
        elif inside and line.startswith("-A "):
            rules.append(line)
    return chains, rules


def _saved_nat(saved: str) -> tuple[set[str], list[str]]:
    """Chains declared and rules of the nat table in iptables-save output."""
    return _saved_table(saved, "nat")


def stale_chains(rs: Ruleset, saved: str) -> list[str]:
    """Per-service chains present in `saved` (nat) that the ruleset no longer has (endpoint or service gone)."""
    chains, _ = _saved_nat(saved)
    wanted = set(rs.chains)  # a set: with 10,000 services a list membership test is quadratic
    return sorted(c for c in chains if SERVICE_CHAIN_RE.match(c) and c not in wanted)


def _hook_key(rule: str) -> tuple[str, str] | None:
    """(built-in chain, jump target) of a hook rule, None for other rules."""
    m = _RULE_RE.match(rule)
    if not m or m.group(1) not in BUILTIN_CHAINS:
        return None
    return m.group(1), m.group(2)


def _table_install_text(table: str, chains: list[str], rules: list[str], hooks: list[str], saved: str) -> str:
    """iptables-restore --noflush input for one table: declare `chains`, add `rules`, and the hooks not in `saved`.

    Declaring a chain (`:NAME - [0:0]`) creates it, or flushes it if it exists, so re-installing
    replaces the rules instead of duplicating them.
    """
    _, saved_rules = _saved_table(saved, table)
    present = {_hook_key(r) for r in saved_rules}
    lines = [f"*{table}", *(f":{c} - [0:0]" for c in chains), *rules,
             *(h for h in hooks if _hook_key(h) not in present), "COMMIT"]
    return "\n".join(lines) + "\n"


def _table_removal_text(table: str, chains: list[str], saved: str) -> str | None:
    """iptables-restore --noflush input removing, of `chains`, the ones present in `saved` and the hooks into them.

    Only what is actually present is named, so the batch neither fails on a half-removed
    state nor touches anyone else's rules. None: nothing to remove.
    """
    saved_chains, saved_rules = _saved_table(saved, table)
    owned = set(chains)
    hooks = [r for r in saved_rules if (k := _hook_key(r)) is not None and k[1] in owned]
    present = [c for c in chains if c in saved_chains]
    if not hooks and not present:
        return None
    lines = [f"*{table}", *("-D" + h[2:] for h in hooks), *(f"-F {c}" for c in present),
             *(f"-X {c}" for c in present), "COMMIT"]
    return "\n".join(lines) + "\n"


def install_text(rs: Ruleset, saved: str = "") -> str:
    """iptables-restore --noflush input adding the ruleset's nat part; hooks already in `saved` are not repeated."""
    return _table_install_text("nat", rs.chains, rs.rules, rs.hooks, saved)


def sync_text(rs: Ruleset, saved: str = "", saved_filter: str = "") -> str:
    """iptables-restore --noflush input making a node's kube-proxy rules exactly `rs`, like a kube-proxy resync.

    The nat part is install_text plus the removal of per-service chains left over from
    endpoints that are gone (their references vanish when KUBE-SVC-* are re-declared, so they
    can be deleted in the same batch); then the filter table's KUBE-FORWARD.
    """
    nat = install_text(rs, saved).removesuffix("COMMIT\n")
    stale = stale_chains(rs, saved)
    nat += "".join(f"-F {c}\n" for c in stale) + "".join(f"-X {c}\n" for c in stale) + "COMMIT\n"
    return nat + filter_install_text(rs, saved_filter)


def filter_install_text(rs: Ruleset, saved_filter: str = "") -> str:
    """iptables-restore --noflush input adding the ruleset's filter table part (KUBE-FORWARD and its hook)."""
    return _table_install_text("filter", rs.filter_chains, rs.filter_rules, rs.filter_hooks, saved_filter)


def filter_removal_text(rs: Ruleset, saved_filter: str) -> str | None:
    """iptables-restore --noflush input removing the ruleset's filter chains and hooks present; None if none."""
    return _table_removal_text("filter", rs.filter_chains, saved_filter)


def removal_text(rs: Ruleset, saved: str) -> str | None:
    """iptables-restore --noflush input removing the ruleset's nat hooks and chains found in `saved`,
    plus per-service chains of endpoints that are already gone. None: nothing to remove."""
    return _table_removal_text("nat", [*rs.chains, *stale_chains(rs, saved)], saved)


# --------------------------------------------------------------------------- applying inside a node namespace


def _run(ns: str, argv: list[str], stdin: str | None = None) -> str:
    """Run an iptables tool inside `ns`; LabError with its stderr on failure."""
    proc = subprocess.run(["ip", "netns", "exec", ns, *argv], input=stdin, capture_output=True, text=True)
    if proc.returncode != 0:
        raise LabError(f"{' '.join(argv)} in {ns} failed: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout


def save(ns: str, table: str = "nat") -> str:
    """One table of namespace `ns` (iptables-save format); the nat table by default."""
    return _run(ns, ["iptables-save", "-t", table])


def install(ns: str, rs: Ruleset) -> None:
    """Program the ruleset into `ns` in one iptables-restore batch (idempotent; also a resync after endpoint changes)."""
    _run(ns, ["iptables-restore", "--noflush"], sync_text(rs, save(ns), save(ns, "filter")))


def remove(ns: str, rs: Ruleset) -> bool:
    """Delete exactly the ruleset's hooks and chains (nat and filter) from `ns` in one batch; False if none were there."""
    parts = [t for t in (removal_text(rs, save(ns)), filter_removal_text(rs, save(ns, "filter"))) if t]
    if not parts:
        return False
    _run(ns, ["iptables-restore", "--noflush"], "".join(parts))
    return True


def installed(ns: str, rs: Ruleset) -> bool:
    """True when all of the ruleset's chains (nat and filter) exist in `ns`."""
    chains, _ = _saved_nat(save(ns))
    fchains, _ = _saved_table(save(ns, "filter"), "filter")
    return set(rs.chains) <= chains and set(rs.filter_chains) <= fchains


def present(ns: str) -> bool:
    """True when any kube-proxy chain (nat or filter) exists in `ns`, whatever the endpoints."""
    chains, _ = _saved_nat(save(ns))
    fchains, _ = _saved_table(save(ns, "filter"), "filter")
    return bool((set(BASE_CHAINS) & chains) or any(SERVICE_CHAIN_RE.match(c) for c in chains) or KUBE_FORWARD in fchains)
