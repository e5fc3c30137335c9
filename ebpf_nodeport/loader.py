"""Compile the C datapath with BCC, load its TC programs (abi.PROGRAMS), pin maps and programs.

BCC binds map fds into the bytecode at compile time and each node has its own
maps. The maps are declared BPF_TABLE_PINNED, so BCC itself reuses a map already
pinned in the node's directory (a reload keeps conntrack and services) or creates
and pins a new one; before that, pins.check() keeps only the pins whose BTF layout
matches abi.py and carries the entries of the others over into the new maps. load()
compiles for one node. load_nodes() compiles once, for the first node, and gives every
other node a relocated copy: its own maps (reused or created like the first node's, BTF
included) and the same instructions with each map fd swapped for its own map's, loaded
through libbpf (a compile is ~1.8 s; a relocated load ~0.8 s with a new 512,000-entry `ct`
map, most of it the verifier). Programs are pinned as `prog_<entry>` so attach/detach work
from any later process without a compile. A compile is kept on disk (bpfcache.py): a
later load of the same code on the same kernel relocates the cached instructions onto
every node, the first too, without BCC. connect.c (ctlb.py) goes the same way (a Build).
The relocated loads run side by side on up to one thread per core (_load_each): each is a
few bpf() calls (map creation, the verifier) in which ctypes releases the GIL.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import logging
import os
import re
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from . import bpfcache, btf, kernel, libbpf, pins
from .abi import MAP_SPECS, PROGRAMS, MapSpec, map_specs

log = logging.getLogger(__name__)

BPF_DIR = Path(__file__).resolve().parent.parent / "bpf"
ENTRY_FILES = tuple(f"{p}.c" for p in PROGRAMS)
_INCLUDE_RE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$')
# The pin directory goes into the C as a string literal (PIN_DIR): no quotes, no escapes.
_PIN_DIR_RE = re.compile(r"^(/[A-Za-z0-9_.-]+)+$")

__all__ = ["BCC_LOCK", "BPF_DIR", "Build", "ENTRY_FILES", "LoadResult", "LoaderError", "TC_BUILD",
           "MAX_LOAD_THREADS", "build_source", "cache_key", "load", "load_build", "load_nodes", "load_threads", "pin_replace", "prog_pin", "relocate_map_fds", "remove_pins"]


PinDir = str | os.PathLike     # a node's pin directory (or an ancestor of one)


class LoaderError(RuntimeError):
    """Compiling or loading the datapath failed; the message says which step."""


@dataclass(frozen=True)
class LoadResult:
    """Where a node's datapath was pinned and what it cost."""
    pin_dir: str
    programs: dict[str, str]          # entry name -> pinned program path
    compile_s: float                  # BCC: clang + map creation/reuse (relocated: maps + fd swap)
    load_s: float                     # kernel verifier for the programs
    reused_maps: tuple[str, ...] = field(default_factory=tuple)   # pins kept from before
    clone_of: str | None = None       # relocated copy of this node's compile (load_nodes)
    upgraded_maps: tuple[str, ...] = field(default_factory=tuple)  # layout changed: entries converted
    replaced_maps: tuple[str, ...] = field(default_factory=tuple)  # could not convert: new, empty
    cached: bool = False              # instructions from the compile cache (bpfcache.py): no BCC

    @property
    def total_s(self) -> float:
        return self.compile_s + self.load_s


def prog_pin(pin_dir: PinDir, prog: str) -> str:
    """Pinned path of one entry program in a node's pin directory."""
    return os.path.join(os.fspath(pin_dir), f"prog_{prog}")


def _expand(path: Path, seen: set[Path], root: Path) -> list[str]:
    """Inline `#include "lib/x.h"` once each, with #line so errors name the real file."""
    out: list[str] = [f'#line 1 "{path.relative_to(root.parent)}"']
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        m = _INCLUDE_RE.match(line)
        if not m:
            out.append(line)
            continue
        inc = (root / m.group(1)).resolve()
        if not inc.is_file():
            raise LoaderError(f"{path}:{lineno}: include not found: {m.group(1)}")
        if inc not in seen:
            seen.add(inc)
            out.extend(_expand(inc, seen, root))
        out.append(f'#line {lineno + 1} "{path.relative_to(root.parent)}"')
    return out


