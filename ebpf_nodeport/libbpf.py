"""Thin ctypes bindings to the system libbpf: pin/open objects, map element ops, test-run.

Why not BCC for this: BCC needs a compile (seconds) to get a map handle, while a
CLI call that only reads or updates a pinned map should take milliseconds. libbpf
ships with Debian's libbpfcc, so every machine that has BCC has these symbols.
"""
from __future__ import annotations

import ctypes as ct
import ctypes.util
import errno
import os
from dataclasses import dataclass
from typing import Iterator

_LIB_NAMES = ("libbpf.so.1", "libbpf.so")


def _load() -> ct.CDLL:
    for name in _LIB_NAMES + tuple(filter(None, [ctypes.util.find_library("bpf")])):
        try:
            return ct.CDLL(name, use_errno=True)
        except OSError:
            continue
    raise OSError("libbpf not found: install Debian's libbpf1 (it comes with libbpfcc)")


_lib = _load()

_lib.bpf_obj_get.argtypes = [ct.c_char_p]
_lib.bpf_obj_pin.argtypes = [ct.c_int, ct.c_char_p]
_lib.bpf_map_lookup_elem.argtypes = [ct.c_int, ct.c_void_p, ct.c_void_p]
_lib.bpf_map_update_elem.argtypes = [ct.c_int, ct.c_void_p, ct.c_void_p, ct.c_uint64]
_lib.bpf_map_delete_elem.argtypes = [ct.c_int, ct.c_void_p]
_lib.bpf_map_get_next_key.argtypes = [ct.c_int, ct.c_void_p, ct.c_void_p]
_lib.bpf_map_lookup_batch.argtypes = [ct.c_int, ct.c_void_p, ct.c_void_p, ct.c_void_p, ct.c_void_p,
                                      ct.POINTER(ct.c_uint32), ct.c_void_p]
_lib.bpf_map_delete_batch.argtypes = [ct.c_int, ct.c_void_p, ct.POINTER(ct.c_uint32), ct.c_void_p]
_lib.bpf_obj_get_info_by_fd.argtypes = [ct.c_int, ct.c_void_p, ct.POINTER(ct.c_uint32)]
_lib.libbpf_num_possible_cpus.argtypes = []

BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2

ENOTSUPP = 524   # the kernel's own "not supported" (no Python name): a map type without batch ops
BATCH_UNSUPPORTED = frozenset({errno.EINVAL, errno.EOPNOTSUPP, ENOTSUPP})


class BpfError(OSError):
    """A libbpf call failed; carries errno and what was being done."""


def _check(rc: int, what: str) -> int:
    if rc < 0:
        err = -rc if rc < -1 else (ct.get_errno() or errno.EINVAL)
        raise BpfError(err, f"{what}: {os.strerror(err)}")
    return rc


def _missing(rc: int, what: str) -> bool:
    """For a failed call (rc < 0): True when it failed with ENOENT (no such key, entry or
    attachment), which callers answer with None/False; any other error raises BpfError."""
    err = -rc if rc < -1 else ct.get_errno()
    if err == errno.ENOENT:
        return True
    _check(rc, what)
    return False   # not reached: _check raises for rc < 0


def obj_get(path: str) -> int:
    """Open a pinned map or program; returns a new fd (caller closes)."""
    return _check(_lib.bpf_obj_get(path.encode()), f"bpf_obj_get({path})")


def obj_pin(fd: int, path: str) -> None:
    """Pin an fd under bpffs so it outlives this process."""
    _check(_lib.bpf_obj_pin(fd, path.encode()), f"bpf_obj_pin({path})")


def num_possible_cpus() -> int:
    """Per-CPU maps return one value slot per possible CPU."""
    return _check(_lib.libbpf_num_possible_cpus(), "libbpf_num_possible_cpus")


