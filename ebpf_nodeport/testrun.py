"""BPF_PROG_TEST_RUN harness: run the datapath programs on packets, per simulated node, no lab.

Why: the programs are tested in the real kernel (verifier, helpers, maps) without
namespaces, veths or attachment. Each simulated node gets its own loaded copy of
the datapath (one compile, relocated per node) with its own pinned maps (pin_root/<node>; a
caller may choose a pin root its own clean-up finds), the maps are programmed from a
`ClusterView`, and a packet is run through one entry program. The result carries the
verdict, the packet after the program (parsed back with scapy), the counter deltas
by reason name and the conntrack entries added, changed and removed.

- SimCluster(view).load(): one SimNode per node (NodeDatapath.load_all(attach=False): one
  compile, relocated onto each node's maps, + sync(view)); close() removes every pin, also
  after a failed load.
- SimNode.run(entry, frame) / SimCluster.walk(frame, hops): one run, or a packet's path
  across nodes with each output fed to the next hop (kernel forwarding applied between).
- SimNode.age(seconds): conntrack time injection by rewriting the entries' timestamps.
- Netns.private(): runs happen in an empty namespace, so no helper can send anything out.
- run_prog(..., flags=BPF_F_TEST_SKB_CHECKSUM_COMPLETE), skb_ctx(...): raw test-run.
- parse_ip4/parse_vxlan/csum16/scapy_checksum_errors/kernel_route: packet helpers.
"""
from __future__ import annotations

import contextlib
import ctypes as ct
import os
import secrets
import shutil
import struct
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from ebpf_nodeport import libbpf
from ebpf_nodeport.kernel import BPF_F_TEST_SKB_CHECKSUM_COMPLETE  # kernel >= 6.11 (kernel.test_run_checksum_complete probes it)
from ebpf_nodeport.abi import (HOOK_IDS, MAX_REASONS, PROGRAMS, REASONS, TUNNEL_PORT, TUNNEL_VNI,
                               VXH_F_DSR, VXLAN_F_VNI)

# --- verdicts, hooks -------------------------------------------------------------

TC_ACT_UNSPEC, TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT = -1, 0, 2, 7
VERDICT_NAMES = {-1: "UNSPEC", 0: "OK", 1: "RECLASSIFY", 2: "SHOT", 3: "PIPE", 4: "STOLEN",
                 5: "QUEUED", 6: "REPEAT", 7: "REDIRECT", 8: "TRAP"}
VERDICTS = {v: k for k, v in VERDICT_NAMES.items()}


def verdict_name(retval: int) -> str:
    """TC return code as its name (retval comes back from the kernel as u32)."""
    v = retval - (1 << 32) if retval >= 1 << 31 else retval
    return VERDICT_NAMES.get(v, f"TC_ACT_{v}")


# --- struct __sk_buff as test-run context -----------------------------------------

class SkbCtx(ct.Structure):
    """struct __sk_buff (uapi). Test-run accepts only a few fields non-zero: mark, priority,
    ingress_ifindex, ifindex (must exist in this netns), cb, tstamp, wire_len, gso_segs,
    gso_size, hwtstamp."""
    _fields_ = (
        [(n, ct.c_uint32) for n in ("len pkt_type mark queue_mapping protocol vlan_present vlan_tci "
                                     "vlan_proto priority ingress_ifindex ifindex tc_index").split()]
        + [("cb", ct.c_uint32 * 5)]
        + [(n, ct.c_uint32) for n in "hash tc_classid data data_end napi_id family remote_ip4 local_ip4".split()]
        + [("remote_ip6", ct.c_uint32 * 4), ("local_ip6", ct.c_uint32 * 4), ("remote_port", ct.c_uint32),
           ("local_port", ct.c_uint32), ("data_meta", ct.c_uint32), ("flow_keys", ct.c_uint64),
           ("tstamp", ct.c_uint64), ("wire_len", ct.c_uint32), ("gso_segs", ct.c_uint32),
           ("sk", ct.c_uint64), ("gso_size", ct.c_uint32), ("tstamp_type", ct.c_uint8),
           ("_pad", ct.c_uint8 * 3), ("hwtstamp", ct.c_uint64)]
    )


