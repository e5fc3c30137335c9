"""Topology as data: nodes, hosts, pods and services; the default yaobank; YAML loading; the address plan.

A topology says *what* the lab is; builder.py turns it into namespaces. YAML files use the
same field names as the dataclasses, camelCased like Kubernetes objects (clusterIP,
targetPort, nodePort, podBlock). Errors name the field path and, for files, the line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import yaml

from netns_lab.apps import TEST_SERVER, UPSTREAM
from netns_lab.errors import LabError

PROTOCOLS = ("TCP", "UDP")
NODEPORT_RANGE = (30000, 32767)
VXLAN_OVERHEAD = 50
MEMBER_RE = re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")  # a DNS label, as pod names are
IFNAME_MEMBER_RE = re.compile(r"^[a-z][a-z0-9]{0,14}$")  # node/host names are also fabric port names
PORT_NAME_RE = re.compile(r"^([a-z]([a-z0-9-]{0,13}[a-z0-9])?)?$")  # "" is an unnamed port
# the namespace of pods and services a topology file does not place: the lesson's
TOPOLOGY_NAMESPACE = "yaobank"

RESERVED_MEMBERS = ("fabric",)

Path_ = tuple[Any, ...]  # field path inside the document, e.g. ("pods", 2, "node")


# --------------------------------------------------------------------------- data


@dataclass
class Fabric:
    """The L2 segment joining nodes and hosts (a bridge in its own namespace)."""

    subnet: str = "198.19.0.0/20"
    mtu: int = 1500


@dataclass
class Node:
    """A Kubernetes node: routes pods, runs kube-proxy or the eBPF datapath."""

    name: str
    address: str
    pod_block: str | None = None  # None: next free block of the pod pool
    control_plane: bool = False  # True: tainted as Kubernetes control planes are, no pods spread to it


@dataclass
class Host:
    """A machine on the fabric outside the cluster (the lesson's host1)."""

    name: str
    address: str


@dataclass
class PodPort:
    """A port the pod's app listens on ("" name: unnamed)."""

    name: str
    protocol: str
    port: int


@dataclass
class Pod:
    """A pod: its own namespace on a node, running one app."""

    name: str
    node: str
    app: str
    ports: list[PodPort]
    labels: dict[str, str] = field(default_factory=dict)
    ip: str | None = None  # None: next free address of the node's block
    namespace: str = TOPOLOGY_NAMESPACE
    image: str | None = None  # the container image a manifest gave (the app was chosen from it)
    container: str | None = None  # the container's name in a manifest
    owner: str | None = None  # the ReplicaSet that made the pod (None: a bare pod)
    # graceful deletion (`delete pod --grace-period S`): the pod is terminating until this RFC 3339 UTC
    # time (Kubernetes' metadata.deletionTimestamp), serving but not ready; None: not being deleted
    deletion_timestamp: str | None = None
    deletion_grace_period_seconds: int | None = None

    @property
    def terminating(self) -> bool:
        """True while the pod is being deleted gracefully (its endpoints: serving, not ready)."""
        return self.deletion_timestamp is not None

    def all_labels(self) -> dict[str, str]:
        """Labels a selector matches, `app` included as Kubernetes manifests usually set it."""
        return {"app": self.app, **self.labels}


@dataclass
class ServicePort:
    """One port of a service: frontend port, the pods' port, optional NodePort."""

    name: str
    protocol: str
    port: int
    target_port: int | str | None = None  # a number, or the name of a pod port
    node_port: int | None = None

    @property
    def target(self) -> int | str:
        """The backend port (targetPort defaults to port, as in Kubernetes); a str names a pod port."""
        return self.target_port if self.target_port is not None else self.port

    def target_on(self, pod: Pod) -> int | None:
        """The port number this service port reaches on `pod` (None: a named port the pod lacks)."""
        if isinstance(self.target, int):
            return self.target
        return next((pp.port for pp in pod.ports if pp.name == self.target and pp.protocol == self.protocol), None)


HEADLESS = "None"  # clusterIP of a headless service: endpoints, no frontend


@dataclass
class Service:
    """A Kubernetes service: a cluster IP in front of the pods it selects."""

    name: str
    cluster_ip: str
    ports: list[ServicePort]
    namespace: str = TOPOLOGY_NAMESPACE
    selector: dict[str, str] | None = None
    backends: list[str] | None = None  # explicit pod names instead of a selector
    # type LoadBalancer / external IPs (netns_lab/k8s/loadbalancer.py): the allocated ingress address
    # (None: not a LoadBalancer), spec.externalIPs, loadBalancerSourceRanges, ClientIP affinity's
    # timeoutSeconds (None: no affinity) and Calico's external-traffic-strategy maglev annotation
    load_balancer_ip: str | None = None
    external_ips: list[str] = field(default_factory=list)
    source_ranges: list[str] = field(default_factory=list)
    affinity_timeout: int | None = None
    maglev: bool = False
    external_traffic_policy: str | None = None  # Local: NodePorts only to the ingress node's endpoints (None: Cluster)
    internal_traffic_policy: str | None = None  # Local: ClusterIP only to the client's node's endpoints (None: Cluster)
    health_check_node_port: int | None = None  # eTP Local: the port kube-proxy's health server answers on

    @property
    def external_local(self) -> bool:
        """spec.externalTrafficPolicy Local."""
        return self.external_traffic_policy == "Local"

    @property
    def internal_local(self) -> bool:
        """spec.internalTrafficPolicy Local."""
        return self.internal_traffic_policy == "Local"

    @property
    def full_name(self) -> str:
        """`namespace/name`, as kube-proxy names services."""
        return f"{self.namespace}/{self.name}"

    @property
    def headless(self) -> bool:
        """clusterIP None: no frontend for the proxies, only endpoints."""
        return self.cluster_ip == HEADLESS

    @property
    def type(self) -> str:
        """Kubernetes' service type: LoadBalancer with an ingress address, NodePort when a port has one."""
        if self.load_balancer_ip:
            return "LoadBalancer"
        return "NodePort" if any(sp.node_port for sp in self.ports) else "ClusterIP"


@dataclass
class PodTemplate:
    """What a Deployment or ReplicaSet makes its pods from (the normalised form of spec.template)."""

    app: str
    ports: list[PodPort]
    labels: dict[str, str] = field(default_factory=dict)
    image: str | None = None
    container: str | None = None
    node: str | None = None  # nodeName / nodeSelector kubernetes.io/hostname; None: spread over the workers
    hash: str = ""  # pod-template-hash: stable for one template


@dataclass
class Workload:
    """A Deployment or ReplicaSet: `replicas` pods from one template, named `<replicaset>-<5 chars>`."""

    kind: str
    name: str
    namespace: str
    replicas: int
    selector: dict[str, str]
    template: PodTemplate
    created: int = 0  # pods made so far: seeds the next pod's name, so a replacement gets a new one

    @property
    def replicaset(self) -> str:
        """Name of the ReplicaSet owning the pods (`<deployment>-<template hash>` for a Deployment)."""
        return f"{self.name}-{self.template.hash}" if self.kind == "Deployment" else self.name


@dataclass
class Topology:
    """A whole lab: fabric, nodes, hosts, pods, services and the address pools."""

    nodes: list[Node]
    hosts: list[Host] = field(default_factory=list)
    pods: list[Pod] = field(default_factory=list)
    services: list[Service] = field(default_factory=list)
    fabric: Fabric = field(default_factory=Fabric)
    pod_pool: str = "198.19.16.0/20"
    block_size: int = 26
    service_cidr: str = "198.19.32.0/20"
    name: str = "yaobank"
    namespaces: list[str] = field(default_factory=list)  # Kubernetes namespaces declared (others are implied)
    workloads: list[Workload] = field(default_factory=list)
    # LoadBalancer addresses and how host1 reaches them (None: the defaults below; loadbalancer.py)
    lb_pool: str | None = None
    lb_route: str | None = None  # a node name, or "ecmp" (all nodes)

    @property
    def pod_mtu(self) -> int:
        """Pod veth MTU: fabric MTU minus VXLAN overhead, as Calico sizes it."""
        return self.fabric.mtu - VXLAN_OVERHEAD

    def node(self, name: str) -> Node:
        """The node called `name` (KeyError if none)."""
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def pod(self, name: str) -> Pod:
        """The pod called `name` (KeyError if none)."""
        for p in self.pods:
            if p.name == name:
                return p
        raise KeyError(name)

    def service(self, name: str, namespace: str | None = None) -> Service:
        """The service called `name` or `namespace/name` (in `namespace` first, if given; KeyError if none)."""
        found = [s for s in self.services if name in (s.name, s.full_name)]
        for s in found:
            if namespace is None or s.namespace == namespace:
                return s
        if found:
            return found[0]
        raise KeyError(name)

    def all_namespaces(self) -> list[str]:
        """Declared namespaces, `default` and every namespace an object is in, sorted."""
        names = set(self.namespaces) | {"default"} | {p.namespace for p in self.pods}
        return sorted(names | {s.namespace for s in self.services} | {w.namespace for w in self.workloads})

    def selects(self, svc: Service, pod: Pod) -> bool:
        """True if the service's selector (same namespace) or backend list picks the pod."""
        if svc.backends is not None:
            return pod.name in svc.backends
        return bool(svc.selector) and pod.namespace == svc.namespace and svc.selector.items() <= pod.all_labels().items()

    def member_names(self) -> list[str]:
        """Every namespace-owning member: nodes, hosts, pods (the fabric is implicit)."""
        return [n.name for n in self.nodes] + [h.name for h in self.hosts] + [p.name for p in self.pods]


def default_nodes() -> list[Node]:
    """The lesson's nodes: control (the control plane, no pods spread to it), node1, node2."""
    return [Node("control", "198.19.0.1", control_plane=True), Node("node1", "198.19.0.2"), Node("node2", "198.19.0.3")]


def default_hosts() -> list[Host]:
    """The lesson's external client, host1."""
    return [Host("host1", "198.19.15.254")]


def default_topology() -> Topology:
    """yaobank as in the lesson (docs/conventions.md): control, node1, node2, host1 and four pods."""
    http = [PodPort("http", "TCP", 80)]
    return Topology(
        nodes=default_nodes(),
        hosts=default_hosts(),
        pods=[
            Pod("customer", "node1", "customer", [PodPort("http", "TCP", 80), PodPort("echo", "UDP", 7)]),
            Pod("summary-1", "node1", "summary", list(http)),
            Pod("summary-2", "node2", "summary", list(http)),
            Pod("database", "node2", "database", [PodPort("http", "TCP", 2379)]),
        ],
        services=[
            Service(
                "customer",
                "198.19.32.10",
                [ServicePort("http", "TCP", 80, 80, 30180), ServicePort("echo", "UDP", 7, 7, 30107)],
                selector={"app": "customer"},
            ),
            Service("summary", "198.19.32.20", [ServicePort("http", "TCP", 80, 80)], selector={"app": "summary"}),
            Service("database", "198.19.32.30", [ServicePort("http", "TCP", 2379, 2379)], selector={"app": "database"}),
        ],
    )


# --------------------------------------------------------------------------- errors


class TopologyError(LabError):
    """A topology problem, located by field path and (for files) line."""

    def __init__(self, path: Path_, message: str, where: str | None = None):
        self.path = tuple(path)
        self.message = message
        self.where = where
        super().__init__(self._text())

    def _text(self) -> str:
        prefix = f"{self.where}: " if self.where else ""
        field_ = format_path(self.path)
        return f"{prefix}topology: {field_ + ': ' if field_ else ''}{self.message}"

    def located(self, where: str) -> "TopologyError":
        """The same error with a `file:line` location."""
        return TopologyError(self.path, self.message, where)


def format_path(path: Path_) -> str:
    """("pods", 2, "node") -> "pods[2].node"."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


# --------------------------------------------------------------------------- dict <-> dataclasses

# Field table per class: (YAML key, attribute, type, required). Types: str, int, "labels"
# (str->str mapping), "names" (list of str), a dataclass, or [dataclass] for a list.
_SCHEMA: dict[type, list[tuple[str, str, Any, bool]]] = {
    Topology: [
        ("name", "name", str, False),
        ("fabric", "fabric", Fabric, False),
        ("podPool", "pod_pool", str, False),
        ("blockSize", "block_size", int, False),
        ("serviceCIDR", "service_cidr", str, False),
        ("nodes", "nodes", [Node], True),
        ("hosts", "hosts", [Host], False),
        ("pods", "pods", [Pod], False),
        ("services", "services", [Service], False),
        ("namespaces", "namespaces", "names", False),
        ("workloads", "workloads", [Workload], False),
        ("loadBalancerPool", "lb_pool", str, False),
        ("loadBalancerRoute", "lb_route", str, False),
    ],
    Fabric: [("subnet", "subnet", str, False), ("mtu", "mtu", int, False)],
    Node: [
        ("name", "name", str, True),
        ("address", "address", str, True),
        ("podBlock", "pod_block", str, False),
        ("controlPlane", "control_plane", bool, False),
    ],
    Host: [("name", "name", str, True), ("address", "address", str, True)],
    Pod: [
        ("name", "name", str, True),
        ("node", "node", str, True),
        ("app", "app", str, True),
        ("ports", "ports", [PodPort], True),
        ("labels", "labels", "labels", False),
        ("ip", "ip", str, False),
        ("namespace", "namespace", str, False),
        ("image", "image", str, False),
        ("container", "container", str, False),
        ("owner", "owner", str, False),
        ("deletionTimestamp", "deletion_timestamp", str, False),
        ("deletionGracePeriodSeconds", "deletion_grace_period_seconds", int, False),
    ],
    PodPort: [("name", "name", str, False), ("protocol", "protocol", str, False), ("port", "port", int, True)],
    PodTemplate: [
        ("app", "app", str, True),
        ("ports", "ports", [PodPort], False),
        ("labels", "labels", "labels", False),
        ("image", "image", str, False),
        ("container", "container", str, False),
        ("node", "node", str, False),
        ("hash", "hash", str, False),
    ],
    Workload: [
        ("kind", "kind", str, True),
        ("name", "name", str, True),
        ("namespace", "namespace", str, True),
        ("replicas", "replicas", int, True),
        ("selector", "selector", "labels", True),
        ("template", "template", PodTemplate, True),
        ("created", "created", int, False),
    ],
    Service: [
        ("name", "name", str, True),
        ("namespace", "namespace", str, False),
        ("clusterIP", "cluster_ip", str, True),
        ("ports", "ports", [ServicePort], True),
        ("selector", "selector", "labels", False),
        ("backends", "backends", "names", False),
        ("loadBalancerIP", "load_balancer_ip", str, False),
        ("externalIPs", "external_ips", "strs", False),
        ("loadBalancerSourceRanges", "source_ranges", "strs", False),
        ("sessionAffinityTimeout", "affinity_timeout", int, False),
        ("maglev", "maglev", bool, False),
        ("externalTrafficPolicy", "external_traffic_policy", str, False),
        ("internalTrafficPolicy", "internal_traffic_policy", str, False),
        ("healthCheckNodePort", "health_check_node_port", int, False),
    ],
    ServicePort: [
        ("name", "name", str, False),
        ("protocol", "protocol", str, False),
        ("port", "port", int, True),
        ("targetPort", "target_port", "port", False),
        ("nodePort", "node_port", int, False),
    ],
}
_DEFAULT_PROTOCOL = "TCP"


def _convert(value: Any, typ: Any, path: Path_) -> Any:
    """Check and convert one field value to `typ` (see _SCHEMA)."""
    if isinstance(typ, list):
        if not isinstance(value, list):
            raise TopologyError(path, f"expected a list, got {_kind(value)}")
        return [_build(typ[0], item, path + (i,)) for i, item in enumerate(value)]
    if isinstance(typ, type) and typ in _SCHEMA:
        return _build(typ, value, path)
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TopologyError(path, f"expected an integer, got {_kind(value)}")
        return value
    if typ is str:
        if not isinstance(value, str):
            raise TopologyError(path, f"expected a string, got {_kind(value)}")
        return value
    if typ is bool:
        if not isinstance(value, bool):
            raise TopologyError(path, f"expected true or false, got {_kind(value)}")
        return value
    if typ == "port":
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise TopologyError(path, f"expected a port number or name, got {_kind(value)}")
        return value
    if typ == "labels":
        if not isinstance(value, dict):
            raise TopologyError(path, f"expected a mapping of labels, got {_kind(value)}")
        for k, v in value.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise TopologyError(path + (str(k),), "label keys and values must be strings")
        return dict(value)
    if typ == "strs":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise TopologyError(path, "expected a list of strings")
        return list(value)
    if typ == "names":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise TopologyError(path, "expected a list of pod names")
        return list(value)
    raise AssertionError(typ)


def _kind(value: Any) -> str:
    """Human name of a YAML value's type, for error messages."""
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", type(None): "nothing"}.get(
        type(value), type(value).__name__
    )


