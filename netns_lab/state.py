"""Lab state on disk: a typed, versioned document in /run/netns-lab/<lab>/state.json, and the per-lab flock.

`LabState` is what every layer reads (nodes, hosts, pods, services, FelixConfiguration,
kube-proxy and dataplane records); load() and save() are the only places that touch the
JSON. The mode is not stored: it follows from the felix spec (FelixConfig.mode). On disk
the document stays plain, readable JSON:

    version, lab, status ("building" | "ready"), created, updated,
    topology (YAML-shaped dict), members {name: {kind, netns, address?, pod_block?, node?}},
    pods {name: {node, app, ip, netns, host_ifname, pid, log, created?}} (created: pods made on a running lab),
    services [{name, cluster_ip, ports: [{name, protocol, port, target_port, node_port, backends}]}],
    felix {bpfEnabled, ...} (FelixConfiguration "default"'s spec; netns_lab/felix.py is its model),
    kubeproxy {mode, installed, nodes}, dataplane {loaded, notrack, load_s?, last_switch?}

kubeproxy.mode is KubeProxyConfiguration's mode (iptables | nftables): kube-proxy's own setting,
not Felix's, so the lab mode is the pair (felix spec, kube-proxy mode): bpfEnabled false with
nftables is the lab mode kube-proxy-nft.

Version 1 (until the typed state) also stored `mode` and `dataplane.sysctls`; such a file is
read and converted. Version 2 (before Kubernetes manifests) had no pod `created`; its pods read
as made with the lab. Version 3 (before kube-proxy's nftables mode) had no kubeproxy.mode; it reads
as iptables, the only backend then. A newer version is refused with one line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import ipaddress
import json
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netns_lab import felix, naming
from netns_lab.errors import LabError
from netns_lab.felix import FelixConfig, FelixConfigError
from netns_lab.topology import AddressPlan, Topology, plan, topology_from_dict, topology_to_dict
from netns_lab.topology import Backend as PlanBackend

STATE_VERSION = 4
READABLE_VERSIONS = (1, 2, 3, 4)
EBPF_MODES = felix.EBPF_MODES
# lab mode -> KubeProxyConfiguration mode, for the modes where kube-proxy serves the services
KUBE_PROXY_MODES = {"kube-proxy": "iptables", "kube-proxy-nft": "nftables"}
PROXY_BACKENDS = tuple(KUBE_PROXY_MODES.values())
MODES = tuple(KUBE_PROXY_MODES) + EBPF_MODES


def split_mode(mode: str) -> tuple[str, str | None]:
    """A lab mode as (Felix's mode, kube-proxy's mode or None to keep it): kube-proxy-nft is (kube-proxy, nftables)."""
    if mode in KUBE_PROXY_MODES:
        return "kube-proxy", KUBE_PROXY_MODES[mode]
    return mode, None


def lab_mode(felix_mode: str, proxy_mode: str) -> str:
    """The lab mode of a Felix mode and a kube-proxy mode (the inverse of split_mode)."""
    if felix_mode == "kube-proxy":
        return next(m for m, p in KUBE_PROXY_MODES.items() if p == proxy_mode)
    return felix_mode
NAMESPACE_HINT = "-n/--namespace is now the Kubernetes namespace, as in kubectl; name the lab with --name LAB or NETNS_LAB=LAB"


@dataclass
class Member:
    """A namespace of the lab: a node, host or pod."""

    kind: str  # node | host | pod
    netns: str
    address: str | None = None  # nodes and hosts: the fabric address
    pod_block: str | None = None  # nodes
    node: str | None = None  # pods


@dataclass
class PodRecord:
    """A pod as it runs now (a recreated pod has a new address and pid)."""

    node: str
    app: str
    ip: str
    netns: str
    host_ifname: str
    pid: int | None
    log: str
    created: str | None = None  # pods made on a running lab (apply, scale, a ReplicaSet's replacement)


@dataclass
class BackendRecord:
    """One endpoint of a service port."""

    pod: str
    ip: str
    port: int
    terminating: bool = False  # the pod is being deleted gracefully: serving, not ready


@dataclass
class ServicePortRecord:
    """One port of a service with its current endpoints."""

    name: str
    protocol: str
    port: int
    target_port: int
    node_port: int | None
    backends: list[BackendRecord] = field(default_factory=list)


@dataclass
class ServiceRecord:
    """A service (namespace/name) and its ports."""

    name: str
    cluster_ip: str
    ports: list[ServicePortRecord] = field(default_factory=list)
    external_local: bool = False  # externalTrafficPolicy Local
    internal_local: bool = False  # internalTrafficPolicy Local
    health_check_node_port: int | None = None


def service_records(topo: Topology, addr_plan: AddressPlan, ready: set[str] | None = None,
                    terminating: set[str] | None = None) -> list[ServiceRecord]:
    """The services of `topo`, each port with its backends (only pods in `ready`, if given; terminating pods,
    and those in `terminating`, marked so), and their traffic policies."""
    going = terminating or set()
    return [
        ServiceRecord(s.full_name, s.cluster_ip, [
            ServicePortRecord(sp.name, sp.protocol, sp.port, sp.target, sp.node_port,
                              [BackendRecord(b.pod, b.ip, b.port, b.terminating or b.pod in going) for b in addr_plan.backends(s, sp)
                               if ready is None or b.pod in ready])
            for sp in s.ports
        ], s.external_local, s.internal_local, s.health_check_node_port)
        for s in topo.services
    ]


@dataclass
class KubeProxyRecord:
    """kube-proxy's configured mode (iptables | nftables), whether its rules are installed, and on which nodes."""

    mode: str = "iptables"
    installed: bool = False
    nodes: list[str] = field(default_factory=list)


