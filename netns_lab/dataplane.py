"""The lab's service dataplane: kube-proxy (iptables or nftables) or the eBPF datapath, and live moves between them.

FelixConfiguration "default" (netns_lab/felix.py) selects the mode, as in the lesson:
bpfEnabled false is kube-proxy, true is eBPF with bpfExternalServiceMode Tunnel or DSR.
apply() makes a running lab match a FelixConfig, in an order that never leaves a moment
with no dataplane at all:

- into eBPF: compile and pin every node's programs first (not attached, so nothing changes
  yet), switch them off (`enabled=False`: they pass everything), attach them to eth0 and
  every pod veth, program the maps, then switch every node on in one quick pass; only then
  remove kube-proxy's rules (bpfKubeProxyIptablesCleanupEnabled true), or leave them and
  add a raw-table NOTRACK for the datapath's bypass mark (false: kube-proxy's
  `--ctstate INVALID -j DROP` would otherwise kill the flows BPF hands to the kernel,
  which netfilter sees in one direction only);
- into kube-proxy: install kube-proxy's rules, switch every node's programs off, unload;
- kube-proxy's own mode (KubeProxyConfiguration iptables | nftables, state.KubeProxyRecord.mode)
  is not Felix's: changing it installs the new backend's rules, then removes the old one's.
  The NOTRACK above is for the iptables backend only: kube-proxy's nftables table has no
  ct-invalid drop, and nothing BPF hands to the kernel matches it (the bypassed packets are
  already NATed to pod addresses, and their mark 0x01000000 is not the masquerade bit 0x4000);
- Tunnel <-> DSR and opt-out CIDRs: a map sync only. A connection keeps the mode it was
  opened with (its conntrack entries say so); new connections use the new one.

Pods are re-programmed the same way (`delete_pod`): kube-proxy's rules are resynced like
kube-proxy does after an endpoint change, and the datapath's maps are synced.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ebpf_nodeport import ctlb, tc
from ebpf_nodeport.abi import EBPF_MODES, SKB_MARK_BYPASS
from ebpf_nodeport.datapath import NodeDatapath
from ebpf_nodeport.sync import Backend, ClusterView, Service
from ebpf_nodeport.loader import LoadResult, LoaderError
from netns_lab import builder, cgroups, cleanup, ctclean, ctflush, kubeproxy, kubeproxy_nft, naming
from netns_lab import felix as felix_model
from netns_lab.errors import LabError
from netns_lab.felix import FelixConfig
from netns_lab.nsexec import netns_handle, netns_inode
from netns_lab.state import BackendRecord, LabState, lab_mode, split_mode
from netns_lab.topology import HEADLESS

NOTRACK_COMMENT = "netns-lab: eBPF bypass mark, kube-proxy rules left in place"
NOTRACK_RULE = [
    "PREROUTING", "-m", "comment", "--comment", NOTRACK_COMMENT,
    "-m", "mark", "--mark", f"{SKB_MARK_BYPASS:#x}/{SKB_MARK_BYPASS:#x}", "-j", "NOTRACK",
]
# The node's own packets to a ClusterIP must reach eth0's egress hook (to_hep), which NATs them.
# The builder routes everything off-fabric `dev eth0` on-link, so the kernel would ARP for the
# ClusterIP itself and, with nobody answering, drop the packet before any TC hook sees it. In
# eBPF mode the service CIDR goes via a next hop with a permanent neighbour entry instead (Calico
# routes it to its bpfnatout device for the same reason). kube-proxy needs none: its DNAT runs
# in OUTPUT, before the neighbour lookup.
SERVICE_NEXTHOP = "169.254.255.1"
# Other nodes' pod blocks get a route MTU that leaves room for VXLAN (as Calico's vxlan.calico
# device's MTU does): a DF-clear datagram too big to encapsulate is DNATed by from_hep and
# left to the kernel, which fragments it to this size on its way out; to_hep encapsulates
# each fragment (bpf/lib/frags.h). DF packets are unaffected (from_hep answers them first).

Progress = Callable[[str], None]


def _quiet(msg: str) -> None:
    """Progress sink that drops messages."""


# --------------------------------------------------------------------------- reading the state


def cluster_view(st: LabState, felix: FelixConfig) -> ClusterView:
    """What the datapath must know: node addresses, pod blocks, services with their current backends, mode, opt-outs."""
    nodes = st.nodes()
    spec = {s.full_name: s for s in st.spec().services}  # LoadBalancer/external fields live in the topology
    services = [
        Service(
            name=s.name,
            proto=sp.protocol.lower(),
            cluster_ip=s.cluster_ip,
            port=sp.port,
            node_port=sp.node_port,
            backends=[Backend(b.ip, b.port, b.terminating) for b in sp.backends],
            external_local=s.external_local,
            internal_local=s.internal_local,
            **external_fields(spec.get(s.name)),
        )
        for s in st.services
        if s.cluster_ip != HEADLESS  # endpoints only: nothing to load-balance
        for sp in s.ports
    ]
    return ClusterView(
        nodes={name: str(n.address) for name, n in nodes.items()},
        pod_blocks={str(n.pod_block): str(n.address) for n in nodes.values()},
        services=services,
        mode="dsr" if felix.mode == "dsr" else "tunnel",
        dsr_optout=list(felix.bpfDSROptoutCIDRs),
    )


def external_fields(svc: Any) -> dict[str, Any]:
    """The datapath Service's LoadBalancer/external-IP fields from a topology Service (None: none)."""
    if svc is None:
        return {}
    return {"lb_ip": svc.load_balancer_ip, "external_ips": list(svc.external_ips),
            "source_ranges": list(svc.source_ranges), "affinity_timeout": svc.affinity_timeout, "maglev": svc.maglev}


