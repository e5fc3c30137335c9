"""Typed views of the datapath's pinned maps, opened by path with libbpf.

The keys and values are abi.py's ctypes mirrors of bpf/lib/maps.h; this module only
opens, reads and writes pinned maps with them (MapView, PerCpuArrayView, NodeMaps,
EventReader). Nothing else in the project packs map bytes by hand.
"""
from __future__ import annotations

import ctypes as ct
import os
from typing import Any, Callable, Generic, Iterator, TypeVar

from . import libbpf
from .abi import (BPF_MAP_TYPE_PERCPU_ARRAY, HOOK_IDS, HOOKS, MAP_SPECS, MAX_REASONS, REASON_IDS, U32, Event,
                  NodeCfg, _Struct, reason_name)



# ---- views over pinned maps --------------------------------------------------------------

K = TypeVar("K", bound=_Struct)
V = TypeVar("V", bound=_Struct)


class MapView(Generic[K, V]):
    """A pinned map opened by path, with typed get/put/delete/items."""

    def __init__(self, path: str, key: type[K], value: type[V]):
        self.path = path
        self.key_type = key
        self.value_type = value
        self.fd = libbpf.obj_get(path)
        info = libbpf.map_info(self.fd)
        if info.key_size != ct.sizeof(key) or info.value_size != ct.sizeof(value):
            os.close(self.fd)
            raise ValueError(f"{path}: key/value size {info.key_size}/{info.value_size} does not "
                             f"match {key.__name__}/{value.__name__} "
                             f"({ct.sizeof(key)}/{ct.sizeof(value)}): stale pin, reload the datapath")
        self.info = info

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def get(self, key: K) -> V | None:
        raw = libbpf.map_lookup(self.fd, bytes(key), ct.sizeof(self.value_type))
        return None if raw is None else self.value_type.from_bytes(raw)

    def get_raw(self, key: K | bytes) -> bytes | None:
        """One entry's value bytes (None if absent), as raw_items() gives them."""
        return libbpf.map_lookup(self.fd, bytes(key), ct.sizeof(self.value_type))

    def put(self, key: K | bytes, value: V | bytes, flags: int = libbpf.BPF_ANY) -> None:
        """Write one entry (structs or their bytes, e.g. from pack() or raw_items())."""
        libbpf.map_update(self.fd, bytes(key), bytes(value), flags)

    def delete(self, key: K | bytes) -> bool:
        return libbpf.map_delete(self.fd, bytes(key))

    def delete_many(self, keys: list[K] | list[bytes]) -> int:
        """Delete keys in bulk (BPF_MAP_DELETE_BATCH where the kernel allows); how many were there."""
        return libbpf.map_delete_many(self.fd, [bytes(k) for k in keys], ct.sizeof(self.key_type))

    def raw_items(self) -> dict[bytes, bytes]:
        """Every entry as key bytes -> value bytes, read in bulk where the kernel allows.

        BPF_MAP_LOOKUP_BATCH costs one syscall per few thousand entries (libbpf.map_all).
        """
        return libbpf.map_all(self.fd, ct.sizeof(self.key_type), ct.sizeof(self.value_type))

    def keys(self) -> Iterator[K]:
        for raw in self.raw_items():
            yield self.key_type.from_bytes(raw)

    def items(self) -> Iterator[tuple[K, V]]:
        """(key, value) pairs as read in bulk (raw_items) when the iteration starts."""
        kt, vt = self.key_type, self.value_type
        for k, v in self.raw_items().items():
            yield kt.from_bytes(k), vt.from_bytes(v)

    def clear(self) -> int:
        n = 0
        for k in self.raw_items():
            n += self.delete(k)
        return n

    def __len__(self) -> int:
        return len(self.raw_items())