@dataclass
class DataplaneRecord:
    """What the last dataplane change left: nodes with the datapath loaded, NOTRACK, load and switch times."""

    loaded: list[str] = field(default_factory=list)
    notrack: bool = False
    load_s: dict[str, float] = field(default_factory=dict)
    last_switch: dict[str, Any] | None = None


@dataclass
class NodePortTarget:
    """The lesson's curl: a client host to a TCP NodePort on the first node, and that service's backends."""

    host: str
    client: str
    ingress: str
    frontend_ip: str
    node_port: int
    service: str
    backends: list[BackendRecord]

    @property
    def url(self) -> str:
        """ingress:nodeport, what the client curls."""
        return f"{self.frontend_ip}:{self.node_port}"


@dataclass
class LabState:
    """A lab's recorded state; methods answer the questions every layer asks of it."""

    lab: str
    topology: dict[str, Any]
    members: dict[str, Member]
    pods: dict[str, PodRecord]
    services: list[ServiceRecord]
    felix: FelixConfig = field(default_factory=FelixConfig)
    status: str = "building"
    created: str = ""
    updated: str = ""
    kubeproxy: KubeProxyRecord = field(default_factory=KubeProxyRecord)
    dataplane: DataplaneRecord = field(default_factory=DataplaneRecord)
    version: int = STATE_VERSION

    # -- building

    @classmethod
    def new(cls, lab: str, topo: Topology, addr_plan: AddressPlan, mode: str) -> LabState:
        """The state of a lab about to be built (status "building")."""
        members: dict[str, Member] = {}
        for n in topo.nodes:
            members[n.name] = Member("node", naming.netns(lab, n.name), n.address, str(addr_plan.node_blocks[n.name]))
        for h in topo.hosts:
            members[h.name] = Member("host", naming.netns(lab, h.name), h.address)
        pods: dict[str, PodRecord] = {}
        for p in topo.pods:
            members[p.name] = Member("pod", naming.netns(lab, p.name), node=p.node)
            pods[p.name] = PodRecord(p.node, p.app, str(addr_plan.pod_ips[p.name]), naming.netns(lab, p.name),
                                     naming.cali_ifname(lab, p.name), None, str(naming.log_path(lab, p.name)))
        felix_mode, proxy_mode = split_mode(mode)
        return cls(lab, topology_to_dict(topo), members, pods, service_records(topo, addr_plan),
                   felix=felix.for_mode(FelixConfig(), felix_mode), created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                   kubeproxy=KubeProxyRecord(mode=proxy_mode or "iptables"))

    # -- reading

    @property
    def mode(self) -> str:
        """kube-proxy, kube-proxy-nft, tunnel or dsr: what the felix spec and kube-proxy's mode select."""
        return lab_mode(self.felix.mode, self.kubeproxy.mode)

    def _of_kind(self, kind: str) -> dict[str, Member]:
        return {k: m for k, m in self.members.items() if m.kind == kind}

    def nodes(self) -> dict[str, Member]:
        """Node name -> member record, in topology order."""
        return self._of_kind("node")

    def hosts(self) -> dict[str, Member]:
        """Host name -> member record, in topology order."""
        return self._of_kind("host")

    def addresses(self) -> dict[str, str]:
        """Fabric address -> node or host name (labels tunnel peers and clients)."""
        return {m.address: k for k, m in self.members.items() if m.kind in ("node", "host") and m.address}

    def namespaces(self) -> dict[str, str]:
        """Member name -> namespace, the fabric included: what `exec` can enter."""
        return {**{k: m.netns for k, m in self.members.items()}, naming.FABRIC: naming.netns(self.lab, naming.FABRIC)}

    def pod_ifnames(self, node: str) -> list[str]:
        """Node-side veth names of the pods on `node`."""
        return [p.host_ifname for p in self.pods.values() if p.node == node]

    def spec(self) -> Topology:
        """The topology the lab was built from (pods at their original addresses)."""
        return topology_from_dict(self.topology)

    def plan(self) -> tuple[Topology, AddressPlan]:
        """The topology and the address plan as they are now: recreated pods at their new addresses."""
        topo = self.spec()
        p = plan(topo)
        p.pod_ips = {name: ipaddress.IPv4Address(rec.ip) for name, rec in self.pods.items()}
        ports = {(s.name, sp.name): sp for s in self.services for sp in s.ports}
        for key in p.endpoints:
            sp = ports.get(key)
            if sp is not None:
                p.endpoints[key] = [PlanBackend(b.pod, self.pods[b.pod].node, b.ip, b.port, b.terminating)
                                    for b in sp.backends]
        return topo, p

    def pod_of(self, ip: str) -> str | None:
        """The pod that has address `ip` now."""
        return next((name for name, p in self.pods.items() if p.ip == ip), None)

    def k8s_namespaces(self) -> list[str]:
        """The Kubernetes namespaces of the lab's topology (default first)."""
        return self.spec().all_namespaces()

    def check_namespace(self, namespace: str | None) -> None:
        """LabError unless `namespace` (None: any) is one of the lab's Kubernetes namespaces."""
        if namespace is not None and namespace not in self.k8s_namespaces():
            raise LabError(f"no namespace {namespace!r} in lab {self.lab!r} (namespaces: {', '.join(self.k8s_namespaces())}); "
                           f"{NAMESPACE_HINT}")

    def select_pods(self, names: tuple[str, ...], selector: str | None, namespace: str | None = None) -> list[str]:
        """Pod names from arguments and/or a label selector (k=v[,k=v]) in `namespace` (None: any);
        LabError for an unknown namespace or pod or a bad selector."""
        self.check_namespace(namespace)
        topo = self.spec()
        pods = {p.name for p in topo.pods if namespace is None or p.namespace == namespace} & set(self.pods)
        where = f" in namespace {namespace!r}" if namespace else ""
        chosen = list(names)
        for n in names:
            if n not in pods:
                owned = sorted({p.namespace for p in topo.pods if p.owner and p.all_labels().get("app") == n})
                hint = (f"; a Deployment's pods are named <deployment>-<hash>-<5 chars>: try -n {owned[0]} -l app={n}"
                        if owned else "")  # an old name of the lesson's pods
                raise LabError(f"unknown pod {n!r}{where} of lab {self.lab!r} (pods: {', '.join(sorted(pods))}){hint}")
        if selector:
            want = {}
            for part in selector.split(","):
                key, eq, value = part.partition("=")
                if not eq or not key or not value:
                    raise LabError(f"bad selector {selector!r}: use key=value[,key=value], e.g. app=summary")
                want[key.strip()] = value.strip()
            matched = [p.name for p in topo.pods if p.name in pods and want.items() <= p.all_labels().items()]
            if not matched:
                raise LabError(f"no pod{where} of lab {self.lab!r} matches {selector!r}")
            chosen += [m for m in matched if m not in chosen]
        return chosen

    def nodeport_target(self) -> NodePortTarget:
        """The lesson's curl: the first host to the first TCP NodePort, on the first node not hosting that
        service's first backend (so the tunnel and DSR are seen); LabError if there is none."""
        hosts, nodes = self.hosts(), self.nodes()
        if not hosts or not nodes:
            raise LabError(f"lab {self.lab!r} has no host or no node to walk a curl through")
        host, h = next(iter(hosts.items()))
        for s in self.services:
            for sp in s.ports:
                if sp.node_port and sp.protocol.upper() == "TCP":
                    local = {self.pods[b.pod].node for b in sp.backends[:1] if b.pod in self.pods}
                    ingress = next((n for n in nodes if n not in local), next(iter(nodes)))
                    return NodePortTarget(host, str(h.address), ingress, str(nodes[ingress].address), sp.node_port,
                                          s.name, sp.backends)
        raise LabError(f"lab {self.lab!r} has no TCP NodePort service to curl")

    # -- on disk

    def to_dict(self) -> dict[str, Any]:
        """The JSON document (felix as its spec)."""
        doc = dataclasses.asdict(self)
        doc["felix"] = self.felix.to_spec()
        order = ("version", "lab", "status", "created", "updated", "topology", "members", "pods", "services",
                 "felix", "kubeproxy", "dataplane")
        return {k: doc[k] for k in order}

    @classmethod
    def from_dict(cls, doc: dict[str, Any], source: str = "lab state") -> LabState:
        """A state document of any readable version; LabError (one line) for another version or a malformed one."""
        version = doc.get("version") if isinstance(doc, dict) else None
        if version not in READABLE_VERSIONS:
            raise LabError(f"{source} is version {version}, this netns-lab reads versions "
                           f"{', '.join(map(str, READABLE_VERSIONS))}: remove the lab with the netns-lab that made it")
        try:
            dp = dict(doc.get("dataplane") or {})
            dp.pop("sysctls", None)  # version 1: a per-mode sysctl record that was always empty
            kp = {"mode": "iptables", **(doc.get("kubeproxy") or {})}  # versions 1-3: iptables was the only backend
            if kp["mode"] not in PROXY_BACKENDS:
                raise TypeError(f"kubeproxy.mode {kp['mode']!r} is not one of {', '.join(PROXY_BACKENDS)}")
            return cls(
                lab=doc["lab"],
                topology=doc["topology"],
                members={k: Member(**v) for k, v in doc["members"].items()},
                pods={k: PodRecord(**v) for k, v in doc["pods"].items()},
                services=[ServiceRecord(s["name"], s["cluster_ip"], [
                    ServicePortRecord(**{**sp, "backends": [BackendRecord(**b) for b in sp["backends"]]})
                    for sp in s["ports"]], s.get("external_local", False), s.get("internal_local", False),
                    s.get("health_check_node_port")) for s in doc["services"]],
                felix=FelixConfig.from_spec(doc.get("felix")),
                status=doc.get("status", "building"),
                created=doc.get("created", ""),
                updated=doc.get("updated", ""),
                kubeproxy=KubeProxyRecord(**kp),
                dataplane=DataplaneRecord(**dp),
            )
        except (KeyError, TypeError, AttributeError, FelixConfigError) as exc:
            raise LabError(f"{source} is malformed: {type(exc).__name__}: {exc}") from None


