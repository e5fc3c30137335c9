"""Packet fuzzing for the datapath: a seeded mutator and a judge of what a program may output.

The judge (`judge`) encodes "never forwarded changed unless it is a well-formed rewrite of
the input": an output the program forwards (OK/REDIRECT) must be identical to the input,
or the input with addresses/ports rewritten and TTL decremented by at most one (nothing
else changed, checksums updated incrementally: whatever error the input checksum had, the
output has the same), or the input encapsulated in our VXLAN toward a node, or a VXLAN
input decapsulated (and maybe rewritten), or an ICMP answer to the input: frag-needed, or port
unreachable (a service without a backend for it).
Pure Python over bytes: it runs on every output, scapy would be 50x slower.
"""
from __future__ import annotations

import random
import struct
from dataclasses import dataclass

from ebpf_nodeport.abi import TUNNEL_PORT, TUNNEL_VNI, VXLAN_ENCAP_LEN, VXLAN_F_VNI
from ebpf_nodeport.testrun import ETH_HLEN, csum16, ip_hdr_csum_ok, l4_header_ok, parse_ip4, parse_vxlan

MIN_LEN = {0x0800: ETH_HLEN + 20, 0x86DD: ETH_HLEN + 40}   # shorter: the kernel's test-run says EINVAL
MAX_LEN = 1514


def min_len(frame: bytes) -> int:
    return MIN_LEN.get(struct.unpack_from("!H", frame, 12)[0], ETH_HLEN)


def malformed(frame: bytes) -> bool:
    """IPv4 by ethertype, but the IPv4 header or the TCP/UDP header after it is invalid or
    cut (the contract's DROP_MALFORMED cases for the outer packet)."""
    if frame[12:14] != b"\x08\x00":
        return False
    ip = parse_ip4(frame)
    if ip is None or not ip.complete:
        return True
    if not l4_header_ok(ip):
        return True
    if ip.proto == 17 and not ip.is_fragment:
        ulen = struct.unpack_from("!H", ip.seg, 4)[0]
        return not 8 <= ulen <= len(ip.seg)
    return False


def _residual(ip) -> int:
    pseudo = ip.saddr + ip.daddr + struct.pack("!BBH", 0, ip.proto, len(ip.seg))
    r = csum16(ip.seg, csum16(pseudo))
    return 0xFFFF if r == 0 else r


def _same_l4_except_ports_csum(a, b) -> str | None:
    if len(a.seg) != len(b.seg):
        return "L4 length changed"
    if a.is_later_fragment or a.proto not in (6, 17):
        if a.seg != b.seg:
            return "L4 bytes changed in a packet without ports"
        return None
    cs = 16 if a.proto == 6 else 6
    if len(a.seg) < cs + 2:
        return None if a.seg == b.seg else "L4 changed in a cut segment"
    if a.seg[4:cs] != b.seg[4:cs] or a.seg[cs + 2:] != b.seg[cs + 2:]:
        return "L4 header/payload changed beyond ports and checksum"
    if a.is_fragment:
        return None
    if a.proto == 17 and a.seg[cs:cs + 2] == b"\0\0":
        if b.seg[cs:cs + 2] == b"\0\0" or _residual(b) == 0xFFFF:
            return None
        return "UDP checksum 0 (none) became a wrong checksum"
    if _residual(a) != _residual(b):
        return f"L4 checksum error changed ({_residual(a):#06x} -> {_residual(b):#06x}): not an incremental update"
    return None


def nat_of(inp: bytes, out: bytes) -> str | None:
    """None when out (an Ethernet frame) is inp with only a NAT/TTL rewrite; else why not."""
    a, b = parse_ip4(inp), parse_ip4(out)
    if a is None or b is None:
        return "not IPv4 on both sides"
    if out[12:14] != inp[12:14]:
        return "ethertype changed"
    if (a.ihl, a.tot_len, a.ident, a.frag, a.proto) != (b.ihl, b.tot_len, b.ident, b.frag, b.proto):
        return "IPv4 header fields other than addresses/TTL changed"
    if a.hdr[1] != b.hdr[1] or a.hdr[20:] != b.hdr[20:]:
        return "TOS or IP options changed"
    if b.ttl not in (a.ttl, a.ttl - 1):
        return f"TTL {a.ttl} -> {b.ttl}"
    if csum16(a.hdr) != csum16(b.hdr):
        return "IPv4 header checksum not updated incrementally"
    for name, x, y in (("source", a.saddr, b.saddr), ("destination", a.daddr, b.daddr)):
        if x != y and (y in (b"\0\0\0\0", b"\xff\xff\xff\xff") or y[0] >= 224):
            return f"{name} rewritten to the unusable address {'.'.join(map(str, y))}"
    if inp[a.off + a.tot_len:] != out[b.off + b.tot_len:]:
        return "bytes after the IP packet (padding) changed"
    return _same_l4_except_ports_csum(a, b)