def datapath(st: LabState, node: str, keep_state: bool = False, felix: FelixConfig | None = None) -> NodeDatapath:
    """The eBPF datapath handle of one node, the one place netns_lab makes one (state lives in its pins,
    so this is cheap); keep_state for a long-running programmer (see NodeDatapath); felix: the settings
    a load compiles with (default: the lab's)."""
    n = st.nodes()[node]
    return NodeDatapath(naming.pin_dir(st.lab, node), netns_handle(n.netns), str(n.address), naming.UPLINK,
                        name=node, keep_state=keep_state, defines=datapath_defines(felix or st.felix))


def datapath_defines(felix: FelixConfig) -> dict[str, object]:
    """The compile's defines the felix settings ask for: MAX_CT from bpfMapSizeConntrack (none at the
    C's default, so a default lab shares its compile cache entry with every other load)."""
    if felix.bpfMapSizeConntrack == felix_model.CT_SIZE_DEFAULT:
        return {}
    return {"MAX_CT": felix.bpfMapSizeConntrack}


def ct_size(st: LabState, node: str) -> int:
    """Entries of a loaded node's pinned conntrack map."""
    with datapath(st, node).maps() as m:
        return m.ct.info.max_entries


def is_loaded(st: LabState, node: str) -> bool:
    """True when `node`'s datapath programs are pinned: the one check netns_lab makes."""
    return NodeDatapath.is_loaded(naming.pin_dir(st.lab, node))


def loaded_nodes(st: LabState) -> list[str]:
    """Nodes whose datapath programs are pinned."""
    return [n for n in st.nodes() if is_loaded(st, n)]


# --------------------------------------------------------------------------- iptables: kube-proxy and NOTRACK


def _install_backend(st: LabState, backend: str) -> None:
    """Install (or resync) one kube-proxy backend's rules on every node: iptables chains or the nftables table."""
    topo, p = st.plan()
    for node, n in st.nodes().items():
        if backend == "nftables":
            kubeproxy_nft.install(n.netns, kubeproxy_nft.ruleset(topo, p, node))
        else:
            kubeproxy.install(n.netns, kubeproxy.ruleset(topo, p, node))


def _remove_backend(st: LabState, backend: str) -> None:
    """Delete one kube-proxy backend's rules from every node (what Felix's cleanup, or kube-proxy on a mode change, does)."""
    topo, p = st.plan()
    for node, n in st.nodes().items():
        if backend == "nftables":
            kubeproxy_nft.remove(n.netns)
        else:
            kubeproxy.remove(n.netns, kubeproxy.ruleset(topo, p, node))


def kube_proxy_install(st: LabState) -> None:
    """Install (or resync) kube-proxy's rules, of its configured mode, on every node for the services' current endpoints."""
    _install_backend(st, st.kubeproxy.mode)
    st.kubeproxy.installed, st.kubeproxy.nodes = True, list(st.nodes())
    flush_gone_udp_endpoints(st)


