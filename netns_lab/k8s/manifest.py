"""Kubernetes manifests -> the lab's Topology: Namespaces, Services, Deployments, ReplicaSets and Pods.

Sources are files, directories (their .yaml/.yml/.json files, sorted) and `-` (stdin), each
possibly multi-document. Kinds the lab has no use for (ServiceAccount, ConfigMap, ...) are
skipped with one line each. `apply` merges objects into a topology as `kubectl apply` does
(same kind, namespace and name: replaced; a Deployment whose template is unchanged keeps its
pods and only scales), `delete` removes them. The result is validated by topology.plan();
any problem is one ManifestError naming the file, the line and the field, and the topology
it was applied to is left as it was.

What a manifest becomes (`netns-lab topology` shows it):
- a Service: its clusterIP (given, or the lowest free address of the service CIDR from the
  10th on), nodePorts (given, or the lowest free in 30000-32767), ports named or not,
  targetPort a number or a container port's name; `clusterIP: None` is headless;
- a Deployment or ReplicaSet: a Workload with its template, and `replicas` pods named
  `<deployment>-<hash>-<5 chars>` (names.py) placed by nodeName, nodeSelector
  kubernetes.io/hostname, or else on the least busy worker node;
- a container image: calico/yaobank-<app> runs that yaobank app, any other the test
  server; the annotation `netns-lab/app` chooses explicitly.
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass, field
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any, TextIO

from netns_lab.apps import APP_ANNOTATION, APPS, app_for_image
from netns_lab.errors import LabError
from netns_lab.k8s import loadbalancer as k8s_loadbalancer
from netns_lab.k8s import names
from netns_lab.topology import (
    HEADLESS,
    MEMBER_RE,
    NODEPORT_RANGE,
    PROTOCOLS,
    Pod,
    PodPort,
    PodTemplate,
    Service,
    ServicePort,
    Topology,
    TRAFFIC_POLICIES,
    TopologyError,
    Workload,
    compose_documents,
    format_path,
    plan,
)

Path_ = tuple[Any, ...]
SUFFIXES = (".yaml", ".yml", ".json")
WORKLOAD_KINDS = ("Deployment", "ReplicaSet")
HANDLED_KINDS = ("Namespace", "Service", "Pod", *WORKLOAD_KINDS)
HOSTNAME_LABEL = "kubernetes.io/hostname"
# node labels every lab node has, so selecting on them places nothing
ANY_NODE_LABELS = {"kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}
CLUSTER_IP_OFFSET = 10  # allocation starts here: .1 is the API server's, as in a cluster
SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer")
NODEPORT_TYPES = ("NodePort", "LoadBalancer")  # types that get node ports (allocateLoadBalancerNodePorts)


class ManifestError(LabError):
    """A manifest problem: `file:line N: Kind namespace/name: field: problem`."""


# --------------------------------------------------------------------------- reading


@dataclass
class Source:
    """One manifest text and where it came from."""

    name: str
    text: str


def read_sources(args: list[str], stdin: TextIO | None = None) -> list[Source]:
    """The texts of FILE, DIR (its .yaml/.yml/.json files, sorted) and `-` (stdin) arguments; LabError if unreadable."""
    out: list[Source] = []
    for arg in args:
        if arg == "-":
            out.append(Source("<stdin>", (stdin or sys.stdin).read()))
            continue
        p = Path(arg)
        files = sorted(f for f in p.iterdir() if f.suffix in SUFFIXES and f.is_file()) if p.is_dir() else [p]
        if p.is_dir() and not files:
            raise LabError(f"manifest directory {arg!r} has no {', '.join(SUFFIXES)} files")
        for f in files:
            try:
                out.append(Source(str(f), f.read_text()))
            except OSError as exc:
                raise LabError(f"cannot read manifest {str(f)!r}: {exc.strerror}") from None
    return out


@dataclass
class Doc:
    """One Kubernetes object of a manifest, with the marks that locate its fields."""

    source: str
    data: dict[str, Any]
    marks: dict[Path_, Any]
    base: Path_ = ()  # where the object sits in its document (inside a List: ("items", i))

    @property
    def kind(self) -> str:
        """The object's kind."""
        return self.data["kind"]

    @property
    def name(self) -> str:
        """metadata.name."""
        return self.data["metadata"]["name"]

    @property
    def namespace(self) -> str:
        """metadata.namespace, `default` if not given (a Namespace has none)."""
        return self.data["metadata"].get("namespace") or "default"

    @property
    def ref(self) -> str:
        """`Kind namespace/name` (or `Namespace name`), as messages name objects."""
        return f"{self.kind} {self.name}" if self.kind == "Namespace" else f"{self.kind} {self.namespace}/{self.name}"

    def where(self, path: Path_ = ()) -> str:
        """`file:line N` of a field (or of the closest field above it that has a line)."""
        full = self.base + tuple(path)
        while full not in self.marks and full:
            full = full[:-1]
        mark = self.marks.get(full)
        return f"{self.source}:line {mark.line + 1}" if mark is not None else self.source

    def error(self, path: Path_, message: str) -> ManifestError:
        """A ManifestError at field `path` of this object."""
        field_ = format_path(tuple(path))
        return ManifestError(f"{self.where(path)}: {self.ref}: {field_ + ': ' if field_ else ''}{message}")

    def get(self, path: Path_, typ: Any, default: Any = None, required: bool = False) -> Any:
        """The value at `path`, checked against `typ` (a type or tuple of types); ManifestError if wrong or missing."""
        value: Any = self.data
        for part in path:
            if isinstance(value, dict) and part in value:
                value = value[part]
            elif isinstance(value, list) and isinstance(part, int) and part < len(value):
                value = value[part]
            else:
                value = None
                break
        if value is None:
            if required:
                raise self.error(path, "missing required field")
            return default
        types = typ if isinstance(typ, tuple) else (typ,)
        if isinstance(value, bool) and bool not in types:
            raise self.error(path, f"expected {_typename(types)}, got a boolean")
        if not isinstance(value, types):
            raise self.error(path, f"expected {_typename(types)}, got {_kind(value)}")
        return value


