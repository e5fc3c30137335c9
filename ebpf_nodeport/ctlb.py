"""Connect-time load balancing: load bpf/connect.c's cgroup sock_addr programs, configure, attach to a cgroup.

The four programs (connect4, sendmsg4, recvmsg4, getpeername4) read the node's own
service maps (nat_fe, nat_be, nodes, cfg), so they are compiled over the node's pin
directory like the TC programs, and pinned next to them as `prog_ctlb_*`; their own
maps (abi.CTLB_MAP_SPECS) are `ctlb_cfg` (netns cookie, which protocols) and `ctlb_nat`
(socket, backend -> frontend). One BCC compile serves several nodes: the first node's
programs are relocated onto every other node's maps (loader.relocate_map_fds), as
loader.load_nodes does. Attachments to a cgroup outlive the process that made them, so
attach/detach/configure work from any later process through the pins. loader.remove_pins
removes these pins with the node's others.
"""
from __future__ import annotations

import errno
import os
import socket
import struct
import subprocess
import threading
import time
from typing import Any, Callable, Mapping

from . import libbpf, loader
from .abi import CTLB_F_TCP, CTLB_F_UDP, CTLB_MAP_SPECS, CTLB_PROGRAMS, MAP_SPECS, U32, CtlbCfg
from .netns import Netns

ENTRY = "connect.c"
BPF_PROG_TYPE_CGROUP_SOCK_ADDR = 18
# FelixConfiguration bpfConnectTimeLoadBalancing -> ctlb_cfg flags
SETTINGS: dict[str, int] = {"TCP": CTLB_F_TCP, "Enabled": CTLB_F_TCP | CTLB_F_UDP, "Disabled": 0}
SO_NETNS_COOKIE = 71

__all__ = ["SETTINGS", "attach", "attached", "configure", "detach", "is_loaded", "load_nodes",
           "netns_cookie", "read_cfg"]


def is_loaded(pin_dir: loader.PinDir) -> bool:
    """True when the node's four ctlb programs are pinned in pin_dir."""
    return all(os.path.exists(loader.prog_pin(pin_dir, p)) for p in CTLB_PROGRAMS)


# connect.c's compile: its programs read the node's TC maps (opened where pinned) and own ctlb_*.
CTLB_BUILD = loader.Build((ENTRY,), {p: (BPF_PROG_TYPE_CGROUP_SOCK_ADDR, a) for p, a in CTLB_PROGRAMS.items()},
                          (*MAP_SPECS, *CTLB_MAP_SPECS), CTLB_MAP_SPECS, all_maps=False, feature_defines=False)


def load_nodes(pin_dirs: Mapping[str, loader.PinDir], defines: dict[str, object] | None = None) -> float:
    """Compile connect.c once (first node's maps), or take it from the compile cache, load and
    pin it for every node (name -> pin directory); seconds taken. Pins of the ctlb maps with
    another layout are converted or replaced as loader.load does (pins.check)."""
    t0 = time.monotonic()
    loader.load_build(CTLB_BUILD, pin_dirs, defines)
    return time.monotonic() - t0


def netns_cookie(netns: Netns, scratch_cgroup: str) -> int:
    """The kernel's cookie of a network namespace, the value bpf_get_netns_cookie() gives connect.c.

    SO_NETNS_COOKIE of a socket opened in it (5.14); where that socket option is missing
    (5.10: ENOPROTOOPT) a cgroup sock_create program reads it instead (_cookie_by_program),
    in a scratch cgroup made under scratch_cgroup (a cgroup with no programs of its own)."""
    with netns.socket() as s:
        try:
            return struct.unpack("Q", s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8))[0]
        except OSError as exc:
            if exc.errno != errno.ENOPROTOOPT:
                raise
    return _cookie_by_program(netns, scratch_cgroup)


def _rmdir_cgroup(path: str) -> None:
    """Remove an emptied cgroup; EBUSY while its exited process is still being released."""
    for _ in range(50):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise
            time.sleep(0.1)
    os.rmdir(path)


BPF_PROG_TYPE_CGROUP_SOCK = 9
BPF_CGROUP_INET_SOCK_CREATE = 2
BPF_MAP_TYPE_ARRAY = 2
_BPF_FUNC_MAP_UPDATE_ELEM, _BPF_FUNC_GET_NETNS_COOKIE = 2, 122


