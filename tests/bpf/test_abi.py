"""abi.py against the compiled C, and pinned maps of another layout upgraded at load (pins.py).

The first tests read the BTF of the maps the datapath was compiled with: every struct
layout abi.py mirrors (field names, offsets, sizes) must be the C's, so a field added,
moved or resized on one side only fails here. The BTF parser is cross-checked against
bpftool's reading of the same BTF. The last test pins maps declared with older layouts
(compiled from C with BCC, BTF and all, as an older datapath would have left them),
loads the datapath over them, and checks what became of each.
"""
from __future__ import annotations

import json
import logging
import os
import struct
import subprocess
from dataclasses import dataclass
from typing import Any

import pytest

from ebpf_nodeport import abi, btf, libbpf, loader
from ebpf_nodeport.maps import MapView
from ebpf_nodeport.testrun import unique_name
from netns_lab import naming


def _layouts(path: str) -> btf.MapLayouts:
    fd = libbpf.obj_get(path)
    try:
        return btf.map_layouts(fd)
    finally:
        os.close(fd)


@pytest.mark.parametrize("name", list(abi.MAP_SPECS))
def test_mirror_matches_compiled_btf(_cluster, name):
    """Each map's key and value, as compiled, have exactly the layout abi.py gives them."""
    spec = abi.MAP_SPECS[name]
    got = _layouts(os.path.join(_cluster["control"].dp.pin_dir, name))
    assert (got.key, got.value) == (spec.key_layout, spec.value_layout)


@pytest.fixture(scope="module")
def ctlb_pin_dir():
    """A node's pin directory with the TC datapath and the connect-time LB programs over it."""
    from ebpf_nodeport import ctlb

    lab = unique_name()
    directory = str(naming.pin_dir(lab, "control"))
    try:
        loader.load(directory)
        ctlb.load_nodes({"control": directory})
        yield directory
    finally:
        loader.remove_pins(directory, prune_up_to=naming.bpf_dir(lab))


@pytest.mark.parametrize("name", list(abi.CTLB_MAP_SPECS))
def test_ctlb_mirror_matches_compiled_btf(ctlb_pin_dir, name):
    """The maps only bpf/connect.c declares (ctlb.h) have the layouts abi.CTLB_MAP_SPECS gives them."""
    spec = abi.CTLB_MAP_SPECS[name]
    got = _layouts(os.path.join(ctlb_pin_dir, name))
    assert (got.key, got.value) == (spec.key_layout, spec.value_layout)


