"""Maglev consistent hashing (Eisenbud et al., NSDI 2016): the lookup table the datapath's `maglev` map holds.

Every backend gets a permutation of the M slots from two hashes of its address and port
(offset, skip); backends take turns claiming their next free slot until all M are full. The
table depends only on the set of backends, not on their order nor on the node computing it,
so every node maps a flow's hash (bpf/lib/nat.h flow_hash, slot = hash % M) to the same
backend, and removing one of N backends moves about 1/N of the slots besides its own
(measured by `disruption`). M is a prime (lb.h MAGLEV_M) so every skip visits every slot.
"""

from __future__ import annotations

import hashlib
import random

from .abi import MAGLEV_M, flow_hash

Backend = tuple[int, int]  # (address as integer, port)


def _offset_skip(b: Backend, m: int) -> tuple[int, int]:
    """A backend's permutation: first slot and step, from SHA-256 of its address and port."""
    digest = hashlib.sha256(b[0].to_bytes(4, "big") + b[1].to_bytes(2, "big")).digest()
    return int.from_bytes(digest[:8], "big") % m, int.from_bytes(digest[8:16], "big") % (m - 1) + 1


def table(backends: list[Backend], m: int = MAGLEV_M) -> list[Backend]:
    """The M-slot lookup table: slot -> backend ([] without backends)."""
    bes = sorted(set(backends))
    if not bes:
        return []
    perms = [_offset_skip(b, m) for b in bes]
    nxt = [0] * len(bes)
    slots: list[int] = [-1] * m
    filled = 0
    while True:
        for i, (offset, skip) in enumerate(perms):
            c = (offset + nxt[i] * skip) % m
            while slots[c] >= 0:
                nxt[i] += 1
                c = (offset + nxt[i] * skip) % m
            slots[c] = i
            nxt[i] += 1
            filled += 1
            if filled == m:
                return [bes[i] for i in slots]


def pick(tbl: list[Backend], saddr: str | int, sport: int, daddr: str | int, dport: int, proto: str | int) -> Backend:
    """The backend the datapath picks for a flow from a table (lb.h lb_pick)."""
    return tbl[flow_hash(saddr, sport, daddr, dport, proto) % len(tbl)]


def disruption(n: int, m: int = MAGLEV_M, flows: int = 20000, seed: int = 1) -> dict[str, float]:
    """Remove 1 of n backends: the share of slots and of random flows that change backend, the share
    of flows that were on the removed one (must move), and the worst backend's share of slots."""
    rng = random.Random(seed)
    bes = [(0xC6131000 + i + 1, 80) for i in range(n)]   # 198.19.16.x:80
    before = table(bes, m)
    gone = bes[rng.randrange(n)]
    after = table([b for b in bes if b != gone], m)
    moved_slots = sum(a != b for a, b in zip(before, after)) / m
    samples = [(rng.getrandbits(32), rng.randrange(1024, 65536)) for _ in range(flows)]
    moved = on_gone = 0
    for saddr, sport in samples:
        was = pick(before, saddr, sport, "198.19.48.1", 80, "tcp")
        on_gone += was == gone
        moved += was != pick(after, saddr, sport, "198.19.48.1", 80, "tcp")
    counts = [before.count(b) for b in bes]
    return {"backends": n, "M": m, "slots_moved": moved_slots, "flows_moved": moved / flows,
            "flows_on_removed": on_gone / flows, "ideal": 1 / n, "max_share": max(counts) / m,
            "min_share": min(counts) / m}
