"""Spoofing from outside the cluster never reaches a pod, and the datapath counts it (issue 6, lab side).

host1 is an ordinary external client, so it can forge what a node would send: a VXLAN
packet to node1:4789 carrying a SYN for the customer pod, or a packet whose source is a
pod address. node1's from_hep must drop both and count the reason; a capture in the
customer pod's namespace proves nothing got through, and a real curl afterwards proves
the capture would have seen it.
"""

from __future__ import annotations

import json

import pytest

from ebpf_nodeport.abi import TUNNEL_PORT, TUNNEL_VNI
from netns_lab.capture import tcpdump

from .conftest import Lab, counter, host_python, running_lab

pytestmark = [pytest.mark.root, pytest.mark.lab]

HOST1 = "198.19.15.254"
NODE1 = "198.19.0.2"


@pytest.fixture(scope="module")
def lab() -> Lab:
    with running_lab("sp", "tunnel") as lab:
        yield lab


def send_from_host1(lab: Lab, scapy_expr: str, count: int = 3) -> None:
    """Send `count` copies of a scapy frame (an expression) out of host1's eth0."""
    host_python(lab, "from scapy.all import *\n"
                     "conf.verb = 0\n"
                     f"sendp({scapy_expr}, iface='eth0', count={count})\n")


def eth0_mac(lab: Lab, member: str) -> str:
    out = lab.exec(member, "ip", "-j", "link", "show", "eth0").stdout
    return json.loads(out)[0]["address"]


@pytest.mark.parametrize("case", ["vxlan", "pod_source"])
def test_forged_packets_from_host1_do_not_reach_the_pod(lab: Lab, case: str) -> None:
    customer = lab.pod_ip("customer")
    # Both MACs explicit: scapy has no route to a pod address from host1 and would leave the
    # source MAC zero, which the fabric bridge drops before node1 ever sees the frame.
    l2 = f"Ether(src='{eth0_mac(lab, 'host1')}', dst='{eth0_mac(lab, 'node1')}')"
    syn = f"IP(src='{HOST1}', dst='{customer}')/TCP(sport=40001, dport=80, flags='S')"
    if case == "vxlan":
        # A well-formed tunnel packet with the right VNI, from an address that is not a node.
        frame = (f"{l2}/IP(src='{HOST1}', dst='{NODE1}')/UDP(sport=50000, dport={TUNNEL_PORT})"
                 f"/VXLAN(flags=0x08, vni={TUNNEL_VNI})/Ether()/{syn}")
        reason = "DROP_TUN_UNKNOWN_SRC"
    else:
        # A packet claiming to come from summary-1, a pod on node1 itself, arriving from the
        # fabric. (A *remote* pod's address cannot be told apart from real traffic here: pod
        # traffic between nodes is routed natively, so it does arrive on eth0.)
        frame = (f"{l2}/IP(src='{lab.pod_ip('summary-1')}', dst='{customer}')"
                 f"/TCP(sport=40002, dport=80, flags='S')")
        reason = "DROP_SPOOFED"
    before = counter(lab, "node1", "from_hep", reason)
    with tcpdump(lab.netns("customer"), "tcp port 80", interface="eth0") as forged:
        send_from_host1(lab, frame, count=3)
    assert counter(lab, "node1", "from_hep", reason) - before == 3
    assert forged.packets == [], f"forged packets reached the customer pod:\n{forged.lines}"

    # The same capture does see real traffic: the empty result above is not a blind capture.
    with tcpdump(lab.netns("customer"), "tcp port 80", interface="eth0") as real:
        lab.curl("http://198.19.0.1:30180/")
    assert real.between(HOST1, customer), real.lines
