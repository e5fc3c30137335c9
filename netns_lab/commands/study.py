"""`netns-lab dump | trace | explain`: study the BPF maps and per-packet decisions of a running lab.

A thin layer: which lab and nodes (from the lab's state), where their pins are, and
one clear line for what cannot work (no lab, a kube-proxy lab has no maps, unknown
node, a node already traced). Decoding lives in ebpf_nodeport.dump / .trace. Every
command has `-o json`; the field names are documented in docs/study-the-maps.md.
"""
from __future__ import annotations

import contextlib
import ipaddress
import json
import random
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from ebpf_nodeport import dump as dumps
from ebpf_nodeport import libbpf
from ebpf_nodeport.maps import NodeMaps
from ebpf_nodeport.trace import TraceError, Tracer
from netns_lab import dataplane, naming
from netns_lab.commands.common import console, lab_option, load_lab, require_root
from netns_lab.errors import LabError
from netns_lab.lab import PROG
from netns_lab.state import LabState, NodePortTarget
from netns_lab.topology import Topology

_output = click.option("-o", "--output", type=click.Choice(["table", "json"]), default=None,
                       help="Output format [default: table].")
_node = click.option("--node", "node", default=None, metavar="NODE",
                     help="Only this node (default: every node of the lab).")


# --------------------------------------------------------------------------- lab -> nodes and pins


def lab_nodes(st: LabState) -> dict[str, str]:
    """Node name -> fabric address, in topology order."""
    return {k: str(m.address) for k, m in st.nodes().items()}


def select_nodes(lab: str, st: LabState, node: str | None) -> dict[str, str]:
    """The nodes a command works on; LabError for an unknown node or a lab without maps."""
    nodes = lab_nodes(st)
    if node is not None and node not in nodes:
        raise LabError(f"unknown node {node!r} of lab {lab!r} (nodes: {', '.join(nodes)})")
    wanted = {node: nodes[node]} if node else nodes
    pinned = {n: ip for n, ip in wanted.items() if (naming.pin_dir(lab, n) / "cfg").is_file()}
    if not pinned:
        mode = st.mode
        hint = f"{PROG} mode tunnel --name {lab}" if lab != naming.DEFAULT_LAB else f"{PROG} mode tunnel"
        if node:
            raise LabError(f"node {node!r} of lab {lab!r} has no BPF maps (mode {mode}): "
                           f"they exist in the eBPF modes tunnel and dsr (try: {hint})")
        raise LabError(f"lab {lab!r} runs mode {mode}: no BPF maps are pinned under "
                       f"{naming.bpf_dir(lab)}; they exist in the eBPF modes tunnel and dsr (try: {hint})")
    missing = [n for n in wanted if n not in pinned]
    if missing:
        click.echo(f"{PROG}: warning: no BPF maps on {', '.join(missing)} of lab {lab!r}; skipped", err=True)
    return pinned


def _pin_dirs(lab: str, nodes: dict[str, str]) -> dict[str, str]:
    """Node name -> its pin directory, for the given nodes of the lab."""
    return {n: str(naming.pin_dir(lab, n)) for n in nodes}


@contextlib.contextmanager
def open_maps(lab: str, node: str) -> Iterator[NodeMaps]:
    """A node's maps; kernel/pin problems become one LabError line."""
    try:
        with NodeMaps(str(naming.pin_dir(lab, node))) as m:
            yield m
    except FileNotFoundError as exc:
        raise LabError(f"node {node!r} of lab {lab!r}: {exc}") from None
    except ValueError as exc:                # stale pin (key/value size changed)
        raise LabError(f"node {node!r} of lab {lab!r}: {exc}") from None
    except libbpf.BpfError as exc:
        raise LabError(f"node {node!r} of lab {lab!r}: {exc.strerror or exc}") from None


def _context(lab: str | None, node: str | None = None) -> tuple[str, LabState, dict[str, str]]:
    require_root()
    st = load_lab(lab)
    return st.lab, st, select_nodes(st.lab, st, node)


def _emit_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2))


# --------------------------------------------------------------------------- dump


