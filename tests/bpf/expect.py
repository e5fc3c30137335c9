"""Expected outputs for the table-driven cases, and the one checker every case goes through.

An expectation builds the exact frame the contract (docs/datapath.md) says must leave
the program, from the input frame, and compares bytes. Only the Ethernet MACs are
masked (the kernel fills them after bpf_redirect_neigh; nobody reads the inner ones).
The VXLAN outer headers are checked field by field as docs/datapath.md specifies them
(IHL 5, TOS = inner TOS, id 0, DF, TTL 64, UDP source port from the documented flow
hash, UDP checksum 0, our 8-byte VXLAN header); the flow hash is implemented here from
the document, independently of the datapath's own Python mirror.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether

from ebpf_nodeport import abi
from ebpf_nodeport.abi import TUNNEL_PORT, TUNNEL_VNI, VXLAN_F_VNI
from ebpf_nodeport.testrun import (ETH_HLEN, RunResult, parse_ip4, parse_vxlan, scapy_checksum_errors,
                                   vxlan_header)

Addr = tuple[str, int]


def _hexdiff(got: bytes, want: bytes, mask: set[int]) -> str:
    rows = []
    for i in range(max(len(got), len(want))):
        if i in mask:
            continue
        g = got[i] if i < len(got) else None
        w = want[i] if i < len(want) else None
        if g != w:
            rows.append(f"  byte {i}: got {g if g is None else f'{g:#04x}'} want {w if w is None else f'{w:#04x}'}")
    return "\n".join(rows[:20]) + (f"\n  ... {len(rows) - 20} more" if len(rows) > 20 else "")


def assert_bytes(got: bytes, want: bytes, mask: set[int], what: str) -> None:
    if len(got) != len(want):
        raise AssertionError(f"{what}: length {len(got)}, want {len(want)}\n"
                             f"got  {Ether(got).summary()}\nwant {Ether(want).summary()}\n"
                             + _hexdiff(got, want, mask))
    diff = _hexdiff(got, want, mask)
    if diff:
        raise AssertionError(f"{what}: bytes differ\ngot  {Ether(got).summary()}\n"
                             f"want {Ether(want).summary()}\n{diff}")


MAC_MASK = set(range(12))


class Expect:
    """Base: check(result) raises AssertionError with a precise message."""

    def check(self, res: RunResult) -> None:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass
class Same(Expect):
    """Output identical to input, byte for byte."""

    def check(self, res: RunResult) -> None:
        if res.data != res.input:
            raise AssertionError("output changed, want untouched:\n" + _hexdiff(res.data, res.input, set()))


@dataclass
class Nat(Expect):
    """Output = input with source and/or destination (address, port) rewritten and the TTL
    decremented by ttl_dec (1 when the program forwards the packet itself), every checksum
    correct; nothing else changed."""
    src: Addr | None = None
    dst: Addr | None = None
    ttl_dec: int = 0
    swap_mac: bool = False      # sent back out of the interface it came in on

    def expected(self, frame: bytes) -> bytes:
        p = Ether(frame)
        if self.swap_mac:
            p.src, p.dst = p.dst, p.src
        ip = p[IP]
        l4 = p[TCP] if TCP in p else p[UDP] if UDP in p else None
        if self.src:
            ip.src = self.src[0]
            if l4 is not None:
                l4.sport = self.src[1]
        if self.dst:
            ip.dst = self.dst[0]
            if l4 is not None:
                l4.dport = self.dst[1]
        ip.ttl -= self.ttl_dec
        ip.chksum = None
        if l4 is not None and not (isinstance(l4, UDP) and l4.chksum == 0):
            l4.chksum = None
        return bytes(p)

    def check(self, res: RunResult, frame: bytes | None = None) -> None:
        want = self.expected(res.input if frame is None else frame)
        assert_bytes(res.data, want, MAC_MASK, f"NAT {self}")


_M32 = 0xFFFFFFFF


def _mix32(h: int) -> int:
    h ^= h >> 16
    h = (h * 0x7FEB352D) & _M32
    h ^= h >> 15
    h = (h * 0x846CA68B) & _M32
    h ^= h >> 16
    return h


def doc_tunnel_sport(inner_frame: bytes, ports: tuple[int, int] | None = None) -> int:
    """49152 | (flow_hash(inner) & 0x3fff), flow_hash as docs/datapath.md writes it; `ports` for a
    later fragment, which is hashed with its datagram's ports (it carries none)."""
    ip = parse_ip4(inner_frame)
    sport, dport = ports or (struct.unpack_from("!HH", ip.seg, 0) if ip.proto in (6, 17) else (0, 0))
    s, d = int.from_bytes(ip.saddr, "big"), int.from_bytes(ip.daddr, "big")
    h = _mix32(s ^ _mix32(d ^ _mix32(((sport << 16) | dport) ^ ip.proto)))
    return 49152 | (h & 0x3FFF)


