"""One conntrack insert alone, plain hash against LRU hash: what a new flow's insert costs in each map state.

`python -m netns_lab.bench.ctinsert [--n N] [--reps N] [--kinds lru_hash,hash]` loads a TC program
that only inserts one key (the `ct` map's key and value sizes, 65,536 entries, the key taken from
the packet) and times single inserts (BPF_PROG_TEST_RUN repeat=1, each paired with an empty
program; the median difference) in the states a new flow meets:

- `fresh`: a map never used (its free elements in the order the kernel laid them out);
- `emptied`: after the map was filled and every entry deleted from user space (the bench's
  `clear_ct()`, or a cleaner pass over a full map);
- `emptied_other_cpu`: the same, but the deletes ran on the other CPU than the inserts;
- `past_half`: a fresh map after 34,000 inserts on the same CPU, i.e. past the half of the free
  elements the kernel gave this CPU's free list at creation: each insert takes one from the other
  CPU's list;
- `steady`: a map holding `live` entries in which every insert follows a delete of the oldest
  entry by the datapath (expiry on lookup, a port reuse) on the same CPU: a map in use;
- `steady_user`: the same, the oldest entries deleted from user space in batches of 1,000
  (the cleaner).

The map kinds alternate per rep in one process, so both meet the same machine load. Besides
p50/p90/p99 it prints the mean, and what every 128th insert costs: the inserts are numbered within each rep, split
by their number modulo 128 (the LRU's LOCAL_FREE_TARGET, how many free elements its common list
hands a CPU at once), and the dearest of those 128 classes' medians is printed ("every 128th").
A map that fetches its free elements in batches shows one class far above the median (the insert
that refilled the CPU's list); one that takes an element per insert shows one near its p90.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys

from netns_lab.bench.stats import median, percentile

BATCH = 128   # kernel/bpf/bpf_lru_list.c LOCAL_FREE_TARGET

SOURCE = r"""
#include <uapi/linux/bpf.h>
struct k16 { u32 a; u32 b; u32 c; u32 d; };
struct v64 { u64 x[8]; };
BPF_TABLE(MAPTYPE, struct k16, struct v64, m, MAXN);

/* The key is the 16 bytes after the Ethernet header. */
static __always_inline int get_key(struct __sk_buff *skb, struct k16 *k)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;

	if (data + 14 + sizeof(*k) > end)
		return -1;
	__builtin_memcpy(k, data + 14, sizeof(*k));
	return 0;
}

int ins(struct __sk_buff *skb)
{
	struct k16 k;
	struct v64 v = {};

	if (get_key(skb, &k))
		return 0;
	v.x[0] = bpf_ktime_get_ns();
	return m.update(&k, &v) ? 2 : 0;
}

int del(struct __sk_buff *skb)
{
	struct k16 k;

	if (get_key(skb, &k))
		return 0;
	return m.delete(&k) ? 2 : 0;
}

