"""What the datapath's building blocks cost on this machine: one tiny TC program per helper or map type.

The per-packet figures of bpfcost.py are sums of these: a hot path's cost is mostly its helper
calls (header loads, map lookups, checksum and store helpers, clock reads) and atomics. Each
program here does one such operation (or a fixed group of them) and nothing else; it is timed with
BPF_PROG_TEST_RUN in a hot loop (every operation leaves the packet as it was) against an empty
program, so the figure is the operation alone. Maps have the datapath's key and value sizes.
"""

from __future__ import annotations

import ctypes as ct
from typing import Any

from netns_lab.bench.stats import median

REPEAT = 20000
BATCHES = 5

SOURCE = r"""
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/tcp.h>

struct k16 { u32 a; u32 b; u16 pa; u16 pb; u8 proto; u8 pad[3]; };
struct v64 { u64 w[8]; };
struct lpm_key { u32 prefixlen; u32 addr; };

BPF_TABLE("lru_hash", struct k16, struct v64, p_lru, 65536);
BPF_TABLE("hash", u64, u64, p_hash, 65536);
BPF_LPM_TRIE(p_lpm, struct lpm_key, u64, 1024);
BPF_TABLE("percpu_array", u32, u64, p_pcpu, 96);
BPF_TABLE("array", u32, u64, p_arr, 1);

static __always_inline struct k16 key_of(int n) {
    struct k16 k = {};
    k.a = 0x0a000001; k.b = 0x0a000002 + n; k.pa = 1; k.pb = 2; k.proto = 6;
    return k;
}

int prim_empty(struct __sk_buff *skb) { return 0; }

int prim_ktime(struct __sk_buff *skb) { return bpf_ktime_get_ns() == 0; }

int prim_ktime_coarse(struct __sk_buff *skb) { return bpf_ktime_get_coarse_ns() == 0; }

/* The same three headers read in place (direct packet access), as bpf/lib/parse.h does. */
int prim_direct_headers(struct __sk_buff *skb) {
    void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data; struct iphdr *ip = data + 14; struct tcphdr *th = data + 34;
    if ((void *)(th + 1) > end) return 2;
    return (eth->h_proto + ip->ttl + th->doff) == 0;
}

int prim_load_headers(struct __sk_buff *skb) {
    struct ethhdr eth; struct iphdr ip; struct tcphdr th;
    if (bpf_skb_load_bytes(skb, 0, &eth, sizeof(eth)) < 0) return 2;
    if (bpf_skb_load_bytes(skb, 14, &ip, sizeof(ip)) < 0) return 2;
    if (bpf_skb_load_bytes(skb, 34, &th, sizeof(th)) < 0) return 2;
    return (eth.h_proto + ip.ttl + th.doff) == 0;
}

int prim_lru_hit(struct __sk_buff *skb) {
    struct k16 k = key_of(0);
    return p_lru.lookup(&k) == NULL;
}

int prim_lru_miss(struct __sk_buff *skb) {
    struct k16 k = key_of(1);
    return p_lru.lookup(&k) != NULL;
}

int prim_hash_miss(struct __sk_buff *skb) {
    u64 k = 0x1234;
    return p_hash.lookup(&k) != NULL;
}

int prim_lpm(struct __sk_buff *skb) {
    struct lpm_key k = { .prefixlen = 32, .addr = 0x4210130a };
    return p_lpm.lookup(&k) == NULL;
}

int prim_percpu_inc(struct __sk_buff *skb) {
    u32 i = 7;
    u64 *c = p_pcpu.lookup(&i);
    if (c) *c += 1;
    return 0;
}

int prim_atomic4(struct __sk_buff *skb) {
    u32 i = 0;
    u64 *c = p_arr.lookup(&i);
    if (!c) return 2;
    __sync_fetch_and_add(c, 1); __sync_fetch_and_add(c, 1);
    __sync_fetch_and_add(c, 1); __sync_fetch_and_add(c, 1);
    return 0;
}

/* One L4 checksum helper call (an address, pseudo-header): what rewrite_l3l4 now makes per NAT. */
int prim_l4_csum1(struct __sk_buff *skb) {
    return bpf_l4_csum_replace(skb, 50, 0x0a000001, 0x0a000001, BPF_F_PSEUDO_HDR | 4) < 0;
}

/* The conntrack clock as pkt_now() reads it: bpf_jiffies64() (inlined) and a per-CPU cache, the
 * coarse clock called only when the jiffy changed. */
struct clk { u64 j; u64 ns; };
BPF_TABLE("percpu_array", u32, struct clk, p_clk, 1);
int prim_clock_cached(struct __sk_buff *skb) {
    u32 i = 0; struct clk *c = p_clk.lookup(&i); u64 j = bpf_jiffies64();
    if (!c) return 2;
    if (c->j != j) { c->ns = bpf_ktime_get_coarse_ns(); c->j = j; }
    return c->ns == 0;
}

/* A DNAT rewrite of address and port as rewrite_l3l4 does it, writing back the same values. */
int prim_rewrite(struct __sk_buff *skb) {
    u32 addr; u16 port;
    if (bpf_skb_load_bytes(skb, 30, &addr, 4) < 0 || bpf_skb_load_bytes(skb, 36, &port, 2) < 0) return 2;
    if (bpf_l4_csum_replace(skb, 50, addr, addr, BPF_F_PSEUDO_HDR | 4) < 0) return 2;
    if (bpf_l3_csum_replace(skb, 24, addr, addr, 4) < 0) return 2;
    if (bpf_skb_store_bytes(skb, 30, &addr, 4, 0) < 0) return 2;
    if (bpf_l4_csum_replace(skb, 50, port, port, 2) < 0) return 2;
    if (bpf_skb_store_bytes(skb, 36, &port, 2, 0) < 0) return 2;
    return 0;
}

/* The same rewrite as the datapath does it now: the two L4 checksum helpers, then the
 * address, port and IPv4 header checksum written in place. */
int prim_rewrite_direct(struct __sk_buff *skb) {
    void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
    u32 addr; u16 port;
    if (data + 54 > end) return 2;
    addr = *(u32 *)(data + 30); port = *(u16 *)(data + 36);
    if (bpf_l4_csum_replace(skb, 50, addr, addr, BPF_F_PSEUDO_HDR | 4) < 0) return 2;
    if (bpf_l4_csum_replace(skb, 50, port, port, 2) < 0) return 2;
    data = (void *)(long)skb->data; end = (void *)(long)skb->data_end;
    if (data + 54 > end) return 2;
    *(u32 *)(data + 30) = addr; *(u16 *)(data + 36) = port;
    *(u16 *)(data + 24) = *(u16 *)(data + 24);
    return 0;
}
"""

