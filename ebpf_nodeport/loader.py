"""Compile the C datapath with BCC, load its three TC programs, pin maps and programs.

One compile per node: BCC binds map fds into the bytecode at compile time and
each node has its own maps. The maps are declared BPF_TABLE_PINNED, so BCC
itself reuses a map already pinned in the node's directory (a reload keeps
conntrack and services) or creates and pins a new one. Programs are pinned as
`prog_<entry>` so attach/detach work from any later process without a compile.
"""
from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import libbpf
from .maps import MAP_SPECS, PROGRAMS, PIN_ROOT, MapSpec, map_specs, pin_dir

BPF_DIR = Path(__file__).resolve().parent.parent / "bpf"
ENTRY_FILES = tuple(f"{p}.c" for p in PROGRAMS)
_INCLUDE_RE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$')
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

__all__ = ["BPF_DIR", "ENTRY_FILES", "LoadResult", "LoaderError", "build_source", "load",
           "prog_pin", "pin_dir", "PIN_ROOT", "remove_pins"]


class LoaderError(RuntimeError):
    """Compiling or loading the datapath failed; the message says which step."""


@dataclass(frozen=True)
class LoadResult:
    """Where a node's datapath was pinned and what it cost."""
    pin_dir: str
    programs: dict[str, str]          # entry name -> pinned program path
    compile_s: float                  # BCC: clang + map creation/reuse
    load_s: float                     # kernel verifier for the three programs
    reused_maps: tuple[str, ...] = field(default_factory=tuple)   # pins kept from before

    @property
    def total_s(self) -> float:
        return self.compile_s + self.load_s


def prog_pin(lab: str, node: str, prog: str) -> str:
    """Pinned path of one entry program of a node."""
    return os.path.join(pin_dir(lab, node), f"prog_{prog}")


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


def build_source(defines: dict[str, object] | None = None, bpf_dir: Path = BPF_DIR) -> str:
    """The BCC text: #defines, then the topic headers and the three entry files, inlined."""
    lines = [f"#define {k} {v}" for k, v in (defines or {}).items()]
    seen: set[Path] = set()
    for entry in ENTRY_FILES:
        lines.extend(_expand(bpf_dir / entry, seen, bpf_dir))
    return "\n".join(lines) + "\n"


def _check_name(what: str, value: str) -> None:
    if not _NAME_RE.match(value):
        raise LoaderError(f"invalid {what} {value!r}: use letters, digits, '_', '.', '-'")


def _drop_incompatible_pins(directory: str, specs: dict[str, MapSpec]) -> tuple[str, ...]:
    """Remove pinned maps whose layout no longer matches the code; return the kept ones.

    BCC would otherwise reuse a stale map with a different key/value size.
    """
    kept = []
    for name, spec in specs.items():
        path = os.path.join(directory, name)
        if not os.path.exists(path):
            continue
        try:
            fd = libbpf.obj_get(path)
        except OSError:
            os.unlink(path)
            continue
        try:
            info = libbpf.map_info(fd)
        finally:
            os.close(fd)
        if (info.type, info.key_size, info.value_size, info.max_entries) != (
                spec.map_type, spec.key_size, spec.value_size, spec.max_entries):
            os.unlink(path)
        else:
            kept.append(name)
    return tuple(kept)


def _pin_replace(fd: int, path: str) -> None:
    """Pin fd at path, replacing an existing pin atomically (rename over it)."""
    tmp = f"{path}_new"   # bpffs refuses names with a dot
    if os.path.exists(tmp):
        os.unlink(tmp)
    libbpf.obj_pin(fd, tmp)
    os.rename(tmp, path)


# BCC's compiler (LLVM/clang inside libbcc) is not thread-safe: two compiles in
# threads of one process segfault it. Loads in one process are serialised here.
_BCC_LOCK = threading.Lock()


def load(lab: str, node: str, defines: dict[str, object] | None = None) -> LoadResult:
    """Compile for (lab, node), load the three SCHED_CLS programs, pin everything."""
    with _BCC_LOCK:
        return _load(lab, node, defines)


def _load(lab: str, node: str, defines: dict[str, object] | None) -> LoadResult:
    _check_name("lab", lab)
    _check_name("node", node)
    try:
        from bcc import BPF  # Debian's python3-bpfcc, seen through the venv
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise LoaderError("BCC python module not found: install python3-bpfcc "
                          "(and use a venv with --system-site-packages)") from exc

    directory = pin_dir(lab, node)
    os.makedirs(directory, exist_ok=True)
    reused = _drop_incompatible_pins(directory, map_specs(defines))
    all_defines: dict[str, object] = {"PIN_DIR": f'"{directory}"'}
    all_defines.update(defines or {})
    text = build_source(all_defines)

    t0 = time.monotonic()
    try:
        bpf = BPF(text=text, cflags=["-Wno-unused-function", "-Wno-compare-distinct-pointer-types"])
    except Exception as exc:
        raise LoaderError(f"BCC compile failed for {lab}/{node}: {exc}") from exc
    t1 = time.monotonic()
    try:
        fns = {p: bpf.load_func(p, BPF.SCHED_CLS) for p in PROGRAMS}
    except Exception as exc:
        bpf.cleanup()
        raise LoaderError(f"kernel refused a program for {lab}/{node}: {exc}") from exc
    t2 = time.monotonic()
    try:
        programs = {}
        for p, fn in fns.items():
            path = prog_pin(lab, node, p)
            _pin_replace(fn.fd, path)
            programs[p] = path
    finally:
        bpf.cleanup()
    missing = [m for m in MAP_SPECS if not os.path.exists(os.path.join(directory, m))]
    if missing:
        raise LoaderError(f"maps not pinned by BCC under {directory}: {', '.join(missing)}")
    return LoadResult(directory, programs, t1 - t0, t2 - t1, reused)


def remove_pins(lab: str, node: str) -> bool:
    """Remove a node's pin directory (maps and programs); False when there was none."""
    directory = pin_dir(lab, node)
    if not os.path.isdir(directory):
        return False
    for name in os.listdir(directory):
        os.unlink(os.path.join(directory, name))
    os.rmdir(directory)
    # Drop the lab's directory once its last node is gone, and the root once its last lab
    # is (rmdir only removes an empty directory, and load() recreates parents as needed).
    for parent in (os.path.dirname(directory), PIN_ROOT):
        try:
            os.rmdir(parent)
        except OSError:
            break
    return True