@dataclass
class Judge:
    node_ip: bytes
    node_ips: set[bytes]

    def __call__(self, inp: bytes, out: bytes) -> str | None:
        """None when out is an acceptable forwarded output for inp; else the reason."""
        if out == inp:
            return None
        if len(out) < ETH_HLEN:
            return "output shorter than an Ethernet header"
        why = []
        if len(out) == len(inp):
            w = nat_of(inp, out)
            if w is None:
                return None
            why.append(f"as NAT: {w}")
        if len(out) == len(inp) + VXLAN_ENCAP_LEN:
            w = self._encap(inp, out)
            if w is None:
                return None
            why.append(f"as encap: {w}")
        if len(out) + VXLAN_ENCAP_LEN == len(inp):
            w = self._decap(inp, out)
            if w is None:
                return None
            why.append(f"as decap: {w}")
        w = self._frag_needed(inp, out)
        if w is None:
            return None
        why.append(f"as ICMP: {w}")
        w = self._reset(inp, out)
        if w is None:
            return None
        why.append(f"as RST: {w}")
        return "; ".join(why)

    def _encap(self, inp: bytes, out: bytes) -> str | None:
        vx = parse_vxlan(out)
        if vx is None:
            return "no VXLAN header"
        o = vx.outer
        if o.ihl != 5 or o.tot_len != len(out) - ETH_HLEN or not ip_hdr_csum_ok(o.hdr):
            return "outer IPv4 header wrong"
        if o.saddr != self.node_ip or o.daddr not in self.node_ips or o.daddr == self.node_ip:
            return "outer addresses are not this node -> another node"
        if vx.udp_len != o.tot_len - 20 or vx.dport != TUNNEL_PORT:
            return "outer UDP header wrong"
        if vx.flags != VXLAN_F_VNI or vx.vni != TUNNEL_VNI or vx.last != 0 or vx.dsr_flags & ~1:
            return "VXLAN header wrong"
        return nat_of(inp, vx.inner)

    def _decap(self, inp: bytes, out: bytes) -> str | None:
        # An outer first fragment (MF) whose inner packet is complete decapsulates into a
        # well-formed packet: accepted (a real fragmented tunnel packet has its inner packet
        # cut, and that is malformed: dropped).
        vx = parse_vxlan(inp, first_fragment=True)
        if vx is None:
            return "input was not VXLAN"
        if out[12:14] != b"\x08\x00":
            return "ethertype"
        # the inner frame as it sits in the input, with whatever trailed the outer packet
        inner = inp[vx.outer.l4_off + 16:]
        return nat_of(inner, inner[:ETH_HLEN] + out[ETH_HLEN:])

    def _frag_needed(self, inp: bytes, out: bytes) -> str | None:
        a, b = parse_ip4(inp), parse_ip4(out)
        if a is None or b is None or b.proto != 1 or len(b.seg) < 8 + 28:
            return "not an ICMP answer"
        if (b.saddr, b.daddr) != (a.daddr, a.saddr) or not ip_hdr_csum_ok(b.hdr):
            return "ICMP addresses/IP checksum"
        if b.seg[:2] not in (b"\x03\x04", b"\x03\x03") or csum16(b.seg) != 0xFFFF:
            return "not a valid frag-needed or port unreachable"
        if b.seg[8:8 + a.ihl * 4 + 8] != inp[a.off:a.off + a.ihl * 4 + 8]:
            return "does not quote the input"
        return None

    def _reset(self, inp: bytes, out: bytes) -> str | None:
        """A RST answering a TCP segment without SYN or RST (lib/reset.h): the reverse 4-tuple, RFC 9293's
        sequence numbers, valid checksums, nothing but the two headers."""
        a, b = parse_ip4(inp), parse_ip4(out)
        if a is None or b is None or a.proto != 6 or b.proto != 6 or len(a.seg) < 20 or len(b.seg) != 20:
            return "not a TCP answer"
        if (b.saddr, b.daddr) != (a.daddr, a.saddr) or b.ihl != 5 or not ip_hdr_csum_ok(b.hdr):
            return "RST addresses/IP header"
        if out[:6] != inp[6:12] or out[6:12] != inp[:6]:
            return "MACs not swapped"
        if b.seg[0:2] != a.seg[2:4] or b.seg[2:4] != a.seg[0:2]:
            return "ports not swapped"
        flags_in, flags_out = a.seg[13], b.seg[13]
        if flags_in & 0x06:
            return "a SYN or RST answered with a RST"
        if flags_in & 0x10:
            if flags_out != 0x04 or b.seg[4:8] != a.seg[8:12]:
                return "RST to an ACK: flags or seq"
        else:
            seg_len = a.tot_len - a.ihl * 4 - (a.seg[12] >> 4) * 4 + (flags_in & 1)
            ack = (int.from_bytes(a.seg[4:8], "big") + seg_len) & 0xFFFFFFFF
            if flags_out != 0x14 or int.from_bytes(b.seg[8:12], "big") != ack:
                return "RST|ACK: flags or ack"
        pseudo = b.saddr + b.daddr + bytes([0, 6]) + (20).to_bytes(2, "big")
        if csum16(pseudo + bytes(b.seg)) != 0xFFFF:
            return "TCP checksum"
        return None


