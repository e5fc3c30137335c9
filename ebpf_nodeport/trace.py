"""Per-packet decisions from the datapath's `events` ring buffers: decode, filter, format, stream.

Why: counters say how often, conntrack says what is remembered; the trace says what
happened to each packet, on which node and hook, before and after the rewrite. The
programs only write events while CFG_F_TRACE is set in the node's cfg (one test of a
flag in the hot path when off), so a Tracer turns the flag on for the nodes it reads
and off again when it stops. A BPF ring buffer has one consumer position, so two
readers would split the events between them: a Tracer takes a per-node flock (when
given a holder directory) and a second tracer of the same node is refused.

`python -m ebpf_nodeport.trace measure` measures what leaving the flag on costs
(BPF_PROG_TEST_RUN, established-flow packet, trace off vs on).
"""
from __future__ import annotations

import ctypes as ct
import errno
import fcntl
import os
import select
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from . import libbpf
from .abi import CT_F_DSR, CT_FLAG_NAMES, MAP_SPECS, REASON_IDS, Event, flag_names
from .maps import NodeMaps

_TO_PEER = {REASON_IDS["NAT_NEW"], REASON_IDS["ENCAP"]}   # the packet left in VXLAN to tun_peer
_PASS = REASON_IDS["PASS"]
# Events the ring holds: each record is the 48-byte event plus an 8-byte header.
RING_EVENTS = MAP_SPECS["events"].max_entries // (ct.sizeof(Event) + 8)
REPEAT = 1000        # < RING_EVENTS: one repeated run never fills the ring
_VERBS = {"PASS": "pass", "NAT_NEW": "NAT", "NAT_EST": "NAT", "REV_NAT": "reverse NAT",
          "ENCAP": "encap", "DECAP": "decap", "DSR_REPLY": "DSR reply", "CT_EST": "tracked"}


class TraceError(Exception):
    """A trace cannot start (node busy, no pins): the message is for the user as is."""


# ---- one event ----------------------------------------------------------------------------------

def _ep(addr: str, port: int, proto: int) -> str:
    return f"{addr}:{port}" if proto in (6, 17) else addr


def event_record(ev: Event, node: str, names: dict[str, str] | None = None) -> dict[str, Any]:
    """An event as plain fields (the `trace -o json` object), with its one-line rendering."""
    names = names or {}
    d = ev.to_dict()
    peer = d["tun_peer"] if ev.tun_peer else None
    if peer is None:
        direction = None
    elif ev.reason in _TO_PEER:
        direction = "to"
    else:
        direction = "from"
    rec = {
        "ts_ns": ev.ts_ns, "node": node, "hook": d["hook_name"], "reason": d["reason_name"],
        "reason_id": ev.reason, "proto": {6: "tcp", 17: "udp", 1: "icmp"}.get(ev.proto, str(ev.proto)),
        "src": _ep(d["saddr"], ev.sport, ev.proto), "dst": _ep(d["daddr"], ev.dport, ev.proto),
        "nat_src": _ep(d["nat_saddr"], ev.nat_sport, ev.proto),
        "nat_dst": _ep(d["nat_daddr"], ev.nat_dport, ev.proto),
        "saddr": d["saddr"], "sport": ev.sport, "daddr": d["daddr"], "dport": ev.dport,
        "nat_saddr": d["nat_saddr"], "nat_sport": ev.nat_sport,
        "nat_daddr": d["nat_daddr"], "nat_dport": ev.nat_dport,
        "tunnel_peer": peer, "tunnel_peer_node": names.get(peer) if peer else None,
        "tunnel": direction, "flags": flag_names(ev.flags, CT_FLAG_NAMES),
        "dsr": bool(ev.flags & CT_F_DSR), "drop": d["reason_name"].startswith("DROP_"),
        "ifindex": ev.ifindex,
    }
    rec["line"] = format_record(rec)
    return rec


