"""Make a running lab follow a changed Topology: what `apply -f`, `delete -f`, `scale` and a ReplicaSet's replacement pod do.

The order is Kubernetes': endpoints of pods that go are withdrawn first (kube-proxy's rules
or the BPF maps re-programmed), then those pods are stopped and their namespaces removed,
then new pods are built, attached (eBPF modes) and started, and only once their apps answer
do they become endpoints. Pods that stay keep their address; a new pod takes the lowest free
address of its node's block. The new topology is validated before anything is touched.
"""

from __future__ import annotations

import copy
import time
from ipaddress import IPv4Network
from collections.abc import Callable
from typing import Any

from netns_lab import builder, cleanup, dataplane, naming
from netns_lab.errors import LabError
from netns_lab.topology import AddressPlan, Pod, Topology, TopologyError, plan, topology_from_dict, topology_to_dict

Progress = Callable[[str], None]


def _quiet(msg: str) -> None:
    """Progress sink that drops messages."""


def pod_record(lab: str, pod: Pod, ip: str) -> dict[str, Any]:
    """The state's record of a pod (state.py's `pods` entry)."""
    return {
        "node": pod.node,
        "app": pod.app,
        "ip": ip,
        "netns": naming.netns(lab, pod.name),
        "host_ifname": naming.cali_ifname(lab, pod.name),
        "pid": None,
        "log": str(naming.log_path(lab, pod.name)),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def services_doc(topo: Topology, addr: AddressPlan, ready: set[str] | None = None) -> list[dict[str, Any]]:
    """The state's `services`: each port with its backends (only pods in `ready`, if given)."""
    return [
        {
            "name": s.full_name,
            "cluster_ip": s.cluster_ip,
            "ports": [
                {
                    "name": sp.name,
                    "protocol": sp.protocol,
                    "port": sp.port,
                    "target_port": sp.target,
                    "node_port": sp.node_port,
                    "backends": [{"pod": b.pod, "ip": b.ip, "port": b.port} for b in addr.backends(s, sp)
                                 if ready is None or b.pod in ready],
                }
                for sp in s.ports
            ],
        }
        for s in topo.services
    ]


def _current_plan(st: dict[str, Any], topo: Topology, fresh: set[str]) -> AddressPlan:
    """The plan of `topo`: running pods keep their addresses, `fresh` pods take the lowest address of their
    node's block that no pod has now (so a replacement never gets the address of the pod it replaces)."""
    pinned = copy.deepcopy(topo)
    taken = {rec["ip"] for rec in st.get("pods", {}).values()}
    blocks = {name: IPv4Network(rec["pod_block"]) for name, rec in st.get("members", {}).items() if rec.get("kind") == "node"}
    for p in pinned.pods:
        if p.name not in fresh:
            p.ip = st["pods"][p.name]["ip"]
        elif p.ip is None and p.node in blocks:
            p.ip = next((str(ip) for ip in blocks[p.node].hosts() if str(ip) not in taken), None)
            taken.add(p.ip or "")
    try:
        return plan(pinned)
    except TopologyError as exc:
        raise LabError(str(exc)) from None


def _without_ip(pod: Pod) -> Pod:
    """The pod's definition, address aside (a running pod's address is in the state, not the topology)."""
    return Pod(**{**pod.__dict__, "ip": None})


def reconcile(st: dict[str, Any], new: Topology, progress: Progress = _quiet) -> list[str]:
    """Move the running lab `st` to topology `new`, live; updates `st` (the caller saves it). Returns what it did."""
    from netns_lab.apps import launch

    lab = st["lab"]
    old = topology_from_dict(st["topology"])
    if [n.name for n in old.nodes] != [n.name for n in new.nodes] or old.hosts != new.hosts:
        raise LabError("nodes and hosts of a running lab cannot change (they come from its topology)")
    old_pods = {p.name: p for p in old.pods}
    new_pods = {p.name: p for p in new.pods}
    gone = [p for n, p in old_pods.items() if n not in new_pods or _without_ip(new_pods[n]) != _without_ip(p)]
    added = [p for n, p in new_pods.items() if n not in old_pods or _without_ip(old_pods[n]) != _without_ip(p)]
    addr = _current_plan(st, new, {p.name for p in added})
    gone_names = {p.name for p in gone}
    done: list[str] = []

    # 1. endpoints of the pods that go are withdrawn, new services appear with the pods that stay
    staying = {n for n in st.get("pods", {}) if n not in gone_names}
    st["topology"] = topology_to_dict(new)
    st["services"] = services_doc(new, addr, staying)
    dataplane.reprogram(st)

    # 2. pods that go: app stopped, namespace and veth removed
    for pod in gone:
        cleanup.kill(dataplane.pod_processes(st, pod.name))
        builder.remove_pod(lab, pod)
        del st["pods"][pod.name]
        st.get("members", {}).pop(pod.name, None)
        done.append(f'pod "{pod.name}" deleted from {pod.node}')
        progress(done[-1])

    # 3. new pods: built, attached, started; endpoints once they answer
    started = []
    for pod in added:
        ip = str(addr.pod_ips[pod.name])
        st["pods"][pod.name] = pod_record(lab, pod, ip)
        st.setdefault("members", {})[pod.name] = {"kind": "pod", "netns": naming.netns(lab, pod.name), "node": pod.node}
        st["pods"][pod.name]["host_ifname"] = builder.recreate_pod(lab, new, addr, pod, ip)
        if pod.node in dataplane.loaded_nodes(st):
            dataplane.datapath(st, pod.node).attach_workload(st["pods"][pod.name]["host_ifname"])
        s = launch.start(lab, new, pod)
        st["pods"][pod.name]["pid"] = s.pid
        started.append(s)
    if started:
        launch.wait_ready(lab, new, addr, started)
    for pod in added:
        done.append(f'pod "{pod.name}" created on {pod.node} as {addr.pod_ips[pod.name]}')
        progress(done[-1])
    st["services"] = services_doc(new, addr)
    dataplane.reprogram(st)
    return done
