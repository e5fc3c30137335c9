"""Pinned maps checked against the code before a load, and upgraded when their layout changed.

A reload reuses the maps pinned in the node's directory, so conntrack and services
survive it. Equal sizes are not enough to reuse one: a struct whose fields moved or
changed meaning at the same size would keep its old entries under the new meaning.
So each pinned map's key and value layouts, read from its BTF (btf.py), are compared
with the Python mirror of the C (abi.py, itself checked against the compiled C by
tests/bpf/test_abi.py):

- same type, sizes, flags, capacity and layouts: reused untouched;
- otherwise, when every field the two layouts share by name has the same size: the
  entries are carried over, as Calico upgrades its maps: same-named fields copied,
  new fields zero, dropped fields gone (a key may only gain fields, or two old keys
  could become one; nothing in common is no conversion). The old pin is removed, the load creates the new map, and
  restore() writes the converted entries into it;
- a hash that became an LRU hash or back (`ct` did) converts the same way;
- anything else (another map type, a field whose size changed, an index-keyed array
  whose capacity changed, a map without BTF): replaced by an empty map, with one
  warning line naming the map.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Callable

from . import btf, libbpf
from .abi import (BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_HASH, BPF_MAP_TYPE_LRU_HASH, BPF_MAP_TYPE_PERCPU_ARRAY,
                  BPF_MAP_TYPE_RINGBUF, Layout, MapSpec)

log = logging.getLogger(__name__)

Convert = Callable[[bytes], bytes]
_INDEXED = {BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_PERCPU_ARRAY}   # the key is a position, not a name
_HASHES = {BPF_MAP_TYPE_HASH, BPF_MAP_TYPE_LRU_HASH}   # one holds the other's entries (`ct` was an LRU)


class Unconvertible(Exception):
    """Why a pinned map's entries cannot be carried over (one line for the warning)."""


@dataclass
class PinCheck:
    """What check() decided for each pinned map of a directory."""
    reused: list[str] = field(default_factory=list)
    upgraded: dict[str, list[tuple[bytes, bytes]]] = field(default_factory=dict)  # converted entries
    replaced: list[str] = field(default_factory=list)

    def restore(self, directory: str) -> None:
        """Write the carried-over entries into the maps the load created in their place."""
        for name, entries in self.upgraded.items():
            if not entries:
                continue
            fd = libbpf.obj_get(os.path.join(directory, name))
            lost = 0
            try:
                for k, v in entries:
                    try:
                        libbpf.map_update(fd, k, v)
                    except libbpf.BpfError:
                        lost += 1
            finally:
                os.close(fd)
            if lost:
                log.warning("pinned map %s: %d of %d entries did not fit the upgraded map",
                            os.path.join(directory, name), lost, len(entries))


def converter(old: Layout | None, new: Layout | None, *, key: bool) -> Convert:
    """old bytes -> new bytes: same-named fields copied, new ones zero; Unconvertible if not."""
    if old is None or new is None:
        raise Unconvertible("no BTF layout to compare" if old is None else "no layout in abi.py")
    by_name = {f.name: f for f in old}
    moves = []
    for f in new:
        o = by_name.get(f.name)
        if o is None:
            continue
        if o.size != f.size:
            raise Unconvertible(f"field {f.name or '(value)'} is {o.size} bytes, now {f.size}")
        moves.append((o.offset, f.offset, f.size))
    if not moves:
        raise Unconvertible("no field in common")
    if key:
        gone = sorted({f.name for f in old} - {f.name for f in new})
        if gone:
            raise Unconvertible(f"key field(s) {', '.join(gone)} removed")
    size = max((f.offset + f.size for f in new), default=0)

    def convert(raw: bytes) -> bytes:
        out = bytearray(size)
        for o_off, n_off, n in moves:
            out[n_off:n_off + n] = raw[o_off:o_off + n]
        return bytes(out)
    return convert


def _stride(value_size: int) -> int:
    """Bytes per CPU of a per-CPU map's value as the syscalls lay it out (8-byte aligned)."""
    return (value_size + 7) // 8 * 8


def _entries(fd: int, info: libbpf.MapInfo) -> dict[bytes, bytes]:
    if info.type == BPF_MAP_TYPE_RINGBUF:
        return {}
    if info.type == BPF_MAP_TYPE_PERCPU_ARRAY:
        return libbpf.map_items(fd, info.key_size, _stride(info.value_size) * libbpf.num_possible_cpus())
    return libbpf.map_all(fd, info.key_size, info.value_size)


def _upgrade(fd: int, info: libbpf.MapInfo, spec: MapSpec) -> list[tuple[bytes, bytes]]:
    """The pinned map's entries converted to spec's layouts; Unconvertible if they do not convert."""
    if info.type != spec.map_type and {info.type, spec.map_type} != _HASHES:
        raise Unconvertible(f"map type {info.type}, now {spec.map_type}")
    if info.type in _INDEXED and info.max_entries != spec.max_entries:
        raise Unconvertible(f"index-keyed, {info.max_entries} entries, now {spec.max_entries}")
    if info.type == BPF_MAP_TYPE_RINGBUF:
        return []                                   # records in flight only: nothing to keep
    layouts = btf.map_layouts(fd)
    kconv = converter(layouts.key, spec.key_layout, key=True)
    vconv = converter(layouts.value, spec.value_layout, key=False)
    entries = _entries(fd, info)
    if info.type != BPF_MAP_TYPE_PERCPU_ARRAY:
        return [(kconv(k), vconv(v)) for k, v in entries.items()]
    old, new = _stride(info.value_size), _stride(spec.value_size)
    out = []
    for k, v in entries.items():
        slots = [vconv(v[i:i + old]).ljust(new, b"\0") for i in range(0, len(v), old)]
        out.append((kconv(k), b"".join(slots)))
    return out


def _same(fd: int, info: libbpf.MapInfo, spec: MapSpec) -> bool:
    if (info.type, info.key_size, info.value_size, info.max_entries, info.map_flags) != (
            spec.map_type, spec.key_size, spec.value_size, spec.max_entries, spec.map_flags):
        return False
    layouts = btf.map_layouts(fd)
    return (layouts.key, layouts.value) == (spec.key_layout, spec.value_layout)


def check(directory: str, specs: dict[str, MapSpec]) -> PinCheck:
    """Judge every map pinned in directory against specs; remove the pins that cannot stay."""
    result = PinCheck()
    for name, spec in specs.items():
        path = os.path.join(directory, name)
        if not os.path.exists(path):
            continue
        try:
            fd = libbpf.obj_get(path)
        except OSError:
            os.unlink(path)                         # not a map we can open: nothing to keep
            continue
        try:
            info = libbpf.map_info(fd)
            if _same(fd, info, spec):
                result.reused.append(name)
                continue
            try:
                result.upgraded[name] = _upgrade(fd, info, spec)
            except Unconvertible as why:
                result.replaced.append(name)
                log.warning("pinned map %s replaced, its entries dropped: %s", path, why)
        finally:
            os.close(fd)
        os.unlink(path)
    return result
