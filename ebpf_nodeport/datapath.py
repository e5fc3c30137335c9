"""NodeDatapath: load, attach and switch one node's eBPF service datapath; conntrack GC.

A node is its pin directory (maps and programs) and the network namespace handle its
interfaces live in: nothing here knows whose they are. Every method after load() works
from a fresh process: state lives in the pinned maps and programs, not in this object.
Programming the maps from a ClusterView is sync.ServiceSyncer's job; sync() hands it
this node's maps.
"""
from __future__ import annotations

import ipaddress
import os
from typing import Sequence

from . import loader, tc
from .abi import (CFG_F_DSR, CFG_F_ENABLED, CFG_F_TRACE, CT_NAT_FWD, CT_VALUE_RAW, CT_VALUE_TYPE_OFFSET, PROGRAMS,
                  TUNNEL_PORT, TUNNEL_VNI, CtKey, CtValue, NodeCfg, ct_partner_type_of, ct_rev_key_raw, ct_timeout_of,
                  ct_timeouts, ip2int, ktime_ns)
from .maps import MapView, NodeMaps
from .netns import Netns
from .sync import ClusterView, ServiceSyncer, SyncStats

DEFAULT_FABRIC_MTU = 1500

__all__ = ["NodeDatapath", "gc_conntrack", "set_cfg_flags", "DEFAULT_FABRIC_MTU"]


# Past this many expired candidates, and a quarter of the map, the GC re-reads the whole map in bulk
# rather than key by key: here a lookup costs 4.5 us a key, a bulk read 1.3 us an entry.
REREAD_BULK = 64


