"""Per-packet cost of each entry program on its hot paths, from BPF_PROG_TEST_RUN (no lab needed).

The datapath is compiled for two simulated nodes (testrun.SimCluster: `control`, the NodePort
ingress, and `node1`, the remote backend's node), programmed with the bench's services, and each
hot path is driven the way a real connection drives it, so the conntrack state the measured run
meets is the real one:

- established flow: a connection is walked to ESTABLISHED, then its next packet is run again and
  again (each run gets a fresh copy of the same packet, so every run takes the same path);
- new flow: every run is the first packet of another connection (a fresh client port).

Why not `repeat=N` on every path: the kernel runs all repetitions on the same buffer, so after the
first one a DNATed or encapsulated packet is no longer the packet under test (it would measure
another path, or grow by 50 bytes per run). So rewriting paths are timed with `repeat=1` runs,
each followed by a run of an empty TC program (`return TC_ACT_OK`) on the same packet; the figure
is the median of the differences, i.e. what the program costs beyond the harness's own fixed cost
(timer reads, bh disable/enable, run context), which on this kind of machine is larger than the
programs themselves. A path that leaves the packet untouched (PASS) is also timed with a large
repeat, against the empty program under the same repeat, as a cross-check of the method.
Every path is checked once (verdict and counter reason) before it is timed, so a figure never
belongs to the wrong path.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from netns_lab import naming
from netns_lab.bench import topo as btopo
from netns_lab.bench.stats import median, percentile, summary

NODES = {"control": "198.19.0.1", "node1": "198.19.0.2", "node2": "198.19.0.3"}
BLOCKS = {"198.19.16.0/26": NODES["control"], "198.19.16.64/26": NODES["node1"], "198.19.16.128/26": NODES["node2"]}
CLIENT = "198.19.15.254"
LOCAL_BE = ("198.19.16.1", btopo.HTTP_PORT)      # bench-local on control
REMOTE_BE = ("198.19.16.67", btopo.HTTP_PORT)    # bench-remote on node1
NP_LOCAL = btopo.NODE_PORTS[("local", "http")]
NP_REMOTE = btopo.NODE_PORTS[("remote", "http")]
CIP_REMOTE = btopo.BENCH_CLUSTER_IPS["remote"]
BIG_REPEAT = 20000
WARM = 2  # untimed runs before each timed one


def cluster_view(mode: str = "tunnel") -> Any:
    """The simulated cluster: three nodes, the bench's services (NodePorts to a local and a remote pod)."""
    from ebpf_nodeport.sync import Backend, ClusterView, Service

    services = [
        Service("bench/local", "tcp", btopo.BENCH_CLUSTER_IPS["local"], 80, NP_LOCAL, [Backend(*LOCAL_BE)]),
        Service("bench/remote", "tcp", CIP_REMOTE, 80, NP_REMOTE, [Backend(*REMOTE_BE)]),
    ]
    return ClusterView(nodes=dict(NODES), pod_blocks=dict(BLOCKS), services=services, mode=mode)


# --------------------------------------------------------------------------- packets (bytes, no scapy per run)


def tcp_frame(src: str, sport: int, dst: str, dport: int, flags: str, payload: bytes = b"",
              seq: int = 1000, ack: int = 0) -> bytes:
    """An Ethernet/IPv4/TCP frame with correct checksums (scapy, built once per template)."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw

    return bytes(Ether(src="02:00:00:00:00:fe", dst="02:00:00:00:00:01") / IP(src=src, dst=dst, ttl=64, flags="DF")
                 / TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack, window=64240) / Raw(payload))


def answer(frame: bytes, flags: str, payload: bytes = b"") -> bytes:
    """What the peer of `frame` (as delivered) sends back: addresses and ports swapped, seq/ack following."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

    p = Ether(frame)
    ip, t = p[IP], p[TCP]
    seglen = len(bytes(t.payload)) + (1 if t.flags.S or t.flags.F else 0)
    return tcp_frame(ip.dst, t.dport, ip.src, t.sport, flags, payload, seq=t.ack or 5000, ack=t.seq + seglen)


def _fold(s: int) -> int:
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def with_sport(frame: bytes, sport: int) -> bytes:
    """`frame` with another TCP source port, its checksum updated incrementally (RFC 1624)."""
    ihl = (frame[14] & 0x0F) * 4
    off = 14 + ihl
    old = struct.unpack_from("!H", frame, off)[0]
    csum = struct.unpack_from("!H", frame, off + 16)[0]
    new_csum = ~_fold((~csum & 0xFFFF) + (~old & 0xFFFF) + sport) & 0xFFFF
    b = bytearray(frame)
    struct.pack_into("!H", b, off, sport)
    struct.pack_into("!H", b, off + 16, new_csum)
    return bytes(b)


