"""The datapath's ABI as user space sees it: one Python mirror of the C in bpf/.

Everything the C and the Python must agree on lives here and nowhere else: the
entry program names, the map names and how each map is declared (MapSpec), the
struct layouts of their keys and values (ctypes, field by field as bpf/lib/maps.h
declares them), flags (CFG_F_*, RT_F_*, FE_F_*, CT_F_*), reasons and hooks, the
skb mark, the tunnel's port/VNI/header, the eBPF modes, and the pieces of C logic
user space must reproduce (conntrack key normalisation and timeouts, the flow
hash). Addresses and ports are big-endian fields, so
`FeKey(addr=ip2int("198.19.32.10"), port=80, proto=6)` is already the bytes the
kernel compares. The layouts are checked against the BTF of the compiled maps
(tests/bpf/test_abi.py) and against every pinned map at load (pins.py).
"""
from __future__ import annotations

import ctypes as ct
import dataclasses
import functools
import ipaddress
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

BE32 = ct.c_uint32.__ctype_be__
BE16 = ct.c_uint16.__ctype_be__

# The entry programs, one per attach point (bpf/<name>.c), in hook order (HOOK_*).
PROGRAMS = ("from_hep", "from_wep", "to_wep", "to_hep")
# Node modes with the eBPF datapath attached: CFG_F_DSR set for "dsr", clear for "tunnel".
EBPF_MODES = ("tunnel", "dsr")

# ---- constants (bpf/lib/maps.h, counters.h, tunnel.h, conntrack.h) -------------------

CFG_F_DSR, CFG_F_TRACE, CFG_F_ENABLED = 1, 2, 4
RT_F_LOCAL = 1
FE_F_NODEPORT, FE_F_CLUSTERIP = 1, 2
FE_F_EXTERNAL, FE_F_LB_IP, FE_F_LB_OPTS = 0x100, 0x200, 0x400   # external frontends (bpf/lib/lb.h)
LB_F_SRC_RANGES, LB_F_AFFINITY, LB_F_MAGLEV = 1, 2, 4              # lb_svc.flags (lb.h)
VXH_F_FE_ADDR = 0x02            # tunnelled packet carries its external frontend address (lb.h)
MAGLEV_M = 1021                 # Maglev lookup table size, a prime (lb.h MAGLEV_M)
FE_F_ETP_LOCAL, FE_F_ITP_LOCAL = 4, 8      # traffic policies Local (bpf/lib/tpolicy.h)
CT_NORMAL, CT_NAT_FWD, CT_NAT_REV = 0, 1, 2
CT_F_TUNNEL, CT_F_DSR, CT_F_FROM_TUNNEL, CT_F_NODEPORT = 1, 2, 4, 8
CT_F_CLUSTERIP, CT_F_CLIENT_IS_B, CT_F_POD_CLIENT, CT_F_PSNAT = 16, 32, 64, 128
TCPF_FIN, TCPF_SYN, TCPF_RST, TCPF_ACK = 0x01, 0x02, 0x04, 0x10

TUNNEL_VNI = 4096
TUNNEL_PORT = 4789
TUNNEL_TTL = 64
TUNNEL_SPORT_BASE, TUNNEL_SPORT_MASK = 49152, 0x3FFF
VXLAN_F_VNI = 0x08
VXH_F_DSR = 0x01
VXLAN_ENCAP_LEN = 50            # outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14
SKB_MARK_BYPASS = 0x01000000     # from_hep marks what it NATs/decaps and hands to the kernel (config.h)
SKB_MARK_ENCAP = 0x02000000      # ... DNATed, left to the kernel to fragment; to_hep encapsulates (frags.h)
SKB_MARK_ENCAP_DSR = 0x04000000  # ... with the DSR flag
SKB_MARK_ENCAP_PORT = 0x0000FFFF  # ... and this frontend port (host order)
PSNAT_START, PSNAT_LEN = 20000, 10000   # client ports given on a source-port collision (config.h)

HOOK_FROM_HEP, HOOK_FROM_WEP, HOOK_TO_WEP, HOOK_TO_HEP = 0, 1, 2, 3
HOOKS = dict(enumerate(PROGRAMS))       # HOOK_* -> entry program name
HOOK_IDS = {name: hook for hook, name in HOOKS.items()}
N_HOOKS = 4
MAX_REASONS = 32

