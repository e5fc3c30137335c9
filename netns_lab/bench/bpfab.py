"""Per-packet cost of two source trees, interleaved: before/after tables for datapath changes.

`python -m netns_lab.bench.bpfab BEFORE_TREE AFTER_TREE [MORE_TREES...] [--names a,b,...] [--reps N]
[--runs N]` runs bpfcost.run() (the bench's own BPF_PROG_TEST_RUN method, primitives included)
alternately from each tree (the order reversed every other rep), in a fresh process each time, N
times each, so every build meets the same machine load; per path it
prints the median ns per run and the median multiple of one conntrack LRU hit measured in the
same process (the primitives' `prim_lru_hit`, a hot loop), and of the same LRU hit timed the
paths' way (repeat=1 runs after warm-up, minus the empty program). A tree is a checkout of this repository (e.g.
`git archive main | tar -x -C /tmp/base`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from statistics import median



def child(lab: str, runs: int) -> None:
    """In the measured tree's process: bpfcost.run() and the repeat=1 LRU hit, as one JSON line."""
    from netns_lab.bench import bpfcost

    r = bpfcost.run(lab, runs)
    print(json.dumps({"lru": r["primitives"]["primitives"]["prim_lru_hit"]["ns"], "lru1": lru_hit_repeat1(runs),
                      "paths": [[p["program"], p["node"], p["flow"], p["path"], p["ns_per_packet"],
                                 p["raw_repeat1_ns"]["mean"] - p["empty_program_repeat1_ns"]["mean"],
                                 p["raw_repeat1_ns"]["p99"]]
                                for p in r["paths"]]}))


def lru_hit_repeat1(runs: int) -> float:
    """One conntrack LRU hit timed the way bpfcost times a path: repeat=1 runs after WARM warm-up runs,
    each paired with the empty program's; the median difference. The bench's primitive is a hot loop
    (repeat 20,000), which leaves out what a single warm run costs beyond the loop."""
    from bcc import BPF

    from ebpf_nodeport.testrun import run_prog
    from netns_lab.bench import bpfcost, primitives
    from netns_lab.bench.stats import median as med

    frame = bpfcost.tcp_frame(bpfcost.CLIENT, 40000, bpfcost.NODES["control"], bpfcost.NP_LOCAL, "A")
    bpf = BPF(text=primitives.SOURCE, cflags=["-Wno-unused-function"])
    try:
        primitives._fill_maps(bpf)
        hit, empty = (bpf.load_func(n, BPF.SCHED_CLS).fd for n in ("prim_lru_hit", "prim_empty"))
        diffs = []
        for _ in range(runs):
            for _ in range(bpfcost.WARM):
                run_prog(hit, frame)
            p = run_prog(hit, frame).duration_ns
            for _ in range(bpfcost.WARM):
                run_prog(empty, frame)
            diffs.append(p - run_prog(empty, frame).duration_ns)
        return float(med(diffs))
    finally:
        bpf.cleanup()


def one(tree: str, lab: str, runs: int) -> dict:
    """One bpfcost run from `tree` in a fresh process."""
    env = {**os.environ, "PYTHONPATH": tree}
    # this file run as a script: its own code, the measured tree's netns_lab and ebpf_nodeport
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", lab, str(runs)], env=env, cwd=tree,
                          capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"bpfcost run from {tree} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(res: dict[str, list[dict]]) -> str:
    """Markdown: per path, median ns and median multiple of the LRU hit, per tree (paths matched by name)."""
    names = list(res)
    rows = ["| program | node | path | " + " | ".join(f"{n} ns | {n} x LRU hit | {n} x LRU hit (repeat=1)"
                                                   for n in names) + " |",
            "|---|---|---|" + "---|---|---|" * len(names)]
    keys: list[tuple[str, str, str, str]] = []
    for n in names:   # every path of every tree, in the order the trees list them
        for prog, node, flow, path, *_ in res[n][0]["paths"]:
            if (prog, node, flow, path) not in keys:
                keys.append((prog, node, flow, path))
    for key in keys:
        cells = []
        for n in names:
            runs = [(r, next((p[4] for p in r["paths"] if tuple(p[:4]) == key), None)) for r in res[n]]
            runs = [(r, ns) for r, ns in runs if ns is not None]
            if not runs:
                cells += ["-", "-", "-"]
                continue
            x1 = [ns / r["lru1"] for r, ns in runs if r["lru1"] > 0]
            cells += [f"{median(ns for _, ns in runs):.0f}", f"{median(ns / r['lru'] for r, ns in runs):.1f}",
                      f"{median(x1):.1f}" if x1 else "-"]
        rows.append(f"| {key[0]} | {key[1]} | {key[2]}: {key[3]} | " + " | ".join(cells) + " |")
    rows += ["", "New flows, the whole distribution: the median above leaves out what a map type pays once per"
             " batch of inserts (the LRU refills a CPU's free list 128 elements at a time), the mean and p99"
             " do not (mean: the path's mean duration minus the empty program's; p99: the path's raw"
             " duration; medians of the runs):", "",
             "| program | node | path | " + " | ".join(f"{n} p50 ns | {n} mean ns | {n} p99 ns" for n in names) + " |",
             "|---|---|---|" + "---|---|---|" * len(names)]
    for key in (k for k in keys if k[2] == "new"):
        cells = []
        for n in names:
            ps = [p for r in res[n] for p in r["paths"] if tuple(p[:4]) == key and len(p) > 6]
            cells += [f"{median(p[4] for p in ps):.0f}", f"{median(p[5] for p in ps):.0f}",
                      f"{median(p[6] for p in ps):.0f}"] if ps else ["-", "-", "-"]
        rows.append(f"| {key[0]} | {key[1]} | {key[3]} | " + " | ".join(cells) + " |")
    lru = " / ".join(f"{n} {median(r['lru'] for r in res[n]):.0f} ns" for n in names)
    lru1 = " / ".join(f"{n} {median(r['lru1'] for r in res[n]):.0f} ns" for n in names)
    return ("\n".join(rows) + f"\n\nconntrack LRU hit, the bench's primitive (hot loop, median of the runs): {lru}"
            f"\nconntrack LRU hit timed as the paths are (repeat=1 after warm-up, minus the empty program): {lru1}\n")


def main() -> None:
    """Run the trees alternately and print the table (and the raw runs as JSON with --json)."""
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], int(sys.argv[3]))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trees", nargs="+", metavar="TREE", help="two or more source trees")
    ap.add_argument("--names", default=None, help="comma-separated column names (default: before,after)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--lab", default=f"ab{os.getpid()}")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    names = a.names.split(",") if a.names else (["before", "after"] if len(a.trees) == 2 else
                                                [f"t{i}" for i in range(len(a.trees))])
    if len(a.trees) < 2 or len(names) != len(a.trees):
        ap.error(f"need two or more trees and one name per tree (got {len(a.trees)} trees, {len(names)} names)")
    res: dict[str, list[dict]] = {n: [] for n in names}
    for i in range(a.reps):
        order = list(zip(range(len(names)), names, a.trees))[:: 1 if i % 2 == 0 else -1]
        for j, name, tree in order:
            res[name].append(one(tree, f"{a.lab}{j}", a.runs))
            print(f"rep {i + 1}/{a.reps} {name} done", file=sys.stderr)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    print(table(res))


if __name__ == "__main__":
    main()