def build_source(defines: dict[str, object] | None = None, bpf_dir: Path = BPF_DIR,
                 entries: Sequence[str] = ENTRY_FILES) -> str:
    """The BCC text: #defines, then the topic headers and the entry files (the TC ones by default), inlined."""
    lines = [f"#define {k} {v}" for k, v in (defines or {}).items()]
    seen: set[Path] = set()
    for entry in entries:
        lines.extend(_expand(bpf_dir / entry, seen, bpf_dir))
    return "\n".join(lines) + "\n"


def _check_pin_dir(pin_dir: PinDir) -> str:
    """pin_dir as a str, if it can be a C string literal and names no parent ('..')."""
    pin_dir = os.fspath(pin_dir)
    if not _PIN_DIR_RE.match(pin_dir) or "/../" in f"{pin_dir}/" or "/./" in f"{pin_dir}/":
        raise LoaderError(f"invalid pin directory {pin_dir!r}: an absolute path of letters, "
                          "digits, '_', '.', '-'")
    return pin_dir


def pin_replace(fd: int, path: str) -> None:
    """Pin fd at path, replacing an existing pin atomically (rename over it)."""
    tmp = f"{path}_new"   # bpffs refuses names with a dot
    if os.path.exists(tmp):
        os.unlink(tmp)
    libbpf.obj_pin(fd, tmp)
    os.rename(tmp, path)


# BCC's compiler (LLVM/clang inside libbcc) is not thread-safe: two compiles in
# threads of one process segfault it. Loads in one process are serialised here.
BCC_LOCK = threading.Lock()
# Threads for the relocated loads of one load_nodes: at most one per core this process may run on.
MAX_LOAD_THREADS = 8
CFLAGS = ("-Wno-unused-function", "-Wno-compare-distinct-pointer-types")
BPF_PROG_TYPE_SCHED_CLS = libbpf.BPF_PROG_TYPE_SCHED_CLS


@dataclass(frozen=True)
class Build:
    """One BCC compile's recipe: its C entry files, its programs (name -> program type and
    expected attach type) and the maps they use; the TC datapath's (TC_BUILD) or ctlb's."""
    entries: tuple[str, ...]
    programs: Mapping[str, tuple[int, int]]
    maps: tuple[str, ...]               # names the programs may use (in this order: cache indices)
    own_specs: Mapping[str, MapSpec]    # the maps this compile owns: pins.check judges them
    all_maps: bool = True               # every name of `maps` must exist in the compile
    feature_defines: bool = True        # kernel.feature_defines() go into the compile

    def specs(self, defines: dict[str, object] | None) -> dict[str, MapSpec]:
        return map_specs(defines, dict(self.own_specs))


TC_BUILD = Build(ENTRY_FILES, {p: (BPF_PROG_TYPE_SCHED_CLS, 0) for p in PROGRAMS}, tuple(MAP_SPECS),
                 MAP_SPECS)


def load(pin_dir: PinDir, defines: dict[str, object] | None = None) -> LoadResult:
    """Compile for one node's pin directory (or load the compile cache's entry), load the
    SCHED_CLS programs, pin everything."""
    return load_nodes({"node": pin_dir}, defines)["node"]


def load_nodes(pin_dirs: Mapping[str, PinDir],
               defines: dict[str, object] | None = None) -> dict[str, LoadResult]:
    """load() for several nodes (name -> pin directory) with one BCC compile: the first's, relocated.

    The first node is compiled as load() does. Every other node gets its own maps
    (a compatible pin is reused, so a reload keeps conntrack and services; a missing
    map is created like the first node's, BTF included) and the first node's
    instructions with each map fd swapped for its own map's, loaded by libbpf.
    With an entry in the compile cache (bpfcache.py) there is no compile at all: every
    node, the first too, gets the cached instructions on its own maps.
    """
    return load_build(TC_BUILD, pin_dirs, defines)