def routed(frame: bytes) -> bytes:
    """The frame after the kernel forwarded it (TTL - 1), as the next hook sees it."""
    from ebpf_nodeport.testrun import kernel_route

    return kernel_route(frame)


# --------------------------------------------------------------------------- measuring


@dataclass
class PathCost:
    """One hot path of one program: what it is, the reason it must count, and its timings."""

    program: str
    node: str
    path: str
    flow: str                 # "established" | "new" | "not a service"
    reason: str
    samples_ns: list[int] = field(default_factory=list)   # per-call durations of the path (repeat=1)
    empty_ns: list[int] = field(default_factory=list)     # the empty program's, run right after each
    repeat_ns: list[int] = field(default_factory=list)    # per-packet averages of BIG_REPEAT runs
    empty_repeat_ns: list[int] = field(default_factory=list)

    @property
    def ns_per_packet(self) -> float | None:
        """Median of (path - empty program) over the paired repeat=1 runs."""
        return median([p - e for p, e in zip(self.samples_ns, self.empty_ns)])

    @property
    def ns_per_packet_repeat(self) -> float | None:
        """Median of (path - empty program) over the paired BIG_REPEAT batches (untouched paths only)."""
        return median([p - e for p, e in zip(self.repeat_ns, self.empty_repeat_ns)]) if self.repeat_ns else None

    def to_dict(self) -> dict[str, Any]:
        """JSON form (raw samples summarised; every batch average of repeat runs kept)."""
        return {
            "program": self.program, "node": self.node, "path": self.path, "flow": self.flow,
            "reason": self.reason, "ns_per_packet": self.ns_per_packet,
            "raw_repeat1_ns": summary(self.samples_ns) if self.samples_ns else None,
            "empty_program_repeat1_ns": summary(self.empty_ns) if self.empty_ns else None,
            "ns_per_packet_repeat": self.ns_per_packet_repeat,
            "repeat": BIG_REPEAT if self.repeat_ns else None, "repeat_batches_ns": list(self.repeat_ns),
            "empty_repeat_batches_ns": list(self.empty_repeat_ns),
        }


class Bench:
    """Runs packets through a loaded SimCluster and times them."""

    def __init__(self, cluster: Any, runs: int, empty_fd: int):
        self.cluster = cluster
        self.runs = runs
        self.empty_fd = empty_fd
        self._port = 20000

    def port(self) -> int:
        """A client port no earlier connection used."""
        self._port += 1
        if self._port > 65000:
            self._port = 20001
            self.cluster.clear_ct()
        return self._port

    def check(self, node: str, entry: str, frame: bytes, reason: str) -> bytes:
        """Run once with full accounting; RuntimeError unless exactly `reason` was counted. Returns the output."""
        res = self.cluster.run(node, entry, frame, track_ct=False)
        if res.reason != reason:
            raise RuntimeError(f"bench path {node}/{entry} expected {reason}, got {res.describe()}")
        return res.data

    def time1(self, pc: PathCost, node: str, entry: str, frame: bytes, warm: list[bytes] | None = None) -> bytes:
        """One repeat=1 run of the path and one of the empty program, recorded in pc; the path's output.

        Each timed run comes right after WARM untimed runs of the same program (on `warm` frames when
        the packet must not be seen twice, e.g. a new flow's SYN), so it finds the program, its maps
        and the harness in the caches, as back-to-back packets do; likewise the empty program.
        """
        from ebpf_nodeport.testrun import run_prog

        fd = self.cluster[node].prog_fds[entry]
        for f in warm if warm is not None else [frame] * WARM:
            run_prog(fd, f)
        res = run_prog(fd, frame)
        pc.samples_ns.append(res.duration_ns)
        for _ in range(WARM):
            run_prog(self.empty_fd, frame)
        pc.empty_ns.append(run_prog(self.empty_fd, frame).duration_ns)
        return res.data

    def time1_untimed(self, node: str, entry: str, frame: bytes) -> bytes:
        """Run once, untimed; the output (to warm up the next hop with real outputs)."""
        from ebpf_nodeport.testrun import run_prog

        return run_prog(self.cluster[node].prog_fds[entry], frame).data

    def time_repeat(self, pc: PathCost, node: str, entry: str, frame: bytes, batches: int = 5) -> None:
        """Batches of BIG_REPEAT repetitions, path and empty program alternating (only for untouched packets)."""
        from ebpf_nodeport.testrun import run_prog

        for _ in range(batches):
            pc.repeat_ns.append(run_prog(self.cluster[node].prog_fds[entry], frame, repeat=BIG_REPEAT).duration_ns)
            pc.empty_repeat_ns.append(run_prog(self.empty_fd, frame, repeat=BIG_REPEAT).duration_ns)


