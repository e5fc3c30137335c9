"""Decode a node's pinned maps into plain records: what `netns-lab dump` and `explain` show.

Why a separate layer: the maps are normalised for the datapath (a conntrack key
sorted by address, a service as a number, TCP flags per side), a student wants
them the other way round (client -> frontend -> backend, the service's name, the
state the timeout is judged by). `read_snapshot()` copies a node's maps once;
the `*_records()` functions turn a Snapshot into lists/dicts of plain values (the
documented `-o json` fields, docs/study-the-maps.md); `render_*()` draws them as
rich tables. Decoders never touch the kernel, so they are tested with ctypes
values alone. Timeouts and TCP state come from abi.ct_timeout_ns, the mirror of
the C's rules, never a second copy.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Iterable

from rich.console import Console
from rich.table import Table

from .abi import (CFG_FLAG_NAMES, CFG_F_DSR, CFG_F_ENABLED, CFG_F_TRACE, CT_FLAG_NAMES, CT_F_CLIENT_IS_B,
                  CT_F_DSR, CT_F_TUNNEL, CT_NAT_FWD, CT_NAT_REV, CT_NORMAL, CT_TIMEOUTS_NS, CT_TYPES,
                  FE_FLAG_NAMES, FE_F_NODEPORT, HOOKS, MAP_SPECS, MAX_REASONS, N_HOOKS, PROTO_NAMES, REASONS,
                  REASON_DESCRIPTIONS, RT_F_LOCAL, SEC_NS, TCP_FLAG_NAMES, Addr, BeKey, BeValue, CtKey,
                  CtValue, FeKey, FeValue, NodeCfg, RouteInfo, RouteKey, ct_expired, ct_partner_type,
                  ct_rev_key_of_fwd, ct_timeout_ns, flag_names, int2ip, ktime_ns, reason_name)
from .maps import NodeMaps

KINDS = ("nat", "backends", "conntrack", "counters", "routes", "config")
ENTRY_NAMES = {CT_NAT_FWD: "forward", CT_NAT_REV: "reverse", CT_NORMAL: "normal"}
STATES = ("SYN-sent", "established", "FINs seen", "RST seen")

# ct_timeout_ns() picks one of these timeouts; probing it with distinct values tells
# which one, i.e. the state the C judges the entry by (no second copy of the rules).
_PROBE = {"CT_TIMEOUT_TCP_SYN": 1, "CT_TIMEOUT_TCP_EST": 2, "CT_TIMEOUT_TCP_FIN": 3,
          "CT_TIMEOUT_TCP_RST": 4, "CT_TIMEOUT_UDP": 5, "CT_TIMEOUT_ICMP": 6,
          "CT_TIMEOUT_OTHER": 7}
_PROBE_STATE = {1: "SYN-sent", 2: "established", 3: "FINs seen", 4: "RST seen"}


def state_slug(state: str | None) -> str:
    """'FINs seen' -> 'fins-seen': the spelling `--state` accepts."""
    return (state or "").lower().replace(" ", "-")


STATE_CHOICES = tuple(state_slug(s) for s in STATES) + ("expired",)


# ---- snapshot ------------------------------------------------------------------------------

@dataclass
class Snapshot:
    """One node's maps copied out of the kernel (or built by a test): input of every decoder."""
    node: str
    now_ns: int
    cfg: NodeCfg = field(default_factory=NodeCfg)
    nodes: list[Addr] = field(default_factory=list)
    routes: list[tuple[RouteKey, RouteInfo]] = field(default_factory=list)
    dsr_optout: list[RouteKey] = field(default_factory=list)
    nat_fe: list[tuple[FeKey, FeValue]] = field(default_factory=list)
    nat_be: list[tuple[BeKey, BeValue]] = field(default_factory=list)
    svc_meta: dict[int, str] = field(default_factory=dict)
    ct: list[tuple[CtKey, CtValue]] = field(default_factory=list)
    counters: list[int] = field(default_factory=lambda: [0] * (N_HOOKS * MAX_REASONS))
    names: dict[str, str] = field(default_factory=dict)     # node address -> node name
    map_stats: list[dict[str, Any]] = field(default_factory=list)

    def node_name(self, addr: str | None) -> str | None:
        return self.names.get(addr) if addr else None


