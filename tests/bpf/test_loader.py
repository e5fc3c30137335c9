"""One compile, many nodes (loader.load_nodes): a relocated copy runs on its own node's maps.

The first node of a load_nodes call is compiled by BCC; the others get its instructions
with every map fd swapped for their own maps'. If a swap were missed, the copy would
read and write the first node's maps: these tests give the two nodes different services
and check that each node's program follows its own maps, counts in its own counters,
tracks in its own conntrack, and that the kernel lists only its own maps for it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import struct
import subprocess
import threading
from typing import Any, Iterator

import pytest

from ebpf_nodeport import bpfcache, libbpf, loader
from ebpf_nodeport.abi import MAP_SPECS, PROGRAMS, NodeCfg
from ebpf_nodeport.testrun import SimCluster
from netns_lab import naming

from .expect import Encap, Nat, check_result
from .topo import (CLIENT, CONTROL, CUSTOMER, MAC_NODE, NODE1, NP_CUSTOMER, NP_WEB, WEB, base_view,
                   cport, follow, pin_root, tcp)

COMPILED, RELOCATED = "control", "node1"   # load_nodes compiles for the first node it is given


def _without(name: str, port: int) -> Any:
    """The base view without one service port: what makes the two nodes' maps differ."""
    view = base_view()
    return dataclasses.replace(view, services=[s for s in view.services
                                               if (s.name, s.port) != (name, port)])


# control serves the customer NodePort but not the web one; node1 the other way round.
CONTROL_VIEW = _without("test/web", 8080)
NODE1_VIEW = _without("yaobank/customer", 80)


@pytest.fixture(scope="module", autouse=True)
def _no_compile_cache() -> Iterator[None]:
    """These tests are about BCC's compile and its relocation: the compile cache stays off
    (tests/bpf/test_bpfcache.py tests loads from it)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(bpfcache.ENV, "off")
        yield


@pytest.fixture(scope="module")
def pair(netns) -> Iterator[SimCluster]:
    """control compiled, node1 relocated (SimCluster.load uses load_nodes), each with its own services."""
    cl = SimCluster(base_view(), pin_root=pin_root(), nodes=[COMPILED, RELOCATED])
    try:
        with netns.inside():
            cl.load()
            cl[COMPILED].dp.sync(CONTROL_VIEW)
            cl[RELOCATED].dp.sync(NODE1_VIEW)
        yield cl
    finally:
        cl.close()


def _bpftool(*args: str) -> Any:
    out = subprocess.run(["bpftool", "-j", *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def _map_ids(cl: SimCluster, node: str) -> dict[str, int]:
    return {name: _bpftool("map", "show", "pinned", os.path.join(cl[node].dp.pin_dir, name))["id"]
            for name in MAP_SPECS}


def _prog(cl: SimCluster, node: str, entry: str) -> dict[str, Any]:
    return _bpftool("prog", "show", "pinned", cl[node].dp.prog_path(entry))


def test_relocated_node_was_not_compiled(pair):
    """The premise: one BCC compile for the pair, node1's programs are control's, relocated."""
    assert pair[COMPILED].dp.last_load.clone_of is None
    assert pair[RELOCATED].dp.last_load.clone_of == COMPILED
    assert not pair[COMPILED].dp.last_load.cached


def test_each_node_serves_its_own_services(pair, netns):
    """The NodePort only control's maps have works on control and passes on node1, and the
    other way round; each run counts once in its own node's counters."""
    with netns.inside():
        p = cport()
        res = pair.run(COMPILED, "from_hep", tcp(CLIENT, p, CONTROL, NP_CUSTOMER, "S"))
        check_result(res, "REDIRECT", "NAT_NEW",
                     Encap(CONTROL, NODE1, Nat(dst=(CUSTOMER, 80), ttl_dec=1), fe_port=NP_CUSTOMER))
        res = pair.run(RELOCATED, "from_hep",
                       tcp(CLIENT, cport(), NODE1, NP_CUSTOMER, "S", mac_dst=MAC_NODE["node1"]))
        assert (res.verdict, res.reason) == ("OK", "PASS")

        res = pair.run(RELOCATED, "from_hep",
                       tcp(CLIENT, p, NODE1, NP_WEB, "S", mac_dst=MAC_NODE["node1"]))
        check_result(res, "REDIRECT", "NAT_NEW",
                     Encap(NODE1, CONTROL, Nat(dst=(WEB, 8080), ttl_dec=1), fe_port=NP_WEB))
        res = pair.run(COMPILED, "from_hep", tcp(CLIENT, cport(), CONTROL, NP_WEB, "S"))
        assert (res.verdict, res.reason) == ("OK", "PASS")


