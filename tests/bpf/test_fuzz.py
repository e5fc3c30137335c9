"""Fuzz: at least FUZZ_PER_ENTRY (default 100,000) random and mutated packets through each
entry program (spread over the three nodes), with live conntrack state from real flows.

Asserted for every packet: the kernel accepts the run; the verdict is OK, SHOT or REDIRECT;
a malformed IPv4/TCP/UDP packet is dropped; a forwarded output is the input untouched or a
well-formed rewrite of it (fuzz.Judge). Asserted per node and program: the reason counters
grew by exactly the number of packets run, and DROP_MALFORMED by at least the malformed ones.
Seeded (NETNS_LAB_FUZZ_SEED): a failure names the seed and the packet, so it replays.
"""
from __future__ import annotations

import ipaddress
import os
import time
import zlib
from collections import defaultdict

from ebpf_nodeport import abi, libbpf
from ebpf_nodeport.abi import HOOK_IDS, MAX_REASONS, PROGRAMS

from .cases import CASES
from .fuzz import Judge, Mutator, malformed, min_len
from .paths import reply_dsr, reply_local, reply_tunnel, request_local, request_tunnel
from .topo import (CLIENT, CLIENT2, CONTROL, CUSTOMER, CUSTOMER_CIP, DATABASE, DATABASE_CIP, MAC_CALI, MAC_POD,
                   NODE1, NODE2, NODES, NP_CUSTOMER, NP_ECHO, NP_WEB, SUMMARY1, SUMMARY2, SUMMARY_CIP, WEB,
                   arp, base_view, cport, icmp_echo, ipv6, reply, tcp, udp, vxlan)

SEED = int(os.environ.get("NETNS_LAB_FUZZ_SEED", "20251127"))
PER_ENTRY = int(os.environ.get("NETNS_LAB_FUZZ_PER_ENTRY", "100000"))


def _pod(frame) -> bytes:
    from scapy.layers.l2 import Ether
    p = Ether(bytes(frame))
    p.src, p.dst = MAC_POD, MAC_CALI
    return bytes(p)


def _record_flows(cluster) -> dict[tuple[str, str], list[bytes]]:
    """Walk real connections (leaving their conntrack state in place) and keep every frame
    each program saw: mutations of these reach the deep paths (replies, decap, reverse NAT)."""
    seen: dict[tuple[str, str], list[bytes]] = defaultdict(list)
    real_run = cluster.run

    def run(node, entry, frame, **kw):
        seen[(node, entry)].append(bytes(frame))
        return real_run(node, entry, frame, **kw)

    cluster.run = run
    try:
        for mode in ("tunnel", "dsr"):
            cluster.sync(base_view(mode=mode, dsr_optout=["198.19.15.192/27"]))
            for ingress in ("control", "node2"):
                for client in (CLIENT, CLIENT2):
                    fe = (NODES[ingress], NP_CUSTOMER)
                    dsr = mode == "dsr" and client == CLIENT
                    at_pod = request_tunnel(cluster, bytes(tcp(client, cport(), fe[0], fe[1], "S")), ingress,
                                            "node1", (CUSTOMER, 80), first=True, dsr=dsr, fe_port=NP_CUSTOMER,
                                            where="corpus")
                    if dsr:
                        back = reply_dsr(cluster, reply(at_pod, "SA", b"hello"), "node1", fe, where="corpus")
                    else:
                        back = reply_tunnel(cluster, reply(at_pod, "SA", b"hello"), ingress, "node1", fe,
                                            where="corpus")
                    request_tunnel(cluster, reply(back, "PA", b"GET /"), ingress, "node1", (CUSTOMER, 80),
                                   first=False, dsr=dsr, fe_port=NP_CUSTOMER, where="corpus")
            at_pod = request_local(cluster, bytes(udp(CLIENT, cport(), NODE1, NP_ECHO, b"u")), "node1",
                                   (CUSTOMER, 7), first=True, where="corpus")
            reply_local(cluster, reply(at_pod), "node1", (NODE1, NP_ECHO), where="corpus")
            at_pod = request_local(cluster, bytes(tcp(CLIENT, cport(), CONTROL, NP_WEB, "S")), "control",
                                   (WEB, 8080), first=True, where="corpus")
            reply_local(cluster, reply(at_pod, "SA"), "control", (CONTROL, NP_WEB), where="corpus")
    finally:
        cluster.run = real_run
    return seen