def flush_gone_udp_endpoints(st: LabState) -> int:
    """kube-proxy's conntrack cleanup after a sync: on every node, delete the UDP entries DNATed to an endpoint
    no service has any more, so a client's next datagram is load-balanced again instead of sent to nothing."""
    live = {(b.ip, b.port) for s in st.services for sp in s.ports if sp.protocol.upper() == "UDP" for b in sp.backends}
    return sum(ctflush.flush_gone_udp(str(naming.netns_path(n.netns)), live) for n in st.nodes().values())


def flush_pod_addr(st: LabState, ip: str) -> int:
    """A pod address went: delete its netfilter conntrack entries on every node, so an open TCP flow DNATed to it
    is not forwarded to nothing (its next packet is balanced again and answered with a RST)."""
    return sum(ctflush.flush_addr(str(naming.netns_path(n.netns)), ip) for n in st.nodes().values())


def kube_proxy_remove(st: LabState) -> None:
    """Delete kube-proxy's rules (iptables nat and filter, or the nftables table) from every node, as Felix's cleanup does."""
    _remove_backend(st, st.kubeproxy.mode)
    st.kubeproxy.installed, st.kubeproxy.nodes = False, []


def set_proxy_mode(st: LabState, mode: str, say: Callable[[str], None]) -> None:
    """Change KubeProxyConfiguration's mode: installed rules move to the new backend (new first, then old removed)."""
    old = st.kubeproxy.mode
    if mode == old:
        return
    if st.kubeproxy.installed:
        _install_backend(st, mode)
        _remove_backend(st, old)
        say(f"kube-proxy mode {old} -> {mode}: {mode} rules installed, {old} rules removed on {len(st.nodes())} nodes")
    st.kubeproxy.mode = mode


def backends_present(ns: str) -> list[str]:
    """Which kube-proxy backends have rules in `ns` (iptables, nftables; both only mid-change or by hand)."""
    return [b for b, here in (("iptables", kubeproxy.present(ns)), ("nftables", kubeproxy_nft.present(ns))) if here]


def _ip(ns: str, *args: str) -> subprocess.CompletedProcess:
    """`ip` inside a node namespace (no check)."""
    return subprocess.run(["ip", "-n", ns, *args], capture_output=True, text=True)


def set_service_route(st: LabState, on: bool) -> None:
    """Route the service CIDR of every node to eth0 through SERVICE_NEXTHOP and other nodes' pod
    blocks with the tunnel's MTU (on), or put the builder's routes back.

    One `ip -batch` per node (its routes to every other node's block are one command each, so a
    subprocess per route made this quadratic in nodes: 20 nodes took 440 processes)."""
    topo = st.spec()
    cidr = topo.service_cidr
    nodes = st.nodes()
    for name, n in nodes.items():
        ns = n.netns
        mtu = f" mtu {topo.pod_mtu}" if on else ""
        cmds = [f"route replace {o.pod_block} via {o.address} dev {naming.UPLINK} proto static{mtu}"
                for other, o in nodes.items() if other != name]
        if cmds:
            proc = _ip_batch(ns, cmds)
            if proc.returncode != 0:
                raise LabError(f"cannot set the routes to the other nodes' pod blocks in {ns}: {proc.stderr.strip()}")
        if not on:
            _ip(ns, "route", "del", cidr, "via", SERVICE_NEXTHOP)
            _ip(ns, "neigh", "del", SERVICE_NEXTHOP, "dev", naming.UPLINK)
            continue
        mac = _ip(ns, "-j", "link", "show", naming.UPLINK)
        addr = json.loads(mac.stdout)[0]["address"] if mac.returncode == 0 else ""
        proc = _ip_batch(ns, [f"neigh replace {SERVICE_NEXTHOP} lladdr {addr} dev {naming.UPLINK} nud permanent",
                              f"route replace {cidr} via {SERVICE_NEXTHOP} dev {naming.UPLINK} onlink"])
        if proc.returncode != 0:
            raise LabError(f"cannot route the service CIDR in {ns}: {proc.stderr.strip()}")


def _ip_batch(ns: str, cmds: list[str]) -> subprocess.CompletedProcess:
    """`ip -batch -` inside a node namespace: one process for many commands (stops at the first failure)."""
    return subprocess.run(["ip", "-n", ns, "-batch", "-"], input="\n".join(cmds) + "\n",
                          capture_output=True, text=True)