def skb_ctx(**fields: int) -> bytes:
    """A __sk_buff image with the given fields set (e.g. gso_size=1398, gso_segs=3)."""
    return bytes(SkbCtx(**fields))


def run_prog(prog_fd: int, data: bytes, *, ctx: bytes | None = None, flags: int = 0,
             repeat: int = 1, out_room: int = 512) -> libbpf.TestRunResult:
    """BPF_PROG_TEST_RUN one packet; flags e.g. BPF_F_TEST_SKB_CHECKSUM_COMPLETE."""
    return libbpf.prog_test_run(prog_fd, data, repeat=repeat, ctx=ctx, flags=flags,
                                out_size=len(data) + out_room)


# --- byte-level packet helpers (fast; the fuzz test uses them per packet) ---------

ETH_HLEN = 14
ETH_P_IP = 0x0800


def csum16(data: bytes, start: int = 0) -> int:
    """One's-complement sum of 16-bit words, folded (not inverted)."""
    if len(data) % 2:
        data += b"\0"
    s = start + sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def ip_hdr_csum_ok(ip: bytes) -> bool:
    """An IPv4 header (with its checksum) sums to 0xffff."""
    return csum16(ip) == 0xFFFF


def l4_csum_ok(proto: int, saddr: bytes, daddr: bytes, seg: bytes) -> bool:
    """TCP/UDP/ICMP checksum over `seg` (header + payload, per IP total length) is valid.

    UDP checksum 0 means "none" and is valid. ICMP has no pseudo-header.
    """
    if proto == 17 and len(seg) >= 8 and seg[6:8] == b"\0\0":
        return True
    if proto == 1:
        return csum16(seg) == 0xFFFF
    pseudo = saddr + daddr + struct.pack("!BBH", 0, proto, len(seg))
    return csum16(seg, csum16(pseudo)) == 0xFFFF


@dataclass
class Ip4:
    """The IPv4 view of a frame at some offset: enough to check NAT and encapsulation."""
    off: int            # offset of the IP header in the frame
    ihl: int
    tot_len: int
    ident: int
    frag: int           # flags + offset field
    ttl: int
    proto: int
    saddr: bytes
    daddr: bytes
    hdr: bytes
    seg: bytes          # L4 header + payload, cut to tot_len
    complete: bool      # tot_len fits in the frame

    @property
    def is_fragment(self) -> bool:
        return bool(self.frag & 0x3FFF)

    @property
    def is_later_fragment(self) -> bool:
        return bool(self.frag & 0x1FFF)

    @property
    def l4_off(self) -> int:
        return self.off + self.ihl * 4


def parse_ip4(frame: bytes, off: int = ETH_HLEN) -> Ip4 | None:
    """IPv4 header at `off` if it is structurally sane, else None (malformed or not IPv4)."""
    if off < ETH_HLEN or len(frame) < off + 20 or frame[off - 2:off] != b"\x08\x00":
        return None
    vihl = frame[off]
    ihl = vihl & 0xF
    if vihl >> 4 != 4 or ihl < 5 or len(frame) < off + ihl * 4:
        return None
    tot_len, ident, frag, ttl, proto = struct.unpack_from("!HHHBB", frame, off + 2)
    if tot_len < ihl * 4:
        return None
    complete = off + tot_len <= len(frame)
    return Ip4(off, ihl, tot_len, ident, frag, ttl, proto, frame[off + 12:off + 16], frame[off + 16:off + 20],
               frame[off:off + ihl * 4], frame[off + ihl * 4:off + tot_len], complete)


def l4_header_ok(ip: Ip4) -> bool:
    """The TCP/UDP header the datapath reads is all there (TCP doff sane, UDP >= 8 bytes);
    later fragments carry none."""
    if ip.is_later_fragment:
        return True
    seg = ip.seg
    if ip.proto == 6:
        return len(seg) >= 20 and 5 <= seg[12] >> 4 and (seg[12] >> 4) * 4 <= len(seg)
    if ip.proto == 17:
        return len(seg) >= 8
    return True