@dataclass
class Flow:
    """An established connection's frames at each hook (set up by walking the handshake)."""

    frames: dict[str, bytes]


def _nodeport_local(b: Bench) -> Flow:
    """client -> control:NP_LOCAL -> bench-local on control; handshake done."""
    p = b.port()
    syn = tcp_frame(CLIENT, p, NODES["control"], NP_LOCAL, "S")
    at_pod = b.check("control", "from_hep", syn, "NAT_NEW")
    sa = answer(routed(at_pod), "SA")
    to_client = b.check("control", "from_wep", sa, "REV_NAT")
    ack = answer(to_client, "A")
    b.check("control", "from_hep", ack, "NAT_EST")
    data = answer(to_client, "PA", b"GET / HTTP/1.1\r\n\r\n")
    at_pod = b.check("control", "from_hep", data, "NAT_EST")
    resp = answer(routed(at_pod), "PA", b"HTTP/1.1 200 OK\r\n\r\n")
    b.check("control", "to_wep", routed(at_pod), "CT_EST")
    return Flow({"request": data, "reply": resp, "at_pod": routed(at_pod)})


def _nodeport_remote(b: Bench, dsr: bool) -> Flow:
    """client -> control:NP_REMOTE -> VXLAN -> node1 -> bench-remote; handshake done."""
    p = b.port()
    syn = tcp_frame(CLIENT, p, NODES["control"], NP_REMOTE, "S")
    vx = b.check("control", "from_hep", syn, "NAT_NEW")
    at_pod = routed(b.check("node1", "from_hep", vx, "DECAP"))
    sa = answer(at_pod, "SA")
    if dsr:
        to_client = b.check("node1", "from_wep", sa, "DSR_REPLY")
    else:
        to_client = b.check("control", "from_hep", b.check("node1", "from_wep", sa, "ENCAP"), "REV_NAT")
    ack = answer(to_client, "A")
    b.check("node1", "from_hep", b.check("control", "from_hep", ack, "ENCAP"), "DECAP")
    data = answer(to_client, "PA", b"GET / HTTP/1.1\r\n\r\n")
    vx = b.check("control", "from_hep", data, "ENCAP")
    at_pod = routed(b.check("node1", "from_hep", vx, "DECAP"))
    resp = answer(at_pod, "PA", b"HTTP/1.1 200 OK\r\n\r\n")
    frames = {"request": data, "request_vxlan": vx, "reply": resp}
    if not dsr:
        frames["reply_vxlan"] = b.check("node1", "from_wep", resp, "ENCAP")
    return Flow(frames)


def _clusterip(b: Bench) -> Flow:
    """pod bench-local (on control) -> ClusterIP of bench/remote -> bench-remote on node1; handshake done."""
    p = b.port()
    src = LOCAL_BE[0]
    syn = tcp_frame(src, p, CIP_REMOTE, 80, "S")
    out = b.check("control", "from_wep", syn, "NAT_NEW")
    sa = answer(routed(out), "SA")  # the backend's answer, as it arrives back at control (routed)
    back = b.check("control", "to_wep", routed(sa), "REV_NAT")
    ack = answer(back, "A")
    b.check("control", "from_wep", ack, "NAT_EST")
    return Flow({"request": ack, "reply": routed(sa)})


def with_client(frame: bytes, last_octet: int) -> bytes:
    """`frame` from another client address (x.x.x.<last_octet>), both checksums updated incrementally."""
    b = bytearray(frame)
    ihl = (b[14] & 0x0F) * 4
    old = struct.unpack_from("!H", b, 14 + 14)[0]          # the source address's low 16 bits
    new = (old & 0xFF00) | last_octet
    for off in (14 + 10, 14 + ihl + 16):                   # IPv4 header checksum, TCP checksum
        c = struct.unpack_from("!H", b, off)[0]
        struct.pack_into("!H", b, off, ~_fold((~c & 0xFFFF) + (~old & 0xFFFF) + new) & 0xFFFF)
    struct.pack_into("!H", b, 14 + 14, new)
    return bytes(b)


