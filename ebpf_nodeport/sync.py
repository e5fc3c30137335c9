"""ServiceSyncer: a ClusterView (nodes, pod blocks, services, mode) made into one node's map entries.

Kept apart from loading and attaching programs (datapath.py), as Calico keeps its service
syncer (felix/bpf/proxy) apart from felix/bpf/tc. A sync diffs as bytes against the maps
(or against what a keep_state syncer last wrote) and writes in an order that keeps the
datapath consistent at every step: names, new backends, frontends, then what is stale.
Connections NATed to a backend that left are flushed from conntrack.
"""
from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass, field
from typing import Callable, Iterable, NamedTuple

from .abi import (CFG_F_DSR, CFG_F_ENABLED, CT_NAT_FWD, EBPF_MODES, FE_F_CLUSTERIP, FE_F_ETP_LOCAL,
                  FE_F_ITP_LOCAL, FE_F_NODEPORT, RT_F_LOCAL,
                  U32, Addr, BeKey, BeValue, FeKey, FeValue, NodeCfg, NodeInfo, RouteInfo, RouteKey, SvcMeta,
                  ct_rev_key_of_fwd, int2ip, ip2int, proto_num)
from . import lbsync
from .maps import MapView, NodeMaps


__all__ = ["Backend", "Service", "ClusterView", "ServiceSyncer", "SyncStats",
           "selectable", "services_from"]


@dataclass(frozen=True)
class Backend:
    """One endpoint of a service: pod address and target port."""
    addr: str
    port: int
    terminating: bool = False   # serving but going: used only when no other backend is ready


def selectable(backends: Iterable[Backend]) -> list[Backend]:
    """The backends a new connection may take: the ready ones, else the terminating ones (kube-proxy's
    fallback for graceful termination, KEP-1669). Calico's syncer likewise writes only ready endpoints
    into the backend map, keeping terminating ones out of the selection."""
    bes = list(backends)
    ready = [b for b in bes if not b.terminating]
    return ready if ready else bes


@dataclass
class Service:
    """One service port: its ClusterIP frontend, optional NodePort, and backends."""
    name: str
    proto: str
    cluster_ip: str | None
    port: int
    node_port: int | None = None
    backends: list[Backend] = field(default_factory=list)
    # external frontends and their options (lbsync.py): LoadBalancer ingress, spec.externalIPs,
    # loadBalancerSourceRanges, ClientIP affinity timeout (None: none), Maglev
    lb_ip: str | None = None
    external_ips: list[str] = field(default_factory=list)
    source_ranges: list[str] = field(default_factory=list)
    affinity_timeout: int | None = None
    maglev: bool = False
    external_local: bool = False          # externalTrafficPolicy Local (FE_F_ETP_LOCAL on the NodePort)
    internal_local: bool = False          # internalTrafficPolicy Local (FE_F_ITP_LOCAL on the ClusterIP)

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
        if self.mode not in EBPF_MODES:
            raise ValueError(f"mode must be one of {', '.join(EBPF_MODES)}, not {self.mode!r}")
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
    return (svc.proto, svc.cluster_ip, svc.port, svc.node_port, tuple(svc.backends),
            svc.lb_ip, tuple(svc.external_ips), tuple(svc.source_ranges), svc.affinity_timeout, svc.maglev,
            svc.external_local, svc.internal_local)


@dataclass
class _SvcEntries:
    """One service's map entries as sync() last wrote them, and what they were made from."""
    fingerprint: tuple
    meta: tuple[bytes, bytes]                # svc_meta key, value
    bes: list[tuple[bytes, bytes]]           # nat_be items
    fes: list[tuple[bytes, bytes]]           # nat_fe items