def ports(ip: Ip4) -> tuple[int, int]:
    """(sport, dport) of TCP/UDP, (0, 0) otherwise."""
    if ip.proto in (6, 17) and len(ip.seg) >= 4 and not ip.is_later_fragment:
        return struct.unpack_from("!HH", ip.seg, 0)
    return (0, 0)


@dataclass
class Vxlan:
    """An outer IPv4/UDP/VXLAN header (our layout, docs/datapath.md) and the inner frame."""
    outer: Ip4
    sport: int
    dport: int
    udp_len: int
    udp_csum: int
    flags: int          # byte 0 (0x08: VNI valid)
    dsr_flags: int      # byte 1 (VXH_F_DSR)
    fe_port: int        # bytes 2-3: frontend port
    vni: int            # bytes 4-6
    last: int           # byte 7
    inner: bytes        # inner Ethernet frame


def parse_vxlan(frame: bytes, *, first_fragment: bool = False) -> Vxlan | None:
    """The VXLAN view of a frame, or None when it is not IPv4/UDP/4789 with a full header
    inside the outer IP total length (a first fragment counts only when asked)."""
    ip = parse_ip4(frame)
    if ip is None or ip.proto != 17 or len(ip.seg) < 16:
        return None
    if ip.is_later_fragment or (ip.is_fragment and not first_fragment):
        return None
    sport, dport, ulen, ucsum = struct.unpack_from("!HHHH", ip.seg, 0)
    if dport != TUNNEL_PORT:
        return None
    vx = ip.seg[8:16]
    return Vxlan(ip, sport, dport, ulen, ucsum, vx[0], vx[1], struct.unpack("!H", vx[2:4])[0],
                 int.from_bytes(vx[4:7], "big"), vx[7], ip.seg[16:])


def vxlan_header(vni: int = TUNNEL_VNI, *, dsr: bool = False, fe_port: int = 0, flags: int = VXLAN_F_VNI,
                 last: int = 0) -> bytes:
    """Our 8-byte VXLAN header: flags, DSR flag, frontend port, VNI, 0."""
    return struct.pack("!BBH", flags, VXH_F_DSR if dsr else 0, fe_port) + vni.to_bytes(3, "big") + bytes([last])


# --- scapy side ------------------------------------------------------------------

def scapy_checksum_errors(frame: bytes) -> list[str]:
    """Let scapy recompute every IPv4/TCP/UDP/ICMP checksum (also inside VXLAN) and list
    the stored values that differ; empty list = all valid. UDP checksum 0 means none."""
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.l2 import Ether

    errors: list[str] = []

    def check(data: bytes, where: str) -> None:
        pkt = Ether(data)
        if IP not in pkt:
            return
        ip = pkt[IP]
        redo = ip.copy()
        redo.chksum = None
        l4 = None
        if not (ip.frag or ip.flags.MF):
            for layer in (TCP, UDP, ICMP):
                if layer in redo:
                    l4 = layer
                    if not (layer is UDP and ip[UDP].chksum == 0):
                        redo[layer].chksum = None
                    break
        fresh = IP(bytes(redo))
        if fresh.chksum != ip.chksum:
            errors.append(f"{where}IP.chksum {ip.chksum:#06x}, scapy says {fresh.chksum:#06x}")
        if l4 is not None and fresh[l4].chksum != ip[l4].chksum:
            errors.append(f"{where}{l4.__name__}.chksum {ip[l4].chksum:#06x}, scapy says {fresh[l4].chksum:#06x}")
        vx = parse_vxlan(data)
        if vx is not None and len(vx.inner) >= ETH_HLEN:
            check(vx.inner, where + "inner ")

    check(frame, "")
    return errors


def as_bytes(pkt: Any) -> bytes:
    """scapy packet or bytes -> bytes."""
    return pkt if isinstance(pkt, (bytes, bytearray)) else bytes(pkt)


