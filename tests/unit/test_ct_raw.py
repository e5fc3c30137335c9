"""The conntrack GC's byte-level readers (abi.ct_key_raw, ct_rev_key_raw) agree with the ctypes mirrors."""
from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ebpf_nodeport import abi
from ebpf_nodeport.abi import CT_F_CLIENT_IS_B, CT_F_PSNAT, CtValue

addrs = st.integers(0, 2**32 - 1) | st.sampled_from([0xC6130001, 0xC6130F01, 0xC6131041])  # and equal ones
ports = st.integers(0, 65535)
protos = st.sampled_from([1, 6, 17])


@given(addrs, ports, addrs, ports, protos)
def test_raw_key_is_ct_key(s: int, sport: int, d: int, dport: int, proto: int):
    k, _ = abi.ct_key(s, sport, d, dport, proto)
    raw = abi.ct_key_raw(s.to_bytes(4, "big"), sport.to_bytes(2, "big"), d.to_bytes(4, "big"),
                         dport.to_bytes(2, "big"), proto)
    assert raw == bytes(k)


@given(addrs, ports, addrs, ports, addrs, ports, st.sampled_from([0, 20001]), protos)
def test_raw_rev_key_is_the_partners(client: int, cport: int, fe: int, feport: int, be: int, beport: int,
                                     cl_port: int, proto: int):
    """A NAT_FWD written as the datapath writes it points at the key its partner is written under."""
    fk, client_is_a = abi.ct_key(client, cport, fe, feport, proto)
    v = CtValue(type=abi.CT_NAT_FWD, flags=(0 if client_is_a else CT_F_CLIENT_IS_B) | (CT_F_PSNAT if cl_port else 0),
                nat_addr=be, nat_port=beport, cl_port=cl_port)
    want, _ = abi.ct_key(client, cl_port or cport, be, beport, proto)
    assert bytes(abi.ct_rev_key_of_fwd(fk, v)) == bytes(want)