def has_service_route(ns: str, cidr: str) -> bool:
    """True when the node routes the service CIDR through SERVICE_NEXTHOP."""
    return SERVICE_NEXTHOP in _ip(ns, "route", "show", cidr).stdout


def _iptables(ns: str, *args: str) -> subprocess.CompletedProcess:
    """iptables inside a node namespace (no check)."""
    return subprocess.run(["ip", "netns", "exec", ns, "iptables", "-w", *args], capture_output=True, text=True)


def has_notrack(ns: str) -> bool:
    """True when the raw-table NOTRACK rule for the bypass mark is in `ns`."""
    return _iptables(ns, "-t", "raw", "-C", *NOTRACK_RULE).returncode == 0


def any_notrack(st: LabState) -> bool:
    """True when some node has the NOTRACK rule."""
    return any(has_notrack(n.netns) for n in st.nodes().values())


def set_notrack(st: LabState, on: bool) -> None:
    """Add or remove the NOTRACK rule for the bypass mark on every node (idempotent)."""
    for n in st.nodes().values():
        ns = n.netns
        if on and not has_notrack(ns):
            proc = _iptables(ns, "-t", "raw", "-A", *NOTRACK_RULE)
            if proc.returncode != 0:
                raise LabError(f"cannot add the NOTRACK rule in {ns}: {proc.stderr.strip()}")
        while not on and has_notrack(ns):
            _iptables(ns, "-t", "raw", "-D", *NOTRACK_RULE)


# --------------------------------------------------------------------------- moving between modes


@dataclass
class Change:
    """What apply() did, for the CLI to print."""

    old_mode: str
    new_mode: str
    lines: list[str] = field(default_factory=list)
    load_s: dict[str, float] = field(default_factory=dict)   # node -> compile + verifier seconds
    total_s: float = 0.0

    @property
    def changed(self) -> bool:
        """True if anything was done."""
        return bool(self.lines)


def apply(st: LabState, felix: FelixConfig, progress: Progress = _quiet, proxy_mode: str | None = None) -> Change:
    """Move the lab described by `st` to the mode and settings `felix` (and kube-proxy's mode, None: as it is) select;
    updates `st` (the caller saves it).

    On a failure while loading the datapath, what this call loaded is unloaded again and the
    lab keeps running as before (LabError).
    """
    t0 = time.monotonic()
    old_mode = st.mode
    new_mode = lab_mode(felix.mode, proxy_mode or st.kubeproxy.mode)
    ch = Change(old_mode, new_mode)

    def say(msg: str) -> None:
        ch.lines.append(msg)
        progress(msg)

    if proxy_mode is not None:
        set_proxy_mode(st, proxy_mode, say)
    if felix.mode in EBPF_MODES:
        _to_ebpf(st, felix, ch, say)
        if not ctclean.cleaner_pids(st.lab):
            ctclean.ensure(st.lab)
            say(f"conntrack cleaner started: expired entries deleted from every node's map every "
                f"{ctclean.INTERVAL_S:g}s (log {ctclean.log_path(st.lab)})")
    else:
        stopped = ctclean.stop(st.lab)   # before the maps go, so no pass meets them half removed
        try:
            _to_kube_proxy(st, ch, say)
        except BaseException:
            if stopped:
                ctclean.ensure(st.lab)   # the lab stays in its eBPF mode: so does its cleaner
            raise
        if stopped:
            say("conntrack cleaner stopped")
        if felix.bpfMapSizeConntrack != st.felix.bpfMapSizeConntrack:
            say(f"bpfMapSizeConntrack {felix.bpfMapSizeConntrack}: kept for the eBPF modes "
                "(kube-proxy uses the kernel's conntrack)")
    st.felix = felix
    dp = st.dataplane
    dp.loaded = loaded_nodes(st)
    dp.notrack = _needs_notrack(st, felix)
    if ch.load_s:
        dp.load_s = ch.load_s
    ch.total_s = time.monotonic() - t0
    if ch.changed:
        dp.last_switch = {"from": old_mode, "to": new_mode, "seconds": round(ch.total_s, 3)}
    return ch