def fill_ct(b: Bench, syn: bytes) -> int:
    """Open connections from other clients until control's conntrack map is full; entries then."""
    cap = b.cluster["control"].maps.ct.info.max_entries
    fd = b.cluster["control"].prog_fds["from_hep"]
    from ebpf_nodeport.testrun import run_prog

    opened = 0
    for octet in range(1, 250):
        frame = with_client(syn, octet)
        for port in range(1024, 65024):
            run_prog(fd, with_sport(frame, port))
            opened += 1
            if opened * 2 >= cap * 1.2:  # two entries per connection; past capacity: the map is full
                return len(b.cluster["control"].maps.ct)
    return len(b.cluster["control"].maps.ct)


def measure_paths(cluster: Any, runs: int, empty_fd: int,
                  progress: Callable[[], None] = lambda: None) -> tuple[list[PathCost], dict]:
    """Time every hot path; returns (paths, calibration)."""
    b = Bench(cluster, runs, empty_fd)
    paths: list[PathCost] = []

    def est(program: str, node: str, path: str, reason: str, frame: bytes) -> None:
        b.check(node, program, frame, reason)
        pc = PathCost(program, node, path, "established", reason)
        for _ in range(runs):
            b.time1(pc, node, program, frame)
        paths.append(pc)
        progress()

    # an IPv4 packet that is no service's (routed pod traffic) passes untouched: also timed with repeat
    passing = tcp_frame(CLIENT, 40000, REMOTE_BE[0], 8080, "A")
    b.check("control", "from_hep", passing, "PASS")
    cal = PathCost("from_hep", "control", "not a service (routed, passed untouched)", "not a service", "PASS")
    for _ in range(runs):
        b.time1(cal, "control", "from_hep", passing)
    b.time_repeat(cal, "control", "from_hep", passing)
    paths.append(cal)
    progress()

    # established flows
    cluster.set_mode("tunnel")
    loc = _nodeport_local(b)
    est("from_hep", "control", "NodePort, local backend: request (DNAT)", "NAT_EST", loc.frames["request"])
    est("to_wep", "control", "NodePort, local backend: request into the pod", "CT_EST", loc.frames["at_pod"])
    est("from_wep", "control", "NodePort, local backend: reply (reverse NAT)", "REV_NAT", loc.frames["reply"])
    rem = _nodeport_remote(b, dsr=False)
    est("from_hep", "control", "NodePort, remote backend: request (DNAT + VXLAN encap)", "ENCAP", rem.frames["request"])
    est("from_hep", "node1", "tunnelled request at the backend's node (decap)", "DECAP", rem.frames["request_vxlan"])
    est("from_wep", "node1", "Tunnel: reply at the backend's node (VXLAN back)", "ENCAP", rem.frames["reply"])
    est("from_hep", "control", "Tunnel: tunnelled reply (decap + reverse NAT)", "REV_NAT", rem.frames["reply_vxlan"])
    cip = _clusterip(b)
    est("from_wep", "control", "ClusterIP from a pod: request (DNAT)", "NAT_EST", cip.frames["request"])
    est("to_wep", "control", "ClusterIP from a pod: reply (reverse NAT)", "REV_NAT", cip.frames["reply"])
    cluster.set_mode("dsr")
    dsr = _nodeport_remote(b, dsr=True)
    est("from_hep", "control", "DSR: request (DNAT + VXLAN encap, DSR flag)", "ENCAP", dsr.frames["request"])
    est("from_wep", "node1", "DSR: reply straight to the client", "DSR_REPLY", dsr.frames["reply"])
    cluster.set_mode("tunnel")

    # new flows: every run is another connection's first packet
    def new(program: str, node: str, path: str, reason: str, make: Callable[[int], bytes],
            follow: tuple[str, str, str] | None = None) -> None:
        b.check(node, program, make(b.port()), reason)
        pc = PathCost(program, node, path, "new", reason)
        nxt = PathCost(follow[0], follow[1], follow[2], "new", "DECAP") if follow else None
        if nxt:
            b.check(follow[1], follow[0], b.check(node, program, make(b.port()), reason), "DECAP")
        for _ in range(runs):
            warm = [make(b.port()) for _ in range(WARM)]
            out = b.time1(pc, node, program, make(b.port()), warm=warm)
            if nxt:
                b.time1(nxt, follow[1], follow[0], out, warm=[b.time1_untimed(node, program, w) for w in
                                                              (make(b.port()) for _ in range(WARM))])
        paths.append(pc)
        if nxt:
            paths.append(nxt)
        progress()

    cluster.clear_ct()
    syn_l = tcp_frame(CLIENT, 1, NODES["control"], NP_LOCAL, "S")
    new("from_hep", "control", "NodePort, local backend: SYN (lookup, backend pick, conntrack create, DNAT)",
        "NAT_NEW", lambda p: with_sport(syn_l, p))
    cluster.clear_ct()
    syn_r = tcp_frame(CLIENT, 1, NODES["control"], NP_REMOTE, "S")
    new("from_hep", "control", "NodePort, remote backend: SYN (... + VXLAN encap)", "NAT_NEW",
        lambda p: with_sport(syn_r, p), follow=("from_hep", "node1", "tunnelled SYN at the backend's node (decap, conntrack create)"))
    cluster.clear_ct()
    syn_c = tcp_frame(LOCAL_BE[0], 1, CIP_REMOTE, 80, "S")
    new("from_wep", "control", "ClusterIP from a pod: SYN (lookup, conntrack create, DNAT)", "NAT_NEW",
        lambda p: with_sport(syn_c, p))
    # the same SYN when conntrack is at capacity (a SYN flood): a plain hash refuses the insert, nothing
    # created; a build with CT_MAP_TYPE "lru_hash" (for comparisons) evicts and creates it instead
    from ebpf_nodeport.abi import BPF_MAP_TYPE_LRU_HASH

    fill_ct(b, syn_l)
    full = "NAT_NEW" if b.cluster["control"].maps.ct.info.type == BPF_MAP_TYPE_LRU_HASH else "DROP_CT_FULL"
    new("from_hep", "control", "NodePort, local backend: SYN, conntrack full (refused: DROP_CT_FULL)",
        full, lambda p: with_sport(syn_l, p))
    # and right after that full map was emptied from user space (a cleaner pass after a flood): every
    # insert then takes an element the deletes freed, in their (bucket) order, a state of its own
    # (docs/datapath.md, "What a new flow's insert costs"); the paths above all meet a map that was
    # emptied of a few thousand entries at most
    cluster.clear_ct()
    new("from_wep", "control", "ClusterIP from a pod: SYN, conntrack just emptied from full", "NAT_NEW",
        lambda p: with_sport(syn_c, p))
    cluster.clear_ct()

    empty_all = [e for pc in paths for e in pc.empty_ns]
    calibration = {
        "harness_overhead_ns": median(empty_all),          # an empty program under repeat=1
        "harness_overhead_p90_ns": percentile(empty_all, 90),
        "empty_program_repeat_ns": median(cal.empty_repeat_ns),
        "pass_path_repeat1_ns": cal.ns_per_packet,
        "pass_path_repeat_ns": cal.ns_per_packet_repeat,
        "runs_per_path": runs,
        "repeat": BIG_REPEAT,
    }
    return paths, calibration


