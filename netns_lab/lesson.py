"""`netns-lab lesson`: the lesson's steps on a lab, each shown as the command a user would type and what it shows.

Every step runs the real CLI in a subprocess (what a user sees is what is printed), so the
walk holds no lock itself. Its targets come from the lab's state (Targets), so a lab built
from another topology is walked with its own names and addresses: the client is the first
host, the NodePort the first TCP one on the first node (the ingress node), the pods whose logs
are read those labelled as that service's first backend (`logs -n NS -l app=APP`, as the
lesson types it: a restarted Deployment pod has a new name). The tcpdump of the DSR section is netns_lab/capture.py
in the ingress node's namespace while one curl runs from the client.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from netns_lab import capture, naming
from netns_lab import state as lab_state
from netns_lab.apps import UPSTREAM
from netns_lab.errors import LabError
from netns_lab.felix import FelixConfig
from netns_lab.lab import Lab
from netns_lab.state import LabState

CLI = [sys.executable, "-m", "netns_lab"]
PAGE_LINES = 6


@dataclass
class Targets:
    """Who curls what in the lesson, read from the lab's state."""

    host: str  # the client host (host1 in yaobank)
    client: str  # its address
    ingress: str  # the node whose NodePort is curled (control)
    ingress_ip: str
    node_port: int
    app: str  # the backend's app, whose access log shows the source (customer)
    namespace: str  # the Kubernetes namespace of its pods (yaobank)
    backend_node: str  # the node hosting its pod (node1)
    restart: list[tuple[str, str]]  # (namespace, app) of the pods that call services, restarted after enabling eBPF

    @property
    def url(self) -> str:
        """What the client curls."""
        return f"{self.ingress_ip}:{self.node_port}"

    def logs(self) -> list[str]:
        """The lesson's `kubectl logs` line for the backend's pods, as typed."""
        return ["logs", "-n", self.namespace, "-l", f"app={self.app}", "--follow"]

    @classmethod
    def of(cls, st: LabState) -> Targets:
        """The lesson's targets on this lab; LabError if it has no host, node or TCP NodePort with a backend."""
        t = st.nodeport_target()
        if not t.backends:
            raise LabError(f"lab {st.lab!r}: service {t.service} has no backend for the lesson to reach")
        topo = st.spec()
        pod = topo.pod(t.backends[0].pod)
        restart, app = [], pod.app
        while app is not None and UPSTREAM.get(app) is not None and app not in [a for _, a in restart]:
            caller = next(p for p in topo.pods if p.app == app)
            restart.append((caller.namespace, caller.all_labels()["app"]))
            app = UPSTREAM[app]
        return cls(t.host, t.client, t.ingress, t.frontend_ip, t.node_port, pod.all_labels()["app"], pod.namespace,
                   st.pods[pod.name].node, restart)