class _MapInfo(ct.Structure):
    _fields_ = [
        ("type", ct.c_uint32), ("id", ct.c_uint32), ("key_size", ct.c_uint32),
        ("value_size", ct.c_uint32), ("max_entries", ct.c_uint32), ("map_flags", ct.c_uint32),
        ("name", ct.c_char * 16), ("ifindex", ct.c_uint32), ("btf_vmlinux_value_type_id", ct.c_uint32),
        ("netns_dev", ct.c_uint64), ("netns_ino", ct.c_uint64), ("btf_id", ct.c_uint32),
        ("btf_key_type_id", ct.c_uint32), ("btf_value_type_id", ct.c_uint32),
        ("_pad", ct.c_uint32), ("map_extra", ct.c_uint64),
    ]


@dataclass(frozen=True)
class MapInfo:
    """What the kernel says about a map: used to check a view matches the map."""
    type: int
    id: int
    key_size: int
    value_size: int
    max_entries: int
    name: str
    btf_id: int
    map_flags: int = 0
    btf_key_type_id: int = 0      # the key's type in BTF object btf_id (0: none)
    btf_value_type_id: int = 0
    btf_vmlinux_value_type_id: int = 0
    map_extra: int = 0            # bloom filter hashes and the like (0 for every map of ours)


def obj_info(fd: int, info: ct.Structure) -> None:
    """Fill `info` (a bpf_*_info struct) for a map, program or BTF fd (BPF_OBJ_GET_INFO_BY_FD)."""
    size = ct.c_uint32(ct.sizeof(info))
    _check(_lib.bpf_obj_get_info_by_fd(fd, ct.byref(info), ct.byref(size)), "bpf_obj_get_info_by_fd")


def map_info(fd: int) -> MapInfo:
    info = _MapInfo()
    obj_info(fd, info)
    return MapInfo(info.type, info.id, info.key_size, info.value_size, info.max_entries,
                   info.name.decode(errors="replace"), info.btf_id, info.map_flags,
                   info.btf_key_type_id, info.btf_value_type_id, info.btf_vmlinux_value_type_id,
                   info.map_extra)


def btf_get_fd_by_id(btf_id: int) -> int:
    """An fd of the kernel's BTF object btf_id (caller closes)."""
    return _check(_lib.bpf_btf_get_fd_by_id(btf_id), f"bpf_btf_get_fd_by_id({btf_id})")


class _ProgInfo(ct.Structure):
    """struct bpf_prog_info (uapi), up to the run-time statistics; the kernel fills what fits."""
    _fields_ = [
        ("type", ct.c_uint32), ("id", ct.c_uint32), ("tag", ct.c_uint8 * 8),
        ("jited_prog_len", ct.c_uint32), ("xlated_prog_len", ct.c_uint32),
        ("jited_prog_insns", ct.c_uint64), ("xlated_prog_insns", ct.c_uint64),
        ("load_time", ct.c_uint64), ("created_by_uid", ct.c_uint32), ("nr_map_ids", ct.c_uint32),
        ("map_ids", ct.c_uint64), ("name", ct.c_char * 16), ("ifindex", ct.c_uint32),
        ("gpl_compatible", ct.c_uint32), ("netns_dev", ct.c_uint64), ("netns_ino", ct.c_uint64),
        ("nr_jited_ksyms", ct.c_uint32), ("nr_jited_func_lens", ct.c_uint32),
        ("jited_ksyms", ct.c_uint64), ("jited_func_lens", ct.c_uint64), ("btf_id", ct.c_uint32),
        ("func_info_rec_size", ct.c_uint32), ("func_info", ct.c_uint64),
        ("nr_func_info", ct.c_uint32), ("nr_line_info", ct.c_uint32), ("line_info", ct.c_uint64),
        ("jited_line_info", ct.c_uint64), ("nr_jited_line_info", ct.c_uint32),
        ("line_info_rec_size", ct.c_uint32), ("jited_line_info_rec_size", ct.c_uint32),
        ("nr_prog_tags", ct.c_uint32), ("prog_tags", ct.c_uint64),
        ("run_time_ns", ct.c_uint64), ("run_cnt", ct.c_uint64),
    ]