REASONS: dict[int, str] = {
    0: "PASS", 1: "NAT_NEW", 2: "NAT_EST", 3: "REV_NAT", 4: "ENCAP", 5: "DECAP",
    6: "DSR_REPLY", 7: "CT_EST", 8: "PSNAT",
    16: "DROP_MALFORMED", 17: "DROP_TUN_UNKNOWN_SRC", 18: "DROP_TUN_BAD_VNI",
    19: "DROP_NO_BACKEND", 20: "DROP_FRAG_NEEDED", 21: "DROP_SPOOFED",
    22: "DROP_ENCAP_FAIL", 23: "DROP_TTL", 24: "DROP_TUN_NO_FLOW", 25: "DROP_PSNAT_FAIL",
    26: "DROP_CT_FULL",
    30: "DROP_SRC_RANGE", 31: "DROP_MID_FLOW",
}
REASON_IDS: dict[str, int] = {v: k for k, v in REASONS.items()}
REASON_DESCRIPTIONS: dict[str, str] = {
    "PASS": "not ours, passed untouched",
    "NAT_NEW": "first packet of a new service connection (DNAT, maybe encap)",
    "NAT_EST": "established service flow, DNAT done, delivered locally",
    "REV_NAT": "reply, source rewritten to the frontend",
    "ENCAP": "established flow encapsulated toward a node (request or reply)",
    "DECAP": "decapsulated, delivered (no NAT on this node)",
    "DSR_REPLY": "reply rewritten and sent straight to the client",
    "CT_EST": "tracked flow, no rewrite needed here",
    "PSNAT": "new connection whose 4-tuple was taken: client port replaced",
    "DROP_MALFORMED": "truncated/invalid headers",
    "DROP_TUN_UNKNOWN_SRC": "VXLAN from an address that is not a node",
    "DROP_TUN_BAD_VNI": "VXLAN with another VNI",
    "DROP_NO_BACKEND": "no backend may take it (none, or none local for a Local policy): ICMP port unreachable sent (to a non-SYN TCP segment: a RST)",
    "DROP_FRAG_NEEDED": "too big to encapsulate (ICMP frag-needed sent when DF)",
    "DROP_SPOOFED": "source is a local pod address arriving from outside",
    "DROP_ENCAP_FAIL": "a helper failed (adjust_room, store, csum, redirect)",
    "DROP_TTL": "TTL would reach 0 in a BPF-forwarded packet",
    "DROP_TUN_NO_FLOW": "tunnelled reply for a flow this node does not track",
    "DROP_PSNAT_FAIL": "4-tuple taken and no free client port found",
    "DROP_CT_FULL": "new connection whose conntrack entries do not fit (table full): none created",
    "DROP_SRC_RANGE": "client outside the LoadBalancer's loadBalancerSourceRanges",
    "DROP_MID_FLOW": "non-SYN TCP to an external frontend without Maglev and no conntrack entry: RST sent",
}

CT_TYPES = {CT_NORMAL: "NORMAL", CT_NAT_FWD: "NAT_FWD", CT_NAT_REV: "NAT_REV"}
CT_FLAG_NAMES = {CT_F_TUNNEL: "TUNNEL", CT_F_DSR: "DSR", CT_F_FROM_TUNNEL: "FROM_TUNNEL",
                 CT_F_NODEPORT: "NODEPORT", CT_F_CLUSTERIP: "CLUSTERIP",
                 CT_F_CLIENT_IS_B: "CLIENT_IS_B", CT_F_POD_CLIENT: "POD_CLIENT", CT_F_PSNAT: "PSNAT"}
CFG_FLAG_NAMES = {CFG_F_DSR: "DSR", CFG_F_TRACE: "TRACE", CFG_F_ENABLED: "ENABLED"}
FE_FLAG_NAMES = {FE_F_NODEPORT: "NODEPORT", FE_F_CLUSTERIP: "CLUSTERIP", FE_F_ETP_LOCAL: "ETP_LOCAL",
                 FE_F_ITP_LOCAL: "ITP_LOCAL", FE_F_EXTERNAL: "EXTERNAL", FE_F_LB_IP: "LB_IP", FE_F_LB_OPTS: "LB_OPTS"}
LB_FLAG_NAMES = {LB_F_SRC_RANGES: "SRC_RANGES", LB_F_AFFINITY: "AFFINITY", LB_F_MAGLEV: "MAGLEV"}
TCP_FLAG_NAMES = {TCPF_SYN: "SYN", TCPF_ACK: "ACK", TCPF_FIN: "FIN", TCPF_RST: "RST"}
PROTOS = {"tcp": 6, "udp": 17, "icmp": 1}
PROTO_NAMES = {v: k for k, v in PROTOS.items()}

SEC_NS = 1_000_000_000
CT_TIMEOUTS_NS: dict[str, int] = {   # conntrack.h defaults (Calico's)
    "CT_TIMEOUT_TCP_SYN": 20 * SEC_NS,
    "CT_TIMEOUT_TCP_EST": 3600 * SEC_NS,
    "CT_TIMEOUT_TCP_FIN": 30 * SEC_NS,
    "CT_TIMEOUT_TCP_RST": 40 * SEC_NS,
    "CT_TIMEOUT_UDP": 60 * SEC_NS,
    "CT_TIMEOUT_ICMP": 5 * SEC_NS,
    "CT_TIMEOUT_OTHER": 600 * SEC_NS,
}


def flag_names(value: int, table: dict[int, str]) -> list[str]:
    """Names of the bits set in value (unknown bits as hex)."""
    out = [name for bit, name in table.items() if value & bit]
    rest = value & ~sum(table)
    if rest:
        out.append(hex(rest))
    return out


def reason_name(reason: int) -> str:
    return REASONS.get(reason, f"REASON_{reason}")


