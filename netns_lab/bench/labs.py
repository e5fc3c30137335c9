"""The bench's two labs: the service lab (every mode, through the lab API) and the direct-routing lab (no services).

- service lab `<base>`: Lab.up(topology=<bench topology>), then Lab.switch_mode(...) between
  measurements: what `netns-lab up --topology` and `netns-lab mode` run.
- direct lab `<base>d`: the same nodes, client and bench pods built by the builder alone: no
  iptables rules, no BPF programs, no conntrack; the client routes the pod pool via the ingress
  node, so a packet takes the same hops as a NodePort one (client -> control -> [node1 ->] pod).
  That is the physical limit every figure is compared with.

Both get the bench's servers in their bench pods (iperf3 -s and netns_lab.bench.conn server) and
a client tuned for many short connections. teardown() removes everything (it is also what runs on
failure and Ctrl-C); labs are found by name, as `netns-lab down` finds them.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time

from netns_lab import builder, cleanup, naming
from netns_lab import state as lab_state
from netns_lab.bench import topo as btopo
from netns_lab.errors import LabError
from netns_lab.lab import Lab
from netns_lab.nsexec import in_netns, sysctl
from netns_lab.state import LabState
from netns_lab.topology import plan

CLIENT_SYSCTLS = {
    # many short connections: the whole port range, and TIME_WAIT ports reused (the client closes first)
    "net/ipv4/ip_local_port_range": "1024 65535",
    "net/ipv4/tcp_tw_reuse": "1",
}
SERVER_SYSCTLS = {"net/core/somaxconn": "4096", "net/ipv4/tcp_max_syn_backlog": "4096"}


class BenchLabs:
    """Both labs of one bench run and the server processes in them."""

    def __init__(self, base: str):
        self.lab = naming.check_lab_name(base)
        self.direct = naming.check_lab_name(base + "d")
        self.topo = btopo.lab_topology()
        self.direct_topo = btopo.direct_topology()
        self.mode = "kube-proxy"
        self.servers: list[subprocess.Popen] = []
        self.pod_ips = {p: str(ip) for p, ip in plan(self.topo).pod_ips.items()}
        self.direct_ips = {p: str(ip) for p, ip in plan(self.direct_topo).pod_ips.items()}

    # -- life cycle

    def check_free(self) -> None:
        """LabError if a lab of either name exists (nothing is touched then)."""
        for lab in (self.lab, self.direct):
            if cleanup.lab_exists(lab):
                raise LabError(f"lab {lab!r} already exists; remove it first: netns-lab down --name {lab}")

    def up(self) -> dict[str, float]:
        """Bring both labs up with servers running; seconds per step."""
        times: dict[str, float] = {}
        t = time.monotonic()
        Lab(self.lab).up("kube-proxy", self.topo)
        times["service_lab_up_s"] = time.monotonic() - t
        t = time.monotonic()
        self._build_direct()
        times["direct_lab_up_s"] = time.monotonic() - t
        t = time.monotonic()
        for lab in (self.lab, self.direct):
            sysctl(naming.netns(lab, btopo.CLIENT), CLIENT_SYSCTLS)
            for pod in (btopo.LOCAL_POD, btopo.REMOTE_POD):
                sysctl(naming.netns(lab, pod), SERVER_SYSCTLS)
                self._start_servers(lab, pod)
        self._wait_servers()
        times["servers_up_s"] = time.monotonic() - t
        return times

    def _build_direct(self) -> None:
        """Namespaces, veths and routes only; the client routes the pod pool via the ingress node."""
        with lab_state.lock(self.direct):
            builder.build(self.direct, self.direct_topo, plan(self.direct_topo))
        ingress = self.direct_topo.node(btopo.INGRESS).address
        proc = subprocess.run(["ip", "netns", "exec", naming.netns(self.direct, btopo.CLIENT), "ip", "route", "add",
                               self.direct_topo.pod_pool, "via", ingress], capture_output=True, text=True)
        if proc.returncode != 0:
            raise LabError(f"direct lab: cannot route the pod pool via {ingress}: {proc.stderr.strip()}")

    def _start_servers(self, lab: str, pod: str) -> None:
        """iperf3 -s, the HTTP server and the request/response echo server, detached, in the pod's namespace
        (clean-up kills them with the lab)."""
        from netns_lab.bench import rrtool

        ns = naming.netns(lab, pod)
        log = open(os.devnull, "wb")
        for argv in (["iperf3", "-s", "-p", str(btopo.IPERF_PORT)],
                     [sys.executable, "-m", "netns_lab.bench.conn", "server", "--port", str(btopo.HTTP_PORT)],
                     [str(rrtool.binary()), "server", str(btopo.RR_PORT)]):
            self.servers.append(subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdin=subprocess.DEVNULL,
                                                 stdout=log, stderr=log, start_new_session=True, close_fds=True))
        log.close()

    def _wait_servers(self, timeout: float = 15.0) -> None:
        """Until every server port accepts a connection from its node (LabError naming the one that does not)."""
        def accepts(ip: str, port: int) -> bool:
            try:
                with socket.create_connection((ip, port), timeout=0.3):
                    return True
            except OSError:
                return False

        deadline = time.monotonic() + timeout
        for lab, ips in ((self.lab, self.pod_ips), (self.direct, self.direct_ips)):
            for pod in (btopo.LOCAL_POD, btopo.REMOTE_POD):
                node = self.topo.pod(pod).node
                for port in (btopo.HTTP_PORT, btopo.IPERF_PORT, btopo.RR_PORT):
                    while not in_netns(naming.netns(lab, node), accepts, ips[pod], port):
                        dead = [p for p in self.servers if p.poll() is not None]
                        if dead or time.monotonic() > deadline:
                            raise LabError(f"bench server {pod}:{port} in lab {lab} does not answer")
                        time.sleep(0.05)

    def switch(self, mode: str) -> float:
        """`netns-lab mode <mode>` on the service lab (through the API); seconds it took."""
        t = time.monotonic()
        Lab(self.lab).switch_mode(mode)
        self.mode = mode
        return time.monotonic() - t

    def state(self) -> LabState:
        """The service lab's state."""
        return Lab(self.lab).state()

    def teardown(self) -> list[str]:
        """Stop the servers and remove both labs (safe after a partial bring-up); the labs removed."""
        for p in self.servers:
            with contextlib.suppress(ProcessLookupError):
                p.terminate()
        for p in self.servers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=2)
        removed = []
        for lab in (self.lab, self.direct):
            if cleanup.lab_exists(lab):
                Lab(lab).down()
                removed.append(lab)
        return removed

    # -- addresses

    def nodeport(self, backend: str, what: str) -> tuple[str, int]:
        """(ingress node address, node port) of a bench service."""
        return self.topo.node(btopo.INGRESS).address, btopo.NODE_PORTS[(backend, what)]

    def direct_target(self, backend: str, what: str) -> tuple[str, int]:
        """(pod address, port) in the direct lab."""
        port = {"http": btopo.HTTP_PORT, "rr": btopo.RR_PORT}.get(what, btopo.IPERF_PORT)
        return self.direct_ips[btopo.BACKEND_POD[backend]], port
