"""The conntrack GC (ebpf_nodeport.datapath.gc_conntrack, what the per-lab cleaner runs), table-driven.

One row: a NAT flow's two entries written into a loaded node's real `ct` map (the NAT_FWD under
(client, frontend), its partner under (client, backend)), how long they have been idle, and which
of the two the GC must leave. The timeouts are conntrack.h's (abi.CT_TIMEOUTS_NS); a NAT_FWD lives
exactly as long as its partner. The GC reads the map as bytes by field offset, so the rows also
pin down that it reads the right bytes: each flag and state below moves a verdict.
"""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from ebpf_nodeport import abi
from ebpf_nodeport.abi import (CT_F_CLIENT_IS_B, CT_F_DSR, CT_F_FROM_TUNNEL, CT_F_NODEPORT, CT_F_PSNAT, CT_NAT_FWD,
                               CT_NAT_REV, CT_NORMAL, SEC_NS, TCPF_ACK, TCPF_FIN, TCPF_RST, TCPF_SYN, CtKey, CtValue)
from ebpf_nodeport.datapath import gc_conntrack

from .topo import CLIENT, CONTROL, CUSTOMER, NP_CUSTOMER

SA, F, R = TCPF_SYN | TCPF_ACK, TCPF_FIN | TCPF_ACK, TCPF_RST
T = abi.CT_TIMEOUTS_NS
NOW = 10_000 * SEC_NS      # the GC's clock in every row; entries are stamped NOW - idle
CPORT, PSNAT_PORT = 40_000, 20_001
HIGH_CLIENT = "198.19.200.1"   # above the backend's address: side b of every key it is in
BOTH, NONE = {"fwd", "rev"}, set()


@dataclass(frozen=True)
class Row:
    name: str
    exercises: str
    idle_ns: int                         # of the partner (the NAT_FWD is stamped likewise)
    keep: set[str]                       # which of "fwd", "rev" the GC leaves
    proto: str = "tcp"
    tcp: tuple[int, int] = (SA, SA)      # (client's, server's) TCP flags seen
    flags: int = CT_F_NODEPORT           # the flow's flags, on both entries
    partner_type: int = CT_NAT_REV
    cl_port: int = 0                     # PSNAT: the client port toward the backend
    partner_cl_port: int | None = None   # where the partner really is (None: where the NAT_FWD says)
    with_partner: bool = True
    idle_future: bool = False            # stamped after the GC's clock (a packet raced the pass)
    client: str = CLIENT                 # side b of the NAT_FWD's key, side a of the partner's
    created_ns_ago: int | None = None    # created this long before NOW (None: when last seen)


