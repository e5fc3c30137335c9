"""Lab scale: how long `up`, `mode tunnel`, `mode kube-proxy` and `down` take, and their peak memory, per lab size.

Each step runs as the user runs it (`netns-lab ...` in a new process, so its whole cost counts:
interpreter start, imports, BCC compile). Peak memory is the step's own maximum resident set
(getrusage of the waited-for command and its children) and the machine's memory in use after
it against before the lab (the lab's footprint: namespaces, veths, maps, app processes).
The 100,000-service figure is programming time: the bench's services programmed into the
default lab in each mode (kube-proxy: one iptables-restore; kube-proxy-nft: one nft -f;
eBPF: NodeDatapath.sync), per node, with peak RSS of the programming process.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any

from netns_lab.topology import Host, Node, Pod, PodPort, Service, ServicePort, Topology, default_hosts, dump_topology

SCALE_NODES = 20
SCALE_PODS = 500
SCALE_SERVICES = 50    # each selects 10 pods, one of them a NodePort


def scale_topology(nodes: int = SCALE_NODES, pods: int = SCALE_PODS, services: int = SCALE_SERVICES) -> Topology:
    """`nodes` nodes (control plus workers), `pods` test-server pods spread over the workers, `services`
    ClusterIP services each selecting an equal share of the pods (the first also a NodePort)."""
    if nodes < 2 or pods < 1 or not 1 <= services <= pods:
        raise ValueError(f"need at least 2 nodes, 1 pod and 1-{pods} services, not {nodes}/{pods}/{services}")
    node_list = [Node("control", "198.19.0.1", control_plane=True)]
    node_list += [Node(f"node{i}", f"198.19.0.{i + 1}") for i in range(1, nodes)]
    workers = [n.name for n in node_list[1:]]
    pod_list = [Pod(f"p{i}", workers[i % len(workers)], "testserver", [PodPort("http", "TCP", 80)],
                    labels={"group": f"g{i % services}"}) for i in range(pods)]
    svc_list = [Service(f"s{j}", f"198.19.32.{10 + j}" if j < 240 else f"198.19.33.{j - 230}",
                        [ServicePort("http", "TCP", 80, 80, 30100 + j if j == 0 else None)], selector={"group": f"g{j}"})
                for j in range(services)]
    # 500 pods need more than the default /20 pod pool's 64-address blocks per node? 25 per node fits a /26.
    return Topology(nodes=node_list, hosts=default_hosts(), pods=pod_list, services=svc_list, name=f"scale-{nodes}n-{pods}p")


def write_topology(topo: Topology) -> str:
    """The topology as a YAML file (for `netns-lab up --topology`); its path."""
    fd, path = tempfile.mkstemp(prefix="netns-lab-scale-", suffix=".yaml")
    with os.fdopen(fd, "w") as f:
        f.write(dump_topology(topo))
    return path


def mem_used_mb() -> float:
    """The machine's memory in use (MemTotal - MemAvailable), MB."""
    info: dict[str, int] = {}
    with open("/proc/meminfo") as f:
        for ln in f:
            k, v = ln.split(":", 1)
            info[k] = int(v.split()[0])
    return (info["MemTotal"] - info["MemAvailable"]) / 1024


def timed_cli(argv: list[str], timeout: float = 900) -> dict[str, Any]:
    """`python -m netns_lab ARGV` in a new process: seconds, its peak RSS (MB, it and its waited children), exit code."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "netns_lab", *argv], capture_output=True, text=True, timeout=timeout)
    secs = time.monotonic() - t
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    out = {"argv": argv, "s": secs, "rc": proc.returncode, "peak_rss_mb": peak / 1024 if peak > before else None,
           "mem_used_mb": mem_used_mb()}
    if proc.returncode != 0:
        out["error"] = (proc.stderr or proc.stdout).strip()[-400:]
    return out
