"""Decoding every map's keys and values into `netns-lab dump` / `trace` records, and rendering them.

No root: values are built with the ctypes structs of ebpf_nodeport.maps (and, where the
byte order matters, from raw bytes laid out as the kernel stores them), put in a
Snapshot, and decoded. Timeouts and states are checked against the datapath contract
(docs/datapath.md "State and timeouts"), not against the decoder's own code.
"""
from __future__ import annotations

import io
import json
import socket
import struct

import pytest
from rich.console import Console

from ebpf_nodeport import dump
from ebpf_nodeport.abi import (CFG_F_DSR, CFG_F_ENABLED, CFG_F_TRACE, CT_F_CLIENT_IS_B, CT_F_CLUSTERIP,
                               CT_F_DSR, CT_F_FROM_TUNNEL, CT_F_NODEPORT, CT_F_POD_CLIENT, CT_F_TUNNEL,
                               CT_NAT_FWD, CT_NAT_REV, CT_NORMAL, FE_F_CLUSTERIP, FE_F_NODEPORT, MAX_REASONS,
                               RT_F_LOCAL, TCPF_ACK, TCPF_FIN, TCPF_RST, TCPF_SYN, Addr, BeKey, BeValue,
                               CtKey, CtValue, Event, FeKey, FeValue, NodeCfg, RouteInfo, RouteKey, ct_key,
                               ip2int)
from ebpf_nodeport.trace import Tracer, TraceError, event_record, format_record, matches
from netns_lab.felix import FelixConfig, for_mode
from netns_lab.state import LabState, Member

CLIENT, CONTROL, NODE1, NODE2 = "198.19.15.254", "198.19.0.1", "198.19.0.2", "198.19.0.3"
CUSTOMER, SUMMARY1, SUMMARY2, DATABASE = "198.19.16.65", "198.19.16.66", "198.19.16.129", "198.19.16.130"
NAMES = {CONTROL: "control", NODE1: "node1", NODE2: "node2"}
SEC = 1_000_000_000
NOW = 5000 * SEC
SYN, SYNACK, ACK = TCPF_SYN, TCPF_SYN | TCPF_ACK, TCPF_ACK


def ct_entry(client: str, cport: int, server: str, sport: int, proto: str = "tcp", *, type: int = CT_NORMAL,
             flags: int = 0, nat: tuple[str, int] | None = None, peer: str | None = None, tcp_client: int = 0,
             tcp_server: int = 0, pkts: tuple[int, int] = (0, 0), nbytes: tuple[int, int] = (0, 0),
             age_s: float = 5, idle_s: float = 2) -> tuple[CtKey, CtValue]:
    """A conntrack entry as the datapath writes it: normalised key, client side flag, per-side counters."""
    k, client_is_a = ct_key(client, cport, server, sport, proto)
    v = CtValue(created_ns=int(NOW - age_s * SEC), last_seen_ns=int(NOW - idle_s * SEC), type=type,
                flags=flags | (0 if client_is_a else CT_F_CLIENT_IS_B))
    if nat:
        v.nat_addr, v.nat_port = ip2int(nat[0]), nat[1]
    if peer:
        v.tun_peer = ip2int(peer)
    # side a -> b is "ab": from the client when the client is side a
    (v.tcp_a, v.tcp_b) = (tcp_client, tcp_server) if client_is_a else (tcp_server, tcp_client)
    (v.packets_ab, v.packets_ba) = pkts if client_is_a else pkts[::-1]
    (v.bytes_ab, v.bytes_ba) = nbytes if client_is_a else nbytes[::-1]
    return k, v


def services_control() -> dict:
    """nat_fe / nat_be / svc_meta / routes as control holds them for the yaobank services."""
    return {
        "nat_fe": [
            (FeKey.make("198.19.32.10", 80, "tcp"), FeValue(svc_id=1, count=1, local_count=0, flags=FE_F_CLUSTERIP)),
            (FeKey.make(0, 30180, "tcp"), FeValue(svc_id=1, count=1, local_count=0, flags=FE_F_NODEPORT)),
            (FeKey.make("198.19.32.20", 80, "tcp"), FeValue(svc_id=3, count=2, local_count=0, flags=FE_F_CLUSTERIP)),
            (FeKey.make("198.19.32.40", 80, "tcp"), FeValue(svc_id=5, count=2, local_count=1, flags=FE_F_CLUSTERIP)),
        ],
        "nat_be": [
            (BeKey(1, 0), BeValue(addr=ip2int(CUSTOMER), port=80)),
            (BeKey(3, 0), BeValue(addr=ip2int(SUMMARY1), port=80)),
            (BeKey(3, 1), BeValue(addr=ip2int(SUMMARY2), port=80)),
            (BeKey(5, 0), BeValue(addr=ip2int("198.19.16.1"), port=8080)),   # ordinal 1 missing
        ],
        "svc_meta": {1: "yaobank/customer:80/tcp", 3: "yaobank/summary:80/tcp", 5: "test/web:80/tcp"},
        "routes": [
            (RouteKey.cidr("198.19.16.0/26"), RouteInfo(ip2int(CONTROL), RT_F_LOCAL)),
            (RouteKey.cidr("198.19.16.64/26"), RouteInfo(ip2int(NODE1), 0)),
            (RouteKey.cidr("198.19.16.128/26"), RouteInfo(ip2int(NODE2), 0)),
        ],
    }