def _build(cls: type, data: Any, path: Path_) -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown and missing fields."""
    if not isinstance(data, dict):
        raise TopologyError(path, f"expected a mapping, got {_kind(data)}")
    spec = _SCHEMA[cls]
    known = {key for key, _, _, _ in spec}
    for key in data:
        if key not in known:
            raise TopologyError(path + (key,), f"unknown field (known: {', '.join(sorted(known))})")
    kwargs: dict[str, Any] = {}
    for key, attr, typ, required in spec:
        if key not in data or data[key] is None:
            if required:
                raise TopologyError(path, f"missing required field '{key}'")
            if cls in (PodPort, ServicePort) and key == "protocol":
                kwargs[attr] = _DEFAULT_PROTOCOL
            if cls in (PodPort, ServicePort) and key == "name":
                kwargs[attr] = ""
            if cls is PodTemplate and key == "ports":
                kwargs[attr] = []
            continue
        kwargs[attr] = _convert(data[key], typ, path + (key,))
    return cls(**kwargs)


def topology_from_dict(data: Any) -> Topology:
    """Build and validate a Topology from plain data (a parsed YAML file or a state file)."""
    topo = _build(Topology, data, ())
    plan(topo)  # validates
    return topo


def topology_to_dict(topo: Topology) -> dict[str, Any]:
    """Plain data for a Topology, in the YAML field names (round-trips through topology_from_dict)."""
    return _unbuild(topo)


_OMIT_EMPTY = ("name", "controlPlane", "namespaces", "workloads", "hash", "created", "externalIPs",
               "loadBalancerSourceRanges", "maglev")


def _unbuild(obj: Any) -> Any:
    """Inverse of _build: dataclass -> dict with YAML keys, dropping unset optional fields."""
    if isinstance(obj, list):
        return [_unbuild(x) for x in obj]
    if type(obj) in _SCHEMA:
        out: dict[str, Any] = {}
        for key, attr, _, _ in _SCHEMA[type(obj)]:
            value = getattr(obj, attr)
            if value is None or value == {} or (value in ("", False, []) and key in _OMIT_EMPTY):
                continue
            out[key] = _unbuild(value)
        return out
    if isinstance(obj, dict):
        return dict(obj)
    return obj


# --------------------------------------------------------------------------- YAML with line numbers


def _compose(text: str) -> tuple[Any, dict[Path_, yaml.Mark]]:
    """Parse YAML into plain data plus the start mark of every field, keyed by field path."""
    docs = compose_documents(text, single=True)
    return docs[0] if docs else (None, {})


def compose_documents(text: str, single: bool = False) -> list[tuple[Any, dict[Path_, yaml.Mark]]]:
    """Parse (multi-document) YAML: per document its plain data and the start mark of every field.

    TopologyError with the line for invalid YAML; `single` refuses a second document.
    """
    loader = yaml.SafeLoader(text)
    docs: list[tuple[Any, dict[Path_, yaml.Mark]]] = []
    try:
        if single:
            root = loader.get_single_node()
            if root is not None:
                docs.append(_walk_document(loader, root))
        else:
            while loader.check_node():
                docs.append(_walk_document(loader, loader.get_node()))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise TopologyError((), f"invalid YAML: {problem}", _mark(mark) if mark else None) from None
    finally:
        loader.dispose()
    return docs


def _walk_document(loader: yaml.SafeLoader, root: yaml.Node) -> tuple[Any, dict[Path_, yaml.Mark]]:
    """One composed document as plain data plus the marks of its fields."""
    marks: dict[Path_, yaml.Mark] = {}

    def walk(node: yaml.Node, path: Path_) -> Any:
        marks[path] = node.start_mark
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = loader.construct_object(key_node, deep=True)
                if not isinstance(key, (str, int)):
                    raise TopologyError(path, "mapping keys must be strings").located(_mark(key_node.start_mark))
                if key in out:
                    raise TopologyError(path + (key,), "duplicate field").located(_mark(key_node.start_mark))
                out[key] = walk(value_node, path + (key,))
                marks[path + (key,)] = key_node.start_mark  # point at the key: that is the field
            return out
        if isinstance(node, yaml.SequenceNode):
            return [walk(item, path + (i,)) for i, item in enumerate(node.value)]
        return loader.construct_object(node, deep=True)

    data = walk(root, ())
    return data, marks


def _mark(mark: yaml.Mark) -> str:
    """`line N` of a YAML mark (1-based); the file name is added by the caller."""
    return f"line {mark.line + 1}"


def load_topology_text(text: str, source: str = "<topology>") -> Topology:
    """Parse and validate a YAML topology; errors say `source:line N: topology: field: problem`."""
    try:
        data, marks = _compose(text)
    except TopologyError as exc:
        raise exc.located(f"{source}:{exc.where}" if exc.where else source) from None
    if data is None:
        raise TopologyError((), "file is empty", source)
    try:
        return topology_from_dict(data)
    except TopologyError as exc:
        path = exc.path
        while path and path not in marks:
            path = path[:-1]
        mark = marks.get(path)
        raise exc.located(f"{source}:{_mark(mark)}" if mark else source) from None


def load_topology(path: str | Path) -> Topology:
    """Load a topology YAML file (LabError if unreadable or invalid)."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise LabError(f"cannot read topology file {str(p)!r}: {exc.strerror}") from None
    return load_topology_text(text, str(p))


