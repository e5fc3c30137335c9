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
from collections.abc import Callable
from ipaddress import IPv4Network

from netns_lab import builder, cleanup, dataplane, naming
from netns_lab.errors import LabError
from netns_lab.state import LabState, Member, PodRecord, service_records
from netns_lab.topology import AddressPlan, Pod, Topology, TopologyError, plan, topology_to_dict

Progress = Callable[[str], None]


def _quiet(msg: str) -> None:
    """Progress sink that drops messages."""


def pod_record(lab: str, pod: Pod, ip: str) -> PodRecord:
    """The state's record of a pod made on a running lab."""
    return PodRecord(pod.node, pod.app, ip, naming.netns(lab, pod.name), naming.cali_ifname(lab, pod.name), None,
                     str(naming.log_path(lab, pod.name)), created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))


def _current_plan(st: LabState, topo: Topology, fresh: set[str]) -> AddressPlan:
    """The plan of `topo`: running pods keep their addresses, `fresh` pods take the lowest address of their
    node's block that no pod has now (so a replacement never gets the address of the pod it replaces)."""
    pinned = copy.deepcopy(topo)
    taken = {rec.ip for rec in st.pods.values()}
    blocks = {name: IPv4Network(rec.pod_block) for name, rec in st.nodes().items() if rec.pod_block}
    for p in pinned.pods:
        if p.name not in fresh:
            p.ip = st.pods[p.name].ip
        elif p.ip is None and p.node in blocks:
            p.ip = next((str(ip) for ip in blocks[p.node].hosts() if str(ip) not in taken), None)
            taken.add(p.ip or "")
    try:
        return plan(pinned)
    except TopologyError as exc:
        raise LabError(str(exc)) from None


def _without_ip(pod: Pod) -> Pod:
    """The pod's definition, address and deletion marks aside (a running pod's address is in the state, not the
    topology; a pod marked terminating is the same running pod)."""
    return Pod(**{**pod.__dict__, "ip": None, "deletion_timestamp": None, "deletion_grace_period_seconds": None})


def reconcile(st: LabState, new: Topology, progress: Progress = _quiet) -> list[str]:
    """Move the running lab `st` to topology `new`, live; updates `st` (the caller saves it). Returns what it did."""
    from netns_lab.apps import launch

    lab = st.lab
    old = st.spec()
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
    staying = {n for n in st.pods if n not in gone_names}
    st.topology = topology_to_dict(new)
    st.services = service_records(new, addr, staying)
    dataplane.reprogram(st)

    # 2. pods that go: app stopped, namespace and veth removed
    for pod in gone:
        cleanup.kill(dataplane.pod_processes(st, pod.name))
        builder.remove_pod(lab, pod)
        dataplane.flush_pod_addr(st, st.pods[pod.name].ip)  # its address went: no flow stays DNATed to it
        del st.pods[pod.name]
        st.members.pop(pod.name, None)
        done.append(f'pod "{pod.name}" deleted from {pod.node}')
        progress(done[-1])

    # 3. new pods: built, attached, started; endpoints once they answer
    started = []
    loaded = dataplane.loaded_nodes(st)
    for pod in added:
        ip = str(addr.pod_ips[pod.name])
        rec = st.pods[pod.name] = pod_record(lab, pod, ip)
        st.members[pod.name] = Member("pod", naming.netns(lab, pod.name), node=pod.node)
        rec.host_ifname = builder.recreate_pod(lab, new, addr, pod, ip)
        if pod.node in loaded:
            dataplane.datapath(st, pod.node).attach_workload(rec.host_ifname)
        s = launch.start(lab, new, pod)
        rec.pid = s.pid
        started.append(s)
    if started:
        launch.wait_ready(lab, new, addr, started)
    for pod in added:
        done.append(f'pod "{pod.name}" created on {pod.node} as {addr.pod_ips[pod.name]}')
        progress(done[-1])
    st.services = service_records(new, addr)
    dataplane.reprogram(st)
    return done
