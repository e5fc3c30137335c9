"""NodeDatapath: load, program and attach one node's eBPF service datapath.

The lab (or a test) describes the cluster as a ClusterView; sync() turns it
into map entries, writing only what differs and deleting what is stale, so it
can run any number of times without recompiling or disturbing live
connections. Every method after load() works from a fresh process: state
lives in the pinned maps and programs, not in this object.
"""
from __future__ import annotations

import ipaddress
import os
import secrets
from dataclasses import dataclass, field
from typing import Callable, Iterable, NamedTuple, Sequence

from . import loader, tc
from .maps import (CFG_F_DSR, CFG_F_ENABLED, CFG_F_TRACE, CT_NAT_FWD, CT_NAT_REV, FE_F_CLUSTERIP,
                   FE_F_NODEPORT, PROGRAMS, RT_F_LOCAL, TUNNEL_PORT, TUNNEL_VNI, Addr, BeKey,
                   BeValue, CtKey, CtValue, FeKey, FeValue, MapView, NodeCfg, NodeInfo, NodeMaps,
                   RouteInfo, RouteKey, SvcMeta, U32, ct_expired, ct_partner_type, ct_rev_key_of_fwd, int2ip,
                   ip2int, ktime_ns, pin_dir, proto_num)

MODES = ("tunnel", "dsr")
DEFAULT_FABRIC_MTU = 1500

__all__ = ["Backend", "Service", "ClusterView", "NodeDatapath", "SyncStats", "gc_conntrack",
           "MODES"]


@dataclass(frozen=True)
class Backend:
    """One endpoint of a service: pod address and target port."""
    addr: str
    port: int


@dataclass
class Service:
    """One service port: its ClusterIP frontend, optional NodePort, and backends."""
    name: str
    proto: str
    cluster_ip: str | None
    port: int
    node_port: int | None = None
    backends: list[Backend] = field(default_factory=list)

    @property
    def meta_name(self) -> str:
        """Name stored in svc_meta; also what keeps a service's id stable across syncs."""
        return f"{self.name}:{self.port}/{self.proto}"

    def validate(self) -> None:
        proto_num(self.proto)
        if self.proto.lower() not in ("tcp", "udp"):
            raise ValueError(f"service {self.name}: protocol must be tcp or udp, not {self.proto!r}")
        for what, port in (("port", self.port), ("node_port", self.node_port)):
            if port is not None and not 0 < port < 65536:
                raise ValueError(f"service {self.name}: {what} {port} out of range 1-65535")
        if self.cluster_ip is None and self.node_port is None:
            raise ValueError(f"service {self.name}: needs a cluster_ip or a node_port")
        if self.cluster_ip is not None:
            cip = ip2int(self.cluster_ip)
            # Address 0 in nat_fe is the NodePort wildcard; a ClusterIP must be a unicast address.
            if cip == 0 or cip >> 28 == 0xE or cip == 0xFFFFFFFF:
                raise ValueError(f"service {self.name}: cluster_ip {int2ip(cip)} is not a unicast address")
        for b in self.backends:
            ip2int(b.addr)
            if not 0 < b.port < 65536:
                raise ValueError(f"service {self.name}: backend port {b.port} out of range")


@dataclass
class ClusterView:
    """What the datapath must know about the cluster: nodes, pod blocks, services, mode."""
    nodes: dict[str, str]                 # node name -> fabric address
    pod_blocks: dict[str, str]            # CIDR -> address of the node hosting it
    services: list[Service]
    mode: str = "tunnel"                  # "tunnel" or "dsr"
    dsr_optout: list[str] = field(default_factory=list)   # client CIDRs kept on Tunnel

    def validate(self, services: bool = True) -> None:
        """Raise ValueError on anything the maps cannot hold; services=False leaves them to the caller."""
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        for name, addr in self.nodes.items():
            # 0.0.0.0 is no address: as a node it would be a NodePort address and a tunnel peer.
            if ipaddress.IPv4Address(addr).is_unspecified:
                raise ValueError(f"node {name}: address 0.0.0.0 is not a node address")
        for cidr, node_ip in self.pod_blocks.items():
            ipaddress.IPv4Network(cidr, strict=False)
            ipaddress.IPv4Address(node_ip)
        for cidr in self.dsr_optout:
            ipaddress.IPv4Network(cidr, strict=False)
        if services:
            for s in self.services:
                s.validate()


