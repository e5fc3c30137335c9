"""maps.py without a kernel: pack()/unpack() give the bytes ctypes gives for every map struct,
and the fast ip2int agrees with ipaddress on what it accepts and rejects."""
from __future__ import annotations

import ctypes as ct
import ipaddress

import pytest

from ebpf_nodeport import abi
from ebpf_nodeport.sync import Backend, Service

STRUCTS = [abi.U32, abi.Addr, abi.U64, abi.NodeCfg, abi.NodeInfo, abi.RouteKey, abi.RouteInfo,
           abi.FeKey, abi.FeValue, abi.BeKey, abi.BeValue, abi.SvcMeta, abi.CtKey, abi.CtValue,
           abi.Event]


def _values(cls: type, seed: int) -> dict[str, object]:
    """A value for every visible field, using every byte of it (so a swapped order shows)."""
    out: dict[str, object] = {}
    for i, (name, ctype, *_) in enumerate(cls._fields_):
        if name in cls._hidden_fields:
            continue
        size = ct.sizeof(ctype)
        if issubclass(ctype, ct.Array):
            out[name] = f"svc{seed}-{i}".encode()[: size - 1]
        else:
            out[name] = int.from_bytes(bytes((seed * 37 + i * 11 + j) % 251 + 1 for j in range(size)), "big")
    return out


@pytest.mark.parametrize("cls", STRUCTS, ids=lambda c: c.__name__)
def test_pack_gives_the_ctypes_bytes(cls):
    for seed in range(4):
        vals = _values(cls, seed)
        assert cls.pack(*vals.values()) == bytes(cls(**vals)), vals


@pytest.mark.parametrize("cls", [abi.U32, abi.Addr, abi.FeKey, abi.FeValue, abi.BeKey, abi.BeValue,
                                 abi.SvcMeta, abi.CtKey], ids=lambda c: c.__name__)
def test_unpack_inverts_pack(cls):
    """Every visible field back; char arrays as stored, NUL-padded to their size."""
    vals = _values(cls, 3)
    want = tuple(v.ljust(getattr(cls, k).size, b"\0") if isinstance(v, bytes) else v for k, v in vals.items())
    assert cls.unpack(bytes(cls(**vals))) == want


def test_unpack_refuses_structs_mixing_byte_orders():
    with pytest.raises(TypeError, match="byte orders"):
        abi.RouteKey.unpack(bytes(abi.RouteKey.cidr("198.19.16.0/26")))


def test_pack_pads_with_zeros():
    assert abi.BeValue.pack(abi.ip2int("198.19.16.65"), 80) == bytes([198, 19, 16, 65, 0, 80, 0, 0])
    assert abi.FeKey.pack(0, 30180, 6) == bytes([0, 0, 0, 0, 0x75, 0xE4, 6, 0])
    assert abi.SvcMeta.pack(b"a:80/tcp") == b"a:80/tcp".ljust(64, b"\0")


@pytest.mark.parametrize("text", ["198.19.16.65", "0.0.0.0", "255.255.255.255", "10.0.0.1"])
def test_ip2int_matches_ipaddress(text):
    assert abi.ip2int(text) == int(ipaddress.IPv4Address(text))
    assert abi.ip2int(abi.ip2int(text)) == abi.ip2int(text)


@pytest.mark.parametrize("text", ["01.2.3.4", "1.2.3", "1.2.3.4 ", " 1.2.3.4", "256.1.1.1", "1.2.3.04",
                                  "0x1.2.3.4", "1.2.3.4.5", "", "fd00::1", "1.2.3.4\0", "host"])
def test_ip2int_rejects_what_ipaddress_rejects(text):
    with pytest.raises(ValueError):
        ipaddress.IPv4Address(text)
    with pytest.raises(ValueError):
        abi.ip2int(text)


@pytest.mark.parametrize("cip", ["0.0.0.0", "224.0.0.1", "239.255.255.255", "255.255.255.255"])
def test_service_cluster_ip_must_be_unicast(cip):
    with pytest.raises(ValueError, match="not a unicast address"):
        Service("a", "tcp", cip, 80, None, [Backend("198.19.16.65", 80)]).validate()


@pytest.mark.parametrize("cip", ["198.19.32.10", "223.255.255.255", "240.0.0.1", "1.0.0.0"])
def test_service_accepts_unicast_cluster_ips(cip):
    Service("a", "tcp", cip, 80, None, [Backend("198.19.16.65", 80)]).validate()


def test_service_rejects_bad_backend_address():
    with pytest.raises(ValueError):
        Service("a", "tcp", "198.19.32.10", 80, None, [Backend("198.19.16.300", 80)]).validate()
