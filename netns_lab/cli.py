"""netns-lab command line: a thin layer over topology, builder, apps, kubeproxy, state and cleanup.

Every failure the user can cause (bad arguments, not root, unknown member, no such lab, bad
topology file, missing BCC/headers for an eBPF mode) ends as one line on stderr and a
non-zero exit, before anything is changed. Read commands take `-o json`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from netns_lab import cleanup, naming
from netns_lab import felix as felix_model
from netns_lab import state as lab_state
from netns_lab.errors import LabError
from netns_lab.felix import FelixConfig, FelixConfigError
from netns_lab.nsexec import list_netns
from netns_lab.state import EBPF_MODES, MODES
from netns_lab.topology import (
    AddressPlan,
    Topology,
    default_topology,
    dump_topology,
    load_topology,
    plan,
    topology_from_dict,
    topology_to_dict,
)

PROG = "netns-lab"
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
ACCESS_RE = re.compile(r'^(?P<client>\S+) - - \[(?P<time>[^\]]+)\] "(?P<request>[^"]*)" (?P<status>\d{3}) (?P<size>\S+)$')


def console() -> Console:
    """stdout console; wide when piped so tables don't wrap in logs and CI."""
    return Console(width=None if sys.stdout.isatty() else 160, soft_wrap=False)


# --------------------------------------------------------------------------- shared helpers (also for other commands)


def require_root() -> None:
    """LabError unless running as root (namespaces, iptables and BPF all need it)."""
    if os.geteuid() != 0:
        raise LabError(f"must run as root (try: sudo {PROG} {' '.join(sys.argv[1:])})".rstrip())


