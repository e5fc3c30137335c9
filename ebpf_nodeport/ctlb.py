"""Connect-time load balancing: load bpf/connect.c's cgroup sock_addr programs, configure, attach to a cgroup.

The four programs (connect4, sendmsg4, recvmsg4, getpeername4) read the node's own
service maps (nat_fe, nat_be, nodes), so they are compiled over the node's pin
directory like the TC programs, and pinned next to them as `prog_ctlb_*`; their own
maps are `ctlb_cfg` (netns cookie, which protocols) and `ctlb_nat` (socket, backend ->
frontend). One BCC compile serves a whole lab: the first node's programs are relocated
onto every other node's maps (loader.relocate_map_fds), as loader.load_nodes does.
Attachments to a cgroup outlive the process that made them, so attach/detach/configure
work from any later process through the pins. `loader.remove_pins` removes these pins
with the node's others.
"""
from __future__ import annotations

import ctypes as ct
import json
import os
import subprocess
import time
from typing import Sequence

from . import libbpf, loader
from .maps import MAP_SPECS, pin_dir

ENTRY = "connect.c"
# program -> kernel attach type (enum bpf_attach_type; the same numbers as BCC's BPFAttachType)
PROGRAMS: dict[str, int] = {
    "ctlb_connect4": 10,       # BPF_CGROUP_INET4_CONNECT
    "ctlb_sendmsg4": 14,       # BPF_CGROUP_UDP4_SENDMSG
    "ctlb_recvmsg4": 19,       # BPF_CGROUP_UDP4_RECVMSG
    "ctlb_getpeer4": 29,   # BPF_CGROUP_INET4_GETPEERNAME
}
BPF_PROG_TYPE_CGROUP_SOCK_ADDR = 18
OWN_MAPS = ("ctlb_cfg", "ctlb_nat")
CTLB_F_TCP = 1
CTLB_F_UDP = 2
# FelixConfiguration bpfConnectTimeLoadBalancing -> ctlb_cfg flags
SETTINGS: dict[str, int] = {"TCP": CTLB_F_TCP, "Enabled": CTLB_F_TCP | CTLB_F_UDP, "Disabled": 0}
SO_NETNS_COOKIE = 71

__all__ = ["PROGRAMS", "SETTINGS", "load_nodes", "configure", "attach", "detach", "attached",
           "is_loaded", "prog_pin", "read_cfg"]


class _Cfg(ct.Structure):
    """struct ctlb_cfg (bpf/lib/ctlb.h)."""
    _fields_ = [("netns_cookie", ct.c_uint64), ("flags", ct.c_uint32), ("pad", ct.c_uint32)]


def prog_pin(lab: str, node: str, prog: str) -> str:
    """Pinned path of one ctlb program of a node."""
    return loader.prog_pin(lab, node, prog)


def is_loaded(lab: str, node: str) -> bool:
    """True when the node's four ctlb programs are pinned."""
    return all(os.path.exists(prog_pin(lab, node, p)) for p in PROGRAMS)


def load_nodes(lab: str, nodes: Sequence[str], defines: dict[str, object] | None = None) -> float:
    """Compile connect.c once (first node's maps), load and pin it for every node; seconds taken."""
    if not nodes:
        return 0.0
    from bcc import BPF  # Debian's python3-bpfcc, seen through the venv
    from bcc.libbcc import lib

    t0 = time.monotonic()
    first = nodes[0]
    directory = pin_dir(lab, first)
    os.makedirs(directory, exist_ok=True)
    text = loader.build_source({"PIN_DIR": f'"{directory}"', **(defines or {})}, entries=(ENTRY,))
    with loader._BCC_LOCK:
        try:
            bpf = BPF(text=text, cflags=["-Wno-unused-function", "-Wno-compare-distinct-pointer-types"])
        except Exception as exc:
            raise loader.LoaderError(f"BCC compile of {ENTRY} failed for {lab}/{first}: {exc}") from exc
        try:
            insns: dict[str, bytes] = {}
            for prog, attach_type in PROGRAMS.items():
                try:
                    fn = bpf.load_func(prog, BPF.CGROUP_SOCK_ADDR, attach_type=attach_type)
                except Exception as exc:
                    raise loader.LoaderError(f"kernel refused {prog} for {lab}/{first}: {exc}") from exc
                loader._pin_replace(fn.fd, prog_pin(lab, first, prog))
                insns[prog] = bpf.dump_func(prog)
            names = [n for n in (*MAP_SPECS, *OWN_MAPS) if lib.bpf_table_fd(bpf.module, n.encode()) >= 0]
            template = {n: lib.bpf_table_fd(bpf.module, n.encode()) for n in names}
            for node in nodes[1:]:
                _load_relocated(lab, node, insns, template)
        finally:
            bpf.cleanup()
    return time.monotonic() - t0


