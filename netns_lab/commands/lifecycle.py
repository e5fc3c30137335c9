"""`netns-lab up | down | list | status | topology`: a lab's life cycle and what it is made of."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from netns_lab import cgroups, cleanup, naming
from netns_lab.commands.common import console, lab_handle, lab_option, load_lab, output_option, require_root
from netns_lab.k8s import manifest
from netns_lab.lab import PROG, list_labs
from netns_lab.state import MODES
from netns_lab.topology import default_topology, dump_topology, load_topology, plan, topology_to_dict


@click.command(
    epilog="""\b
Examples:
  netns-lab up                              # default lab, kube-proxy mode
  netns-lab up --name lab2                  # a second lab beside the first
  netns-lab up --topology my.yaml           # your own topology (see: netns-lab topology)
  netns-lab up --manifest examples/yaobank.yaml   # Kubernetes YAML (what `up` runs by default)
  netns-lab up --manifest app.yaml --manifest more/   # files, directories, - for stdin
  netns-lab up --mode dsr                   # eBPF dataplane, DSR for NodePorts
  netns-lab up --mode kube-proxy-nft        # kube-proxy in nftables mode (table ip kube-proxy)
"""
)
@lab_option
@click.option("--mode", type=click.Choice(MODES), default=None, help="Service dataplane [default: kube-proxy].")
@click.option(
    "--topology",
    "topology_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="YAML topology file: nodes and hosts (and pods and services in the lab's own format).",
)
@click.option("--manifest", "manifests", multiple=True, metavar="FILE|DIR|-",
              help="Kubernetes YAML to run (repeatable; default: examples/yaobank.yaml on the lesson's nodes).")
def up(lab: str | None, mode: str | None, topology_file: Path | None, manifests: tuple[str, ...]) -> int:
    """Build the lab: namespaces, veths, routes, services and the apps of its pods.

    Idempotent: running it again on a lab that is up changes nothing and says so.
    """
    topo = load_topology(topology_file) if topology_file else None
    if manifests:
        result = manifest.load(list(manifests), topo or manifest.nodes_only(default_topology()))
        for line in result.lines:
            if "skipped" in line:
                click.echo(line, err=True)
        topo = result.topology
    plan(topo or manifest.default_lab())  # a bad topology is reported before the root check
    require_root()
    out = console()
    handle = lab_handle(lab, out)
    res = handle.up(mode, topo)
    if res.already:
        out.print(f"lab [bold]{handle.name}[/] is already up (mode {res.mode}); nothing changed")
        return 0
    out.print(f"lab [bold]{handle.name}[/] is up (mode {res.mode}) in {res.seconds:.2f}s")
    hint = "" if handle.name == naming.DEFAULT_LAB else f" --name {handle.name}"
    target = handle.state().spec()
    first = next((h.name for h in target.hosts), None)
    nodeport = next((sp.node_port for s in target.services for sp in s.ports if sp.node_port), None)
    if first and nodeport:
        out.print(f"try: {PROG} exec{hint} {first} -- curl -s {target.nodes[0].address}:{nodeport}", highlight=False)
    return 0


@click.command(
    epilog="""\b
Examples:
  netns-lab down                 # the default lab
  netns-lab down --name lab2
  netns-lab down --all           # every lab, also half-built ones without state
"""
)
@lab_option
@click.option("--all", "all_labs", is_flag=True, help="Remove every lab found on this machine.")
def down(lab: str | None, all_labs: bool) -> int:
    """Remove a lab: processes, namespaces (with their veths and iptables), BPF pins, state."""
    if all_labs and lab:
        raise click.UsageError("give --name or --all, not both")
    require_root()
    out = console()
    labs = cleanup.labs_present() if all_labs else [lab or naming.DEFAULT_LAB]
    if all_labs and not labs:
        out.print("no labs to remove")
    for name in labs:
        t0 = time.monotonic()
        removed = lab_handle(name).down()
        extra = (", BPF pins" if removed.pins else "") + (", node cgroups" if removed.cgroups else "")
        out.print(
            f"lab [bold]{name}[/] removed: {len(removed.namespaces)} namespaces, {len(removed.pids)} processes"
            f"{extra} ({time.monotonic() - t0:.2f}s)",
            highlight=False,
        )
    if all_labs:
        if cleanup.remove_sim_pins():
            out.print("removed the BPF test harness' leftover pins")
        cleanup.remove_empty_roots()
    return 0


@click.command(
    epilog="""\b
Examples:
  netns-lab status
  netns-lab status --name lab2 -o json | jq '.pods[] | {name, ip}'