def snap(node: str = "control", **fields) -> dump.Snapshot:
    node_ip = {v: k for k, v in NAMES.items()}[node]
    base = {"cfg": NodeCfg(node_ip=ip2int(node_ip), host_ifindex=2, vni=4096, tunnel_port=4789, fabric_mtu=1500,
                           flags=CFG_F_ENABLED)}
    base.update(services_control())
    base.update(fields)
    return dump.Snapshot(node=node, now_ns=NOW, names=dict(NAMES), **base)


def tunnel_connection() -> dict[str, list]:
    """One established curl host1 -> control:30180 -> customer on node1 (Tunnel)."""
    fl = CT_F_TUNNEL | CT_F_NODEPORT
    fwd = ct_entry(CLIENT, 51234, CONTROL, 30180, type=CT_NAT_FWD, flags=fl, nat=(CUSTOMER, 80), peer=NODE1,
                   tcp_client=SYNACK, pkts=(4, 0), nbytes=(300, 0))
    rev = ct_entry(CLIENT, 51234, CUSTOMER, 80, type=CT_NAT_REV, flags=fl, nat=(CONTROL, 30180), peer=NODE1,
                   tcp_client=SYNACK, tcp_server=SYNACK, pkts=(4, 3), nbytes=(300, 900))
    normal = ct_entry(CLIENT, 51234, CUSTOMER, 80, type=CT_NORMAL, flags=fl & ~CT_F_NODEPORT | CT_F_FROM_TUNNEL,
                      nat=(CONTROL, 30180), peer=CONTROL, tcp_client=SYNACK, tcp_server=SYNACK, pkts=(4, 3),
                      nbytes=(300, 900))
    return {"control": [fwd, rev], "node1": [normal]}


# ---- raw bytes as the kernel stores them --------------------------------------------------------


def test_ct_key_and_value_decode_from_kernel_bytes() -> None:
    """Addresses and ports are big-endian in the map: decoding raw bytes gives dotted quads and real ports."""
    raw_key = socket.inet_aton(CONTROL) + socket.inet_aton(CLIENT) + struct.pack("!HH", 30180, 51234) + bytes([6, 0, 0, 0])
    raw_val = (struct.pack("=QQBBBB", NOW - 5 * SEC, NOW - 2 * SEC, CT_NAT_FWD,
                           CT_F_TUNNEL | CT_F_NODEPORT | CT_F_CLIENT_IS_B, 0, SYNACK)
               + socket.inet_aton(CUSTOMER) + struct.pack("!H", 80) + b"\0\0" + socket.inet_aton(NODE1)
               + struct.pack("=QQQQ", 0, 4, 0, 300))
    assert len(raw_key) == 16 and len(raw_val) == 64
    k, v = CtKey.from_bytes(raw_key), CtValue.from_bytes(raw_val)
    rev = ct_entry(CLIENT, 51234, CUSTOMER, 80, type=CT_NAT_REV, flags=CT_F_TUNNEL | CT_F_NODEPORT,
                   nat=(CONTROL, 30180), peer=NODE1, tcp_client=SYNACK, tcp_server=SYNACK)
    [r, _] = dump.conntrack_records(snap(ct=[(k, v), rev]))
    assert r["type"] == "NAT_FWD"
    assert (r["client"], r["frontend"], r["backend"]) == (f"{CLIENT}:51234", f"{CONTROL}:30180", f"{CUSTOMER}:80")
    assert (r["tunnel_peer"], r["tunnel_peer_node"]) == (NODE1, "node1")
    assert r["packets"] == {"from_client": 4, "to_client": 0} and r["bytes"] == {"from_client": 300, "to_client": 0}
    assert r["key"] == {"addr_a": CONTROL, "addr_b": CLIENT, "port_a": 30180, "port_b": 51234, "proto": 6}


def test_nat_maps_decode_from_kernel_bytes() -> None:
    fe_key = FeKey.from_bytes(socket.inet_aton("198.19.32.10") + struct.pack("!H", 80) + bytes([6, 0]))
    fe_val = FeValue.from_bytes(struct.pack("=IHHI", 1, 1, 0, FE_F_CLUSTERIP))
    be_key = BeKey.from_bytes(struct.pack("=II", 1, 0))
    be_val = BeValue.from_bytes(socket.inet_aton(CUSTOMER) + struct.pack("!H", 80) + b"\0\0")
    [f] = dump.nat_records(snap(nat_fe=[(fe_key, fe_val)], nat_be=[(be_key, be_val)]))
    assert (f["frontend"], f["proto"], f["kind"], f["service"]) == ("198.19.32.10:80", "tcp", "clusterip", "yaobank/customer")
    assert [b["backend"] for b in f["backends"]] == [f"{CUSTOMER}:80"]


def test_routes_nodes_cfg_decode_from_kernel_bytes() -> None:
    rk = RouteKey.from_bytes(struct.pack("=I", 26) + socket.inet_aton("198.19.16.64"))
    ri = RouteInfo.from_bytes(socket.inet_aton(NODE1) + struct.pack("=I", 0))
    node = Addr.from_bytes(socket.inet_aton(NODE2))
    cfg = NodeCfg.from_bytes(socket.inet_aton(NODE1) + struct.pack("=IIHHII", 3, 4096, 4789, 1500,
                                                                     CFG_F_ENABLED | CFG_F_DSR, 77))
    s = snap("node1", cfg=cfg, routes=[(rk, ri)], nodes=[node])
    r = dump.route_records(s)
    assert r["pod_blocks"] == [{"cidr": "198.19.16.64/26", "node_ip": NODE1, "node": "node1", "local": False}]
    assert r["node_addresses"] == [{"addr": NODE2, "node": "node2", "self": False}]
    c = dump.config_record(s)
    assert (c["node_ip"], c["host_ifindex"], c["vni"], c["tunnel_port"], c["fabric_mtu"]) == (NODE1, 3, 4096, 4789, 1500)
    assert c["mode"] == "dsr" and c["enabled"] and not c["trace"]