def _load_relocated(lab: str, node: str, insns: dict[str, bytes], template: dict[str, int]) -> None:
    """The first node's ctlb programs on this node's own maps (created like the template's when missing)."""
    directory = pin_dir(lab, node)
    os.makedirs(directory, exist_ok=True)
    fds: dict[str, int] = {}
    try:
        for name, tfd in template.items():
            fds[name] = loader._open_or_create_map(os.path.join(directory, name), tfd)
        fd_of = {template[name]: fd for name, fd in fds.items()}
        for prog, attach_type in PROGRAMS.items():
            code = loader.relocate_map_fds(insns[prog], fd_of, f"{lab}/{node} {prog}")
            pfd = libbpf.prog_load(BPF_PROG_TYPE_CGROUP_SOCK_ADDR, prog, code,
                                   expected_attach_type=attach_type)
            try:
                loader._pin_replace(pfd, prog_pin(lab, node, prog))
            finally:
                os.close(pfd)
    finally:
        for fd in fds.values():
            os.close(fd)


def configure(lab: str, node: str, netns_cookie: int, flags: int) -> None:
    """Write ctlb_cfg: the node's namespace (the only one acted for) and which protocols to balance."""
    fd = libbpf.obj_get(os.path.join(pin_dir(lab, node), "ctlb_cfg"))
    try:
        libbpf.map_update(fd, bytes(ct.c_uint32(0)), bytes(_Cfg(netns_cookie, flags, 0)))
    finally:
        os.close(fd)


def read_cfg(lab: str, node: str) -> tuple[int, int]:
    """(netns cookie, flags) as configured."""
    fd = libbpf.obj_get(os.path.join(pin_dir(lab, node), "ctlb_cfg"))
    try:
        raw = libbpf.map_lookup(fd, bytes(ct.c_uint32(0)), ct.sizeof(_Cfg))
    finally:
        os.close(fd)
    cfg = _Cfg.from_buffer_copy(raw or bytes(ct.sizeof(_Cfg)))
    return cfg.netns_cookie, cfg.flags


def _each(lab: str, node: str, cgroup: str, fn) -> list[str]:
    """Call fn(prog_fd, cgroup_fd, attach_type) for each pinned program; the programs it returned True for."""
    done = []
    cg = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for prog, attach_type in PROGRAMS.items():
            path = prog_pin(lab, node, prog)
            if not os.path.exists(path):
                continue
            pfd = libbpf.obj_get(path)
            try:
                if fn(pfd, cg, attach_type) is not False:
                    done.append(prog)
            finally:
                os.close(pfd)
    finally:
        os.close(cg)
    return done


def attach(lab: str, node: str, cgroup: str) -> None:
    """Attach the node's four programs to the cgroup directory (idempotent: detached first)."""
    detach(lab, node, cgroup)
    _each(lab, node, cgroup, libbpf.prog_attach)


def detach(lab: str, node: str, cgroup: str) -> list[str]:
    """Detach the node's programs from the cgroup; the ones that were attached."""
    if not os.path.isdir(cgroup):
        return []
    return _each(lab, node, cgroup, libbpf.prog_detach)


def attached(cgroup: str) -> list[dict[str, str]]:
    """Programs attached to the cgroup itself ({"hook", "program"}), from bpftool."""
    if not os.path.isdir(cgroup):
        return []
    proc = subprocess.run(["bpftool", "-j", "cgroup", "show", cgroup], capture_output=True, text=True)
    if proc.returncode != 0 or not proc.stdout.strip():
        return []
    return [{"hook": e.get("attach_type", ""), "program": e.get("name", "")}
            for e in json.loads(proc.stdout)]