@dataclass
class SyncStats:
    """What one sync() changed, per map: entries written and deleted."""
    written: dict[str, int] = field(default_factory=dict)
    deleted: dict[str, int] = field(default_factory=dict)
    ct_flushed: int = 0

    @property
    def changed(self) -> bool:
        return any(self.written.values()) or any(self.deleted.values()) or self.ct_flushed > 0


def _write_changed(view: MapView, desired: dict[bytes, bytes], current: dict[bytes, bytes],
                   stats: SyncStats, name: str, keys: set[bytes] | None = None) -> list[bytes]:
    """Write the desired entries that `current` (the map as read) lacks or holds otherwise; their keys.

    `keys`: the only keys that can differ (an incremental sync knows them), else all."""
    items = desired.items() if keys is None else ((k, desired[k]) for k in keys if k in desired)
    changed = [k for k, v in items if current.get(k) != v]
    for k in changed:
        view.put(k, desired[k])
    stats.written[name] = stats.written.get(name, 0) + len(changed)
    return changed


def _delete_stale(view: MapView, desired: dict[bytes, bytes], current: dict[bytes, bytes],
                  written: list[bytes], stats: SyncStats, name: str,
                  keys: set[bytes] | None = None) -> list[bytes]:
    """Delete the entries of `current` (the map as read) that are not desired; their keys.

    `written` (from _write_changed) tells how many desired keys were new; when `current`
    has no more keys than the rest, every one of them is desired and nothing is scanned.
    `keys`: the only keys that can be stale (an incremental sync knows them), else all.
    """
    if keys is not None:
        stale = [k for k in keys if k in current and k not in desired]
    else:
        new = sum(1 for k in written if k not in current)
        stale = [k for k in current if k not in desired] if len(current) > len(desired) - new else []
    deleted = sum(view.delete(k) for k in stale)
    stats.deleted[name] = stats.deleted.get(name, 0) + deleted
    return stale


def _reconcile(view: MapView, desired: dict[bytes, bytes], stats: SyncStats, name: str) -> None:
    """Make the map hold exactly `desired`: one bulk read, then the differing writes and deletes."""
    current = view.raw_items()
    written = _write_changed(view, desired, current, stats, name)
    _delete_stale(view, desired, current, written, stats, name)


def _service_ids(meta: dict[bytes, bytes]) -> dict[bytes, int]:
    """svc_meta value (the padded name, as sync() writes it) -> service id, from the map as read."""
    unpack_id = U32.unpacker()
    return {v: unpack_id(k)[0] for k, v in meta.items()}


def _claim(fes: dict[bytes, bytes], key: bytes, value: bytes, name: str) -> None:
    """Add one frontend; two services may not share one."""
    if key in fes:
        raise ValueError(f"frontend {FeKey.from_bytes(key).to_dict()} claimed by two services "
                         f"(second: {name})")
    fes[key] = value


def _fingerprint(svc: Service) -> tuple:
    """Everything of a service its map entries are made from (with the node's pod blocks)."""
    return (svc.proto, svc.cluster_ip, svc.port, svc.node_port, tuple(svc.backends))


@dataclass
class _SvcEntries:
    """One service's map entries as sync() last wrote them, and what they were made from."""
    fingerprint: tuple
    meta: tuple[bytes, bytes]                # svc_meta key, value
    bes: list[tuple[bytes, bytes]]           # nat_be items
    fes: list[tuple[bytes, bytes]]           # nat_fe items


