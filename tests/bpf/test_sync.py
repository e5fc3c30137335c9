"""NodeDatapath.sync() on real pinned maps, with hundreds of services: the maps hold exactly
what the view says (read back through the typed views, compared with a model of the
view), one change writes one entry, removals delete exactly what they must and free ids
for reuse, removed backends lose their connections, bad views write nothing, the write
order keeps the datapath consistent, and a fresh process (state only in the pins) syncs
the same way."""
from __future__ import annotations

import dataclasses
import ipaddress
import os
import pickle
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from scapy.layers.l2 import Ether

from ebpf_nodeport import abi, maps
from ebpf_nodeport.datapath import NodeDatapath
from ebpf_nodeport.sync import Backend, ClusterView, Service

from .expect import Nat, check_result
from .topo import (CLIENT, CONTROL, CUSTOMER, MAC_CALI, MAC_POD, NP_CUSTOMER, NP_WEB, WEB, base_view,
                   cport, follow, tcp)

REPO = Path(__file__).resolve().parents[2]
N_EXTRA = 300
# Ten pods in each node's block: node1, node2, control (control's are local on control).
PODS = [str(ipaddress.IPv4Address(base) + k) for base in ("198.19.16.70", "198.19.16.140", "198.19.16.10")
        for k in range(10)]
SPARE_REMOTE = "198.19.16.190"     # in node2's block, no backend uses it
CONTROL_BLOCK = ipaddress.IPv4Network("198.19.16.0/26")


def _extra(n: int) -> list[Service]:
    """n services with 0-3 backends spread over the three blocks, a NodePort on every 5th."""
    out = []
    for i in range(n):
        backends = [Backend(PODS[(i + 7 * j) % len(PODS)], 8000 + i) for j in range(i % 4)]
        out.append(Service(f"sync/svc{i}", "tcp", str(ipaddress.IPv4Address("198.19.40.0") + i), 80,
                           31000 + i if i % 5 == 0 else None, backends))
    return out


def _view(services: list[Service]) -> ClusterView:
    return dataclasses.replace(base_view(), services=base_view().services + services)


def _expected(view: ClusterView, node_ip: str) -> dict[str, tuple[dict, list]]:
    """meta name -> (frontends {(addr, port, proto): (flag, count, local_count)}, backends in
    ordinal order: the node's own pods first), as the view says the maps must hold them."""
    mine = [ipaddress.IPv4Network(c) for c, n in view.pod_blocks.items() if n == node_ip]
    out = {}
    for s in view.services:
        local = [b for b in s.backends if any(ipaddress.IPv4Address(b.addr) in net for net in mine)]
        ordered = local + [b for b in s.backends if b not in local]
        fes = {}
        if s.cluster_ip:
            fes[(s.cluster_ip, s.port, s.proto)] = ("CLUSTERIP", len(ordered), len(local))
        if s.node_port:
            fes[("0.0.0.0", s.node_port, s.proto)] = ("NODEPORT", len(ordered), len(local))
        out[s.meta_name] = (fes, [(b.addr, b.port) for b in ordered])
    return out


def _programmed(node) -> tuple[dict[str, tuple[dict, list]], dict[str, int]]:
    """The service maps read back through the typed views, shaped like _expected; and ids."""
    m = node.maps
    names = {k.value: v.name.decode() for k, v in m.svc_meta.items()}
    fes: dict[str, dict] = defaultdict(dict)
    for k, v in m.nat_fe.items():
        assert v.svc_id in names, f"frontend {k} points at unnamed service id {v.svc_id}"
        fes[names[v.svc_id]][(abi.int2ip(k.addr), k.port, abi.PROTO_NAMES[k.proto])] = (
            abi.FE_FLAG_NAMES[v.flags], v.count, v.local_count)
    bes: dict[int, dict[int, tuple[str, int]]] = defaultdict(dict)
    for k, v in m.nat_be.items():
        assert k.svc_id in names, f"backend {k} belongs to unnamed service id {k.svc_id}"
        bes[k.svc_id][k.ordinal] = (abi.int2ip(v.addr), v.port)
    out = {}
    for sid, name in names.items():
        assert sorted(bes[sid]) == list(range(len(bes[sid]))), f"{name}: ordinals {sorted(bes[sid])}"
        out[name] = (fes.get(name, {}), [bes[sid][o] for o in range(len(bes[sid]))])
    return out, {name: sid for sid, name in names.items()}


def _fresh(cluster, node: str = "control") -> NodeDatapath:
    """A new NodeDatapath for a pinned node, as a new CLI process builds it (no ifindex/MTU:
    those come from the pinned cfg)."""
    return NodeDatapath(cluster[node].dp.pin_dir, None, cluster[node].ip)