def _cookie_prog(map_fd: int) -> bytes:
    """cgroup/sock_create: map[0] = bpf_get_netns_cookie(ctx) of the socket being created; allow it."""
    insn = struct.Struct("<BBhi")

    def op(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
        return insn.pack(code, dst | src << 4, off, imm)

    return b"".join([
        op(0x85, imm=_BPF_FUNC_GET_NETNS_COOKIE),   # r0 = bpf_get_netns_cookie(r1 = ctx)
        op(0x7B, 10, 0, -8),                        # *(u64 *)(r10 - 8) = r0
        op(0x62, 10, off=-12, imm=0),               # *(u32 *)(r10 - 12) = 0 (key)
        op(0x18, 1, 1, imm=map_fd), op(0),          # r1 = map (ld_imm64, BPF_PSEUDO_MAP_FD)
        op(0xBF, 2, 10), op(0x07, 2, imm=-12),      # r2 = &key
        op(0xBF, 3, 10), op(0x07, 3, imm=-8),       # r3 = &cookie
        op(0xB7, 4, imm=0),                         # r4 = BPF_ANY
        op(0x85, imm=_BPF_FUNC_MAP_UPDATE_ELEM),
        op(0xB7, 0, imm=1),                         # r0 = 1: allow the socket
        op(0x95),
    ])


def _cookie_by_program(netns: Netns, scratch_cgroup: str) -> int:
    """The netns cookie as a BPF program sees it (kernels without SO_NETNS_COOKIE, 5.7 on).

    A cgroup program is the only one given bpf_get_netns_cookie() there, so: a scratch
    cgroup with a sock_create program storing the cookie, and one short-lived process that
    joins that cgroup, enters the namespace and opens a UDP socket (bash's /dev/udp)."""
    cg = os.path.join(scratch_cgroup, f"netns-cookie-{os.getpid()}-{threading.get_ident()}")
    map_fd = libbpf.map_create(BPF_MAP_TYPE_ARRAY, "np_cookie", 4, 8, 1)
    prog_fd = cg_fd = -1
    try:
        prog_fd = libbpf.prog_load(BPF_PROG_TYPE_CGROUP_SOCK, "np_cookie", _cookie_prog(map_fd),
                                   expected_attach_type=BPF_CGROUP_INET_SOCK_CREATE)
        os.mkdir(cg)
        cg_fd = os.open(cg, os.O_RDONLY | os.O_DIRECTORY)
        libbpf.prog_attach(prog_fd, cg_fd, BPF_CGROUP_INET_SOCK_CREATE)
        enter = ["nsenter", f"--net={netns.path}", "--"] if netns.path else []
        script = 'echo $$ > "$1/cgroup.procs" && exec "${@:2}" bash -c "exec 3<>/dev/udp/127.0.0.1/9"'
        subprocess.run(["bash", "-c", script, "bash", cg, *enter], capture_output=True, timeout=60)
        raw = libbpf.map_lookup(map_fd, bytes(U32(0)), 8)
        cookie = struct.unpack("Q", raw)[0] if raw else 0
        if not cookie:
            raise OSError(errno.ENOENT, f"no socket was created in {netns.name} to read its netns cookie from")
        return cookie
    finally:
        if cg_fd >= 0:
            libbpf.prog_detach(prog_fd, cg_fd, BPF_CGROUP_INET_SOCK_CREATE)
            os.close(cg_fd)
        _rmdir_cgroup(cg)
        for fd in (prog_fd, map_fd):
            if fd >= 0:
                os.close(fd)


def configure(pin_dir: loader.PinDir, cookie: int, flags: int) -> None:
    """Write ctlb_cfg: the node's namespace (the only one acted for) and which protocols to balance."""
    fd = libbpf.obj_get(os.path.join(os.fspath(pin_dir), "ctlb_cfg"))
    try:
        libbpf.map_update(fd, bytes(U32(0)), bytes(CtlbCfg(netns_cookie=cookie, flags=flags)))
    finally:
        os.close(fd)


def read_cfg(pin_dir: loader.PinDir) -> tuple[int, int]:
    """(netns cookie, flags) as configured."""
    fd = libbpf.obj_get(os.path.join(os.fspath(pin_dir), "ctlb_cfg"))
    try:
        raw = libbpf.map_lookup(fd, bytes(U32(0)), CTLB_MAP_SPECS["ctlb_cfg"].value_size)
    finally:
        os.close(fd)
    cfg = CtlbCfg.from_bytes(raw or bytes(CTLB_MAP_SPECS["ctlb_cfg"].value_size))
    return cfg.netns_cookie, cfg.flags


def _each(pin_dir: loader.PinDir, cgroup: str, fn: Callable[[int, int, int], Any]) -> list[str]:
    """Call fn(prog_fd, cgroup_fd, attach_type) for each pinned program; the programs it did not return False for."""
    done = []
    cg = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for prog, attach_type in CTLB_PROGRAMS.items():
            path = loader.prog_pin(pin_dir, prog)
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


def attach(pin_dir: loader.PinDir, cgroup: str) -> None:
    """Attach the node's four programs to the cgroup directory (idempotent: detached first)."""
    detach(pin_dir, cgroup)
    _each(pin_dir, cgroup, libbpf.prog_attach)


def detach(pin_dir: loader.PinDir, cgroup: str) -> list[str]:
    """Detach the node's programs from the cgroup; the ones that were attached."""
    if not os.path.isdir(cgroup):
        return []
    return _each(pin_dir, cgroup, libbpf.prog_detach)


# bpftool's names of the hooks connect.c uses (abi.CTLB_PROGRAMS' attach types)
HOOK_NAMES = {10: "cgroup_inet4_connect", 14: "cgroup_udp4_sendmsg", 19: "cgroup_udp4_recvmsg",
              29: "cgroup_inet4_getpeername"}


def attached(cgroup: str) -> list[dict[str, str]]:
    """Programs attached to the cgroup itself at connect.c's hooks ({"hook", "program"}).

    Asked with BPF_PROG_QUERY, not bpftool: Debian 12's bpftool cannot read program info
    from 5.10 (E2BIG on fields 5.10 lacks) and lists nothing there."""
    if not os.path.isdir(cgroup):
        return []
    out = []
    cg = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for attach_type, hook in HOOK_NAMES.items():
            for prog_id in libbpf.prog_query(cg, attach_type):
                try:
                    fd = libbpf.prog_get_fd_by_id(prog_id)
                except OSError:
                    continue  # unloaded meanwhile
                try:
                    out.append({"hook": hook, "program": libbpf.prog_info(fd).name})
                finally:
                    os.close(fd)
    finally:
        os.close(cg)
    return out