@dataclass
class _SyncState:
    """What a keep_state ServiceSyncer last wrote to the service maps; it stands for the maps
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


class ServiceSyncer:
    """Programs one node's maps from a ClusterView: writes only what differs, deletes what
    is stale, so it can run any number of times without recompiling or disturbing live
    connections.

    keep_state: remember what sync() wrote, as a long-running agent (felix) does, so a later
    sync from this object diffs against that instead of reading the maps back, and rebuilds
    only the services that changed. Trusted only while cfg.sync_token is the token this
    object wrote; map writes made other than by sync() are not seen.
    """

    def __init__(self, node_ip: str, *, keep_state: bool = False):
        self.node_ip = str(ipaddress.IPv4Address(node_ip))
        self.keep_state = keep_state
        self._state: _SyncState | None = None

    def sync(self, m: NodeMaps, view: ClusterView,
             cfg_for: Callable[[NodeCfg, int], NodeCfg]) -> SyncStats:
        """Make cfg/nodes/routes/dsr_optout/nat_* of the open maps `m` match the view;
        idempotent, no recompile. `cfg_for(old_cfg, flags)` gives the node's full cfg value
        (NodeDatapath knows its interface and MTU); the syncer decides only the flags."""
        view.validate(services=False)
        stats = SyncStats()
        old = m.read_cfg()
        state = self._state if self._state and self._state.token == old.sync_token else None
        names, reuse = self._reusable(view, state)   # validates every service it cannot reuse
        self._sync_cfg(m, old, view, stats, cfg_for)
        self._sync_topology(m, view, stats)
        try:
            new_state = self._sync_services(m, view, stats, state, names, reuse)
            lbsync.sync(m, view.services, new_state.ids, stats, _reconcile)
        except BaseException:
            # Maybe half written: no copy anywhere may stand for these maps now.
            self._state = None
            _new_token(m)
            raise
        self._keep(m, new_state, read_back=state is None, stats=stats)
        return stats

    def _sync_cfg(self, m: NodeMaps, old: NodeCfg, view: ClusterView, stats: SyncStats,
                  cfg_for: Callable[[NodeCfg, int], NodeCfg]) -> None:
        """cfg with the view's mode as CFG_F_DSR (other flags kept on the same node)."""
        flags = old.flags if old.node_ip == ip2int(self.node_ip) else CFG_F_ENABLED
        flags = (flags & ~CFG_F_DSR) | (CFG_F_DSR if view.mode == "dsr" else 0)
        new_cfg = cfg_for(old, flags)
        if new_cfg != old:
            m.write_cfg(new_cfg)
            stats.written["cfg"] = 1

    def _sync_topology(self, m: NodeMaps, view: ClusterView, stats: SyncStats) -> None:
        """nodes, routes (this node's pod blocks marked local) and dsr_optout from the view."""
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
        desired = _Desired(self.node_ip, view, ids)
        if state is not None and 2 * len(reuse) >= max(len(names), len(state.services)):
            meta, bes, fes, entries, touched = desired.incremental(state, names, reuse)
        else:
            meta, bes, fes, entries = desired.full()
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
            stats.ct_flushed = _flush_backends(m, gone)
        if len(ids) != len(meta):     # services that left: their names and ids are free now
            ids = _service_ids(meta)
        return _SyncState(0, _blocks_of(view), meta, bes, fes, entries, ids)