def load_build(build: Build, pin_dirs: Mapping[str, PinDir],
               defines: dict[str, object] | None = None) -> dict[str, LoadResult]:
    """load_nodes() for any Build: from the compile cache when it has the entry, else one BCC
    compile (stored in the cache) relocated onto the other nodes."""
    checked = {node: _check_pin_dir(d) for node, d in pin_dirs.items()}
    if not checked:
        return {}
    (first, first_dir), *rest = checked.items()
    all_defines = _all_defines(build, defines)
    with BCC_LOCK:
        key = _cache_key(build, all_defines)
        results, pinned = _load_cached(build, key, checked, defines) if key else (None, None)
        if results is not None:
            return results
        with _compiled(first_dir, build, all_defines, defines, pinned) as (bpf, res):
            results = {first: res}
            template = _Template.of(bpf, build)
            if key:
                _store(key, template)
            results.update(_load_each(rest, lambda d: _load_relocated(d, build, defines, template, first)))
    return results


def load_threads() -> int:
    """How many relocated loads run at once: the cores this process may use, up to MAX_LOAD_THREADS."""
    return max(1, min(MAX_LOAD_THREADS, len(os.sched_getaffinity(0))))


def _load_each(items: Sequence[tuple[str, str]], load_one: Callable[[str], LoadResult]
               ) -> dict[str, LoadResult]:
    """load_one(pin directory) for each (node, directory), on up to load_threads() threads; results
    in the order given. The verifier and map creation are single bpf() calls that ctypes runs
    without the GIL, so the cores verify side by side (at 20 nodes the verifier alone is ~12 s).
    The first failure cancels the loads not yet started and is raised once the running ones end,
    so, as one after another, no load is left half done."""
    workers = min(len(items), load_threads())
    if workers <= 1:
        return {node: load_one(directory) for node, directory in items}
    pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="bpf-load")
    try:
        futures = {node: pool.submit(load_one, directory) for node, directory in items}
        concurrent.futures.wait(futures.values(), return_when=concurrent.futures.FIRST_EXCEPTION)
    finally:  # also on Ctrl-C: nothing new starts, the running loads end before we go on
        pool.shutdown(wait=True, cancel_futures=True)
    for f in futures.values():
        if not f.cancelled() and f.exception() is not None:
            raise f.exception()  # type: ignore[misc]
    return {node: f.result() for node, f in futures.items()}


def _all_defines(build: Build, defines: dict[str, object] | None) -> dict[str, object]:
    """The compile's defines but PIN_DIR: the kernel's feature defines (TC build), then the caller's."""
    out: dict[str, object] = dict(kernel.feature_defines()) if build.feature_defines else {}
    out.update(defines or {})
    return out


def cache_key(defines: dict[str, object] | None = None, build: Build = TC_BUILD) -> str | None:
    """The compile cache's key for a load with these defines on this kernel (None: cache off)."""
    return _cache_key(build, _all_defines(build, defines))


def _cache_key(build: Build, all_defines: dict[str, object]) -> str | None:
    """The compile cache's key for this build (None: the cache is off)."""
    if bpfcache.directory() is None:
        return None
    text = build_source(all_defines, entries=build.entries)   # PIN_DIR is not in the code
    return bpfcache.key(text, all_defines, build.programs, build.maps, CFLAGS)


