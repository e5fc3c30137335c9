"""What one conntrack GC pass costs at a map size: the per-lab cleaner's work every 10 s.

`python -m netns_lab.bench.ctgc [--flows N] [--expired SHARE] [--passes N] [--map-type hash|lru_hash]
[--repo DIR ...]` creates a `ct`-shaped map (abi.CtKey/CtValue, room for every entry) outside any
lab, fills it with N NAT flows (a NAT_FWD and its NAT_REV each, established TCP), SHARE of them idle
past their timeout, and times `datapath.gc_conntrack` on it: the first pass (deletes the expired
flows) and then passes that find nothing (the steady state of a busy map). Each `--repo` is a
checkout whose `ebpf_nodeport` is timed, one after another on the same map contents, so an old and a
new GC compare in one run (default: this checkout). Needs root and bpffs; its one pin (under
/sys/fs/bpf/netns-lab/ctgcbench) goes when it ends.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from netns_lab import naming

CONTROL, CLIENTS, BACKENDS = 0xC6130001, 0xC6130F00, 0xC6131041   # lab addresses (198.19.x)
NODEPORT, BE_PORT = 30180, 8080
PIN_LAB = "ctgcbench"


def fill(libbpf, abi, fd: int, flows: int, expired: float, now: int, seed: int = 1) -> int:
    """Write `flows` NAT flows; a share `expired` of them idle past the established timeout. Entries written."""
    rng = random.Random(seed)
    est = abi.CT_TIMEOUTS_NS["CT_TIMEOUT_TCP_EST"]
    syn_ack = abi.TCPF_SYN | abi.TCPF_ACK
    written = 0
    for i in range(flows):
        client, cport = CLIENTS + (i >> 15), 1024 + (i & 0x7FFF)
        backend = BACKENDS + i % 3
        seen = now - (est + abi.SEC_NS if rng.random() < expired else abi.SEC_NS)
        fk, fwd_a = abi.ct_key(client, cport, CONTROL, NODEPORT, 6)
        rk, rev_a = abi.ct_key(client, cport, backend, BE_PORT, 6)
        for key, client_is_a, kind, nat_addr, nat_port in ((fk, fwd_a, abi.CT_NAT_FWD, backend, BE_PORT),
                                                            (rk, rev_a, abi.CT_NAT_REV, CONTROL, NODEPORT)):
            flags = abi.CT_F_NODEPORT | (0 if client_is_a else abi.CT_F_CLIENT_IS_B)
            v = abi.CtValue(created_ns=seen, last_seen_ns=seen, type=kind, flags=flags, tcp_a=syn_ack,
                            tcp_b=syn_ack, nat_addr=nat_addr, nat_port=nat_port)
            libbpf.map_update(fd, bytes(key), bytes(v))
            written += 1
    return written


@contextlib.contextmanager
def tree(repo: Path | None) -> Iterator[tuple]:
    """`ebpf_nodeport` of a checkout as (libbpf, abi, maps, datapath) modules; None: the one imported
    here. Another checkout's is imported afresh and this process's own is put back afterwards, so
    callers holding its classes (a test run) keep working."""
    names = ("libbpf", "abi", "maps", "datapath")
    if repo is None:
        yield tuple(importlib.import_module(f"ebpf_nodeport.{m}") for m in names)
        return
    ours = {m: sys.modules.pop(m) for m in list(sys.modules) if m == "ebpf_nodeport" or m.startswith("ebpf_nodeport.")}
    sys.path.insert(0, str(repo))
    try:
        yield tuple(importlib.import_module(f"ebpf_nodeport.{m}") for m in names)
    finally:
        sys.path.remove(str(repo))
        for m in [m for m in sys.modules if m == "ebpf_nodeport" or m.startswith("ebpf_nodeport.")]:
            del sys.modules[m]
        sys.modules.update(ours)


def time_tree(repo: Path | None, args: argparse.Namespace) -> dict[str, float]:
    """Fill a fresh map, then time the tree's GC passes over it: seconds per pass."""
    with tree(repo) as (libbpf, abi, maps, datapath):
        return _time(libbpf, abi, maps, datapath, args)


def _time(libbpf, abi, maps, datapath, args: argparse.Namespace) -> dict[str, float]:
    map_type = {"hash": 1, "lru_hash": 9}[args.map_type]
    fd = libbpf.map_create(map_type, "ct", 16, 64, 2 * args.flows + 1024)
    pin = naming.bpf_dir(PIN_LAB) / "ct"     # under the lab pin root: `down --all` finds it after a crash
    try:
        pin.parent.mkdir(parents=True, exist_ok=True)
        libbpf.obj_pin(fd, str(pin))
        # The GC's clock, past every stamp fill() writes: an expired entry is stamped an hour and
        # more before it, and a machine booted less than that ago (a test VM) has a smaller
        # monotonic clock, which a u64 stamp would wrap into the future. This map is the tool's
        # own (no program stamps it), so its clock need not be the kernel's.
        now = abi.ktime_ns() + abi.CT_TIMEOUTS_NS["CT_TIMEOUT_TCP_EST"] + 2 * abi.SEC_NS
        entries = fill(libbpf, abi, fd, args.flows, args.expired, now)
        view = maps.MapView(str(pin), abi.CtKey, abi.CtValue)
        try:
            t0 = time.perf_counter()
            deleted = datapath.gc_conntrack(view, now_ns=now)
            first = time.perf_counter() - t0
            quiet = []
            for _ in range(args.passes):
                t0 = time.perf_counter()
                datapath.gc_conntrack(view, now_ns=now)
                quiet.append(time.perf_counter() - t0)
        finally:
            view.close()
    finally:
        pin.unlink(missing_ok=True)
        pin.parent.rmdir()
        with contextlib.suppress(OSError):      # the lab pin root too, when nothing else is in it
            naming.BPF_ROOT.rmdir()
        os.close(fd)
    return {"entries": entries, "deleted": deleted, "first_s": first, "quiet_s": sorted(quiet)[len(quiet) // 2]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m netns_lab.bench.ctgc", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--flows", type=int, default=262_144, help="NAT flows, two entries each (default: %(default)s)")
    p.add_argument("--expired", type=float, default=0.2, help="share idle past its timeout (default: %(default)s)")
    p.add_argument("--passes", type=int, default=3, help="passes after the first, median shown (default: %(default)s)")
    p.add_argument("--map-type", choices=["hash", "lru_hash"], default="hash")
    p.add_argument("--repo", type=Path, action="append", help="a checkout to time (repeatable; default: this one)")
    args = p.parse_args(argv)
    if args.flows < 1 or not 0 <= args.expired <= 1 or args.passes < 1:
        p.error("--flows and --passes must be at least 1, --expired within 0..1")
    for repo in args.repo or []:
        if not (repo / "ebpf_nodeport" / "datapath.py").is_file():
            p.error(f"--repo {repo}: not a checkout of this project (no ebpf_nodeport/datapath.py)")
    print(f"{'tree':<28} {'entries':>8} {'deleted':>8} {'first pass s':>13} {'quiet pass s':>13}")
    for repo in args.repo or [None]:
        r = time_tree(repo, args)
        print(f"{str(repo or 'this checkout'):<28} {r['entries']:>8} {r['deleted']:>8} {r['first_s']:>13.3f} "
              f"{r['quiet_s']:>13.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