def format_record(r: dict[str, Any]) -> str:
    """`control from_hep 198.19.15.254:51234 -> 198.19.0.1:30180 NAT -> 198.19.16.65:80
    via tunnel to 198.19.0.2 (node1) [NAT_NEW]`."""
    parts = [r["node"], r["hook"]]
    if r["proto"] != "tcp":
        parts.append(r["proto"])
    parts.append(f"{r['src']} -> {r['dst']}")
    reason = r["reason"]
    src_moved, dst_moved = r["nat_src"] != r["src"], r["nat_dst"] != r["dst"]
    if r["drop"]:
        parts.append("DROP")
    elif reason == "ENCAP" and dst_moved:
        parts.append("NAT")                      # ingress node, later request: DNAT + encap
    else:
        parts.append(_VERBS.get(reason, reason))
    if src_moved and dst_moved:
        parts.append(f"-> {r['nat_src']} -> {r['nat_dst']}")
    elif dst_moved:
        parts.append(f"-> {r['nat_dst']}")
    elif src_moved:
        parts.append(f"source -> {r['nat_src']}")
    if r["tunnel_peer"]:
        peer = r["tunnel_peer"] + (f" ({r['tunnel_peer_node']})" if r["tunnel_peer_node"] else "")
        parts.append(f"via tunnel to {peer}" if r["tunnel"] == "to" else f"from tunnel {peer}")
    if r["dsr"]:
        parts.append("(DSR)")
    parts.append(f"[{reason}]")
    return " ".join(parts)


def matches(r: dict[str, Any], client: str | None = None, port: int | None = None,
            include_pass: bool = False) -> bool:
    """--client: the address on either side, before or after NAT; --port likewise; PASS hidden."""
    if r["reason_id"] == _PASS and not include_pass:
        return False
    if client and client not in (r["saddr"], r["daddr"], r["nat_saddr"], r["nat_daddr"]):
        return False
    if port is not None and port not in (r["sport"], r["dport"], r["nat_sport"], r["nat_dport"]):
        return False
    return True


# ---- streaming from several nodes ----------------------------------------------------------------

@dataclass
class _Node:
    name: str
    pin_dir: str
    reader: Any = None
    poll_fd: int = -1
    lock_fd: int = -1
    traced: bool = False


def _set_trace(pin_dir: str, on: bool) -> None:
    """CFG_F_TRACE on or off in the cfg pinned in pin_dir."""
    from .datapath import set_cfg_flags

    with NodeMaps(pin_dir) as m:
        set_cfg_flags(m, trace=on)