def apply_mode(st: LabState, mode: str, progress: Progress = _quiet) -> Change:
    """Move the lab to `mode` (the short form of a felix patch); what `up --mode` and `mode` call."""
    felix_mode, proxy_mode = split_mode(mode)
    try:
        felix = felix_model.for_mode(st.felix, felix_mode)
    except felix_model.FelixConfigError as exc:
        raise LabError(str(exc)) from None
    return apply(st, felix, progress, proxy_mode)


def _needs_notrack(st: LabState, felix: FelixConfig) -> bool:
    """The bypass-mark NOTRACK is there for kube-proxy's iptables INVALID drop, kept in an eBPF mode."""
    return felix.mode in EBPF_MODES and not felix.bpfKubeProxyIptablesCleanupEnabled and st.kubeproxy.mode == "iptables"


def _to_ebpf(st: LabState, felix: FelixConfig, ch: Change, say: Progress) -> None:
    """Load/attach/program the datapath on every node, then settle kube-proxy's rules as the cleanup flag says."""
    keep_kube_proxy = not felix.bpfKubeProxyIptablesCleanupEnabled
    notrack = _needs_notrack(st, felix)
    view = cluster_view(st, felix)
    nodes = list(st.nodes())
    fresh = [n for n in nodes if not is_loaded(st, n)]
    kp_installed = st.kubeproxy.installed

    notrack_added = False
    if notrack and not all(has_notrack(n.netns) for n in st.nodes().values()):
        set_notrack(st, True)  # before BPF hands anything to the kernel
        notrack_added = True
        say(f"raw-table NOTRACK for the BPF bypass mark {SKB_MARK_BYPASS:#010x} on {len(nodes)} nodes "
            "(kube-proxy's INVALID drop stays in place)")
    try:
        if fresh:
            dps = [datapath(st, node, felix=felix) for node in fresh]
            t = time.monotonic()
            results = NodeDatapath.load_all(dps, attach=False)   # one BCC compile for all of them
            for dp in dps:
                dp.set_flags(enabled=False)  # attached next, but passing everything until all nodes are ready
            ch.load_s.update({node: round(res.total_s, 3) for node, res in results.items()})
            for line in _load_lines(results, time.monotonic() - t):
                say(line)
        _resize_ct(st, felix, [n for n in nodes if n not in fresh], say)
        unbalanced = [n for n in nodes if not ctlb.is_loaded(naming.pin_dir(st.lab, n))]
        if unbalanced:
            secs = ctlb.load_nodes({n: naming.pin_dir(st.lab, n) for n in unbalanced})
            say(f"connect-time LB programs (connect4, sendmsg4, recvmsg4, getpeername4) loaded for "
                f"{len(unbalanced)} nodes in {secs:.2f}s")
        synced: dict[str, str] = {}
        for node in nodes:
            dp = datapath(st, node)
            stats = dp.sync(view)
            if node in fresh:
                dp.attach_host()
                for ifname in st.pod_ifnames(node):
                    dp.attach_workload(ifname)
            elif stats.changed:
                synced[node] = _stats_text(stats)
        if synced:
            texts = set(synced.values())
            detail = texts.pop() if len(texts) == 1 else "; ".join(f"{n}: {t}" for n, t in synced.items())
            say(f"maps synced on {', '.join(synced)} ({detail})")
    except (LoaderError, tc.TcError, OSError, ValueError) as exc:
        if fresh == nodes:
            _ctlb_off(st)
        for node in fresh:  # none of them was loaded before: whatever a partial load_all pinned goes
            with contextlib.suppress(Exception):
                datapath(st, node).unload(prune_up_to=naming.BPF_ROOT)
        if notrack_added and not kp_installed:
            set_notrack(st, False)
        raise LabError(f"eBPF datapath: {exc}; the lab is unchanged (mode {ch.old_mode})") from None
    if fresh:
        for node in fresh:
            datapath(st, node).set_flags(enabled=True)
        say(f"eBPF datapath on: from_hep/to_hep on eth0 of {len(fresh)} nodes, from_wep/to_wep on "
            f"{sum(len(st.pod_ifnames(n)) for n in fresh)} pod veths")
    _settle_ctlb(st, felix, say)
    if fresh:
        set_service_route(st, True)
        say(f"service CIDR routed to eth0 via {SERVICE_NEXTHOP} on every node (to_hep NATs the node's own "
            "service traffic)")
    if ch.old_mode != ch.new_mode and ch.old_mode in EBPF_MODES:
        say(f"bpfExternalServiceMode {'DSR' if felix.mode == 'dsr' else 'Tunnel'}: new connections use "
            f"{felix.mode}; open ones keep the mode they started with")
    if keep_kube_proxy and not kp_installed:
        kube_proxy_install(st)
        say(f"kube-proxy {st.kubeproxy.mode} rules installed again (bpfKubeProxyIptablesCleanupEnabled false); BPF bypasses them")
    elif keep_kube_proxy and fresh:
        say(f"kube-proxy {st.kubeproxy.mode} rules left in place (bpfKubeProxyIptablesCleanupEnabled false); BPF bypasses them")
    elif not keep_kube_proxy and kp_installed:
        kube_proxy_remove(st)
        say(f"kube-proxy {st.kubeproxy.mode} rules removed from every node (bpfKubeProxyIptablesCleanupEnabled true)")
    if not notrack and any_notrack(st):
        set_notrack(st, False)
        say("NOTRACK rule for the bypass mark removed (no kube-proxy iptables rules left to bypass)")