def _typename(types: tuple[type, ...]) -> str:
    """`a string`, `an integer or a string`, ... for messages."""
    words = {str: "a string", int: "an integer", dict: "a mapping", list: "a list", bool: "true or false"}
    return " or ".join(words.get(t, t.__name__) for t in types)


def _kind(value: Any) -> str:
    """Human name of a YAML value's type."""
    return {dict: "a mapping", list: "a list", str: "a string", int: "an integer", float: "a number"}.get(
        type(value), type(value).__name__
    )


def parse(sources: list[Source]) -> tuple[list[Doc], list[str]]:
    """Every object of the sources (Lists expanded), and one line per object of a kind the lab skips."""
    docs: list[Doc] = []
    skipped: list[str] = []
    for src in sources:
        try:
            parsed = compose_documents(src.text)
        except TopologyError as exc:
            raise ManifestError(f"{src.name}:{exc.where}: {exc.message}" if exc.where else f"{src.name}: {exc.message}") from None
        for data, marks in parsed:
            if data is None:
                continue  # an empty document, e.g. after a trailing `---`
            items: list[tuple[Path_, Any]] = [((), data)]
            if isinstance(data, dict) and data.get("kind") == "List" and isinstance(data.get("items"), list):
                items = [(("items", i), item) for i, item in enumerate(data["items"])]
            for base, obj in items:
                doc = _check_header(Doc(src.name, obj, marks, base))
                if doc.kind in HANDLED_KINDS:
                    docs.append(doc)
                else:
                    skipped.append(f"{doc.kind.lower()}/{doc.name} skipped: the lab has no use for a {doc.kind}")
    return docs, skipped