def proto_num(proto: str | int) -> int:
    """'tcp'/'udp'/'icmp' or a number -> IP protocol number."""
    if isinstance(proto, int):
        return proto
    try:
        return PROTOS[proto.lower()]
    except KeyError:
        raise ValueError(f"unknown protocol {proto!r}: use one of {', '.join(PROTOS)}") from None


def ip2int(addr: str | int) -> int:
    """Dotted quad -> the integer stored in a big-endian field."""
    return addr if isinstance(addr, int) else _parse_ipv4(addr)


@functools.lru_cache(maxsize=1 << 16)
def _parse_ipv4(addr: str) -> int:
    """Strict dotted quad -> int, cached: a sync parses tens of thousands of mostly repeated addresses.

    inet_pton takes ~0.3 us against ~2 us for ipaddress and rejects the same strings (no
    leading zeros, no short forms); anything it refuses goes to ipaddress, which says why.
    """
    try:
        return int.from_bytes(socket.inet_pton(socket.AF_INET, addr), "big")
    except (OSError, ValueError, TypeError):
        return int(ipaddress.IPv4Address(addr))


def int2ip(value: int) -> str:
    return str(ipaddress.IPv4Address(value))


# ---- structs ---------------------------------------------------------------------------

class _Struct(ct.Structure):
    """ctypes Structure with dict/bytes helpers; _addr_fields render as dotted quads."""
    _addr_fields: tuple[str, ...] = ()
    _hidden_fields: tuple[str, ...] = ("pad",)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, *_ in self._fields_:
            if name in self._hidden_fields:
                continue
            v = getattr(self, name)
            if name in self._addr_fields:
                v = int2ip(v)
            elif isinstance(v, bytes):
                v = v.decode(errors="replace")
            elif isinstance(v, ct.Array):
                v = list(v)
            out[name] = v
        return out

    @classmethod
    def from_bytes(cls, data: bytes):
        return cls.from_buffer_copy(data[: ct.sizeof(cls)])

    def __bytes__(self) -> bytes:  # explicit: ctypes' buffer protocol gives the same
        return ct.string_at(ct.addressof(self), ct.sizeof(self))

    @classmethod
    def pack(cls, *values: Any) -> bytes:
        """The struct's bytes from its visible fields' values, in field order (pads are zero)."""
        return cls.packer()(*values)

    @classmethod
    def packer(cls) -> Callable[..., bytes]:
        """pack() as a plain function, for hot loops: same bytes as bytes(cls(...)) at a tenth
        of the cost (sync() builds tens of thousands of keys and values to compare)."""
        packer = _packer(cls)
        if packer is None:
            names = _visible_fields(cls)
            return lambda *values: bytes(cls(**dict(zip(names, values))))
        return packer.pack

    @classmethod
    def unpack(cls, data: bytes) -> tuple:
        """The visible fields' values from the struct's bytes (inverse of pack)."""
        return cls.unpacker()(data)

    @classmethod
    def unpacker(cls) -> Callable[[bytes], tuple]:
        """unpack() as a plain function, for hot loops. Char arrays come back as stored
        (NUL-padded); structs mixing byte orders have no unpacker (use from_bytes)."""
        packer = _packer(cls)
        if packer is None:
            raise TypeError(f"{cls.__name__} mixes byte orders: read it with from_bytes()")
        return packer.unpack_from

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and bytes(self) == bytes(other)

    def __hash__(self) -> int:
        return hash((type(self).__name__, bytes(self)))

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items())
        return f"{type(self).__name__}({fields})"


def _visible_fields(cls: type[_Struct]) -> list[str]:
    return [name for name, *_ in cls._fields_ if name not in cls._hidden_fields]


def _byte_order(ctype: type) -> str | None:
    """'>' or '<' for a multi-byte integer field, None where order does not apply."""
    if ct.sizeof(ctype) == 1:
        return None
    return ">" if getattr(ctype, "__ctype_be__", None) is ctype else "<"


@functools.cache
def _packer(cls: type[_Struct]) -> struct.Struct | None:
    """A struct.Struct laid out like cls (hidden fields as pad bytes); None if byte orders mix."""
    codes = {1: "B", 2: "H", 4: "I", 8: "Q"}
    fmt, pos, orders = [], 0, set()
    for name, ctype, *_ in cls._fields_:
        offset, size = getattr(cls, name).offset, ct.sizeof(ctype)
        fmt.append("x" * (offset - pos))                 # alignment gap, if any
        if name in cls._hidden_fields:
            fmt.append("x" * size)
        elif issubclass(ctype, ct.Array) and ctype._type_ is ct.c_char:
            fmt.append(f"{size}s")
        elif getattr(ctype, "_type_", None) in ("B", "H", "I", "L", "Q"):
            fmt.append(codes[size])
            orders.add(_byte_order(ctype))
        else:
            return None                                  # only unsigned integers and char arrays
        pos = offset + size
    fmt.append("x" * (ct.sizeof(cls) - pos))
    orders.discard(None)
    if len(orders) > 1:
        return None
    return struct.Struct((orders.pop() if orders else "<") + "".join(fmt))