# Which maps each dump needs (reading conntrack for a nat dump would be wasted work).
NEEDS: dict[str, tuple[str, ...]] = {
    "nat": ("cfg", "routes", "nat_fe", "nat_be", "svc_meta"),
    "backends": ("cfg", "routes", "nat_fe", "nat_be", "svc_meta"),
    "conntrack": ("cfg", "nat_fe", "svc_meta", "ct"),
    "counters": ("counters",),
    "routes": ("cfg", "nodes", "routes", "dsr_optout"),
    "config": ("cfg", "maps"),
}


def read_snapshot(maps: NodeMaps, node: str, names: dict[str, str] | None = None,
                  which: Iterable[str] | None = None, now_ns: int | None = None) -> Snapshot:
    """Copy the maps a dump needs (all when which is None) from a node's pins."""
    want = set(which) if which is not None else set(MAP_SPECS) - {"events"}
    snap = Snapshot(node=node, now_ns=ktime_ns() if now_ns is None else now_ns,
                    names=dict(names or {}))
    if "cfg" in want:
        snap.cfg = maps.read_cfg()
    if "nodes" in want:
        snap.nodes = list(maps.nodes.keys())
    if "routes" in want:
        snap.routes = list(maps.routes.items())
    if "dsr_optout" in want:
        snap.dsr_optout = list(maps.dsr_optout.keys())
    if "nat_fe" in want:
        snap.nat_fe = list(maps.nat_fe.items())
    if "nat_be" in want:
        snap.nat_be = list(maps.nat_be.items())
    if "svc_meta" in want:
        snap.svc_meta = {k.value: v.name.decode(errors="replace") for k, v in maps.svc_meta.items()}
    if "ct" in want:
        snap.ct = list(maps.ct.items())
    if "counters" in want:
        snap.counters = maps.counters.all()
    if "maps" in want:
        snap.map_stats = map_stats(maps)
    return snap


def map_stats(maps: NodeMaps) -> list[dict[str, Any]]:
    """Per map: kind, entries in use, max_entries, key/value sizes (for `dump config`)."""
    out = []
    for name, spec in MAP_SPECS.items():
        if name == "events":
            out.append({"map": name, "type": "ringbuf", "entries": None,
                        "max_entries": spec.max_entries, "key_size": 0, "value_size": 0})
            continue
        view = getattr(maps, name)
        entries = view.info.max_entries if name in ("cfg", "counters", "ct_clock") else len(view)
        out.append({"map": name, "type": _MAP_TYPES.get(spec.map_type, str(spec.map_type)),
                    "entries": entries, "max_entries": view.info.max_entries,
                    "key_size": view.info.key_size, "value_size": view.info.value_size})
    return out


_MAP_TYPES = {1: "hash", 2: "array", 6: "percpu_array", 9: "lru_hash", 11: "lpm_trie", 27: "ringbuf"}


# ---- small decoders -------------------------------------------------------------------------

def endpoint(addr: str | None, port: int | None) -> str | None:
    """'198.19.0.1:30180'; '*:30180' for the NodePort wildcard; None when unknown."""
    if addr is None and port is None:
        return None
    return f"{addr if addr else '*'}:{port}" if port else (addr or "*")


def proto_name(proto: int) -> str:
    return PROTO_NAMES.get(proto, str(proto))


def split_service(meta: str | None) -> tuple[str | None, str | None]:
    """svc_meta 'yaobank/customer:80/tcp' -> ('yaobank/customer', '80/tcp')."""
    if not meta:
        return None, None
    name, sep, port = meta.rpartition(":")
    if not sep or "/" not in port:
        return meta, None
    return name, port


def service_matches(record: dict[str, Any], query: str) -> bool:
    """--service: 'yaobank/customer', 'customer', 'yaobank/customer:80/tcp' or a frontend 'ip:port'."""
    svc, meta = record.get("service"), record.get("service_key")
    if svc and (query in (svc, meta) or svc.rsplit("/", 1)[-1] == query):
        return True
    return query in (record.get("frontend"), record.get("frontend_addr"))


def _route_lookup(routes: list[tuple[RouteKey, RouteInfo]], addr: int) -> RouteInfo | None:
    """Longest-prefix match in a copy of the routes LPM trie, as the C's lookup does."""
    best: tuple[int, RouteInfo] | None = None
    for k, v in routes:
        net = ipaddress.IPv4Network((k.addr, k.prefixlen), strict=False)
        if ipaddress.IPv4Address(addr) in net and (best is None or k.prefixlen > best[0]):
            best = (k.prefixlen, v)
    return best[1] if best else None


