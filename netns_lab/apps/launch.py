"""Start the yaobank apps detached inside their pod namespaces, and wait until each one answers.

Apps run as `ip netns exec <pod ns> python -u -m netns_lab.apps.<app> --lab L --pod P ...` in
their own session (setsid), stdout/stderr appended to the pod's log file, so they outlive
`netns-lab up`. `--lab` on the command line lets clean-up recognise them even after their
namespace is gone.
"""

from __future__ import annotations

import json
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
from netns_lab.topology import AddressPlan, Pod, PodPort, Topology, upstream_url


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
    proc: "subprocess.Popen | Forked"  # poll() is all that is used
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


class Forked:
    """A spawned app (not our child): poll() like Popen's, None while it runs."""

    def __init__(self, pid: int):
        self.pid = pid

    def poll(self) -> int | None:
        """None while the process lives (a zombie counts as exited, status unknown: 1)."""
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return 1
        return 1 if state in ("Z", "X") else None


def start_all(lab: str, topo: Topology, pods: list[Pod]) -> list[Started]:
    """Launch many pods' apps through one spawner (netns_lab.apps.spawn: imports once, forks per pod), which
    is what makes `up` of a lab with hundreds of pods fast; returns at once, like start()."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")
    specs = []
    for pod in pods:
        log = naming.log_path(lab, pod.name)
        log.parent.mkdir(parents=True, exist_ok=True)
        argv = app_argv(lab, topo, pod)
        specs.append(json.dumps({"pod": pod.name, "netns": naming.netns(lab, pod.name), "log": str(log),
                                 "app": pod.app, "argv": argv[argv.index("--lab"):]}))
    proc = subprocess.run([sys.executable, "-m", "netns_lab.apps.spawn", "--lab", lab], input="\n".join(specs) + "\n",
                          capture_output=True, text=True, cwd="/", env=env, start_new_session=True, timeout=300)
    pids = dict(ln.split() for ln in proc.stdout.splitlines() if ln.strip())
    missing = [p.name for p in pods if p.name not in pids]
    if proc.returncode != 0 or missing:
        raise LabError(f"cannot start the apps of {', '.join(missing[:3]) or 'the pods'}: "
                       f"{(proc.stderr.strip().splitlines() or ['exit ' + str(proc.returncode)])[-1]}")
    return [Started(p.name, Forked(int(pids[p.name])), int(pids[p.name])) for p in pods]  # type: ignore[arg-type]


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
        for pod, _ in pending:
            code = procs[pod.name].poll()
            if code is not None:
                raise LabError(f"app of pod {pod.name} exited with status {code}: {_log_tail(lab, pod.name)}")
        by_node: dict[str, list[tuple[Pod, PodPort]]] = {}
        for pod, pp in pending:
            by_node.setdefault(pod.node, []).append((pod, pp))
        still = []
        for node, items in by_node.items():  # one namespace thread per node and round, not one per probe
            targets = [(str(plan.pod_ips[pod.name]), pp.port, pp.protocol) for pod, pp in items]
            answers = in_netns(naming.netns(lab, node), _probe_all, targets)
            still += [item for item, ok in zip(items, answers) if not ok]
        pending = still
        if pending:
            if time.monotonic() > deadline:
                pod, pp = pending[0]
                raise LabError(
                    f"pod {pod.name} does not answer on {pp.protocol} {pp.port} after {timeout:.0f}s: {_log_tail(lab, pod.name)}"
                )
            time.sleep(0.02)


def _probe_all(targets: list[tuple[str, int, str]]) -> list[bool]:
    """Probe each (ip, port, protocol) from the calling thread's namespace: HTTP for TCP, echo for UDP."""
    return [(_http_ok if proto == "TCP" else _udp_ok)(ip, port) for ip, port, proto in targets]


def _log_tail(lab: str, pod: str) -> str:
    """Last line of a pod's log, for error messages."""
    try:
        lines = naming.log_path(lab, pod).read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return lines[-1] if lines else "(empty log)"
