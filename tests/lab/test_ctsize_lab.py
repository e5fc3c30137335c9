"""FelixConfiguration bpfMapSizeConntrack on real labs: each eBPF node's conntrack map is that many entries.

Changed in an eBPF mode it reloads every node as Felix resizes its maps: a new map of the new size, the old
one's entries copied in (an open connection keeps its entries), the programs attached again, traffic flowing.
Set in kube-proxy mode it is kept and used by the next switch into an eBPF mode. A bad value is refused with
one line and changes nothing.
"""

from __future__ import annotations

import json

import pytest

from ebpf_nodeport import abi

from .conftest import Lab

NODES = ("control", "node1", "node2")
SMALL = 65536


def _established_entry() -> tuple[abi.CtKey, abi.CtValue]:
    """A made-up external client's NodePort connection, established and seen just now (NAT_REV)."""
    key, _ = abi.ct_key("203.0.113.9", 40000, "198.19.16.65", 80, "tcp")
    now = abi.ktime_ns()
    syn_ack = abi.TCPF_SYN | abi.TCPF_ACK
    return key, abi.CtValue(created_ns=now, last_seen_ns=now, type=abi.CT_NAT_REV, flags=abi.CT_F_NODEPORT,
                            tcp_a=syn_ack, tcp_b=syn_ack, nat_addr=abi.ip2int("198.19.0.1"), nat_port=30180)


def _sizes(lab: Lab) -> dict[str, int]:
    """Entries of each node's pinned conntrack map."""
    out = {}
    for node in NODES:
        with lab.api().datapath(node).maps() as m:
            out[node] = m.ct.info.max_entries
    return out


def _felix(lab: Lab) -> dict:
    return json.loads(lab.run("get", "felixconfiguration", "default", "-o", "json").stdout)["spec"]


def _patch(lab: Lab, size: object, check: bool = True):
    return lab.run("patch", "felixconfiguration", "default", "-p",
                   json.dumps({"spec": {"bpfMapSizeConntrack": size}}), check=check)


@pytest.mark.parametrize("mode", ["tunnel", "dsr"])
def test_resize_in_an_ebpf_mode_keeps_entries_and_traffic(lab_factory, mode: str) -> None:
    lab = lab_factory(mode, tag="z")
    assert _sizes(lab) == dict.fromkeys(NODES, abi.MAP_SPECS["ct"].max_entries)
    assert "Welcome to YAO Bank" in lab.curl("198.19.0.1:30180")
    # an open connection's entry on every node (established: 1 h timeout, so neither a slow machine's
    # recompile nor the cleaner can expire it; a curl's own entries expire 30 s after its FIN)
    key, value = _established_entry()
    for node in NODES:
        with lab.api().datapath(node).maps() as m:
            m.ct.put(key, value)

    out = _patch(lab, SMALL).stdout
    assert f"conntrack map resized to {SMALL} entries on control, node1, node2" in out, out
    assert "entries carried over" in out, out
    assert _sizes(lab) == dict.fromkeys(NODES, SMALL)
    for node in NODES:
        with lab.api().datapath(node).maps() as m:
            assert m.ct.raw_items().get(bytes(key)) == bytes(value), f"{mode}: {node}'s entry lost in the resize"
    assert _felix(lab)["bpfMapSizeConntrack"] == SMALL
    assert "Welcome to YAO Bank" in lab.curl("198.19.0.1:30180")

    bad = _patch(lab, 10, check=False)
    assert bad.returncode != 0 and bad.stderr.strip().count("\n") == 0 and "from 1024 to 4194304" in bad.stderr
    assert _sizes(lab) == dict.fromkeys(NODES, SMALL) and _felix(lab)["bpfMapSizeConntrack"] == SMALL


def test_set_in_kube_proxy_mode_applies_at_the_switch(lab_factory) -> None:
    lab = lab_factory("kube-proxy", tag="z")
    out = _patch(lab, SMALL).stdout
    assert f"bpfMapSizeConntrack {SMALL}: kept for the eBPF modes" in out, out
    assert "Welcome to YAO Bank" in lab.curl("198.19.0.1:30180")
    lab.run("mode", "tunnel")
    assert _sizes(lab) == dict.fromkeys(NODES, SMALL)
    assert "Welcome to YAO Bank" in lab.curl("198.19.0.1:30180")

    # back to kube-proxy, then one patch that enables eBPF and sets another size: the load uses the new size
    lab.run("mode", "kube-proxy")
    lab.run("patch", "felixconfiguration", "default", "-p",
            json.dumps({"spec": {"bpfEnabled": True, "bpfMapSizeConntrack": 2 * SMALL}}))
    assert _sizes(lab) == dict.fromkeys(NODES, 2 * SMALL)
    assert "Welcome to YAO Bank" in lab.curl("198.19.0.1:30180")