def test_event_decodes_from_ring_buffer_bytes() -> None:
    raw = (struct.pack("=QBBBB", 123, 0, 1, 6, CT_F_TUNNEL | CT_F_NODEPORT)
           + socket.inet_aton(CLIENT) + socket.inet_aton(CONTROL) + struct.pack("!HH", 51234, 30180)
           + socket.inet_aton(CLIENT) + socket.inet_aton(CUSTOMER) + struct.pack("!HH", 51234, 80)
           + socket.inet_aton(NODE1) + struct.pack("=II", 2, 0))
    assert len(raw) == 48
    rec = event_record(Event.from_bytes(raw), "control")
    assert rec["line"] == ("control from_hep 198.19.15.254:51234 -> 198.19.0.1:30180 NAT -> 198.19.16.65:80 "
                           "via tunnel to 198.19.0.2 [NAT_NEW]")


# ---- nat / backends ------------------------------------------------------------------------------


def test_nat_frontends_with_service_name_and_backends_beneath() -> None:
    recs = {(r["frontend"], r["proto"]): r for r in dump.nat_records(snap())}
    np = recs[("*:30180", "tcp")]
    assert np["addr"] is None and np["kind"] == "nodeport" and np["flags"] == ["NODEPORT"]
    assert (np["service"], np["service_port"], np["service_key"]) == ("yaobank/customer", "80/tcp", "yaobank/customer:80/tcp")
    assert (np["backend_count"], np["local_count"]) == (1, 0)
    assert np["backends"] == [{"ordinal": 0, "addr": CUSTOMER, "port": 80, "backend": f"{CUSTOMER}:80",
                               "local": False, "node": "node1", "missing": False}]
    summary = recs[("198.19.32.20:80", "tcp")]
    assert [(b["backend"], b["node"]) for b in summary["backends"]] == [(f"{SUMMARY1}:80", "node1"), (f"{SUMMARY2}:80", "node2")]
    web = recs[("198.19.32.40:80", "tcp")]
    assert web["backends"][0]["local"] is True and web["backends"][0]["node"] == "control"
    assert web["backends"][1]["missing"] is True        # count says 2, nat_be holds 1: shown, not hidden


def test_backend_records() -> None:
    recs = dump.backend_records(snap())
    assert [(r["service_key"], r["ordinal"], r["backend"], r["node"]) for r in recs] == [
        ("test/web:80/tcp", 0, "198.19.16.1:8080", "control"),
        ("yaobank/customer:80/tcp", 0, f"{CUSTOMER}:80", "node1"),
        ("yaobank/summary:80/tcp", 0, f"{SUMMARY1}:80", "node1"),
        ("yaobank/summary:80/tcp", 1, f"{SUMMARY2}:80", "node2"),
    ]
    assert [r["local"] for r in recs] == [True, False, False, False]


def test_unknown_service_id_is_shown_as_unnamed() -> None:
    [f] = dump.nat_records(snap(nat_fe=[(FeKey.make("198.19.32.99", 53, "udp"), FeValue(svc_id=77, count=0))],
                                svc_meta={}))
    assert f["service"] is None and f["svc_id"] == 77 and f["backends"] == [] and f["proto"] == "udp"


# ---- conntrack ------------------------------------------------------------------------------------


def test_tunnel_connection_on_ingress_node() -> None:
    recs = dump.conntrack_records(snap(ct=tunnel_connection()["control"]))
    assert [r["type"] for r in recs] == ["NAT_FWD", "NAT_REV"]
    assert [r["entry"] for r in recs] == ["forward", "reverse"]
    for r in recs:
        assert (r["client"], r["frontend"], r["backend"]) == (f"{CLIENT}:51234", f"{CONTROL}:30180", f"{CUSTOMER}:80")
        assert (r["service"], r["tunnel_peer"], r["tunnel_peer_node"]) == ("yaobank/customer", NODE1, "node1")
        assert r["tunnel"] is True and r["dsr"] is False
        assert r["state"] == "established" and r["timeout_s"] == 3600
        assert r["age_s"] == 5 and r["idle_s"] == 2 and r["expires_in_s"] == 3598 and r["expired"] is False
    fwd, rev = recs
    assert fwd["follows"] == "NAT_REV" and rev["follows"] is None
    assert fwd["tcp_flags"] == rev["tcp_flags"] == {"client": ["SYN", "ACK"], "server": ["SYN", "ACK"]}
    assert rev["packets"] == {"from_client": 4, "to_client": 3} and rev["bytes"] == {"from_client": 300, "to_client": 900}
    assert "NODEPORT" in rev["flags"] and "TUNNEL" in rev["flags"]


