"""Compile the C datapath with BCC, load its TC programs (abi.PROGRAMS), pin maps and programs.

BCC binds map fds into the bytecode at compile time and each node has its own
maps. The maps are declared BPF_TABLE_PINNED, so BCC itself reuses a map already
pinned in the node's directory (a reload keeps conntrack and services) or creates
and pins a new one; before that, pins.check() keeps only the pins whose BTF layout
matches abi.py and carries the entries of the others over into the new maps. load() compiles for one node. load_nodes() compiles once, for
the first node, and gives every other node a relocated copy: its own maps (reused
or created like the first node's, BTF included) and the same instructions with each
map fd swapped for its own map's, loaded through libbpf (a compile is ~1.8 s, a
relocated load ~50 ms). Programs are pinned as `prog_<entry>` so attach/detach work
from any later process without a compile.
"""
from __future__ import annotations

import contextlib
import os
import re
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from . import kernel, libbpf, pins
from .abi import MAP_SPECS, PROGRAMS, map_specs

BPF_DIR = Path(__file__).resolve().parent.parent / "bpf"
ENTRY_FILES = tuple(f"{p}.c" for p in PROGRAMS)
_INCLUDE_RE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$')
# The pin directory goes into the C as a string literal (PIN_DIR): no quotes, no escapes.
_PIN_DIR_RE = re.compile(r"^(/[A-Za-z0-9_.-]+)+$")

__all__ = ["BCC_LOCK", "BPF_DIR", "ENTRY_FILES", "LoadResult", "LoaderError", "build_source", "load",
           "load_nodes", "open_or_create_map", "pin_replace", "prog_pin", "relocate_map_fds", "remove_pins"]


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


def load(pin_dir: PinDir, defines: dict[str, object] | None = None) -> LoadResult:
    """Compile for one node's pin directory, load the SCHED_CLS programs, pin everything."""
    directory = _check_pin_dir(pin_dir)
    with BCC_LOCK, _compiled(directory, defines) as (_, res):
        return res


def load_nodes(pin_dirs: Mapping[str, PinDir],
               defines: dict[str, object] | None = None) -> dict[str, LoadResult]:
    """load() for several nodes (name -> pin directory) with one BCC compile: the first's, relocated.

    The first node is compiled as load() does. Every other node gets its own maps
    (a compatible pin is reused, so a reload keeps conntrack and services; a missing
    map is created like the first node's, BTF included) and the first node's
    instructions with each map fd swapped for its own map's, loaded by libbpf.
    """
    checked = {node: _check_pin_dir(d) for node, d in pin_dirs.items()}
    if not checked:
        return {}
    (first, first_dir), *rest = checked.items()
    with BCC_LOCK, _compiled(first_dir, defines) as (bpf, res):
        results = {first: res}
        template = _Template.of(bpf)
        for node, directory in rest:
            results[node] = _load_relocated(directory, defines, template, first)
    return results


@contextlib.contextmanager
def _compiled(directory: str, defines: dict[str, object] | None) -> Iterator[tuple[Any, LoadResult]]:
    """Compile for one pin directory with BCC, load and pin its programs; BCC's module stays open inside."""
    try:
        from bcc import BPF  # Debian's python3-bpfcc, seen through the venv
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise LoaderError("BCC python module not found: install python3-bpfcc "
                          "(and use a venv with --system-site-packages)") from exc

    os.makedirs(directory, exist_ok=True)
    pinned = pins.check(directory, map_specs(defines))
    all_defines: dict[str, object] = {"PIN_DIR": f'"{directory}"', **kernel.feature_defines()}
    all_defines.update(defines or {})
    text = build_source(all_defines)

    t0 = time.monotonic()
    try:
        bpf = BPF(text=text, cflags=["-Wno-unused-function", "-Wno-compare-distinct-pointer-types"])
    except Exception as exc:
        raise LoaderError(f"BCC compile failed for {directory}: {exc}") from exc
    try:
        t1 = time.monotonic()
        try:
            fns = {p: bpf.load_func(p, BPF.SCHED_CLS) for p in PROGRAMS}
        except Exception as exc:
            raise LoaderError(f"kernel refused a program for {directory}: {exc}") from exc
        t2 = time.monotonic()
        programs = {}
        for p, fn in fns.items():
            path = prog_pin(directory, p)
            pin_replace(fn.fd, path)
            programs[p] = path
        missing = [m for m in MAP_SPECS if not os.path.exists(os.path.join(directory, m))]
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


@dataclass(frozen=True)
class _Template:
    """One compile's programs and the map fds their instructions carry, by map name."""
    insns: dict[str, bytes]           # entry -> instructions as BCC handed them to the kernel
    map_fds: dict[str, int]           # map name -> BCC's fd (valid while its module is open)

    @classmethod
    def of(cls, bpf: Any) -> "_Template":
        from bcc.libbcc import lib

        fds = {name: lib.bpf_table_fd(bpf.module, name.encode()) for name in MAP_SPECS}
        bad = [name for name, fd in fds.items() if fd < 0]
        if bad:
            raise LoaderError(f"BCC has no table {', '.join(bad)}: bpf/lib/maps.h and "
                              "abi.MAP_SPECS disagree")
        return cls({p: bpf.dump_func(p) for p in PROGRAMS}, fds)


def open_or_create_map(path: str, template_fd: int) -> int:
    """fd of the map pinned at path, else of a new one shaped like the template's, pinned there."""
    if os.path.exists(path):
        return libbpf.obj_get(path)
    fd = libbpf.map_create_like(template_fd)
    try:
        libbpf.obj_pin(fd, path)
    except OSError:
        os.close(fd)
        raise
    return fd


def _load_relocated(directory: str, defines: dict[str, object] | None,
                    template: _Template, source: str) -> LoadResult:
    """Give a node (its pin directory) its own maps and the template's programs relocated onto
    them; pin all."""
    os.makedirs(directory, exist_ok=True)
    t0 = time.monotonic()
    pinned = pins.check(directory, map_specs(defines))
    fds: dict[str, int] = {}
    try:
        try:
            for name, tfd in template.map_fds.items():
                fds[name] = open_or_create_map(os.path.join(directory, name), tfd)
            pinned.restore(directory)
        except OSError as exc:
            raise LoaderError(f"maps for {directory}: {exc}") from exc
        fd_of = {template.map_fds[name]: fd for name, fd in fds.items()}
        code = {p: relocate_map_fds(insns, fd_of, f"{directory} {p}")
                for p, insns in template.insns.items()}
        t1 = time.monotonic()
        programs = {}
        for p, insns in code.items():
            try:
                pfd = libbpf.prog_load(libbpf.BPF_PROG_TYPE_SCHED_CLS, p, insns)
            except OSError as exc:
                raise LoaderError(f"kernel refused a program for {directory}: {exc}") from exc
            try:
                path = prog_pin(directory, p)
                pin_replace(pfd, path)
                programs[p] = path
            finally:
                os.close(pfd)
        t2 = time.monotonic()
    finally:
        for fd in fds.values():
            os.close(fd)
    return LoadResult(directory, programs, t1 - t0, t2 - t1, tuple(pinned.reused), clone_of=source,
                      upgraded_maps=tuple(pinned.upgraded), replaced_maps=tuple(pinned.replaced))


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