def _check_name(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Click callback: validate --name against the naming rule."""
    if value is None:
        return None
    try:
        return naming.check_lab_name(value)
    except LabError as exc:
        raise click.BadParameter(str(exc)) from None


lab_option = click.option(
    "--name",
    "-n",
    "lab",
    default=None,
    callback=_check_name,
    metavar="LAB",
    help=f"Lab name (default: {naming.DEFAULT_LAB}).",
)
output_option = click.option(
    "-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True, help="Output format."
)


def load_lab(lab: str) -> dict[str, Any]:
    """The lab's state, or LabError naming the labs that do exist."""
    st = lab_state.load(lab)
    if st is None:
        present = cleanup.labs_present()
        hint = f" (labs present: {', '.join(present)})" if present else " (no lab is up; start one with: netns-lab up)"
        raise LabError(f"no lab named {lab!r}{hint}")
    return st


def lab_topology(st: dict[str, Any]) -> tuple[Topology, AddressPlan]:
    """Topology and address plan recorded in a lab's state."""
    topo = topology_from_dict(st["topology"])
    return topo, plan(topo)


def check_ebpf_prereqs(mode: str) -> None:
    """LabError unless the eBPF dataplane module, BCC and kernel headers are all available."""
    if importlib.util.find_spec("netns_lab.dataplane") is None:
        raise LabError(f"mode {mode!r} needs the eBPF dataplane (netns_lab/dataplane.py), which is not part of this install yet")
    if importlib.util.find_spec("bcc") is None:
        raise LabError(f"mode {mode!r} needs BCC's python module: install python3-bpfcc (./setup.sh does)")
    build = Path("/lib/modules") / os.uname().release / "build"
    if not build.exists():
        raise LabError(f"mode {mode!r} needs kernel headers: {build} is missing (./setup.sh links Debian's 6.1 headers)")


class LabGroup(click.Group):
    """Group that turns LabError into one line on stderr and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; report LabError without a traceback."""
        try:
            return super().invoke(ctx)
        except LabError as exc:
            click.echo(f"{PROG}: error: {exc}", err=True)
            ctx.exit(1)


# --------------------------------------------------------------------------- group


@click.group(cls=LabGroup, context_settings=CONTEXT)
@click.version_option(package_name="ebpf-nodeport", prog_name=PROG)
def cli() -> None:
    """The yaobank cluster of Calico's "native service handling" lesson, in network namespaces.

    \b
    Quick start (as root):
      netns-lab up                                   # kube-proxy mode, lab "default"
      netns-lab exec host1 -- curl -s 198.19.0.1:30180
      netns-lab logs customer --follow               # shows 198.19.0.1: kube-proxy SNAT
      netns-lab mode tunnel                          # eBPF: the log shows host1, 198.19.15.254
      netns-lab mode dsr                             # replies skip the ingress node
      netns-lab lesson                               # the whole lesson, step by step
      netns-lab down
    """


# --------------------------------------------------------------------------- up


@cli.command(
    epilog="""\b
Examples:
  netns-lab up                              # default lab, kube-proxy mode
  netns-lab up --name lab2                  # a second lab beside the first
  netns-lab up --topology my.yaml           # your own topology (see: netns-lab topology)
  netns-lab up --mode dsr                   # eBPF dataplane, DSR for NodePorts
"""
)
@lab_option
@click.option("--mode", type=click.Choice(MODES), default=None, help="Service dataplane [default: kube-proxy].")
@click.option(
    "--topology",
    "topology_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="YAML topology file (default: yaobank as in the lesson).",
)
def up(lab: str | None, mode: str | None, topology_file: Path | None) -> int:
    """Build the lab: namespaces, veths, routes, services and the yaobank apps.

    Idempotent: running it again on a lab that is up changes nothing and says so.
    """
    lab = lab or naming.DEFAULT_LAB
    topo = load_topology(topology_file) if topology_file else default_topology()
    addr_plan = plan(topo)
    require_root()
    want_mode = mode or "kube-proxy"
    if want_mode in EBPF_MODES:
        check_ebpf_prereqs(want_mode)
    out = console()
    had_dir = naming.run_dir(lab).exists()
    with lab_state.lock(lab):
        try:
            if _already_up(lab, topo if topology_file else None, mode, out):
                return 0
        except LabError:
            if not had_dir:
                shutil.rmtree(naming.run_dir(lab), ignore_errors=True)  # only the lock directory we just made
            raise
        t0 = time.monotonic()
        _bring_up(lab, topo, addr_plan, want_mode, out)
        out.print(f"lab [bold]{lab}[/] is up (mode {want_mode}) in {time.monotonic() - t0:.2f}s")
        hint = "" if lab == naming.DEFAULT_LAB else f" --name {lab}"
        first = next((h.name for h in topo.hosts), None)
        nodeport = next((sp.node_port for s in topo.services for sp in s.ports if sp.node_port), None)
        if first and nodeport:
            out.print(f"try: {PROG} exec{hint} {first} -- curl -s {topo.nodes[0].address}:{nodeport}", highlight=False)
    return 0


def _already_up(lab: str, topo: Topology | None, mode: str | None, out: Console) -> bool:
    """True (after saying so) if the lab is already up as asked; LabError if it exists differently or half-built."""
    st = lab_state.load(lab)
    leftovers = cleanup.lab_namespaces(lab) or naming.bpf_dir(lab).exists()
    if st is None:
        if leftovers:
            raise LabError(f"lab {lab!r} has leftovers of an interrupted run; clean up first: {PROG} down --name {lab}")
        return False
    expected = {naming.netns(lab, naming.FABRIC)} | {m["netns"] for m in st.get("members", {}).values()}
    if st.get("status") != "ready" or not expected <= set(list_netns()):
        raise LabError(f"lab {lab!r} is half-built (an `up` was interrupted); clean up first: {PROG} down --name {lab}")
    if mode is not None and mode != st.get("mode"):
        raise LabError(f"lab {lab!r} is already up in mode {st.get('mode')}; switch live with `{PROG} mode {mode}` or `down` it first")
    if topo is not None and topology_to_dict(topo) != st.get("topology"):
        raise LabError(f"lab {lab!r} is already up with a different topology; `{PROG} down --name {lab}` it first")
    out.print(f"lab [bold]{lab}[/] is already up (mode {st.get('mode')}); nothing changed")
    return True


def _bring_up(lab: str, topo: Topology, addr_plan: AddressPlan, mode: str, out: Console) -> None:
    """Build, program services, start apps, wait for them; on any failure remove what was made."""
    from netns_lab import builder, kubeproxy
    from netns_lab.apps import launch

    st = _new_state(lab, topo, addr_plan, mode)
    lab_state.save(lab, st)
    step = time.monotonic

    def progress(msg: str) -> None:
        out.print(f"  [green]ok[/] {msg}", highlight=False)

    me = os.getpid()

    def on_term(signum: int, frame: Any) -> None:
        if os.getpid() != me:  # a forked helper of some library: never run our roll-back twice
            os._exit(1)
        raise KeyboardInterrupt  # SIGTERM during `up`: roll back like Ctrl-C

    signal.signal(signal.SIGTERM, on_term)
    try:
        cali = builder.build(lab, topo, addr_plan, progress)
        for pod, ifname in cali.items():
            st["pods"][pod]["host_ifname"] = ifname
        lab_state.save(lab, st)

        t = step()
        if mode == "kube-proxy":
            for node in topo.nodes:
                kubeproxy.install(naming.netns(lab, node.name), kubeproxy.ruleset(topo, addr_plan, node.name))
            st["kubeproxy"] = {"installed": True, "nodes": [n.name for n in topo.nodes]}
            progress(f"kube-proxy iptables rules on {len(topo.nodes)} nodes ({step() - t:.2f}s)")
        else:
            from netns_lab import dataplane  # type: ignore[attr-defined]

            dataplane.apply_mode(st, mode, lambda msg: progress(escape(msg)))
            progress(f"eBPF dataplane, mode {mode} ({step() - t:.2f}s)")
        lab_state.save(lab, st)

        t = step()
        started = [launch.start(lab, topo, pod) for pod in topo.pods]
        for s in started:
            st["pods"][s.pod]["pid"] = s.pid
        lab_state.save(lab, st)
        launch.wait_ready(lab, topo, addr_plan, started)
        progress(f"{len(started)} apps answering ({step() - t:.2f}s)")

        st["status"] = "ready"
        lab_state.save(lab, st)
    except BaseException as exc:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # finish the clean-up even if signalled again
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        out.print(f"  [red]failed[/]: {escape(str(exc) or type(exc).__name__)}; removing what was built", highlight=False)
        cleanup.teardown(lab)
        raise
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _new_state(lab: str, topo: Topology, addr_plan: AddressPlan, mode: str) -> dict[str, Any]:
    """The state document of a lab about to be built (status "building")."""
    members: dict[str, dict[str, Any]] = {}
    for n in topo.nodes:
        members[n.name] = {
            "kind": "node",
            "netns": naming.netns(lab, n.name),
            "address": n.address,
            "pod_block": str(addr_plan.node_blocks[n.name]),
        }
    for h in topo.hosts:
        members[h.name] = {"kind": "host", "netns": naming.netns(lab, h.name), "address": h.address}
    pods: dict[str, dict[str, Any]] = {}
    for p in topo.pods:
        members[p.name] = {"kind": "pod", "netns": naming.netns(lab, p.name), "node": p.node}
        pods[p.name] = {
            "node": p.node,
            "app": p.app,
            "ip": str(addr_plan.pod_ips[p.name]),
            "netns": naming.netns(lab, p.name),
            "host_ifname": naming.cali_ifname(lab, p.name),
            "pid": None,
            "log": str(naming.log_path(lab, p.name)),
        }
    services = [
        {
            "name": s.full_name,
            "cluster_ip": s.cluster_ip,
            "ports": [
                {
                    "name": sp.name,
                    "protocol": sp.protocol,
                    "port": sp.port,
                    "target_port": sp.target,
                    "node_port": sp.node_port,
                    "backends": [{"pod": b.pod, "ip": b.ip, "port": b.port} for b in addr_plan.backends(s, sp)],
                }
                for sp in s.ports
            ],
        }
        for s in topo.services
    ]
    return {
        "version": lab_state.STATE_VERSION,
        "lab": lab,
        "status": "building",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "mode": mode,
        "topology": topology_to_dict(topo),
        "members": members,
        "pods": pods,
        "services": services,
        "felix": felix_model.for_mode(FelixConfig(), mode).to_spec(),
        "kubeproxy": {"installed": False, "nodes": []},
    }


# --------------------------------------------------------------------------- down


@cli.command(
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
    if all_labs:
        labs = cleanup.labs_present()
        if not labs:
            out.print("no labs to remove")
    else:
        lab = lab or naming.DEFAULT_LAB
        if not cleanup.lab_exists(lab):
            raise LabError(f"no lab named {lab!r}")
        labs = [lab]
    for name in labs:
        t0 = time.monotonic()
        with lab_state.lock(name, timeout=30):
            removed = cleanup.teardown(name)
        extra = ", BPF pins" if removed.pins else ""
        out.print(
            f"lab [bold]{name}[/] removed: {len(removed.namespaces)} namespaces, {len(removed.pids)} processes"
            f"{extra} ({time.monotonic() - t0:.2f}s)",
            highlight=False,
        )
    if all_labs:
        cleanup.remove_empty_roots()
    return 0


# --------------------------------------------------------------------------- status / list / topology


def _pid_running(pid: Any) -> bool:
    """True if `pid` is a live (non-zombie) process."""
    if not isinstance(pid, int):
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def status_document(lab: str, st: dict[str, Any]) -> dict[str, Any]:
    """What `status` shows: the state plus live checks (namespace present, app running)."""
    present = set(list_netns())
    members = st.get("members", {})
    return {
        "lab": lab,
        "status": st.get("status"),
        "mode": st.get("mode"),
        "felix": st.get("felix", {}),
        "nodes": [
            {"name": k, **{f: v.get(f) for f in ("address", "pod_block", "netns")}, "present": v["netns"] in present}
            for k, v in members.items()
            if v["kind"] == "node"
        ],
        "hosts": [
            {"name": k, "address": v.get("address"), "netns": v["netns"], "present": v["netns"] in present}
            for k, v in members.items()
            if v["kind"] == "host"
        ],
        "pods": [
            {"name": k, **{f: v.get(f) for f in ("node", "app", "ip", "host_ifname", "pid")}, "running": _pid_running(v.get("pid"))}
            for k, v in st.get("pods", {}).items()
        ],
        "services": st.get("services", []),
        "kubeproxy": st.get("kubeproxy", {}),
        "dataplane": _dataplane_status(st),
    }


def _dataplane_status(st: dict[str, Any]) -> dict[str, Any]:
    """Live per-node view of the dataplane (programs attached, kube-proxy rules, NOTRACK) and the mode's sysctls."""
    from netns_lab import dataplane

    return dataplane.status(st)


@cli.command(
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
    lab = lab or naming.DEFAULT_LAB
    doc = status_document(lab, load_lab(lab))
    if output == "json":
        click.echo(json.dumps(doc, indent=2))
        return 0
    out = console()
    out.print(f"lab [bold]{lab}[/]: {doc['status']}, mode [bold]{doc['mode']}[/]", highlight=False)
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
        if "error" in n:
            progs = f"[red]{escape(n['error'])}[/]"
        t.add_row(node, "loaded" if n["datapath_loaded"] else "-", progs,
                  "yes" if n.get("kube_proxy_rules") else "no", "yes" if n.get("notrack") else "no")
    out.print(t)
    sysctls = ", ".join(f"{k}={v}" for k, v in dp["sysctls"].items()) or "none (the builder's settings suffice)"
    out.print(f"sysctls changed for mode {doc['mode']}: {sysctls}", highlight=False)
    if dp.get("last_switch"):
        ls = dp["last_switch"]
        out.print(f"last switch: {ls['from']} -> {ls['to']} in {ls['seconds']:.2f}s", highlight=False)


def _yes(flag: bool) -> str:
    """Table cell for a boolean."""
    return "yes" if flag else "[red]no[/]"


@cli.command("list")
@output_option
def list_labs(output: str) -> int:
    """List the labs present on this machine (also half-built ones)."""
    rows = []
    for lab in cleanup.labs_present():
        try:
            st = lab_state.load(lab)
        except LabError:
            st = None
        rows.append(
            {
                "lab": lab,
                "status": (st or {}).get("status", "no state"),
                "mode": (st or {}).get("mode"),
                "namespaces": len(cleanup.lab_namespaces(lab)),
            }
        )
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


@cli.command(
    epilog="""\b
Examples:
  netns-lab topology > my.yaml          # the default yaobank, to edit
  netns-lab up --name mine --topology my.yaml
  netns-lab topology --name mine -o json
"""
)
@lab_option
@click.option("-o", "--output", type=click.Choice(["yaml", "json"]), default="yaml", show_default=True, help="Output format.")
def topology(lab: str | None, output: str) -> int:
    """Print a lab's topology (or the default one) in the format `up --topology` reads."""
    topo = lab_topology(load_lab(lab))[0] if lab else default_topology()
    click.echo(dump_topology(topo) if output == "yaml" else json.dumps(topology_to_dict(topo), indent=2))
    return 0


# --------------------------------------------------------------------------- exec / logs


@cli.command(
    "exec",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
    epilog="""\b
Examples:
  netns-lab exec host1 -- curl -s 198.19.0.1:30180
  netns-lab exec control -- tcpdump -nvi any 'tcp port 30180'
  netns-lab exec --name lab2 node1 -- ip route
""",
)
@lab_option
@click.argument("member")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_cmd(lab: str | None, member: str, command: tuple[str, ...]) -> NoReturn:
    """Run COMMAND inside the namespace of MEMBER (node, host, pod or fabric); its exit status is passed through."""
    lab = lab or naming.DEFAULT_LAB
    if command and command[0] == "--":  # parsing stops at MEMBER, so a separating `--` arrives here
        command = command[1:]
    if not command:
        raise click.UsageError("missing COMMAND after MEMBER")
    require_root()
    st = load_lab(lab)
    names = {k: v["netns"] for k, v in st.get("members", {}).items()}
    names[naming.FABRIC] = naming.netns(lab, naming.FABRIC)
    if member not in names:
        raise LabError(f"unknown member {member!r} of lab {lab!r} (members: {', '.join(sorted(names))})")
    ns = names[member]
    if ns not in list_netns():
        raise LabError(f"namespace {ns} of {member!r} is missing; the lab is broken: {PROG} down --name {lab}")
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvp("ip", ["ip", "netns", "exec", ns, *command])
    except OSError as exc:
        raise LabError(f"cannot run ip netns exec: {exc.strerror}") from None


def parse_access_line(line: str) -> dict[str, Any] | None:
    """One access-log line as a dict (client, time, request, method, path, status, size); None for other lines."""
    m = ACCESS_RE.match(line.rstrip("\n"))
    if not m:
        return None
    d: dict[str, Any] = m.groupdict()
    parts = d["request"].split()
    d["method"] = parts[0] if parts else ""
    d["path"] = parts[1] if len(parts) > 1 else ""
    d["status"] = int(d["status"])
    return d


@cli.command(
    epilog="""\b
Examples:
  netns-lab logs customer
  netns-lab logs customer --follow        # like kubectl logs --follow
  netns-lab logs customer -o json         # parsed access-log entries
"""
)
@lab_option
@click.argument("pod")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until interrupted.")
@output_option
def logs(lab: str | None, pod: str, follow: bool, output: str) -> int:
    """Print a pod's log: its app's access log in the lesson's format."""
    lab = lab or naming.DEFAULT_LAB
    st = load_lab(lab)
    if pod not in st.get("pods", {}):
        raise LabError(f"unknown pod {pod!r} of lab {lab!r} (pods: {', '.join(st.get('pods', {}))})")
    path = naming.log_path(lab, pod)
    try:
        f = open(path, errors="replace")
    except FileNotFoundError:
        raise LabError(f"pod {pod!r} has no log yet ({path})") from None
    with f:
        if output == "json" and not follow:
            entries = [e for line in f if (e := parse_access_line(line))]
            click.echo(json.dumps(entries, indent=2))
            return 0
        _emit(f.read(), output)
        while follow:
            chunk = f.read()
            if chunk:
                _emit(chunk, output)
            elif not path.exists():
                return 0  # the lab was taken down
            else:
                time.sleep(0.1)
    return 0


def _emit(text: str, output: str) -> None:
    """Write log text, or one JSON object per access line when following with -o json."""
    if output == "json":
        for line in text.splitlines():
            if e := parse_access_line(line):
                click.echo(json.dumps(e))
    else:
        sys.stdout.write(text)
    sys.stdout.flush()


# --------------------------------------------------------------------------- felixconfiguration, mode, delete pod, lesson

FELIX_KINDS = ("felixconfiguration", "felixconfigurations", "felixconfig", "felixconfigs")
POD_KINDS = ("pod", "pods", "po")


def _felix_target(kind: str, name: str) -> None:
    """LabError unless KIND NAME is felixconfiguration default (the only resource of its kind here)."""
    if kind.lower() not in FELIX_KINDS:
        raise LabError(f"unknown resource kind {kind!r}: this lab has felixconfiguration only (e.g. {PROG} get felixconfiguration default)")
    if name != "default":
        raise LabError(f"felixconfiguration {name!r} not found: this lab has only 'default'")


def _ready_lab(lab: str) -> dict[str, Any]:
    """The state of a lab that is fully up; LabError otherwise."""
    st = load_lab(lab)
    if st.get("status") != "ready":
        raise LabError(f"lab {lab!r} is not ready (status {st.get('status')}); clean up first: {PROG} down --name {lab}")
    return st


def _switch(lab: str, change: Any, out: Console) -> Any:
    """Apply a FelixConfig change to a running lab under its lock; returns the dataplane.Change."""
    from netns_lab import dataplane

    load_lab(lab)  # before the lock, which would create the lab's directory
    with lab_state.lock(lab):
        st = _ready_lab(lab)
        try:
            new = change(dataplane.felix_of(st))
        except FelixConfigError as exc:
            raise LabError(str(exc)) from None
        if new.mode in EBPF_MODES:
            check_ebpf_prereqs(new.mode)
        ch = dataplane.apply(st, new, lambda msg: out.print(f"  [green]ok[/] {escape(msg)}", highlight=False))
        lab_state.save(lab, st)
    return ch


def _report(out: Console, ch: Any) -> None:
    """One closing line for a mode switch."""
    if not ch.changed:
        out.print(f"mode {ch.new_mode}: nothing to change", highlight=False)
    elif ch.old_mode == ch.new_mode:
        out.print(f"mode {ch.new_mode}: updated in {ch.total_s:.2f}s", highlight=False)
    else:
        out.print(f"mode {ch.old_mode} -> {ch.new_mode} in {ch.total_s:.2f}s", highlight=False)


@cli.command(
    epilog="""\b
Examples (the lesson's calicoctl commands):
  netns-lab patch felixconfiguration default --patch='{"spec": {"bpfKubeProxyIptablesCleanupEnabled": false}}'
  netns-lab patch felixconfiguration default --patch='{"spec": {"bpfEnabled": true}}'
  netns-lab patch felixconfiguration default --patch='{"spec": {"bpfExternalServiceMode": "DSR"}}'
  netns-lab patch felixconfiguration default -p '{"spec": {"bpfDSROptoutCIDRs": ["198.19.15.0/24"]}}'
\b
Fields: bpfEnabled (true: eBPF dataplane), bpfExternalServiceMode (Tunnel | DSR),
bpfKubeProxyIptablesCleanupEnabled (false: kube-proxy's rules stay, bypassed by BPF),
bpfDSROptoutCIDRs (clients that keep Tunnel behaviour in DSR mode).
"""
)
@lab_option
@click.argument("kind", metavar="felixconfiguration")
@click.argument("name", metavar="default")
@click.option("-p", "--patch", "patch_text", required=True, metavar="JSON", help='A JSON merge patch: {"spec": {...}}.')
def patch(lab: str | None, kind: str, name: str, patch_text: str) -> int:
    """Patch FelixConfiguration "default" as calicoctl does; the lab moves to what it selects, live."""
    _felix_target(kind, name)
    try:
        felix_model.apply_patch(FelixConfig(), patch_text)  # refuse bad input before touching anything
    except FelixConfigError as exc:
        raise LabError(str(exc)) from None
    require_root()
    out = console()
    ch = _switch(lab or naming.DEFAULT_LAB, lambda cfg: felix_model.apply_patch(cfg, patch_text), out)
    out.print("Successfully patched 1 'FelixConfiguration' resource", highlight=False)
    _report(out, ch)
    return 0


@cli.command(
    epilog="""\b
Examples:
  netns-lab get felixconfiguration default
  netns-lab get felixconfiguration default -o json | jq .spec.bpfEnabled
"""
)
@lab_option
@click.argument("kind", metavar="felixconfiguration")
@click.argument("name", metavar="default")
@click.option("-o", "--output", type=click.Choice(["yaml", "json"]), default="yaml", show_default=True, help="Output format.")
def get(lab: str | None, kind: str, name: str, output: str) -> int:
    """Show FelixConfiguration "default" (the fields this lab models) as calicoctl get would."""
    import yaml

    _felix_target(kind, name)
    st = load_lab(lab or naming.DEFAULT_LAB)
    try:
        resource = FelixConfig.from_spec(st.get("felix")).to_resource()
    except FelixConfigError as exc:
        raise LabError(f"the lab's felix configuration is invalid: {exc}") from None
    click.echo(json.dumps(resource, indent=2) if output == "json" else yaml.safe_dump(resource, sort_keys=False).rstrip())
    return 0


@cli.command(
    "mode",
    epilog="""\b
Examples:
  netns-lab mode                  # show the current mode
  netns-lab mode tunnel           # = patch {"spec": {"bpfEnabled": true, "bpfExternalServiceMode": "Tunnel"}}
  netns-lab mode dsr              # = ... "bpfExternalServiceMode": "DSR"
  netns-lab mode kube-proxy       # = patch {"spec": {"bpfEnabled": false}}
""",
)
@lab_option
@click.argument("mode", required=False, type=click.Choice(MODES))
@output_option
def mode_cmd(lab: str | None, mode: str | None, output: str) -> int:
    """Switch the service dataplane of a running lab live (kube-proxy, tunnel or dsr); without MODE, show it."""
    lab = lab or naming.DEFAULT_LAB
    if mode is None:
        st = load_lab(lab)
        doc = {"lab": lab, "mode": st.get("mode"), "felix": st.get("felix", {})}
        click.echo(json.dumps(doc, indent=2) if output == "json" else str(doc["mode"]))
        return 0
    require_root()
    out = console()
    ch = _switch(lab, lambda cfg: felix_model.for_mode(cfg, mode), out)
    _report(out, ch)
    return 0


def _select_pods(st: dict[str, Any], names: tuple[str, ...], selector: str | None) -> list[str]:
    """Pod names from arguments and/or a label selector (k=v[,k=v]); LabError for unknown pods or a bad selector."""
    pods = st.get("pods", {})
    chosen = list(names)
    for n in names:
        if n not in pods:
            raise LabError(f"unknown pod {n!r} of lab {st['lab']!r} (pods: {', '.join(pods)})")
    if selector:
        want = {}
        for part in selector.split(","):
            key, eq, value = part.partition("=")
            if not eq or not key or not value:
                raise LabError(f"bad selector {selector!r}: use key=value[,key=value], e.g. app=summary")
            want[key.strip()] = value.strip()
        topo = lab_topology(st)[0]
        matched = [p.name for p in topo.pods if want.items() <= p.all_labels().items()]
        if not matched:
            raise LabError(f"no pod of lab {st['lab']!r} matches {selector!r}")
        chosen += [m for m in matched if m not in chosen]
    return chosen


@cli.command(
    "delete",
    epilog="""\b
Examples (the lesson restarts pods after enabling eBPF):
  netns-lab delete pod customer
  netns-lab delete pod -l app=summary       # summary-1 and summary-2
\b
The pod is recreated at once with a new address, its app restarted, and the services'
backends re-programmed (kube-proxy's rules, or the BPF maps in the eBPF modes).
""",
)
@lab_option
@click.argument("kind", metavar="pod")
@click.argument("names", nargs=-1, metavar="[NAME]...")
@click.option("-l", "--selector", metavar="KEY=VALUE", help="Delete the pods with these labels (e.g. app=summary).")
def delete(lab: str | None, kind: str, names: tuple[str, ...], selector: str | None) -> int:
    """Delete pods as kubectl does; each is recreated (new address) and the services follow it."""
    from netns_lab import dataplane

    if kind.lower() not in POD_KINDS:
        raise LabError(f"unknown resource kind {kind!r}: only pods can be deleted (e.g. {PROG} delete pod customer)")
    if not names and not selector:
        raise click.UsageError("give pod NAMEs or -l KEY=VALUE")
    require_root()
    lab = lab or naming.DEFAULT_LAB
    out = console()
    load_lab(lab)  # before the lock, which would create the lab's directory
    with lab_state.lock(lab):
        st = _ready_lab(lab)
        for name in _select_pods(st, names, selector):
            try:
                ch = dataplane.delete_pod(st, name)
            finally:
                lab_state.save(lab, st)
            out.print(f'pod "{name}" deleted; recreated on {st["pods"][name]["node"]} as {ch.new_ip} '
                      f"(was {ch.old_ip}), backends re-programmed ({ch.seconds:.2f}s)", highlight=False)
    return 0


@cli.command(
    epilog="""\b
Examples:
  netns-lab lesson                 # on lab "default" (brought up, and taken down at the end)
  netns-lab lesson --keep          # leave the lab up in DSR mode afterwards
  netns-lab lesson --name mine     # on another lab (an existing one is left up)
"""
)
@lab_option
@click.option("--keep", is_flag=True, help="Leave the lab up at the end (a lab that was already up is always left up).")
def lesson(lab: str | None, keep: bool) -> int:
    """Walk the lesson on a lab: kube-proxy SNAT, eBPF source-IP preservation, then DSR seen with tcpdump."""
    from netns_lab import lesson as walk

    require_root()
    check_ebpf_prereqs("tunnel")
    return walk.run(lab or naming.DEFAULT_LAB, keep, console())


# --------------------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> NoReturn:
    """Console-script entry: usage errors as one line (exit 2), LabError as one line (exit 1)."""
    try:
        rv = cli.main(args=argv, prog_name=PROG, standalone_mode=False)
    except click.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx else PROG
        click.echo(f"{PROG}: error: {exc.format_message()} (see: {where} --help)", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        click.echo(f"{PROG}: error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo(f"{PROG}: interrupted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
from netns_lab import study as _study  # noqa: E402,F401  registers dump/trace/explain
from netns_lab import bench as _bench  # noqa: E402,F401  registers bench
from netns_lab import diags_cmd as _diags  # noqa: E402,F401  registers diags