EMPTY_PROGRAM = "int bench_empty(struct __sk_buff *skb) { return 0; }\n"


@contextlib.contextmanager
def empty_program() -> Iterator[int]:
    """The fd of an empty SCHED_CLS program (returns TC_ACT_OK): the harness's own cost."""
    from bcc import BPF

    bpf = BPF(text=EMPTY_PROGRAM)
    try:
        yield bpf.load_func("bench_empty", BPF.SCHED_CLS).fd
    finally:
        bpf.cleanup()


@contextlib.contextmanager
def sim_cluster(lab: str) -> Iterator[Any]:
    """control and node1 compiled and programmed under lab name `lab`, inside a private empty netns."""
    from ebpf_nodeport.netns import Netns
    from ebpf_nodeport.testrun import SimCluster

    ns = Netns.private()
    cluster = SimCluster(cluster_view(), pin_root=naming.bpf_dir(lab), nodes=["control", "node1"])
    try:
        with ns.inside():
            cluster.load()
            yield cluster
    finally:
        cluster.close()
        ns.close()


def run(lab: str, runs: int, progress: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """Compile, measure every path, clean up; the JSON section `bpf_cost`."""
    from netns_lab.bench import primitives

    with sim_cluster(lab) as cluster, empty_program() as empty_fd:
        load_s = {name: node.load_s for name, node in cluster.nodes.items()}
        paths, cal = measure_paths(cluster, runs, empty_fd, progress)
        prims = primitives.measure(tcp_frame(CLIENT, 40000, NODES["control"], NP_LOCAL, "A"))
        progress()
    return {"paths": [p.to_dict() for p in paths], "calibration": cal, "load_s": load_s, "primitives": prims}


N_STEPS = 18  # progress() calls of run(): the PASS path, 11 established paths, 5 new-flow runs, primitives
