"""Programming the bench services and N extra services into the running mode, timed.

kube-proxy mode: what kube-proxy does. A full sync is one iptables-restore batch per node with
every service's chains (kubeproxy.install: iptables-save, then restore); changing one service's
endpoint is kube-proxy's minimal sync, a batch rewriting only that service's chains.
kube-proxy-nft mode: kube-proxy's nftables backend; a full sync is the whole table in one `nft -f`
transaction per node, one service changed a partial sync rewriting its chains.
eBPF modes: what the lab's dataplane does, NodeDatapath.sync(view) per node, with the lab's own
services plus the bench's, from one long-lived keep_state handle per node (as Felix keeps its own
copy of the maps: a sync diffs against what it wrote, and rebuilds only changed services, while
no one else has synced); one service changed is the same call with one backend moved, and as a
lower bound the single map write that change needs (a direct map view update).

Times are per node (every node gets the same services; a node programs its own maps or
tables, as Felix and kube-proxy do); the rule and view generation happens before the clock starts.
kube-proxy's full syncs are timed on the ingress node and run on the other nodes in parallel
afterwards (at 10,000 services one iptables-restore takes seconds); eBPF syncs on every node.
"""

from __future__ import annotations

import dataclasses
import subprocess
import time
from typing import Any

from netns_lab import kubeproxy, kubeproxy_nft, naming
from netns_lab.bench import topo as btopo
from netns_lab.bench.stats import median
from netns_lab.errors import LabError
from netns_lab.state import LabState


def _ebpf_service(spec: btopo.SvcSpec, pod_ips: dict[str, str], backend_pod: str | None = None) -> Any:
    """A datapath Service for a bench service spec."""
    from ebpf_nodeport.sync import Backend, Service

    pod = backend_pod or spec.backend_pod
    return Service(f"{spec.name}", spec.protocol.lower(), spec.cluster_ip, spec.port, spec.node_port,
                   [Backend(pod_ips[pod], spec.target_port)])