def _counts(**nonzero: int) -> dict[str, int]:
    out = dict.fromkeys(("nodes", "routes", "dsr_optout", "svc_meta", "nat_be", "nat_fe", "lb_svc", "lb_src", "maglev"), 0)
    out.update(nonzero)
    return out


def test_sync_programs_many_services_exactly(cluster):
    """300 services on top of the base ones: every node holds exactly the view (backends of
    its own pods first), the counts say what was written, new services take the lowest free
    ids, and a fresh object finds nothing left to do."""
    node = cluster["control"]
    base_ids = _programmed(node)[1]
    extra = _extra(N_EXTRA)
    view = _view(extra)
    stats = node.dp.sync(view)
    n_be = sum(len(s.backends) for s in extra)
    n_fe = sum(1 for s in extra if s.cluster_ip) + sum(1 for s in extra if s.node_port)
    assert stats.written == _counts(svc_meta=N_EXTRA, nat_be=n_be, nat_fe=n_fe)
    assert stats.deleted == _counts() and stats.ct_flushed == 0
    got, ids = _programmed(node)
    assert got == _expected(view, CONTROL)
    free = [i for i in range(1, 2 * N_EXTRA) if i not in base_ids.values()]
    assert [ids[s.meta_name] for s in extra] == free[:N_EXTRA]
    assert {k: ids[k] for k in base_ids} == base_ids
    for name in ("node1", "node2"):
        cluster[name].dp.sync(view)
        assert _programmed(cluster[name])[0] == _expected(view, cluster[name].ip), name
    again = _fresh(cluster).sync(view)
    assert not again.changed, f"no-op resync wrote {again.written}, deleted {again.deleted}"


def test_sync_changes_one_backend_among_many(cluster):
    """Moving the one backend of one service (remote to remote) among 300 writes that one
    nat_be entry and nothing else; ids stay; a new connection goes to the new backend."""
    extra = _extra(N_EXTRA)
    node = cluster["control"]
    node.dp.sync(_view(extra))
    ids_before = _programmed(node)[1]
    idx = next(i for i, s in enumerate(extra) if i > N_EXTRA // 2 and len(s.backends) == 1
               and ipaddress.IPv4Address(s.backends[0].addr) not in CONTROL_BLOCK)
    moved = list(extra)
    moved[idx] = dataclasses.replace(extra[idx], backends=[Backend(SPARE_REMOTE, 9000)])
    view = _view(moved)
    stats = _fresh(cluster).sync(view)
    assert stats.written == _counts(nat_be=1) and stats.deleted == _counts()
    got, ids = _programmed(node)
    assert got == _expected(view, CONTROL) and ids == ids_before
    svc = moved[idx]
    frame = Ether(bytes(tcp(WEB, cport(), svc.cluster_ip, svc.port, "S")))
    frame.src, frame.dst = MAC_POD, MAC_CALI
    r = node.run("from_wep", bytes(frame), track_ct=False)
    check_result(r, "OK", "NAT_NEW", Nat(dst=(SPARE_REMOTE, 9000)), where=f"ClusterIP of {svc.name}")


def test_sync_deletes_services_and_reuses_their_ids(cluster):
    """Removing 12 of 300 services (some with NodePorts) deletes exactly their svc_meta,
    nat_fe and nat_be entries and writes nothing; the others keep their ids; a service
    added later takes the lowest id freed."""
    extra = _extra(N_EXTRA)
    node = cluster["control"]
    node.dp.sync(_view(extra))
    ids_before = _programmed(node)[1]
    gone = extra[10:20] + [extra[150], extra[N_EXTRA - 1]]
    kept = [s for s in extra if s not in gone]
    view = _view(kept)
    stats = _fresh(cluster).sync(view)
    assert stats.written == _counts()
    assert stats.deleted == _counts(svc_meta=len(gone), nat_be=sum(len(s.backends) for s in gone),
                                    nat_fe=len(gone) + sum(1 for s in gone if s.node_port))
    got, ids = _programmed(node)
    assert got == _expected(view, CONTROL)
    assert ids == {k: v for k, v in ids_before.items() if k not in {s.meta_name for s in gone}}
    new = Service("sync/new", "tcp", "198.19.44.1", 80, None, [Backend(PODS[0], 80)])
    _fresh(cluster).sync(_view(kept + [new]))
    assert _programmed(node)[1][new.meta_name] == min(ids_before[s.meta_name] for s in gone)


