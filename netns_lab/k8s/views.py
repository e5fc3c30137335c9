"""The lab as kubectl shows a cluster: Pod, Service, EndpointSlice and Node objects, and `get`'s tables.

Objects are built from the lab's state (its normalised topology, each pod's address and
process) in the Kubernetes object shape, so `-o json` output reads like `kubectl get -o json`.
EndpointSlices are derived from the services' current backends, as the proxies read them.
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from netns_lab.k8s import names
from netns_lab.state import LabState
from netns_lab.k8s.loadbalancer import external_ip_column, loadbalancer_view
from netns_lab.topology import Pod, Service

KINDS = {
    "pods": ("pod", "pods", "po"),
    "services": ("service", "services", "svc"),
    "endpointslices": ("endpointslice", "endpointslices"),
    "nodes": ("node", "nodes", "no"),
}
VERSION = "v1.28.0-netns-lab"  # what `get nodes` reports as the kubelet version


def kind_of(word: str) -> str | None:
    """`pods`, `services`, `endpointslices` or `nodes` for any of kubectl's spellings (None: not one of them)."""
    for kind, spellings in KINDS.items():
        if word.lower() in spellings:
            return kind
    return None


def _timestamp(text: str | None) -> str | None:
    """The state's `%Y-%m-%dT%H:%M:%S%z` as Kubernetes' RFC 3339 UTC form."""
    if not text:
        return None
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S%z").astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def age(created: str | None, now: float | None = None) -> str:
    """kubectl's AGE column: 42s, 5m, 3h, 2d."""
    if not created:
        return "<unknown>"
    then = calendar.timegm(time.strptime(created, "%Y-%m-%dT%H:%M:%SZ"))
    secs = max(0, int((now or time.time()) - then))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size * (2 if unit != "m" else 1):
            return f"{secs // size}{unit}"
    return f"{secs}s"


class View:
    """One lab's objects, built from its state."""

    def __init__(self, st: LabState, running: Callable[[Any], bool]):
        self.st = st
        self.topo = st.spec()
        self.running = running
        self.created = _timestamp(st.created)

    # -- objects

    def pod(self, pod: Pod) -> dict[str, Any]:
        """A Pod object."""
        rec = self.st.pods.get(pod.name)
        up = rec is not None and self.running(rec.pid)
        meta: dict[str, Any] = {"name": pod.name, "namespace": pod.namespace, "labels": pod.all_labels() if not pod.labels else dict(pod.labels),
                                "creationTimestamp": _timestamp(rec and rec.created) or self.created}
        if pod.deletion_timestamp:  # a graceful delete in progress
            meta["deletionTimestamp"] = pod.deletion_timestamp
            meta["deletionGracePeriodSeconds"] = pod.deletion_grace_period_seconds
        if pod.owner:
            meta["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": pod.owner, "controller": True}]
        node_ip = next(n.address for n in self.topo.nodes if n.name == pod.node)
        container = {"name": pod.container or pod.app, "image": pod.image or f"netns-lab/{pod.app}",
                     "ports": [{**({"name": pp.name} if pp.name else {}), "containerPort": pp.port, "protocol": pp.protocol}
                               for pp in pod.ports]}
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": meta,
            "spec": {"nodeName": pod.node, "containers": [container]},
            "status": {
                "phase": "Running" if up else "Failed",
                "hostIP": node_ip,
                "podIP": rec and rec.ip,
                "podIPs": [{"ip": rec and rec.ip}],
                "containerStatuses": [{"name": container["name"], "image": container["image"], "ready": up,
                                       "restartCount": 0, "started": up}],
            },
        }

    def service(self, svc: Service) -> dict[str, Any]:
        """A Service object."""
        ports = []
        for sp in svc.ports:
            port: dict[str, Any] = {"protocol": sp.protocol, "port": sp.port, "targetPort": sp.target}
            if sp.name:
                port = {"name": sp.name, **port}
            if sp.node_port:
                port["nodePort"] = sp.node_port
            ports.append(port)
        spec: dict[str, Any] = {"type": svc.type, "clusterIP": svc.cluster_ip, "clusterIPs": [svc.cluster_ip], "ports": ports}
        if svc.selector:
            spec["selector"] = dict(svc.selector)
        if svc.type in ("NodePort", "LoadBalancer"):
            spec["externalTrafficPolicy"] = svc.external_traffic_policy or "Cluster"
        if svc.health_check_node_port:
            spec["healthCheckNodePort"] = svc.health_check_node_port
        spec["internalTrafficPolicy"] = svc.internal_traffic_policy or "Cluster"
        metadata: dict[str, Any] = {"name": svc.name, "namespace": svc.namespace, "creationTimestamp": self.created}
        status: dict[str, Any] = {"loadBalancer": {}}
        loadbalancer_view(svc, metadata, spec, status)
        return {"apiVersion": "v1", "kind": "Service", "metadata": metadata, "spec": spec, "status": status}

    def endpointslice(self, svc: Service) -> dict[str, Any]:
        """The EndpointSlice of a service: its pods (a terminating one serving, not ready) and ports, from the
        state's current backends."""
        rec = next((s for s in self.st.services if s.name == svc.full_name), None)
        endpoints: dict[str, dict[str, Any]] = {}
        ports = []
        for sp in rec.ports if rec else []:
            ports.append({"name": sp.name, "protocol": sp.protocol, "port": sp.backends[0].port if sp.backends else None})
            for b in sp.backends:
                pod = self.st.pods.get(b.pod)
                conditions = {"ready": not b.terminating, "serving": True, "terminating": b.terminating}
                endpoints.setdefault(b.ip, {"addresses": [b.ip], "conditions": conditions,
                                            "nodeName": pod and pod.node, "targetRef": {"kind": "Pod", "namespace": svc.namespace, "name": b.pod}})
        return {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": f"{svc.name}-{names.pod_suffix(svc.full_name, 0)}", "namespace": svc.namespace,
                         "labels": {"kubernetes.io/service-name": svc.name,
                                    "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
                         "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": svc.name}],
                         "creationTimestamp": self.created},
            "addressType": "IPv4",
            "endpoints": sorted(endpoints.values(), key=lambda e: tuple(int(x) for x in e["addresses"][0].split("."))),
            "ports": ports,
        }

    def node(self, name: str) -> dict[str, Any]:
        """A Node object."""
        n = self.topo.node(name)
        rec = self.st.members.get(name)
        block = rec and rec.pod_block
        labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}
        if n.control_plane:
            labels["node-role.kubernetes.io/control-plane"] = ""
        spec: dict[str, Any] = {"podCIDR": block, "podCIDRs": [block]}
        if n.control_plane:
            spec["taints"] = [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": labels, "creationTimestamp": self.created},
            "spec": spec,
            "status": {"addresses": [{"type": "InternalIP", "address": n.address}, {"type": "Hostname", "address": name}],
                       "conditions": [{"type": "Ready", "status": "True"}],
                       "nodeInfo": {"kubeletVersion": VERSION, "kernelVersion": _kernel(), "osImage": "netns-lab"}},
        }

    # -- selection

    def objects(self, kind: str, name: str | None, namespace: str | None) -> list[dict[str, Any]]:
        """Objects of a kind, in `namespace` (None: all), optionally only the one called `name`, in kubectl's order."""
        if kind == "nodes":
            items = [self.node(n.name) for n in self.topo.nodes]
        elif kind == "pods":
            items = [self.pod(p) for p in self.topo.pods if p.name in self.st.pods]
        elif kind == "services":
            items = [self.service(s) for s in self.topo.services]
        else:
            items = [self.endpointslice(s) for s in self.topo.services]
        if namespace is not None and kind != "nodes":
            items = [o for o in items if o["metadata"]["namespace"] == namespace]
        if name is not None:
            items = [o for o in items if o["metadata"]["name"] == name]
        # the API server lists by key, namespace then name: kubectl's order, whatever order pods were made in
        return sorted(items, key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))