@dataclass
class _SyncState:
    """What a keep_state NodeDatapath last wrote to the service maps; it stands for the maps
    while cfg.sync_token still holds `token` (every sync that writes them changes the token)."""
    token: int
    blocks: tuple                            # the view's pod blocks the entries were made with
    meta: dict[bytes, bytes]
    bes: dict[bytes, bytes]
    fes: dict[bytes, bytes]
    services: dict[str, _SvcEntries]
    ids: dict[bytes, int]                    # svc_meta value -> id, as in `meta`


class _Packers(NamedTuple):
    """The struct packers one sync uses (built once per sync, not per service)."""
    svc_id: Callable[..., bytes]
    meta: Callable[..., bytes]
    be_key: Callable[..., bytes]
    be: Callable[..., bytes]
    fe_key: Callable[..., bytes]
    fe: Callable[..., bytes]


def _new_token(m: NodeMaps) -> int:
    """Write a fresh non-zero cfg.sync_token (not the current one); returns it."""
    cfg = m.read_cfg()
    token = cfg.sync_token
    while token in (0, cfg.sync_token):
        token = secrets.randbits(32)
    cfg.sync_token = token
    m.write_cfg(cfg)
    return token


class _Ids:
    """Service ids in use; take() hands out the lowest free one (ids start at 1)."""

    def __init__(self, used: Iterable[int]):
        self.used = set(used)
        self.next = 1

    def take(self) -> int:
        while self.next in self.used:
            self.next += 1
        self.used.add(self.next)
        return self.next


def _packers() -> _Packers:
    return _Packers(U32.packer(), SvcMeta.packer(), BeKey.packer(), BeValue.packer(),
                    FeKey.packer(), FeValue.packer())


_Maps = tuple[dict[bytes, bytes], dict[bytes, bytes], dict[bytes, bytes]]   # svc_meta, nat_be, nat_fe
_Keys = tuple[set[bytes], set[bytes], set[bytes]]


def _put_in(svc: _SvcEntries, into: _Maps, touched: _Keys | None, name: str) -> None:
    """Add one service's entries to the desired maps (frontends claimed: one service each)."""
    meta, bes, fes = into
    meta[svc.meta[0]] = svc.meta[1]
    bes.update(svc.bes)
    for key, value in svc.fes:
        _claim(fes, key, value, name)
    if touched is not None:
        touched[0].add(svc.meta[0])
        touched[1].update(k for k, _ in svc.bes)
        touched[2].update(k for k, _ in svc.fes)


def _take_out(svc: _SvcEntries, of: _Maps, touched: _Keys) -> None:
    """Remove one service's entries from the desired maps, noting their keys as touched."""
    for entries, keys, items in zip(of, touched, ([svc.meta], svc.bes, svc.fes)):
        for k, _ in items:
            entries.pop(k, None)
            keys.add(k)


def _blocks_of(view: ClusterView) -> tuple:
    """The pod blocks as a comparable value: which backends are local depends on them."""
    return tuple(sorted(view.pod_blocks.items()))


class _Addresses(dict):
    """addr -> (its integer, is it in one of the given pod blocks); each address parsed once."""

    def __init__(self, blocks: list[tuple[int, int]]):
        super().__init__()
        self.blocks = blocks          # (network, netmask) as integers

    def __missing__(self, addr: str) -> tuple[int, bool]:
        ip = ip2int(addr)
        self[addr] = hit = (ip, any(ip & mask == net for net, mask in self.blocks))
        return hit


def gc_conntrack(ct_view: MapView, now_ns: int | None = None,
                 timeouts: dict[str, int] | None = None) -> int:
    """Delete expired conntrack entries with the C's rules; returns how many were deleted.

    NORMAL and NAT_REV entries expire on their own timestamps and TCP state
    (conntrack.h ct_timeout). A NAT_FWD entry lives exactly as long as the entry it
    belongs to (its NAT_REV, or a backend node's NORMAL): the reply direction refreshes
    only the latter.
    """
    now = ktime_ns() if now_ns is None else now_ns
    entries: dict[CtKey, CtValue] = dict(ct_view.items())
    dead: set[CtKey] = set()
    for k, v in entries.items():
        if v.type != CT_NAT_FWD and ct_expired(k, v, now, timeouts):
            fresh = ct_view.get(k)          # re-read: a packet may have refreshed it
            if fresh is None or ct_expired(k, fresh, now, timeouts):
                dead.add(k)
    for k, v in entries.items():
        if v.type != CT_NAT_FWD:
            continue
        rk = ct_rev_key_of_fwd(k, v)
        if rk in dead:
            dead.add(k)
            continue
        rev = entries.get(rk) or ct_view.get(rk)   # the REV may be newer than the snapshot
        if rev is None or rev.type != ct_partner_type(v):
            dead.add(k)
    return sum(ct_view.delete(k) for k in dead)