def test_tunnel_connection_on_backend_node_names_the_frontend_and_ingress_node() -> None:
    node1 = snap("node1", ct=tunnel_connection()["node1"])
    [r] = dump.conntrack_records(node1)
    assert (r["type"], r["entry"]) == ("NORMAL", "normal")
    assert (r["client"], r["frontend"], r["backend"]) == (f"{CLIENT}:51234", f"{CONTROL}:30180", f"{CUSTOMER}:80")
    assert r["service"] == "yaobank/customer"          # the NodePort wildcard matches the ingress node's address
    assert (r["tunnel_peer"], r["tunnel_peer_node"]) == (CONTROL, "control")
    assert "FROM_TUNNEL" in r["flags"]


def test_dsr_flag_is_decoded() -> None:
    fl = CT_F_TUNNEL | CT_F_DSR | CT_F_NODEPORT
    rev = ct_entry(CLIENT, 40000, CUSTOMER, 80, type=CT_NAT_REV, flags=fl, nat=(CONTROL, 30180), peer=NODE1,
                   tcp_client=SYNACK)
    [r] = dump.conntrack_records(snap(ct=[rev]))
    assert r["dsr"] is True and "DSR" in r["flags"]
    # The ingress node of a DSR flow never sees the server: SYN+ACK from the client is "established".
    assert r["state"] == "established"


@pytest.mark.parametrize("client_flags, server_flags, state, timeout", [
    (SYN, 0, "SYN-sent", 20),
    (SYN, SYNACK, "established", 3600),         # SYN from both sides and an ACK from either
    (SYNACK, 0, "SYN-sent", 20),                # the server has not answered
    (SYNACK, SYNACK, "established", 3600),
    (SYNACK | TCPF_FIN, SYNACK, "established", 3600),           # one FIN: still open
    (SYNACK | TCPF_FIN, SYNACK | TCPF_FIN, "FINs seen", 30),
    (SYNACK, SYNACK | TCPF_RST, "RST seen", 40),
    (SYN | TCPF_RST, 0, "RST seen", 40),
])
def test_tcp_state_and_timeout(client_flags: int, server_flags: int, state: str, timeout: int) -> None:
    e = ct_entry(CLIENT, 40001, CUSTOMER, 80, type=CT_NAT_REV, flags=CT_F_NODEPORT, nat=(CONTROL, 30180),
                 tcp_client=client_flags, tcp_server=server_flags)
    [r] = dump.conntrack_records(snap(ct=[e]))
    assert (r["state"], r["timeout_s"]) == (state, timeout)
    assert r["expires_in_s"] == timeout - 2


def test_udp_has_no_tcp_state_and_its_own_timeout() -> None:
    e = ct_entry(CLIENT, 5000, CUSTOMER, 7, "udp", type=CT_NAT_REV, flags=CT_F_NODEPORT, nat=(CONTROL, 30107))
    [r] = dump.conntrack_records(snap(ct=[e]))
    assert r["proto"] == "udp" and r["state"] is None and r["timeout_s"] == 60 and r["expires_in_s"] == 58


def test_idle_past_timeout_is_expired() -> None:
    e = ct_entry(CLIENT, 40002, CUSTOMER, 80, type=CT_NAT_REV, flags=CT_F_NODEPORT, nat=(CONTROL, 30180),
                 tcp_client=SYN, age_s=30, idle_s=25)
    [r] = dump.conntrack_records(snap(ct=[e]))
    assert r["state"] == "SYN-sent" and r["expired"] is True and r["expires_in_s"] == 0


def test_forward_entry_follows_its_reverse_entry() -> None:
    """The reply refreshes only NAT_REV: the forward entry's own flags would say SYN-sent forever."""
    fwd, rev = tunnel_connection()["control"]
    fwd[1].last_seen_ns = NOW - 100 * SEC          # stale on its own, alive through its reverse entry
    recs = {r["type"]: r for r in dump.conntrack_records(snap(ct=[fwd, rev]))}
    assert recs["NAT_FWD"]["state"] == "established" and recs["NAT_FWD"]["expired"] is False
    assert recs["NAT_FWD"]["expires_in_s"] == recs["NAT_REV"]["expires_in_s"]
    [orphan] = dump.conntrack_records(snap(ct=[fwd]))
    assert orphan["state"] is None and orphan["expired"] is True and orphan["expires_in_s"] == 0


def test_pod_client_clusterip_connection() -> None:
    """customer -> summary ClusterIP on node1: the pod is the client, the ClusterIP the frontend."""
    fl = CT_F_CLUSTERIP | CT_F_POD_CLIENT
    fwd = ct_entry(CUSTOMER, 60000, "198.19.32.20", 80, type=CT_NAT_FWD, flags=fl, nat=(SUMMARY2, 80), tcp_client=SYN)
    rev = ct_entry(CUSTOMER, 60000, SUMMARY2, 80, type=CT_NAT_REV, flags=fl, nat=("198.19.32.20", 80), tcp_client=SYN)
    recs = dump.conntrack_records(snap("node1", ct=[fwd, rev]))
    for r in recs:
        assert (r["client"], r["frontend"], r["backend"]) == (f"{CUSTOMER}:60000", "198.19.32.20:80", f"{SUMMARY2}:80")
        assert r["service"] == "yaobank/summary" and r["tunnel_peer"] is None and r["tunnel"] is False
        assert "POD_CLIENT" in r["flags"] and r["state"] == "SYN-sent"