@click.group(
    "dump",
    epilog="""\b
Examples:
  netns-lab dump nat                        # frontends with their backends, every node
  netns-lab dump conntrack --node control   # decoded connections on the ingress node
  netns-lab dump conntrack --client 198.19.15.254 --state established -o json
  netns-lab dump counters --reset           # show, then zero the per-reason counters
  netns-lab dump routes ; netns-lab dump config
  netns-lab dump affinity -o json           # ClientIP session affinity: client -> backend
""",
)
@lab_option
@_node
@_output
@click.pass_context
def dump_group(ctx: click.Context, lab: str | None, node: str | None, output: str | None) -> None:
    """Decode one kind of BPF map of a lab's nodes (eBPF modes): nat, backends, conntrack, counters, routes, config, affinity."""
    ctx.obj = {"lab": lab, "node": node, "output": output}


def _merged(ctx: click.Context, lab: str | None, node: str | None, output: str | None) -> tuple[str | None, str | None, str]:
    """Options given after the subcommand win over the same options given after `dump`."""
    parent = ctx.obj or {}
    return lab or parent.get("lab"), node or parent.get("node"), output or parent.get("output") or "table"


def _run_dump(kind: str, lab: str | None, node: str | None, output: str, reset: bool = False,
              **filters: Any) -> int:
    lab, st, nodes = _context(lab, node)
    names = st.addresses()
    docs = []
    for name, ip in nodes.items():
        with open_maps(lab, name) as m:
            snap = dumps.read_snapshot(m, name, names, dumps.NEEDS[kind])
            docs.append(dumps.node_document(kind, snap, ip, **filters))
            if reset:
                m.counters.zero()
    doc: dict[str, Any] = {"lab": lab, "mode": st.mode, "dump": kind, "nodes": docs}
    if kind == "counters":
        doc["reset"] = reset
    if output == "json":
        _emit_json(doc)
        return 0
    out = console()
    dumps.render(kind, doc, out)
    if reset:
        out.print(f"counters reset to 0 on {', '.join(nodes)}", highlight=False)
    return 0


def _examples(*lines: str) -> str:
    """A subcommand's --help epilog: its example lines, kept as typed."""
    return "\b\nExamples:\n" + "".join(f"  {line}\n" for line in lines)


_EXAMPLES = {
    "nat": _examples("netns-lab dump nat                       # every node's frontends and backends",
                     "netns-lab dump nat --node control -o json"),
    "backends": _examples("netns-lab dump backends --node node1"),
    "routes": _examples("netns-lab dump routes --node control     # pod blocks, node addresses, DSR opt-outs"),
    "config": _examples("netns-lab dump config -o json            # mode flags, VNI, MTU, timeouts per node"),
    "conntrack": _examples("netns-lab dump conntrack --node control",
                           "netns-lab dump conntrack --client 198.19.15.254 --state established -o json",
                           "netns-lab dump conntrack --service yaobank/customer"),
    "counters": _examples("netns-lab dump counters                  # per node, program and reason",
                          "netns-lab dump counters --node node1 --reset"),
    "affinity": _examples("netns-lab dump affinity                  # ClientIP affinity: client -> backend, seconds left",
                          "netns-lab dump affinity --node control -o json"),
}


def _dump_command(kind: str, doc: str):
    @dump_group.command(kind, help=doc, epilog=_EXAMPLES[kind])
    @lab_option
    @_node
    @_output
    @click.pass_context
    def command(ctx: click.Context, lab: str | None, node: str | None, output: str | None) -> int:
        return _run_dump(kind, *_merged(ctx, lab, node, output))
    return command


_dump_command("nat", "Service frontends (nat_fe) with service name, backend counts and their backends (nat_be).")
_dump_command("backends", "Backends (nat_be): service id and ordinal -> pod address:port, with the node hosting it.")
_dump_command("routes", "Pod blocks (routes), node addresses (nodes) and DSR opt-out CIDRs the datapath knows.")
_dump_command("config", "The cfg map: node address, tunnel VNI/port, fabric MTU, mode flags (DSR, TRACE); map usage.")


@dump_group.command("conntrack", epilog=_EXAMPLES["conntrack"])
@lab_option
@_node
@_output
@click.option("--client", default=None, metavar="IP[:PORT]", help="Only connections of this client.")
@click.option("--service", default=None, metavar="NAME",
              help="Only this service: yaobank/customer, customer, or a frontend IP[:PORT].")