def _resize_ct(st: LabState, felix: FelixConfig, loaded: list[str], say: Progress) -> None:
    """Reload the loaded nodes whose conntrack map is not bpfMapSizeConntrack entries, as Felix resizes its
    maps at start: the new map is created and the old one's entries copied in (pins.check), the programs
    replaced and attached again. A packet between the copy and the new programs' attach writes into the
    old map and is lost with it."""
    want = felix.bpfMapSizeConntrack
    resized = [n for n in loaded if ct_size(st, n) != want]
    if not resized:
        return
    t = time.monotonic()
    results = NodeDatapath.load_all([datapath(st, n, felix=felix) for n in resized], attach=True)
    lost = [n for n, res in results.items() if "ct" in res.replaced_maps]
    say(f"conntrack map resized to {want} entries on {', '.join(resized)} in {time.monotonic() - t:.2f}s"
        + (f" (entries dropped on {', '.join(lost)})" if lost else " (entries carried over)"))


def _settle_ctlb(st: LabState, felix: FelixConfig, say: Progress) -> None:
    """Make every node's cgroup carry the connect-time LB programs as bpfConnectTimeLoadBalancing says."""
    setting = felix.bpfConnectTimeLoadBalancing
    flags = ctlb.SETTINGS[setting]
    changed = []
    try:
        for node in st.nodes():
            dp = datapath(st, node)
            path = str(cgroups.ensure(st.lab, node))
            cookie = ctlb.netns_cookie(dp.netns, os.path.dirname(path))
            was = ctlb.read_cfg(dp.pin_dir)
            on = bool(ctlb.attached(path))
            if flags:
                ctlb.configure(dp.pin_dir, cookie, flags)
                if not on:
                    ctlb.attach(dp.pin_dir, path)
            else:
                ctlb.detach(dp.pin_dir, path)
                ctlb.configure(dp.pin_dir, cookie, 0)
            if was != (cookie, flags) or on != bool(flags):
                changed.append(node)
    except OSError as exc:
        raise LabError(f"connect-time load balancing: {exc}") from None
    if changed:
        what = {"TCP": "TCP sockets", "Enabled": "TCP and UDP sockets", "Disabled": "off"}[setting]
        where = cgroups.lab_dir(st.lab)
        say(f"bpfConnectTimeLoadBalancing {setting}: {what} of {', '.join(changed)} "
            f"(cgroups {where}/<node>); the rest of a node's service traffic is NATed per packet")


def _ctlb_off(st: LabState) -> None:
    """Detach the connect-time LB programs and remove the lab's node cgroups (before the pins go)."""
    for node in st.nodes():
        with contextlib.suppress(OSError, LabError):
            ctlb.detach(naming.pin_dir(st.lab, node), str(cgroups.node_cgroup(st.lab, node)))
    with contextlib.suppress(OSError, LabError):
        cgroups.remove_lab(st.lab)