def _bpftool_struct(btf_id: int, type_id: int) -> list[tuple[str, int]]:
    out = subprocess.run(["bpftool", "-j", "btf", "dump", "id", str(btf_id)], capture_output=True,
                         text=True, check=True)
    # Debian 12's bpftool on 5.10 prints an error object before the dump (it asks the kernel
    # for BTF info fields 5.10 lacks: E2BIG); the dump is the document with "types".
    docs, text, pos = [], out.stdout.strip(), 0
    while pos < len(text):
        doc, pos = json.JSONDecoder().raw_decode(text, pos)
        docs.append(doc)
        pos += len(text[pos:]) - len(text[pos:].lstrip(", \n"))
    types = {t["id"]: t for t in next(d for d in docs if "types" in d)["types"]}
    t = types[type_id]
    while "members" not in t and t["kind"] in ("TYPEDEF", "CONST", "VOLATILE"):
        t = types[t["type_id"]]
    if "members" not in t:
        return [("", 0)]                                  # a plain scalar: one unnamed field
    return [(m["name"], m["bits_offset"] // 8) for m in t["members"]]


@pytest.mark.parametrize("name", ["cfg", "nodes", "routes", "nat_fe", "nat_be", "ct"])
def test_btf_parse_agrees_with_bpftool(_cluster, name):
    """Our reading of the kernel's BTF names the same members at the same offsets as bpftool's."""
    fd = libbpf.obj_get(os.path.join(_cluster["control"].dp.pin_dir, name))
    try:
        info, mine = libbpf.map_info(fd), btf.map_layouts(fd)
    finally:
        os.close(fd)
    assert [(f.name, f.offset) for f in mine.key] == _bpftool_struct(info.btf_id, info.btf_key_type_id)
    assert [(f.name, f.offset) for f in mine.value] == _bpftool_struct(info.btf_id, info.btf_value_type_id)


# ---- an older datapath's pins, loaded over -------------------------------------------------

@dataclass(frozen=True)
class OldPin:
    """A map as an older datapath declared it, one entry in it, and what the load must make of it."""
    name: str
    c: str                       # struct declaration(s) + the BPF_TABLE_PINNED line
    key: bytes
    value: bytes
    outcome: str                 # "reused" | "upgraded" | "replaced"
    expect: Any                  # the entry as abi.py reads it after the load (None: gone)


BE = abi.BeKey(svc_id=7, ordinal=0)
FE = abi.FeKey.make("198.19.32.10", 80, "tcp")
NODE = abi.Addr(abi.ip2int("198.19.0.9"))
OLD_PINS = [
    # the same struct: kept as it is, map and entry untouched
    OldPin("svc_meta", "struct svc_meta { char name[64]; };\n"
           "BPF_TABLE_PINNED(\"hash\", __u32, struct svc_meta, svc_meta, 65536, PIN(svc_meta), BPF_F_NO_PREALLOC);",
           bytes(abi.U32(7)), b"ns/svc:80/tcp".ljust(64, b"\0"), "reused", abi.SvcMeta.make("ns/svc:80/tcp")),
    # same size, fields moved: each value copied to where its name now sits
    OldPin("nat_be", "struct be_key { __u32 svc_id; __u32 ordinal; };\n"
           "struct be_value { __u16 pad; __be16 port; __be32 addr; };\n"
           "BPF_TABLE_PINNED(\"hash\", struct be_key, struct be_value, nat_be, 262144, PIN(nat_be), BPF_F_NO_PREALLOC);",
           bytes(BE), struct.pack("!HHI", 0, 8080, abi.ip2int("198.19.16.65")), "upgraded",
           abi.BeValue(addr=abi.ip2int("198.19.16.65"), port=8080)),
    # a field renamed (count was n_backends): the others copied, the new name starts at zero
    OldPin("nat_fe", "struct fe_key { __be32 addr; __be16 port; __u8 proto; __u8 pad; };\n"
           "struct fe_value { __u32 svc_id; __u16 n_backends; __u16 local_count; __u32 flags; };\n"
           "BPF_TABLE_PINNED(\"hash\", struct fe_key, struct fe_value, nat_fe, 65536, PIN(nat_fe), BPF_F_NO_PREALLOC);",
           bytes(FE), struct.pack("<IHHI", 7, 3, 1, abi.FE_F_NODEPORT), "upgraded",
           abi.FeValue(svc_id=7, count=0, local_count=1, flags=abi.FE_F_NODEPORT)),
    # a field of another size: no conversion, the map is replaced (one warning) and empty
    OldPin("nodes", "struct node_info { __u64 flags; };\n"
           "BPF_TABLE_PINNED(\"hash\", __be32, struct node_info, nodes, 256, PIN(nodes), BPF_F_NO_PREALLOC);",
           bytes(NODE), struct.pack("<Q", 1), "replaced", None),
]

def _c_struct(name: str) -> str:
    """`struct name { ... };` as bpf/lib/maps.h declares it today."""
    text = open(os.path.join(loader.BPF_DIR, "lib", "maps.h")).read()
    start = text.index(f"struct {name} {{")
    return text[start:text.index("};", start) + 2]


CTK = abi.ct_key("203.0.113.7", 40000, "198.19.16.65", 8080, "tcp")[0]
CTV = abi.CtValue(created_ns=1, last_seen_ns=2, type=abi.CT_NAT_REV, flags=abi.CT_F_NODEPORT,
                  tcp_a=abi.TCPF_SYN, nat_addr=abi.ip2int("198.19.0.1"), nat_port=30180, packets_ab=1)
OLD_PINS.append(
    # the conntrack map as the 65,536-entry LRU it was until issue 17: entries kept in the plain hash
    OldPin("ct", _c_struct("ct_key") + "\n" + _c_struct("ct_value") + "\n"
           "BPF_TABLE_PINNED(\"lru_hash\", struct ct_key, struct ct_value, ct, 65536, PIN(ct));",
           bytes(CTK), bytes(CTV), "upgraded", CTV))
VIEWS = {"svc_meta": (abi.U32, abi.SvcMeta), "nat_be": (abi.BeKey, abi.BeValue),
         "nat_fe": (abi.FeKey, abi.FeValue), "nodes": (abi.Addr, abi.NodeInfo), "ct": (abi.CtKey, abi.CtValue)}


def _pin_old_maps(directory: str) -> dict[str, int]:
    """Compile OLD_PINS' declarations with BCC pinned into directory, one entry each; map ids."""
    from bcc import BPF

    text = (f'#define PIN(name) "{directory}/" #name\n#include <uapi/linux/bpf.h>\n'
            + "\n".join(p.c for p in OLD_PINS)
            + "\nint old_datapath(struct __sk_buff *skb) { return 0; }\n")
    with loader.BCC_LOCK:
        bpf = BPF(text=text)
        bpf.cleanup()
    ids = {}
    for p in OLD_PINS:
        fd = libbpf.obj_get(os.path.join(directory, p.name))
        try:
            libbpf.map_update(fd, p.key, p.value)
            ids[p.name] = libbpf.map_info(fd).id
        finally:
            os.close(fd)
    return ids


def test_old_pins_are_reused_upgraded_or_replaced(caplog):
    """Loading over an older datapath's pins: an identical map is reused untouched, one whose
    fields moved or were renamed keeps its entries under the new layout, and one whose fields
    do not convert is replaced by an empty map with one warning line naming it."""
    lab = unique_name()
    directory = str(naming.pin_dir(lab, "control"))   # where down --all finds it after a crash
    os.makedirs(directory)
    try:
        ids = _pin_old_maps(directory)
        with caplog.at_level(logging.WARNING, logger="ebpf_nodeport.pins"):
            res = loader.load(directory)
        outcome = {n: "reused" for n in res.reused_maps}
        outcome.update({n: "upgraded" for n in res.upgraded_maps})
        outcome.update({n: "replaced" for n in res.replaced_maps})
        assert {p.name: outcome.get(p.name) for p in OLD_PINS} == {p.name: p.outcome for p in OLD_PINS}
        warnings = [r.getMessage() for r in caplog.records]
        assert len(warnings) == 1 and os.path.join(directory, "nodes") in warnings[0], warnings
        for p in OLD_PINS:
            view = MapView(os.path.join(directory, p.name), *VIEWS[p.name])
            try:
                assert view.get(view.key_type.from_bytes(p.key)) == p.expect, p.name
                assert len(view) == (p.expect is not None), p.name
                assert (view.info.id == ids[p.name]) == (p.outcome == "reused"), p.name
            finally:
                view.close()
            assert _layouts(view.path).value == abi.MAP_SPECS[p.name].value_layout, p.name
    finally:
        loader.remove_pins(directory, prune_up_to=naming.bpf_dir(lab))


def test_reasons_and_hooks_mirror_counters_h():
    """abi.REASONS and abi.HOOKS name exactly the REASON_* and HOOK_* ids bpf/lib/counters.h defines,
    so `dump counters` names every reason a program can count (e.g. DROP_CT_FULL)."""
    import re

    text = open(os.path.join(loader.BPF_DIR, "lib", "counters.h")).read()
    reasons = {int(n): name for name, n in re.findall(r"^#define REASON_(\w+)\s+(\d+)", text, re.M)}
    hooks = {int(n): name.lower() for name, n in re.findall(r"^#define HOOK_(\w+)\s+(\d+)", text, re.M)}
    assert reasons == abi.REASONS
    assert hooks == abi.HOOKS