def _fe_service(snap: Snapshot, fes: dict[FeKey, FeValue], addr: int, port: int,
                proto: int) -> tuple[FeValue | None, str | None]:
    """Frontend lookup as the datapath does it: exact (addr, port, proto), then NodePort wildcard."""
    v = fes.get(FeKey(addr=addr, port=port, proto=proto))
    if v is None:
        w = fes.get(FeKey(addr=0, port=port, proto=proto))
        if w is not None and w.flags & FE_F_NODEPORT:
            v = w
    if v is None:
        return None, None
    return v, snap.svc_meta.get(v.svc_id)


# ---- nat / backends --------------------------------------------------------------------------

def nat_records(snap: Snapshot) -> list[dict[str, Any]]:
    """One record per frontend (nat_fe) with its service name and backends (nat_be) beneath."""
    bes: dict[int, dict[int, BeValue]] = {}
    for k, v in snap.nat_be:
        bes.setdefault(k.svc_id, {})[k.ordinal] = v
    out = []
    for k, v in snap.nat_fe:
        meta = snap.svc_meta.get(v.svc_id)
        name, sport = split_service(meta)
        addr = int2ip(k.addr) if k.addr else None
        backends = []
        for i in range(v.count):
            b = bes.get(v.svc_id, {}).get(i)
            if b is None:
                backends.append({"ordinal": i, "addr": None, "port": None, "backend": None,
                                 "local": i < v.local_count, "node": None, "missing": True})
                continue
            backends.append(_backend_fields(snap, i, b, i < v.local_count))
        out.append({
            "frontend": endpoint(addr, k.port), "addr": addr, "port": k.port,
            "proto": proto_name(k.proto),
            "kind": "nodeport" if v.flags & FE_F_NODEPORT else "clusterip",
            "service": name, "service_port": sport, "service_key": meta, "svc_id": v.svc_id,
            "backend_count": v.count, "local_count": v.local_count,
            "flags": flag_names(v.flags, FE_FLAG_NAMES), "backends": backends,
        })
    out.sort(key=lambda r: (r["service"] or "", r["kind"], r["port"], r["proto"]))
    return out


def _backend_fields(snap: Snapshot, ordinal: int, b: BeValue, local: bool) -> dict[str, Any]:
    addr = int2ip(b.addr)
    route = _route_lookup(snap.routes, b.addr)
    node_ip = int2ip(route.node_ip) if route else None
    return {"ordinal": ordinal, "addr": addr, "port": b.port, "backend": endpoint(addr, b.port),
            "local": local, "node": snap.node_name(node_ip) or node_ip, "missing": False}


def backend_records(snap: Snapshot) -> list[dict[str, Any]]:
    """One record per nat_be entry: (service id, ordinal) -> backend, with service and node."""
    local_counts: dict[int, int] = {}
    counts: dict[int, int] = {}
    for _, v in snap.nat_fe:
        local_counts[v.svc_id] = v.local_count
        counts[v.svc_id] = v.count
    out = []
    for k, v in snap.nat_be:
        meta = snap.svc_meta.get(k.svc_id)
        name, sport = split_service(meta)
        rec = {"svc_id": k.svc_id, "service": name, "service_port": sport, "service_key": meta}
        rec.update(_backend_fields(snap, k.ordinal, v, k.ordinal < local_counts.get(k.svc_id, 0)))
        rec.pop("missing")
        rec["in_use"] = k.svc_id in local_counts
        # past the frontend's count: a terminating backend, kept for its open connections, never picked
        rec["terminating"] = k.svc_id in counts and k.ordinal >= counts[k.svc_id]
        out.append(rec)
    out.sort(key=lambda r: (r["service_key"] or "", r["svc_id"], r["ordinal"]))
    return out


# ---- conntrack --------------------------------------------------------------------------------

def ct_state(key: CtKey, v: CtValue) -> str | None:
    """TCP state the entry's timeout is judged by (None for UDP/ICMP/other)."""
    return _PROBE_STATE.get(ct_timeout_ns(key, v, _PROBE))