def _read(p: Path) -> Any:
    """The parsed JSON at `p`, or None when there is none; LabError if unreadable."""
    try:
        with open(p) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise LabError(f"cannot read lab state {p}: {exc}") from None


def load(lab: str, path: Path | None = None) -> LabState | None:
    """The lab's state, or None when it has none; LabError if the file is unreadable, malformed or of another version."""
    p = path or naming.state_path(lab)
    doc = _read(p)
    return None if doc is None else LabState.from_dict(doc, f"lab state {p}")


def recorded_pids(lab: str) -> list[int]:
    """App pids the state file records, whatever its version or condition (clean-up must never be blocked)."""
    try:
        doc = _read(naming.state_path(lab))
        return [p["pid"] for p in doc["pods"].values() if isinstance(p.get("pid"), int)]
    except Exception:
        return []


def save(lab: str, state: LabState, path: Path | None = None) -> None:
    """Write the state atomically: a temp file in the same directory, fsync, rename over the old one."""
    p = path or naming.state_path(lab)
    p.parent.mkdir(parents=True, exist_ok=True)
    state.updated = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    fd, tmp = tempfile.mkstemp(prefix=".state.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(state.to_dict(), f, indent=2, sort_keys=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def lock(lab: str, timeout: float = 60.0, path: Path | None = None) -> Iterator[None]:
    """Hold the lab's flock for the duration of the block (waits up to `timeout` seconds).

    `down` deletes the lock file with the lab, so after acquiring we check that the file we
    locked is still the one at the path; if not, another process removed it meanwhile and we
    lock the new one instead.
    """
    p = path or naming.lock_path(lab)
    deadline = time.monotonic() + timeout
    fd = _acquire(lab, p, deadline)
    try:
        yield
    finally:
        os.close(fd)  # releases the flock


def _acquire(lab: str, p: Path, deadline: float) -> int:
    """Open and flock the lock file at `p`, retrying if it is replaced meanwhile; returns the fd."""
    while True:
        p.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:
            continue  # directory removed between mkdir and open: retry
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                    if time.monotonic() > deadline:
                        raise LabError(f"lab {lab!r} is busy: another netns-lab command holds {p}") from None
                    time.sleep(0.05)
            try:
                same = os.stat(p).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
        except BaseException:
            os.close(fd)
            raise
        if same:
            return fd
        os.close(fd)


def list_labs() -> list[str]:
    """Labs with a state directory under /run/netns-lab."""
    try:
        return sorted(d.name for d in naming.RUN_ROOT.iterdir() if d.is_dir() and naming.LAB_RE.match(d.name))
    except FileNotFoundError:
        return []