def _check_header(doc: Doc) -> Doc:
    """apiVersion, kind and metadata.name are there and well-formed."""
    if not isinstance(doc.data, dict):
        raise ManifestError(f"{doc.where()}: expected a Kubernetes object (a mapping), got {_kind(doc.data)}")
    for key in ("apiVersion", "kind"):
        if not isinstance(doc.data.get(key), str) or not doc.data[key]:
            raise ManifestError(f"{doc.where((key,))}: {key}: missing or not a string")
    meta = doc.data.get("metadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
        raise ManifestError(f"{doc.where(('metadata',))}: {doc.data['kind']}: metadata.name: missing or not a string")
    for key in ("name", "namespace"):
        value = meta.get(key)
        if value is not None and (not isinstance(value, str) or not MEMBER_RE.match(value)):
            raise doc.error(("metadata", key), f"invalid {key} {value!r}: lowercase letters, digits and '-', at most 63")
    return doc


# --------------------------------------------------------------------------- objects -> topology parts


@dataclass
class Origin:
    """Where a topology object came from: its Doc and the document path of each topology field."""

    doc: Doc
    fields: dict[Path_, Path_] = field(default_factory=dict)  # topology sub-path -> document path

    def locate(self, sub: Path_, message: str) -> ManifestError:
        """The ManifestError for a plan() problem at topology sub-path `sub` of this object."""
        probe = tuple(sub)
        while probe and probe not in self.fields:
            probe = probe[:-1]
        return self.doc.error(self.fields.get(probe, ()), message)


def _labels(doc: Doc, path: Path_) -> dict[str, str]:
    """A labels/selector/annotations mapping of strings."""
    value = doc.get(path, dict, {})
    for k, v in value.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise doc.error(path + (k,), "keys and values must be strings")
    return dict(value)


def _pod_template(doc: Doc, meta: Path_, spec: Path_, nodes: list[str]) -> tuple[PodTemplate, dict[Path_, Path_]]:
    """The normalised pod from a pod's metadata and spec (a Pod's own or a template's), and its field origins."""
    fields: dict[Path_, Path_] = {(): meta, ("name",): meta + ("name",), ("labels",): meta + ("labels",)}
    labels = _labels(doc, meta + ("labels",))
    annotations = _labels(doc, meta + ("annotations",))
    containers = doc.get(spec + ("containers",), list, required=True)
    if not containers:
        raise doc.error(spec + ("containers",), "a pod needs at least one container")
    ports: list[PodPort] = []
    for c, _ in enumerate(containers):
        cpath = spec + ("containers", c)
        doc.get(cpath, dict)
        doc.get(cpath + ("name",), str, required=True)
        doc.get(cpath + ("image",), str, required=True)
        for j, _ in enumerate(doc.get(cpath + ("ports",), list, [])):
            ppath = cpath + ("ports", j)
            doc.get(ppath, dict)
            number = doc.get(ppath + ("containerPort",), int, required=True)
            proto = doc.get(ppath + ("protocol",), str, "TCP")
            if proto not in PROTOCOLS:
                raise doc.error(ppath + ("protocol",), f"unsupported protocol {proto!r} (use TCP or UDP)")
            fields[("ports", len(ports))] = ppath
            fields[("ports", len(ports), "port")] = ppath + ("containerPort",)
            fields[("ports", len(ports), "protocol")] = ppath + ("protocol",)
            fields[("ports", len(ports), "name")] = ppath + ("name",)
            ports.append(PodPort(doc.get(ppath + ("name",), str, ""), proto, number))
    fields[("ports",)] = spec + ("containers",)
    image = containers[0]["image"]
    app = app_for_image(image)
    fields[("app",)] = spec + ("containers", 0, "image")
    if APP_ANNOTATION in annotations:
        app = annotations[APP_ANNOTATION]
        fields[("app",)] = meta + ("annotations", APP_ANNOTATION)
        if app not in APPS:
            raise doc.error(fields[("app",)], f"unknown app {app!r} (known: {', '.join(APPS)})")
    node = doc.get(spec + ("nodeName",), str)
    fields[("node",)] = spec + ("nodeName",)
    selector = _labels(doc, spec + ("nodeSelector",))
    for key, value in selector.items():
        if key == HOSTNAME_LABEL:
            if node is not None and node != value:
                raise doc.error(spec + ("nodeSelector", key), f"node {value!r} contradicts nodeName {node!r}")
            node = value
            fields[("node",)] = spec + ("nodeSelector", key)
        elif ANY_NODE_LABELS.get(key) != value:
            raise doc.error(spec + ("nodeSelector", key), f"the lab's nodes have no label {key}={value} "
                                                          f"(place pods with {HOSTNAME_LABEL} or nodeName)")
    if node is not None and node not in nodes:
        raise doc.error(fields[("node",)], f"unknown node {node!r} (nodes: {', '.join(nodes)})")
    template = PodTemplate(app=app, ports=ports, labels=labels, image=image, container=containers[0]["name"], node=node)
    return template, fields


def _service(doc: Doc) -> tuple[Service, str, dict[Path_, Path_]]:
    """A Service object as the topology's Service (clusterIP and nodePorts left unset to allocate), and its type."""
    spec = ("spec",)
    doc.get(spec, dict, required=True)
    typ = doc.get(spec + ("type",), str, "ClusterIP")
    if typ not in SERVICE_TYPES:
        raise doc.error(spec + ("type",), f"service type {typ!r} is not supported (use {' or '.join(SERVICE_TYPES)})")
    policies = {}
    for key in ("externalTrafficPolicy", "internalTrafficPolicy"):
        policies[key] = doc.get(spec + (key,), str)
        if policies[key] not in (None, *TRAFFIC_POLICIES):
            raise doc.error(spec + (key,), f"{policies[key]!r} is not a traffic policy (use Cluster or Local)")
    if policies["externalTrafficPolicy"] == "Local" and typ not in NODEPORT_TYPES:
        raise doc.error(spec + ("externalTrafficPolicy",), f"a {typ} service has no external traffic (set type: NodePort or LoadBalancer)")
    hc_port = doc.get(spec + ("healthCheckNodePort",), int)
    if hc_port is not None and policies["externalTrafficPolicy"] != "Local":
        raise doc.error(spec + ("healthCheckNodePort",), "a healthCheckNodePort needs externalTrafficPolicy: Local")
    cluster_ip = doc.get(spec + ("clusterIP",), str, "") or None
    if cluster_ip == HEADLESS and typ in NODEPORT_TYPES:
        raise doc.error(spec + ("clusterIP",), f"a {typ} service cannot be headless (clusterIP None)")
    fields: dict[Path_, Path_] = {(): (), ("name",): ("metadata", "name"), ("clusterIP",): spec + ("clusterIP",),
                                  ("selector",): spec + ("selector",), ("ports",): spec + ("ports",)}
    ports: list[ServicePort] = []
    raw_ports = doc.get(spec + ("ports",), list, required=True)
    for j, _ in enumerate(raw_ports):
        ppath = spec + ("ports", j)
        doc.get(ppath, dict)
        for key in ("name", "protocol", "port", "targetPort", "nodePort"):
            fields[("ports", j, key)] = ppath + (key,)
        fields[("ports", j)] = ppath
        node_port = doc.get(ppath + ("nodePort",), int)
        if node_port is not None and typ not in NODEPORT_TYPES:
            raise doc.error(ppath + ("nodePort",), f"a {typ} service has no node port (set type: NodePort)")
        ports.append(ServicePort(
            name=doc.get(ppath + ("name",), str, ""),
            protocol=doc.get(ppath + ("protocol",), str, "TCP"),
            port=doc.get(ppath + ("port",), int, required=True),
            target_port=doc.get(ppath + ("targetPort",), (int, str)),
            node_port=node_port,
        ))
    selector = _labels(doc, spec + ("selector",))
    if not selector:
        raise doc.error(spec + ("selector",), "a service without a selector is not supported (its endpoints would be hand-made)")
    for key in ("externalTrafficPolicy", "internalTrafficPolicy", "healthCheckNodePort"):
        fields[(key,)] = spec + (key,)
    svc = Service(doc.name, cluster_ip or "", ports, namespace=doc.namespace, selector=selector,
                  external_traffic_policy=_policy(policies["externalTrafficPolicy"]),
                  internal_traffic_policy=_policy(policies["internalTrafficPolicy"]),
                  health_check_node_port=hc_port)
    k8s_loadbalancer.read(doc, typ, svc)
    return svc, typ, fields


def _policy(value: str | None) -> str | None:
    """A traffic policy as the topology keeps it: Cluster (the default) as None, so old labs compare equal."""
    return None if value in (None, "Cluster") else value


def _workload(doc: Doc, nodes: list[str]) -> tuple[Workload, dict[Path_, Path_]]:
    """A Deployment or ReplicaSet as a Workload (template hashed as the Deployment controller does)."""
    spec = ("spec",)
    doc.get(spec, dict, required=True)
    replicas = doc.get(spec + ("replicas",), int, 1)
    if replicas < 0:
        raise doc.error(spec + ("replicas",), f"replicas {replicas} must not be negative")
    if doc.get(spec + ("selector", "matchExpressions"), list):
        raise doc.error(spec + ("selector", "matchExpressions"), "matchExpressions is not supported (use matchLabels)")
    selector = _labels(doc, spec + ("selector", "matchLabels"))
    if not selector:
        raise doc.error(spec + ("selector",), "missing required field matchLabels")
    tpath = spec + ("template",)
    doc.get(tpath, dict, required=True)
    template, fields = _pod_template(doc, tpath + ("metadata",), tpath + ("spec",), nodes)
    if not selector.items() <= template.labels.items():
        raise doc.error(tpath + ("metadata", "labels"), "selector does not match template labels")
    template.hash = names.template_hash(doc.data[spec[0]]["template"])
    limit = names.POD_NAME_MAX - names.SUFFIX_LEN - 1 - (len(template.hash) + 1 if doc.kind == "Deployment" else 0)
    if len(doc.name) > limit:
        raise doc.error(("metadata", "name"), f"name longer than {limit} characters: its pods' names would not fit 63")
    fields[()] = ("metadata",)
    return Workload(doc.kind, doc.name, doc.namespace, replicas, selector, template), fields


# --------------------------------------------------------------------------- apply / delete


@dataclass
class Result:
    """A manifest applied to (or deleted from) a topology: the new topology and what it did, kubectl style."""

    topology: Topology
    lines: list[str] = field(default_factory=list)  # `service/customer created`, `... skipped: ...`


def _key(kind: str, namespace: str, name: str) -> tuple[str, str, str]:
    """Identity of an object."""
    return (kind, namespace, name)


class _Applier:
    """Merges manifest objects into a copy of a topology, remembering each object's origin for errors."""

    def __init__(self, base: Topology):
        self.topo = copy.deepcopy(base)
        self.origins: dict[tuple[str, int], Origin] = {}  # ("services"|"pods", index) -> origin
        self.lines: list[str] = []
        self.svc_origin: dict[str, Origin] = {}
        self.pod_origin: dict[str, Origin] = {}

    def namespaces_known(self, docs: list[Doc]) -> set[str]:
        """Namespaces that exist after this apply: the topology's and the manifest's."""
        return set(self.topo.all_namespaces()) | {d.name for d in docs if d.kind == "Namespace"}

    def apply(self, docs: list[Doc]) -> None:
        """Merge every object; refuse duplicates within the manifest and unknown namespaces."""
        seen: dict[tuple[str, str, str], Doc] = {}
        known = self.namespaces_known(docs)
        for doc in docs:
            key = _key(doc.kind, doc.namespace if doc.kind != "Namespace" else "", doc.name)
            if key in seen:
                raise doc.error(("metadata", "name"), f"defined twice (first at {seen[key].where()})")
            seen[key] = doc
            if doc.kind != "Namespace" and doc.namespace not in known:
                raise doc.error(("metadata", "namespace"), f"namespace {doc.namespace!r} not found (add a Namespace object)")
        for doc in sorted(docs, key=lambda d: d.kind != "Namespace"):
            getattr(self, f"_apply_{doc.kind.lower()}", self._apply_workload)(doc)

    def _say(self, doc: Doc, verb: str) -> None:
        """One kubectl-style line: `service/customer created`."""
        self.lines.append(f"{doc.kind.lower()}/{doc.name} {verb}")

    def _apply_namespace(self, doc: Doc) -> None:
        """A namespace: recorded."""
        if doc.name in self.topo.namespaces:
            self._say(doc, "unchanged")
            return
        self.topo.namespaces.append(doc.name)
        self._say(doc, "created")

    def _apply_service(self, doc: Doc) -> None:
        """A service: new, or replacing the one of the same name (keeping its allocated clusterIP and nodePorts)."""
        svc, typ, fields = _service(doc)
        old = next((s for s in self.topo.services if (s.namespace, s.name) == (svc.namespace, svc.name)), None)
        if old is not None:
            if not svc.cluster_ip and not old.headless:
                svc.cluster_ip = old.cluster_ip
            elif svc.cluster_ip and svc.cluster_ip != old.cluster_ip:
                raise doc.error(("spec", "clusterIP"), f"field is immutable (the service has {old.cluster_ip})")
            for sp in svc.ports:
                was = next((o for o in old.ports if (o.protocol, o.port) == (sp.protocol, sp.port)), None)
                if sp.node_port is None and was is not None and typ in NODEPORT_TYPES:
                    sp.node_port = was.node_port
            if svc.health_check_node_port is None and svc.external_local:
                svc.health_check_node_port = old.health_check_node_port
        self._check_clashes(doc, svc, old)
        if not svc.cluster_ip:
            svc.cluster_ip = self._free_cluster_ip(doc)
        for j, sp in enumerate(svc.ports):
            if sp.node_port is None and typ in NODEPORT_TYPES:  # NodePort ports without a nodePort get one allocated
                sp.node_port = self._free_node_port(doc, j, svc)
        if svc.external_local and svc.health_check_node_port is None:  # kube-proxy's health port, allocated
            svc.health_check_node_port = self._free_node_port(doc, None, svc)
        k8s_loadbalancer.allocate(doc, self.topo, svc, typ, old)
        unchanged = old == svc
        if old is not None:
            self.topo.services[self.topo.services.index(old)] = svc
        else:
            self.topo.services.append(svc)
        self.svc_origin[svc.full_name] = Origin(doc, fields)
        self._say(doc, "unchanged" if unchanged else "configured" if old else "created")

    def _check_clashes(self, doc: Doc, svc: Service, old: Service | None) -> None:
        """Refuse a clusterIP or nodePort another service holds, naming that service."""
        others = [s for s in self.topo.services if s is not old]
        if svc.cluster_ip and svc.cluster_ip != HEADLESS:
            holder = next((s for s in others if s.cluster_ip == svc.cluster_ip), None)
            if holder:
                raise doc.error(("spec", "clusterIP"), f"{svc.cluster_ip} is already allocated to service {holder.full_name}")
        for j, sp in enumerate(svc.ports):
            if sp.node_port is None:
                continue
            holder = next((s for s in others for o in s.ports if o.node_port == sp.node_port), None)
            if holder:
                raise doc.error(("spec", "ports", j, "nodePort"),
                                f"node port {sp.node_port} is already allocated to service {holder.full_name}")

    def _free_cluster_ip(self, doc: Doc) -> str:
        """The lowest free address of the service CIDR from the 10th on."""
        cidr = IPv4Network(self.topo.service_cidr)
        used = {s.cluster_ip for s in self.topo.services}
        for i, ip in enumerate(cidr.hosts()):
            if i + 1 >= CLUSTER_IP_OFFSET and str(ip) not in used:
                return str(ip)
        raise doc.error(("spec", "clusterIP"), f"the service CIDR {cidr} is full")

    def _free_node_port(self, doc: Doc, j: int | None, svc: Service) -> int:
        """The lowest node port nobody holds, `svc` (being applied) included (j: the port it is for; None: the
        health check node port)."""
        services = [*self.topo.services, svc]
        used = {sp.node_port for s in services for sp in s.ports} | {s.health_check_node_port for s in services}
        lo, hi = NODEPORT_RANGE
        port = next((p for p in range(lo, hi + 1) if p not in used), None)
        if port is None:
            where = ("spec", "ports", j, "nodePort") if j is not None else ("spec", "healthCheckNodePort")
            raise doc.error(where, f"no free node port left in {lo}-{hi}")
        return port

    def _apply_pod(self, doc: Doc) -> None:
        """A bare pod: placed, new or replacing the pod of that name."""
        template, fields = _pod_template(doc, ("metadata",), ("spec",), [n.name for n in self.topo.nodes])
        old = next((p for p in self.topo.pods if p.name == doc.name), None)
        if old is not None and old.namespace != doc.namespace:
            raise doc.error(("metadata", "name"), f"pod name {doc.name!r} is taken by pod {old.namespace}/{old.name} "
                                                  "(pods have one namespace each here: names are unique across namespaces)")
        if old is not None:
            self.topo.pods.remove(old)
        pod = _pod_from(template, doc.name, doc.namespace, None, template.node or names.spread(self.topo))
        if old is not None:  # applying a terminating pod does not stop its deletion
            pod.deletion_timestamp, pod.deletion_grace_period_seconds = old.deletion_timestamp, old.deletion_grace_period_seconds
        if old is not None and _same_pod(old, pod):
            pod.node = old.node
        self.topo.pods.append(pod)
        self.pod_origin[pod.name] = Origin(doc, fields)
        self._say(doc, "unchanged" if old is not None and old == pod else "configured" if old else "created")

    def _apply_workload(self, doc: Doc) -> None:
        """A Deployment or ReplicaSet: recorded, and its pods brought to `replicas` (all new ones if the template changed)."""
        wl, fields = _workload(doc, [n.name for n in self.topo.nodes])
        old = next((w for w in self.topo.workloads if (w.kind, w.namespace, w.name) == (wl.kind, wl.namespace, wl.name)), None)
        if old is not None:
            wl.created = old.created
            if old.replicaset != wl.replicaset:
                self.topo.pods = [p for p in self.topo.pods if p.owner != old.replicaset or p.namespace != old.namespace]
            self.topo.workloads[self.topo.workloads.index(old)] = wl
        else:
            self.topo.workloads.append(wl)
        unchanged = old == wl
        scale(self.topo, wl, wl.replicas)
        for p in self.topo.pods:
            if p.owner == wl.replicaset and p.namespace == wl.namespace:
                self.pod_origin[p.name] = Origin(doc, fields)
        self._say(doc, "unchanged" if unchanged else "configured" if old else "created")

    def check(self) -> Topology:
        """Validate the merged topology; a problem is located in the manifest object it comes from."""
        try:
            plan(self.topo)
        except TopologyError as exc:
            raise self._locate(exc) from None
        return self.topo

    def _locate(self, exc: TopologyError) -> LabError:
        """A plan() error as a ManifestError at the manifest field it comes from (a plain one for the base's objects)."""
        path = exc.path
        origin = None
        if len(path) >= 2 and path[0] == "services" and isinstance(path[1], int) and path[1] < len(self.topo.services):
            origin = self.svc_origin.get(self.topo.services[path[1]].full_name)
        elif len(path) >= 2 and path[0] == "pods" and isinstance(path[1], int) and path[1] < len(self.topo.pods):
            pod = self.topo.pods[path[1]]
            origin = self.pod_origin.get(pod.name)
            if origin is not None and pod.owner:
                return origin.locate(path[2:], f"pod {pod.name}: {exc.message}")
        if origin is None:
            return LabError(str(exc))
        return origin.locate(path[2:], exc.message)


def _pod_from(template: PodTemplate, name: str, namespace: str, owner: str | None, node: str) -> Pod:
    """A pod made from a template."""
    labels = dict(template.labels)
    if owner and template.hash and owner.endswith(f"-{template.hash}"):
        labels["pod-template-hash"] = template.hash
    return Pod(name=name, node=node, app=template.app, ports=copy.deepcopy(template.ports), labels=labels,
               namespace=namespace, image=template.image, container=template.container, owner=owner)


def _same_pod(a: Pod, b: Pod) -> bool:
    """Equal but for the node the spreading picked."""
    return a == Pod(**{**b.__dict__, "node": a.node})


def owned_pods(topo: Topology, wl: Workload) -> list[Pod]:
    """The active pods of a workload's current ReplicaSet, oldest first (a terminating pod no longer counts,
    as a ReplicaSet counts only pods without a deletionTimestamp)."""
    return [p for p in topo.pods if p.owner == wl.replicaset and p.namespace == wl.namespace and not p.terminating]


def new_pod(topo: Topology, wl: Workload) -> Pod:
    """Make (and add) one more pod of the workload: the next name, placed by the template or spread."""
    while True:
        name = names.pod_name(wl.replicaset, wl.created)
        wl.created += 1
        if all(p.name != name for p in topo.pods):
            break
    pod = _pod_from(wl.template, name, wl.namespace, wl.replicaset, wl.template.node or names.spread(topo))
    topo.pods.append(pod)
    return pod


def scale(topo: Topology, wl: Workload, replicas: int) -> None:
    """Bring the workload's pods to `replicas` in place: new ones made, the newest removed first."""
    wl.replicas = replicas
    pods = owned_pods(topo, wl)
    for _ in range(replicas - len(pods)):
        new_pod(topo, wl)
    for pod in pods[replicas:][::-1] if len(pods) > replicas else []:
        topo.pods.remove(pod)


def workload_of(topo: Topology, pod: Pod) -> Workload | None:
    """The workload whose ReplicaSet owns `pod` (None: a bare pod, or its workload is gone)."""
    return next((w for w in topo.workloads if w.replicaset == pod.owner and w.namespace == pod.namespace), None)


def replace_pod(topo: Topology, name: str) -> Pod | None:
    """What a ReplicaSet does when its pod is deleted: the pod goes, a new one (new name) comes; None for a bare pod."""
    pod = topo.pod(name)
    wl = workload_of(topo, pod)
    if wl is None:
        return None
    topo.pods.remove(pod)
    return None if pod.terminating else new_pod(topo, wl)  # a terminating pod was replaced when it was marked


def terminate_pod(topo: Topology, name: str, deadline: str, grace: int) -> Pod | None:
    """A graceful delete: the pod is marked terminating until `deadline` (its deletionTimestamp) and stays
    meanwhile; its ReplicaSet makes a new pod at once, as it counts only active pods (that pod is returned;
    None for a bare pod or one already terminating)."""
    pod = topo.pod(name)
    was = pod.terminating
    pod.deletion_timestamp, pod.deletion_grace_period_seconds = deadline, grace
    wl = workload_of(topo, pod)
    return None if wl is None or was else new_pod(topo, wl)


def apply(docs: list[Doc], base: Topology) -> Result:
    """`kubectl apply`: the topology with the objects merged in (base unchanged); ManifestError on any problem."""
    a = _Applier(base)
    a.apply(docs)
    return Result(a.check(), a.lines)


def delete(docs: list[Doc], base: Topology) -> Result:
    """`kubectl delete -f`: the topology without the objects (a namespace takes its contents); ManifestError if one is missing.

    Every object is looked up in the lab as it was before the command, as kubectl does: a file that
    deletes a Namespace and then the objects in it (a file written for `apply`) works."""
    for doc in docs:
        if doc.kind == "Namespace" and doc.name == "default":
            raise doc.error(("metadata", "name"), "the default namespace cannot be deleted")
        if not _present(base, doc):
            raise doc.error(("metadata", "name"), f"namespace {doc.name!r} not found" if doc.kind == "Namespace"
                            else "not found")
    topo = copy.deepcopy(base)
    lines: list[str] = []
    for doc in docs:
        ns = doc.namespace
        if doc.kind == "Namespace":
            topo.namespaces = [n for n in topo.namespaces if n != doc.name]
            topo.services = [s for s in topo.services if s.namespace != doc.name]
            topo.workloads = [w for w in topo.workloads if w.namespace != doc.name]
            topo.pods = [p for p in topo.pods if p.namespace != doc.name]
        elif doc.kind == "Service":
            topo.services = [s for s in topo.services if (s.namespace, s.name) != (ns, doc.name)]
        elif doc.kind == "Pod":
            topo.pods = [p for p in topo.pods if (p.namespace, p.name) != (ns, doc.name)]
        else:
            owners = {w.replicaset for w in topo.workloads if (w.kind, w.namespace, w.name) == (doc.kind, ns, doc.name)}
            topo.workloads = [w for w in topo.workloads if (w.kind, w.namespace, w.name) != (doc.kind, ns, doc.name)]
            topo.pods = [p for p in topo.pods if not (p.owner in owners and p.namespace == ns)]
        lines.append(f"{doc.kind.lower()}/{doc.name} deleted")
    try:
        plan(topo)
    except TopologyError as exc:
        raise LabError(f"deleting these objects would leave the lab broken: {exc}") from None
    return Result(topo, lines)


def _present(topo: Topology, doc: Doc) -> bool:
    """Whether the object a document names is in the topology."""
    ns = doc.namespace
    if doc.kind == "Namespace":
        return doc.name in topo.all_namespaces()
    if doc.kind == "Service":
        return any((s.namespace, s.name) == (ns, doc.name) for s in topo.services)
    if doc.kind == "Pod":
        return any((p.namespace, p.name) == (ns, doc.name) for p in topo.pods)
    return any((w.kind, w.namespace, w.name) == (doc.kind, ns, doc.name) for w in topo.workloads)


def load(args: list[str], base: Topology, stdin: TextIO | None = None) -> Result:
    """Read FILE/DIR/- arguments and apply them to `base`; the skipped kinds' lines come first."""
    docs, skipped = parse(read_sources(args, stdin))
    result = apply(docs, base)
    result.lines[:0] = skipped
    return result


YAOBANK_MANIFEST = Path(__file__).resolve().parents[2] / "examples" / "yaobank.yaml"


def nodes_only(topo: Topology) -> Topology:
    """A topology's fabric, nodes and hosts, with nothing running: what manifests are applied to by default."""
    return Topology(nodes=copy.deepcopy(topo.nodes), hosts=copy.deepcopy(topo.hosts), fabric=copy.deepcopy(topo.fabric),
                    pod_pool=topo.pod_pool, block_size=topo.block_size, service_cidr=topo.service_cidr, name=topo.name)


def default_lab() -> Topology:
    """The default lab: the lesson's nodes and host1, running examples/yaobank.yaml."""
    from netns_lab.topology import default_topology

    return load([str(YAOBANK_MANIFEST)], nodes_only(default_topology())).topology
