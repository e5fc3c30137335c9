"""`netns-lab lesson`: the lesson's steps on a lab, each shown as the command a user would type and what it shows.

Every step runs the real CLI in a subprocess (what a user sees is what is printed), so the
walk holds no lock itself. The tcpdump of the DSR section is netns_lab/capture.py in
control's namespace while one curl runs from host1.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from netns_lab import capture, naming
from netns_lab import state as lab_state
from netns_lab.errors import LabError
from netns_lab.felix import FelixConfig
from netns_lab.topology import topology_from_dict

CLI = [sys.executable, "-m", "netns_lab"]
CLIENT = "198.19.15.254"
INGRESS = "198.19.0.1"
NODEPORT = 30180
URL = f"{INGRESS}:{NODEPORT}"
PAGE_LINES = 6
LOGS_CUSTOMER = ["logs", "-n", "yaobank", "-l", "app=customer", "--follow"]


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

    def customer_logs(self) -> list[Path]:
        """Log files of the pods labelled app=customer (the Deployment's pod, whatever its name is now)."""
        st = lab_state.load(self.lab) or {}
        topo = topology_from_dict(st["topology"]) if st.get("topology") else None
        pods = [p.name for p in topo.pods if p.all_labels().get("app") == "customer"] if topo else []
        return [naming.log_path(self.lab, p) for p in pods]

    def log_size(self) -> dict[Path, int]:
        """Current size of each customer pod's log (lines after it are new)."""
        return {p: p.stat().st_size if p.exists() else 0 for p in self.customer_logs()}

    def new_log_lines(self, since: dict[Path, int]) -> list[str]:
        """Access-log lines the customer pods wrote since the offsets `since`."""
        lines = []
        for path, offset in since.items():
            with open(path, errors="replace") as f:
                f.seek(offset)
                lines += [line.rstrip("\n") for line in f if " - - [" in line]
        return lines

    def curl_and_log(self, expect: str) -> None:
        """The lesson's pair: `logs --follow` in one shell, curl in the other; checks the source the pod saw."""
        since = self.log_size()
        self.prompt(LOGS_CUSTOMER, "in a second shell; the lines it prints are shown below")
        self.run(["exec", "host1", "--", "curl", URL], limit=PAGE_LINES)
        lines = self.new_log_lines(since)
        for _ in range(40):  # the app logs right after replying
            if lines:
                break
            time.sleep(0.05)
            lines = self.new_log_lines(since)
        self.say(f"The customer pod's log ({self.typed(LOGS_CUSTOMER)}) shows:")
        self.show(lines)
        seen = {line.split(" ", 1)[0] for line in lines}
        if seen != {expect}:
            self.problems.append(f"the customer pod logged {', '.join(sorted(seen)) or 'nothing'}, expected {expect}")

    def snoop(self) -> capture.Capture:
        """tcpdump on control for one curl from host1; shows the lines and returns the capture."""
        ns = naming.netns(self.lab, "control")
        self.prompt(["exec", "control", "--", "tcpdump", "-ni", "any", f"tcp port {NODEPORT}"], "in a shell on control")
        with capture.tcpdump(ns, f"tcp port {NODEPORT}") as cap:
            self.run(["exec", "host1", "--", "curl", "-s", URL], quiet=True, note="page as before")
        self.say("tcpdump on control prints:")
        self.show(cap.lines)
        return cap

    # -- the lesson

    def lab_setup(self) -> bool:
        """Bring the lab up in kube-proxy mode with the default felix spec; True if this walk created it."""
        self.section("Lab setup")
        st = lab_state.load(self.lab)
        if st is None:
            self.run(["up"])
            return True
        self.say(f"Lab {self.lab!r} is up (mode {st.get('mode')}); the lesson starts from kube-proxy mode.")
        if st.get("mode") != "kube-proxy":
            self.run(["mode", "kube-proxy"])
        spec = FelixConfig(bpfEnabled=False).to_spec()
        if {k: v for k, v in (st.get("felix") or {}).items() if k != "bpfEnabled"} != {k: v for k, v in spec.items() if k != "bpfEnabled"}:
            self.run(["patch", "felixconfiguration", "default", "--patch=" + json.dumps({"spec": spec})])
        return False

    def kube_proxy(self) -> None:
        """NodePort without source IP preservation."""
        self.section("NodePort without source IP preservation")
        self.say("kube-proxy DNATs the node port to the customer pod and SNATs to the ingress node, "
                 "so the reply comes back through it.")
        self.curl_and_log(INGRESS)
        self.say(f"The pod sees {INGRESS}, the control node we went through, not host1 ({CLIENT}).")

    def enable_ebpf(self) -> None:
        """Enable Calico eBPF: keep kube-proxy's rules, switch bpfEnabled on, restart the pods."""
        self.section("Enable Calico eBPF")
        self.say("Tell Calico not to clean up kube-proxy's iptables rules (they stay, and BPF bypasses them):")
        self.run(["patch", "felixconfiguration", "default",
                  '--patch={"spec": {"bpfKubeProxyIptablesCleanupEnabled": false}}'])
        self.say("Switch on eBPF mode (compiles and loads the datapath on every node):")
        self.run(["patch", "felixconfiguration", "default", '--patch={"spec": {"bpfEnabled": true}}'])
        self.say("Enabling eBPF mode can disrupt existing connections: restart the customer and summary pods.")
        self.run(["delete", "pod", "-n", "yaobank", "-l", "app=customer"])
        self.run(["delete", "pod", "-n", "yaobank", "-l", "app=summary"])

    def source_ip(self) -> None:
        """Source IP preservation."""
        self.section("Source IP preservation")
        self.curl_and_log(CLIENT)
        self.say(f"The pod sees {CLIENT}: host1, the real client. The source IP is preserved end to end.")

    def dsr(self) -> None:
        """DSR: tcpdump on control shows both directions in Tunnel mode, the request direction only in DSR mode."""
        self.section("Direct Server Return (DSR)")
        self.say("Snoop the node port's traffic on the control node while host1 fetches the page (Tunnel mode):")
        cap = self.snoop()
        self._judge(cap, both=True)
        self.say("Switch on DSR:")
        self.run(["patch", "felixconfiguration", "default", '--patch={"spec": {"bpfExternalServiceMode": "DSR"}}'])
        cap = self.snoop()
        self._judge(cap, both=False)

    def _judge(self, cap: capture.Capture, both: bool) -> None:
        """Say which directions the capture shows; record a problem if it is not what the mode should show."""
        to_np = [p for p in cap.between(CLIENT, INGRESS) if p.dport == NODEPORT]
        from_np = [p for p in cap.between(INGRESS, CLIENT) if p.sport == NODEPORT]
        self.say(f"host1 -> node port: {len(to_np)} packets; node port -> host1: {len(from_np)} packets.")
        if both:
            self.say("Traffic flows via the node port in both directions: node1 tunnels the replies back to control.")
            ok = bool(to_np and from_np)
        else:
            self.say("Only one direction: node1, which hosts the customer pod, replies straight to host1.")
            ok = bool(to_np) and not from_np
        if not ok:
            self.problems.append(f"tcpdump on control: {len(to_np)} packets to the node port, {len(from_np)} back "
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