class U32(_Struct):
    """A host-order __u32 key (array index, service id)."""
    _fields_ = [("value", ct.c_uint32)]
    _scalar = True


class Addr(_Struct):
    """A __be32 address key (nodes map)."""
    _fields_ = [("addr", BE32)]
    _addr_fields = ("addr",)
    _scalar = True


class U64(_Struct):
    """A __u64 value (a per-CPU counter slot)."""
    _fields_ = [("value", ct.c_uint64)]
    _scalar = True


class NodeCfg(_Struct):
    _fields_ = [("node_ip", BE32), ("host_ifindex", ct.c_uint32), ("vni", ct.c_uint32),
                ("tunnel_port", ct.c_uint16), ("fabric_mtu", ct.c_uint16), ("flags", ct.c_uint32),
                ("sync_token", ct.c_uint32)]
    _addr_fields = ("node_ip",)

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["flag_names"] = flag_names(self.flags, CFG_FLAG_NAMES)
        return d


class NodeInfo(_Struct):
    _fields_ = [("flags", ct.c_uint32)]


class RouteKey(_Struct):
    _fields_ = [("prefixlen", ct.c_uint32), ("addr", BE32)]
    _addr_fields = ("addr",)

    @classmethod
    def cidr(cls, cidr: str) -> "RouteKey":
        net = ipaddress.IPv4Network(cidr, strict=False)
        return cls(prefixlen=net.prefixlen, addr=int(net.network_address))

    def to_cidr(self) -> str:
        return f"{int2ip(self.addr)}/{self.prefixlen}"


class RouteInfo(_Struct):
    _fields_ = [("node_ip", BE32), ("flags", ct.c_uint32)]
    _addr_fields = ("node_ip",)


class FeKey(_Struct):
    _fields_ = [("addr", BE32), ("port", BE16), ("proto", ct.c_uint8), ("pad", ct.c_uint8)]
    _addr_fields = ("addr",)

    @classmethod
    def make(cls, addr: str | int, port: int, proto: str | int) -> "FeKey":
        return cls(addr=ip2int(addr), port=port, proto=proto_num(proto))


class FeValue(_Struct):
    _fields_ = [("svc_id", ct.c_uint32), ("count", ct.c_uint16), ("local_count", ct.c_uint16),
                ("flags", ct.c_uint32)]


class LbSvc(_Struct):
    """lb_svc value: a service's external-traffic options (lb.h)."""
    _fields_ = [("flags", ct.c_uint32), ("affinity_s", ct.c_uint32)]


class LbSrcKey(_Struct):
    """lb_src key: (service id, client CIDR); the id is big-endian so the trie matches it whole."""
    _fields_ = [("prefixlen", ct.c_uint32), ("svc_id", BE32), ("addr", BE32)]
    _addr_fields = ("addr",)

    @classmethod
    def make(cls, svc_id: int, cidr: str) -> "LbSrcKey":
        net = ipaddress.IPv4Network(cidr, strict=False)
        return cls(prefixlen=32 + net.prefixlen, svc_id=svc_id, addr=int(net.network_address))


class AffinityKey(_Struct):
    _fields_ = [("fe_addr", BE32), ("fe_port", BE16), ("proto", ct.c_uint8), ("pad", ct.c_uint8),
                ("client", BE32)]
    _addr_fields = ("fe_addr", "client")


class AffinityValue(_Struct):
    _fields_ = [("last_ns", ct.c_uint64), ("be_addr", BE32), ("be_port", BE16), ("pad", ct.c_uint16)]
    _addr_fields = ("be_addr",)


class MaglevKey(_Struct):
    _fields_ = [("svc_id", ct.c_uint32), ("slot", ct.c_uint32)]


class BeKey(_Struct):
    _fields_ = [("svc_id", ct.c_uint32), ("ordinal", ct.c_uint32)]


class BeValue(_Struct):
    _fields_ = [("addr", BE32), ("port", BE16), ("pad", ct.c_uint16)]
    _addr_fields = ("addr",)


class FragKey(_Struct):
    """struct frag_key (bpf/lib/frags.h): one datagram's fragments."""
    _fields_ = [("saddr", BE32), ("daddr", BE32), ("id", BE16), ("proto", ct.c_uint8), ("pad", ct.c_uint8)]
    _addr_fields = ("saddr", "daddr")


class FragPorts(_Struct):
    """struct frag_ports: the ports its first fragment carried."""
    _fields_ = [("sport", BE16), ("dport", BE16)]


class CtClockCache(_Struct):
    """struct ct_clock_cache (bpf/lib/maps.h): per CPU, the conntrack clock as last read and its jiffy."""
    _fields_ = [("jiffies", ct.c_uint64), ("ns", ct.c_uint64)]


class CtlbCfg(_Struct):
    """struct ctlb_cfg (bpf/lib/ctlb.h): the node's netns cookie and which protocols connect() balances."""
    _fields_ = [("netns_cookie", ct.c_uint64), ("flags", ct.c_uint32), ("pad", ct.c_uint32)]