@click.option("--state", type=click.Choice(dumps.STATE_CHOICES), default=None,
              help="Only entries in this TCP state (or idle past their timeout).")
@click.pass_context
def dump_conntrack(ctx: click.Context, lab: str | None, node: str | None, output: str | None,
                   client: str | None, service: str | None, state: str | None) -> int:
    """Conntrack entries decoded: client -> frontend -> backend, entry type, state, tunnel peer, DSR, age, expiry."""
    if client:
        _check_endpoint(client, "--client")
    lab, node, output = _merged(ctx, lab, node, output)
    if service:
        check_service_query(service, _context(lab, node)[1].spec())
    return _run_dump("conntrack", lab, node, output, client=client, service=service, state=state)


def check_service_query(query: str, topo: Topology) -> None:
    """--service names a service of the lab (ns/name, name, ns/name:port/proto) or is a frontend IP[:PORT];
    LabError otherwise, so that a typo is not an empty table."""
    try:
        _check_endpoint(query, "--service")
        return
    except click.BadParameter:
        pass
    name = query.split(":", 1)[0]
    known = {f"{s.namespace}/{s.name}" for s in topo.services} | {s.name for s in topo.services}
    if name not in known:
        raise LabError(f"--service {query!r}: no such service in the lab "
                       f"(services: {', '.join(sorted(f'{s.namespace}/{s.name}' for s in topo.services))})")


@dump_group.command("counters", epilog=_EXAMPLES["counters"])
@lab_option
@_node
@_output
@click.option("--reset", is_flag=True, help="Zero the counters after showing them.")
@click.pass_context
def dump_counters(ctx: click.Context, lab: str | None, node: str | None, output: str | None, reset: bool) -> int:
    """Packets per program (from_hep, from_wep, to_wep, to_hep) and reason (NATed, encapsulated, each drop), with totals."""
    return _run_dump("counters", *_merged(ctx, lab, node, output), reset=reset)


def _check_endpoint(value: str, what: str) -> None:
    addr, _, port = value.partition(":")
    try:
        ipaddress.IPv4Address(addr)
        if port and not 0 < int(port) < 65536:
            raise ValueError
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an IPv4 address or IP:PORT", param_hint=what) from None


# --------------------------------------------------------------------------- trace


def _trace_holders(lab: str):
    return naming.run_dir(lab) / "trace"


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """Ctrl-C, SIGTERM and SIGHUP set a flag the loops check (within 200 ms), so the trace flag is
    always switched off. A flag, not an exception: an exception raised while libbpf runs our ring
    buffer callback would be swallowed by ctypes and the signal lost."""
    stop = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        stop.set()

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield stop
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextlib.contextmanager
def _tracing(tracer: Any) -> Iterator[threading.Event]:
    """The tracer started (its refusal as a LabError) and always stopped again, under
    _stop_on_signals: what `trace` and `explain` both run their packets in."""
    with _stop_on_signals() as stop:
        try:
            tracer.start()
        except TraceError as exc:
            raise LabError(str(exc)) from None
        try:
            yield stop
        finally:
            tracer.stop()


