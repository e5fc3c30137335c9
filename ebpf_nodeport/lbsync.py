"""The eBPF side of LoadBalancer ingress and external IPs: extra frontends, and the lb_* maps.

ServiceSyncer (sync.py) calls `frontends` for each service's nat_fe entries and `sync` after the
service maps are written. The lb maps (lb_svc, lb_src, maglev) hold entries only for services
with source ranges, ClientIP affinity or Maglev, so they are reconciled whole every sync (a
bulk read of small maps); a frontend flagged FE_F_LB_OPTS whose lb_svc entry is not there yet
drops new flows (bpf/lib/lb.h), so a new service never admits sources its ranges exclude.
"""

from __future__ import annotations

from typing import Any, Callable

from . import maglev
from .abi import (FE_F_CLUSTERIP, FE_F_ETP_LOCAL, FE_F_EXTERNAL, FE_F_LB_IP, FE_F_LB_OPTS, LB_F_AFFINITY, LB_F_MAGLEV,
                  LB_F_SRC_RANGES, U32, AffinityKey, AffinityValue, BeValue, LbSrcKey, LbSvc, MaglevKey,
                  SvcMeta, ip2int)
from .maps import NodeMaps


def _selectable(svc: Any) -> list[Any]:
    """The service's backends new connections may take (sync.selectable; imported late: sync imports this module)."""
    from .sync import selectable

    return selectable(svc.backends)


def has_options(svc: Any) -> bool:
    """Does the service need an lb_svc entry?"""
    return bool((svc.lb_ip and svc.source_ranges) or svc.affinity_timeout or (svc.maglev and external(svc)))


def external(svc: Any) -> list[str]:
    """The service's external frontend addresses: LoadBalancer ingress first, then external IPs."""
    return ([svc.lb_ip] if svc.lb_ip else []) + list(svc.external_ips)


def frontends(svc: Any, fes: list[tuple[bytes, bytes]], sid: int, count: int, local: int, proto: int,
              pack_fe_key: Callable[..., bytes], pack_fe: Callable[..., bytes]) -> list[tuple[bytes, bytes]]:
    """The service's nat_fe entries with its external frontends added (and FE_F_LB_OPTS on all when it has options)."""
    opts = FE_F_LB_OPTS if has_options(svc) else 0
    if opts:
        from .abi import FeValue
        fes = [(k, pack_fe(v.svc_id, v.count, v.local_count, v.flags | opts))
               for k, v in ((k, FeValue.from_bytes(v)) for k, v in fes)]
    for addr in external(svc):
        flags = FE_F_CLUSTERIP | FE_F_EXTERNAL | opts | (FE_F_LB_IP if addr == svc.lb_ip else 0)
        if svc.external_local:  # externalTrafficPolicy Local covers LoadBalancer ingress and external IPs too
            flags |= FE_F_ETP_LOCAL
        fes.append((pack_fe_key(ip2int(addr), svc.port, proto), pack_fe(sid, count, local, flags)))
    return fes


def desired(services: list[Any], ids: dict[bytes, int]) -> tuple[dict[bytes, bytes], dict[bytes, bytes], dict[bytes, bytes]]:
    """lb_svc, lb_src and maglev entries (key bytes -> value bytes) for the services; ids: packed svc_meta -> id."""
    pack_meta = SvcMeta.packer()
    svcs: dict[bytes, bytes] = {}
    src: dict[bytes, bytes] = {}
    tables: dict[bytes, bytes] = {}
    for svc in services:
        if not has_options(svc):
            continue
        sid = ids[pack_meta(SvcMeta.encode(svc.meta_name))]
        flags = 0
        if svc.lb_ip and svc.source_ranges:
            flags |= LB_F_SRC_RANGES
            for cidr in svc.source_ranges:
                src[bytes(LbSrcKey.make(sid, cidr))] = U32.pack(1)
        if svc.affinity_timeout:
            flags |= LB_F_AFFINITY
        if svc.maglev and external(svc):
            flags |= LB_F_MAGLEV
            tbl = maglev.table([(ip2int(b.addr), b.port) for b in _selectable(svc)])
            for slot, (addr, port) in enumerate(tbl):
                tables[MaglevKey.pack(sid, slot)] = BeValue.pack(addr, port)
        svcs[U32.pack(sid)] = LbSvc.pack(flags, svc.affinity_timeout or 0)
    return svcs, src, tables


def sync(m: NodeMaps, services: list[Any], ids: dict[bytes, int], stats: Any, reconcile: Callable[..., None]) -> None:
    """Reconcile lb_svc, lb_src and maglev (tables before the options that use them), and forget
    affinities to backends no service has any more."""
    svcs, src, tables = desired(services, ids)
    reconcile(m.maglev, tables, stats, "maglev")
    reconcile(m.lb_src, src, stats, "lb_src")
    reconcile(m.lb_svc, svcs, stats, "lb_svc")
    if any(s.affinity_timeout for s in services):
        # a terminating backend takes no new connection, a client's affinity to it included (kube-proxy
        # checks the recent lists of the usable endpoints' chains only)
        live = {(ip2int(b.addr), b.port) for s in services for b in _selectable(s)}
        stale = [k for k, v in m.affinity.raw_items().items()
                 if (AffinityValue.from_bytes(v).be_addr, AffinityValue.from_bytes(v).be_port) not in live]
        for k in stale:
            m.affinity.delete(k)


def affinity_records(m: NodeMaps, now_ns: int, timeouts: dict[tuple[int, int, int], int]) -> list[dict[str, Any]]:
    """The affinity map as records: frontend, client, backend, age and seconds left (timeouts: frontend -> s)."""
    out = []
    for k, v in m.affinity.raw_items().items():
        key, val = AffinityKey.from_bytes(k), AffinityValue.from_bytes(v)
        age = max(0, now_ns - val.last_ns) / 1e9
        timeout = timeouts.get((key.fe_addr, key.fe_port, key.proto))
        out.append({"frontend": f"{key.to_dict()['fe_addr']}:{key.fe_port}", "proto": key.proto,
                    "client": key.to_dict()["client"], "backend": f"{val.to_dict()['be_addr']}:{val.be_port}",
                    "age_s": round(age, 1), "timeout_s": timeout,
                    "expires_in_s": None if timeout is None else round(max(0.0, timeout - age), 1)})
    return sorted(out, key=lambda r: (r["frontend"], r["client"]))