def _load_lines(results: dict[str, LoadResult], wall_s: float) -> list[str]:
    """Progress lines for a load_all: each node's load (the one BCC compile, then relocated copies), then the total."""
    lines = []
    for node, r in results.items():
        if r.clone_of is None and r.cached:
            lines.append(f"{node}: datapath loaded from the compile cache in {r.total_s:.2f}s "
                         f"(maps {r.compile_s * 1000:.0f}ms, verifier {r.load_s * 1000:.0f}ms)")
        elif r.clone_of is None:
            lines.append(f"{node}: datapath compiled and loaded in {r.total_s:.2f}s "
                         f"(BCC {r.compile_s:.2f}s, verifier {r.load_s * 1000:.0f}ms)")
        else:
            lines.append(f"{node}: {r.clone_of}'s compile loaded on {node}'s own maps in {r.total_s:.2f}s "
                         f"(maps {r.compile_s * 1000:.0f}ms, verifier {r.load_s * 1000:.0f}ms)")
    compiles = sum(r.clone_of is None and not r.cached for r in results.values())
    lines.append(f"datapath: {compiles} BCC compile{'s' * (compiles != 1)} and {len(results)} "
                 f"load{'s' * (len(results) != 1)} in {wall_s:.2f}s")
    return lines


def _to_kube_proxy(st: LabState, ch: Change, say: Progress) -> None:
    """kube-proxy's rules first, then the datapath off and unloaded, then the NOTRACK rule gone."""
    loaded = loaded_nodes(st)
    if not st.kubeproxy.installed:
        if loaded and st.kubeproxy.mode == "iptables":
            set_notrack(st, True)  # until BPF is off, its flows must not meet kube-proxy's INVALID drop
        kube_proxy_install(st)
        say(f"kube-proxy {st.kubeproxy.mode} rules installed on {len(st.nodes())} nodes")
    for node in loaded:
        with contextlib.suppress(OSError):
            datapath(st, node).set_flags(enabled=False)
    _ctlb_off(st)
    set_service_route(st, False)
    for node in loaded:
        datapath(st, node).unload(prune_up_to=naming.BPF_ROOT)
    if loaded:
        say(f"eBPF datapath detached and unloaded on {', '.join(loaded)}")
    if any_notrack(st):
        set_notrack(st, False)
        say("NOTRACK rule for the bypass mark removed")


def _stats_text(stats: Any) -> str:
    """'nat_be +1 -1, ...' from a SyncStats."""
    parts = []
    for name in sorted(set(stats.written) | set(stats.deleted)):
        w, d = stats.written.get(name, 0), stats.deleted.get(name, 0)
        if w or d:
            parts.append(f"{name} +{w} -{d}")
    if stats.ct_flushed:
        parts.append(f"{stats.ct_flushed} conntrack entries of gone backends flushed")
    return ", ".join(parts) or "no change"


def reprogram(st: LabState) -> None:
    """Program the services' current endpoints into whatever dataplane runs (kube-proxy rules, BPF maps, or both),
    and the health check ports' tables."""
    from netns_lab import healthcheck

    healthcheck.sync(st)
    if st.kubeproxy.installed:
        kube_proxy_install(st)
    loaded = loaded_nodes(st)
    if loaded:
        view = cluster_view(st, st.felix)
        for node in loaded:
            datapath(st, node).sync(view)


# --------------------------------------------------------------------------- pods


@dataclass
class PodChange:
    """What delete_pod() did."""

    pod: str
    node: str
    old_ip: str
    new_ip: str
    pid: int
    seconds: float
    replacement: str | None = None  # a ReplicaSet's pod is replaced by a new pod of this name
    terminating_until: str | None = None  # a graceful delete: the pod serves open connections until then
    gone: bool = False  # the pod was removed and not recreated (a terminating Deployment pod's end)


def pod_processes(st: LabState, name: str) -> list[int]:
    """Processes living in a pod's namespace, plus its recorded app pid."""
    rec = st.pods[name]
    ino = netns_inode(str(naming.netns_path(rec.netns)))
    pids = set()
    if ino:
        for d in os.listdir("/proc"):
            if d.isdigit() and netns_inode(f"/proc/{d}/ns/net") == ino and int(d) != os.getpid():
                pids.add(int(d))
    if rec.pid is not None and rec.pid in cleanup.lab_processes(st.lab, [rec.pid]):
        pids.add(rec.pid)
    return sorted(pids)