def test_removed_backend_flushes_only_its_connections(cluster):
    """Connections to test/web (local backend) and yaobank/customer (on node1) through
    control; test/web's backend is replaced: its two conntrack entries go (the client's
    next packet gets the new backend), customer's stay. A backend that only moves to
    another service is not gone: nothing is flushed."""
    node = cluster["control"]
    conns = {}
    for svc, node_port in (("web", NP_WEB), ("customer", NP_CUSTOMER)):
        syn = bytes(tcp(CLIENT, cport(), CONTROL, node_port, "S"))
        r = node.run("from_hep", syn)
        assert r.reason == "NAT_NEW", r.describe()
        conns[svc] = (syn, {k for k, _ in r.ct_entries()})
        assert len(conns[svc][1]) == 2, f"{svc}: want a NAT_FWD and a NAT_REV entry, got {r.ct_entries()}"
    new_web = "198.19.16.2"
    services = [dataclasses.replace(s, backends=[Backend(new_web, 8080)]) if s.name == "test/web" else s
                for s in base_view().services]
    stats = _fresh(cluster).sync(dataclasses.replace(base_view(), services=services))
    assert stats.ct_flushed == 2
    ct_now = node.ct_snapshot()
    assert not conns["web"][1] & set(ct_now), "test/web's entries survived its backend"
    assert conns["customer"][1] <= set(ct_now), "customer's entries were flushed too"
    check_result(node.run("from_hep", follow(conns["web"][0], "A")), "OK", "NAT_NEW",
                 Nat(dst=(new_web, 8080)), where="web client after the flush")
    # CUSTOMER:80 leaves yaobank/customer (tcp) for test/web: still a backend, nothing flushed.
    services = [dataclasses.replace(s, backends=s.backends + [Backend(CUSTOMER, 80)]) if s.name == "test/web"
                else dataclasses.replace(s, backends=[Backend(new_web, 80)])
                if (s.name, s.proto) == ("yaobank/customer", "tcp") else s for s in services]
    stats = _fresh(cluster).sync(dataclasses.replace(base_view(), services=services))
    assert stats.written["nat_be"] == 2 and stats.deleted["nat_be"] == 0 and stats.ct_flushed == 0
    assert conns["customer"][1] <= set(node.ct_snapshot())


def test_sync_rejects_bad_views_without_writing(cluster):
    """A service listed twice, or two services claiming one frontend (ClusterIP or NodePort):
    ValueError, and the maps are as before (the new service listed first is not written)."""
    node = cluster["control"]
    before = {n: getattr(node.maps, n).raw_items() for n in ("svc_meta", "nat_be", "nat_fe")}
    first = Service("sync/first", "tcp", "198.19.44.1", 80, None, [Backend(PODS[0], 80)])
    base = base_view().services
    bad = [("listed twice", [first, dataclasses.replace(base[0], backends=[])]),
           ("claimed by two services", [first, dataclasses.replace(first, name="sync/other")]),
           ("claimed by two services", [first, Service("sync/np", "tcp", None, 80, base[0].node_port)])]
    for message, more in bad:
        with pytest.raises(ValueError, match=message):
            _fresh(cluster).sync(dataclasses.replace(base_view(), services=base + more))
        after = {n: getattr(node.maps, n).raw_items() for n in before}
        assert after == before, f"{message} ({more[-1].name}): maps changed"


def test_sync_writes_in_consistent_order(cluster, monkeypatch):
    """One sync that adds, grows, shrinks and removes services writes svc_meta, then new
    backends, then frontends, and deletes stale frontends, then backends, then names: at
    every step each frontend's backends and name exist."""
    extra = _extra(40)
    cluster["control"].dp.sync(_view(extra))
    log: list[tuple[str, str]] = []
    put, delete = maps.MapView.put, maps.MapView.delete

    def logged_put(self, key, value, flags=0):
        log.append((os.path.basename(self.path), "put"))
        return put(self, key, value, flags)

    def logged_delete(self, key):
        log.append((os.path.basename(self.path), "delete"))
        return delete(self, key)

    monkeypatch.setattr(maps.MapView, "put", logged_put)
    monkeypatch.setattr(maps.MapView, "delete", logged_delete)
    changed = [s for s in extra if s.name != "sync/svc5"]                   # removed (has a NodePort)
    changed = [dataclasses.replace(s, backends=s.backends[:1]) if s.name == "sync/svc3" else s
               for s in changed]                                            # shrinks 3 -> 1
    changed = [dataclasses.replace(s, backends=s.backends + [Backend(SPARE_REMOTE, 1)])
               if s.name == "sync/svc6" else s for s in changed]            # grows 2 -> 3
    changed.append(Service("sync/added", "tcp", "198.19.44.2", 80, 32000, [Backend(PODS[1], 80)]))
    _fresh(cluster).sync(_view(changed))
    phases = [("svc_meta", "put"), ("nat_be", "put"), ("nat_fe", "put"),
              ("nat_fe", "delete"), ("nat_be", "delete"), ("svc_meta", "delete")]
    seen = [phases.index(e) for e in log if e in phases]
    assert sorted(set(seen)) == list(range(len(phases))), f"not every phase happened: {log}"
    assert seen == sorted(seen), f"writes out of order: {log}"