def _ipv4_csum(hdr: bytes) -> int:
    from ebpf_nodeport.testrun import csum16
    return ~csum16(hdr) & 0xFFFF


@dataclass
class Encap(Expect):
    """Output = VXLAN toward `dst` from `src` around `inner` applied to the input, every outer
    byte as docs/datapath.md specifies (UDP 4789, VNI 4096, flags 0x08, DSR bit, frontend port)."""
    src: str
    dst: str
    inner: Nat = field(default_factory=Nat)
    dsr: bool = False
    fe_port: int = 0
    flow_ports: tuple[int, int] | None = None   # a later fragment's datagram ports
    fe_addr: str | None = None   # external frontend: VXH_F_FE_ADDR and the address in the inner MAC source

    def expected(self, frame: bytes, got: bytes) -> bytes:
        inner = self.inner.expected(frame)
        tos = inner[ETH_HLEN + 1]
        outer_len = 20 + 8 + 8 + len(inner)
        ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, tos, outer_len, 0, 0x4000, 64, 17, 0,
                                   bytes(map(int, self.src.split("."))), bytes(map(int, self.dst.split(".")))))
        struct.pack_into("!H", ip, 10, _ipv4_csum(bytes(ip)))
        udp = struct.pack("!HHHH", doc_tunnel_sport(inner, self.flow_ports), TUNNEL_PORT, 8 + 8 + len(inner), 0)
        vx = bytearray(vxlan_header(TUNNEL_VNI, dsr=self.dsr, fe_port=self.fe_port, flags=VXLAN_F_VNI))
        inner_macs = bytearray(got[50:62])
        if self.fe_addr:   # docs/datapath.md: flag 0x02 in byte 1, the address in inner bytes 6-9
            vx[1] |= 0x02
            inner_macs[6:10] = bytes(map(int, self.fe_addr.split(".")))
        # MACs (outer and inner) are taken from what the program wrote: masked (but the frontend tag).
        return got[:12] + b"\x08\x00" + bytes(ip) + udp + bytes(vx) + bytes(inner_macs) + inner[12:]

    def check(self, res: RunResult, frame: bytes | None = None) -> None:
        frame = res.input if frame is None else frame
        got = res.data
        if parse_vxlan(got) is None:
            raise AssertionError(f"want VXLAN {self.src}->{self.dst}, got {Ether(got).summary()}")
        mask = MAC_MASK | set(range(50, 62))
        if self.fe_addr:
            mask -= set(range(56, 60))
        assert_bytes(got, self.expected(frame, got), mask, f"VXLAN {self}")


@dataclass
class Decap(Expect):
    """Output = the outer Ethernet header + the inner IPv4 packet, with `inner` applied."""
    inner: Nat = field(default_factory=Nat)

    def check(self, res: RunResult, frame: bytes | None = None) -> None:
        frame = res.input if frame is None else frame
        vx = parse_vxlan(frame)
        assert vx is not None, "Decap expectation on a non-VXLAN input"
        want = frame[:ETH_HLEN] + self.inner.expected(vx.inner)[ETH_HLEN:]
        assert_bytes(res.data, want, MAC_MASK, f"decap {self}")