def test_each_node_tracks_in_its_own_conntrack(pair, netns):
    """A connection through node1 is in node1's conntrack only (and control's in control's)."""
    with netns.inside():
        pair.clear_ct()
        res = pair.run(RELOCATED, "from_hep",
                       tcp(CLIENT, cport(), NODE1, NP_WEB, "S", mac_dst=MAC_NODE["node1"]))
        assert res.reason == "NAT_NEW"
        assert len(pair[RELOCATED].ct_snapshot()) == 2          # NAT_FWD + NAT_REV
        assert pair[COMPILED].ct_snapshot() == {}
        pair.run(COMPILED, "from_hep", tcp(CLIENT, cport(), CONTROL, NP_CUSTOMER, "S"))
        assert len(pair[COMPILED].ct_snapshot()) == 2
        assert len(pair[RELOCATED].ct_snapshot()) == 2


def test_kernel_lists_only_own_maps(pair):
    """Every program of each node uses maps of that node and none of the other's."""
    own = {n: set(_map_ids(pair, n).values()) for n in (COMPILED, RELOCATED)}
    assert not own[COMPILED] & own[RELOCATED]
    for node, other in ((COMPILED, RELOCATED), (RELOCATED, COMPILED)):
        for entry in PROGRAMS:
            used = set(_prog(pair, node, entry)["map_ids"])
            assert used and used <= own[node], f"{node}/{entry} uses maps {used - own[node]} not its own"
            assert not used & own[other]


def test_relocated_maps_carry_btf(pair, netns):
    """node1's maps were created by the loader, not BCC: same BTF as control's, so bpftool
    prints struct fields by name."""
    for name in MAP_SPECS:
        shown = {n: _bpftool("map", "show", "pinned", os.path.join(pair[n].dp.pin_dir, name))
                 for n in (COMPILED, RELOCATED)}
        assert shown[RELOCATED].get("btf_id") == shown[COMPILED].get("btf_id"), name
        assert {k: shown[RELOCATED][k] for k in ("type", "name", "bytes_key", "bytes_value",
                                                 "max_entries", "flags")} == \
               {k: shown[COMPILED][k] for k in ("type", "name", "bytes_key", "bytes_value",
                                                "max_entries", "flags")}, name
    cfg = _bpftool("map", "dump", "pinned", os.path.join(pair[RELOCATED].dp.pin_dir, "cfg"))
    value = cfg[0].get("formatted", cfg[0])["value"]
    assert set(value) == {name for name, _ in NodeCfg._fields_}   # the C struct's field names
    with netns.inside():
        pair.run(RELOCATED, "from_hep", tcp(CLIENT, cport(), NODE1, NP_WEB, "S", mac_dst=MAC_NODE["node1"]))
    ct = _bpftool("map", "dump", "pinned", os.path.join(pair[RELOCATED].dp.pin_dir, "ct"))
    assert ct, "node1's program tracked nothing in node1's conntrack"
    assert set(ct[0].get("formatted", ct[0])["key"]) >= {"addr_a", "addr_b", "port_a", "port_b", "proto"}


def test_reload_keeps_maps_and_flows(netns):
    """load_nodes on loaded nodes replaces the programs and keeps every map: services and an
    open connection survive, on both nodes, also with the roles swapped (node1 compiled,
    control relocated onto its existing maps)."""
    cl = SimCluster(base_view(), pin_root=pin_root(), nodes=[COMPILED, RELOCATED])
    try:
        with netns.inside():
            cl.load()
            p = cport()
            syn = {COMPILED: tcp(CLIENT, p, CONTROL, NP_CUSTOMER, "S"),
                   RELOCATED: tcp(CLIENT, p, NODE1, NP_WEB, "S", mac_dst=MAC_NODE["node1"])}
            first = {n: cl.run(n, "from_hep", syn[n]) for n in syn}
            assert all(r.reason == "NAT_NEW" for r in first.values())
            maps_before = {n: _map_ids(cl, n) for n in syn}
            progs_before = {n: _prog(cl, n, "from_hep")["id"] for n in syn}

            results = loader.load_nodes({n: cl[n].dp.pin_dir for n in (RELOCATED, COMPILED)})
            assert results[COMPILED].clone_of == RELOCATED and results[RELOCATED].clone_of is None
            for n, res in results.items():
                assert set(res.reused_maps) == set(MAP_SPECS), n
                assert _map_ids(cl, n) == maps_before[n], f"{n}: a map was replaced"
                assert _prog(cl, n, "from_hep")["id"] != progs_before[n], f"{n}: program not replaced"
                node = cl[n]
                for fd in node.prog_fds.values():
                    os.close(fd)
                node.prog_fds = {e: libbpf.obj_get(node.dp.prog_path(e)) for e in PROGRAMS}
            # The reload's own duration is not idle time of the flows: on a slow machine (a TCG
            # VM) the recompile outlasts the 20 s SYN timeout. Entries kept are marked fresh.
            for n in syn:
                assert cl[n].age(0) > 0, f"{n}: conntrack empty after the reload"
            # The client's next segment: established (ENCAP, not NAT_NEW) from the kept conntrack.
            check_result(cl.run(COMPILED, "from_hep", follow(first[COMPILED].input)), "REDIRECT", "ENCAP",
                         Encap(CONTROL, NODE1, Nat(dst=(CUSTOMER, 80), ttl_dec=1), fe_port=NP_CUSTOMER))
            check_result(cl.run(RELOCATED, "from_hep", follow(first[RELOCATED].input)), "REDIRECT", "ENCAP",
                         Encap(NODE1, CONTROL, Nat(dst=(WEB, 8080), ttl_dec=1), fe_port=NP_WEB))
    finally:
        cl.close()