@click.command(
    "trace",
    epilog="""\b
Examples:
  netns-lab trace                                  # every node, until Ctrl-C
  netns-lab trace --client 198.19.15.254 --port 30180
  netns-lab trace --node node1 --count 20 -o json  # one JSON object per line
  netns-lab trace --off                            # switch a leftover trace flag off
""",
)
@lab_option
@_node
@click.option("--client", default=None, metavar="IP", help="Only packets to or from this address (before or after NAT).")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Only packets with this port on either side.")
@click.option("--count", type=click.IntRange(min=1), default=None, help="Stop after this many events.")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=None, help="Stop after this many seconds.")
@click.option("--all", "include_pass", is_flag=True, help="Also show PASS (packets the datapath leaves alone).")
@click.option("--off", "switch_off", is_flag=True, help="Only turn the trace flag off (after a killed trace) and exit.")
@_output
def trace_cmd(lab: str | None, node: str | None, client: str | None, port: int | None, count: int | None,
              duration: float | None, include_pass: bool, switch_off: bool, output: str | None) -> int:
    """Stream the datapath's per-packet decisions: node, hook, addresses before and after, reason.

    Turns tracing (CFG_F_TRACE) on for the traced nodes while it runs and off again when it
    ends: --count/--duration reached, Ctrl-C, or SIGTERM."""
    if client:
        _check_endpoint(client, "--client")
        if ":" in client:
            raise click.BadParameter("give the port with --port", param_hint="--client")
    lab, st, nodes = _context(lab, node)
    if switch_off:
        return _trace_off(st, nodes)
    tracer = Tracer(_pin_dirs(lab, nodes), names=st.addresses(), holder_dir=_trace_holders(lab), client=client,
                    port=port, include_pass=include_pass, owner=f"lab {lab!r}")
    shown = 0
    with _tracing(tracer) as stop:
        what = ", ".join(f for f in (client and f"client {client}", port and f"port {port}") if f)
        click.echo(f"tracing {', '.join(nodes)} of lab {lab}" + (f" ({what})" if what else "")
                   + "; Ctrl-C to stop", err=True)
        deadline = time.monotonic() + duration if duration else None
        def show(records: list[dict]) -> bool:
            """Print records; True once --count is reached."""
            nonlocal shown
            for rec in records:
                click.echo(json.dumps(rec) if output == "json" else rec["line"])
                shown += 1
                if count and shown >= count:
                    return True
            return False

        done = False
        while not stop.is_set() and not done and not (deadline and time.monotonic() >= deadline):
            wait = 200 if deadline is None else max(0, min(200, int((deadline - time.monotonic()) * 1000)))
            done = show(tracer.poll(wait))
        if not done:
            # Stopped (Ctrl-C, end of --duration): what is already in the rings belongs to the
            # packets the user just watched, so print it rather than drop it.
            show(tracer.poll(0, settle_ms=0))
    click.echo(f"{shown} events; trace off on {', '.join(nodes)}", err=True)
    return 0


def _trace_off(st: LabState, nodes: dict[str, str]) -> int:
    """Turn the flag off unless a live trace holds the node."""
    lab = st.lab
    busy = []
    for name, ip in nodes.items():
        probe = Tracer(_pin_dirs(lab, {name: ip}), holder_dir=_trace_holders(lab), owner=f"lab {lab!r}")
        try:
            probe.claim()
        except TraceError:
            busy.append(name)
            continue
        try:
            dataplane.datapath(st, name).set_flags(trace=False)
        finally:
            probe.stop()
    done = [n for n in nodes if n not in busy]
    if done:
        click.echo(f"trace off on {', '.join(done)}")
    if busy:
        raise LabError(f"{', '.join(busy)} of lab {lab!r} is being traced right now; stop that trace instead")
    return 0




# --------------------------------------------------------------------------- explain

# What each (hook, reason) means in the lesson's story. {…} fields come from the event
# and the decoded conntrack entries of the traced connection.
STORY: dict[tuple[str, str], str] = {
    ("from_hep", "NAT_NEW"): (
        "First packet (the SYN). No conntrack entry yet, so {node} looks the destination up in "
        "nat_fe: {frontend} is {service}. The flow hash picks backend {backend}. Two conntrack "
        "entries are created: NAT_FWD (client, frontend) -> backend and NAT_REV (client, backend) "
        "-> frontend. The destination is rewritten (DNAT).{tunnel_text}"),
    ("from_hep", "ENCAP"): (
        "Every later packet of the client hits the NAT_FWD entry: same backend, no frontend lookup, "
        "DNAT and into the same tunnel to {peer}."),
    ("from_hep", "NAT_EST"): (
        "Every later packet of the client hits the NAT_FWD entry: DNAT to the same backend, "
        "delivered to the local pod."),
    ("from_hep", "DECAP"): (
        "VXLAN from {peer}, a node listed in the `nodes` map, with our VNI: the outer headers are "
        "stripped. The first packet creates a NORMAL entry that remembers the ingress node "
        "(tun_peer) and the frontend (outer source + the NodePort carried in the VXLAN header). "
        "The kernel routes the inner packet to the pod with the client's source {client} intact."),
    ("to_wep", "CT_EST"): (
        "Delivered to the pod: the connection is tracked and nothing is left to rewrite here, so "
        "the pod sees the client {client} as the source."),
    ("from_wep", "ENCAP"): (
        "The pod answers {client}. The reply matches the NORMAL entry; in Tunnel mode it goes back "
        "in VXLAN to the ingress node {peer}, which holds the NAT state."),
    ("from_wep", "DSR_REPLY"): (
        "The pod answers {client}. The reply matches the NORMAL entry flagged DSR: its source becomes "
        "the frontend {frontend} and it leaves this node's eth0 straight for the client. The "
        "ingress node never sees a reply packet."),
    ("from_hep", "REV_NAT"): (
        "The tunnelled reply from {peer} matches NAT_REV: decapsulated, source rewritten back to "
        "the frontend {frontend}, redirected out of eth0 to the client."),
    ("from_wep", "REV_NAT"): (
        "The local pod's reply matches NAT_REV: source back to the frontend {frontend}, out of eth0 "
        "to the client."),
}


