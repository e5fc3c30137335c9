"""Fragmented datagrams to a NodePort (lib/frags.h): later fragments follow their first one.

A datagram's fragments are built by scapy's own fragment(): the first carries the UDP
header, the later ones only data. The first records its ports under (source, destination,
protocol, IP id); a later one finds them and is NATed and tunnelled like it (addresses
only). A DF-clear packet too big to encapsulate is DNATed and left to the kernel (TC_ACT_OK,
marked for to_hep), which fragments it; to_hep encapsulates what the mark says.
"""
from __future__ import annotations

from scapy.layers.inet import IP, UDP, defragment, fragment
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from ebpf_nodeport.testrun import skb_ctx

from .expect import Encap, Nat, Same, check_result
from .paths import hop
from .topo import CLIENT, CONTROL, CUSTOMER, MAC_CLIENT, MAC_NODE, NODES, NP_ECHO, cport

SKB_MARK_BYPASS, SKB_MARK_ENCAP = 0x01000000, 0x02000000


def datagram(size: int, sport: int, ip_id: int, fragsize: int) -> list[bytes]:
    """host1 -> control:30107, `size` bytes of UDP payload with DF clear, as fragments."""
    pkt = IP(src=CLIENT, dst=CONTROL, id=ip_id, ttl=64) / UDP(sport=sport, dport=NP_ECHO) / Raw(bytes(size))
    return [bytes(Ether(src=MAC_CLIENT, dst=MAC_NODE["control"]) / f) for f in fragment(pkt, fragsize=fragsize)]


def test_later_fragments_follow_the_first_through_the_tunnel(cluster):
    """Each fragment is DNATed and tunnelled, the backend node takes each out of the tunnel,
    and what it delivers reassembles into the datagram addressed to the pod, checksum right
    (the first fragment's checksum update covers the data the later ones carry)."""
    w = "fragments, tunnel"
    sport = cport()
    frags = datagram(2000, sport, 0x4242, fragsize=1000)
    assert len(frags) == 3
    outs = [hop(cluster, "control", "from_hep", frags[0], "REDIRECT", "NAT_NEW", where=w)]
    outs += [hop(cluster, "control", "from_hep", f, "REDIRECT", "ENCAP", where=w) for f in frags[1:]]
    delivered = [hop(cluster, "node1", "from_hep", r.data, "OK", "DECAP", where=w).data for r in outs]
    whole = defragment([IP(d[14:]) for d in delivered])
    assert len(whole) == 1
    dgram = IP(bytes(whole[0]))
    assert (dgram.src, dgram.dst, dgram[UDP].sport, dgram[UDP].dport) == (CLIENT, CUSTOMER, sport, 7)
    assert bytes(dgram[UDP].payload) == bytes(2000)
    sent = dgram[UDP].chksum
    dgram[UDP].chksum = None
    assert IP(bytes(dgram))[UDP].chksum == sent, "UDP checksum of the reassembled datagram"


def test_a_later_fragment_of_another_datagram_is_untouched(cluster):
    sport = cport()
    first = datagram(2000, sport, 0x1111, fragsize=1000)[0]
    hop(cluster, "control", "from_hep", first, "REDIRECT", "NAT_NEW", where="first")
    other = datagram(2000, sport, 0x2222, fragsize=1000)[1]   # same flow, another IP id
    hop(cluster, "control", "from_hep", other, "OK", "PASS", Same(), "unknown id")


def test_too_big_to_encapsulate_with_df_clear_goes_to_the_kernel_marked(cluster):
    """1,500 bytes (a full-size first fragment) cannot take 50 more: DNAT, TC_ACT_OK for the
    kernel to fragment; the pieces then meet to_hep, which encapsulates as the mark says."""
    w = "too big, DF clear"
    sport = cport()
    first = datagram(4000, sport, 0x3333, fragsize=1480)[0]
    assert len(first) == 14 + 1500
    r = hop(cluster, "control", "from_hep", first, "OK", "NAT_NEW", where=w)
    assert (IP(r.data[14:]).dst, IP(r.data[14:])[UDP].dport) == (CUSTOMER, 7)
    pieces = [r.data[:14] + bytes(f) for f in fragment(IP(r.data[14:]), fragsize=1400)]   # as the kernel sends them
    assert len(pieces) == 2
    ctx = skb_ctx(mark=SKB_MARK_BYPASS | SKB_MARK_ENCAP | NP_ECHO)
    check_result(cluster.run("control", "to_hep", pieces[0], ctx=ctx), "OK", "ENCAP", where=w)
    res = cluster.run("control", "to_hep", pieces[1], ctx=ctx)   # no UDP header: compared byte for byte
    check_result(res, "OK", "ENCAP", Encap(NODES["control"], NODES["node1"], Nat(), dsr=False, fe_port=NP_ECHO,
                                           flow_ports=(sport, 7)), where=w)