def _load_cached(build: Build, key: str, dirs: dict[str, str], defines: dict[str, object] | None
                 ) -> tuple[dict[str, LoadResult] | None, pins.PinCheck | None]:
    """Every node loaded from the cache entry, or (None, the first node's pin check when it
    was made) when there is no usable entry: a bad one is discarded with one warning."""
    entry = bpfcache.read(key)
    if entry is None:
        return None, None
    try:
        entry.check(map_specs(defines, {**MAP_SPECS, **build.own_specs}), build.programs)
        lacking = [m for m in build.own_specs if m not in entry.index()]
        if lacking:
            raise bpfcache.CacheError(f"no map {', '.join(lacking)}")
        template = _Template.of_entry(entry)
    except (bpfcache.CacheError, OSError, ValueError, IndexError) as exc:
        bpfcache.discard(key, str(exc))
        return None, None
    try:
        (first, first_dir), *rest = dirs.items()
        os.makedirs(first_dir, exist_ok=True)
        pinned = pins.check(first_dir, build.specs(defines))
        try:
            res = _load_relocated(first_dir, build, defines, template, None, pinned, cached=True)
        except LoaderError as exc:
            bpfcache.discard(key, str(exc).splitlines()[0])
            return None, pinned
        results = {first: res}
        results.update(_load_each(rest, lambda d: _load_relocated(d, build, defines, template, first,
                                                                   cached=True)))
        return results, None
    finally:
        template.close()


def _store(key: str, template: "_Template") -> None:
    """Write a fresh compile into the cache; a compile that cannot be cached still loads."""
    try:
        entry = template.entry()
    except (LoaderError, OSError, ValueError) as exc:
        log.warning("BPF compile cache: this compile is not cached: %s", exc)
        return
    bpfcache.write(key, entry)


@contextlib.contextmanager
def _compiled(directory: str, build: Build, all_defines: dict[str, object],
              defines: dict[str, object] | None, pinned: pins.PinCheck | None = None
              ) -> Iterator[tuple[Any, LoadResult]]:
    """Compile for one pin directory with BCC, load and pin its programs; BCC's module stays open inside.

    pinned: the directory's pin check when a failed cache load already made it (its
    converted entries are restored into the maps this compile creates)."""
    try:
        from bcc import BPF  # Debian's python3-bpfcc, seen through the venv
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise LoaderError("BCC python module not found: install python3-bpfcc "
                          "(and use a venv with --system-site-packages)") from exc

    os.makedirs(directory, exist_ok=True)
    if pinned is None:
        pinned = pins.check(directory, build.specs(defines))
    text = build_source({"PIN_DIR": f'"{directory}"', **all_defines}, entries=build.entries)

    t0 = time.monotonic()
    try:
        bpf = BPF(text=text, cflags=list(CFLAGS))
    except Exception as exc:
        raise LoaderError(f"BCC compile of {', '.join(build.entries)} failed for {directory}: {exc}") from exc
    try:
        t1 = time.monotonic()
        try:
            fns = {p: bpf.load_func(p, ptype, attach_type=attach if attach else -1)
                   for p, (ptype, attach) in build.programs.items()}
        except Exception as exc:
            raise LoaderError(f"kernel refused a program for {directory}: {exc}") from exc
        t2 = time.monotonic()
        programs = {}
        for p, fn in fns.items():
            path = prog_pin(directory, p)
            pin_replace(fn.fd, path)
            programs[p] = path
        missing = [m for m in build.own_specs if not os.path.exists(os.path.join(directory, m))]
        if missing:
            raise LoaderError(f"maps not pinned by BCC under {directory}: {', '.join(missing)}")
        pinned.restore(directory)
        yield bpf, LoadResult(directory, programs, t1 - t0, t2 - t1, tuple(pinned.reused),
                              upgraded_maps=tuple(pinned.upgraded), replaced_maps=tuple(pinned.replaced))
    finally:
        bpf.cleanup()


# ---- relocating one compile to other nodes ---------------------------------------------

BPF_LD_IMM64 = 0x18          # BPF_LD | BPF_DW | BPF_IMM: a 64-bit immediate over two slots
BPF_CALL = 0x85              # BPF_JMP | BPF_CALL
BPF_PSEUDO_MAP_FD = 1        # ld_imm64 src_reg: imm is a map fd
BPF_PSEUDO_KFUNC_CALL = 2    # call src_reg: imm is a BTF id, off an fd_array index
# The other ld_imm64 sources the kernel knows: a map fd plus a value offset (global data),
# a BTF id, an instruction offset, fd_array indexes. BCC emits none of them today; they
# are refused by name, so a C change that brings one fails loudly here instead of being
# copied unrelocated.
_PSEUDO_LD_NAMES = {2: "BPF_PSEUDO_MAP_VALUE (global data)", 3: "BPF_PSEUDO_BTF_ID",
                    4: "BPF_PSEUDO_FUNC", 5: "BPF_PSEUDO_MAP_IDX", 6: "BPF_PSEUDO_MAP_IDX_VALUE"}