ROWS = [
    Row("est-live", "established TCP, idle under CT_TIMEOUT_TCP_EST", T["CT_TIMEOUT_TCP_EST"] - SEC_NS, BOTH),
    Row("est-dead", "established TCP, idle past CT_TIMEOUT_TCP_EST: both go", T["CT_TIMEOUT_TCP_EST"] + SEC_NS, NONE),
    Row("old-but-used", "created long ago, seen lately: judged by last_seen_ns, not created_ns", SEC_NS, BOTH,
        created_ns_ago=2 * T["CT_TIMEOUT_TCP_EST"]),
    Row("syn-dead", "half-open TCP (no SYN from the server) expires on CT_TIMEOUT_TCP_SYN",
        T["CT_TIMEOUT_TCP_SYN"] + SEC_NS, NONE, tcp=(TCPF_SYN, 0)),
    Row("syn-live", "half-open TCP within CT_TIMEOUT_TCP_SYN", T["CT_TIMEOUT_TCP_SYN"] - SEC_NS, BOTH,
        tcp=(TCPF_SYN, 0)),
    Row("fin-dead", "FIN both ways: CT_TIMEOUT_TCP_FIN, not EST", T["CT_TIMEOUT_TCP_FIN"] + SEC_NS, NONE,
        tcp=(SA | F, SA | F)),
    Row("fin-one-way", "a FIN one way only keeps the EST timeout", T["CT_TIMEOUT_TCP_FIN"] + SEC_NS, BOTH,
        tcp=(SA | F, SA)),
    Row("rst-dead", "a RST either way: CT_TIMEOUT_TCP_RST", T["CT_TIMEOUT_TCP_RST"] + SEC_NS, NONE,
        tcp=(SA, SA | R)),
    Row("dsr-ingress", "a DSR ingress node sees the client only: its SYN+ACK is established",
        T["CT_TIMEOUT_TCP_SYN"] + SEC_NS, BOTH, tcp=(SA, 0), flags=CT_F_NODEPORT | CT_F_DSR),
    Row("dsr-ingress-fin", "... and its FIN alone is the end", T["CT_TIMEOUT_TCP_FIN"] + SEC_NS, NONE,
        tcp=(SA | F, 0), flags=CT_F_NODEPORT | CT_F_DSR),
    Row("dsr-client-is-b", "the client on side b of the partner's key too (CLIENT_IS_B): its flags read from tcp_b",
        T["CT_TIMEOUT_TCP_SYN"] + SEC_NS, BOTH, tcp=(SA, 0), flags=CT_F_NODEPORT | CT_F_DSR, client=HIGH_CLIENT),
    Row("udp-live", "UDP within CT_TIMEOUT_UDP", T["CT_TIMEOUT_UDP"] - SEC_NS, BOTH, proto="udp", tcp=(0, 0)),
    Row("udp-dead", "UDP past CT_TIMEOUT_UDP", T["CT_TIMEOUT_UDP"] + SEC_NS, NONE, proto="udp", tcp=(0, 0)),
    Row("future", "stamped after the GC's clock (refreshed during the pass): kept", 0, BOTH,
        tcp=(TCPF_SYN, 0), idle_future=True),
    Row("orphan", "a NAT_FWD whose partner is gone goes, however fresh", 0, NONE, with_partner=False),
    Row("wrong-partner", "a NAT_FWD whose partner key holds a NORMAL entry goes (it is not its NAT_REV)", 0,
        {"rev"}, partner_type=CT_NORMAL),
    Row("backend-node", "on a backend node (FROM_TUNNEL) a NAT_FWD follows a NORMAL entry", 0, BOTH,
        partner_type=CT_NORMAL, flags=CT_F_NODEPORT | CT_F_FROM_TUNNEL),
    Row("psnat", "with PSNAT the partner is keyed by the client port toward the backend (cl_port)", 0, BOTH,
        cl_port=PSNAT_PORT, flags=CT_F_NODEPORT | CT_F_PSNAT),
    Row("psnat-orphan", "... not by the client's own port", 0, {"rev"},
        cl_port=PSNAT_PORT, partner_cl_port=CPORT, flags=CT_F_NODEPORT | CT_F_PSNAT),
]


def _entries(row: Row, client: str | None = None) -> dict[str, tuple[CtKey, CtValue]]:
    """The row's NAT_FWD and partner, keyed and flagged as the datapath writes them (CLIENT_IS_B when the
    client is side b of that entry's key; tcp_a/tcp_b per side)."""
    client = client or row.client
    seen = NOW + SEC_NS if row.idle_future else NOW - row.idle_ns
    fk, fwd_from_a = abi.ct_key(client, CPORT, CONTROL, NP_CUSTOMER, row.proto)
    port = row.partner_cl_port if row.partner_cl_port is not None else (row.cl_port or CPORT)
    rk, rev_from_a = abi.ct_key(client, port, CUSTOMER, 80, row.proto)

    def value(kind: int, client_is_a: bool, **kw: int) -> CtValue:
        cflags, sflags = row.tcp
        a, b = (cflags, sflags) if client_is_a else (sflags, cflags)
        flags = row.flags | (0 if client_is_a else CT_F_CLIENT_IS_B)
        created = seen if row.created_ns_ago is None else NOW - row.created_ns_ago
        return CtValue(created_ns=created, last_seen_ns=seen, type=kind, flags=flags, tcp_a=a, tcp_b=b, **kw)

    out = {"fwd": (fk, value(CT_NAT_FWD, fwd_from_a, nat_addr=abi.ip2int(CUSTOMER), nat_port=80,
                              cl_port=row.cl_port))}
    if row.with_partner:
        out["rev"] = (rk, value(row.partner_type, rev_from_a, nat_addr=abi.ip2int(CONTROL), nat_port=NP_CUSTOMER))
    return out


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_gc_row(cluster, row: Row):
    ct = cluster["control"].maps.ct
    entries = _entries(row)
    for k, v in entries.values():
        ct.put(k, v)
    deleted = gc_conntrack(ct, now_ns=NOW)
    left = {name for name, (k, _) in entries.items() if ct.get(k) is not None}
    assert left == row.keep, f"{row.name} ({row.exercises}): kept {sorted(left)}, want {sorted(row.keep)}"
    assert deleted == len(entries) - len(left)