def _story_text(rec: dict[str, Any], ctx: dict[str, Any]) -> str:
    template = STORY.get((rec["hook"], rec["reason"]))
    if template is None:
        from ebpf_nodeport.abi import REASON_DESCRIPTIONS
        return REASON_DESCRIPTIONS.get(rec["reason"], rec["reason"]).capitalize() + "."
    peer = rec["tunnel_peer"] or "-"
    if rec["tunnel_peer_node"]:
        peer = f"{rec['tunnel_peer_node']} ({rec['tunnel_peer']})"
    if rec["tunnel_peer"]:
        tunnel_text = (f" The backend lives on {peer}, so the packet is wrapped in VXLAN to it and "
                       f"redirected out of eth0; the client's address stays in the inner packet.")
        if rec["dsr"]:
            tunnel_text += " The DSR bit is set in the VXLAN header: the backend's node will answer the client itself."
    else:
        tunnel_text = " The backend is on this node: the kernel routes the packet to the pod."
    return template.format(node=rec["node"], peer=peer, tunnel_text=tunnel_text, **ctx)


@click.command(
    "explain",
    epilog="""\b
Examples:
  netns-lab up --mode tunnel && netns-lab explain
  netns-lab mode dsr && netns-lab explain    # the same curl, DSR's story
  netns-lab explain -o json
""",
)
@lab_option
@_output
def explain_cmd(lab: str | None, output: str | None) -> int:
    """Walk one curl from host1 to the NodePort on control through the maps and the trace, in the lab's current mode."""
    lab, st, nodes = _context(lab)
    names = st.addresses()
    tgt = st.nodeport_target()
    host_ns = st.members[tgt.host].netns
    fe = tgt.url
    port = random.randint(20000, 29999)

    def snapshot(kind: str, **filters: Any) -> list[dict[str, Any]]:
        docs = []
        for name, ip in nodes.items():
            with open_maps(lab, name) as m:
                snap = dumps.read_snapshot(m, name, names, dumps.NEEDS[kind])
                docs.append(dumps.node_document(kind, snap, ip, **filters))
        return docs

    config = snapshot("config")
    nat = [f for f in snapshot("nat") if f["node"] == tgt.ingress]
    frontend = next((f for n in nat for f in n["frontends"]
                     if f["kind"] == "nodeport" and f["port"] == tgt.node_port and f["proto"] == "tcp"), None)
    before = snapshot("counters")
    tracer = Tracer(_pin_dirs(lab, nodes), names=names, holder_dir=_trace_holders(lab), client=tgt.client,
                    owner=f"lab {lab!r}")
    events: list[dict[str, Any]] = []
    with _tracing(tracer) as stop:
        cmd = ["ip", "netns", "exec", host_ns, "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
               "--max-time", "10", "--local-port", f"{port}-{port + 20}", f"http://{fe}/"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        deadline = time.monotonic() + 0.6
        while time.monotonic() < deadline and not stop.is_set():
            events.extend(tracer.poll(100))
        if stop.is_set():
            raise KeyboardInterrupt
    # curl may have had to take another port of the range: learn it from the events.
    events = [e for e in events if _is_ours(e, port)]
    used = _client_port(events, tgt.client) or port
    events = [e for e in events if used in (e["sport"], e["dport"], e["nat_sport"], e["nat_dport"])]
    after = snapshot("counters")
    ct = snapshot("conntrack", client=f"{tgt.client}:{used}")
    delta = [{"node": a["node"], "moved": dumps.counter_delta(b, a)} for b, a in zip(before, after)]
    entries = [e for n in ct for e in n["entries"]]
    backend = next((e["backend"] for e in entries if e["backend"]), None)
    backend_pod = st.pod_of(backend.split(":")[0]) if backend else None
    log_line = _last_log_line(lab, backend_pod) if backend_pod else None
    ctx = {"client": f"{tgt.client}:{used}", "frontend": fe, "service": frontend["service_key"] if frontend else tgt.service,
           "backend": backend or "?"}
    steps: list[dict[str, Any]] = []
    seen: dict[tuple[str, str, str], dict[str, Any]] = {}
    for e in events:
        k = (e["node"], e["hook"], e["reason"])
        if k not in seen:
            seen[k] = {"node": e["node"], "hook": e["hook"], "reason": e["reason"], "packets": 0,
                       "first": e, "explanation": _story_text(e, ctx)}
            steps.append(seen[k])
        seen[k]["packets"] += 1
    ingress_cfg = next((c["config"] for c in config if c["node"] == tgt.ingress), None)
    doc = {"lab": lab, "mode": ingress_cfg["mode"] if ingress_cfg else st.mode, "lab_mode": st.mode,
           "client": tgt.client, "client_port": used,
           "host": tgt.host, "frontend": fe, "service": ctx["service"], "backend": backend,
           "backend_pod": backend_pod, "curl_exit": proc.returncode, "http_code": proc.stdout.strip() or None,
           "config": [{"node": c["node"], "mode": c["config"]["mode"], "flags": c["config"]["flags"]} for c in config],
           "nat_frontend": frontend, "steps": steps, "events": events,
           "conntrack": [{"node": n["node"], "entries": n["entries"]} for n in ct],
           "counters": delta, "backend_log": log_line}
    if output == "json":
        _emit_json(doc)
    else:
        _render_story(doc, tgt)
    if proc.returncode != 0:
        raise LabError(f"curl {fe} from {tgt.host} failed (exit {proc.returncode}): "
                       f"{proc.stderr.strip() or 'no output'}")
    if not events:
        raise LabError("the curl left no trace events: is the datapath attached? (netns-lab status)")
    return 0


def _is_ours(e: dict[str, Any], port: int) -> bool:
    ports = {e["sport"], e["dport"], e["nat_sport"], e["nat_dport"]}
    return any(port <= p <= port + 20 for p in ports)


def _client_port(events: list[dict[str, Any]], client: str) -> int | None:
    for e in events:
        if e["saddr"] == client:
            return e["sport"]
        if e["daddr"] == client:
            return e["dport"]
    return None


def _last_log_line(lab: str, pod: str) -> str | None:
    """The backend pod's newest access-log line (it writes after replying: wait briefly)."""
    path = naming.log_path(lab, pod)
    for _ in range(20):
        try:
            lines = [ln for ln in path.read_text(errors="replace").splitlines() if " - - [" in ln]
        except OSError:
            lines = []
        if lines:
            return lines[-1]
        time.sleep(0.05)
    return None


def _render_story(doc: dict[str, Any], tgt: NodePortTarget) -> None:
    out = console()
    p = lambda s: out.print(s, highlight=False)  # noqa: E731
    p(f"[bold]One curl through the eBPF datapath of lab {doc['lab']}, mode {doc['mode']}[/]")
    p(f"  {doc['host']} ({doc['client']}, source port {doc['client_port']}) -> {doc['frontend']} "
      f"(NodePort on {tgt.ingress}); HTTP {doc['http_code'] or '-'}")
    for c in doc["config"]:
        p(f"  cfg on {c['node']}: mode {c['mode']}, flags {','.join(c['flags']) or '-'}")
    fe = doc["nat_frontend"]
    if fe:
        bes = ", ".join(f"#{b['ordinal']} {b['backend']} on {'this node' if b['local'] else b['node']}"
                        for b in fe["backends"])
        p(f"  nat_fe on {tgt.ingress}: {fe['frontend']}/{fe['proto']} -> {fe['service_key']} "
          f"({fe['backend_count']} backends, {fe['local_count']} local): {bes}")
    p("")
    p("[bold]The packets, as the programs saw them[/] (first packet of each kind, then how many)")
    for i, s in enumerate(doc["steps"], 1):
        p(f" {i}. [cyan]{escape(s['first']['line'])}[/]  x{s['packets']}")
        out.print(f"    {s['explanation']}", highlight=False, soft_wrap=True)
    p("")
    p("[bold]Every event of the connection[/] (netns-lab trace)")
    for e in doc["events"]:
        p(f"  {escape(e['line'])}")
    p("")
    for n in doc["conntrack"]:
        if n["entries"]:
            dumps.render("conntrack", {"nodes": [{"node": n["node"], "address": None, "entries": n["entries"]}]}, out)
    p("[bold]Counters that moved meanwhile[/] (they also count the apps' own calls: customer -> summary -> database)")
    t = Table()
    for col in ("node", "program", "reason", "+packets"):
        t.add_column(col)
    for n in doc["counters"]:
        for r in n["moved"]:
            t.add_row(n["node"], r["hook"], r["reason"], str(r["packets"]))
    out.print(t)
    if doc["backend_log"]:
        p(f"[bold]{doc['backend_pod']} log[/]: {escape(doc['backend_log'])}")
        client_seen = doc["backend_log"].split(" ", 1)[0]
        if client_seen == doc["client"]:
            p(f"  the pod saw the client's own address {client_seen}: the source IP is preserved.")
        else:
            p(f"  the pod saw {client_seen}, not the client {doc['client']}.")


COMMANDS = (dump_group, trace_cmd, explain_cmd)


def affinity_timeouts(topo: Topology) -> dict[tuple[int, int, int], int]:
    """(frontend address, port, proto) -> the service's ClientIP timeout, for every frontend an affinity entry
    can name: the ClusterIP and external addresses at the port, every node's address at the node port."""
    from ebpf_nodeport.abi import ip2int, proto_num
    from netns_lab.loadbalancer import external_addrs

    timeouts = {}
    for s in topo.services:
        if s.affinity_timeout:
            for sp in s.ports:
                proto = proto_num(sp.protocol.lower())
                for a in [s.cluster_ip, *external_addrs(s)]:
                    timeouts[(ip2int(a), sp.port, proto)] = s.affinity_timeout
                for n in topo.nodes if sp.node_port else ():
                    timeouts[(ip2int(n.address), sp.node_port, proto)] = s.affinity_timeout
    return timeouts


@dump_group.command("affinity", epilog=_EXAMPLES["affinity"])
@lab_option
@_node
@_output
@click.pass_context
def dump_affinity(ctx: click.Context, lab: str | None, node: str | None, output: str | None) -> int:
    """ClientIP session affinity (affinity map): frontend, client -> backend, age and seconds left."""
    import time as _time

    from ebpf_nodeport import lbsync

    lab, st, nodes = _context(*_merged(ctx, lab, node, output)[:2])
    output = _merged(ctx, lab, node, output)[2]
    timeouts = affinity_timeouts(st.spec())
    now = _time.clock_gettime_ns(_time.CLOCK_MONOTONIC)
    docs = []
    for name, ip in nodes.items():
        with open_maps(lab, name) as m:
            docs.append({"node": name, "address": ip, "affinity": lbsync.affinity_records(m, now, timeouts)})
    if output == "json":
        _emit_json({"lab": lab, "mode": st.mode, "dump": "affinity", "nodes": docs})
        return 0
    for d in docs:
        click.echo(f"{d['node']} ({d['address']}) affinity: {len(d['affinity'])}")
        for r in d["affinity"]:
            click.echo(f"  {r['frontend']} client {r['client']} -> {r['backend']}  age {r['age_s']}s  "
                       f"expires in {r['expires_in_s']}s")
    return 0