def _next_ip(st: LabState, node: str, avoid: str) -> str:
    """The lowest free address of the node's pod block, not `avoid` (the deleted pod's): a recreated pod gets a new one."""
    block = ipaddress.IPv4Network(st.nodes()[node].pod_block)
    used = {p.ip for p in st.pods.values()} | {avoid}
    for ip in block.hosts():
        if str(ip) not in used:
            return str(ip)
    raise LabError(f"node {node}'s pod block {block} is full")


def delete_pod(st: LabState, name: str, progress: Progress = _quiet) -> PodChange:
    """`kubectl delete pod`: take the pod out of its services, kill it, rebuild it (new address), restart its app, put it back."""
    from netns_lab.apps import launch

    t0 = time.monotonic()
    if name not in st.pods:
        raise LabError(f"unknown pod {name!r} of lab {st.lab!r} (pods: {', '.join(st.pods)})")
    lab = st.lab
    rec = st.pods[name]
    old_ip = rec.ip
    memberships = []
    for s in st.services:
        for sp in s.ports:
            memberships += [(sp, b.port) for b in sp.backends if b.pod == name]
            sp.backends = [b for b in sp.backends if b.pod != name]
    reprogram(st)  # endpoints first, as Kubernetes does for a terminating pod
    progress(f"pod {name} removed from {len(memberships)} service ports")
    topo = st.spec()
    pod = topo.pod(name)
    cleanup.kill(pod_processes(st, name))
    builder.remove_pod(lab, pod)
    flushed = flush_pod_addr(st, old_ip)
    progress(f"pod {name} ({old_ip}) deleted: app stopped, namespace and veth removed, {flushed} conntrack entries of it flushed")

    new_ip = _next_ip(st, pod.node, old_ip)
    rec.ip, rec.pid = new_ip, None
    rec.host_ifname = builder.recreate_pod(lab, topo, st.plan()[1], pod, new_ip)
    if is_loaded(st, pod.node):
        datapath(st, pod.node).attach_workload(rec.host_ifname)  # before the app's first call to a ClusterIP
    started = launch.start(lab, topo, pod)
    rec.pid = started.pid
    launch.wait_ready(lab, topo, st.plan()[1], [started])
    for sp, port in memberships:
        sp.backends.append(BackendRecord(name, new_ip, port))
        sp.backends.sort(key=lambda b: int(ipaddress.IPv4Address(b.ip)))
    reprogram(st)
    progress(f"pod {name} recreated on {pod.node} with address {new_ip}, app answering, backends re-programmed")
    return PodChange(name, pod.node, old_ip, new_ip, started.pid, time.monotonic() - t0)


# --------------------------------------------------------------------------- status


def status(st: LabState) -> dict[str, Any]:
    """Per node: datapath loaded, our programs attached (interface, hook, program), kube-proxy rules, NOTRACK."""
    nodes = {}
    for node, n in st.nodes().items():
        doc: dict[str, Any] = {"datapath_loaded": is_loaded(st, node), "programs": []}
        try:
            if doc["datapath_loaded"] or st.mode in EBPF_MODES:
                doc["programs"] = [
                    {"interface": f.ifname, "hook": f.direction, "program": f.name} for f in datapath(st, node).attached()
                ]
            doc["kube_proxy_backends"] = backends_present(n.netns)
            doc["kube_proxy_rules"] = bool(doc["kube_proxy_backends"])
            doc["notrack"] = has_notrack(n.netns)
        except (OSError, LabError, tc.TcError) as exc:
            doc["error"] = str(exc)
        nodes[node] = doc
    cg_root = cgroups.find_cgroup2()
    for node, doc in nodes.items():
        path = cgroups.node_cgroup(st.lab, node, cg_root) if cg_root else None
        doc["cgroup"] = str(path) if path and path.is_dir() else None
        doc["ctlb_programs"] = ctlb.attached(str(path)) if path else []
    # connect-time LB follows felix in the eBPF modes (_settle_ctlb), and is off in kube-proxy mode
    ctlb_setting = st.felix.bpfConnectTimeLoadBalancing if st.mode in EBPF_MODES else "off"
    cleaners = ctclean.cleaner_pids(st.lab)
    return {"nodes": nodes, "cgroup2": str(cg_root) if cg_root else None, "connect_time_lb": ctlb_setting,
            "load_s": st.dataplane.load_s, "last_switch": st.dataplane.last_switch,
            "conntrack_cleaner": {"pid": cleaners[0], "interval_s": ctclean.INTERVAL_S} if cleaners else None}
