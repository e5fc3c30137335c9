"""Lab scale: how long `up`, `mode tunnel`, `mode kube-proxy` and `down` take, and their peak memory, per lab size.

Each step runs as the user runs it (`netns-lab ...` in a new process, so its whole cost counts:
interpreter start, imports, BCC compile). Peak memory is the step's own maximum resident set
(getrusage of the waited-for command and its children) and the machine's memory in use after
it against before the lab (the lab's footprint: namespaces, veths, maps, app processes).
The 100,000-service figure is one node's full sync of the bench's services plus 100,000 ClusterIP
services in each dataplane (kube-proxy: one iptables-restore; kube-proxy-nft: one nft -f; eBPF:
NodeDatapath.sync with MAX_SERVICES raised to fit), with the peak memory of the programming
process; a tool that has not finished after TOOL_TIMEOUT_S is stopped and reported so.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from netns_lab.topology import Node, Pod, PodPort, Service, ServicePort, Topology, default_hosts, dump_topology

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


SCALE_SERVICES_N = 100_000
SCALE_CIDR = "100.64.0.0/14"   # 100,000 ClusterIPs need more than the bench's /17; matched, never routed
TOOL_TIMEOUT_S = 180.0         # iptables-restore / nft -f of 100,000 services: reported as not done after this


def _wait4(proc: subprocess.Popen, deadline: float) -> tuple[int, Any] | None:
    """(wait status, rusage of that one child) once `proc` exits; None if it was killed at `deadline`."""
    while True:
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            return status, ru
        if time.monotonic() > deadline:
            proc.kill()
            os.wait4(proc.pid, 0)
            return None
        time.sleep(0.02)


def run_cli(argv: list[str], timeout: float = 900) -> dict[str, Any]:
    """`python -m netns_lab ARGV` as the user runs it: seconds, peak RSS (MB) of the command, machine memory in use after."""
    t = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "netns_lab", *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    waited = _wait4(proc, t + timeout)
    secs = time.monotonic() - t
    if waited is None:
        return {"argv": argv, "s": round(secs, 3), "rc": None, "peak_rss_mb": None, "mem_used_mb": round(mem_used_mb(), 1),
                "error": f"not done after {timeout:.0f} s"}
    status, ru = waited
    rc = os.waitstatus_to_exitcode(status)
    proc.returncode = rc
    err = proc.stderr.read() if proc.stderr else ""
    out = {"argv": argv, "s": round(secs, 3), "rc": rc, "peak_rss_mb": round(ru.ru_maxrss / 1024, 1),
           "mem_used_mb": round(mem_used_mb(), 1)}
    if rc != 0:
        out["error"] = err.strip()[-400:]
    return out


def lab_cycle(lab: str, label: str, topo: Topology | None, step: Callable[[str], None]) -> dict[str, Any]:
    """up, mode tunnel, mode kube-proxy, down of one lab, each as the user runs it."""
    from netns_lab import cleanup

    path = write_topology(topo) if topo is not None else None
    rec: dict[str, Any] = {"lab": label, "nodes": len(topo.nodes) if topo else 3,
                           "pods": len(topo.pods) if topo else 4, "mem_before_mb": round(mem_used_mb(), 1), "steps": {}}
    try:
        for name, argv in (("up", ["up", "--name", lab] + (["--topology", path] if path else [])),
                           ("mode tunnel", ["mode", "--name", lab, "tunnel"]),
                           ("mode kube-proxy", ["mode", "--name", lab, "kube-proxy"]),
                           ("down", ["down", "--name", lab])):
            rec["steps"][name] = run_cli(argv)
            step(f"scale: {label}: {name} {rec['steps'][name]['s']:.1f} s")
            if rec["steps"][name]["rc"] != 0:
                break
    finally:
        if cleanup.lab_exists(lab):
            from netns_lab.lab import Lab

            Lab(lab).down()
        if path:
            os.unlink(path)
    return rec


def services_cycle(base: str, n: int, step: Callable[[str], None]) -> dict[str, Any]:
    """n ClusterIP services programmed on one node in each dataplane, as a full sync writes them: kube-proxy
    iptables (iptables-restore), kube-proxy nftables (nft -f), eBPF (NodeDatapath.sync, MAX_SERVICES raised);
    seconds and peak memory. Each in a private namespace or pin directory, removed at the end."""
    from netns_lab import kubeproxy, kubeproxy_nft, naming
    from netns_lab.bench import topo as btopo
    from netns_lab.nsexec import create_netns, remove_netns

    lab_topo = btopo.lab_topology()
    t = time.monotonic()
    extras = btopo.extra_services(n, cidr=SCALE_CIDR)
    out: dict[str, Any] = {"services": n}
    ns = naming.netns(base, "control")
    create_netns(ns)
    try:
        rs = btopo.kubeproxy_ruleset(lab_topo, "control", extras, SCALE_CIDR)
        text = kubeproxy.sync_text(rs, "", "")
        out["iptables_rules"] = len(rs.rules)
        out["generate_s"] = round(time.monotonic() - t, 2)
        out["kube-proxy"] = _timed_tool(["ip", "netns", "exec", ns, "iptables-restore", "--noflush"], text, TOOL_TIMEOUT_S)
        step(f"scale: {n} services, iptables-restore {out['kube-proxy']['s']:.1f} s")
        nft_text = kubeproxy_nft.install_text(btopo.nft_ruleset(lab_topo, "control", extras, SCALE_CIDR))
        out["kube-proxy-nft"] = _timed_tool(["ip", "netns", "exec", ns, "nft", "-f", "-"], nft_text, TOOL_TIMEOUT_S)
        step(f"scale: {n} services, nft -f {out['kube-proxy-nft']['s']:.1f} s")
    finally:
        remove_netns(ns)
    out["tunnel"] = _ebpf_sync(base, extras)
    step(f"scale: {n} services, NodeDatapath.sync {out['tunnel']['s']:.1f} s")
    return out


def _timed_tool(argv: list[str], stdin: str, timeout: float) -> dict[str, Any]:
    """A rule-loading tool fed `stdin`: seconds and its peak RSS (wait4), or the error."""
    t = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def feed() -> None:  # in a thread: iptables-restore reads as it goes, and the timeout must cover that too
        with contextlib.suppress(BrokenPipeError, OSError, ValueError):
            assert proc.stdin is not None
            proc.stdin.write(stdin)
            proc.stdin.close()

    threading.Thread(target=feed, daemon=True).start()
    waited = _wait4(proc, t + timeout)
    if waited is None:
        return {"s": round(time.monotonic() - t, 2), "rc": None, "error": f"not done after {timeout:.0f} s"}
    status, ru = waited
    rc = os.waitstatus_to_exitcode(status)
    out = {"s": round(time.monotonic() - t, 3), "rc": rc, "peak_rss_mb": round(ru.ru_maxrss / 1024, 1)}
    if rc != 0:
        out["error"] = (proc.stderr.read() if proc.stderr else "").strip()[-300:]
    return out


def _rss_mb() -> float:
    """This process's resident set now, MB."""
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS:")) / 1024


