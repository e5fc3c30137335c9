"""Start the yaobank apps detached inside their pod namespaces, and wait until each one answers.

Apps run as `ip netns exec <pod ns> python -u -m netns_lab.apps.<app> --lab L --pod P ...` in
their own session (setsid), stdout/stderr appended to the pod's log file, so they outlive
`netns-lab up`. `--lab` on the command line lets clean-up recognise them even after their
namespace is gone.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

from netns_lab import naming
from netns_lab.apps import HEALTH_PATH
from netns_lab.errors import LabError
from netns_lab.nsexec import in_netns
from netns_lab.topology import AddressPlan, Pod, Topology, upstream_url


def app_argv(lab: str, topo: Topology, pod: Pod) -> list[str]:
    """The app's command line (run inside the pod namespace)."""
    argv = [sys.executable, "-u", "-m", f"netns_lab.apps.{pod.app}", "--lab", lab, "--pod", pod.name]
    for pp in pod.ports:
        argv += ["--http" if pp.protocol == "TCP" else "--udp-echo", str(pp.port)]
    url = upstream_url(topo, pod.app, pod.namespace)
    if url:
        argv += ["--upstream", url]
    return argv


@dataclass
class Started:
    """A launched app: its process (ours until `up` exits) and pid."""

    pod: str
    proc: subprocess.Popen
    pid: int


def start(lab: str, topo: Topology, pod: Pod) -> Started:
    """Launch one pod's app detached in the pod's namespace; returns at once."""
    log = naming.log_path(lab, pod.name)
    log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", naming.netns(lab, pod.name), *app_argv(lab, topo, pod)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            cwd="/",
            env=env,
        )
    return Started(pod.name, proc, proc.pid)


def _http_ok(ip: str, port: int) -> bool:
    """True if an HTTP server at ip:port answers the health path with 200."""
    try:
        with socket.create_connection((ip, port), timeout=0.5) as s:
            s.sendall(f"GET {HEALTH_PATH} HTTP/1.0\r\nHost: {ip}\r\n\r\n".encode())
            reply = b""
            while chunk := s.recv(4096):  # read to EOF: closing early would reset the server's write
                reply += chunk
            return reply.split(b"\r\n", 1)[0].split()[1:2] == [b"200"]
    except (OSError, IndexError):
        return False


def _udp_ok(ip: str, port: int) -> bool:
    """True if a UDP echo at ip:port sends our datagram back."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        try:
            s.sendto(b"netns-lab probe", (ip, port))
            return s.recv(64) == b"netns-lab probe"
        except OSError:
            return False


def wait_ready(lab: str, topo: Topology, plan: AddressPlan, started: list[Started], timeout: float = 20.0) -> None:
    """Poll every app port from its node's namespace (as a kubelet probe would) until all answer.

    LabError naming the pod (with the end of its log) if an app exits or stays silent.
    """
    procs = {s.pod: s.proc for s in started}
    pending = [(p, pp) for p in topo.pods if p.name in procs for pp in p.ports]
    deadline = time.monotonic() + timeout
    while pending:
        still = []
        for pod, pp in pending:
            code = procs[pod.name].poll()
            if code is not None:
                raise LabError(f"app of pod {pod.name} exited with status {code}: {_log_tail(lab, pod.name)}")
            ip = str(plan.pod_ips[pod.name])
            probe = _http_ok if pp.protocol == "TCP" else _udp_ok
            if not in_netns(naming.netns(lab, pod.node), probe, ip, pp.port):
                still.append((pod, pp))
        pending = still
        if pending:
            if time.monotonic() > deadline:
                pod, pp = pending[0]
                raise LabError(
                    f"pod {pod.name} does not answer on {pp.protocol} {pp.port} after {timeout:.0f}s: {_log_tail(lab, pod.name)}"
                )
            time.sleep(0.02)


def _log_tail(lab: str, pod: str) -> str:
    """Last line of a pod's log, for error messages."""
    try:
        lines = naming.log_path(lab, pod).read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return lines[-1] if lines else "(empty log)"