def test_gc_leaves_other_flows_and_counts_only_its_deletes(cluster):
    """Rows side by side in one map, as a real pass finds them: each row's verdict holds among the others."""
    ct = cluster["control"].maps.ct
    placed: list[tuple[Row, dict[str, tuple[CtKey, CtValue]]]] = []
    for i, row in enumerate(r for r in ROWS if r.partner_cl_port is None):
        # every row its own client address (same side of every key as the row's own), so keys never meet
        entries = _entries(row, client=abi.int2ip(abi.ip2int(row.client) + i + 1))
        placed.append((row, entries))
        for k, v in entries.values():
            ct.put(k, v)
    want_gone = sum(len(e) - len(r.keep) for r, e in placed)
    assert gc_conntrack(ct, now_ns=NOW) == want_gone
    for row, entries in placed:
        left = {name for name, (k, _) in entries.items() if ct.get(k) is not None}
        assert left == row.keep, row.name


def test_gc_applies_shorter_timeouts_given():
    """Timeouts given to the GC (the tests' short ones) replace conntrack.h's, one by one."""
    k, _ = abi.ct_key(CLIENT, CPORT, CUSTOMER, 80, "udp")
    v = CtValue(last_seen_ns=NOW - 2 * SEC_NS, type=CT_NAT_REV)
    assert abi.ct_timeout_ns(k, v) == T["CT_TIMEOUT_UDP"]
    assert abi.ct_timeout_ns(k, v, {"CT_TIMEOUT_UDP": SEC_NS}) == SEC_NS
    assert abi.ct_expired(k, v, NOW, {"CT_TIMEOUT_UDP": SEC_NS}) and not abi.ct_expired(k, v, NOW)


def test_gc_bench_deletes_the_expired_flows_and_leaves_no_pin(capsys):
    """`python -m netns_lab.bench.ctgc` (the GC's cost at a map size): its first pass deletes exactly the
    flows it made expired, both entries each; its pin goes with it; timing another checkout's GC (here
    this one's, by path) leaves this process's own modules in place (the rest of the test run uses them)."""
    import random
    import sys
    from pathlib import Path

    from netns_lab import naming
    from netns_lab.bench import ctgc

    flows, share = 3000, 0.25
    rng = random.Random(1)                      # ctgc.fill's draws
    expired = sum(rng.random() < share for _ in range(flows))
    ours = sys.modules["ebpf_nodeport.sync"]
    repo = Path(__file__).resolve().parents[2]
    assert ctgc.main(["--flows", str(flows), "--expired", str(share), "--passes", "1", "--repo", str(repo)]) == 0
    row = capsys.readouterr().out.splitlines()[1].split()
    assert row[-4:-2] == [str(2 * flows), str(2 * expired)]
    assert not (naming.bpf_dir(ctgc.PIN_LAB)).exists()
    assert sys.modules["ebpf_nodeport.sync"] is ours


def test_gc_bench_counts_right_on_a_freshly_booted_machine(capsys, monkeypatch):
    """A machine up for less than the established timeout (an hour; a test VM 20 minutes after boot):
    the tool's expired stamps must not wrap below zero into the future, where the GC keeps them."""
    import random

    from netns_lab.bench import ctgc

    monkeypatch.setattr(abi, "ktime_ns", lambda: 20 * 60 * SEC_NS)   # CLOCK_MONOTONIC 20 min after boot
    flows, share = 500, 0.5
    rng = random.Random(1)
    expired = sum(rng.random() < share for _ in range(flows))
    assert ctgc.main(["--flows", str(flows), "--expired", str(share), "--passes", "1"]) == 0
    row = capsys.readouterr().out.splitlines()[1].split()
    assert row[-4:-2] == [str(2 * flows), str(2 * expired)]


def test_gc_bench_refuses_a_path_that_is_no_checkout(tmp_path, capsys):
    from netns_lab.bench import ctgc

    with pytest.raises(SystemExit) as exc:
        ctgc.main(["--repo", str(tmp_path)])
    assert exc.value.code == 2 and "not a checkout" in capsys.readouterr().err