def _icmp_unreachable(res: RunResult, frame: bytes | None, src: str, dst: str, code: int, what: str):
    """Check the output is ICMP destination unreachable `code` from src to dst quoting the input's IP header
    + 8 bytes (RFC 792); its IP and ICMP layers, for the caller's own checks."""
    frame = res.input if frame is None else frame
    p = res.pkt
    assert IP in p and ICMP in p, f"want ICMP {what}, got {p.summary()}"
    ip, ic = p[IP], p[ICMP]
    assert (ip.src, ip.dst) == (src, dst), f"ICMP {ip.src}->{ip.dst}, want {src}->{dst}"
    assert (ic.type, ic.code) == (3, code), f"ICMP type/code {ic.type}/{ic.code}, want 3/{code}"
    orig = parse_ip4(frame)
    quote = bytes(ic.payload)
    assert quote[:orig.ihl * 4 + 8] == frame[ETH_HLEN:ETH_HLEN + orig.ihl * 4 + 8], \
        "ICMP does not quote the original IP header + 8 bytes"
    return ip, ic


@dataclass
class IcmpFragNeeded(Expect):
    """Output = ICMP dest-unreachable/frag-needed from `src` to `dst` advertising `mtu`,
    quoting the original IP header + 8 bytes (RFC 792)."""
    src: str
    dst: str
    mtu: int

    def check(self, res: RunResult, frame: bytes | None = None) -> None:
        ip, ic = _icmp_unreachable(res, frame, self.src, self.dst, 4, "frag-needed")
        assert ic.nexthopmtu == self.mtu, f"ICMP MTU {ic.nexthopmtu}, want {self.mtu}"
        assert (ip.tos, ip.ttl, ip.len, len(res.data)) == (0xC0, 64, 56, 70), \
            f"ICMP IPv4 TOS/TTL/len/frame {ip.tos:#x}/{ip.ttl}/{ip.len}/{len(res.data)}, want 0xc0/64/56/70"


@dataclass
class IcmpPortUnreach(Expect):
    """Output = ICMP dest-unreachable/port-unreachable from the frontend `src` back to the client `dst`,
    quoting the original IP header + 8 bytes: the refusal of a connection no backend may take
    (kube-proxy's REJECT, Calico's answer for a service without endpoints)."""
    src: str
    dst: str

    def check(self, res: RunResult, frame: bytes | None = None) -> None:
        _icmp_unreachable(res, frame, self.src, self.dst, 3, "port unreachable")


@dataclass
class TcpReset(Expect):
    """Output = exactly the RST RFC 9293 answers a segment of an unknown connection with, from the address
    the client sent to, back out to the client (MACs swapped): with the segment's ACK set, seq = its ack;
    without, RST|ACK acknowledging its sequence space. IPv4 without options, DF, TTL 64; 20-byte TCP header,
    window 0. How a connection whose backend went is ended instead of left retransmitting (lib/reset.h)."""

    def check(self, res: RunResult, frame: bytes | None = None) -> None:
        from scapy.layers.inet import TCP
        from scapy.layers.l2 import Ether

        p = Ether(res.input if frame is None else frame)
        ip, t = p[IP], p[TCP]
        if "A" in t.flags:
            rst = TCP(sport=t.dport, dport=t.sport, flags="R", seq=t.ack, ack=0, window=0)
        else:
            seg = len(bytes(t.payload)) + ("S" in t.flags) + ("F" in t.flags)
            rst = TCP(sport=t.dport, dport=t.sport, flags="RA", seq=0, ack=(t.seq + seg) & 0xFFFFFFFF, window=0)
        want = bytes(Ether(src=p.dst, dst=p.src) / IP(src=ip.dst, dst=ip.src, ttl=64, id=0, flags="DF", tos=0) / rst)
        assert res.data == want, f"want RST\n{Ether(want).show2(dump=True)}\ngot\n{Ether(res.data).show2(dump=True)}"