"""
)
@lab_option
@output_option
def status(lab: str | None, output: str) -> int:
    """Show a lab's nodes, pods (with addresses), services and mode."""
    doc = lab_handle(lab).status()
    if output == "json":
        click.echo(json.dumps(doc, indent=2))
        return 0
    out = console()
    out.print(f"lab [bold]{doc['lab']}[/]: {doc['status']}, mode [bold]{doc['mode']}[/]", highlight=False)
    t = Table(title="nodes and hosts", title_justify="left")
    for col in ("name", "role", "address", "pod block", "namespace", "present"):
        t.add_column(col)
    for role, items in (("node", doc["nodes"]), ("host", doc["hosts"])):
        for n in items:
            t.add_row(n["name"], role, n["address"], n.get("pod_block") or "-", n["netns"], _yes(n["present"]))
    out.print(t)
    t = Table(title="pods", title_justify="left")
    for col in ("name", "node", "app", "ip", "node interface", "pid", "running"):
        t.add_column(col)
    for p in doc["pods"]:
        t.add_row(p["name"], p["node"], p["app"], p["ip"], p["host_ifname"], str(p["pid"] or "-"), _yes(p["running"]))
    out.print(t)
    t = Table(title="services", title_justify="left")
    for col in ("service", "cluster ip", "port", "node port", "backends"):
        t.add_column(col)
    for s in doc["services"]:
        for sp in s["ports"]:
            backends = ", ".join(f"{b['ip']}:{b['port']} ({b['pod']})" for b in sp["backends"]) or "-"
            t.add_row(s["name"], s["cluster_ip"], f"{sp['protocol']}/{sp['port']} ({sp['name']})", str(sp["node_port"] or "-"), backends)
    out.print(t)
    _print_dataplane(out, doc)
    felix = ", ".join(f"{k}={json.dumps(v)}" for k, v in doc["felix"].items())
    out.print(f"felixconfiguration default: {felix}", highlight=False)
    return 0


def _print_dataplane(out: Console, doc: dict[str, Any]) -> None:
    """The dataplane table of `status`: per node what is attached and which iptables rules are there."""
    dp = doc["dataplane"]
    t = Table(title=f"dataplane (mode {doc['mode']})", title_justify="left")
    for col in ("node", "eBPF datapath", "programs attached", "kube-proxy rules", "NOTRACK (bypass mark)"):
        t.add_column(col)
    for node, n in dp["nodes"].items():
        by_if: dict[str, list[str]] = {}
        for prog in n.get("programs", []):
            by_if.setdefault(prog["interface"], []).append(f"{prog['program']} ({prog['hook']})")
        progs = "; ".join(f"{i}: {', '.join(p)}" for i, p in by_if.items()) or "-"
        if n.get("ctlb_programs"):
            hooks = ", ".join(p["hook"].removeprefix("cgroup_") for p in n["ctlb_programs"])
            progs += f"; cgroup: {hooks}"
        if "error" in n:
            progs = f"[red]{escape(n['error'])}[/]"
        t.add_row(node, "loaded" if n["datapath_loaded"] else "-", progs,
                  ", ".join(n.get("kube_proxy_backends") or []) or "no", "yes" if n.get("notrack") else "no")
    out.print(t)
    out.print(f"cgroup v2: {dp.get('cgroup2') or 'not mounted'}; node cgroups "
              f"{dp.get('cgroup2') or '?'}/{cgroups.TOP}/{doc.get('lab', '<lab>')}/<node>; "
              f"connect-time LB: {dp.get('connect_time_lb', 'off')}", highlight=False)
    if dp.get("last_switch"):
        ls = dp["last_switch"]
        out.print(f"last switch: {ls['from']} -> {ls['to']} in {ls['seconds']:.2f}s", highlight=False)


def _yes(flag: bool) -> str:
    """Table cell for a boolean."""
    return "yes" if flag else "[red]no[/]"


@click.command(
    "list",
    epilog="""\b
Examples:
  netns-lab list                  # every lab: status, mode, namespaces
  netns-lab list -o json | jq -r '.[].lab'
""",
)
@output_option
def list_cmd(output: str) -> int:
    """List the labs present on this machine (also half-built ones)."""
    rows = list_labs()
    if output == "json":
        click.echo(json.dumps(rows, indent=2))
        return 0
    if not rows:
        console().print("no labs on this machine")
        return 0
    t = Table()
    for col in ("lab", "status", "mode", "namespaces"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["lab"], r["status"], r["mode"] or "-", str(r["namespaces"]))
    console().print(t)
    return 0


@click.command(
    epilog="""\b
Examples:
  netns-lab topology > my.yaml          # the default lab (examples/yaobank.yaml, normalised), to edit
  netns-lab up --name mine --topology my.yaml
  netns-lab topology --name mine -o json
  netns-lab topology --manifest app.yaml   # what a manifest becomes: pods named and placed, IPs and ports allocated
"""
)
@lab_option
@click.option("--manifest", "manifests", multiple=True, metavar="FILE|DIR|-", help="Show what this Kubernetes YAML becomes.")
@click.option("-o", "--output", type=click.Choice(["yaml", "json"]), default="yaml", show_default=True, help="Output format.")
def topology(lab: str | None, manifests: tuple[str, ...], output: str) -> int:
    """Print a lab's topology (or the default one, or a manifest's) in the normalised form `up --topology` reads."""
    if manifests:
        topo = manifest.load(list(manifests), manifest.nodes_only(default_topology())).topology
    else:
        topo = load_lab(lab).spec() if lab else manifest.default_lab()
    click.echo(dump_topology(topo) if output == "yaml" else json.dumps(topology_to_dict(topo), indent=2))
    return 0


COMMANDS = (up, down, list_cmd, status, topology)