def test_conntrack_filters() -> None:
    entries = tunnel_connection()["control"] + [
        ct_entry(CUSTOMER, 60000, "198.19.32.20", 80, type=CT_NAT_FWD, flags=CT_F_CLUSTERIP | CT_F_POD_CLIENT,
                 nat=(SUMMARY2, 80), tcp_client=SYN),
        ct_entry(CUSTOMER, 60000, SUMMARY2, 80, type=CT_NAT_REV, flags=CT_F_CLUSTERIP | CT_F_POD_CLIENT,
                 nat=("198.19.32.20", 80), tcp_client=SYN, idle_s=21),
    ]
    recs = dump.conntrack_records(snap(ct=entries))
    f = dump.filter_conntrack
    assert len(f(recs, client=CLIENT)) == 2
    assert len(f(recs, client=f"{CLIENT}:51234")) == 2 and f(recs, client=f"{CLIENT}:1") == []
    for q in ("yaobank/customer", "customer", "yaobank/customer:80/tcp", f"{CONTROL}:30180", CONTROL):
        assert {r["client_addr"] for r in f(recs, service=q)} == {CLIENT}, q
    assert {r["client_addr"] for r in f(recs, service="summary")} == {CUSTOMER}
    assert {r["client_addr"] for r in f(recs, state="established")} == {CLIENT}
    assert f(recs, state="syn-sent") == [r for r in recs if r["client_addr"] == CUSTOMER]
    assert f(recs, state="fins-seen") == []
    assert {(r["type"], r["client_addr"]) for r in f(recs, state="expired")} == {("NAT_FWD", CUSTOMER), ("NAT_REV", CUSTOMER)}
    assert set(dump.STATE_CHOICES) == {"syn-sent", "established", "fins-seen", "rst-seen", "expired"}


# ---- counters --------------------------------------------------------------------------------------


def counters(**by_name: int) -> list[int]:
    """{'from_hep__NAT_NEW': 3} -> the N_HOOKS * 32 slots of the counters map."""
    from ebpf_nodeport.abi import HOOKS, N_HOOKS, REASON_IDS
    hooks = {v: k for k, v in HOOKS.items()}
    slots = [0] * (N_HOOKS * MAX_REASONS)
    for key, n in by_name.items():
        hook, reason = key.split("__")
        rid = REASON_IDS[reason] if reason in REASON_IDS else int(reason)
        slots[hooks[hook] * MAX_REASONS + rid] = n
    return slots


def test_counters_per_hook_and_reason_with_totals_and_drops() -> None:
    from ebpf_nodeport.abi import REASONS
    unknown = [i for i in range(MAX_REASONS) if i not in REASONS]   # ids this build has no name for
    assert len(unknown) >= 2, "the counters test needs two reason ids without a name"
    c = dump.counter_records(snap(counters=counters(from_hep__NAT_NEW=1, from_hep__ENCAP=5, from_hep__REV_NAT=6,
                                                     from_hep__DROP_TUN_UNKNOWN_SRC=2, from_wep__DSR_REPLY=6,
                                                     to_wep__CT_EST=6, **{f"to_wep__{unknown[-1]}": 1})))
    rows = {(r["hook"], r["reason"]): r for r in c["counters"]}
    assert rows[("from_hep", "NAT_NEW")]["packets"] == 1 and rows[("from_hep", "NAT_NEW")]["id"] == 1
    assert rows[("from_hep", "DROP_TUN_UNKNOWN_SRC")] == {
        "hook": "from_hep", "reason": "DROP_TUN_UNKNOWN_SRC", "id": 17, "packets": 2, "drop": True,
        "description": "VXLAN from an address that is not a node"}
    assert rows[("to_wep", f"REASON_{unknown[-1]}")]["packets"] == 1   # an id this build does not know is still shown
    assert ("to_wep", f"REASON_{unknown[0]}") not in rows                # unknown and zero: not listed
    assert rows[("from_wep", "PASS")]["packets"] == 0          # every known reason listed, zeros too
    assert c["totals"] == {"from_hep": 14, "from_wep": 6, "to_wep": 7, "to_hep": 0, "all": 27}
    assert c["drops"] == {"from_hep": 2, "from_wep": 0, "to_wep": 0, "to_hep": 0, "all": 2}


def test_counter_delta() -> None:
    before = dump.counter_records(snap(counters=counters(from_hep__NAT_NEW=1)))
    after = dump.counter_records(snap(counters=counters(from_hep__NAT_NEW=2, from_hep__ENCAP=5)))
    assert [(r["hook"], r["reason"], r["packets"]) for r in dump.counter_delta(before, after)] == [
        ("from_hep", "NAT_NEW", 1), ("from_hep", "ENCAP", 5)]


# ---- routes / config -----------------------------------------------------------------------------


def test_routes_and_node_addresses() -> None:
    s = snap(nodes=[Addr(ip2int(a)) for a in (NODE2, CONTROL, NODE1)], dsr_optout=[RouteKey.cidr("198.19.15.0/24")])
    r = dump.route_records(s)
    assert [(b["cidr"], b["node"], b["local"]) for b in r["pod_blocks"]] == [
        ("198.19.16.0/26", "control", True), ("198.19.16.64/26", "node1", False), ("198.19.16.128/26", "node2", False)]
    assert r["node_addresses"] == [{"addr": CONTROL, "node": "control", "self": True},
                                   {"addr": NODE1, "node": "node1", "self": False},
                                   {"addr": NODE2, "node": "node2", "self": False}]
    assert r["dsr_optout"] == ["198.19.15.0/24"]