def kernel_route(frame: bytes) -> bytes:
    """What the kernel's IPv4 forwarding does to a frame between two hooks: TTL - 1 (the
    IP checksum updated incrementally, RFC 1624). MACs are left alone: no program reads them."""
    ip = parse_ip4(frame)
    if ip is None or ip.ttl == 0:
        return frame
    b = bytearray(frame)
    o = ip.off
    old = (b[o + 8] << 8) | b[o + 9]
    b[o + 8] -= 1
    new = (b[o + 8] << 8) | b[o + 9]
    csum = struct.unpack_from("!H", b, o + 10)[0]
    s = (~csum & 0xFFFF) + (~old & 0xFFFF) + new
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    struct.pack_into("!H", b, o + 10, ~s & 0xFFFF)
    return bytes(b)


# --- results ---------------------------------------------------------------------

@dataclass
class CtDiff:
    """Conntrack entries a run added, changed (before, after) and removed."""
    added: dict = field(default_factory=dict)
    changed: dict = field(default_factory=dict)
    removed: dict = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not (self.added or self.changed or self.removed)


@dataclass
class RunResult:
    """One program run: verdict, packet before/after, counter deltas, conntrack changes."""
    node: str
    entry: str
    retval: int
    input: bytes
    data: bytes
    counters: dict[str, int]            # reason name -> delta, this entry's hook
    other_counters: dict[str, int]      # "hook/reason" -> delta on any other hook (should be empty)
    ct: CtDiff | None
    duration_ns: int

    @property
    def verdict(self) -> str:
        return verdict_name(self.retval)

    @property
    def reason(self) -> str | None:
        """The single reason this run counted, None if it was not exactly one increment."""
        moved = {k: v for k, v in self.counters.items() if v}
        if len(moved) == 1 and next(iter(moved.values())) == 1 and not self.other_counters:
            return next(iter(moved))
        return None

    @property
    def changed(self) -> bool:
        return self.data != self.input

    @property
    def pkt(self) -> Any:
        """The output frame parsed by scapy."""
        from scapy.layers.l2 import Ether
        return Ether(self.data)

    @property
    def inner(self) -> Any:
        """The inner frame of a VXLAN output, parsed by scapy (None if not VXLAN)."""
        from scapy.layers.l2 import Ether
        vx = parse_vxlan(self.data)
        return None if vx is None else Ether(vx.inner)

    def ct_entries(self, which: str = "added") -> list[tuple[Any, Any]]:
        d = getattr(self.ct, which) if self.ct else {}
        return list(d.items())

    def describe(self) -> str:
        """One-line summary for assertion messages."""
        from scapy.layers.l2 import Ether
        moved = {k: v for k, v in self.counters.items() if v}
        return (f"{self.node}/{self.entry}: {self.verdict} counters={moved} other={self.other_counters} "
                f"in={Ether(self.input).summary()} out={Ether(self.data).summary() if len(self.data) >= 14 else self.data!r}")


# --- simulated nodes and cluster --------------------------------------------------

SIM_PIN_ROOT = "/sys/fs/bpf/ebpf-nodeport-sim"   # default parent of a SimCluster's pin root


def unique_name(prefix: str = "ut") -> str:
    """A short name ([a-z][a-z0-9]{0,11}, as lab names are), unique per run."""
    return f"{prefix}{secrets.token_hex(4)}"[:12]