class Tracer:
    """Read the events of some nodes while their CFG_F_TRACE is on.

    with Tracer({"control": "/sys/fs/bpf/.../control", ...}, holder_dir=...) as t:
        for rec in t.poll(): print(rec["line"])

    pin_dirs: node name -> its pin directory; names: address -> name for the records;
    owner: what the nodes belong to, for messages ("node X of <owner> is already traced").
    """

    def __init__(self, pin_dirs: dict[str, str], *, names: dict[str, str] | None = None,
                 holder_dir: Path | None = None, client: str | None = None,
                 port: int | None = None, include_pass: bool = False, owner: str = "this datapath"):
        self.owner = owner
        self.nodes = [_Node(n, d) for n, d in pin_dirs.items()]
        self.names = names or {}
        self.holder_dir = holder_dir
        self.client, self.port, self.include_pass = client, port, include_pass
        self.start_ns = 0
        self.seen = 0            # events read (before filtering)
        self._pending: list[dict[str, Any]] = []
        self._epoll: select.epoll | None = None

    # -- lifecycle --
    def start(self) -> "Tracer":
        """Claim the nodes, open their ring buffers, then turn tracing on."""
        try:
            self.claim()
            self._epoll = select.epoll()
            for n in self.nodes:
                path = os.path.join(n.pin_dir, "events")
                if not os.path.exists(path):
                    raise TraceError(f"node {n.name} of {self.owner} has no events map at {path}")
                n.reader = NodeMaps(n.pin_dir).events(self._collector(n.name))
                n.poll_fd = libbpf.obj_get(path)
                self._epoll.register(n.poll_fd, select.EPOLLIN)
            # Events carry bpf_ktime_get_ns(), the fine CLOCK_MONOTONIC (not the conntrack clock).
            self.start_ns = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
            for n in self.nodes:
                _set_trace(n.pin_dir, True)
                n.traced = True
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Trace flag off on every node we turned it on; close readers; release the claims."""
        for n in self.nodes:
            if n.traced:
                try:
                    _set_trace(n.pin_dir, False)
                except (OSError, ValueError):
                    pass            # the lab went away meanwhile: nothing left to switch off
                n.traced = False
            if n.reader is not None:
                n.reader.close()
                n.reader = None
            if n.poll_fd >= 0:
                os.close(n.poll_fd)
                n.poll_fd = -1
            if n.lock_fd >= 0:
                os.close(n.lock_fd)       # releases the flock
                n.lock_fd = -1
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None

    def __enter__(self) -> "Tracer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def claim(self) -> None:
        """Take every node's flock (TraceError naming the holder's pid if one is traced already)."""
        try:
            for n in self.nodes:
                self._claim(n)
        except BaseException:
            self.stop()
            raise

    def _claim(self, n: _Node) -> None:
        if self.holder_dir is None or n.lock_fd >= 0:
            return
        self.holder_dir.mkdir(parents=True, exist_ok=True)
        path = self.holder_dir / f"{n.name}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise TraceError(f"node {n.name} of {self.owner} is already being traced "
                                 f"(pid {holder}); one trace per node at a time") from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        n.lock_fd = fd

    def _collector(self, node: str) -> Callable[[Event], None]:
        def on_event(ev: Event) -> None:
            self.seen += 1
            if ev.ts_ns < self.start_ns:
                return          # left in the ring by an earlier, killed trace
            rec = event_record(ev, node, self.names)
            if matches(rec, self.client, self.port, self.include_pass):
                self._pending.append(rec)
        return on_event

    # -- reading --
    def poll(self, timeout_ms: int = 200, settle_ms: int = 5) -> list[dict[str, Any]]:
        """Wait up to timeout_ms for events; return the matching ones in time order.

        After the first wake-up it waits settle_ms more, so a packet's events on the
        several nodes it crosses come back in one batch, sorted by their kernel time."""
        if self._epoll is None:
            raise RuntimeError("Tracer not started")
        ready = self._epoll.poll(timeout_ms / 1000)
        if ready and settle_ms:
            time.sleep(settle_ms / 1000)
        for n in self.nodes:
            n.reader.poll(0)
        out, self._pending = self._pending, []
        out.sort(key=lambda r: r["ts_ns"])
        return out


# ---- cost of leaving trace on ---------------------------------------------------------------------

def measure_cost(samples: int = 20000, block: int = 2000) -> dict[str, Any]:
    """ns per packet of from_hep on an established NodePort flow (NAT_FWD hit, DNAT, VXLAN
    encap: reason ENCAP), trace off vs on (ring drained between blocks) vs on with the ring
    full (nobody reading). BPF_PROG_TEST_RUN with repeat=1 per sample, because a repeated
    run would re-process the already encapsulated skb; blocks of each variant alternate
    so drift hits all alike. Each sample includes the kernel's own clock reads, equal in
    all variants, so the differences are the trace cost.

    Second figure, without per-sample clock overhead: to_wep on the same flow's DNATed
    request (conntrack hit, no rewrite: reason CT_EST) leaves the packet unchanged, so it
    can run with repeat=REPEAT and the kernel's average per run is taken. Needs root and BCC."""
    from .netns import Netns
    from .testrun import SimCluster

    view, syn, ack, dnat_ack = _cost_flow()
    ns = Netns.private()
    cluster = SimCluster(view, nodes=["control"])
    rounds = max(1, samples // block)
    try:
        with ns.inside():
            cluster.load()
            node = cluster["control"]
            first = node.run("from_hep", syn)
            if first.reason != "NAT_NEW":
                raise RuntimeError(f"setup packet: expected NAT_NEW, got {first.describe()}")
            reasons = {node.run("from_hep", ack).reason or "?",
                       f"to_wep {node.run('to_wep', dnat_ack).reason}"}
            reader = node.maps.events(lambda ev: None)
            try:
                encap = _sample_encap(node, ack, reader, rounds, block)
                ct_est = _sample_ct_est(node, dnat_ack, reader, rounds)
                node.dp.set_flags(trace=False)
            finally:
                reader.close()
    finally:
        cluster.close()
        ns.close()
    return _cost_summary(encap, ct_est, reasons)


def _cost_flow() -> tuple[Any, Any, bytes, bytes]:
    """A two-node view with one NodePort service, and its flow: the SYN that creates the
    conntrack entries, the client's next segment, and that segment as DNATed for the pod."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

    from .sync import Backend, ClusterView, Service

    view = ClusterView(
        nodes={"control": "198.19.0.1", "node1": "198.19.0.2"},
        pod_blocks={"198.19.16.0/26": "198.19.0.1", "198.19.16.64/26": "198.19.0.2"},
        services=[Service("yaobank/customer", "tcp", "198.19.32.10", 80, 30180,
                          [Backend("198.19.16.65", 80)])], mode="tunnel")
    syn = Ether() / IP(src="198.19.15.254", dst="198.19.0.1", flags="DF") / \
        TCP(sport=41000, dport=30180, flags="S")
    ack = bytes(Ether() / IP(src="198.19.15.254", dst="198.19.0.1", flags="DF") /
                TCP(sport=41000, dport=30180, flags="A", seq=1, ack=1) / (b"x" * 64))
    dnat_ack = bytes(Ether() / IP(src="198.19.15.254", dst="198.19.16.65", flags="DF") /
                     TCP(sport=41000, dport=80, flags="A", seq=1, ack=1) / (b"x" * 64))
    return view, syn, ack, dnat_ack


def _drain(reader: Any) -> None:
    while reader.poll(0):
        pass


def _sample_encap(node: Any, ack: bytes, reader: Any, rounds: int, block: int) -> dict[str, list[int]]:
    """from_hep run times (ns, one run each) per variant: off, on, on with the ring full."""
    from .testrun import run_prog

    fd = node.prog_fds["from_hep"]
    results: dict[str, list[int]] = {"off": [], "on": [], "on_ring_full": []}
    for _ in range(rounds):
        for variant in results:
            node.dp.set_flags(trace=variant != "off")
            if variant == "on_ring_full":   # fill it: later reserves fail
                for _ in range(RING_EVENTS + 64):
                    run_prog(fd, ack)
            for _ in range(block):
                results[variant].append(run_prog(fd, ack).duration_ns)
            _drain(reader)
    return results


def _sample_ct_est(node: Any, dnat_ack: bytes, reader: Any, rounds: int) -> dict[str, list[int]]:
    """to_wep average run times (ns, over REPEAT runs each) with trace off and on."""
    from .testrun import run_prog

    wep = node.prog_fds["to_wep"]
    repeated: dict[str, list[int]] = {"off": [], "on": []}
    for _ in range(rounds):
        for variant in repeated:
            node.dp.set_flags(trace=variant == "on")
            repeated[variant].append(run_prog(wep, dnat_ack, repeat=REPEAT).duration_ns)
            _drain(reader)
    return repeated


def _cost_summary(results: dict[str, list[int]], repeated: dict[str, list[int]],
                  reasons: set[str]) -> dict[str, Any]:
    """The measure document: per variant median/mean/p10/p90, and the differences."""
    out: dict[str, Any] = {"packet": "from_hep, established NodePort flow -> ENCAP",
                           "reason": sorted(reasons), "samples_per_variant": len(results["off"]),
                           "kernel": os.uname().release}
    for k, v in results.items():
        out[k] = {"median_ns": statistics.median(v), "mean_ns": round(statistics.fmean(v), 1),
                  "p10_ns": _pct(v, 10), "p90_ns": _pct(v, 90)}
    out["cost_on_ns"] = out["on"]["median_ns"] - out["off"]["median_ns"]
    out["cost_ring_full_ns"] = out["on_ring_full"]["median_ns"] - out["off"]["median_ns"]
    off, on = statistics.median(repeated["off"]), statistics.median(repeated["on"])
    out["to_wep_ct_est_repeat"] = {"repeat": REPEAT, "runs": len(repeated["off"]),
                                   "off_ns": off, "on_ns": on, "cost_on_ns": on - off}
    return out


def _pct(values: list[int], p: int) -> int:
    s = sorted(values)
    return s[min(len(s) - 1, len(s) * p // 100)]


def _main(argv: list[str]) -> int:
    import json

    usage = "usage: python -m ebpf_nodeport.trace measure [SAMPLES]"
    if not argv or argv[0] != "measure" or len(argv) > 2 or (len(argv) == 2 and not argv[1].isdigit()):
        print(usage, file=sys.stderr)
        return 2
    samples = int(argv[1]) if len(argv) > 1 else 20000
    print(json.dumps(measure_cost(samples), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