class Walk:
    """Runs and shows the lesson's commands on one lab."""

    def __init__(self, lab: str, out: Console):
        self.lab = lab
        self.out = out
        self.problems: list[str] = []

    # -- showing

    def section(self, title: str) -> None:
        """A lesson heading."""
        self.out.print()
        self.out.rule(f"[bold]{escape(title)}[/]", align="left")

    def say(self, text: str) -> None:
        """Narration, as the lesson's prose."""
        self.out.print(escape(text), highlight=False)

    def show(self, lines: list[str], limit: int | None = None) -> None:
        """Command output, indented; long output cut after `limit` lines."""
        shown = lines if limit is None or len(lines) <= limit else lines[:limit] + [f"... ({len(lines) - limit} more lines)"]
        for line in shown:
            self.out.print(f"    {escape(line)}", highlight=False, soft_wrap=True)

    def typed(self, args: list[str]) -> str:
        """The command line a user types for `args` (with --name for a lab other than default)."""
        argv = list(args)
        if self.lab != naming.DEFAULT_LAB:
            argv[1:1] = ["--name", self.lab]
        return "netns-lab " + " ".join(
            "--patch=" + shlex.quote(a[len("--patch="):]) if a.startswith("--patch=") else shlex.quote(a) for a in argv
        )

    def prompt(self, args: list[str], note: str = "") -> None:
        """Print `$ netns-lab ...` as typed."""
        self.out.print(f"[bold]$ {escape(self.typed(args))}[/]" + (f"   [dim]# {escape(note)}[/]" if note else ""), highlight=False)

    # -- running

    def run(self, args: list[str], limit: int | None = None, quiet: bool = False, note: str = "") -> str:
        """Show and run one netns-lab command; its output is shown unless quiet; LabError if it fails."""
        self.prompt(args, note)
        argv = list(args)
        argv[1:1] = ["--name", self.lab]
        proc = subprocess.run([*CLI, *argv], capture_output=True, text=True, timeout=600)
        if not quiet:
            self.show((proc.stdout + proc.stderr).rstrip("\n").splitlines(), limit)
        if proc.returncode != 0:
            raise LabError(f"lesson step failed: {self.typed(args)}: {proc.stderr.strip() or proc.returncode}")
        return proc.stdout

    @property
    def targets(self) -> Targets:
        """The lesson's targets, read from the lab's state once it is up (after lab_setup); read again each time,
        since a restarted Deployment pod has a new name."""
        return Targets.of(Lab(self.lab).state())

    def backend_logs(self) -> list[Path]:
        """Log files of the backend's pods (by label: a Deployment's pod, whatever its name is now)."""
        t, st = self.targets, Lab(self.lab).state()
        return [naming.log_path(self.lab, p) for p in st.select_pods((), f"app={t.app}", t.namespace)]

    def log_size(self) -> dict[Path, int]:
        """Current size of each backend pod's log (lines after it are new)."""
        return {p: p.stat().st_size if p.exists() else 0 for p in self.backend_logs()}

    def new_log_lines(self, since: dict[Path, int]) -> list[str]:
        """Access-log lines the backend's pods wrote since the offsets `since`."""
        lines = []
        for path, offset in since.items():
            with open(path, errors="replace") as f:
                f.seek(offset)
                lines += [line.rstrip("\n") for line in f if " - - [" in line]
        return lines

    def curl_and_log(self, expect: str) -> None:
        """The lesson's pair: `logs --follow` in one shell, curl in the other; checks the source the pod saw."""
        t = self.targets
        since = self.log_size()
        self.prompt(t.logs(), "in a second shell; the lines it prints are shown below")
        self.run(["exec", t.host, "--", "curl", t.url], limit=PAGE_LINES)
        lines = self.new_log_lines(since)
        for _ in range(40):  # the app logs right after replying
            if lines:
                break
            time.sleep(0.05)
            lines = self.new_log_lines(since)
        self.say(f"The {t.app} pod's log ({self.typed(t.logs())}) shows:")
        self.show(lines)
        seen = {line.split(" ", 1)[0] for line in lines}
        if seen != {expect}:
            self.problems.append(f"the {t.app} pod logged {', '.join(sorted(seen)) or 'nothing'}, expected {expect}")

    def snoop(self) -> capture.Capture:
        """tcpdump on the ingress node for one curl from the client; shows the lines and returns the capture."""
        t = self.targets
        ns = naming.netns(self.lab, t.ingress)
        self.prompt(["exec", t.ingress, "--", "tcpdump", "-ni", "any", f"tcp port {t.node_port}"], f"in a shell on {t.ingress}")
        with capture.tcpdump(ns, f"tcp port {t.node_port}") as cap:
            self.run(["exec", t.host, "--", "curl", "-s", t.url], quiet=True, note="page as before")
        self.say(f"tcpdump on {t.ingress} prints:")
        self.show(cap.lines)
        return cap

    # -- the lesson

    def lab_setup(self) -> bool:
        """Bring the lab up in kube-proxy mode with the default felix spec; True if this walk created it.
        A lab in kube-proxy-nft mode stays in it: the walk uses kube-proxy's nftables backend then."""
        self.section("Lab setup")
        st = lab_state.load(self.lab)
        if st is None:
            self.run(["up"])
            return True
        self.say(f"Lab {self.lab!r} is up (mode {st.mode}); the lesson starts from kube-proxy mode "
                 f"({st.kubeproxy.mode if st.mode in lab_state.KUBE_PROXY_MODES else 'iptables'}).")
        if st.mode not in lab_state.KUBE_PROXY_MODES:
            self.run(["mode", "kube-proxy"])
        if st.felix != FelixConfig(bpfEnabled=st.felix.bpfEnabled):
            self.run(["patch", "felixconfiguration", "default", "--patch=" + json.dumps({"spec": FelixConfig().to_spec()})])
        return False

    def kube_proxy(self) -> None:
        """NodePort without source IP preservation."""
        self.section("NodePort without source IP preservation")
        self.say(f"kube-proxy DNATs the node port to the {self.targets.app} pod and SNATs to the ingress node, "
                 "so the reply comes back through it.")
        t = self.targets
        self.curl_and_log(t.ingress_ip)
        self.say(f"The pod sees {t.ingress_ip}, the {t.ingress} node we went through, not {t.host} ({t.client}).")

    def enable_ebpf(self) -> None:
        """Enable Calico eBPF: keep kube-proxy's rules, switch bpfEnabled on, restart the pods."""
        self.section("Enable Calico eBPF")
        self.say("Tell Calico not to clean up kube-proxy's iptables rules (they stay, and BPF bypasses them):")
        self.run(["patch", "felixconfiguration", "default",
                  '--patch={"spec": {"bpfKubeProxyIptablesCleanupEnabled": false}}'])
        self.say("Switch on eBPF mode (compiles and loads the datapath on every node):")
        self.run(["patch", "felixconfiguration", "default", '--patch={"spec": {"bpfEnabled": true}}'])
        restart = self.targets.restart
        self.say(f"Enabling eBPF mode can disrupt existing connections: restart the {' and '.join(a for _, a in restart)} pods.")
        for ns, app in restart:
            self.run(["delete", "pod", "-n", ns, "-l", f"app={app}"])

    def source_ip(self) -> None:
        """Source IP preservation."""
        self.section("Source IP preservation")
        t = self.targets
        self.curl_and_log(t.client)
        self.say(f"The pod sees {t.client}: {t.host}, the real client. The source IP is preserved end to end.")

    def dsr(self) -> None:
        """DSR: tcpdump on the ingress node shows both directions in Tunnel mode, the request direction only in DSR mode."""
        self.section("Direct Server Return (DSR)")
        t = self.targets
        self.say(f"Snoop the node port's traffic on the {t.ingress} node while {t.host} fetches the page (Tunnel mode):")
        cap = self.snoop()
        self._judge(cap, both=True)
        self.say("Switch on DSR:")
        self.run(["patch", "felixconfiguration", "default", '--patch={"spec": {"bpfExternalServiceMode": "DSR"}}'])
        cap = self.snoop()
        self._judge(cap, both=False)

    def _judge(self, cap: capture.Capture, both: bool) -> None:
        """Say which directions the capture shows; record a problem if it is not what the mode should show."""
        t = self.targets
        to_np = [p for p in cap.between(t.client, t.ingress_ip) if p.dport == t.node_port]
        from_np = [p for p in cap.between(t.ingress_ip, t.client) if p.sport == t.node_port]
        self.say(f"{t.host} -> node port: {len(to_np)} packets; node port -> {t.host}: {len(from_np)} packets.")
        if both:
            self.say(f"Traffic flows via the node port in both directions: {t.backend_node} tunnels the replies back to {t.ingress}.")
            ok = bool(to_np and from_np)
        else:
            self.say(f"Only one direction: {t.backend_node}, which hosts the {t.app} pod, replies straight to {t.host}.")
            ok = bool(to_np) and not from_np
        if not ok:
            self.problems.append(f"tcpdump on {t.ingress}: {len(to_np)} packets to the node port, {len(from_np)} back "
                                 f"({'both directions' if both else 'one direction'} expected)")


def run(lab: str, keep: bool, out: Console) -> int:
    """Walk the whole lesson on `lab`; 0 when every observation matched the lesson's."""
    walk = Walk(lab, out)
    created = walk.lab_setup()
    try:
        walk.kube_proxy()
        walk.enable_ebpf()
        walk.source_ip()
        walk.dsr()
    finally:
        walk.section("Done")
        if created and not keep:
            walk.run(["down"])
        else:
            walk.say(f"The lab is still up in DSR mode. Try: {walk.typed(['status'])}; "
                     f"{walk.typed(['dump', 'conntrack'])}; {walk.typed(['mode', 'kube-proxy'])}; "
                     f"{walk.typed(['down'])}")
    if walk.problems:
        for p in walk.problems:
            out.print(f"[red]not as in the lesson[/]: {escape(p)}", highlight=False)
        return 1
    out.print("Every observation matched the lesson's.", highlight=False)
    return 0