class PerCpuArrayView:
    """A pinned per-CPU array of __u64 (counters; value_size other for ct_clock, opened for its
    info only): one slot per possible CPU."""

    def __init__(self, path: str, value_size: int = 8):
        self.path = path
        self.fd = libbpf.obj_get(path)
        self.info = libbpf.map_info(self.fd)
        if self.info.value_size != value_size or self.info.key_size != 4:
            os.close(self.fd)
            raise ValueError(f"{path}: not a per-CPU array of {value_size}-byte values")
        self.ncpus = libbpf.num_possible_cpus()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def get_percpu(self, index: int) -> list[int]:
        raw = libbpf.map_lookup(self.fd, bytes(U32(index)), 8 * self.ncpus)
        if raw is None:
            raise IndexError(index)
        arr = (ct.c_uint64 * self.ncpus).from_buffer_copy(raw)
        return list(arr)

    def get(self, index: int) -> int:
        """Sum over CPUs."""
        return sum(self.get_percpu(index))

    def all(self) -> list[int]:
        return [self.get(i) for i in range(self.info.max_entries)]

    def zero(self) -> None:
        blank = bytes(8 * self.ncpus)
        for i in range(self.info.max_entries):
            libbpf.map_update(self.fd, bytes(U32(i)), blank)


class NodeMaps:
    """All maps of one node, opened lazily from its pin directory."""

    def __init__(self, directory: str):
        if not os.path.isdir(directory):
            raise FileNotFoundError(f"no datapath pinned at {directory}")
        self.directory = directory
        self._open: dict[str, Any] = {}

    def _view(self, name: str):
        if name not in self._open:
            spec = MAP_SPECS[name]
            path = os.path.join(self.directory, name)
            if spec.map_type == BPF_MAP_TYPE_PERCPU_ARRAY:
                self._open[name] = PerCpuArrayView(path, spec.value_size)
            else:
                self._open[name] = MapView(path, spec.key, spec.value)
        return self._open[name]

    cfg = property(lambda self: self._view("cfg"))
    nodes = property(lambda self: self._view("nodes"))
    routes = property(lambda self: self._view("routes"))
    dsr_optout = property(lambda self: self._view("dsr_optout"))
    nat_fe = property(lambda self: self._view("nat_fe"))
    nat_be = property(lambda self: self._view("nat_be"))
    svc_meta = property(lambda self: self._view("svc_meta"))
    ct = property(lambda self: self._view("ct"))
    frags = property(lambda self: self._view("frags"))
    counters = property(lambda self: self._view("counters"))
    ct_clock = property(lambda self: self._view("ct_clock"))
    lb_svc = property(lambda self: self._view("lb_svc"))
    lb_src = property(lambda self: self._view("lb_src"))
    affinity = property(lambda self: self._view("affinity"))
    maglev = property(lambda self: self._view("maglev"))

    def close(self) -> None:
        for v in self._open.values():
            v.close()
        self._open.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- convenience reads used by dumps and tests --

    def read_cfg(self) -> NodeCfg:
        return self.cfg.get(U32(0)) or NodeCfg()

    def write_cfg(self, value: NodeCfg) -> None:
        self.cfg.put(U32(0), value)

    def counter_table(self, nonzero: bool = True) -> list[dict[str, Any]]:
        """Rows {hook, reason, packets} summed over CPUs."""
        rows = []
        values = self.counters.all()
        for hook, hname in HOOKS.items():
            for rid in range(MAX_REASONS):
                n = values[hook * MAX_REASONS + rid]
                if n or not nonzero:
                    rows.append({"hook": hname, "reason": reason_name(rid), "packets": n})
        return rows

    def counter(self, hook: int | str, reason: int | str) -> int:
        h = hook if isinstance(hook, int) else HOOK_IDS[hook]
        r = reason if isinstance(reason, int) else REASON_IDS[reason]
        return self.counters.get(h * MAX_REASONS + r)

    def events(self, callback: Callable[[Event], None]) -> "EventReader":
        return EventReader(os.path.join(self.directory, "events"), callback)


class EventReader:
    """Consume `struct event`s from the pinned ring buffer (needs CFG_F_TRACE set)."""

    def __init__(self, path: str, callback: Callable[[Event], None]):
        self._fd = libbpf.obj_get(path)
        size = ct.sizeof(Event)

        def _on_sample(data: bytes) -> None:
            if len(data) >= size:
                callback(Event.from_bytes(data))

        self._rb = libbpf.RingBuffer(self._fd, _on_sample)

    def poll(self, timeout_ms: int = 100) -> int:
        return self._rb.poll(timeout_ms)

    def close(self) -> None:
        self._rb.close()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