def conntrack_records(snap: Snapshot, timeouts: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """One record per conntrack entry, decoded: who is client, frontend, backend; state; expiry."""
    fes = dict(snap.nat_fe)
    entries = dict(snap.ct)
    now = snap.now_ns
    out = []
    for k, v in snap.ct:
        client_is_b = bool(v.flags & CT_F_CLIENT_IS_B)
        c_addr, c_port = (k.addr_b, k.port_b) if client_is_b else (k.addr_a, k.port_a)
        # Source-port collision (CT_F_PSNAT): the backend knows the client by another port.
        psnat_port = None
        if v.cl_port and v.type == CT_NAT_FWD:
            psnat_port = v.cl_port
        elif v.cl_port:
            c_port, psnat_port = v.cl_port, c_port
        o_addr, o_port = (k.addr_a, k.port_a) if client_is_b else (k.addr_b, k.port_b)
        nat = (v.nat_addr, v.nat_port) if v.nat_addr or v.nat_port else None
        if v.type == CT_NAT_FWD:
            fe, be = (o_addr, o_port), nat
        else:          # NAT_REV, NORMAL: the key's other side is the backend, nat the frontend
            fe, be = nat, (o_addr, o_port)

        # A NAT_FWD lives and dies with its NAT_REV (datapath.gc_conntrack): judge it by that one.
        judge_k, judge_v, follows = k, v, None
        if v.type == CT_NAT_FWD:
            rk = ct_rev_key_of_fwd(k, v)
            rev = entries.get(rk)
            follows = CT_TYPES[ct_partner_type(v)]
            if rev is not None and rev.type == ct_partner_type(v):
                judge_k, judge_v = rk, rev
            else:
                judge_v = None
        if judge_v is not None:
            timeout = ct_timeout_ns(judge_k, judge_v, timeouts)
            idle = max(0, now - judge_v.last_seen_ns)
            expired = ct_expired(judge_k, judge_v, now, timeouts)
            state = ct_state(judge_k, judge_v)
            cl, sv = (judge_v.tcp_b, judge_v.tcp_a) if judge_v.flags & CT_F_CLIENT_IS_B \
                else (judge_v.tcp_a, judge_v.tcp_b)
        else:                                   # orphan NAT_FWD: deleted on its next lookup/GC
            timeout, idle, expired, state, cl, sv = 0, max(0, now - v.last_seen_ns), True, None, 0, 0

        fe_addr = int2ip(fe[0]) if fe else None
        fe_port = fe[1] if fe else None
        svc_meta = None
        if fe:
            _, svc_meta = _fe_service(snap, fes, fe[0], fe[1], k.proto)
        name, sport = split_service(svc_meta)
        peer = int2ip(v.tun_peer) if v.tun_peer else None
        from_client = (v.packets_ba, v.bytes_ba) if client_is_b else (v.packets_ab, v.bytes_ab)
        to_client = (v.packets_ab, v.bytes_ab) if client_is_b else (v.packets_ba, v.bytes_ba)
        c = (int2ip(c_addr), c_port)
        b = (int2ip(be[0]), be[1]) if be else (None, None)
        out.append({
            "proto": proto_name(k.proto),
            "type": CT_TYPES.get(v.type, str(v.type)),
            "entry": ENTRY_NAMES.get(v.type, str(v.type)),
            "client": endpoint(*c), "client_addr": c[0], "client_port": c[1],
            "psnat_port": psnat_port,
            "frontend": endpoint(fe_addr, fe_port), "frontend_addr": fe_addr, "frontend_port": fe_port,
            "backend": endpoint(*b) if be else None, "backend_addr": b[0], "backend_port": b[1],
            "service": name, "service_port": sport, "service_key": svc_meta,
            "state": state, "follows": follows,
            "tcp_flags": {"client": flag_names(cl, TCP_FLAG_NAMES),
                          "server": flag_names(sv, TCP_FLAG_NAMES)},
            "tunnel_peer": peer, "tunnel_peer_node": snap.node_name(peer),
            "flags": flag_names(v.flags, CT_FLAG_NAMES),
            "tunnel": bool(v.flags & CT_F_TUNNEL), "dsr": bool(v.flags & CT_F_DSR),
            "packets": {"from_client": from_client[0], "to_client": to_client[0]},
            "bytes": {"from_client": from_client[1], "to_client": to_client[1]},
            "age_s": round(max(0, now - v.created_ns) / SEC_NS, 3),
            "idle_s": round(idle / SEC_NS, 3),
            "timeout_s": round(timeout / SEC_NS, 3),
            "expires_in_s": round(max(0, timeout - idle) / SEC_NS, 3) if not expired else 0.0,
            "expired": expired,
            "key": k.to_dict(), "value": v.to_dict(),
        })
    out.sort(key=lambda r: (r["client_addr"] or "", r["client_port"] or 0, r["proto"],
                            r["frontend"] or "", r["type"]))
    return out


def filter_conntrack(records: list[dict[str, Any]], client: str | None = None,
                     service: str | None = None, state: str | None = None) -> list[dict[str, Any]]:
    """--client (IP or IP:port), --service (see service_matches), --state (STATE_CHOICES)."""
    out = []
    for r in records:
        if client and client not in (r["client_addr"], r["client"]):
            continue
        if service and not service_matches(r, service):
            continue
        if state:
            if state == "expired":
                if not r["expired"]:
                    continue
            elif state_slug(r["state"]) != state:
                continue
        out.append(r)
    return out


# ---- counters ----------------------------------------------------------------------------------

def counter_records(snap: Snapshot) -> dict[str, Any]:
    """Per hook and reason (every known reason, zeros too), totals per hook, drops per hook."""
    rows = []
    totals = {h: 0 for h in HOOKS.values()}
    drops = {h: 0 for h in HOOKS.values()}
    for hook, hname in HOOKS.items():
        for rid in range(MAX_REASONS):
            n = snap.counters[hook * MAX_REASONS + rid]
            if rid not in REASONS and not n:
                continue
            name = reason_name(rid)
            drop = name.startswith("DROP_")
            rows.append({"hook": hname, "reason": name, "id": rid, "packets": n, "drop": drop,
                         "description": REASON_DESCRIPTIONS.get(name, "")})
            totals[hname] += n
            if drop:
                drops[hname] += n
    totals["all"] = sum(totals[h] for h in HOOKS.values())
    drops["all"] = sum(drops[h] for h in HOOKS.values())
    return {"counters": rows, "totals": totals, "drops": drops}


def counter_delta(before: dict[str, Any], after: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows whose packets moved between two counter_records() (for `explain`)."""
    old = {(r["hook"], r["reason"]): r["packets"] for r in before["counters"]}
    return [dict(r, packets=r["packets"] - old.get((r["hook"], r["reason"]), 0))
            for r in after["counters"] if r["packets"] != old.get((r["hook"], r["reason"]), 0)]


# ---- routes / config -----------------------------------------------------------------------------

def route_records(snap: Snapshot) -> dict[str, Any]:
    """Pod blocks (routes), node addresses (nodes), DSR opt-out CIDRs: what the datapath knows."""
    me = int2ip(snap.cfg.node_ip) if snap.cfg.node_ip else None
    blocks = []
    for k, v in snap.routes:
        ip = int2ip(v.node_ip)
        blocks.append({"cidr": k.to_cidr(), "node_ip": ip, "node": snap.node_name(ip),
                       "local": bool(v.flags & RT_F_LOCAL)})
    blocks.sort(key=lambda r: ipaddress.IPv4Network(r["cidr"]))
    addrs = []
    for k in snap.nodes:
        ip = int2ip(k.addr)
        addrs.append({"addr": ip, "node": snap.node_name(ip), "self": ip == me})
    addrs.sort(key=lambda r: ipaddress.IPv4Address(r["addr"]))
    optout = sorted((k.to_cidr() for k in snap.dsr_optout), key=ipaddress.IPv4Network)
    return {"pod_blocks": blocks, "node_addresses": addrs, "dsr_optout": optout}


def config_record(snap: Snapshot) -> dict[str, Any]:
    """The cfg map decoded: this node's address, tunnel parameters, mode flags (+ map usage)."""
    c = snap.cfg
    return {
        "node_ip": int2ip(c.node_ip) if c.node_ip else None, "host_ifindex": c.host_ifindex,
        "vni": c.vni, "tunnel_port": c.tunnel_port, "fabric_mtu": c.fabric_mtu,
        "flags": flag_names(c.flags, CFG_FLAG_NAMES),
        "mode": "dsr" if c.flags & CFG_F_DSR else "tunnel",
        "enabled": bool(c.flags & CFG_F_ENABLED), "trace": bool(c.flags & CFG_F_TRACE),
        "timeouts_s": {k.removeprefix("CT_TIMEOUT_").lower(): v / SEC_NS
                       for k, v in CT_TIMEOUTS_NS.items()},
        "maps": snap.map_stats,
    }


# ---- one document per dump ---------------------------------------------------------------------

def node_document(kind: str, snap: Snapshot, address: str | None = None,
                  **filters: Any) -> dict[str, Any]:
    """{node, address, <kind's fields>}: one element of the `nodes` list of `dump -o json`."""
    doc: dict[str, Any] = {"node": snap.node, "address": address}
    if kind == "nat":
        doc["frontends"] = nat_records(snap)
    elif kind == "backends":
        doc["backends"] = backend_records(snap)
    elif kind == "conntrack":
        doc["entries"] = filter_conntrack(conntrack_records(snap, filters.get("timeouts")),
                                          filters.get("client"), filters.get("service"),
                                          filters.get("state"))
    elif kind == "counters":
        doc.update(counter_records(snap))
    elif kind == "routes":
        doc.update(route_records(snap))
    elif kind == "config":
        doc["config"] = config_record(snap)
    else:
        raise ValueError(f"unknown dump {kind!r}: use one of {', '.join(KINDS)}")
    return doc


# ---- tables --------------------------------------------------------------------------------------

def duration(seconds: float | None) -> str:
    """Short human duration: 0.4s, 12s, 3m05s, 1h00m."""
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.1f}s"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def _heading(out: Console, node: dict[str, Any], what: str, n: int | None = None) -> None:
    """`control (198.19.0.1) conntrack: 2` above a table (a table title would wrap to its width)."""
    addr = f" ({node['address']})" if node.get("address") else ""
    count = f": {n}" if n is not None else ""
    out.print(f"[bold]{node['node']}[/]{addr} {what}{count}", highlight=False)


def render(kind: str, doc: dict[str, Any], out: Console) -> None:
    """Draw a whole dump document ({lab, dump, nodes: [...]}) as tables, one per node."""
    for node in doc["nodes"]:
        _RENDERERS[kind](node, out)


def _render_nat(node: dict[str, Any], out: Console) -> None:
    _heading(out, node, "nat frontends", len(node["frontends"]))
    t = Table()
    for col in ("frontend", "proto", "kind", "service", "backends", "local", "flags"):
        t.add_column(col)
    for f in node["frontends"]:
        t.add_row(f["frontend"], f["proto"], f["kind"], f["service_key"] or f"id {f['svc_id']}",
                  str(f["backend_count"]), str(f["local_count"]), ",".join(f["flags"]))
        for b in f["backends"]:
            where = "local" if b["local"] else (b["node"] or "?")
            what = b["backend"] if not b["missing"] else "[red]missing in nat_be[/]"
            t.add_row(f"  └ #{b['ordinal']} {what}", "", "", f"[dim]on {where}[/]", "", "", "")
    out.print(t)


def _render_backends(node: dict[str, Any], out: Console) -> None:
    _heading(out, node, "nat backends", len(node["backends"]))
    t = Table()
    for col in ("svc id", "ordinal", "backend", "service", "node", "local", "terminating"):
        t.add_column(col)
    for b in node["backends"]:
        t.add_row(str(b["svc_id"]), str(b["ordinal"]), b["backend"], b["service_key"] or "-",
                  b["node"] or "-", "yes" if b["local"] else "no", "yes" if b["terminating"] else "no")
    out.print(t)


def _render_conntrack(node: dict[str, Any], out: Console) -> None:
    _heading(out, node, "conntrack", len(node["entries"]))
    if not node["entries"]:
        return
    follows = any(e["follows"] for e in node["entries"])
    t = Table(caption="forward entries live as long as their reverse entry: state and expiry are "
                      "that one's" if follows else None, caption_justify="left")
    for col in ("proto", "client", "frontend", "backend"):
        t.add_column(col, no_wrap=True)
    for col in ("entry", "state", "tunnel peer", "flags"):
        t.add_column(col, overflow="fold")
    for col in ("c>s pkts/bytes", "s>c pkts/bytes", "age/expires"):
        t.add_column(col, justify="right", overflow="fold")
    for e in node["entries"]:
        peer = (e["tunnel_peer_node"] or e["tunnel_peer"]) if e["tunnel_peer"] else "-"
        state = e["state"] or "-"
        if e["follows"] and not e["state"]:
            state = "[red]no reverse entry[/]"
        flags = [f for f in e["flags"] if f != "CLIENT_IS_B"]
        expiry = "[red]expired[/]" if e["expired"] else duration(e["expires_in_s"])
        client = e["client"]
        if e["psnat_port"]:     # the backend knows the client by another port
            client += f" (as :{e['psnat_port']})"
        t.add_row(e["proto"], client, e["frontend"] or "-", e["backend"] or "-",
                  e["entry"], state, peer, ", ".join(flags) or "-",
                  f"{e['packets']['from_client']}/{e['bytes']['from_client']}",
                  f"{e['packets']['to_client']}/{e['bytes']['to_client']}",
                  f"{duration(e['age_s'])} / {expiry}")
    out.print(t)


def _render_counters(node: dict[str, Any], out: Console) -> None:
    _heading(out, node, "counters (packets per program and reason)")
    t = Table(show_footer=True)
    hooks = list(HOOKS.values())
    t.add_column("reason", footer="total")
    for h in hooks:
        t.add_column(h, justify="right", footer=str(node["totals"][h]))
    t.add_column("total", justify="right", footer=str(node["totals"]["all"]))
    t.add_column("meaning", footer=f"drops: {node['drops']['all']}")
    by_reason: dict[str, dict[str, Any]] = {}
    for r in node["counters"]:
        row = by_reason.setdefault(r["reason"], {"id": r["id"], "desc": r["description"],
                                                 "drop": r["drop"]})
        row[r["hook"]] = r["packets"]
    for reason, row in sorted(by_reason.items(), key=lambda x: x[1]["id"]):
        total = sum(row.get(h, 0) for h in hooks)
        if not total:
            continue
        name = f"[red]{reason}[/]" if row["drop"] else reason
        t.add_row(name, *(str(row.get(h, 0)) for h in hooks), str(total), row["desc"])
    out.print(t)


def _render_routes(node: dict[str, Any], out: Console) -> None:
    _heading(out, node, "routes (pod blocks)", len(node["pod_blocks"]))
    t = Table()
    for col in ("pod block", "node", "node address", "local"):
        t.add_column(col)
    for r in node["pod_blocks"]:
        t.add_row(r["cidr"], r["node"] or "-", r["node_ip"], "yes" if r["local"] else "no")
    out.print(t)
    _heading(out, node, "node addresses (VXLAN is accepted from these)", len(node["node_addresses"]))
    t = Table()
    for col in ("address", "node", "self"):
        t.add_column(col)
    for a in node["node_addresses"]:
        t.add_row(a["addr"], a["node"] or "-", "yes" if a["self"] else "")
    out.print(t)
    optout = ", ".join(node["dsr_optout"]) or "none"
    out.print(f"  dsr_optout (clients kept on Tunnel): {optout}", highlight=False)


def _render_config(node: dict[str, Any], out: Console) -> None:
    c = node["config"]
    _heading(out, node, "config (cfg map)")
    t = Table(show_header=False)
    t.add_column("field")
    t.add_column("value")
    t.add_row("mode", c["mode"] + ("" if c["enabled"] else " [red](datapath disabled)[/]"))
    t.add_row("flags", ",".join(c["flags"]) or "-")
    t.add_row("trace", "on" if c["trace"] else "off")
    t.add_row("node_ip", c["node_ip"] or "-")
    t.add_row("host_ifindex", str(c["host_ifindex"]))
    t.add_row("vni / tunnel_port", f"{c['vni']} / {c['tunnel_port']}")
    t.add_row("fabric_mtu", str(c["fabric_mtu"]))
    t.add_row("ct timeouts", ", ".join(f"{k} {duration(v)}" for k, v in c["timeouts_s"].items()))
    out.print(t)
    if c["maps"]:
        _heading(out, node, "maps")
        t = Table()
        for col in ("map", "type", "entries", "max", "key", "value"):
            t.add_column(col)
        for m in c["maps"]:
            t.add_row(m["map"], m["type"], "-" if m["entries"] is None else str(m["entries"]),
                      str(m["max_entries"]), str(m["key_size"]), str(m["value_size"]))
        out.print(t)


_RENDERERS = {"nat": _render_nat, "backends": _render_backends, "conntrack": _render_conntrack,
              "counters": _render_counters, "routes": _render_routes, "config": _render_config}
