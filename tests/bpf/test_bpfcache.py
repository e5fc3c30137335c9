"""The compile cache (ebpf_nodeport/bpfcache.py): a hit is a compile without BCC.

A cache hit must be indistinguishable from a compile: programs that forward a NodePort
flow, maps with the same BTF (pins.py and test_abi read layouts from it), pins in the
same places. A bad entry must never fail a load: it is dropped with one warning and the
datapath compiled. Each test gets a cache directory of its own ($NETNS_LAB_BPF_CACHE).
"""
from __future__ import annotations

import json
import logging
import os
import struct
from typing import Iterator

import pytest

from ebpf_nodeport import bpfcache, btf, libbpf, loader
from ebpf_nodeport.abi import MAP_SPECS, PROGRAMS
from ebpf_nodeport.testrun import SimCluster

from .expect import Encap, Nat, check_result
from .topo import CLIENT, CONTROL, CUSTOMER, NODE1, NP_CUSTOMER, base_view, cport, pin_root, tcp


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Iterator[str]:
    """A private cache for this module, filled by one compile (a SimCluster of control)."""
    d = str(tmp_path_factory.mktemp("bpfcache"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(bpfcache.ENV, d)
        yield d


@pytest.fixture(scope="module")
def compiled(cache_dir, netns) -> Iterator[SimCluster]:
    """control loaded by a BCC compile (the cache was empty): it writes the entry."""
    cl = SimCluster(base_view(), pin_root=pin_root(), nodes=["control"])
    try:
        with netns.inside():
            cl.load()
        yield cl
    finally:
        cl.close()


def _no_bcc(monkeypatch) -> None:
    """Make any BCC compile in this test fail loudly: a hit must not compile."""
    import bcc

    def refuse(*a, **kw):
        raise AssertionError("BCC compiled although the cache had the entry")
    monkeypatch.setattr(bcc, "BPF", refuse)


def _map_btf(pin_dir: str, name: str) -> tuple:
    """What a map's BTF and shape are, as pins.py and bpftool see them (the raw BTF included)."""
    fd = libbpf.obj_get(os.path.join(pin_dir, name))
    try:
        i = libbpf.map_info(fd)
        blob = btf.btf_blob(i.btf_id) if i.btf_id else None
        return (i.type, i.name, i.key_size, i.value_size, i.max_entries, i.map_flags,
                i.btf_key_type_id, i.btf_value_type_id, blob)
    finally:
        os.close(fd)


def test_compile_wrote_one_entry(compiled):
    """The premise: the module's compile came from BCC and left one entry under the key."""
    assert compiled["control"].dp.last_load.cached is False
    assert [p.name for p in bpfcache.entries()] == [f"{loader.cache_key()}.json"]


def test_hit_loads_without_bcc_and_forwards_a_nodeport_flow(compiled, netns, monkeypatch):
    """Two nodes from the cache (no BCC at all): control's programs forward the customer
    NodePort to node1's pod, node1's pass a NodePort it lacks; maps' BTF is the compile's."""
    _no_bcc(monkeypatch)
    cl = SimCluster(base_view(), pin_root=pin_root(), nodes=["control", "node1"])
    try:
        with netns.inside():
            cl.load()
            loads = {n: cl[n].dp.last_load for n in ("control", "node1")}
            assert all(r.cached for r in loads.values())
            assert loads["control"].clone_of is None and loads["node1"].clone_of == "control"
            assert sorted(os.listdir(cl["control"].dp.pin_dir)) == \
                sorted(os.listdir(compiled["control"].dp.pin_dir))
            res = cl.run("control", "from_hep", tcp(CLIENT, cport(), CONTROL, NP_CUSTOMER, "S"))
            check_result(res, "REDIRECT", "NAT_NEW",
                         Encap(CONTROL, NODE1, Nat(dst=(CUSTOMER, 80), ttl_dec=1), fe_port=NP_CUSTOMER))
        for name in MAP_SPECS:
            want = _map_btf(compiled["control"].dp.pin_dir, name)
            for node in ("control", "node1"):
                assert _map_btf(cl[node].dp.pin_dir, name) == want, f"{node}/{name}"
    finally:
        cl.close()


def _corrupt_json(entry: dict) -> str:
    return json.dumps(entry)[:-40]                      # cut short: not JSON any more


def _refused_program(entry: dict) -> str:
    exit_only = struct.pack("<BBhi", 0x95, 0, 0, 0)    # reads r0 unset: the verifier refuses it
    entry["programs"][PROGRAMS[0]] = __import__("base64").b64encode(exit_only).decode()
    return json.dumps(entry)


def _layout_changed(entry: dict) -> str:
    entry["maps"][0]["info"]["value_size"] += 8        # not what abi.py declares
    return json.dumps(entry)


@pytest.mark.parametrize("damage", [_corrupt_json, _refused_program, _layout_changed])
def test_bad_entry_falls_back_to_a_compile(compiled, netns, caplog, damage):
    """A damaged entry (unreadable, refused by the verifier, maps unlike abi.py's) costs one
    warning and a compile, never the load; the compile writes a good entry back."""
    [path] = bpfcache.entries()
    good = path.read_text()
    path.write_text(damage(json.loads(good)))
    cl = SimCluster(base_view(), pin_root=pin_root(), nodes=["control"])
    try:
        with caplog.at_level(logging.WARNING), netns.inside():
            cl.load()
            assert cl["control"].dp.last_load.cached is False
            res = cl.run("control", "from_hep", tcp(CLIENT, cport(), CONTROL, NP_CUSTOMER, "S"))
            assert res.reason == "NAT_NEW"
        warnings = [r for r in caplog.records if "compile cache" in r.getMessage()]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        rewritten, before = bpfcache.Entry.from_json(path.read_text()), bpfcache.Entry.from_json(good)
        # the BTF's section names carry the pin path compiled for; programs and maps do not
        assert (rewritten.programs, rewritten.maps) == (before.programs, before.maps)
    finally:
        cl.close()
        path.write_text(good)


def test_key_follows_defines_not_pin_dir(cache_dir):
    """Another value of a define (here a MAX_* capacity) is another entry; the pin directory
    is no input (the instructions do not depend on it)."""
    base = loader.cache_key()
    assert loader.cache_key({"MAX_CT": 4096}) != base
    assert loader.cache_key({"MAX_CT": 4096}) != loader.cache_key({"MAX_CT": 8192})
    assert loader.cache_key({}) == base


def test_cache_off_means_no_entry(monkeypatch, tmp_path):
    """NETNS_LAB_BPF_CACHE=off: no key, nothing read or written."""
    monkeypatch.setenv(bpfcache.ENV, "off")
    assert bpfcache.directory() is None and loader.cache_key() is None
    assert bpfcache.entries() == [] and bpfcache.read("x") is None