def dump_topology(topo: Topology) -> str:
    """The topology as YAML, loadable by load_topology."""
    return yaml.safe_dump(topology_to_dict(topo), sort_keys=False)


# --------------------------------------------------------------------------- validation and address plan


@dataclass
class Backend:
    """One endpoint of a service port: the pod, its address and the target port."""

    pod: str
    node: str
    ip: str
    port: int
    terminating: bool = False  # the pod is going (graceful deletion): used only when no other endpoint serves


@dataclass
class AddressPlan:
    """Where everything lives: each node's pod block and each pod's address; service endpoints."""

    node_blocks: dict[str, IPv4Network]
    pod_ips: dict[str, IPv4Address]
    endpoints: dict[tuple[str, str], list[Backend]]  # (service full name, port name) -> backends

    def backends(self, service: Service, port: ServicePort) -> list[Backend]:
        """Endpoints of one service port, ordered by pod address."""
        return self.endpoints[(service.full_name, port.name)]


def _net(value: str, path: Path_) -> IPv4Network:
    """Parse a CIDR field (host bits must be zero)."""
    try:
        return IPv4Network(value)
    except ValueError as exc:
        raise TopologyError(path, f"{value!r} is not an IPv4 network ({exc})") from None


def _addr(value: str, path: Path_) -> IPv4Address:
    """Parse an IPv4 address field."""
    try:
        return IPv4Address(value)
    except ValueError:
        raise TopologyError(path, f"{value!r} is not an IPv4 address") from None


