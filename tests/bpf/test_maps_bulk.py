"""Bulk map reads (BPF_MAP_LOOKUP_BATCH) against the one-key-at-a-time iteration they replace
(libbpf.map_items, also the fallback), on the pinned maps of the simulated nodes: hash, LRU
hash, array, LPM trie, and a ring buffer (no batch ops); and bulk deletes (BPF_MAP_DELETE_BATCH,
what the conntrack GC uses) against one key at a time."""
from __future__ import annotations

import ipaddress
import os

import pytest

from ebpf_nodeport import abi, libbpf, maps


def _iterated(view: maps.MapView) -> dict[bytes, bytes]:
    return libbpf.map_items(view.fd, view.info.key_size, view.info.value_size)


def _batched(view: maps.MapView, batch: int) -> dict[bytes, bytes]:
    return libbpf.map_lookup_batch(view.fd, view.info.key_size, view.info.value_size, batch)


def _fill_ct(view: maps.MapView, n: int) -> None:
    """n NAT_REV entries with distinct keys and values (values carry the index)."""
    base = int(ipaddress.IPv4Address("203.0.113.0"))
    for i in range(n):
        k, _ = abi.ct_key(base + (i >> 8), 1024 + (i & 0xFF), "198.19.16.65", 80, "tcp")
        view.put(k, abi.CtValue(created_ns=i, last_seen_ns=i, type=abi.CT_NAT_REV, packets_ab=i))


@pytest.mark.parametrize("batch", [1, 7, 4096])
def test_batch_read_of_conntrack_matches_iteration(cluster, batch):
    """node2's conntrack (a preallocated hash) with 1,000 entries, read in batches of 1, 7 and 4,096
    (so one read spans many batches, or one), gives exactly what iteration gives."""
    ct = cluster["node2"].maps.ct
    _fill_ct(ct, 1000)
    want = _iterated(ct)
    assert len(want) == 1000
    assert _batched(ct, batch) == want
    assert ct.raw_items() == want
    assert len(ct) == 1000
    assert {(k.addr_a, k.port_a): v.packets_ab for k, v in ct.items()} == \
        {(abi.CtKey.from_bytes(k).addr_a, abi.CtKey.from_bytes(k).port_a):
         abi.CtValue.from_bytes(v).packets_ab for k, v in want.items()}


@pytest.mark.parametrize("batch", [1, 7, 4096])
def test_batch_delete_skips_keys_already_gone(cluster, batch):
    """600 of 1,000 conntrack entries deleted in batches of 1, 7 and 4,096, 50 of the 600 deleted
    one by one beforehand (as the datapath deletes an expired entry it meets): the other 550 are
    deleted and counted, the 400 not asked for stay untouched."""
    ct = cluster["node2"].maps.ct
    _fill_ct(ct, 1000)
    before = ct.raw_items()
    keys = sorted(before)
    doomed, kept = keys[:600], keys[600:]
    for k in doomed[::12]:
        assert ct.delete(k)
    assert libbpf.map_delete_many(ct.fd, doomed, ct.info.key_size, batch) == 550
    assert ct.raw_items() == {k: before[k] for k in kept}


def test_batch_read_grows_past_a_full_bucket(cluster):
    """200 entries in the 256-bucket nodes hash share buckets (that all land alone has a
    chance below 1e-49); a batch of 1 entry must grow to take a bucket of two or more (the
    kernel answers ENOSPC) and still return every entry, once."""
    nodes = cluster["control"].maps.nodes
    base = int(ipaddress.IPv4Address("10.99.0.0"))
    for i in range(200):
        nodes.put(abi.Addr(base + i), abi.NodeInfo(i))
    want = _iterated(nodes)
    assert len(want) == 200 + 3       # the view's three nodes stay
    assert _batched(nodes, 1) == want
    assert nodes.raw_items() == want


def test_batch_read_of_empty_and_of_array_maps(cluster):
    """An empty hash reads as {} (the kernel answers ENOENT at once); the one-entry cfg
    array reads as its single entry."""
    node = cluster["node2"]
    node.clear_ct()
    assert _batched(node.maps.ct, 16) == {} == node.maps.ct.raw_items()
    assert len(node.maps.ct) == 0 and list(node.maps.ct.items()) == []
    cfg = node.maps.cfg
    assert cfg.raw_items() == _iterated(cfg) == {bytes(abi.U32(0)): bytes(node.maps.read_cfg())}


def test_lpm_trie_reads_like_iteration(cluster):
    """routes (LPM trie): batch ops where the kernel has them, else iteration; the same
    three blocks either way. dsr_optout (LPM, empty in the base view) reads as {}."""
    routes = cluster["control"].maps.routes
    assert routes.raw_items() == _iterated(routes)
    assert {abi.RouteKey.from_bytes(k).to_cidr() for k in routes.raw_items()} == {
        "198.19.16.0/26", "198.19.16.64/26", "198.19.16.128/26"}
    assert cluster["control"].maps.dsr_optout.raw_items() == {}


def test_map_without_batch_ops_says_so(cluster):
    """The kernel's answer for a map type without batch ops (the events ring buffer) is one
    of BATCH_UNSUPPORTED, the errnos on which MapView.raw_items falls back to iteration."""
    fd = libbpf.obj_get(os.path.join(cluster["control"].dp.pin_dir, "events"))
    try:
        with pytest.raises(libbpf.BpfError) as exc:
            libbpf.map_lookup_batch(fd, 4, 4)
        assert exc.value.errno in libbpf.BATCH_UNSUPPORTED
    finally:
        os.close(fd)