class SimNode:
    """One node's datapath compiled and pinned for test runs: no netns, nothing attached."""

    def __init__(self, pin_dir: str, name: str, node_ip: str, host_ifindex: int, *,
                 fabric_mtu: int = 1500, defines: dict[str, object] | None = None):
        from ebpf_nodeport.datapath import NodeDatapath

        self.name, self.ip = name, node_ip
        self.dp = NodeDatapath(pin_dir, None, node_ip, name=name, host_ifindex=host_ifindex,
                               fabric_mtu=fabric_mtu, defines=defines)
        self.maps: Any = None
        self.prog_fds: dict[str, int] = {}
        self.load_s = 0.0

    def load(self) -> None:
        """Compile + pin (BCC), open the program pins and the maps."""
        self.opened(self.dp.load(attach=False))

    def opened(self, res: Any) -> None:
        """After this node's load (its own or SimCluster's load_all): open its maps and programs."""
        from ebpf_nodeport.maps import NodeMaps

        self.load_s = res.total_s
        self.maps = NodeMaps(self.dp.pin_dir)
        for entry in PROGRAMS:
            self.prog_fds[entry] = libbpf.obj_get(self.dp.prog_path(entry))

    def close(self) -> None:
        """Close fds and remove this node's pins (safe to call twice). Nothing was attached,
        so only the pins go (loader.remove_pins; unload() would also look at interfaces)."""
        from ebpf_nodeport import loader

        for fd in self.prog_fds.values():
            os.close(fd)
        self.prog_fds.clear()
        if self.maps is not None:
            self.maps.close()
            self.maps = None
        loader.remove_pins(self.dp.pin_dir)

    # -- state ---------------------------------------------------------------------
    def counters_raw(self) -> list[int]:
        return self.maps.counters.all()

    def ct_snapshot(self) -> dict:
        return dict(self.maps.ct.items())

    def clear_ct(self) -> int:
        """Empty the flow state: conntrack, the first fragments' ports and ClientIP affinities; the ct entries removed."""
        self.maps.frags.clear()
        self.maps.affinity.clear()
        return self.maps.ct.clear()

    def set_cfg(self, **fields: int) -> None:
        """Overwrite cfg fields (e.g. fabric_mtu=1400) directly."""
        c = self.maps.read_cfg()
        for k, v in fields.items():
            setattr(c, k, v)
        self.maps.write_cfg(c)

    def age(self, seconds: float, match: Callable[[Any, Any], bool] | None = None) -> int:
        """Make matching conntrack entries look idle for `seconds` (rewrites last_seen_ns and
        created_ns); returns how many. The conntrack clock is CLOCK_MONOTONIC(_COARSE), which starts at
        boot, so an entry cannot be made older than the machine's uptime."""
        from ebpf_nodeport.abi import ktime_ns

        now = ktime_ns()
        delta = int(seconds * 1e9)
        if delta >= now:
            raise ValueError(f"cannot age an entry by {seconds} s: CLOCK_MONOTONIC is only "
                             f"{now / 1e9:.0f} s (uptime)")
        n = 0
        for k, v in list(self.maps.ct.items()):
            if match is None or match(k, v):
                v.last_seen_ns = now - delta
                v.created_ns = min(v.created_ns, now - delta)
                self.maps.ct.put(k, v)
                n += 1
        return n

    # -- running -------------------------------------------------------------------
    def run(self, entry: str, pkt: Any, *, ctx: bytes | None = None, flags: int = 0,
            track_ct: bool = True) -> RunResult:
        """Run `entry` on one frame; counter and conntrack deltas are measured around it."""
        if entry not in self.prog_fds:
            raise ValueError(f"unknown entry {entry!r}: use one of {', '.join(PROGRAMS)}")
        data = as_bytes(pkt)
        before_c = self.counters_raw()
        before_ct = self.ct_snapshot() if track_ct else None
        res = run_prog(self.prog_fds[entry], data, ctx=ctx, flags=flags)
        after_c = self.counters_raw()
        diff = None
        if track_ct:
            after_ct = self.ct_snapshot()
            diff = CtDiff(
                added={k: v for k, v in after_ct.items() if k not in before_ct},
                changed={k: (before_ct[k], v) for k, v in after_ct.items()
                         if k in before_ct and bytes(before_ct[k]) != bytes(v)},
                removed={k: v for k, v in before_ct.items() if k not in after_ct})
        hook = HOOK_IDS[entry]
        mine: dict[str, int] = {}
        other: dict[str, int] = {}
        for idx, (b, a) in enumerate(zip(before_c, after_c)):
            if a == b:
                continue
            h, r = divmod(idx, MAX_REASONS)
            name = REASONS.get(r, f"REASON_{r}")
            if h == hook:
                mine[name] = a - b
            else:
                other[f"{PROGRAMS[h] if h < len(PROGRAMS) else h}/{name}"] = a - b
        return RunResult(self.name, entry, res.retval, data, res.data, mine, other, diff,
                         res.duration_ns)


