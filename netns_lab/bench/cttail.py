"""Conntrack insert latency tail: an LRU hash against a plain hash, per-run durations of new flows.

`python -m netns_lab.bench.cttail [--syns N] [--churn N] [--reps N]` compiles control's datapath
twice (the `ct` map as a plain preallocated "hash", the default, and as the "lru_hash" it was before,
through the CT_MAP_TYPE define) and, alternating the two builds, times NodePort SYNs through from_hep one
BPF_PROG_TEST_RUN each (every SYN a new connection: two inserts) in three states: a fresh map;
after `churn` connections whose entries were then deleted (what expiry on lookup, a port reuse,
the GC and the bench's clears do); and with those entries kept. Prints p50/p99/p99.9/max ns per
state and map type, and how long one GC pass over a full plain-hash map takes (the lab's cleaner).
"""

from __future__ import annotations

import argparse
import json
import sys

from netns_lab.bench.stats import percentile


DEFAULT_KIND = "hash"   # what maps.h builds by default
# map kinds compared: the CT_MAP_TYPE / CT_MAP_FLAGS defines of bpf/lib/maps.h
KINDS: dict[str, dict[str, object]] = {
    "lru_hash": {"CT_MAP_TYPE": '"lru_hash"'},
    "hash": {"CT_MAP_TYPE": '"hash"', "CT_MAP_FLAGS": 0},
    "hash_noprealloc": {"CT_MAP_TYPE": '"hash"', "CT_MAP_FLAGS": 1},   # BPF_F_NO_PREALLOC
}


def _measure(kind: str, syns: int, churn: int, lab: str) -> dict[str, list[int]]:
    """Per-run durations of `syns` new NodePort connections in each state, for map type `kind`."""
    from ebpf_nodeport.netns import Netns
    from ebpf_nodeport.testrun import SimCluster, run_prog
    from netns_lab import naming
    from netns_lab.bench import bpfcost

    ns = Netns.private()
    cl = SimCluster(bpfcost.cluster_view(), pin_root=naming.bpf_dir(lab), nodes=["control", "node1"],
                    defines=KINDS[kind])
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
            if kind == DEFAULT_KIND:
                out.update(_gc_pass(cl["control"]))
    finally:
        cl.close()
        ns.close()
    return out


def _gc_pass(node) -> dict[str, list[int]]:
    """One GC pass (what the lab's cleaner runs, netns_lab/apps/ctclean.py) over a full map, in ns:
    with no entry expired, and with every entry expired (each deleted by its own syscall)."""
    import time

    from ebpf_nodeport import abi

    out = {}
    cap = node.maps.ct.info.max_entries
    for label, ahead in (("GC pass, full, none expired", 0),
                         ("GC pass, full, all expired", abi.CT_TIMEOUTS_NS["CT_TIMEOUT_TCP_EST"] + abi.SEC_NS)):
        node.clear_ct()
        now = abi.ktime_ns()
        v = abi.CtValue(created_ns=now, last_seen_ns=now, type=abi.CT_NAT_REV, tcp_a=abi.TCPF_SYN | abi.TCPF_ACK,
                        tcp_b=abi.TCPF_SYN | abi.TCPF_ACK)
        for i in range(cap):
            node.maps.ct.put(abi.ct_key(0xCB007100 + (i >> 8), 1024 + (i & 0xFF), 0xC6131041, 80, "tcp")[0], v)
        t0 = time.monotonic_ns()
        node.dp.gc(now_ns=now + ahead)
        out[label] = [time.monotonic_ns() - t0]
    node.clear_ct()
    return out


def main() -> None:
    """Alternate the two builds `reps` times; print percentiles per state (all reps pooled)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--syns", type=int, default=6000)
    ap.add_argument("--churn", type=int, default=16000)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--lab", default="cttail")
    ap.add_argument("--json", default=None)
    ap.add_argument("--kinds", default="lru_hash,hash", help=f"map kinds to compare, of {', '.join(KINDS)}")
    a = ap.parse_args()
    kinds = a.kinds.split(",")
    if not set(kinds) <= set(KINDS):
        ap.error(f"--kinds: one or more of {', '.join(KINDS)}")
    pooled: dict[str, dict[str, list[int]]] = {k: {} for k in kinds}
    for i in range(a.reps):
        for kind in (kinds if i % 2 == 0 else kinds[::-1]):
            for state, d in _measure(kind, a.syns, a.churn, f"{a.lab}{i}").items():
                pooled[kind].setdefault(state, []).extend(d)
            print(f"rep {i + 1}/{a.reps} {kind} done", file=sys.stderr)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(pooled, f)
    print(table(pooled))


def table(pooled: dict[str, dict[str, list[int]]]) -> str:
    """Markdown: per map kind and state, the percentiles and mean of the per-run durations; then the GC passes."""
    from statistics import mean

    rows = ["| ct map | state | SYNs | p50 ns | p99 ns | p99.9 ns | max ns | mean ns | runs > 20 us |",
            "|---|---|---|---|---|---|---|---|---|"]
    for kind, states in pooled.items():
        for state, d in states.items():
            if not state.startswith("GC pass"):
                rows.append(f"| {kind} | {state} | {len(d)} | {percentile(d, 50):.0f} | {percentile(d, 99):.0f} | "
                            f"{percentile(d, 99.9):.0f} | {max(d)} | {mean(d):.0f} | {sum(x > 20000 for x in d)} |")
    gc = [f"{state} ({len(d)} passes, Python): " + ", ".join(f"{x / 1e9:.2f} s" for x in d)
          for state, d in pooled.get(DEFAULT_KIND, {}).items() if state.startswith("GC pass")]
    return "\n".join(rows + ([""] + gc if gc else []))


if __name__ == "__main__":
    main()
