"""Conntrack insert latency tail: an LRU hash against a plain hash, per-run durations of new flows.

`python -m netns_lab.bench.cttail [--syns N] [--churn N] [--reps N]` compiles control's datapath
twice (the `ct` map as a plain preallocated "hash", the default, and as the "lru_hash" it was before,
through the CT_MAP_TYPE define) and, alternating the two builds, times NodePort SYNs through from_hep one
BPF_PROG_TEST_RUN each (every SYN a new connection: two inserts) in three states: a fresh map;
after `churn` connections whose entries were then deleted (what expiry on lookup, a port reuse,
the GC and the bench's clears do); and with those entries kept. Prints p50/p99/p99.9/max ns per
state and map type.
"""

from __future__ import annotations

import argparse
import json
import sys

from netns_lab.bench.stats import percentile


def _measure(kind: str, syns: int, churn: int, lab: str) -> dict[str, list[int]]:
    """Per-run durations of `syns` new NodePort connections in each state, for map type `kind`."""
    from ebpf_nodeport.netns import Netns
    from ebpf_nodeport.testrun import SimCluster, run_prog
    from netns_lab import naming
    from netns_lab.bench import bpfcost

    ns = Netns.private()
    cl = SimCluster(bpfcost.cluster_view(), pin_root=naming.bpf_dir(lab), nodes=["control", "node1"],
                    defines={"CT_MAP_TYPE": f'"{kind}"'})
    out: dict[str, list[int]] = {}
    try:
        with ns.inside():
            cl.load()
            fd = cl["control"].prog_fds["from_hep"]
            syn = bpfcost.tcp_frame(bpfcost.CLIENT, 1, bpfcost.NODES["control"], bpfcost.NP_LOCAL, "S")
            port = [1024]

            def frames(n: int, octet: int) -> list[bytes]:
                base = bpfcost.with_client(syn, octet)
                res = []
                for _ in range(n):
                    port[0] = port[0] + 1 if port[0] < 65000 else 1025
                    res.append(bpfcost.with_sport(base, port[0]))
                return res

            def timed(octet: int) -> list[int]:
                return [run_prog(fd, f).duration_ns for f in frames(syns, octet)]

            out["fresh"] = timed(1)
            cl.clear_ct()
            for f in frames(churn, 2):
                run_prog(fd, f)
            cl.clear_ct()   # every entry deleted
            out["after deletes"] = timed(3)
            cl.clear_ct()
            for f in frames(churn, 4):
                run_prog(fd, f)   # entries kept
            out["entries kept"] = timed(5)
    finally:
        cl.close()
        ns.close()
    return out


def main() -> None:
    """Alternate the two builds `reps` times; print percentiles per state (all reps pooled)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--syns", type=int, default=6000)
    ap.add_argument("--churn", type=int, default=16000)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--lab", default="cttail")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    pooled: dict[str, dict[str, list[int]]] = {"lru_hash": {}, "hash": {}}
    for i in range(a.reps):
        for kind in (("lru_hash", "hash") if i % 2 == 0 else ("hash", "lru_hash")):
            for state, d in _measure(kind, a.syns, a.churn, f"{a.lab}{i}").items():
                pooled[kind].setdefault(state, []).extend(d)
            print(f"rep {i + 1}/{a.reps} {kind} done", file=sys.stderr)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(pooled, f)
    print("| ct map | state | SYNs | p50 ns | p99 ns | p99.9 ns | max ns | runs > 20 us |")
    print("|---|---|---|---|---|---|---|---|")
    for kind, states in pooled.items():
        for state, d in states.items():
            print(f"| {kind} | {state} | {len(d)} | {percentile(d, 50):.0f} | {percentile(d, 99):.0f} | "
                  f"{percentile(d, 99.9):.0f} | {max(d)} | {sum(x > 20000 for x in d)} |")


if __name__ == "__main__":
    main()