def test_config_mode_flags() -> None:
    s = snap()
    c = dump.config_record(s)
    assert (c["mode"], c["enabled"], c["trace"], c["flags"]) == ("tunnel", True, False, ["ENABLED"])
    s.cfg.flags = CFG_F_ENABLED | CFG_F_DSR | CFG_F_TRACE
    c = dump.config_record(s)
    assert (c["mode"], c["trace"], c["flags"]) == ("dsr", True, ["DSR", "TRACE", "ENABLED"])
    assert c["timeouts_s"]["tcp_est"] == 3600 and c["timeouts_s"]["udp"] == 60


# ---- documents, JSON field names, tables ----------------------------------------------------------

# The `-o json` fields docs/study-the-maps.md promises; a change here is a change of the contract.
FIELDS = {
    "nat": {"frontend", "addr", "port", "proto", "kind", "service", "service_port", "service_key", "svc_id",
            "backend_count", "local_count", "flags", "backends"},
    "nat_backend": {"ordinal", "addr", "port", "backend", "local", "node", "missing"},
    "backends": {"svc_id", "service", "service_port", "service_key", "ordinal", "addr", "port", "backend", "local",
                 "node", "in_use", "terminating"},
    "conntrack": {"proto", "type", "entry", "client", "client_addr", "client_port", "psnat_port", "frontend", "frontend_addr",
                  "frontend_port", "backend", "backend_addr", "backend_port", "service", "service_port",
                  "service_key", "state", "follows", "tcp_flags", "tunnel_peer", "tunnel_peer_node", "flags",
                  "tunnel", "dsr", "packets", "bytes", "age_s", "idle_s", "timeout_s", "expires_in_s", "expired",
                  "key", "value"},
    "counters": {"hook", "reason", "id", "packets", "drop", "description"},
    "config": {"node_ip", "host_ifindex", "vni", "tunnel_port", "fabric_mtu", "flags", "mode", "enabled", "trace",
               "timeouts_s", "maps"},
    "trace": {"ts_ns", "node", "hook", "reason", "reason_id", "proto", "src", "dst", "nat_src", "nat_dst", "saddr",
              "sport", "daddr", "dport", "nat_saddr", "nat_sport", "nat_daddr", "nat_dport", "tunnel_peer",
              "tunnel_peer_node", "tunnel", "flags", "dsr", "drop", "ifindex", "line"},
}


def full_snap() -> dump.Snapshot:
    return snap(ct=tunnel_connection()["control"], nodes=[Addr(ip2int(CONTROL))],
                counters=counters(from_hep__NAT_NEW=1, from_hep__DROP_MALFORMED=1))


def test_json_documents_have_the_documented_fields_and_serialise() -> None:
    s = full_snap()
    docs = {k: dump.node_document(k, s, CONTROL) for k in dump.KINDS}
    for k, d in docs.items():
        assert d["node"] == "control" and d["address"] == CONTROL
        assert json.loads(json.dumps(d)) == d, k
    assert set(docs["nat"]["frontends"][0]) == FIELDS["nat"]
    assert set(docs["nat"]["frontends"][0]["backends"][0]) == FIELDS["nat_backend"]
    assert set(docs["backends"]["backends"][0]) == FIELDS["backends"]
    assert set(docs["conntrack"]["entries"][0]) == FIELDS["conntrack"]
    assert set(docs["counters"]) == {"node", "address", "counters", "totals", "drops"}
    assert set(docs["counters"]["counters"][0]) == FIELDS["counters"]
    assert set(docs["routes"]) == {"node", "address", "pod_blocks", "node_addresses", "dsr_optout"}
    assert set(docs["config"]["config"]) == FIELDS["config"]


def test_node_document_passes_conntrack_filters_and_rejects_unknown_kinds() -> None:
    s = full_snap()
    assert dump.node_document("conntrack", s, client="198.19.15.1")["entries"] == []
    assert len(dump.node_document("conntrack", s, service="customer")["entries"]) == 2
    with pytest.raises(ValueError, match="unknown dump"):
        dump.node_document("bogus", s)


def render_text(kind: str, s: dump.Snapshot) -> str:
    out = Console(file=io.StringIO(), width=240, record=True, color_system=None)
    dump.render(kind, {"lab": "t", "dump": kind, "nodes": [dump.node_document(kind, s, CONTROL)]}, out)
    return out.export_text()


def test_tables_render_every_dump() -> None:
    s = full_snap()
    text = {k: render_text(k, s) for k in dump.KINDS}
    assert "control (198.19.0.1) nat frontends: 4" in text["nat"]
    assert "*:30180" in text["nat"] and "yaobank/customer:80/tcp" in text["nat"] and "198.19.16.65:80" in text["nat"]
    assert "missing in nat_be" in text["nat"]
    assert "yaobank/summary:80/tcp" in text["backends"] and "node2" in text["backends"]
    ct_text = text["conntrack"]
    assert "conntrack: 2" in ct_text and "forward" in ct_text and "reverse" in ct_text
    assert f"{CLIENT}:51234" in ct_text and "established" in ct_text and "node1" in ct_text and "5.0s / 59m58s" in ct_text
    assert "NAT_NEW" in text["counters"] and "DROP_MALFORMED" in text["counters"] and "drops: 1" in text["counters"]
    assert "PASS" not in text["counters"]                 # all-zero rows are left out of the table
    assert "198.19.16.64/26" in text["routes"] and "node1" in text["routes"]
    assert "tunnel" in text["config"] and "4096 / 4789" in text["config"]


def test_duration_format() -> None:
    assert [dump.duration(x) for x in (None, 0.42, 12, 185, 3600, 3725)] == ["-", "0.4s", "12s", "3m05s", "1h00m", "1h02m"]