def relocate_map_fds(insns: bytes, fds: dict[int, int], what: str = "program") -> bytes:
    """A copy of `insns` with each map-fd ld_imm64 pointing at fds[its fd].

    Refuses (LoaderError) an fd missing from `fds` and every other fd- or
    index-bearing instruction, which a map-fd swap would leave wrong.
    """
    if len(insns) % 8:
        raise LoaderError(f"{what}: {len(insns)} bytes is not a whole number of instructions")
    out = bytearray(insns)
    i, count = 0, len(out) // 8
    while i < count:
        code, regs, off, imm = struct.unpack_from("<BBhi", out, i * 8)
        src = regs >> 4
        if code == BPF_LD_IMM64:
            if src == BPF_PSEUDO_MAP_FD:
                if imm not in fds:
                    raise LoaderError(f"{what}: instruction {i} loads map fd {imm}, which is "
                                      "not one of the datapath's maps (abi.MAP_SPECS)")
                struct.pack_into("<i", out, i * 8 + 4, fds[imm])
            elif src:
                kind = _PSEUDO_LD_NAMES.get(src, f"unknown pseudo source {src}")
                raise LoaderError(f"{what}: instruction {i} is an ld_imm64 of {kind}: "
                                  "not relocatable by a map-fd swap, compile per node instead")
            i += 2
            continue
        if code == BPF_CALL and src == BPF_PSEUDO_KFUNC_CALL and off:
            raise LoaderError(f"{what}: instruction {i} calls a module kfunc through fd_array "
                              f"slot {off}: not relocatable, compile per node instead")
        i += 1
    return bytes(out)


@dataclass
class _Template:
    """One compile's programs, the number each map's loads carry, and how to make a map like its."""
    insns: dict[str, bytes]                 # program -> instructions (map loads carry ids[map])
    ids: dict[str, int]                     # map name -> its number in insns (BCC's fd, or cache index)
    make_map: Callable[[str], int]          # a new, unpinned map like the compile's `name`
    close: Callable[[], None] = lambda: None

    @classmethod
    def of(cls, bpf: Any, build: Build = TC_BUILD) -> "_Template":
        """From an open BCC module: its instructions and its maps' fds (valid while it is open)."""
        from bcc.libbcc import lib

        fds = {name: lib.bpf_table_fd(bpf.module, name.encode()) for name in build.maps}
        bad = [name for name, fd in fds.items() if fd < 0]
        if bad and build.all_maps:
            raise LoaderError(f"BCC has no table {', '.join(bad)}: bpf/lib/maps.h and "
                              "abi.MAP_SPECS disagree")
        fds = {name: fd for name, fd in fds.items() if fd >= 0}
        return cls({p: bpf.dump_func(p) for p in build.programs}, fds,
                   lambda name: libbpf.map_create_like(fds[name]))

    @classmethod
    def of_entry(cls, entry: bpfcache.Entry) -> "_Template":
        """From a compile cache entry: its BTF objects loaded into the kernel (closed by close())."""
        btf_fds: list[int] = []
        try:
            for blob in entry.btf:
                btf_fds.append(libbpf.btf_load(blob))
        except OSError:
            for fd in btf_fds:
                os.close(fd)
            raise
        records = {m.name: m for m in entry.maps}

        def make_map(name: str) -> int:
            m = records[name]
            return libbpf.map_create_as(m.info, btf_fds[m.btf] if m.btf >= 0 else -1)

        def close() -> None:
            for fd in btf_fds:
                os.close(fd)
        return cls(dict(entry.programs), entry.index(), make_map, close)

    def entry(self) -> bpfcache.Entry:
        """This (BCC) compile as a cache entry: map fds become indices, each map's info and BTF kept."""
        names = list(self.ids)
        index = {self.ids[n]: i for i, n in enumerate(names)}
        programs = {p: relocate_map_fds(insns, index, f"caching {p}") for p, insns in self.insns.items()}
        blobs: list[bytes] = []
        btf_index: dict[int, int] = {}
        records = []
        for n in names:
            info = libbpf.map_info(self.ids[n])
            b = -1
            if info.btf_id:
                if info.btf_id not in btf_index:
                    btf_index[info.btf_id] = len(blobs)
                    blobs.append(btf.btf_blob(info.btf_id))
                b = btf_index[info.btf_id]
            records.append(bpfcache.MapRecord(n, dataclasses.replace(info, id=0, btf_id=0), b))
        return bpfcache.Entry(tuple(records), tuple(blobs), programs)