def _check_ports(protocol: str, port: int, path: Path_) -> None:
    """Protocol is TCP/UDP and port is 1-65535."""
    if protocol not in PROTOCOLS:
        raise TopologyError(path + ("protocol",), f"unsupported protocol {protocol!r} (use TCP or UDP)")
    if not 1 <= port <= 65535:
        raise TopologyError(path + ("port",), f"port {port} out of range 1-65535")


def plan(topo: Topology) -> AddressPlan:
    """Validate the topology and compute its address plan (TopologyError on the first problem)."""
    fabric = _net(topo.fabric.subnet, ("fabric", "subnet"))
    pool = _net(topo.pod_pool, ("podPool",))
    svc_cidr = _net(topo.service_cidr, ("serviceCIDR",))
    if not 576 <= topo.fabric.mtu <= 9000:
        raise TopologyError(("fabric", "mtu"), f"MTU {topo.fabric.mtu} out of range 576-9000")
    for a, a_path, b, b_path in (
        (fabric, ("fabric", "subnet"), pool, ("podPool",)),
        (fabric, ("fabric", "subnet"), svc_cidr, ("serviceCIDR",)),
        (pool, ("podPool",), svc_cidr, ("serviceCIDR",)),
    ):
        if a.overlaps(b):
            raise TopologyError(b_path, f"{b} overlaps {format_path(a_path)} {a}")
    if not pool.prefixlen <= topo.block_size <= 30:
        raise TopologyError(("blockSize",), f"block size /{topo.block_size} must be between /{pool.prefixlen} and /30")
    if not topo.nodes:
        raise TopologyError(("nodes",), "at least one node is needed")

    # names: unique across members, valid as namespace (and for nodes/hosts, interface) names
    seen: dict[str, Path_] = {}
    members: list[tuple[str, Path_, re.Pattern[str], str]] = (
        [(n.name, ("nodes", i, "name"), IFNAME_MEMBER_RE, "node") for i, n in enumerate(topo.nodes)]
        + [(h.name, ("hosts", i, "name"), IFNAME_MEMBER_RE, "host") for i, h in enumerate(topo.hosts)]
        + [(p.name, ("pods", i, "name"), MEMBER_RE, "pod") for i, p in enumerate(topo.pods)]
    )
    for name, path, regex, kind in members:
        if not regex.match(name):
            rule = (
                "1-15 lowercase letters or digits, starting with a letter"
                if regex is IFNAME_MEMBER_RE
                else "lowercase letters, digits and '-', starting with a letter, at most 31 characters"
            )
            raise TopologyError(path, f"invalid {kind} name {name!r}: {rule}")
        if name in RESERVED_MEMBERS:
            raise TopologyError(path, f"{name!r} is reserved")
        if name in seen:
            raise TopologyError(path, f"name {name!r} already used at {format_path(seen[name])}")
        seen[name] = path

    # fabric addresses
    used_addr: dict[IPv4Address, Path_] = {}
    for kind, items in (("nodes", topo.nodes), ("hosts", topo.hosts)):
        for i, m in enumerate(items):
            path = (kind, i, "address")
            ip = _addr(m.address, path)
            if ip not in fabric or ip in (fabric.network_address, fabric.broadcast_address):
                raise TopologyError(path, f"{ip} is not a usable address of the fabric subnet {fabric}")
            if ip in used_addr:
                raise TopologyError(path, f"{ip} already used at {format_path(used_addr[ip])}")
            used_addr[ip] = path

    # pod blocks: explicit ones first, then the next free blocks in node order
    blocks: dict[str, IPv4Network] = {}
    for i, n in enumerate(topo.nodes):
        if n.pod_block is not None:
            path = ("nodes", i, "podBlock")
            block = _net(n.pod_block, path)
            if block.prefixlen != topo.block_size or not block.subnet_of(pool):
                raise TopologyError(path, f"{block} is not a /{topo.block_size} block of the pod pool {pool}")
            for other, ob in blocks.items():
                if ob == block:
                    raise TopologyError(path, f"{block} is already node {other}'s block")
            blocks[n.name] = block
    free = (b for b in pool.subnets(new_prefix=topo.block_size) if b not in blocks.values())
    for i, n in enumerate(topo.nodes):
        if n.name not in blocks:
            block = next(free, None)
            if block is None:
                raise TopologyError(("nodes", i), f"pod pool {pool} has no free /{topo.block_size} block left")
            blocks[n.name] = block
    node_blocks = {n.name: blocks[n.name] for n in topo.nodes}

    # pods: node exists, app known, ports valid, address in the node's block
    node_names = {n.name for n in topo.nodes}
    host_names = {h.name for h in topo.hosts}
    pod_ips: dict[str, IPv4Address] = {}
    taken: dict[IPv4Address, Path_] = {}
    for i, p in enumerate(topo.pods):
        if p.node not in node_names:
            hint = " (hosts are outside the cluster and run no pods)" if p.node in host_names else ""
            raise TopologyError(("pods", i, "node"), f"unknown node {p.node!r}{hint}")
        if p.app not in UPSTREAM and p.app != TEST_SERVER:
            raise TopologyError(("pods", i, "app"), f"unknown app {p.app!r} (known: {', '.join([*UPSTREAM, TEST_SERVER])})")
        if not MEMBER_RE.match(p.namespace):
            raise TopologyError(("pods", i, "namespace"), f"invalid namespace {p.namespace!r}")
        if not p.ports and p.app != TEST_SERVER:
            raise TopologyError(("pods", i, "ports"), "a pod needs at least one port")
        pp_seen: set[tuple[str, int]] = set()
        names_seen: set[str] = set()
        for j, pp in enumerate(p.ports):
            path = ("pods", i, "ports", j)
            _check_ports(pp.protocol, pp.port, path)
            if not PORT_NAME_RE.match(pp.name):
                raise TopologyError(path + ("name",), f"invalid port name {pp.name!r}")
            if (pp.protocol, pp.port) in pp_seen or (pp.name and pp.name in names_seen):
                raise TopologyError(path, f"duplicate port {pp.name or '(unnamed)'} {pp.protocol}/{pp.port}")
            pp_seen.add((pp.protocol, pp.port))
            names_seen.add(pp.name)
        if p.app != TEST_SERVER and not any(pp.protocol == "TCP" for pp in p.ports):
            raise TopologyError(("pods", i, "ports"), f"app {p.app!r} serves HTTP: the pod needs a TCP port")
        block = node_blocks[p.node]
        if p.ip is not None:
            path = ("pods", i, "ip")
            ip = _addr(p.ip, path)
            if ip not in block or ip in (block.network_address, block.broadcast_address):
                raise TopologyError(path, f"{ip} is not a usable address of node {p.node}'s block {block}")
            if ip in taken:
                raise TopologyError(path, f"{ip} already used at {format_path(taken[ip])}")
            taken[ip] = path
            pod_ips[p.name] = ip
    for i, p in enumerate(topo.pods):
        if p.name in pod_ips:
            continue
        block = node_blocks[p.node]
        ip = next((h for h in block.hosts() if h not in taken), None)
        if ip is None:
            raise TopologyError(("pods", i), f"node {p.node}'s block {block} is full")
        taken[ip] = ("pods", i)
        pod_ips[p.name] = ip
    pod_ips = {p.name: pod_ips[p.name] for p in topo.pods}

    # services: names, cluster IPs, ports, node ports, backends
    svc_seen: dict[str, Path_] = {}
    cip_seen: dict[IPv4Address, Path_] = {}
    nodeports: dict[tuple[str, int], Path_] = {}
    endpoints: dict[tuple[str, str], list[Backend]] = {}
    pods_by_name = {p.name: p for p in topo.pods}
    for i, s in enumerate(topo.services):
        spath = ("services", i)
        if not MEMBER_RE.match(s.name) or not MEMBER_RE.match(s.namespace):
            raise TopologyError(spath + ("name",), f"invalid service name {s.full_name!r}")
        if s.full_name in svc_seen:
            raise TopologyError(spath + ("name",), f"service {s.full_name!r} already defined at {format_path(svc_seen[s.full_name])}")
        svc_seen[s.full_name] = spath
        if not s.headless:
            cip = _addr(s.cluster_ip, spath + ("clusterIP",))
            if cip not in svc_cidr or cip in (svc_cidr.network_address, svc_cidr.broadcast_address):
                raise TopologyError(spath + ("clusterIP",), f"{cip} is not a usable address of the service CIDR {svc_cidr}")
            if cip in cip_seen:
                raise TopologyError(spath + ("clusterIP",), f"{cip} already used at {format_path(cip_seen[cip])}")
            cip_seen[cip] = spath + ("clusterIP",)
        if (s.selector is None) == (s.backends is None):
            raise TopologyError(spath, "give exactly one of 'selector' or 'backends'")
        if s.backends is not None:
            for j, name in enumerate(s.backends):
                if name not in pods_by_name:
                    raise TopologyError(spath + ("backends", j), f"unknown pod {name!r}")
            selected = [pods_by_name[n] for n in dict.fromkeys(s.backends)]
        else:
            assert s.selector is not None
            if not s.selector:
                raise TopologyError(spath + ("selector",), "an empty selector would select every pod")
            selected = [p for p in topo.pods if topo.selects(s, p)]
        selected.sort(key=lambda p: int(pod_ips[p.name]))
        if not s.ports:
            raise TopologyError(spath + ("ports",), "a service needs at least one port")
        port_names: set[str] = set()
        port_keys: set[tuple[str, int]] = set()
        for j, sp in enumerate(s.ports):
            ppath = spath + ("ports", j)
            _check_ports(sp.protocol, sp.port, ppath)
            if not PORT_NAME_RE.match(sp.name):
                raise TopologyError(ppath + ("name",), f"invalid port name {sp.name!r}")
            if not sp.name and len(s.ports) > 1:
                raise TopologyError(ppath + ("name",), "a service with more than one port must name each of them")
            if sp.name in port_names or (sp.protocol, sp.port) in port_keys:
                raise TopologyError(ppath, f"duplicate service port {sp.name or '(unnamed)'} {sp.protocol}/{sp.port}")
            port_names.add(sp.name)
            port_keys.add((sp.protocol, sp.port))
            if isinstance(sp.target, int) and not 1 <= sp.target <= 65535:
                raise TopologyError(ppath + ("targetPort",), f"port {sp.target} out of range 1-65535")
            if isinstance(sp.target, str) and not (sp.target and PORT_NAME_RE.match(sp.target)):
                raise TopologyError(ppath + ("targetPort",), f"invalid port name {sp.target!r}")
            if sp.node_port is not None and s.headless:
                raise TopologyError(ppath + ("nodePort",), "a headless service (clusterIP None) has no node port")
            if sp.node_port is not None:
                lo, hi = NODEPORT_RANGE
                if not lo <= sp.node_port <= hi:
                    raise TopologyError(ppath + ("nodePort",), f"node port {sp.node_port} outside {lo}-{hi}")
                key = (sp.protocol, sp.node_port)
                if key in nodeports:
                    raise TopologyError(ppath + ("nodePort",), f"{sp.protocol} node port {sp.node_port} already used at {format_path(nodeports[key])}")
                nodeports[key] = ppath + ("nodePort",)
            for p in selected:
                target = sp.target_on(p)
                if target is None or not any(pp.protocol == sp.protocol and pp.port == target for pp in p.ports):
                    raise TopologyError(
                        ppath + ("targetPort",),
                        f"backend pod {p.name} has no {sp.protocol} port {sp.target}",
                    )
            endpoints[(s.full_name, sp.name)] = [
                Backend(p.name, p.node, str(pod_ips[p.name]), sp.target_on(p) or 0, p.terminating) for p in selected
            ]

    _check_policies(topo, nodeports)

    from netns_lab import loadbalancer  # it types with topology's classes: imported here, no cycle

    loadbalancer.check(topo, TopologyError)

    # apps need their upstream service, reachable over TCP
    for i, p in enumerate(topo.pods):
        upstream = UPSTREAM.get(p.app)
        if upstream is None:
            continue
        svc = next((s for s in topo.services if s.name == upstream and s.namespace == p.namespace), None)
        if svc is None or svc.headless or not any(sp.protocol == "TCP" for sp in svc.ports):
            raise TopologyError(("pods", i, "app"), f"app {p.app!r} calls service {upstream!r}: define it with a TCP port")

    return AddressPlan(
        node_blocks=node_blocks,
        pod_ips=pod_ips,
        endpoints=endpoints,
    )