# name -> (what it is, how many of them the program does)
PRIMITIVES = {
    "prim_ktime": ("bpf_ktime_get_ns()", 1),
    "prim_ktime_coarse": ("bpf_ktime_get_coarse_ns()", 1),
    "prim_load_headers": ("bpf_skb_load_bytes x3 (Ethernet, IPv4, TCP headers)", 3),
    "prim_direct_headers": ("the same 3 headers read in place (direct packet access)", 3),
    "prim_lru_hit": ("LRU hash lookup, 16-byte key, hit (conntrack)", 1),
    "prim_lru_miss": ("LRU hash lookup, 16-byte key, miss (conntrack)", 1),
    "prim_hash_miss": ("hash lookup, 8-byte key, miss (frontends)", 1),
    "prim_lpm": ("LPM trie lookup, /32 in 3 prefixes (routes)", 1),
    "prim_percpu_inc": ("per-CPU array lookup + increment (counters)", 1),
    "prim_atomic4": ("4 atomic adds (conntrack packet/byte counters)", 4),
    "prim_l4_csum1": ("bpf_l4_csum_replace() x1 (an address: what a NAT rewrite calls now)", 1),
    "prim_clock_cached": ("conntrack clock as read now: bpf_jiffies64() + per-CPU cache (coarse clock once per jiffy)", 1),
    "prim_rewrite": ("DNAT rewrite: 2 loads, 2 l4_csum + 1 l3_csum + 2 store_bytes", 7),
    "prim_rewrite_direct": ("DNAT rewrite: 2 l4_csum, address/port/IPv4 checksum written in place", 2),
}

# Primitives only some kernels have (ebpf_nodeport/kernel.py): left out, and named, elsewhere.
NEEDS = {"prim_ktime_coarse": "HAVE_KTIME_COARSE", "prim_clock_cached": "HAVE_KTIME_COARSE"}


def available() -> dict[str, tuple[str, int]]:
    """The primitives the running kernel can load."""
    from ebpf_nodeport import kernel

    return {n: v for n, v in PRIMITIVES.items() if n not in NEEDS or kernel.has(NEEDS[n])}


def _fill_maps(bpf: Any) -> None:
    """One conntrack-like entry to hit, three /26 routes."""
    lru = bpf["p_lru"]
    k = lru.Key(a=0x0A000001, b=0x0A000002, pa=1, pb=2, proto=6)
    lru[k] = lru.Leaf()
    lpm = bpf["p_lpm"]
    for i, net in enumerate((0x0010130A, 0x4010130A, 0x8010130A)):  # 10.19.16.{0,64,128}/26 as stored bytes
        lpm[lpm.Key(prefixlen=26, addr=net)] = ct.c_uint64(i)


def measure(frame: bytes) -> dict[str, Any]:
    """ns per operation group for each primitive (hot loop, empty program subtracted), plus the empty program's."""
    from bcc import BPF

    from ebpf_nodeport.testrun import run_prog

    bpf = BPF(text=SOURCE, cflags=["-Wno-unused-function"])
    try:
        _fill_maps(bpf)
        prims = available()
        fds = {name: bpf.load_func(name, BPF.SCHED_CLS).fd for name in ["prim_empty", *prims]}
        empty: list[int] = []
        out: dict[str, Any] = {}
        for name, (what, count) in prims.items():
            diffs = []
            for _ in range(BATCHES):
                e = run_prog(fds["prim_empty"], frame, repeat=REPEAT).duration_ns
                p = run_prog(fds[name], frame, repeat=REPEAT).duration_ns
                empty.append(e)
                diffs.append(p - e)
            out[name] = {"what": what, "ops": count, "ns": median(diffs), "batches_ns": diffs}
        return {"primitives": out, "empty_program_ns": median(empty), "repeat": REPEAT,
                "missing": sorted(set(PRIMITIVES) - set(prims))}
    finally:
        bpf.cleanup()