# ---- trace ------------------------------------------------------------------------------------------


def ev(hook: int, reason: str, src: tuple[str, int], dst: tuple[str, int], nat_src: tuple[str, int] | None = None,
       nat_dst: tuple[str, int] | None = None, peer: str | None = None, flags: int = 0, proto: int = 6) -> Event:
    from ebpf_nodeport.abi import REASON_IDS
    ns, nd = nat_src or src, nat_dst or dst
    return Event(ts_ns=1, hook=hook, reason=REASON_IDS[reason], proto=proto, flags=flags,
                 saddr=ip2int(src[0]), sport=src[1], daddr=ip2int(dst[0]), dport=dst[1],
                 nat_saddr=ip2int(ns[0]), nat_sport=ns[1], nat_daddr=ip2int(nd[0]), nat_dport=nd[1],
                 tun_peer=ip2int(peer) if peer else 0, ifindex=2)


C, FE, BE = (CLIENT, 51234), (CONTROL, 30180), (CUSTOMER, 80)
TUN = CT_F_TUNNEL | CT_F_NODEPORT


@pytest.mark.parametrize("node, event, line", [
    ("control", ev(0, "NAT_NEW", C, FE, nat_dst=BE, peer=NODE1, flags=TUN),
     "control from_hep 198.19.15.254:51234 -> 198.19.0.1:30180 NAT -> 198.19.16.65:80 via tunnel to 198.19.0.2 (node1) [NAT_NEW]"),
    ("control", ev(0, "ENCAP", C, FE, nat_dst=BE, peer=NODE1, flags=TUN),
     "control from_hep 198.19.15.254:51234 -> 198.19.0.1:30180 NAT -> 198.19.16.65:80 via tunnel to 198.19.0.2 (node1) [ENCAP]"),
    ("node1", ev(0, "DECAP", C, BE, peer=CONTROL, flags=TUN | CT_F_FROM_TUNNEL),
     "node1 from_hep 198.19.15.254:51234 -> 198.19.16.65:80 decap from tunnel 198.19.0.1 (control) [DECAP]"),
    ("node1", ev(2, "CT_EST", C, BE, flags=TUN | CT_F_FROM_TUNNEL),
     "node1 to_wep 198.19.15.254:51234 -> 198.19.16.65:80 tracked [CT_EST]"),
    ("node1", ev(1, "ENCAP", BE, C, peer=CONTROL, flags=TUN | CT_F_FROM_TUNNEL),
     "node1 from_wep 198.19.16.65:80 -> 198.19.15.254:51234 encap via tunnel to 198.19.0.1 (control) [ENCAP]"),
    ("control", ev(0, "REV_NAT", BE, C, nat_src=FE, peer=NODE1, flags=TUN),
     "control from_hep 198.19.16.65:80 -> 198.19.15.254:51234 reverse NAT source -> 198.19.0.1:30180 from tunnel 198.19.0.2 (node1) [REV_NAT]"),
    ("node1", ev(1, "DSR_REPLY", BE, C, nat_src=FE, flags=TUN | CT_F_DSR | CT_F_FROM_TUNNEL),
     "node1 from_wep 198.19.16.65:80 -> 198.19.15.254:51234 DSR reply source -> 198.19.0.1:30180 (DSR) [DSR_REPLY]"),
    ("node1", ev(0, "DROP_TUN_UNKNOWN_SRC", ("198.19.9.9", 50000), (NODE1, 4789), proto=17),
     "node1 from_hep udp 198.19.9.9:50000 -> 198.19.0.2:4789 DROP [DROP_TUN_UNKNOWN_SRC]"),
    ("control", ev(0, "PASS", (CLIENT, 0), (CONTROL, 0), proto=1),
     "control from_hep icmp 198.19.15.254 -> 198.19.0.1 pass [PASS]"),
])
def test_trace_lines(node: str, event: Event, line: str) -> None:
    rec = event_record(Event.from_bytes(bytes(event)), node, NAMES)
    assert rec["line"] == line == format_record(rec)
    assert set(rec) == FIELDS["trace"]
    assert json.loads(json.dumps(rec)) == rec


def test_trace_record_fields() -> None:
    rec = event_record(ev(0, "NAT_NEW", C, FE, nat_dst=BE, peer=NODE1, flags=TUN | CT_F_DSR), "control", NAMES)
    assert (rec["hook"], rec["reason"], rec["reason_id"], rec["proto"]) == ("from_hep", "NAT_NEW", 1, "tcp")
    assert (rec["src"], rec["dst"], rec["nat_src"], rec["nat_dst"]) == (f"{CLIENT}:51234", f"{CONTROL}:30180",
                                                                      f"{CLIENT}:51234", f"{CUSTOMER}:80")
    assert (rec["tunnel_peer"], rec["tunnel_peer_node"], rec["tunnel"]) == (NODE1, "node1", "to")
    assert rec["dsr"] is True and rec["drop"] is False and rec["flags"] == ["TUNNEL", "DSR", "NODEPORT"]