TRAFFIC_POLICIES = ("Cluster", "Local")


def _check_policies(topo: Topology, nodeports: dict[tuple[str, int], Path_]) -> None:
    """Traffic policies are Cluster or Local; a healthCheckNodePort only with externalTrafficPolicy Local,
    in the NodePort range and held by no other port (it is a TCP node port of its own)."""
    held: dict[int, Path_] = {port: path for (_, port), path in nodeports.items()}
    for i, s in enumerate(topo.services):
        spath = ("services", i)
        for key, value in (("externalTrafficPolicy", s.external_traffic_policy),
                           ("internalTrafficPolicy", s.internal_traffic_policy)):
            if value is not None and value not in TRAFFIC_POLICIES:
                raise TopologyError(spath + (key,), f"{value!r} is not a traffic policy (use Cluster or Local)")
        if s.external_local and s.type not in ("NodePort", "LoadBalancer"):
            raise TopologyError(spath + ("externalTrafficPolicy",), "externalTrafficPolicy applies to NodePort and LoadBalancer services only")
        hc = s.health_check_node_port
        if hc is None:
            continue
        hpath = spath + ("healthCheckNodePort",)
        if not s.external_local:
            raise TopologyError(hpath, "a healthCheckNodePort needs externalTrafficPolicy: Local")
        lo, hi = NODEPORT_RANGE
        if not lo <= hc <= hi:
            raise TopologyError(hpath, f"health check node port {hc} outside {lo}-{hi}")
        if hc in held:
            raise TopologyError(hpath, f"node port {hc} already used at {format_path(held[hc])}")
        held[hc] = hpath


def upstream_url(topo: Topology, app: str, namespace: str | None = None) -> str | None:
    """URL an app uses to reach its upstream service (in its own namespace) through the service's cluster IP."""
    name = UPSTREAM.get(app)
    if name is None:
        return None
    svc = topo.service(name, namespace)
    port = next(sp for sp in svc.ports if sp.protocol == "TCP")
    return f"http://{svc.cluster_ip}:{port.port}"