def _synthetic() -> dict[tuple[str, str], list[bytes]]:
    """Hand-made seeds per node and program: every case row's packet, plus each node's own
    NodePorts, tunnels from each peer, and pod traffic to every frontend."""
    seeds: dict[tuple[str, str], list[bytes]] = defaultdict(list)
    for c in CASES:
        seeds[(c.node, c.entry)].append(bytes(c.pkt()))
    pods = {"control": [WEB], "node1": [CUSTOMER, SUMMARY1], "node2": [SUMMARY2, DATABASE]}
    for node, ip in NODES.items():
        hep = seeds[(node, "from_hep")]
        for port in (NP_CUSTOMER, NP_ECHO, NP_WEB, 30400, 22):
            hep.append(bytes(tcp(CLIENT, cport(), ip, port, "S")))
            hep.append(bytes(udp(CLIENT, cport(), ip, port, b"x")))
        for peer, pip in NODES.items():
            if peer != node:
                inner = bytes(tcp(CLIENT, cport(), CUSTOMER, 80, "S", ttl=63))
                hep.append(bytes(vxlan(pip, ip, inner, fe_port=NP_CUSTOMER)))
                hep.append(bytes(vxlan(pip, ip, inner, fe_port=NP_CUSTOMER, dsr=True)))
                hep.append(bytes(vxlan(pip, ip, bytes(tcp(CUSTOMER, 80, CLIENT, cport(), "SA", ttl=63)))))
        hep += [bytes(arp()), bytes(ipv6()), bytes(icmp_echo(CLIENT, ip))]
        own = seeds[(node, "to_hep")]   # the node's own packets to frontends, and one it answers as one
        for dst, port in ((CUSTOMER_CIP, 80), (CONTROL, NP_CUSTOMER), (NODE2, NP_WEB), (ip, 4789)):
            own.append(bytes(tcp(ip, cport(), dst, port, "S")))
            own.append(bytes(udp(ip, cport(), dst, port, b"x")))
        own.append(bytes(tcp(ip, NP_CUSTOMER, CLIENT, cport(), "SA")))
        for pod in pods[node]:
            wep = seeds[(node, "from_wep")]
            for dst, port in ((CUSTOMER_CIP, 80), (SUMMARY_CIP, 80), (DATABASE_CIP, 2379), (NODE2, NP_WEB),
                              (CONTROL, NP_CUSTOMER), ("198.19.32.40", 80)):
                wep.append(_pod(tcp(pod, cport(), dst, port, "S")))
            wep.append(_pod(udp(pod, cport(), CUSTOMER_CIP, 7)))
            seeds[(node, "to_wep")].append(bytes(tcp(DATABASE, 2379, pod, cport(), "SA")))
            seeds[(node, "to_wep")].append(bytes(udp(CUSTOMER, 7, pod, cport())))
    return seeds


def _hook_counts(node, entry: str) -> list[int]:
    vals = node.maps.counters.all()
    h = HOOK_IDS[entry]
    return vals[h * MAX_REASONS:(h + 1) * MAX_REASONS]


def test_fuzz_every_entry_program(cluster):
    flows = _record_flows(cluster)
    synth = _synthetic()
    node_ips = {ipaddress.IPv4Address(ip).packed for ip in NODES.values()}
    per_node = -(-PER_ENTRY // len(cluster.nodes))
    total, start = 0, time.monotonic()
    failures: dict[str, list] = {}      # kind -> [count, first example]
    stats = {}

    def fail(kind: str, detail: str) -> None:
        slot = failures.setdefault(kind, [0, detail])
        slot[0] += 1

    for node_name, node in cluster.nodes.items():
        judge = Judge(ipaddress.IPv4Address(node.ip).packed, node_ips)
        for entry in PROGRAMS:
            where = f"{node_name}/{entry}"
            corpus = [f for f in flows.get((node_name, entry), []) + synth.get((node_name, entry), [])
                      if len(f) >= min_len(f)]
            assert corpus, f"no seeds for {where}"
            gen = Mutator(SEED ^ zlib.crc32(where.encode()), corpus)
            fd = node.prog_fds[entry]
            before = _hook_counts(node, entry)
            n_malformed = 0
            verdicts: dict[int, int] = defaultdict(int)
            for i in range(per_node):
                data = gen.next()
                bad = malformed(data)
                n_malformed += bad
                try:
                    res = libbpf.prog_test_run(fd, data, out_size=len(data) + 256)
                except OSError as exc:
                    fail(f"{where}: kernel refused the run", f"#{i} {exc}; in={data.hex()}")
                    continue
                v = res.retval
                verdicts[v] += 1
                if v not in (0, 2, 7):
                    fail(f"{where}: verdict {v}", f"#{i} in={data.hex()}")
                elif bad and v != 2:
                    fail(f"{where}: malformed packet forwarded", f"#{i} verdict {v} in={data.hex()}")
                elif v != 2:
                    why = judge(data, res.data)
                    if why:
                        fail(f"{where}: forwarded output is not a clean rewrite: {why}",
                             f"#{i} in={data.hex()} out={res.data.hex()}")
            after = _hook_counts(node, entry)
            delta = [a - b for a, b in zip(after, before)]
            ran = sum(verdicts.values())
            total += ran
            reasons = {abi.reason_name(r): d for r, d in enumerate(delta) if d}
            stats[where] = (ran, n_malformed, dict(verdicts), reasons)
            if sum(delta) != ran:
                fail(f"{where}: counters do not add up", f"grew by {sum(delta)} for {ran} packets: {reasons}")
            if delta[abi.REASON_IDS["DROP_MALFORMED"]] < n_malformed:
                fail(f"{where}: malformed not counted",
                     f"{n_malformed} malformed, DROP_MALFORMED +{delta[abi.REASON_IDS['DROP_MALFORMED']]}")
    elapsed = time.monotonic() - start
    print(f"\nfuzz: {total} packets in {elapsed:.1f} s (seed {SEED}, {per_node} per node and program)")
    for k, (ran, bad, verdicts, reasons) in stats.items():
        print(f"  {k}: {ran} runs, {bad} malformed, verdicts {verdicts}, reasons {reasons}")
    report = "\n".join(f"  [{n}x] {kind}\n      e.g. {ex[:600]}" for kind, (n, ex) in
                        sorted(failures.items(), key=lambda kv: -kv[1][0]))
    assert not failures, f"seed {SEED}: {sum(n for n, _ in failures.values())} failures in " \
                         f"{len(failures)} kinds:\n{report}"
    assert total >= PER_ENTRY * len(PROGRAMS)