def test_trace_filters() -> None:
    req = event_record(ev(0, "NAT_NEW", C, FE, nat_dst=BE, peer=NODE1), "control")
    reply = event_record(ev(0, "REV_NAT", BE, C, nat_src=FE, peer=NODE1), "control")
    other = event_record(ev(1, "NAT_NEW", (CUSTOMER, 60000), ("198.19.32.20", 80), nat_dst=(SUMMARY2, 80)), "node1")
    passed = event_record(ev(0, "PASS", (NODE1, 179), (CONTROL, 179)), "control")
    assert [matches(r, client=CLIENT) for r in (req, reply, other)] == [True, True, False]
    assert [matches(r, port=30180) for r in (req, reply, other)] == [True, True, False]
    assert [matches(r, port=80) for r in (req, reply, other)] == [True, True, True]      # after NAT counts too
    assert [matches(r, client=CUSTOMER) for r in (req, reply, other)] == [True, True, True]
    assert matches(req, client=CLIENT, port=9) is False
    assert matches(passed) is False and matches(passed, include_pass=True) is True


def test_one_tracer_per_node(tmp_path) -> None:
    """A ring buffer has one consumer position: a second tracer of a node must be refused, not split events."""
    def tracer(*nodes: str) -> Tracer:
        return Tracer({n: f"/sys/fs/bpf/unit/{n}" for n in nodes}, holder_dir=tmp_path, owner="lab 'unitlab'")

    first = tracer("control", "node1")
    first.claim()
    try:
        second = tracer("node1")
        with pytest.raises(TraceError, match=rf"node1 of lab 'unitlab' is already being traced \(pid {__import__('os').getpid()}\)"):
            second.claim()
        tracer("node2").claim()    # another node is free
    finally:
        first.stop()
    again = tracer("node1")
    again.claim()                                   # released by stop()
    again.stop()


# ---- study CLI helpers (no root: errors before any kernel access) ------------------------------------


def lab_state(mode: str = "kube-proxy") -> LabState:
    members = {"control": Member("node", "nl-zzunit-control", CONTROL), "node1": Member("node", "nl-zzunit-node1", NODE1),
               "host1": Member("host", "nl-zzunit-host1", CLIENT), "customer": Member("pod", "nl-zzunit-customer", node="node1")}
    return LabState("zzunit", {}, members, {}, [], felix=for_mode(FelixConfig(), mode))


def test_select_nodes_errors_are_one_clear_line() -> None:
    from netns_lab.errors import LabError
    from netns_lab.commands.study import lab_nodes, select_nodes

    st = lab_state()
    assert lab_nodes(st) == {"control": CONTROL, "node1": NODE1}
    assert st.addresses() == {CONTROL: "control", NODE1: "node1", CLIENT: "host1"}
    with pytest.raises(LabError, match=r"unknown node 'host1' of lab 'zzunit' \(nodes: control, node1\)"):
        select_nodes("zzunit", st, "host1")
    with pytest.raises(LabError, match=r"lab 'zzunit' runs mode kube-proxy: no BPF maps are pinned"):
        select_nodes("zzunit", st, None)
    with pytest.raises(LabError, match=r"node 'node1' of lab 'zzunit' has no BPF maps"):
        select_nodes("zzunit", st, "node1")


def test_commands_are_registered_on_the_cli_group() -> None:
    from click.testing import CliRunner

    from netns_lab import cli

    group = cli.cli
    assert {"dump", "trace", "explain"} <= set(group.commands)
    # every map dump, plus `dump affinity` (it needs the lab's service spec for the timeouts)
    assert set(group.commands["dump"].commands) == set(dump.KINDS) | {"affinity"}
    res = CliRunner().invoke(group, ["dump", "conntrack", "--state", "bogus"])
    assert res.exit_code == 2 and "bogus" in res.output


def test_affinity_timeouts_cover_every_frontend() -> None:
    """`dump affinity` finds the timeout of a NodePort entry (node address, node port) too, not only ClusterIP/LB ones."""
    import io

    from ebpf_nodeport.abi import ip2int
    from netns_lab.commands.study import affinity_timeouts
    from netns_lab.k8s import manifest
    from netns_lab.topology import default_topology

    text = ("apiVersion: v1\nkind: Pod\nmetadata: {name: p, labels: {app: p}}\n"
            "spec: {containers: [{name: c, image: x, ports: [{containerPort: 80}]}]}\n---\n"
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n"
            "spec: {type: LoadBalancer, selector: {app: p}, sessionAffinity: ClientIP,\n"
            "       sessionAffinityConfig: {clientIP: {timeoutSeconds: 7}}, ports: [{port: 80, nodePort: 30080}]}\n")
    topo = manifest.load(["-"], manifest.nodes_only(default_topology()), io.StringIO(text)).topology
    svc = topo.service("s")
    want = {(ip2int(svc.cluster_ip), 80, 6), (ip2int(svc.load_balancer_ip), 80, 6)}
    want |= {(ip2int(n.address), 30080, 6) for n in topo.nodes}
    assert affinity_timeouts(topo) == dict.fromkeys(want, 7)


@pytest.mark.parametrize("query,ok", [
    ("yaobank/customer", True), ("customer", True), ("yaobank/customer:80/tcp", True),
    ("198.19.0.1:30180", True), ("198.19.32.10", True), ("nosuch", False), ("yaobank/nosuch", False),
])
def test_conntrack_service_filter_names_a_service(query: str, ok: bool) -> None:
    """`dump conntrack --service` with a name the lab does not have is one error line, not an empty table."""
    from netns_lab.commands.study import check_service_query
    from netns_lab.errors import LabError
    from netns_lab.k8s import manifest

    topo = manifest.default_lab()
    if ok:
        check_service_query(query, topo)
    else:
        with pytest.raises(LabError, match="no such service in the lab"):
            check_service_query(query, topo)