class NodeDatapath:
    """One node's datapath: compile/pin once (load), then program and attach from anywhere."""

    def __init__(self, lab: str, node: str, netns: str | None, node_ip: str,
                 host_ifname: str = "eth0", *, host_ifindex: int | None = None,
                 fabric_mtu: int | None = None, defines: dict[str, object] | None = None,
                 keep_state: bool = False):
        self.lab = lab
        self.node = node
        self.netns = netns
        self.node_ip = str(ipaddress.IPv4Address(node_ip))
        self.host_ifname = host_ifname
        self.host_ifindex = host_ifindex
        self.fabric_mtu = fabric_mtu
        self.defines = dict(defines or {})
        self.last_load: loader.LoadResult | None = None
        # keep_state: remember what sync() wrote, as a long-running agent (felix) does, so a
        # later sync from this object diffs against that instead of reading the maps back,
        # and rebuilds only the services that changed. Trusted only while cfg.sync_token is
        # the token this object wrote; map writes made other than by sync() are not seen.
        self.keep_state = keep_state
        self._state: _SyncState | None = None

    # -- paths and state ------------------------------------------------------------------

    @property
    def pin_dir(self) -> str:
        return pin_dir(self.lab, self.node)

    def prog_path(self, prog: str) -> str:
        return loader.prog_pin(self.lab, self.node, prog)

    @staticmethod
    def is_loaded(lab: str, node: str) -> bool:
        """True when the node's three programs are pinned."""
        return all(os.path.exists(loader.prog_pin(lab, node, p)) for p in PROGRAMS)

    def maps(self) -> NodeMaps:
        """Typed views of this node's pinned maps (caller closes, or use `with`)."""
        return NodeMaps(self.pin_dir)

    def _timeouts(self) -> dict[str, int]:
        return {k: v for k, v in self.defines.items()
                if k.startswith("CT_TIMEOUT_") and isinstance(v, int)}

    # -- lifecycle --------------------------------------------------------------------------

    def load(self, attach: bool = True) -> loader.LoadResult:
        """Compile (BCC), pin maps and programs, write cfg, attach from_hep on the host iface.

        On a node already loaded this is a reload: maps (conntrack, services) are
        kept, programs replaced, and every interface carrying our filters gets
        the new programs.
        """
        res = loader.load(self.lab, self.node, self.defines)
        self._loaded(res, attach)
        return res

    @staticmethod
    def load_all(dps: Sequence["NodeDatapath"], attach: bool = True) -> dict[str, loader.LoadResult]:
        """load() for several nodes of one lab with one BCC compile (loader.load_nodes).

        All must share the lab and the defines: the compiled code is the same for them.
        """
        if not dps:
            return {}
        lab, defines = dps[0].lab, dps[0].defines
        for dp in dps:
            if dp.lab != lab or dp.defines != defines:
                raise ValueError(f"load_all: {dp.lab}/{dp.node} differs in lab or defines "
                                 f"from {lab}/{dps[0].node}; load it on its own")
        results = loader.load_nodes(lab, [dp.node for dp in dps], defines)
        for dp in dps:
            dp._loaded(results[dp.node], attach)
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

    def unload(self) -> None:
        """Detach everything of ours in the netns and remove the pin directory.

        Only filters carrying our program names are removed, so unload() with
        netns=None (test-run use) never disturbs the current namespace."""
        if self.netns is None or os.path.exists(f"/run/netns/{self.netns}"):
            for ifname in self.workloads():
                self.detach_workload(ifname)
            try:
                removed = tc.detach(self.netns, self.host_ifname, tc.INGRESS, "from_hep")
                removed |= tc.detach(self.netns, self.host_ifname, tc.EGRESS, "to_hep")
                if removed and not tc.filters(self.netns, self.host_ifname):
                    tc.remove_clsact(self.netns, self.host_ifname)
            except (tc.TcError, FileNotFoundError):
                pass
        loader.remove_pins(self.lab, self.node)

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
            c = m.read_cfg()
            for bit, want in ((CFG_F_DSR, dsr), (CFG_F_TRACE, trace), (CFG_F_ENABLED, enabled)):
                if want is True:
                    c.flags |= bit
                elif want is False:
                    c.flags &= ~bit
            m.write_cfg(c)
            return c

    def sync(self, view: ClusterView) -> SyncStats:
        """Make cfg/nodes/routes/dsr_optout/nat_* match the view; idempotent, no recompile."""
        view.validate(services=False)
        stats = SyncStats()
        with self.maps() as m:
            old = m.read_cfg()
            state = self._state if self._state and self._state.token == old.sync_token else None
            names, reuse = self._reusable(view, state)   # validates every service it cannot reuse
            flags = old.flags if old.node_ip == ip2int(self.node_ip) else CFG_F_ENABLED
            flags = (flags & ~CFG_F_DSR) | (CFG_F_DSR if view.mode == "dsr" else 0)
            new_cfg = self._cfg(old, flags)
            if new_cfg != old:
                m.write_cfg(new_cfg)
                stats.written["cfg"] = 1

            _reconcile(m.nodes, {Addr.pack(ip2int(a)): NodeInfo.pack(0) for a in view.nodes.values()},
                       stats, "nodes")
            me = ip2int(self.node_ip)
            routes = {}
            for cidr, node_ip in view.pod_blocks.items():
                n = ip2int(node_ip)
                routes[bytes(RouteKey.cidr(cidr))] = RouteInfo.pack(n, RT_F_LOCAL if n == me else 0)
            _reconcile(m.routes, routes, stats, "routes")
            _reconcile(m.dsr_optout, {bytes(RouteKey.cidr(c)): U32.pack(1) for c in view.dsr_optout},
                       stats, "dsr_optout")
            try:
                new_state = self._sync_services(m, view, stats, state, names, reuse)
            except BaseException:
                # Maybe half written: no copy anywhere may stand for these maps now.
                self._state = None
                _new_token(m)
                raise
            self._keep(m, new_state, read_back=state is None, stats=stats)
        return stats

    def _reusable(self, view: ClusterView, state: _SyncState | None
                  ) -> tuple[list[str], dict[str, _SvcEntries]]:
        """The services' meta names, and those whose entries the trusted state holds unchanged;
        validates every other service."""
        reuse: dict[str, _SvcEntries] = {}
        names = [svc.meta_name for svc in view.services]
        known = state.services if state and state.blocks == _blocks_of(view) else {}
        for svc, name in zip(view.services, names):
            entries = known.get(name)
            if entries is not None and entries.fingerprint == _fingerprint(svc):
                reuse[name] = entries
            else:
                svc.validate()
        return names, reuse

    def _keep(self, m: NodeMaps, state: _SyncState, read_back: bool, stats: SyncStats) -> None:
        """After a sync: a sync that wrote the service maps changes cfg.sync_token, so every
        keep_state copy elsewhere stops trusting itself; a keep_state object then keeps `state`
        under the token (taking a fresh one too when its copy was just read back)."""
        wrote = any(stats.written.get(k) or stats.deleted.get(k) for k in ("svc_meta", "nat_be", "nat_fe"))
        if wrote or (self.keep_state and read_back):
            state.token = _new_token(m)
        else:
            state.token = m.read_cfg().sync_token
        self._state = state if self.keep_state and state.token else None

    def _addresses(self, view: ClusterView) -> _Addresses:
        """Backend address facts for this node: its own pod blocks as integer masks."""
        me = ip2int(self.node_ip)
        mine = []
        for cidr, node_ip in view.pod_blocks.items():
            if ip2int(node_ip) == me:
                net = ipaddress.IPv4Network(cidr, strict=False)
                mine.append((int(net.network_address), int(net.netmask)))
        return _Addresses(mine)

    def _sync_services(self, m: NodeMaps, view: ClusterView, stats: SyncStats,
                       state: _SyncState | None, names: list[str],
                       reuse: dict[str, _SvcEntries]) -> _SyncState:
        """nat_fe/nat_be/svc_meta from the view, diffed as bytes against the maps: read once
        each; or, from a trusted state, only the entries of services that changed or left.
        Returns what the maps hold afterwards."""
        if state is not None:
            cur_meta, cur_be, cur_fe = state.meta, state.bes, state.fes
            ids = dict(state.ids)
        else:
            cur_meta = m.svc_meta.raw_items()
            cur_be = m.nat_be.raw_items()
            cur_fe = m.nat_fe.raw_items()
            ids = _service_ids(cur_meta)
        # Incremental only pays when most services are unchanged: it tracks keys one by one.
        if state is not None and 2 * len(reuse) >= max(len(names), len(state.services)):
            meta, bes, fes, entries, touched = self._desired_incremental(view, state, names, reuse, ids)
        else:
            meta, bes, fes, entries = self._desired_services(view, ids)
            touched = (None, None, None)
        k_meta, k_be, k_fe = touched
        # Order keeps the datapath consistent at every step: names, then new
        # backends, then frontends (counts), then what became stale.
        meta_written = _write_changed(m.svc_meta, meta, cur_meta, stats, "svc_meta", k_meta)
        be_written = _write_changed(m.nat_be, bes, cur_be, stats, "nat_be", k_be)
        fe_written = _write_changed(m.nat_fe, fes, cur_fe, stats, "nat_fe", k_fe)
        _delete_stale(m.nat_fe, fes, cur_fe, fe_written, stats, "nat_fe", k_fe)
        be_deleted = _delete_stale(m.nat_be, bes, cur_be, be_written, stats, "nat_be", k_be)
        _delete_stale(m.svc_meta, meta, cur_meta, meta_written, stats, "svc_meta", k_meta)
        # A backend is gone when an entry that held it changed and no entry holds it now.
        old = {cur_be[k] for k in be_written + be_deleted if k in cur_be}
        gone = {BeValue.unpack(v) for v in old - set(bes.values())} if old else set()
        if gone:
            stats.ct_flushed = self._flush_backends(m, gone)
        if len(ids) != len(meta):     # services that left: their names and ids are free now
            ids = _service_ids(meta)
        return _SyncState(0, _blocks_of(view), meta, bes, fes, entries, ids)

    def _desired_incremental(self, view: ClusterView, state: _SyncState, names: list[str],
                             reuse: dict[str, _SvcEntries], ids: dict[bytes, int]):
        """What _desired_services returns, built from a trusted state by taking out the entries
        of services that changed or left and adding the changed and new ones; plus the keys
        that can differ from the state, per map (svc_meta, nat_be, nat_fe). `ids` (the state's
        copy) gains the ids given to new services; a changed service keeps its id."""
        if len(set(names)) != len(names):
            seen: set[str] = set()
            twice = next(n for n in names if n in seen or seen.add(n))
            raise ValueError(f"service {twice} listed twice")
        meta, bes, fes = dict(state.meta), dict(state.bes), dict(state.fes)
        touched: tuple[set[bytes], set[bytes], set[bytes]] = (set(), set(), set())
        for name, old in state.services.items():
            if name not in reuse:             # changed or gone: its entries come out
                _take_out(old, (meta, bes, fes), touched)
        used = _Ids(ids.values())
        addresses, packers = self._addresses(view), _packers()
        entries: dict[str, _SvcEntries] = {}
        for svc, name in zip(view.services, names):
            mine = reuse.get(name)
            if mine is None:
                mine = self._service_entries(svc, ids, used, addresses, packers)
                _put_in(mine, (meta, bes, fes), touched, name)
            entries[name] = mine
        return meta, bes, fes, entries, touched

    def _desired_services(self, view: ClusterView, ids: dict[bytes, int]
                          ) -> tuple[dict[bytes, bytes], dict[bytes, bytes], dict[bytes, bytes],
                                     dict[str, _SvcEntries]]:
        """svc_meta, nat_be and nat_fe entries (key bytes -> value bytes) for the view's services,
        and each service's own (what a keep_state copy remembers).

        `ids` (svc_meta value -> id, as read) gains the ids given to new services. Local
        backends come first: the C picks among the first local_count for Local policy.
        """
        addresses, packers = self._addresses(view), _packers()
        used = _Ids(ids.values())
        maps_: tuple[dict[bytes, bytes], dict[bytes, bytes], dict[bytes, bytes]] = ({}, {}, {})
        entries: dict[str, _SvcEntries] = {}
        for svc in view.services:
            name = svc.meta_name
            if name in entries:
                raise ValueError(f"service {name} listed twice")
            entries[name] = mine = self._service_entries(svc, ids, used, addresses, packers)
            _put_in(mine, maps_, None, name)
        return (*maps_, entries)

    def _service_entries(self, svc: Service, ids: dict[bytes, int], used: "_Ids",
                         addresses: _Addresses, packers: "_Packers") -> _SvcEntries:
        """One service's map entries; a new service gets the lowest free id (added to ids)."""
        name = svc.meta_name
        pack_id, pack_meta, pack_be_key, pack_be, pack_fe_key, pack_fe = packers
        # Stable ids: a service keeps its id as long as svc_meta holds its name.
        meta_value = pack_meta(SvcMeta.encode(name))
        sid = ids.get(meta_value)
        if sid is None:       # new service: the lowest free id
            sid = ids[meta_value] = used.take()
        local, remote = [], []
        for b in svc.backends:
            ip, is_local = addresses[b.addr]
            (local if is_local else remote).append(pack_be(ip, b.port))
        bes = [(pack_be_key(sid, i), value) for i, value in enumerate(local + remote)]
        proto = proto_num(svc.proto)
        count = len(local) + len(remote)
        fes = []
        if svc.cluster_ip:
            fes.append((pack_fe_key(ip2int(svc.cluster_ip), svc.port, proto),
                        pack_fe(sid, count, len(local), FE_F_CLUSTERIP)))
        if svc.node_port:
            fes.append((pack_fe_key(0, svc.node_port, proto),
                        pack_fe(sid, count, len(local), FE_F_NODEPORT)))
        return _SvcEntries(_fingerprint(svc), (pack_id(sid), meta_value), bes, fes)

    @staticmethod
    def _flush_backends(m: NodeMaps, gone: set[tuple[int, int]]) -> int:
        """Forget connections NATed to removed backends, so their clients get a live one."""
        n = 0
        for k, v in list(m.ct.items()):
            if v.type == CT_NAT_FWD and (v.nat_addr, v.nat_port) in gone:
                n += m.ct.delete(ct_rev_key_of_fwd(k, v))
                n += m.ct.delete(k)
        return n

    # -- conntrack ----------------------------------------------------------------------------

    def gc(self, now_ns: int | None = None) -> int:
        """One conntrack GC pass on this node; returns entries deleted."""
        with self.maps() as m:
            return gc_conntrack(m.ct, now_ns, self._timeouts())

    def conntrack(self) -> list[tuple[CtKey, CtValue]]:
        with self.maps() as m:
            return list(m.ct.items())


def services_from(items: Iterable[dict]) -> list[Service]:
    """Services from plain dicts (e.g. YAML): backends as {addr, port} dicts."""
    out = []
    for d in items:
        d = dict(d)
        d["backends"] = [Backend(**b) if isinstance(b, dict) else b for b in d.get("backends", [])]
        out.append(Service(**d))
    return out