int empty(struct __sk_buff *skb) { return 0; }
"""

MAXN = 65536
KINDS = ("lru_hash", "hash")
STATES = ("fresh", "emptied", "emptied_other_cpu", "past_half", "steady", "steady_user")


def frame(i: int) -> bytes:
    """A 64-byte frame carrying key i (as a ct_key-sized 16 bytes)."""
    return b"\x02" * 12 + b"\x08\x00" + struct.pack("!IIII", 0xC6130F00 | (i >> 16), 0xC6130001, i & 0xFFFF, 6) \
        + b"\0" * 34


class Bench:
    """One compiled map kind: insert, delete and empty programs, and the map."""

    def __init__(self, kind: str):
        from bcc import BPF

        self.kind = kind
        self.bpf = BPF(text=SOURCE, cflags=[f'-DMAPTYPE="{kind}"', f"-DMAXN={MAXN}", "-Wno-unused-function"])
        self.ins, self.dele, self.empty = (self.bpf.load_func(n, BPF.SCHED_CLS).fd for n in ("ins", "del", "empty"))
        self.m = self.bpf["m"]

    def run(self, fd: int, i: int) -> int:
        """One run of program fd on key i; its duration in ns."""
        from ebpf_nodeport.testrun import run_prog

        r = run_prog(fd, frame(i), out_room=0)
        if r.retval:
            raise RuntimeError(f"{self.kind}: program {fd} failed on key {i}")
        return r.duration_ns

    def timed_insert(self, i: int) -> int:
        """Insert key i, timed, minus an empty run right after."""
        return self.run(self.ins, i) - self.run(self.empty, i)

    def clear(self) -> None:
        """Delete every entry from user space (bucket order, as clear_ct() does)."""
        self.m.clear()

    def close(self) -> None:
        self.bpf.cleanup()


def pin(cpu: int | None) -> None:
    """Run this process on one CPU (None: any)."""
    os.sched_setaffinity(0, {cpu} if cpu is not None else set(range(os.cpu_count() or 1)))


def measure(b: Bench, state: str, n: int, base: int, cpu: int, other: int, live: int) -> list[int]:
    """n timed inserts in `state`, keys from base on; the map is left empty."""
    out: list[int] = []
    pin(cpu)
    if state == "fresh":
        out = [b.timed_insert(base + i) for i in range(n)]
    elif state in ("emptied", "emptied_other_cpu"):
        for i in range(MAXN):
            b.run(b.ins, base + 100000 + i)
        pin(other if state == "emptied_other_cpu" else cpu)
        b.clear()
        pin(cpu)
        out = [b.timed_insert(base + i) for i in range(n)]
    elif state == "past_half":
        for i in range(34000):
            b.run(b.ins, base + 100000 + i)
        out = [b.timed_insert(base + i) for i in range(n)]
    elif state == "steady":
        for i in range(live):
            b.run(b.ins, base + i)
        for i in range(n):
            b.run(b.dele, base + i)
            out.append(b.timed_insert(base + live + i))
    elif state == "steady_user":
        for i in range(live):
            b.run(b.ins, base + i)
        keys = b.m.Key
        for i in range(n):
            if i % 1000 == 0:
                for j in range(i, min(i + 1000, n)):
                    kb = frame(base + j)[14:30]
                    k = keys.from_buffer_copy(kb)
                    del b.m[k]
            out.append(b.timed_insert(base + live + i))
    b.clear()
    pin(None)
    return out


def batch_peak(segments: list[list[int]], period: int = BATCH) -> float:
    """Median over segments of the dearest (insert number mod period) class's median, in ns."""
    peaks = [max(median(seg[o::period]) for o in range(period)) for seg in segments if len(seg) >= period * 4]
    return median(peaks) if peaks else float("nan")


def main() -> None:
    """Alternate the kinds per rep and print median / p90 / p99 ns per state."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3000, help="timed inserts per state and rep")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--states", default=",".join(STATES))
    ap.add_argument("--cpu", type=int, default=1, help="the CPU the inserts run on")
    ap.add_argument("--live", type=int, default=30000, help="entries held in the steady states")
    a = ap.parse_args()
    kinds = a.kinds.split(",")
    states = a.states.split(",")
    other = 0 if a.cpu else 1
    res: dict[tuple[str, str], list[list[int]]] = {}
    benches = {k: Bench(k) for k in kinds}
    try:
        base = 0
        for rep in range(a.reps):
            for state in states:
                for kind in kinds[:: 1 if rep % 2 == 0 else -1]:
                    base += 1 << 20
                    # a fresh map is a new one (an emptied map is another state)
                    b = Bench(kind) if state == "fresh" else benches[kind]
                    try:
                        res.setdefault((kind, state), []).append(measure(b, state, a.n, base, a.cpu, other, a.live))
                    finally:
                        if b is not benches[kind]:
                            b.close()
            print(f"rep {rep + 1}/{a.reps} done", file=sys.stderr)
    finally:
        for b in benches.values():
            b.close()
    print("| state | " + " | ".join(f"{k} p50 | {k} p90 | {k} p99 | {k} mean | {k} every 128th" for k in kinds)
          + " | " + " | ".join(f"{k} / {kinds[0]} p50 | {k} / {kinds[0]} mean" for k in kinds[1:]) + " |")
    print("|---|" + "---|---|---|---|---|" * len(kinds) + "---|---|" * (len(kinds) - 1))

    def flat(k: str, s: str) -> list[int]:
        return [x for seg in res[(k, s)] for x in seg]

    for s in states:
        cells = []
        for k in kinds:
            v = flat(k, s)
            cells += [f"{median(v):.0f}", f"{percentile(v, 90):.0f}", f"{percentile(v, 99):.0f}",
                      f"{sum(v) / len(v):.0f}", f"{batch_peak(res[(k, s)]):.0f}"]
        v0 = flat(kinds[0], s)
        for k in kinds[1:]:
            v = flat(k, s)
            cells += [f"{median(v) / median(v0):.2f}", f"{(sum(v) / len(v)) / (sum(v0) / len(v0)):.2f}"]
        print(f"| {s} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
