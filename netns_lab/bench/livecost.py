"""Per-packet cost of the attached programs in live traffic: the kernel's own BPF run-time statistics.

BPF_PROG_TEST_RUN times a program alone; this times it where it runs, on the lab's real packets:
while an fd from BPF_ENABLE_STATS is open the kernel adds each run's duration to the program's
run_time_ns and counts run_cnt (read here from the pinned program's info, libbpf.prog_info). Statistics are
on only around the measured runs, and go off by themselves if the process dies (the fd closes).
The kernel's own timing around each run is not included in run_time_ns.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from ebpf_nodeport import libbpf
from ebpf_nodeport.abi import PROGRAMS
from ebpf_nodeport.loader import prog_pin

Snapshot = dict[str, tuple[int, int]]  # "node/program" -> (run_time_ns, run_cnt)


@contextlib.contextmanager
def stats_enabled() -> Iterator[bool]:
    """Kernel BPF run-time statistics on for the block; yields False if the kernel refused."""
    try:
        fd = libbpf.enable_stats(libbpf.BPF_STATS_RUN_TIME)
    except OSError:
        fd = -1
    try:
        yield fd >= 0
    finally:
        if fd >= 0:
            os.close(fd)


def snapshot(pin_dirs: dict[str, str]) -> Snapshot:
    """run_time_ns and run_cnt of every pinned entry program of each node (node -> pin directory)."""
    out: Snapshot = {}
    for node, directory in pin_dirs.items():
        for prog in PROGRAMS:
            try:
                fd = libbpf.obj_get(prog_pin(directory, prog))
            except OSError:
                continue
            try:
                info = libbpf.prog_info(fd)
            finally:
                os.close(fd)
            out[f"{node}/{prog}"] = (info.run_time_ns, info.run_cnt)
    return out


def delta(before: Snapshot, after: Snapshot) -> dict[str, dict[str, Any]]:
    """Runs and ns per run of each program between two snapshots (programs that did not run are left out)."""
    out = {}
    for key, (t1, n1) in after.items():
        t0, n0 = before.get(key, (0, 0))
        runs = n1 - n0
        if runs > 0:
            out[key] = {"runs": runs, "ns_per_run": (t1 - t0) / runs}
    return out
