"""The lab -> datapath glue without a kernel: the ClusterView and kube-proxy rules a lab's state yields."""

from __future__ import annotations

import copy

from ebpf_nodeport.loader import LoadResult
from netns_lab import dataplane, kubeproxy
from netns_lab.felix import FelixConfig, for_mode
from netns_lab.state import LabState
from netns_lab.topology import default_topology, plan


def _state() -> LabState:
    topo = default_topology()
    return LabState.new("unit", topo, plan(topo), "kube-proxy")


def test_cluster_view_of_the_default_lab() -> None:
    view = dataplane.cluster_view(_state(), for_mode(FelixConfig(), "dsr"))
    assert view.nodes == {"control": "198.19.0.1", "node1": "198.19.0.2", "node2": "198.19.0.3"}
    assert view.pod_blocks == {"198.19.16.0/26": "198.19.0.1", "198.19.16.64/26": "198.19.0.2",
                               "198.19.16.128/26": "198.19.0.3"}
    assert view.mode == "dsr" and view.dsr_optout == []
    got = {(s.name, s.proto, s.cluster_ip, s.port, s.node_port, tuple((b.addr, b.port) for b in s.backends))
           for s in view.services}
    assert got == {
        ("yaobank/customer", "tcp", "198.19.32.10", 80, 30180, (("198.19.16.65", 80),)),
        ("yaobank/customer", "udp", "198.19.32.10", 7, 30107, (("198.19.16.65", 7),)),
        ("yaobank/summary", "tcp", "198.19.32.20", 80, None, (("198.19.16.66", 80), ("198.19.16.129", 80))),
        ("yaobank/database", "tcp", "198.19.32.30", 2379, None, (("198.19.16.130", 2379),)),
    }
    view.validate()


def test_cluster_view_carries_opt_out_cidrs_and_tunnel_mode() -> None:
    felix = FelixConfig(bpfEnabled=True, bpfDSROptoutCIDRs=("198.19.15.0/24",))
    view = dataplane.cluster_view(_state(), felix)
    assert view.mode == "tunnel" and view.dsr_optout == ["198.19.15.0/24"]


def test_a_recreated_pod_moves_its_backends_in_both_dataplanes() -> None:
    st = _state()
    old = copy.deepcopy(st)
    st.pods["customer"].ip = "198.19.16.67"
    for s in st.services:
        for sp in s.ports:
            for b in sp.backends:
                if b.pod == "customer":
                    b.ip = "198.19.16.67"
    view = dataplane.cluster_view(st, FelixConfig(bpfEnabled=True))
    assert {b.addr for s in view.services if s.name == "yaobank/customer" for b in s.backends} == {"198.19.16.67"}
    topo, p = st.plan()
    rs = kubeproxy.ruleset(topo, p, "node1")
    assert any("--to-destination 198.19.16.67:80" in r for r in rs.rules)
    assert not any("198.19.16.65" in r for r in rs.rules)
    # a resync deletes the chains of the endpoint that is gone, in the same batch
    old_rs = kubeproxy.ruleset(*old.plan(), "node1")
    saved = kubeproxy.install_text(old_rs)
    gone = sorted(set(old_rs.chains) - set(rs.chains))
    assert gone and all(c.startswith("KUBE-SEP-") for c in gone)
    text = kubeproxy.sync_text(rs, saved)
    assert [line for line in text.splitlines() if line.startswith("-X ")] == [f"-X {c}" for c in gone]
    assert "*filter" in text and "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP" in text


def test_next_address_of_a_recreated_pod_is_new() -> None:
    st = _state()
    assert dataplane._next_ip(st, "node1", "198.19.16.65") == "198.19.16.67"  # .65 is the old one, .66 summary-1
    st.pods["customer"].ip = "198.19.16.67"
    assert dataplane._next_ip(st, "node1", "198.19.16.67") == "198.19.16.65"


def test_load_lines_say_one_compile_and_a_load_per_node() -> None:
    results = {
        "control": LoadResult("/p/control", {}, 1.8, 0.040),
        "node1": LoadResult("/p/node1", {}, 0.011, 0.051, clone_of="control"),
        "node2": LoadResult("/p/node2", {}, 0.010, 0.050, clone_of="control"),
    }
    assert dataplane._load_lines(results, 2.01) == [
        "control: datapath compiled and loaded in 1.84s (BCC 1.80s, verifier 40ms)",
        "node1: control's compile loaded on node1's own maps in 0.06s (maps 11ms, verifier 51ms)",
        "node2: control's compile loaded on node2's own maps in 0.06s (maps 10ms, verifier 50ms)",
        "datapath: 1 BCC compile and 3 loads in 2.01s",
    ]
    assert dataplane._load_lines({"control": results["control"]}, 1.9)[-1] == \
        "datapath: 1 BCC compile and 1 load in 1.90s"


def test_load_lines_say_a_cache_hit_is_no_compile() -> None:
    results = {
        "control": LoadResult("/p/control", {}, 0.012, 0.040, cached=True),
        "node1": LoadResult("/p/node1", {}, 0.011, 0.051, clone_of="control", cached=True),
    }
    assert dataplane._load_lines(results, 0.2) == [
        "control: datapath loaded from the compile cache in 0.05s (maps 12ms, verifier 40ms)",
        "node1: control's compile loaded on node1's own maps in 0.06s (maps 11ms, verifier 51ms)",
        "datapath: 0 BCC compiles and 2 loads in 0.20s",
    ]