# --- generator -----------------------------------------------------------------------------

# Offsets worth hitting with boundary values: (offset, width) in an outer frame, and the same
# shifted by the 50 bytes of an encapsulation for the inner frame.
_FIELDS = [(12, 2), (14, 1), (15, 1), (16, 2), (18, 2), (20, 2), (22, 1), (23, 1), (24, 2), (26, 4), (30, 4),
           (34, 2), (36, 2), (38, 2), (40, 2), (42, 1), (43, 1), (44, 2), (46, 1), (47, 1), (48, 2)]
_FIELDS += [(o + 50, w) for o, w in _FIELDS]
_BOUNDARY = {1: [0, 1, 0x40, 0x44, 0x45, 0x46, 0x4F, 0x50, 0xF0, 0x08, 0x11, 0x06, 0x01, 0x7F, 0x80, 0xFF],
             2: [0, 1, 7, 8, 19, 20, 40, 0x0800, 0x86DD, 0x0806, 0x2000, 0x4000, 0x3FFF, 4789, 30180, 0x7FFF,
                 0xFFFF],
             4: [0, 0xFFFFFFFF, 0xC6130001, 0xC6130002, 0xC6130003, 0xC6131041, 0xC6130FFE, 0x00100000]}


class Mutator:
    """Seeded: the same seed and corpus give the same packet stream."""

    def __init__(self, seed: int, corpus: list[bytes]):
        self.r = random.Random(seed)
        self.corpus = corpus

    def _fit(self, b: bytearray) -> bytes:
        del b[MAX_LEN:]
        need = min_len(bytes(b)) if len(b) >= ETH_HLEN else ETH_HLEN
        if len(b) < need:
            b.extend(self.r.randbytes(need - len(b)))
        return bytes(b)

    def next(self) -> bytes:
        r = self.r
        x = r.random()
        if x < 0.12:
            return r.choice(self.corpus)
        if x < 0.20:
            n = r.randint(ETH_HLEN, 160)
            b = bytearray(r.randbytes(n))
            if r.random() < 0.7:
                b[12:14] = b"\x08\x00"
                b = bytearray(self._fit(b))
                if r.random() < 0.6:
                    b[14] = 0x45
            return self._fit(b)
        b = bytearray(r.choice(self.corpus))
        for _ in range(r.choice((1, 1, 1, 2, 3))):
            m = r.random()
            if m < 0.30 and len(b) > ETH_HLEN:                              # boundary value in a field
                off, w = r.choice(_FIELDS)
                if off + w <= len(b):
                    b[off:off + w] = r.choice(_BOUNDARY[w]).to_bytes(w, "big")
            elif m < 0.50:                                                   # random bits in the headers
                for _ in range(r.randint(1, 4)):
                    i = r.randrange(min(len(b), 110))
                    b[i] ^= 1 << r.randrange(8)
            elif m < 0.62:                                                   # a random byte anywhere
                b[r.randrange(len(b))] = r.randrange(256)
            elif m < 0.77:                                                   # truncate
                del b[r.randint(ETH_HLEN, max(ETH_HLEN, len(b) - 1)):]
            elif m < 0.85:                                                   # extend
                b.extend(r.randbytes(r.randint(1, 64)))
            elif m < 0.93:                                                   # splice two corpus frames
                other = r.choice(self.corpus)
                cut = r.randint(ETH_HLEN, max(ETH_HLEN, min(len(b), len(other)) - 1))
                b = bytearray(b[:cut] + other[cut:])
            else:                                                            # random 16-bit word
                if len(b) >= 2:
                    i = r.randrange(len(b) - 1)
                    b[i:i + 2] = r.randbytes(2)
        return self._fit(b)
