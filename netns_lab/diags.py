"""`netns-lab diags`: everything needed to debug a lab after the fact, saved to a directory.

The lab's `kind export logs` / `cilium sysdump`. Layout of --out DIR:
  manifest.json                  what was collected, and every step that failed (with why)
  host/dmesg-tail.txt            last lines of the kernel log (verifier and BPF warnings land here)
  host/bpffs.txt                 every pin under the project's bpffs root
  <lab>/state.json               the lab's state file
  <lab>/logs/<pod>.log           pod logs (access logs)
  <lab>/<member>/ip-{addr,route,link}.txt, tc-filter.txt, iptables-save.txt, nft-ruleset.txt
  <lab>/<node>/maps.json         every pinned map decoded (the `dump -o json` documents), counters included
A step that fails is recorded and the rest still runs: diags are taken when things are broken.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from netns_lab import naming
from netns_lab import state as lab_state
from netns_lab.errors import LabError

DMESG_LINES = 300
# Per member namespace: file name -> command (run with `ip netns exec <ns>` where needed).
NETNS_COMMANDS: dict[str, list[str]] = {
    "ip-addr.txt": ["ip", "-d", "addr", "show"],
    "ip-route.txt": ["ip", "-d", "route", "show", "table", "all"],
    "ip-link.txt": ["ip", "-d", "-s", "link", "show"],
    "iptables-save.txt": ["iptables-save", "-c"],
    "nft-ruleset.txt": ["nft", "list", "ruleset"],
}


class Collector:
    """Writes files under one output directory and remembers what failed."""

    def __init__(self, out: Path):
        self.out = out
        self.files: list[str] = []
        self.errors: list[dict[str, str]] = []

    def write(self, rel: str, text: str) -> None:
        """Save text at out/rel."""
        path = self.out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        self.files.append(rel)

    def command(self, rel: str, argv: list[str], netns: str | None = None) -> str | None:
        """Run argv (inside netns when given), save its stdout at rel; None (recorded) on failure."""
        full = ["ip", "netns", "exec", netns, *argv] if netns else argv
        try:
            res = subprocess.run(full, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            self.errors.append({"file": rel, "command": " ".join(full), "error": str(exc)})
            return None
        if res.returncode != 0:
            self.errors.append({"file": rel, "command": " ".join(full),
                                "error": f"exit {res.returncode}: {res.stderr.strip()[:500]}"})
        self.write(rel, res.stdout + (f"\n# stderr:\n{res.stderr}" if res.stderr.strip() else ""))
        return res.stdout

    def step(self, rel: str, fn, *args) -> Any:
        """Run one collection function; an exception is recorded against rel instead of raised."""
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - diags must go on past any one failure
            self.errors.append({"file": rel, "error": f"{type(exc).__name__}: {exc}"})
            return None


def interfaces(ip_link_json: str) -> list[str]:
    """Interface names from `ip -j link show` output."""
    return [link["ifname"] for link in json.loads(ip_link_json or "[]") if "ifname" in link]


def collect_member(c: Collector, lab: str, member: str, netns: str) -> None:
    """ip/tc/iptables/nft state of one lab namespace."""
    base = f"{lab}/{member}"
    for name, argv in NETNS_COMMANDS.items():
        c.command(f"{base}/{name}", argv, netns)
    links = subprocess.run(["ip", "-n", netns, "-j", "link", "show"], capture_output=True, text=True)
    blocks = []
    for dev in interfaces(links.stdout if links.returncode == 0 else "[]"):
        for hook in ("ingress", "egress"):
            res = subprocess.run(["tc", "-n", netns, "-s", "-d", "filter", "show", "dev", dev, hook],
                                 capture_output=True, text=True)
            blocks.append(f"### {dev} {hook}\n{res.stdout}{res.stderr}")
    c.write(f"{base}/tc-filter.txt", "\n".join(blocks))


def node_maps(pin_dir: Path, node: str, address: str | None, names: dict[str, str]) -> dict[str, Any]:
    """Every kind of `dump -o json` for one node, from one read of all its pinned maps."""
    from ebpf_nodeport import dump as dumps
    from ebpf_nodeport.maps import NodeMaps

    with NodeMaps(str(pin_dir)) as m:
        snap = dumps.read_snapshot(m, node, names)
    return {kind: dumps.node_document(kind, snap, address) for kind in dumps.KINDS}


def collect_lab(c: Collector, lab: str) -> None:
    """State file, pod logs, every member's network state and every node's maps."""
    state_file = naming.state_path(lab)
    if state_file.exists():
        c.write(f"{lab}/state.json", state_file.read_text())  # as it is, also when it does not parse
    else:
        c.errors.append({"file": f"{lab}/state.json", "error": "no state file"})
    logs = naming.logs_dir(lab)
    for log in sorted(logs.glob("*.log")) if logs.is_dir() else []:
        c.write(f"{lab}/logs/{log.name}", log.read_text(errors="replace"))
    try:
        st = lab_state.load(lab)
    except LabError as exc:  # a broken state is worth collecting around, not a reason to stop
        c.errors.append({"file": f"{lab}/state.json", "error": str(exc)})
        st = None
    if st is None:
        return
    for member, m in {**st.nodes(), **st.hosts()}.items():
        c.step(f"{lab}/{member}", collect_member, c, lab, member, m.netns)
    names = st.addresses()
    for node, m in st.nodes().items():
        pin_dir = naming.pin_dir(lab, node)
        if pin_dir.is_dir():
            doc = c.step(f"{lab}/{node}/maps.json", node_maps, pin_dir, node, str(m.address), names)
            if doc is not None:
                c.write(f"{lab}/{node}/maps.json", json.dumps(doc, indent=2))


def collect_host(c: Collector) -> None:
    """Kernel log tail, the project's bpffs pins and uname: not per lab."""
    res = subprocess.run(["dmesg", "--ctime"], capture_output=True, text=True)
    if res.returncode == 0:
        c.write("host/dmesg-tail.txt", "\n".join(res.stdout.splitlines()[-DMESG_LINES:]) + "\n")
    else:
        c.errors.append({"file": "host/dmesg-tail.txt", "error": res.stderr.strip()})
    root = naming.BPF_ROOT
    pins = sorted(str(p) for p in root.rglob("*")) if root.is_dir() else []
    c.write("host/bpffs.txt", "\n".join(pins) + "\n")
    c.command("host/uname.txt", ["uname", "-a"])


def collect(labs: list[str], out: Path) -> dict[str, Any]:
    """Collect labs (and the host's part) into out; returns the manifest also saved there."""
    out.mkdir(parents=True, exist_ok=True)
    c = Collector(out)
    collect_host(c)
    for lab in labs:
        collect_lab(c, lab)
    manifest = {"labs": labs, "files": sorted(c.files), "errors": c.errors}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