def _ebpf_sync(base: str, extras: list[Any]) -> dict[str, Any]:
    """One simulated node loaded with MAX_SERVICES raised to fit, then one sync of the bench view plus `extras`."""
    import dataclasses

    from netns_lab import naming
    from netns_lab.bench import bpfcost
    from ebpf_nodeport.netns import Netns
    from ebpf_nodeport.sync import Backend, Service
    from ebpf_nodeport.testrun import SimCluster

    size = 1 << max(16, (len(extras) + 1024).bit_length())
    view = bpfcost.cluster_view()
    big = dataclasses.replace(view, services=list(view.services) + [
        Service(s.name, "tcp", s.cluster_ip, s.port, None, [Backend(bpfcost.LOCAL_BE[0], s.target_port)]) for s in extras])
    ns = Netns.private()
    cluster = SimCluster(view, pin_root=str(naming.bpf_dir(base)), nodes=["control"],
                         defines={"MAX_SERVICES": size, "MAX_BACKENDS": size})
    try:
        with ns.inside():
            cluster.load()
            rss0 = _rss_mb()
            t = time.monotonic()
            cluster.sync(big)
            secs = time.monotonic() - t
            return {"s": round(secs, 3), "rc": 0, "rss_growth_mb": round(_rss_mb() - rss0, 1), "max_services": size}
    except Exception as exc:  # noqa: BLE001 - reported, not fatal: the other dataplanes' figures stand
        return {"s": None, "rc": 1, "error": str(exc)[:300], "max_services": size}
    finally:
        cluster.close()
        ns.close()