@dataclass
class Fields(Expect):
    """Key fields of the output (scapy attribute paths like 'IP.dst', 'TCP.dport')."""
    want: dict[str, Any]

    def check(self, res: RunResult) -> None:
        p = res.pkt
        for path, value in self.want.items():
            layer, attr = path.split(".")
            lay = {"IP": IP, "TCP": TCP, "UDP": UDP, "ICMP": ICMP}[layer]
            assert lay in p, f"output has no {layer}: {p.summary()}"
            got = getattr(p[lay], attr)
            assert got == value, f"{path} = {got!r}, want {value!r}"


# --- conntrack expectations -------------------------------------------------------

@dataclass
class CtEntry:
    """An entry the run must have created: (client, server) normalised as the C does."""
    type: str                      # NORMAL / NAT_FWD / NAT_REV
    client: Addr
    server: Addr
    proto: str = "tcp"
    nat: Addr | None = None        # nat_addr/nat_port
    tun_peer: str = "0.0.0.0"
    has: tuple[str, ...] = ()      # CT_F_* names that must be set
    not_: tuple[str, ...] = ()     # ... and must not

    def key(self) -> Any:
        return abi.ct_key(self.client[0], self.client[1], self.server[0], self.server[1], self.proto)

    def check_in(self, entries: dict, where: str) -> Any:
        k, client_is_a = self.key()
        v = entries.get(k)
        assert v is not None, f"{where}: no conntrack {self.type} entry {self.client}<->{self.server}; have " + \
            ", ".join(f"{kk.to_dict()}:{vv.to_dict()['type_name']}" for kk, vv in entries.items())
        d = v.to_dict()
        assert d["type_name"] == self.type, f"{where}: entry {self.client}<->{self.server} is {d['type_name']}, want {self.type}"
        client_is_b = bool(v.flags & abi.CT_F_CLIENT_IS_B)
        assert client_is_b == (not client_is_a), f"{where}: CLIENT_IS_B={client_is_b} but the client is side {'a' if client_is_a else 'b'}"
        if self.nat is not None:
            assert (d["nat_addr"], v.nat_port) == self.nat, f"{where}: nat {d['nat_addr']}:{v.nat_port}, want {self.nat}"
        assert d["tun_peer"] == self.tun_peer, f"{where}: tun_peer {d['tun_peer']}, want {self.tun_peer}"
        names = set(d["flag_names"])
        missing = set(self.has) - names
        extra = set(self.not_) & names
        assert not missing and not extra, f"{where}: flags {sorted(names)}; missing {sorted(missing)}, unexpected {sorted(extra)}"
        return v


# --- the checker ------------------------------------------------------------------

def check_result(res: RunResult, verdict: str | set[str], reason: str | set[str],
                 out: Expect | None = None, ct: tuple[CtEntry, ...] = (), where: str = "") -> None:
    """Verdict, exactly one counter increment with the expected reason, output, checksums,
    conntrack entries. A forwarded (OK/REDIRECT) changed packet must have valid checksums;
    a dropped one must not be forwarded at all."""
    where = where or f"{res.node}/{res.entry}"
    verdicts = {verdict} if isinstance(verdict, str) else verdict
    reasons = {reason} if isinstance(reason, str) else reason
    assert res.verdict in verdicts, f"{where}: verdict {res.verdict}, want {'/'.join(sorted(verdicts))}\n{res.describe()}"
    assert res.reason in reasons, (f"{where}: counted {res.counters} (other hooks {res.other_counters}), "
                                   f"want exactly one {'/'.join(sorted(reasons))}\n{res.describe()}")
    if res.verdict in ("OK", "REDIRECT") and res.changed:
        errs = scapy_checksum_errors(res.data)
        assert not errs, f"{where}: forwarded packet has bad checksums: {errs}\n{res.describe()}"
    if out is not None:
        try:
            out.check(res)
        except AssertionError as exc:
            raise AssertionError(f"{where}: {exc}") from None
    if ct:
        added = dict(res.ct.added) if res.ct else {}
        for e in ct:
            e.check_in(added, where)