class CtlbKey(_Struct):
    """struct ctlb_key: one socket (its cookie) and the backend it was given."""
    _fields_ = [("cookie", ct.c_uint64), ("addr", BE32), ("port", BE16), ("proto", ct.c_uint8),
                ("pad", ct.c_uint8)]
    _addr_fields = ("addr",)


class CtlbValue(_Struct):
    """struct ctlb_value: the frontend the application asked for."""
    _fields_ = [("addr", BE32), ("port", BE16), ("pad", ct.c_uint16)]
    _addr_fields = ("addr",)


class SvcMeta(_Struct):
    _fields_ = [("name", ct.c_char * 64)]

    @staticmethod
    def encode(name: str) -> bytes:
        """The name's bytes as stored: at most 63, so the C always finds a NUL."""
        raw = name.encode()
        if len(raw) > 63:
            raise ValueError(f"service name too long for svc_meta (63 bytes max): {name!r}")
        return raw

    @classmethod
    def make(cls, name: str) -> "SvcMeta":
        return cls(name=cls.encode(name))


class CtKey(_Struct):
    _fields_ = [("addr_a", BE32), ("addr_b", BE32), ("port_a", BE16), ("port_b", BE16),
                ("proto", ct.c_uint8), ("pad", ct.c_uint8 * 3)]
    _addr_fields = ("addr_a", "addr_b")


class CtValue(_Struct):
    _fields_ = [("created_ns", ct.c_uint64), ("last_seen_ns", ct.c_uint64),
                ("type", ct.c_uint8), ("flags", ct.c_uint8), ("tcp_a", ct.c_uint8),
                ("tcp_b", ct.c_uint8), ("nat_addr", BE32), ("nat_port", BE16),
                ("cl_port", BE16), ("tun_peer", BE32),
                ("packets_ab", ct.c_uint64), ("packets_ba", ct.c_uint64),
                ("bytes_ab", ct.c_uint64), ("bytes_ba", ct.c_uint64)]
    _addr_fields = ("nat_addr", "tun_peer")

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["type_name"] = CT_TYPES.get(self.type, str(self.type))
        d["flag_names"] = flag_names(self.flags, CT_FLAG_NAMES)
        d["tcp_a_names"] = flag_names(self.tcp_a, TCP_FLAG_NAMES)
        d["tcp_b_names"] = flag_names(self.tcp_b, TCP_FLAG_NAMES)
        return d


class Event(_Struct):
    _fields_ = [("ts_ns", ct.c_uint64), ("hook", ct.c_uint8), ("reason", ct.c_uint8),
                ("proto", ct.c_uint8), ("flags", ct.c_uint8),
                ("saddr", BE32), ("daddr", BE32), ("sport", BE16), ("dport", BE16),
                ("nat_saddr", BE32), ("nat_daddr", BE32), ("nat_sport", BE16), ("nat_dport", BE16),
                ("tun_peer", BE32), ("ifindex", ct.c_uint32), ("pad", ct.c_uint32)]
    _addr_fields = ("saddr", "daddr", "nat_saddr", "nat_daddr", "tun_peer")

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["hook_name"] = HOOKS.get(self.hook, str(self.hook))
        d["reason_name"] = reason_name(self.reason)
        d["flag_names"] = flag_names(self.flags, CT_FLAG_NAMES)
        return d


# ---- layouts: what BTF is compared with -------------------------------------------------

class LayoutField(NamedTuple):
    """One member of a struct as BTF describes it: name, byte offset, size in bytes."""
    name: str
    offset: int
    size: int


Layout = tuple[LayoutField, ...]


def layout(cls: type[_Struct]) -> Layout:
    """The C layout cls mirrors: its fields' names, offsets and sizes, as btf.Btf.layout() reads
    them. A wrapper of a plain C scalar (U32, Addr, U64: `_scalar`) is one unnamed field."""
    if getattr(cls, "_scalar", False):
        return (LayoutField("", 0, ct.sizeof(cls)),)
    return tuple(LayoutField(name, getattr(cls, name).offset, ct.sizeof(ctype))
                 for name, ctype, *_ in cls._fields_)


# ---- map specs --------------------------------------------------------------------------

BPF_MAP_TYPE_HASH, BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_PERCPU_ARRAY = 1, 2, 6
BPF_MAP_TYPE_LRU_HASH, BPF_MAP_TYPE_LPM_TRIE, BPF_MAP_TYPE_RINGBUF = 9, 11, 27
BPF_F_NO_PREALLOC = 1
CT_MAP_TYPES = {"hash": BPF_MAP_TYPE_HASH, "lru_hash": BPF_MAP_TYPE_LRU_HASH}   # maps.h CT_MAP_TYPE