def run(base: str, step: Callable[[str], None], services: int = SCALE_SERVICES_N) -> dict[str, Any]:
    """The scale section: both lab sizes' life cycle, then `services` programmed; labs and pins removed."""
    t0 = time.monotonic()
    doc: dict[str, Any] = {"kind": "scale", "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                           "loadavg_start": os.getloadavg(), "labs": []}
    doc["labs"].append(lab_cycle(base + "a", "default lab (3 nodes, 4 pods)", None, step))
    doc["labs"].append(lab_cycle(base + "b", f"{SCALE_NODES} nodes, {SCALE_PODS} pods", scale_topology(), step))
    doc["services"] = services_cycle(base + "c", services, step)
    doc["loadavg_end"] = os.getloadavg()
    doc["elapsed_s"] = round(time.monotonic() - t0, 1)
    return doc


TARGET_UP_S = 30.0


def _grown(rec: dict, step: str) -> str:
    """The machine's memory in use after STEP against before the lab, MB (the eBPF maps show here, not in any RSS)."""
    r = rec["steps"].get(step)
    return "-" if not r or r["rc"] != 0 else f"+{r['mem_used_mb'] - rec['mem_before_mb']:.0f}"


def render(out: Any, doc: dict[str, Any]) -> None:
    """The scale tables (rich Console or report.Markdown)."""
    from netns_lab.bench.report import _table

    out.print(f"lab scale ({doc['elapsed_s']:.0f} s; load average {doc['loadavg_start'][0]:.2f} at start, "
              f"{doc['loadavg_end'][0]:.2f} at the end)", highlight=False)
    t = _table("lab life cycle as the user runs it: seconds (peak RSS of the command, MB)",
               ["lab", "up", "mode tunnel", "mode kube-proxy", "down",
                "memory in use with the lab up, MB", "in mode tunnel, MB"])
    for rec in doc["labs"]:
        cells = []
        for name in ("up", "mode tunnel", "mode kube-proxy", "down"):
            r = rec["steps"].get(name)
            cells.append("-" if r is None else (f"failed: {r.get('error', '')[:60]}" if r["rc"] != 0
                                                else f"{r['s']:.1f} ({r['peak_rss_mb']:.0f})"))
        t.add_row(rec["lab"], *cells, _grown(rec, "up"), _grown(rec, "mode tunnel"))
    out.print(t)
    s = doc.get("services") or {}
    if s:
        t = _table(f"{s['services']:,} ClusterIP services programmed on one node, one full sync: seconds (peak memory, MB)",
                   ["dataplane", "how", "seconds", "peak memory MB"])
        for key, how, mem in (("kube-proxy", f"iptables-restore, {s.get('iptables_rules', 0):,} rules", "peak_rss_mb"),
                              ("kube-proxy-nft", "nft -f, one transaction", "peak_rss_mb"),
                              ("tunnel", f"NodeDatapath.sync (MAX_SERVICES {s['tunnel'].get('max_services')})", "rss_growth_mb")):
            r = s.get(key) or {}
            secs = f"failed: {r.get('error', '')[:80]}" if r.get("rc") != 0 else f"{r['s']:.2f}"
            t.add_row(key, how, secs, "-" if r.get(mem) is None else f"{r[mem]:.0f}"
                      + (" (RSS growth of the syncing process)" if mem == "rss_growth_mb" else ""))
        out.print(t)
    t = _table("scale targets", ["target", "measured", "verdict"])
    big = doc["labs"][-1]["steps"].get("up") if doc["labs"] else None
    if big:
        ok = big["rc"] == 0 and big["s"] < TARGET_UP_S
        t.add_row(f"up of the {doc['labs'][-1]['lab']} lab < {TARGET_UP_S:.0f} s", f"{big['s']:.1f} s",
                  "met" if ok else "missed")
    out.print(t)
