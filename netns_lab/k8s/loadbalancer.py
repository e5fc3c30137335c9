"""The LoadBalancer and external-IP fields of a Service manifest, and how `get` shows them.

Read from a manifest: type LoadBalancer (an ingress address allocated from the topology's pool,
or spec.loadBalancerIP when given), spec.externalIPs, spec.loadBalancerSourceRanges,
spec.sessionAffinity ClientIP with sessionAffinityConfig.clientIP.timeoutSeconds, and Calico's
annotation lb.projectcalico.org/external-traffic-strategy: maglev. Shown back in the Kubernetes
shape: status.loadBalancer.ingress, the EXTERNAL-IP column.
"""

from __future__ import annotations

from typing import Any

from netns_lab import loadbalancer
from netns_lab.topology import Service

AFFINITY_TYPES = ("None", "ClientIP")
STRATEGIES = ("maglev",)


def read(doc: Any, typ: str, svc: Service) -> None:
    """Fill svc's external fields from a Service manifest `doc` (a manifest.Doc); ManifestError if wrong."""
    spec = ("spec",)
    svc.external_ips = [doc.get(spec + ("externalIPs", j), str, required=True)
                        for j, _ in enumerate(doc.get(spec + ("externalIPs",), list, []))]
    ranges = [doc.get(spec + ("loadBalancerSourceRanges", j), str, required=True)
              for j, _ in enumerate(doc.get(spec + ("loadBalancerSourceRanges",), list, []))]
    lb_ip = doc.get(spec + ("loadBalancerIP",), str)
    if typ != "LoadBalancer":
        for key, value in (("loadBalancerSourceRanges", ranges), ("loadBalancerIP", lb_ip)):
            if value:
                raise doc.error(spec + (key,), f"only a LoadBalancer service has {key} (set type: LoadBalancer)")
    svc.source_ranges = [r.strip() for r in ranges]
    svc.load_balancer_ip = lb_ip  # None: allocated by the applier
    affinity = doc.get(spec + ("sessionAffinity",), str, "None")
    if affinity not in AFFINITY_TYPES:
        raise doc.error(spec + ("sessionAffinity",), f"{affinity!r} is not one of {', '.join(AFFINITY_TYPES)}")
    timeout_path = spec + ("sessionAffinityConfig", "clientIP", "timeoutSeconds")
    timeout = doc.get(timeout_path, int)
    if affinity == "ClientIP":
        svc.affinity_timeout = loadbalancer.DEFAULT_AFFINITY_TIMEOUT if timeout is None else timeout
        if not 1 <= svc.affinity_timeout <= loadbalancer.MAX_AFFINITY_TIMEOUT:
            raise doc.error(timeout_path, f"{timeout} out of range 1-{loadbalancer.MAX_AFFINITY_TIMEOUT}")
    elif timeout is not None:
        raise doc.error(timeout_path, "needs sessionAffinity: ClientIP")
    annotations = doc.get(("metadata", "annotations"), dict, {})
    strategy = annotations.get(loadbalancer.MAGLEV_ANNOTATION)
    if strategy is not None and strategy not in STRATEGIES:
        raise doc.error(("metadata", "annotations", loadbalancer.MAGLEV_ANNOTATION),
                        f"{strategy!r} is not a strategy the lab has (use {', '.join(STRATEGIES)})")
    svc.maglev = strategy == "maglev"


def allocate(doc: Any, topo: Any, svc: Service, typ: str, old: Service | None) -> None:
    """Give a LoadBalancer service its ingress address: the one it had, else the pool's lowest free one."""
    if typ != "LoadBalancer":
        svc.load_balancer_ip = None
        return
    if svc.load_balancer_ip is None and old is not None and old.load_balancer_ip:
        svc.load_balancer_ip = old.load_balancer_ip
    if svc.load_balancer_ip is None:
        svc.load_balancer_ip = loadbalancer.free_address(topo, exclude=old)
        if svc.load_balancer_ip is None:
            raise doc.error(("spec", "type"), f"the LoadBalancer pool {loadbalancer.pool(topo)} is full")


def loadbalancer_view(svc: Service, metadata: dict[str, Any], spec: dict[str, Any], status: dict[str, Any]) -> None:
    """Add the external fields to a Service object as kubectl shows it."""
    if svc.maglev:
        metadata["annotations"] = {loadbalancer.MAGLEV_ANNOTATION: "maglev"}
    if svc.external_ips:
        spec["externalIPs"] = list(svc.external_ips)
    if svc.source_ranges:
        spec["loadBalancerSourceRanges"] = list(svc.source_ranges)
    if svc.affinity_timeout is not None:
        spec["sessionAffinity"] = "ClientIP"
        spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": svc.affinity_timeout}}
    else:
        spec["sessionAffinity"] = "None"
    if svc.load_balancer_ip:
        status["loadBalancer"] = {"ingress": [{"ip": svc.load_balancer_ip, "ipMode": "VIP"}]}


def external_ip_column(obj: dict[str, Any]) -> str:
    """kubectl's EXTERNAL-IP: ingress addresses and external IPs; <pending> for a LoadBalancer without."""
    addrs = [i["ip"] for i in obj["status"].get("loadBalancer", {}).get("ingress", [])] + obj["spec"].get("externalIPs", [])
    if addrs:
        return ",".join(addrs)
    return "<pending>" if obj["spec"]["type"] == "LoadBalancer" else "<none>"