def test_sync_from_a_fresh_process(cluster):
    """Another process (as every CLI call is) changes, removes and adds services on the
    pinned maps programmed here: the maps then hold exactly its view, ids are kept, and
    syncing that view here again is a no-op."""
    extra = _extra(N_EXTRA)
    node = cluster["control"]
    node.dp.sync(_view(extra))
    ids_before = _programmed(node)[1]
    changed = [s for s in extra if s.name != "sync/svc40"]
    assert changed[7].name == "sync/svc7" and len(changed[7].backends) == 3 and extra[40].node_port
    changed[7] = dataclasses.replace(changed[7], backends=[Backend(SPARE_REMOTE, 7)])
    changed.append(Service("sync/child", "tcp", "198.19.44.3", 80, None, [Backend(PODS[2], 80)]))
    view = _view(changed)
    code = ("import pickle, sys\n"
            "from ebpf_nodeport.datapath import NodeDatapath\n"
            "pin_dir, ip, view = pickle.load(sys.stdin.buffer)\n"
            "pickle.dump(NodeDatapath(pin_dir, None, ip).sync(view), sys.stdout.buffer)\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-c", code], input=pickle.dumps((node.dp.pin_dir, CONTROL, view)),
                          capture_output=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    stats = pickle.loads(proc.stdout)
    # svc7: 3 backends -> 1 (ordinal 0 rewritten, 1 and 2 deleted, its frontend's counts);
    # svc40: no backends, a ClusterIP and a NodePort; sync/child: one of everything.
    assert stats.written == _counts(svc_meta=1, nat_be=2, nat_fe=2)
    assert stats.deleted == _counts(svc_meta=1, nat_be=2, nat_fe=2)
    got, ids = _programmed(node)
    assert got == _expected(view, CONTROL)
    assert {k: v for k, v in ids.items() if k != "sync/child:80/tcp"} == \
        {k: v for k, v in ids_before.items() if k != "sync/svc40:80/tcp"}
    assert not node.dp.sync(view).changed


def _keeper(cluster, node: str = "control") -> NodeDatapath:
    """A long-running programmer's NodeDatapath (as felix keeps its own copy of the maps)."""
    return NodeDatapath(cluster[node].dp.pin_dir, None, cluster[node].ip, keep_state=True)


def test_keep_state_changes_one_service_without_reading_the_maps_back(cluster, monkeypatch):
    """A keep_state object that programmed 300 services changes one of them by writing that
    one nat_be entry, without reading the service maps back, and the maps hold the view."""
    extra = _extra(N_EXTRA)
    node, keeper = cluster["control"], _keeper(cluster)
    keeper.sync(_view(extra))
    reads: list[str] = []
    raw_items = maps.MapView.raw_items

    def counted(self):
        reads.append(os.path.basename(self.path))
        return raw_items(self)

    monkeypatch.setattr(maps.MapView, "raw_items", counted)
    idx = next(i for i, s in enumerate(extra) if len(s.backends) == 1)
    moved = list(extra)
    moved[idx] = dataclasses.replace(extra[idx], backends=[Backend(SPARE_REMOTE, 9001)])
    stats = keeper.sync(_view(moved))
    assert stats.written == _counts(nat_be=1) and stats.deleted == _counts()
    assert not {"svc_meta", "nat_be", "nat_fe"} & set(reads), f"read back: {reads}"
    monkeypatch.undo()
    assert _programmed(node)[0] == _expected(_view(moved), CONTROL)
    assert not _fresh(cluster).sync(_view(moved)).changed


def test_keep_state_does_not_trust_itself_after_another_sync(cluster):
    """Another process syncs another view in between (removes a service, moves a backend): the
    keep_state object's next sync of its own view sees the maps as they are, not as it left
    them, and puts its view back exactly."""
    extra = _extra(N_EXTRA)
    node, keeper = cluster["control"], _keeper(cluster)
    view = _view(extra)
    keeper.sync(view)
    other = [dataclasses.replace(s, backends=[Backend(SPARE_REMOTE, 7)]) if s.name == "sync/svc7" else s
             for s in extra if s.name != "sync/svc40"]
    _fresh(cluster).sync(_view(other))
    stats = keeper.sync(view)
    assert stats.written["svc_meta"] == 1 and stats.written["nat_be"] == 3, stats.written
    assert _programmed(node)[0] == _expected(view, CONTROL)
    assert not keeper.sync(view).changed