def _load_relocated(directory: str, build: Build, defines: dict[str, object] | None,
                    template: _Template, source: str | None, pinned: pins.PinCheck | None = None,
                    cached: bool = False) -> LoadResult:
    """Give a node (its pin directory) its own maps and the template's programs relocated onto
    them; pin all, but only once every program was accepted (a refusal leaves no new pin)."""
    os.makedirs(directory, exist_ok=True)
    t0 = time.monotonic()
    if pinned is None:
        pinned = pins.check(directory, build.specs(defines))
    fds: dict[str, int] = {}
    new: list[str] = []
    pfds: dict[str, int] = {}
    try:
        try:
            for name in template.ids:
                path = os.path.join(directory, name)
                if os.path.exists(path):
                    fds[name] = libbpf.obj_get(path)
                else:
                    fds[name] = template.make_map(name)
                    new.append(name)
        except OSError as exc:
            raise LoaderError(f"maps for {directory}: {exc}") from exc
        fd_of = {template.ids[name]: fd for name, fd in fds.items()}
        code = {p: relocate_map_fds(insns, fd_of, f"{directory} {p}")
                for p, insns in template.insns.items()}
        t1 = time.monotonic()
        for p, insns in code.items():
            ptype, attach = build.programs[p]
            try:
                pfds[p] = libbpf.prog_load(ptype, p, insns, expected_attach_type=attach)
            except OSError as exc:
                raise LoaderError(f"kernel refused a program for {directory}: {exc}") from exc
        t2 = time.monotonic()
        try:
            for name in new:
                libbpf.obj_pin(fds[name], os.path.join(directory, name))
            pinned.restore(directory)
        except OSError as exc:
            raise LoaderError(f"maps for {directory}: {exc}") from exc
        programs = {}
        for p, pfd in pfds.items():
            path = prog_pin(directory, p)
            pin_replace(pfd, path)
            programs[p] = path
    finally:
        for fd in (*fds.values(), *pfds.values()):
            os.close(fd)
    return LoadResult(directory, programs, t1 - t0, t2 - t1, tuple(pinned.reused), clone_of=source,
                      upgraded_maps=tuple(pinned.upgraded), replaced_maps=tuple(pinned.replaced),
                      cached=cached)


def remove_pins(pin_dir: PinDir, prune_up_to: PinDir | None = None) -> bool:
    """Remove a node's pin directory (maps and programs); False when there was none.

    prune_up_to: an ancestor of pin_dir; the directories between them, and it, are removed
    too once empty (rmdir only removes an empty directory, and load() recreates parents)."""
    pin_dir = os.fspath(pin_dir)
    if not os.path.isdir(pin_dir):
        return False
    for name in os.listdir(pin_dir):
        os.unlink(os.path.join(pin_dir, name))
    os.rmdir(pin_dir)
    if prune_up_to is not None:
        stop = os.path.normpath(prune_up_to)
        parent = os.path.dirname(os.path.normpath(pin_dir))
        while os.path.commonpath([parent, stop]) == stop:
            try:
                os.rmdir(parent)
            except OSError:
                break
            if parent == stop:
                break
            parent = os.path.dirname(parent)
    return True