def test_refused_program_reports_the_verifier_log():
    """A relocated load the kernel refuses says why (the end of the verifier's log)."""
    exit_only = struct.pack("<BBhi", 0x95, 0, 0, 0)      # returns r0 without setting it
    with pytest.raises(libbpf.BpfError, match="R0 !read_ok"):
        libbpf.prog_load(libbpf.BPF_PROG_TYPE_SCHED_CLS, "bad", exit_only)


def test_run_statistics_count_each_nodes_own_runs(pair, netns):
    """libbpf.prog_info reads what `bpftool prog show` shows (id, name), and with
    libbpf.enable_stats on, run_cnt counts exactly the runs of that node's program (what
    bench/livecost reads around live traffic); with the fd closed counting stops."""
    infos = {}
    for n in (COMPILED, RELOCATED):
        fd = libbpf.obj_get(pair[n].dp.prog_path("from_hep"))
        try:
            infos[n] = libbpf.prog_info(fd)
        finally:
            os.close(fd)
        shown = _prog(pair, n, "from_hep")
        assert (infos[n].id, infos[n].name) == (shown["id"], shown["name"]), n

    def counts() -> dict[str, int]:
        out = {}
        for n in (COMPILED, RELOCATED):
            fd = libbpf.obj_get(pair[n].dp.prog_path("from_hep"))
            try:
                out[n] = libbpf.prog_info(fd).run_cnt
            finally:
                os.close(fd)
        return out

    frame = tcp(CLIENT, cport(), CONTROL, 9, "S")     # no service: PASS, nothing remembered
    stats = libbpf.enable_stats()
    try:
        before = counts()
        with netns.inside():
            for _ in range(5):
                pair.run(COMPILED, "from_hep", frame)
            pair.run(RELOCATED, "from_hep", frame)
        after = counts()
    finally:
        os.close(stats)
    assert {n: after[n] - before[n] for n in after} == {COMPILED: 5, RELOCATED: 1}
    with netns.inside():
        pair.run(COMPILED, "from_hep", frame)
    assert counts() == after


def test_relocated_loads_run_side_by_side(monkeypatch, tmp_path):
    """Most of a many-node `mode tunnel` is the verifier, once per node, so the relocated loads
    run on load_threads() threads at once. Here each of two relocated loads waits at a barrier
    for the other, which loads made one after another never pass: after a BCC compile and from
    the compile cache alike. A load that fails among them is still raised, naming its node."""
    monkeypatch.setenv(bpfcache.ENV, str(tmp_path))
    monkeypatch.setattr(loader, "load_threads", lambda: 2)
    real = loader._load_relocated
    both_loading = threading.Barrier(2, timeout=20)
    refuse: set[str] = set()

    def meet_then_load(directory: str, build: Any, defines: Any, template: Any, source: str | None,
                       *args: Any, **kwargs: Any) -> loader.LoadResult:
        if source is not None:      # a relocated copy, not the first node's own load
            both_loading.wait()
            if directory in refuse:
                raise loader.LoaderError(f"kernel refused a program for {directory}: refused here")
        return real(directory, build, defines, template, source, *args, **kwargs)

    monkeypatch.setattr(loader, "_load_relocated", meet_then_load)
    root = pin_root()
    dirs = {n: os.path.join(root, n) for n in ("control", "node1", "node2")}
    try:
        for cached in (False, True):    # the first load compiles and fills the cache, the second hits it
            results = loader.load_nodes(dirs)
            assert {n: r.cached for n, r in results.items()} == dict.fromkeys(dirs, cached)
            assert {n: r.clone_of for n, r in results.items()} == {"control": None, "node1": "control",
                                                                   "node2": "control"}
            for n, d in dirs.items():
                assert all(os.path.exists(loader.prog_pin(d, p)) for p in PROGRAMS), n
                loader.remove_pins(d)
        refuse.add(dirs["node2"])
        with pytest.raises(loader.LoaderError, match=re.escape(dirs["node2"])):
            loader.load_nodes(dirs)
    finally:   # whichever directories a failure left, then the emptied root (and BPF_ROOT if empty)
        for d in dirs.values():
            loader.remove_pins(d)
        for d in (root, naming.BPF_ROOT):
            with contextlib.suppress(OSError):
                os.rmdir(d)