@dataclass(frozen=True)
class MapSpec:
    """One map as the C declares it: used to open views and to detect stale pins."""
    name: str
    map_type: int
    key: type | None
    value: type | None
    max_entries: int
    max_define: str | None = None   # the overridable MAX_* behind max_entries
    map_flags: int = 0              # BPF_F_* as the C declares them (a pin with others is stale)

    @property
    def key_size(self) -> int:
        return ct.sizeof(self.key) if self.key else 0

    @property
    def value_size(self) -> int:
        return ct.sizeof(self.value) if self.value else 0

    @property
    def key_layout(self) -> Layout | None:
        return layout(self.key) if self.key else None

    @property
    def value_layout(self) -> Layout | None:
        return layout(self.value) if self.value else None


_SPECS = (
    MapSpec("cfg", BPF_MAP_TYPE_ARRAY, U32, NodeCfg, 1),
    MapSpec("nodes", BPF_MAP_TYPE_HASH, Addr, NodeInfo, 256, "MAX_NODES", BPF_F_NO_PREALLOC),
    MapSpec("routes", BPF_MAP_TYPE_LPM_TRIE, RouteKey, RouteInfo, 1024, "MAX_ROUTES", BPF_F_NO_PREALLOC),
    MapSpec("dsr_optout", BPF_MAP_TYPE_LPM_TRIE, RouteKey, U32, 64, "MAX_DSR_OPTOUT", BPF_F_NO_PREALLOC),
    MapSpec("nat_fe", BPF_MAP_TYPE_HASH, FeKey, FeValue, 65536, "MAX_SERVICES", BPF_F_NO_PREALLOC),
    MapSpec("nat_be", BPF_MAP_TYPE_HASH, BeKey, BeValue, 262144, "MAX_BACKENDS", BPF_F_NO_PREALLOC),
    MapSpec("svc_meta", BPF_MAP_TYPE_HASH, U32, SvcMeta, 65536, "MAX_SERVICES", BPF_F_NO_PREALLOC),
    MapSpec("ct", BPF_MAP_TYPE_HASH, CtKey, CtValue, 512000, "MAX_CT"),
    MapSpec("lb_svc", BPF_MAP_TYPE_HASH, U32, LbSvc, 65536, "MAX_SERVICES", BPF_F_NO_PREALLOC),
    MapSpec("lb_src", BPF_MAP_TYPE_LPM_TRIE, LbSrcKey, U32, 1024, "MAX_LB_SRC_RANGES", BPF_F_NO_PREALLOC),
    MapSpec("affinity", BPF_MAP_TYPE_LRU_HASH, AffinityKey, AffinityValue, 65536, "MAX_AFFINITY"),
    MapSpec("maglev", BPF_MAP_TYPE_HASH, MaglevKey, BeValue, 64 * MAGLEV_M, "MAX_MAGLEV_ENTRIES",
            BPF_F_NO_PREALLOC),
    MapSpec("frags", BPF_MAP_TYPE_LRU_HASH, FragKey, FragPorts, 8192, "MAX_FRAGS"),
    MapSpec("counters", BPF_MAP_TYPE_PERCPU_ARRAY, U32, U64, N_HOOKS * MAX_REASONS),
    MapSpec("ct_clock", BPF_MAP_TYPE_PERCPU_ARRAY, U32, CtClockCache, 1),
    MapSpec("events", BPF_MAP_TYPE_RINGBUF, None, None, 256 * 1024, "EVENTS_BYTES"),
)
MAP_SPECS: dict[str, MapSpec] = {s.name: s for s in _SPECS}

# Connect-time load balancing (bpf/connect.c, ebpf_nodeport/ctlb.py): cgroup sock_addr
# programs -> their kernel attach type (enum bpf_attach_type), and the maps only they use
# (beside the node's nat_fe, nat_be, nodes and cfg, which they read).
CTLB_PROGRAMS: dict[str, int] = {
    "ctlb_connect4": 10,       # BPF_CGROUP_INET4_CONNECT
    "ctlb_sendmsg4": 14,       # BPF_CGROUP_UDP4_SENDMSG
    "ctlb_recvmsg4": 19,       # BPF_CGROUP_UDP4_RECVMSG
    "ctlb_getpeer4": 29,       # BPF_CGROUP_INET4_GETPEERNAME
}
CTLB_F_TCP, CTLB_F_UDP = 1, 2
_CTLB_SPECS = (
    MapSpec("ctlb_cfg", BPF_MAP_TYPE_ARRAY, U32, CtlbCfg, 1),
    MapSpec("ctlb_nat", BPF_MAP_TYPE_LRU_HASH, CtlbKey, CtlbValue, 65536, "MAX_CTLB"),
)
CTLB_MAP_SPECS: dict[str, MapSpec] = {s.name: s for s in _CTLB_SPECS}