@dataclass(frozen=True)
class ProgInfo:
    """What the kernel says about a program: its id and name, and its run-time statistics
    (counted only while BPF_ENABLE_STATS is on: enable_stats)."""
    id: int
    name: str
    run_time_ns: int
    run_cnt: int


def prog_info(fd: int) -> ProgInfo:
    info = _ProgInfo()
    size = ct.c_uint32(ct.sizeof(info))
    _check(_lib.bpf_obj_get_info_by_fd(fd, ct.byref(info), ct.byref(size)), "bpf_obj_get_info_by_fd")
    return ProgInfo(info.id, info.name.decode(errors="replace"), info.run_time_ns, info.run_cnt)


BPF_STATS_RUN_TIME = 0
_lib.bpf_enable_stats.argtypes = [ct.c_int]


def enable_stats(kind: int = BPF_STATS_RUN_TIME) -> int:
    """An fd that keeps the kernel's BPF run-time statistics on until it is closed (even by the
    process dying); BpfError when the kernel refuses."""
    return _check(_lib.bpf_enable_stats(kind), "bpf_enable_stats")


def map_lookup(fd: int, key: bytes, value_size: int) -> bytes | None:
    kbuf = ct.create_string_buffer(key, len(key))
    vbuf = ct.create_string_buffer(value_size)
    rc = _lib.bpf_map_lookup_elem(fd, kbuf, vbuf)
    if rc < 0 and _missing(rc, "bpf_map_lookup_elem"):
        return None
    return vbuf.raw