def gc_conntrack(ct_view: MapView, now_ns: int | None = None,
                 timeouts: dict[str, int] | None = None) -> int:
    """Delete expired conntrack entries with the C's rules; returns how many were deleted.

    NORMAL and NAT_REV entries expire on their own timestamps and TCP state
    (conntrack.h ct_timeout). A NAT_FWD entry lives exactly as long as the entry it
    belongs to (its NAT_REV, or a backend node's NORMAL): the reply direction refreshes
    only the latter. Entries judged expired are read again before they go (a packet may
    have refreshed one meanwhile): key by key, or the whole map in bulk when they are a
    large share of it (BPF_MAP_LOOKUP_BATCH). Keys and values stay bytes, read by field
    offset (abi.CT_VALUE_RAW): a pass covers the whole map every few seconds, and a ctypes
    object per entry made it about 3x slower. Deleted in bulk (BPF_MAP_DELETE_BATCH).
    """
    now = ktime_ns() if now_ns is None else now_ns
    t = ct_timeouts(timeouts)
    shortest = min(t.values())
    unpack = CT_VALUE_RAW.unpack_from

    def expired(kb: bytes, vb: bytes) -> bool:     # conntrack.h ct_expired()
        last_seen, _, flags, tcp_a, tcp_b, *_ = unpack(vb)
        idle = now - last_seen
        return idle > shortest and idle > ct_timeout_of(kb[12], flags, tcp_a, tcp_b, t)

    snap = ct_view.raw_items()
    candidates: list[bytes] = []
    fwd: list[tuple[bytes, int, bytes, bytes, bytes]] = []
    for kb, vb in snap.items():
        last_seen, typ, flags, tcp_a, tcp_b, nat_addr, nat_port, cl_port = unpack(vb)
        if typ == CT_NAT_FWD:
            fwd.append((kb, flags, nat_addr, nat_port, cl_port))
        elif now - last_seen > shortest and expired(kb, vb):
            candidates.append(kb)
    if len(candidates) > max(REREAD_BULK, len(snap) // 4):
        again = ct_view.raw_items()
        fresh = {kb: again.get(kb) for kb in candidates}
    else:
        fresh = {kb: ct_view.get_raw(kb) for kb in candidates}
    dead: set[bytes] = set()
    for kb in candidates:
        raw = fresh[kb]
        # unchanged since the snapshot: still expired; changed: judged again; gone: nothing to keep
        if raw is None or raw == snap[kb] or expired(kb, raw):
            dead.add(kb)
    for kb, flags, nat_addr, nat_port, cl_port in fwd:
        rk = ct_rev_key_raw(kb, flags, nat_addr, nat_port, cl_port)
        if rk in dead:
            dead.add(kb)
            continue
        rev = snap.get(rk)
        if rev is None:                     # the REV may be newer than the snapshot
            rev = ct_view.get_raw(rk)
        if rev is None or rev[CT_VALUE_TYPE_OFFSET] != ct_partner_type_of(flags):
            dead.add(kb)
    return ct_view.delete_many(list(dead))


def set_cfg_flags(m: NodeMaps, dsr: bool | None = None, trace: bool | None = None,
                  enabled: bool | None = None) -> NodeCfg:
    """Flip cfg flags of open maps live (None leaves a flag as it is); returns the new cfg."""
    c = m.read_cfg()
    for bit, want in ((CFG_F_DSR, dsr), (CFG_F_TRACE, trace), (CFG_F_ENABLED, enabled)):
        if want is True:
            c.flags |= bit
        elif want is False:
            c.flags &= ~bit
    m.write_cfg(c)
    return c


class NodeDatapath:
    """One node's datapath: compile/pin once (load), then program and attach from anywhere.

    pin_dir: where its maps and programs are pinned (created by load()); netns: the
    namespace of its interfaces (None: this process's own); name: how results and
    messages call it (default: the pin directory's last part). keep_state: see
    sync.ServiceSyncer. Close it (or use `with`) to drop its netlink socket.
    """

    def __init__(self, pin_dir: loader.PinDir, netns: Netns | None, node_ip: str,
                 host_ifname: str = "eth0", *, name: str | None = None,
                 host_ifindex: int | None = None, fabric_mtu: int | None = None,
                 defines: dict[str, object] | None = None, keep_state: bool = False):
        self.pin_dir = os.fspath(pin_dir)
        self.name = name or os.path.basename(os.path.normpath(self.pin_dir))
        self.netns = netns if netns is not None else Netns(None)
        self.node_ip = str(ipaddress.IPv4Address(node_ip))
        self.host_ifname = host_ifname
        self.host_ifindex = host_ifindex
        self.fabric_mtu = fabric_mtu
        self.defines = dict(defines or {})
        self.last_load: loader.LoadResult | None = None
        self.syncer = ServiceSyncer(self.node_ip, keep_state=keep_state)

    def close(self) -> None:
        """Drop the namespace handle's cached netlink socket (the handle stays usable)."""
        self.netns.close()

    def __enter__(self) -> "NodeDatapath":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- paths and state ------------------------------------------------------------------

    def prog_path(self, prog: str) -> str:
        return loader.prog_pin(self.pin_dir, prog)

    @staticmethod
    def is_loaded(pin_dir: loader.PinDir) -> bool:
        """True when the node's TC programs (abi.PROGRAMS) are pinned in pin_dir."""
        return all(os.path.exists(loader.prog_pin(pin_dir, p)) for p in PROGRAMS)

    def maps(self) -> NodeMaps:
        """Typed views of this node's pinned maps (caller closes, or use `with`)."""
        return NodeMaps(self.pin_dir)

    def _timeouts(self) -> dict[str, int]:
        return {k: v for k, v in self.defines.items()
                if k.startswith("CT_TIMEOUT_") and isinstance(v, int)}

    # -- lifecycle --------------------------------------------------------------------------

    def load(self, attach: bool = True) -> loader.LoadResult:
        """Compile (BCC), pin maps and programs, write cfg, attach from_hep/to_hep on the host iface.

        On a node already loaded this is a reload: maps (conntrack, services) are
        kept, programs replaced, and every interface carrying our filters gets
        the new programs.
        """
        res = loader.load(self.pin_dir, self.defines)
        self._loaded(res, attach)
        return res

    @staticmethod
    def load_all(dps: Sequence["NodeDatapath"], attach: bool = True) -> dict[str, loader.LoadResult]:
        """load() for several nodes with one BCC compile (loader.load_nodes); results by name.

        All must share the defines (the compiled code is the same for them) and differ in
        name and pin directory.
        """
        if not dps:
            return {}
        defines = dps[0].defines
        for dp in dps:
            if dp.defines != defines:
                raise ValueError(f"load_all: {dp.name} differs in defines from {dps[0].name}; "
                                 "load it on its own")
        pins = {dp.name: dp.pin_dir for dp in dps}
        if len(pins) != len(dps) or len(set(pins.values())) != len(dps):
            raise ValueError("load_all: two nodes share a name or a pin directory")
        results = loader.load_nodes(pins, defines)
        for dp in dps:
            dp._loaded(results[dp.name], attach)
        return results

    def _loaded(self, res: loader.LoadResult, attach: bool) -> None:
        """After the programs are pinned: write cfg (enabled, DSR/trace kept), attach if asked."""
        self.last_load = res
        with self.maps() as m:
            old = m.read_cfg()
            keep = old.flags & (CFG_F_DSR | CFG_F_TRACE) if old.node_ip == ip2int(self.node_ip) else 0
            m.write_cfg(self._cfg(old, keep | CFG_F_ENABLED))
        if attach:
            self.attach_host()
            for ifname in self.workloads():
                self.attach_workload(ifname)

    def _cfg(self, old: NodeCfg, flags: int) -> NodeCfg:
        """Full cfg value: explicit constructor values, else the pinned ones, else the netns."""
        same_node = old.node_ip == ip2int(self.node_ip)
        ifindex = self.host_ifindex
        if ifindex is None:
            ifindex = old.host_ifindex if same_node and old.host_ifindex else \
                tc.ifindex(self.netns, self.host_ifname)
        mtu = self.fabric_mtu
        if mtu is None:
            if same_node and old.fabric_mtu:
                mtu = old.fabric_mtu
            else:
                try:
                    mtu = tc.link_mtu(self.netns, self.host_ifname)
                except (tc.TcError, OSError):
                    mtu = DEFAULT_FABRIC_MTU
        vni = self.defines.get("TUNNEL_VNI", TUNNEL_VNI)
        port = self.defines.get("TUNNEL_PORT", TUNNEL_PORT)
        return NodeCfg(node_ip=ip2int(self.node_ip), host_ifindex=ifindex, vni=int(vni),
                       tunnel_port=int(port), fabric_mtu=mtu, flags=flags,
                       sync_token=old.sync_token if same_node else 0)

    def unload(self, prune_up_to: loader.PinDir | None = None) -> None:
        """Detach everything of ours in the netns and remove the pin directory (and its
        parents up to prune_up_to once empty: loader.remove_pins).

        Only filters carrying our program names are removed, so unload() in the current
        namespace (test-run use) never disturbs it."""
        if self.netns.exists():
            for ifname in self.workloads():
                self.detach_workload(ifname)
            try:
                removed = tc.detach(self.netns, self.host_ifname, tc.INGRESS, "from_hep")
                removed |= tc.detach(self.netns, self.host_ifname, tc.EGRESS, "to_hep")
                if removed and not tc.filters(self.netns, self.host_ifname):
                    tc.remove_clsact(self.netns, self.host_ifname)
            except (tc.TcError, FileNotFoundError):
                pass
        loader.remove_pins(self.pin_dir, prune_up_to)

    # -- attach points ----------------------------------------------------------------------

    def attach_host(self) -> None:
        """from_hep on the host interface's ingress, to_hep on its egress (from the pins)."""
        tc.attach(self.netns, self.host_ifname, tc.INGRESS, self.prog_path("from_hep"), "from_hep")
        tc.attach(self.netns, self.host_ifname, tc.EGRESS, self.prog_path("to_hep"), "to_hep")

    def attach_workload(self, ifname: str) -> None:
        """from_wep on the pod veth's ingress, to_wep on its egress (from the pins)."""
        tc.attach(self.netns, ifname, tc.INGRESS, self.prog_path("from_wep"), "from_wep")
        tc.attach(self.netns, ifname, tc.EGRESS, self.prog_path("to_wep"), "to_wep")

    def detach_workload(self, ifname: str) -> None:
        """Remove both filters (no error if the veth is already gone)."""
        removed = tc.detach(self.netns, ifname, tc.INGRESS, "from_wep")
        removed |= tc.detach(self.netns, ifname, tc.EGRESS, "to_wep")
        if removed and not tc.filters(self.netns, ifname):
            tc.remove_clsact(self.netns, ifname)

    def workloads(self) -> list[str]:
        """Interfaces in the netns that carry our from_wep/to_wep filters."""
        out = []
        try:
            names = tc.links(self.netns)
        except FileNotFoundError:
            return out
        for ifname in names:
            if ifname == self.host_ifname:
                continue
            if any(f.name in ("from_wep", "to_wep") for f in tc.filters(self.netns, ifname)):
                out.append(ifname)
        return out

    def attached(self) -> list[tc.AttachedFilter]:
        """Every bpf filter of ours in the netns (for status)."""
        out = []
        for ifname in tc.links(self.netns):
            out.extend(f for f in tc.filters(self.netns, ifname) if f.name in PROGRAMS)
        return out

    # -- programming --------------------------------------------------------------------------

    def set_flags(self, dsr: bool | None = None, trace: bool | None = None,
                  enabled: bool | None = None) -> NodeCfg:
        """Flip cfg flags live (None leaves a flag as it is); returns the new cfg."""
        with self.maps() as m:
            return set_cfg_flags(m, dsr, trace, enabled)

    def sync(self, view: ClusterView) -> SyncStats:
        """Program this node's maps from the view (its ServiceSyncer; idempotent, no recompile)."""
        with self.maps() as m:
            return self.syncer.sync(m, view, self._cfg)

    # -- conntrack ----------------------------------------------------------------------------

    def gc(self, now_ns: int | None = None) -> int:
        """One conntrack GC pass on this node; returns entries deleted."""
        with self.maps() as m:
            return gc_conntrack(m.ct, now_ns, self._timeouts())

    def conntrack(self) -> list[tuple[CtKey, CtValue]]:
        with self.maps() as m:
            return list(m.ct.items())
