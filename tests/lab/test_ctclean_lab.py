"""The conntrack cleaner on real labs: the per-lab process that deletes expired entries from every node's
plain-hash `ct` map while the lab is in an eBPF mode (netns_lab/ctclean.py, netns_lab/apps/ctclean.py).

In each eBPF mode a lab brought up into it runs exactly one cleaner (shown by `status -o json`); an
entry written already expired into each node's map is gone within a few of its passes while a live
connection's entry stays; the cleaner stops when the lab switches to kube-proxy, starts again on the
way back, and `down` (also `down --all`) leaves no cleaner process behind.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from ebpf_nodeport import abi
from netns_lab import ctclean, naming

from .conftest import Lab, Sandbox, cli, processes_with_lab_arg, unique_lab, wait_for

pytestmark = [pytest.mark.root, pytest.mark.lab]

NODES = ("control", "node1", "node2")
PASS_WAIT_S = 4 * ctclean.INTERVAL_S   # a few passes' worth, on a slow machine


def _entry(i: int, *, established: bool, last_seen_ago_s: int = 0) -> tuple[abi.CtKey, abi.CtValue]:
    """A made-up client's NAT_REV entry: an established connection's, or a half-open one's (SYN only,
    20 s timeout), last seen that many seconds ago."""
    key, _ = abi.ct_key(int(ipaddress.IPv4Address("203.0.113.9")), 40000 + i, "198.19.16.65", 80, "tcp")
    then = abi.ktime_ns() - last_seen_ago_s * abi.SEC_NS
    syn_ack = abi.TCPF_SYN | abi.TCPF_ACK
    return key, abi.CtValue(created_ns=then, last_seen_ns=then, type=abi.CT_NAT_REV, flags=abi.CT_F_NODEPORT,
                            tcp_a=syn_ack if established else abi.TCPF_SYN, tcp_b=syn_ack if established else 0)


def _ct(lab: Lab, node: str) -> dict[bytes, bytes]:
    with lab.api().datapath(node).maps() as m:
        return m.ct.raw_items()


def _reclaims(lab: Lab, mode: str, first: int) -> None:
    """Into every node's map: a half-open connection's entry, expired, and an established one's, live;
    the cleaner deletes the first within a few passes and keeps the second."""
    stale = {node: _entry(first + i, established=False, last_seen_ago_s=60) for i, node in enumerate(NODES)}
    live = {node: _entry(first + 10 + i, established=True) for i, node in enumerate(NODES)}
    for node in NODES:
        with lab.api().datapath(node).maps() as m:
            for k, v in (stale[node], live[node]):
                m.ct.put(k, v)

    def reclaimed() -> bool:
        return all(bytes(stale[n][0]) not in _ct(lab, n) for n in NODES)

    assert wait_for(reclaimed, timeout=PASS_WAIT_S, interval=0.5), \
        f"{mode}: expired entries still there after {PASS_WAIT_S:g}s"
    for node in NODES:
        assert bytes(live[node][0]) in _ct(lab, node), f"{mode}: {node}'s live entry was deleted"


@pytest.mark.parametrize("mode", ["tunnel", "dsr"])
def test_cleaner_runs_in_ebpf_modes_reclaims_expired_entries_and_leaves_with_down(lab_factory, mode: str) -> None:
    lab = lab_factory(mode, tag="c")
    pids = ctclean.cleaner_pids(lab.name)
    assert len(pids) == 1, f"{mode}: cleaners {pids}"
    doc = lab.status()["dataplane"]["conntrack_cleaner"]
    assert doc == {"pid": pids[0], "interval_s": ctclean.INTERVAL_S}

    _reclaims(lab, mode, 0)
    assert "Welcome to YAO Bank" in lab.curl("198.19.0.1:30180")
    log = ctclean.log_path(lab.name).read_text()
    assert "expired conntrack entries deleted" in log, log

    # out of the eBPF modes and back
    lab.run("mode", "kube-proxy")
    assert ctclean.cleaner_pids(lab.name) == []
    assert lab.status()["dataplane"]["conntrack_cleaner"] is None
    lab.run("mode", mode)
    assert len(ctclean.cleaner_pids(lab.name)) == 1
    _reclaims(lab, mode, 20)   # the cleaner started by the switch works as the first did

    cli("down", "--name", lab.name)
    assert ctclean.cleaner_pids(lab.name) == [] and processes_with_lab_arg(lab.name) == []
    assert not naming.run_dir(lab.name).exists()


def test_down_all_kills_the_cleaner(sandbox: Sandbox) -> None:
    """`down --all` finds a lab's cleaner by its command line like the apps: none is left."""
    lab = unique_lab("k")
    sandbox.labs.append(lab)
    sandbox.cli("up", "--name", lab, "--mode", "tunnel")

    def cleaners() -> list[int]:
        return [p for p in processes_with_lab_arg(lab) if ctclean.APP.encode() in Path(f"/proc/{p}/cmdline").read_bytes()]

    assert len(cleaners()) == 1
    sandbox.cli("down", "--all")
    assert cleaners() == [] and processes_with_lab_arg(lab) == []