def map_update(fd: int, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
    kbuf = ct.create_string_buffer(key, len(key))
    vbuf = ct.create_string_buffer(value, len(value))
    _check(_lib.bpf_map_update_elem(fd, kbuf, vbuf, flags), "bpf_map_update_elem")


def map_delete(fd: int, key: bytes) -> bool:
    """Delete one element; False when it was not there."""
    kbuf = ct.create_string_buffer(key, len(key))
    rc = _lib.bpf_map_delete_elem(fd, kbuf)
    return not (rc < 0 and _missing(rc, "bpf_map_delete_elem"))


def map_delete_many(fd: int, keys: list[bytes], key_size: int, batch: int = 4096) -> int:
    """Delete keys in batches of BPF_MAP_DELETE_BATCH (5.6+) instead of one syscall each; how many
    were there. A key already gone (deleted meanwhile) stops a batch where it sits: it is skipped
    and the rest goes on. Per key where the kernel has no batch ops for the map type."""
    done = i = 0
    while i < len(keys):
        chunk = keys[i:i + batch]
        buf = ct.create_string_buffer(b"".join(chunk), len(chunk) * key_size)
        count = ct.c_uint32(len(chunk))
        rc = _lib.bpf_map_delete_batch(fd, buf, ct.byref(count), None)
        err = 0 if rc >= 0 else -rc if rc < -1 else ct.get_errno()
        if err in BATCH_UNSUPPORTED and count.value == 0 and done == 0:
            return sum(map_delete(fd, k) for k in keys)
        if err not in (0, errno.ENOENT):
            raise BpfError(err, f"bpf_map_delete_batch: {os.strerror(err)}")
        done += count.value
        i += count.value + (1 if err == errno.ENOENT else 0)   # past the key that was gone
    return done


def map_keys(fd: int, key_size: int) -> Iterator[bytes]:
    """Iterate keys. Keys deleted concurrently may be skipped; that is fine for dumps/GC."""
    cur = None
    nxt = ct.create_string_buffer(key_size)
    while True:
        cbuf = None if cur is None else ct.create_string_buffer(cur, key_size)
        rc = _lib.bpf_map_get_next_key(fd, cbuf, nxt)
        if rc < 0 and _missing(rc, "bpf_map_get_next_key"):
            return
        cur = nxt.raw
        yield cur


def map_items(fd: int, key_size: int, value_size: int) -> dict[bytes, bytes]:
    """Every entry of a map, key bytes -> value bytes, by iteration: two syscalls per entry.

    Works on every keyed map type; entries deleted while iterating are skipped.
    """
    out = {}
    for k in list(map_keys(fd, key_size)):
        v = map_lookup(fd, k, value_size)
        if v is not None:
            out[k] = v
    return out


def map_lookup_batch(fd: int, key_size: int, value_size: int, batch: int = 4096) -> dict[bytes, bytes]:
    """Every entry of a map, key bytes -> value bytes, `batch` entries per BPF_MAP_LOOKUP_BATCH.

    One syscall per `batch` entries instead of two per entry (map_items). Like iteration
    it is no atomic snapshot: entries changed meanwhile may or may not show. Not for
    per-CPU maps (values are value_size per CPU there). Raises BpfError with an errno in
    BATCH_UNSUPPORTED where the kernel has no batch ops for the map type (ring buffers;
    LPM tries on older kernels): use map_items there.
    """
    token_size = max(key_size, 4)      # hash maps: a u32 bucket index; arrays: a key
    in_token: ct.Array | None = None
    out_token = ct.create_string_buffer(token_size)
    keys = ct.create_string_buffer(batch * key_size)
    values = ct.create_string_buffer(batch * value_size)
    out: dict[bytes, bytes] = {}
    while True:
        count = ct.c_uint32(batch)
        rc = _lib.bpf_map_lookup_batch(fd, in_token, out_token, keys, values, ct.byref(count), None)
        err = 0 if rc >= 0 else -rc if rc < -1 else ct.get_errno()
        if err == errno.ENOSPC and count.value == 0:
            # One hash bucket holds more than `batch` entries: retry it with room for them.
            batch *= 2
            keys = ct.create_string_buffer(batch * key_size)
            values = ct.create_string_buffer(batch * value_size)
            continue
        if err not in (0, errno.ENOENT):
            raise BpfError(err, f"bpf_map_lookup_batch: {os.strerror(err)}")
        n = count.value
        kraw = ct.string_at(keys, n * key_size)
        vraw = ct.string_at(values, n * value_size)
        out.update(zip([kraw[i:i + key_size] for i in range(0, n * key_size, key_size)],
                       [vraw[i:i + value_size] for i in range(0, n * value_size, value_size)]))
        if err == errno.ENOENT:        # the end of the map: this batch was the last
            return out
        in_token = ct.create_string_buffer(out_token.raw, token_size)


def map_all(fd: int, key_size: int, value_size: int) -> dict[bytes, bytes]:
    """Every entry of a (not per-CPU) map: in batches where the kernel allows, else iterated.

    Where the kernel has no batch ops for the map type (LPM tries on older kernels) it is
    iterated, two syscalls per entry.
    """
    try:
        return map_lookup_batch(fd, key_size, value_size)
    except BpfError as exc:
        if exc.errno not in BATCH_UNSUPPORTED:
            raise
    return map_items(fd, key_size, value_size)


class TestRunOpts(ct.Structure):
    """struct bpf_test_run_opts (libbpf 1.x)."""
    _fields_ = [
        ("sz", ct.c_size_t), ("data_in", ct.c_void_p), ("data_out", ct.c_void_p),
        ("data_size_in", ct.c_uint32), ("data_size_out", ct.c_uint32),
        ("ctx_in", ct.c_void_p), ("ctx_out", ct.c_void_p),
        ("ctx_size_in", ct.c_uint32), ("ctx_size_out", ct.c_uint32),
        ("retval", ct.c_uint32), ("repeat", ct.c_int), ("duration", ct.c_uint32),
        ("flags", ct.c_uint32), ("cpu", ct.c_uint32), ("batch_size", ct.c_uint32),
    ]


_lib.bpf_prog_test_run_opts.argtypes = [ct.c_int, ct.POINTER(TestRunOpts)]


@dataclass(frozen=True)
class TestRunResult:
    """Outcome of one BPF_PROG_TEST_RUN: program return code, packet after, ns per run."""
    retval: int
    data: bytes
    duration_ns: int
    ctx: bytes | None = None


def prog_test_run(prog_fd: int, data: bytes, *, repeat: int = 1, ctx: bytes | None = None,
                  out_size: int | None = None, flags: int = 0) -> TestRunResult:
    """Run a loaded program on one packet in the kernel (BPF_PROG_TEST_RUN).

    `ctx` is an optional struct __sk_buff image (e.g. to set ifindex, mark, gso_size).
    `flags` are BPF_F_TEST_* (e.g. BPF_F_TEST_SKB_CHECKSUM_COMPLETE). The output
    buffer leaves room for encapsulation growth.
    """
    size_out = out_size if out_size is not None else len(data) + 512
    din = ct.create_string_buffer(data, len(data))
    dout = ct.create_string_buffer(size_out)
    opts = TestRunOpts()
    opts.sz = ct.sizeof(TestRunOpts)
    opts.data_in = ct.cast(din, ct.c_void_p)
    opts.data_out = ct.cast(dout, ct.c_void_p)
    opts.data_size_in = len(data)
    opts.data_size_out = size_out
    opts.repeat = repeat
    opts.flags = flags
    cin = cout = None
    if ctx is not None:
        cin = ct.create_string_buffer(ctx, len(ctx))
        cout = ct.create_string_buffer(len(ctx))
        opts.ctx_in = ct.cast(cin, ct.c_void_p)
        opts.ctx_size_in = len(ctx)
        opts.ctx_out = ct.cast(cout, ct.c_void_p)
        opts.ctx_size_out = len(ctx)
    _check(_lib.bpf_prog_test_run_opts(prog_fd, ct.byref(opts)), f"bpf_prog_test_run_opts(flags={flags:#x})")
    return TestRunResult(opts.retval, dout.raw[: opts.data_size_out], opts.duration,
                         cout.raw[: opts.ctx_size_out] if cout is not None else None)


# ---- ring buffer (events) -------------------------------------------------------------

_RB_CB = ct.CFUNCTYPE(ct.c_int, ct.c_void_p, ct.c_void_p, ct.c_size_t)
_lib.ring_buffer__new.argtypes = [ct.c_int, _RB_CB, ct.c_void_p, ct.c_void_p]
_lib.ring_buffer__new.restype = ct.c_void_p
_lib.ring_buffer__poll.argtypes = [ct.c_void_p, ct.c_int]
_lib.ring_buffer__consume.argtypes = [ct.c_void_p]
_lib.ring_buffer__free.argtypes = [ct.c_void_p]


class RingBuffer:
    """Consume a BPF ring buffer map (by fd) with libbpf; callback gets each record's bytes."""

    def __init__(self, map_fd: int, callback):
        def _cb(_ctx, data, size):
            try:
                callback(ct.string_at(data, size))
            except Exception:  # an exception must not unwind through C
                return -1
            return 0

        self._cb = _RB_CB(_cb)        # keep a reference: libbpf holds the pointer
        self._rb = _lib.ring_buffer__new(map_fd, self._cb, None, None)
        if not self._rb:
            err = ct.get_errno() or errno.EINVAL
            raise BpfError(err, f"ring_buffer__new: {os.strerror(err)}")

    def poll(self, timeout_ms: int = 100) -> int:
        """Wait up to timeout_ms and consume what arrived; returns records consumed."""
        return _check(_lib.ring_buffer__poll(self._rb, timeout_ms), "ring_buffer__poll")

    def consume(self) -> int:
        return _check(_lib.ring_buffer__consume(self._rb), "ring_buffer__consume")

    def close(self) -> None:
        if self._rb:
            _lib.ring_buffer__free(self._rb)
            self._rb = None

    def __del__(self):
        self.close()


# ---- map creation and program load without BCC (loader's per-node copies) -----------------

BPF_PROG_TYPE_SCHED_CLS = 3


class _MapCreateOpts(ct.Structure):
    """struct bpf_map_create_opts as libbpf 1.1 knows it (later fields stay zero)."""
    _fields_ = [
        ("sz", ct.c_size_t), ("btf_fd", ct.c_uint32), ("btf_key_type_id", ct.c_uint32),
        ("btf_value_type_id", ct.c_uint32), ("btf_vmlinux_value_type_id", ct.c_uint32),
        ("inner_map_fd", ct.c_uint32), ("map_flags", ct.c_uint32), ("map_extra", ct.c_uint64),
        ("numa_node", ct.c_uint32), ("map_ifindex", ct.c_uint32),
    ]


class _ProgLoadOpts(ct.Structure):
    """struct bpf_prog_load_opts as libbpf 1.1 knows it (later fields stay zero)."""
    _fields_ = [
        ("sz", ct.c_size_t), ("attempts", ct.c_int), ("expected_attach_type", ct.c_uint32),
        ("prog_btf_fd", ct.c_uint32), ("prog_flags", ct.c_uint32), ("prog_ifindex", ct.c_uint32),
        ("kern_version", ct.c_uint32), ("attach_btf_id", ct.c_uint32),
        ("attach_prog_fd", ct.c_uint32), ("attach_btf_obj_fd", ct.c_uint32),
        ("fd_array", ct.c_void_p), ("func_info", ct.c_void_p), ("func_info_cnt", ct.c_uint32),
        ("func_info_rec_size", ct.c_uint32), ("line_info", ct.c_void_p),
        ("line_info_cnt", ct.c_uint32), ("line_info_rec_size", ct.c_uint32),
        ("log_level", ct.c_uint32), ("log_size", ct.c_uint32), ("log_buf", ct.c_void_p),
    ]


_lib.bpf_map_create.argtypes = [ct.c_int, ct.c_char_p, ct.c_uint32, ct.c_uint32, ct.c_uint32,
                                ct.POINTER(_MapCreateOpts)]
_lib.bpf_btf_get_fd_by_id.argtypes = [ct.c_uint32]
_lib.bpf_prog_load.argtypes = [ct.c_int, ct.c_char_p, ct.c_char_p, ct.c_char_p, ct.c_size_t,
                               ct.POINTER(_ProgLoadOpts)]

_VERIFIER_LOG_BYTES = 4 << 20
_VERIFIER_LOG_TAIL = 30     # lines of the log kept in the error: the refusal is at the end


def map_create_like(template_fd: int) -> int:
    """A new, empty map shaped like template_fd's: type, sizes, flags, name and BTF types.

    Why the BTF too: `bpftool map dump` prints struct field names only for maps that
    carry their key/value BTF types; the copy references the template's BTF object.
    """
    info = map_info(template_fd)
    btf_fd = btf_get_fd_by_id(info.btf_id) if info.btf_id else -1
    try:
        return map_create_as(info, btf_fd)
    finally:
        if btf_fd >= 0:
            os.close(btf_fd)


def map_create_as(info: MapInfo, btf_fd: int = -1) -> int:
    """A new, empty map with info's type, sizes, flags, capacity and name; with btf_fd (a BTF
    object holding info's key/value type ids) it carries those types. Returns its fd."""
    opts = _MapCreateOpts(sz=ct.sizeof(_MapCreateOpts), map_flags=info.map_flags,
                          map_extra=info.map_extra)
    if btf_fd >= 0:
        opts.btf_fd = btf_fd
        opts.btf_key_type_id = info.btf_key_type_id
        opts.btf_value_type_id = info.btf_value_type_id
        opts.btf_vmlinux_value_type_id = info.btf_vmlinux_value_type_id
    return _check(_lib.bpf_map_create(info.type, info.name.encode(), info.key_size, info.value_size,
                                      info.max_entries, ct.byref(opts)), f"bpf_map_create({info.name})")


_lib.bpf_btf_load.argtypes = [ct.c_void_p, ct.c_size_t, ct.c_void_p]


def btf_load(blob: bytes) -> int:
    """Load a raw BTF object into the kernel (BPF_BTF_LOAD); its fd (caller closes).
    The kernel checks the blob: a damaged one is refused here."""
    buf = ct.create_string_buffer(blob, len(blob))
    return _check(_lib.bpf_btf_load(buf, len(blob), None), "bpf_btf_load")


def map_create(map_type: int, name: str, key_size: int, value_size: int, max_entries: int) -> int:
    """A new map without BTF (a probe's scratch map); returns its fd."""
    opts = _MapCreateOpts(sz=ct.sizeof(_MapCreateOpts))
    return _check(_lib.bpf_map_create(map_type, name.encode(), key_size, value_size, max_entries,
                                      ct.byref(opts)), f"bpf_map_create({name})")


def prog_load(prog_type: int, name: str, insns: bytes, license: str = "GPL",
              expected_attach_type: int = 0) -> int:
    """Load raw instructions; returns the program fd. A refusal carries the verifier log's end.

    The first try has no log (fast); only a refused program is loaded again with one.
    expected_attach_type: required by some types (cgroup sock_addr: which hook).
    """
    buf = ct.create_string_buffer(insns, len(insns))
    opts = _ProgLoadOpts(sz=ct.sizeof(_ProgLoadOpts), expected_attach_type=expected_attach_type)
    args = (prog_type, name.encode(), license.encode(), buf, len(insns) // 8)
    fd = _lib.bpf_prog_load(*args, ct.byref(opts))
    if fd >= 0:
        return fd
    err = -fd if fd < -1 else (ct.get_errno() or errno.EINVAL)
    log = ct.create_string_buffer(_VERIFIER_LOG_BYTES)
    opts.log_level, opts.log_size, opts.log_buf = 1, _VERIFIER_LOG_BYTES, ct.addressof(log)
    fd = _lib.bpf_prog_load(*args, ct.byref(opts))
    if fd >= 0:  # accepted the second time: nothing to report
        return fd
    tail = "\n".join(log.value.decode(errors="replace").splitlines()[-_VERIFIER_LOG_TAIL:])
    raise BpfError(err, f"bpf_prog_load({name}): {os.strerror(err)}\n{tail}")


_lib.bpf_prog_attach.argtypes = [ct.c_int, ct.c_int, ct.c_int, ct.c_uint]
_lib.bpf_prog_detach2.argtypes = [ct.c_int, ct.c_int, ct.c_int]


def prog_attach(prog_fd: int, target_fd: int, attach_type: int) -> None:
    """Attach a program to a target (a cgroup directory's fd) at one hook; replaces none."""
    _check(_lib.bpf_prog_attach(prog_fd, target_fd, attach_type, 0), "bpf_prog_attach")


def prog_detach(prog_fd: int, target_fd: int, attach_type: int) -> bool:
    """Detach that program from the target's hook; False when it was not attached there."""
    rc = _lib.bpf_prog_detach2(prog_fd, target_fd, attach_type)
    return not (rc < 0 and _missing(rc, "bpf_prog_detach2"))


_lib.bpf_prog_query.argtypes = [ct.c_int, ct.c_int, ct.c_uint32, ct.POINTER(ct.c_uint32),
                                ct.POINTER(ct.c_uint32), ct.POINTER(ct.c_uint32)]
_lib.bpf_prog_get_fd_by_id.argtypes = [ct.c_uint32]


def prog_query(target_fd: int, attach_type: int, max_progs: int = 64) -> list[int]:
    """Ids of the programs attached to a target (cgroup fd) at one hook (BPF_PROG_QUERY)."""
    ids = (ct.c_uint32 * max_progs)()
    count, flags = ct.c_uint32(max_progs), ct.c_uint32(0)
    _check(_lib.bpf_prog_query(target_fd, attach_type, 0, ct.byref(flags), ids, ct.byref(count)),
           "bpf_prog_query")
    return list(ids[:count.value])


def prog_get_fd_by_id(prog_id: int) -> int:
    """An fd of the loaded program with that id."""
    return _check(_lib.bpf_prog_get_fd_by_id(prog_id), f"bpf_prog_get_fd_by_id({prog_id})")