class Programmer:
    """Programs services into the service lab's current mode."""

    def __init__(self, lab: str, topo: Any, pod_ips: dict[str, str], nodes: list[str]):
        self.lab = lab
        self.topo = topo
        self.pod_ips = pod_ips
        self.nodes = nodes
        self.mode = "kube-proxy"
        self.st: LabState | None = None
        self._dps: dict[str, Any] = {}     # node -> its keep_state NodeDatapath, for this mode

    def set_mode(self, mode: str, st: LabState) -> None:
        """Follow a mode switch (st: the lab's state after it)."""
        self.mode = mode
        self.st = st
        self._dps = {}

    # -- kube-proxy

    def _kp_sync(self, node: str, rs: Any) -> float:
        """kube-proxy's full sync on one node: iptables-save, then one iptables-restore; seconds for those two.

        The restore text comes from the lab's kubeproxy.sync_text, built between the two steps and
        not timed (kube-proxy builds it in Go, in a small fraction of the restore's time).
        """
        ns = naming.netns(self.lab, node)
        t = time.perf_counter()
        saved, saved_filter = kubeproxy.save(ns), kubeproxy.save(ns, "filter")
        spent = time.perf_counter() - t
        text = kubeproxy.sync_text(rs, saved, saved_filter)
        t = time.perf_counter()
        proc = subprocess.run(["ip", "netns", "exec", ns, "iptables-restore", "--noflush"], input=text,
                              capture_output=True, text=True)
        spent += time.perf_counter() - t
        if proc.returncode != 0:
            raise LabError(f"iptables-restore in {ns}: {proc.stderr.strip()[:300]}")
        return spent

    def _kp_program(self, extras: list[btopo.SvcSpec]) -> list[float]:
        """Full sync on every node; seconds on the ingress node (the others are synced in parallel, untimed).

        Every node must carry the rules (each node's PREROUTING sees the new connections that
        pass it), but timing one is enough and saves minutes at 10,000 services on 2 cores.
        """
        from concurrent.futures import ThreadPoolExecutor

        rulesets = {n: btopo.kubeproxy_ruleset(self.topo, n, extras) for n in self.nodes}
        timed = self.nodes[0]
        times = [self._kp_sync(timed, rulesets[timed])]
        with ThreadPoolExecutor(max_workers=len(self.nodes)) as pool:
            list(pool.map(lambda n: self._kp_sync(n, rulesets[n]), self.nodes[1:]))
        return times

    def _kp_change_one(self, spec: btopo.SvcSpec) -> tuple[list[float], list[float]]:
        """Minimal sync moving one service's endpoint, then back; (seconds per node, undo seconds per node)."""
        fwd, back = [], []
        for n in self.nodes:
            do, undo = btopo.kubeproxy_update_text(self.topo, n, spec, btopo.REMOTE_POD)
            ns = naming.netns(self.lab, n)
            for text, out in ((do, fwd), (undo, back)):
                t = time.perf_counter()
                proc = subprocess.run(["ip", "netns", "exec", ns, "iptables-restore", "--noflush"], input=text,
                                      capture_output=True, text=True)
                out.append(time.perf_counter() - t)
                if proc.returncode != 0:
                    raise LabError(f"iptables-restore in {ns}: {proc.stderr.strip()}")
        return fwd, back

    # -- kube-proxy nftables

    def _nft_program(self, extras: list[btopo.SvcSpec]) -> list[float]:
        """kube-proxy nftables' full sync (the whole table in one `nft -f` transaction) on every node; seconds on
        the ingress node, the others synced in parallel afterwards, untimed (as for iptables: nft 1.0.6 takes
        tens of seconds per node for a full table of 10,000 services)."""
        from concurrent.futures import ThreadPoolExecutor

        texts = {n: kubeproxy_nft.install_text(btopo.nft_ruleset(self.topo, n, extras)) for n in self.nodes}  # before the clock
        times = [self._nft_apply(self.nodes[0], texts[self.nodes[0]])]
        with ThreadPoolExecutor(max_workers=len(self.nodes)) as pool:
            list(pool.map(lambda n: self._nft_apply(n, texts[n]), self.nodes[1:]))
        return times

    def _nft_apply(self, node: str, text: str) -> float:
        """One `nft -f -` transaction in a node; seconds."""
        ns = naming.netns(self.lab, node)
        t = time.perf_counter()
        proc = subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=text, capture_output=True, text=True)
        spent = time.perf_counter() - t
        if proc.returncode != 0:
            raise LabError(f"nft -f in {ns}: {proc.stderr.strip()[:300]}")
        return spent

    def _nft_change_one(self, spec: btopo.SvcSpec) -> tuple[list[float], list[float]]:
        """kube-proxy nftables' partial sync moving one service's endpoint, then back; seconds per node each way."""
        do, undo = btopo.nft_update_text(self.topo, spec, btopo.REMOTE_POD)
        fwd = [self._nft_apply(n, do) for n in self.nodes]
        back = [self._nft_apply(n, undo) for n in self.nodes]
        return fwd, back

    # -- eBPF

    def _view(self, extras: list[btopo.SvcSpec], moved: btopo.SvcSpec | None = None) -> Any:
        """The lab's ClusterView (as the dataplane builds it) plus the bench services and extras."""
        from netns_lab import dataplane

        assert self.st is not None
        view = dataplane.cluster_view(self.st, self.st.felix)
        mine = [_ebpf_service(s, self.pod_ips) for s in btopo.bench_services()]
        mine += [_ebpf_service(s, self.pod_ips, btopo.REMOTE_POD if s is moved else None) for s in extras]
        return dataclasses.replace(view, services=list(view.services) + mine)

    def _ebpf_program(self, extras: list[btopo.SvcSpec], moved: btopo.SvcSpec | None = None) -> list[float]:
        """NodeDatapath.sync on every node; seconds per node."""
        from netns_lab import dataplane

        assert self.st is not None
        view = self._view(extras, moved)
        times = []
        for n in self.nodes:
            # One handle per node for the whole run, keeping what it wrote, as a long-running
            # agent does (kube-proxy's minimal sync above also knows what it wrote before).
            dp = self._dps.get(n) or self._dps.setdefault(n, dataplane.datapath(self.st, n, keep_state=True))
            t = time.perf_counter()
            dp.sync(view)
            times.append(time.perf_counter() - t)
        return times

    def _ebpf_map_update(self, spec: btopo.SvcSpec) -> list[float]:
        """The one nat_be write that moves `spec` to the remote pod, and back; seconds per node (write only)."""
        from ebpf_nodeport.abi import BeKey, BeValue, ip2int
        from netns_lab import dataplane

        assert self.st is not None
        times = []
        name = f"{spec.name}:{spec.port}/tcp"
        for n in self.nodes:
            with dataplane.datapath(self.st, n).maps() as m:
                sid = next(k.value for k, v in m.svc_meta.items() if v.name.decode(errors="replace") == name)
                key = BeKey(sid, 0)
                old = m.nat_be.get(key)
                new = BeValue(addr=ip2int(self.pod_ips[btopo.REMOTE_POD]), port=spec.target_port)
                t = time.perf_counter()
                m.nat_be.put(key, new)
                times.append(time.perf_counter() - t)
                m.nat_be.put(key, old)
        return times

    def clear_conntrack(self) -> int:
        """Empty every node's BPF conntrack map (eBPF modes); entries removed."""
        from netns_lab import dataplane

        assert self.st is not None
        n = 0
        for node in self.nodes:
            with dataplane.datapath(self.st, node).maps() as m:
                n += m.ct.clear()
        return n

    # -- what the runner calls

    def program(self, extras: list[btopo.SvcSpec]) -> list[float]:
        """Bench services plus `extras` in the current mode; seconds per node."""
        if self.mode == "kube-proxy":
            return self._kp_program(extras)
        if self.mode == "kube-proxy-nft":
            return self._nft_program(extras)
        return self._ebpf_program(extras)

    def change_one(self, extras: list[btopo.SvcSpec]) -> dict[str, Any]:
        """Move the first extra service's endpoint and back, with N programmed; per-node seconds per method."""
        spec = extras[0]
        if self.mode == "kube-proxy":
            fwd, back = self._kp_change_one(spec)
            return {"method": "iptables-restore (minimal sync)", "per_node_s": fwd, "undo_per_node_s": back,
                    "s": median(fwd)}
        if self.mode == "kube-proxy-nft":
            fwd, back = self._nft_change_one(spec)
            return {"method": "nft -f (partial sync)", "per_node_s": fwd, "undo_per_node_s": back, "s": median(fwd)}
        fwd = self._ebpf_program(extras, moved=spec)
        back = self._ebpf_program(extras)
        direct = self._ebpf_map_update(spec)
        return {"method": "NodeDatapath.sync", "per_node_s": fwd, "undo_per_node_s": back, "s": median(fwd),
                "map_update_per_node_s": direct, "map_update_s": median(direct)}