def map_specs(defines: dict[str, object] | None = None,
              specs: dict[str, MapSpec] = MAP_SPECS) -> dict[str, MapSpec]:
    """specs (the TC datapath's by default) with MAX_* overrides (integer values) applied, as the
    loader compiles them, and the `ct` map's CT_MAP_TYPE and CT_MAP_FLAGS (maps.h; other values
    for netns_lab/bench/cttail.py's comparison)."""
    if not defines:
        return dict(specs)
    out = {}
    for name, spec in specs.items():
        override = defines.get(spec.max_define) if spec.max_define else None
        if isinstance(override, int):
            spec = dataclasses.replace(spec, max_entries=override)
        if name == "ct" and str(defines.get("CT_MAP_TYPE", "")).strip('"') in CT_MAP_TYPES:
            spec = dataclasses.replace(spec, map_type=CT_MAP_TYPES[str(defines["CT_MAP_TYPE"]).strip('"')])
        if name == "ct" and isinstance(defines.get("CT_MAP_FLAGS"), int):
            spec = dataclasses.replace(spec, map_flags=int(defines["CT_MAP_FLAGS"]))
        out[name] = spec
    return out

# ---- C logic mirrored -------------------------------------------------------------------

_M32 = 0xFFFFFFFF


def mix32(h: int) -> int:
    """bpf/lib/nat.h mix32()."""
    h &= _M32
    h ^= h >> 16
    h = (h * 0x7FEB352D) & _M32
    h ^= h >> 15
    h = (h * 0x846CA68B) & _M32
    h ^= h >> 16
    return h


def flow_hash(saddr: str | int, sport: int, daddr: str | int, dport: int, proto: str | int) -> int:
    """bpf/lib/nat.h flow_hash(): picks backends and outer UDP source ports."""
    ports = ((sport & 0xFFFF) << 16) | (dport & 0xFFFF)
    return mix32(ip2int(saddr) ^ mix32(ip2int(daddr) ^ mix32(ports ^ proto_num(proto))))


def backend_ordinal(count: int, saddr: str | int, sport: int, daddr: str | int, dport: int,
                    proto: str | int) -> int:
    """Ordinal a new connection (as the client sent it) gets among count backends."""
    return flow_hash(saddr, sport, daddr, dport, proto) % count


def tunnel_sport(saddr: str | int, sport: int, daddr: str | int, dport: int, proto: str | int) -> int:
    """Outer UDP source port for an inner packet as encapsulated (after DNAT)."""
    return TUNNEL_SPORT_BASE | (flow_hash(saddr, sport, daddr, dport, proto) & TUNNEL_SPORT_MASK)


def ct_key(saddr: str | int, sport: int, daddr: str | int, dport: int,
           proto: str | int) -> tuple[CtKey, bool]:
    """Normalised conntrack key of a packet and whether its source is side a (conntrack.h)."""
    s, d = ip2int(saddr), ip2int(daddr)
    from_a = s < d or (s == d and sport <= dport)
    k = CtKey(proto=proto_num(proto))
    if from_a:
        k.addr_a, k.port_a, k.addr_b, k.port_b = s, sport, d, dport
    else:
        k.addr_a, k.port_a, k.addr_b, k.port_b = d, dport, s, sport
    return k, from_a


def ct_timeouts(overrides: dict[str, int] | None = None) -> dict[str, int]:
    """conntrack.h's timeouts with some replaced (tests pass short ones): what ct_timeout_of() reads."""
    return {**CT_TIMEOUTS_NS, **overrides} if overrides else CT_TIMEOUTS_NS


def ct_timeout_of(proto: int, flags: int, tcp_a: int, tcp_b: int, t: dict[str, int]) -> int:
    """conntrack.h ct_timeout() on the fields it reads: idle time after which the entry is dead."""
    if proto == 17:
        return t["CT_TIMEOUT_UDP"]
    if proto == 1:
        return t["CT_TIMEOUT_ICMP"]
    if proto != 6:
        return t["CT_TIMEOUT_OTHER"]
    client, server = (tcp_b, tcp_a) if flags & CT_F_CLIENT_IS_B else (tcp_a, tcp_b)
    if (client | server) & TCPF_RST:
        return t["CT_TIMEOUT_TCP_RST"]
    if (flags & CT_F_DSR) and not (flags & CT_F_FROM_TUNNEL):
        # Ingress node of a DSR flow: it sees the client's half only.
        if client & TCPF_FIN:
            return t["CT_TIMEOUT_TCP_FIN"]
        if client & TCPF_SYN and client & TCPF_ACK:
            return t["CT_TIMEOUT_TCP_EST"]
        return t["CT_TIMEOUT_TCP_SYN"]
    if client & TCPF_FIN and server & TCPF_FIN:
        return t["CT_TIMEOUT_TCP_FIN"]
    if client & TCPF_SYN and server & TCPF_SYN and (client | server) & TCPF_ACK:
        return t["CT_TIMEOUT_TCP_EST"]
    return t["CT_TIMEOUT_TCP_SYN"]


def ct_timeout_ns(key: CtKey, v: CtValue, timeouts: dict[str, int] | None = None) -> int:
    """conntrack.h ct_timeout(): idle time after which the entry is dead."""
    return ct_timeout_of(key.proto, v.flags, v.tcp_a, v.tcp_b, ct_timeouts(timeouts))