def _kernel() -> str:
    """This machine's kernel release (every node of the lab shares it)."""
    import os

    return os.uname().release


def as_list(items: list[dict[str, Any]]) -> dict[str, Any]:
    """kubectl's `-o json` wrapper for several objects."""
    return {"apiVersion": "v1", "kind": "List", "items": items, "metadata": {"resourceVersion": ""}}


def table(kind: str, items: list[dict[str, Any]], wide: bool, all_namespaces: bool) -> list[list[str]]:
    """kubectl's table for a kind: a header row, then one row per object."""
    rows: list[list[str]]
    if kind == "pods":
        rows = [["NAME", "READY", "STATUS", "RESTARTS", "AGE"] + (["IP", "NODE", "NOMINATED NODE", "READINESS GATES"] if wide else [])]
        for o in items:
            ready = o["status"]["containerStatuses"][0]["ready"]
            status = "Terminating" if o["metadata"].get("deletionTimestamp") else o["status"]["phase"]  # as kubectl prints it
            row = [o["metadata"]["name"], f"{int(ready)}/1", status, "0", age(o["metadata"]["creationTimestamp"])]
            rows.append(row + ([o["status"]["podIP"], o["spec"]["nodeName"], "<none>", "<none>"] if wide else []))
    elif kind == "services":
        rows = [["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"] + (["SELECTOR"] if wide else [])]
        for o in items:
            ports = ",".join(f"{p['port']}{':' + str(p['nodePort']) if p.get('nodePort') else ''}/{p['protocol']}" for p in o["spec"]["ports"])
            row = [o["metadata"]["name"], o["spec"]["type"], o["spec"]["clusterIP"], external_ip_column(o), ports,
                   age(o["metadata"]["creationTimestamp"])]
            sel = ",".join(f"{k}={v}" for k, v in o["spec"].get("selector", {}).items()) or "<none>"
            rows.append(row + ([sel] if wide else []))
    elif kind == "endpointslices":
        rows = [["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"]]
        for o in items:
            ports = ",".join(str(p["port"]) for p in o["ports"] if p["port"] is not None) or "<unset>"
            eps = ",".join(e["addresses"][0] for e in o["endpoints"]) or "<unset>"
            rows.append([o["metadata"]["name"], o["addressType"], ports, eps, age(o["metadata"]["creationTimestamp"])])
    else:
        rows = [["NAME", "STATUS", "ROLES", "AGE", "VERSION"] + (["INTERNAL-IP", "EXTERNAL-IP", "POD-CIDR", "KERNEL-VERSION"] if wide else [])]
        for o in items:
            roles = "control-plane" if "node-role.kubernetes.io/control-plane" in o["metadata"]["labels"] else "<none>"
            row = [o["metadata"]["name"], "Ready", roles, age(o["metadata"]["creationTimestamp"]), VERSION]
            rows.append(row + ([o["status"]["addresses"][0]["address"], "<none>", o["spec"]["podCIDR"] or "<none>",
                                o["status"]["nodeInfo"]["kernelVersion"]] if wide else []))
    if all_namespaces and kind != "nodes":
        rows = [["NAMESPACE"] + rows[0]] + [[o["metadata"]["namespace"]] + r for o, r in zip(items, rows[1:])]
    return rows


def format_table(rows: list[list[str]]) -> str:
    """Columns padded to their widest cell, three spaces apart, as kubectl prints them."""
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("   ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