class _Desired:
    """One sync's desired service entries for one node: the address facts, ids and packers
    made once, then every service's entries from them."""

    def __init__(self, node_ip: str, view: ClusterView, ids: dict[bytes, int]):
        self.view = view
        self.ids = ids                   # svc_meta value -> id; gains the ids of new services
        self.used = _Ids(ids.values())
        self.packers = _packers()
        me = ip2int(node_ip)
        mine = []                        # this node's own pod blocks, as integer masks
        for cidr, block_node in view.pod_blocks.items():
            if ip2int(block_node) == me:
                net = ipaddress.IPv4Network(cidr, strict=False)
                mine.append((int(net.network_address), int(net.netmask)))
        self.addresses = _Addresses(mine)

    def full(self) -> tuple[dict[bytes, bytes], dict[bytes, bytes], dict[bytes, bytes],
                            dict[str, _SvcEntries]]:
        """svc_meta, nat_be and nat_fe entries (key bytes -> value bytes) for the view's services,
        and each service's own (what a keep_state copy remembers).

        Local backends come first: the C picks among the first local_count for Local policy.
        """
        maps_: _Maps = ({}, {}, {})
        entries: dict[str, _SvcEntries] = {}
        for svc in self.view.services:
            name = svc.meta_name
            if name in entries:
                raise ValueError(f"service {name} listed twice")
            entries[name] = mine = self.service(svc)
            _put_in(mine, maps_, None, name)
        return (*maps_, entries)

    def incremental(self, state: _SyncState, names: list[str], reuse: dict[str, _SvcEntries]):
        """What full() returns, built from a trusted state by taking out the entries of services
        that changed or left and adding the changed and new ones; plus the keys that can differ
        from the state, per map (svc_meta, nat_be, nat_fe). A changed service keeps its id."""
        if len(set(names)) != len(names):
            seen: set[str] = set()
            twice = next(n for n in names if n in seen or seen.add(n))
            raise ValueError(f"service {twice} listed twice")
        meta, bes, fes = dict(state.meta), dict(state.bes), dict(state.fes)
        touched: _Keys = (set(), set(), set())
        for name, old in state.services.items():
            if name not in reuse:             # changed or gone: its entries come out
                _take_out(old, (meta, bes, fes), touched)
        entries: dict[str, _SvcEntries] = {}
        for svc, name in zip(self.view.services, names):
            mine = reuse.get(name)
            if mine is None:
                mine = self.service(svc)
                _put_in(mine, (meta, bes, fes), touched, name)
            entries[name] = mine
        return meta, bes, fes, entries, touched

    def service(self, svc: Service) -> _SvcEntries:
        """One service's map entries; a new service gets the lowest free id (added to ids)."""
        name = svc.meta_name
        pack_id, pack_meta, pack_be_key, pack_be, pack_fe_key, pack_fe = self.packers
        # Stable ids: a service keeps its id as long as svc_meta holds its name.
        meta_value = pack_meta(SvcMeta.encode(name))
        sid = self.ids.get(meta_value)
        if sid is None:       # new service: the lowest free id
            sid = self.ids[meta_value] = self.used.take()
        local, remote = [], []
        chosen = selectable(svc.backends)
        for b in chosen:
            ip, is_local = self.addresses[b.addr]
            (local if is_local else remote).append(pack_be(ip, b.port))
        # Terminating backends not selectable sit past `count`, where no pick (hash % count) reaches:
        # they still serve their open connections, and being held by an entry they are not "gone" (whose
        # CT entries a sync flushes) until they leave for good. Calico keeps them in its syncer's memory
        # for its conntrack cleaner; a sync here keeps no memory between runs, so the map holds them.
        held = [pack_be(self.addresses[b.addr][0], b.port) for b in svc.backends if b not in chosen]
        bes = [(pack_be_key(sid, i), value) for i, value in enumerate(local + remote + held)]
        proto = proto_num(svc.proto)
        count = len(local) + len(remote)
        fes = []
        if svc.cluster_ip:
            fes.append((pack_fe_key(ip2int(svc.cluster_ip), svc.port, proto),
                        pack_fe(sid, count, len(local), FE_F_CLUSTERIP | (FE_F_ITP_LOCAL if svc.internal_local else 0))))
        if svc.node_port:
            fes.append((pack_fe_key(0, svc.node_port, proto),
                        pack_fe(sid, count, len(local), FE_F_NODEPORT | (FE_F_ETP_LOCAL if svc.external_local else 0))))
        fes = lbsync.frontends(svc, fes, sid, count, len(local), proto, pack_fe_key, pack_fe)
        return _SvcEntries(_fingerprint(svc), (pack_id(sid), meta_value), bes, fes)


def _flush_backends(m: NodeMaps, gone: set[tuple[int, int]]) -> int:
    """Forget connections NATed to removed backends, so their clients get a live one."""
    n = 0
    for k, v in list(m.ct.items()):
        if v.type == CT_NAT_FWD and (v.nat_addr, v.nat_port) in gone:
            n += m.ct.delete(ct_rev_key_of_fwd(k, v))
            n += m.ct.delete(k)
    return n


def services_from(items: Iterable[dict]) -> list[Service]:
    """Services from plain dicts (e.g. YAML): backends as {addr, port} dicts."""
    out = []
    for d in items:
        d = dict(d)
        d["backends"] = [Backend(**b) if isinstance(b, dict) else b for b in d.get("backends", [])]
        out.append(Service(**d))
    return out