def ct_expired(key: CtKey, v: CtValue, now_ns: int, timeouts: dict[str, int] | None = None) -> bool:
    """conntrack.h ct_expired() (NAT_FWD entries follow their NAT_REV: see gc in datapath.py)."""
    return now_ns > v.last_seen_ns and now_ns - v.last_seen_ns > ct_timeout_ns(key, v, timeouts)


CLOCK_MONOTONIC_COARSE = getattr(time, "CLOCK_MONOTONIC_COARSE", 6)   # Linux's id; Python names only some


def ktime_ns() -> int:
    """The conntrack clock: bpf_ktime_get_coarse_ns(), i.e. CLOCK_MONOTONIC_COARSE (5.11+).

    The same clock the datapath stamps entries with, so an entry written just now is never
    "in the future" (the fine clock runs up to a tick ahead of the coarse one). A kernel
    without the coarse helper stamps with the fine clock (compat.h ct_clock_ns): read that."""
    from .kernel import has  # deferred: the probe loads a program, only when a clock is read

    return time.clock_gettime_ns(CLOCK_MONOTONIC_COARSE if has("HAVE_KTIME_COARSE") else time.CLOCK_MONOTONIC)


def ct_client_side(v: CtValue) -> str:
    return "b" if v.flags & CT_F_CLIENT_IS_B else "a"


# The conntrack GC reads whole maps as bytes (a pass over 512k entries must not build a ctypes
# object each): the fields it judges by, read off CtKey's and CtValue's bytes (checked below). A key's
# bytes are addr_a [0:4], addr_b [4:8], port_a [8:10], port_b [10:12] (network order), proto [12].
CT_VALUE_RAW = struct.Struct("=8xQBBBB4s2s2s")          # last_seen_ns, type, flags, tcp_a, tcp_b, nat_addr,
#                                                         nat_port, cl_port (network order)
CT_VALUE_TYPE_OFFSET = CtValue.type.offset


def _check_ct_raw() -> None:
    """The formats above read the mirrors' fields: a struct with a distinct value in each reads back."""
    k = CtKey(addr_a=0x01020304, addr_b=0x05060708, port_a=0x090A, port_b=0x0B0C, proto=13)
    v = CtValue(created_ns=1, last_seen_ns=2, type=3, flags=4, tcp_a=5, tcp_b=6, nat_addr=0x0708090A,
                nat_port=0x0B0C, cl_port=0x0D0E, tun_peer=15, packets_ab=16)
    kb = bytes(k)
    assert (kb[0:4], kb[4:8], kb[8:10], kb[10:12], kb[12]) == (b"\1\2\3\4", b"\5\6\7\x08", b"\x09\x0a", b"\x0b\x0c", 13)
    assert CT_VALUE_RAW.unpack_from(bytes(v)) == (2, 3, 4, 5, 6, b"\7\x08\x09\x0a", b"\x0b\x0c", b"\x0d\x0e")
    assert bytes(v)[CT_VALUE_TYPE_OFFSET] == 3


_check_ct_raw()


def ct_key_raw(saddr: bytes, sport: bytes, daddr: bytes, dport: bytes, proto: int) -> bytes:
    """ct_key() on network-order bytes, giving the key's bytes. Big-endian bytes compare as the
    numbers they hold, so the normalisation is conntrack.h's."""
    if saddr < daddr or (saddr == daddr and sport <= dport):
        return saddr + daddr + sport + dport + bytes((proto, 0, 0, 0))
    return daddr + saddr + dport + sport + bytes((proto, 0, 0, 0))


def ct_rev_key_raw(key: bytes, flags: int, nat_addr: bytes, nat_port: bytes, cl_port: bytes) -> bytes:
    """ct_rev_key_of_fwd() on a NAT_FWD entry's key bytes and value fields (CT_VALUE_RAW's)."""
    if flags & CT_F_CLIENT_IS_B:
        client, cport = key[4:8], key[10:12]
    else:
        client, cport = key[0:4], key[8:10]
    return ct_key_raw(client, cl_port if cl_port != b"\0\0" else cport, nat_addr, nat_port, key[12])


def ct_rev_key_of_fwd(key: CtKey, v: CtValue) -> CtKey:
    """The key (client, backend) of the entry a NAT_FWD entry (client, frontend) belongs to.

    That entry is a NAT_REV, or on a backend node (FROM_TUNNEL) the NORMAL entry of a flow
    whose client port it replaced; with CT_F_PSNAT the client has port cl_port toward the backend."""
    _, flags, _, _, nat_addr, nat_port, cl_port = CT_VALUE_RAW.unpack_from(bytes(v))[1:]
    return CtKey.from_bytes(ct_rev_key_raw(bytes(key), flags, nat_addr, nat_port, cl_port))


def ct_partner_type_of(flags: int) -> int:
    """Type of the entry a NAT_FWD with these flags follows: NORMAL for a backend node's (FROM_TUNNEL),
    else NAT_REV."""
    return CT_NORMAL if flags & CT_F_FROM_TUNNEL else CT_NAT_REV


def ct_partner_type(v: CtValue) -> int:
    """ct_partner_type_of() a NAT_FWD entry."""
    return ct_partner_type_of(v.flags)