class SimCluster:
    """Every node of a ClusterView as a SimNode, maps programmed from the view.

    Runs may happen anywhere; the pytest fixtures run them inside Netns.private().
    pin_root: a directory the cluster owns (each node pins under pin_root/<node>; close()
    removes it); default a unique one under SIM_PIN_ROOT.
    """

    def __init__(self, view: Any, *, pin_root: str | None = None, nodes: Iterable[str] | None = None,
                 fabric_mtu: int = 1500, defines: dict[str, object] | None = None,
                 ifindex_base: int = 1000):
        self.view = view
        self.own_root = pin_root is None
        self.pin_root = os.fspath(pin_root) if pin_root is not None else \
            os.path.join(SIM_PIN_ROOT, unique_name())
        names = list(nodes) if nodes is not None else list(view.nodes)
        self.nodes: dict[str, SimNode] = {}
        for i, name in enumerate(names):
            self.nodes[name] = SimNode(os.path.join(self.pin_root, name), name, view.nodes[name],
                                       ifindex_base + i, fabric_mtu=fabric_mtu, defines=defines)

    def load(self) -> "SimCluster":
        """Load every node with one BCC compile (NodeDatapath.load_all), then sync the view."""
        from ebpf_nodeport.datapath import NodeDatapath

        try:
            results = NodeDatapath.load_all([n.dp for n in self.nodes.values()], attach=False)
            for name, n in self.nodes.items():
                n.opened(results[name])
            self.sync(self.view)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Remove every pin of this cluster, even after a partial load."""
        errors = []
        for n in self.nodes.values():
            try:
                n.close()
            except Exception as exc:  # keep cleaning the others
                errors.append(exc)
        if os.path.isdir(self.pin_root):
            shutil.rmtree(self.pin_root, ignore_errors=True)
            with contextlib.suppress(OSError):   # a root made for it (the lab pin root) goes when empty
                os.rmdir(os.path.dirname(self.pin_root))
        if self.own_root:
            try:
                os.rmdir(SIM_PIN_ROOT)      # once no other cluster uses it
            except OSError:
                pass
        if errors:
            raise errors[0]

    def __enter__(self) -> "SimCluster":
        return self.load()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __getitem__(self, name: str) -> SimNode:
        return self.nodes[name]

    def sync(self, view: Any) -> None:
        """Program every node's maps from `view` (their NodeDatapath.sync)."""
        for n in self.nodes.values():
            n.dp.sync(view)
        self.view = view

    def set_mode(self, mode: str) -> None:
        import dataclasses
        self.sync(dataclasses.replace(self.view, mode=mode))

    def clear_ct(self) -> None:
        for n in self.nodes.values():
            n.clear_ct()

    def run(self, node: str, entry: str, pkt: Any, **kw: Any) -> RunResult:
        return self.nodes[node].run(entry, pkt, **kw)

    def walk(self, pkt: Any, hops: Sequence[Any]) -> list[RunResult]:
        """Feed one program's output into the next, in packet-flow order.

        hops: (node, entry) pairs, or callables frame -> frame standing for what happens
        off the datapath (a pod answering, the client sending its next segment). Between
        two programs the kernel's part is applied: after TC_ACT_OK on from_hep/from_wep the
        kernel routes the packet (TTL - 1); after a redirect it leaves as is. Stops at the
        first drop (the last result then has verdict SHOT).
        """
        results: list[RunResult] = []
        frame = as_bytes(pkt)
        prev: RunResult | None = None
        for hop in hops:
            if callable(hop):
                frame = as_bytes(hop(frame))
                prev = None
                continue
            if prev is not None and prev.retval == TC_ACT_OK and prev.entry in ("from_hep", "from_wep"):
                frame = kernel_route(frame)
            node, entry = hop
            prev = self.run(node, entry, frame)
            results.append(prev)
            if prev.retval == TC_ACT_SHOT:
                break
            frame = prev.data
        return results
